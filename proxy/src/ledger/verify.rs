//! `sluice audit verify`: recompute the chain from what is stored, in the SQLite index
//! and in the WAL segments not yet indexed, and check HMACs and checkpoint signatures.
//!
//! Read-only and safe while a proxy writes: the WAL is read first, then the index within
//! one read transaction (a consistent snapshot that includes at least everything that
//! was indexed when the WAL was read).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

use super::chain::{self, Checkpoint, HmacSha256, StoredRecord, WalLine, GENESIS};
use super::index::{self, Columns, Unpacker};
use super::{keys, wal, LedgerError};
use crate::tlog::merkle::{Frontier, Tree};

/// What an auditor supplies.
#[derive(Default)]
pub struct VerifyOptions<'a> {
    /// The checkpoint public key (SPKI PEM), from a trusted copy. Default: the
    /// directory's `checkpoint.pub.pem`; without either, signatures are not checked.
    pub public_key_pem: Option<String>,
    /// HMAC keys by `hmac_key_id`. Empty: load them from the directory and
    /// `$SLUICE_LEDGER_HMAC_KEY` ([`super::load_hmac_keys`]); without any, HMACs are not
    /// checked (an auditor holding only the public key).
    pub hmac_keys: HashMap<String, Vec<u8>>,
    /// Called as `(records checked, records in total)` while verifying.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// The cadence the ledger was written with (`ledger.checkpoint_every` and
    /// `checkpoint_interval`); default: [`super::LedgerConfig`]'s.
    pub cadence: Option<(u64, Duration)>,
    /// The origin checkpoints must name (`ledger.origin`); default: whatever the first
    /// checkpoint names, the others must agree.
    pub origin: Option<String>,
    /// The time "now" for the uncovered-head check; default: the clock.
    pub now: Option<SystemTime>,
    /// Tree heads witnesses cosigned for this ledger (already checked for the node's
    /// signature and the witness's cosignature by whoever fetched them).
    pub witnessed: Vec<WitnessedHead>,
}

/// A tree head a witness cosigned.
#[derive(Debug, Clone)]
pub struct WitnessedHead {
    /// The witness's name.
    pub witness: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
    /// When the witness cosigned it (seconds since the epoch).
    pub cosigned_at: u64,
}

/// What a witness's history proved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WitnessCheck {
    /// The witness's name.
    pub witness: String,
    /// Heads it cosigned that were recomputed from the ledger and matched.
    pub matched: u64,
    /// Heads older than the retention anchor (their records are pruned).
    pub pruned: u64,
    /// The largest size it cosigned, and when.
    pub newest: Option<(u64, u64)>,
}

/// How long after `checkpoint_interval` a head may stay uncovered before verify calls
/// it a failure: the writer checks the interval on a 100 ms tick, and a reader's clock
/// may be a little ahead.
const COVER_GRACE: Duration = Duration::from_secs(10);

/// What kind of damage was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyErrorKind {
    /// A record's bytes no longer hash to its stored hash (or its content to its digest).
    Edited,
    /// A record is missing (a gap in `seq`).
    Deleted,
    /// Records are out of order or do not link (`prev_hash`).
    Reordered,
    /// The HMAC does not match (or its key is unknown).
    BadHmac,
    /// A checkpoint's signature does not verify.
    BadCheckpointSignature,
    /// A WAL segment was cut or damaged somewhere other than a crash could leave it.
    TruncatedWal,
    /// The records do not hash to a checkpoint's signed Merkle tree head.
    TreeHeadMismatch,
    /// More records, or more time, between two checkpoints than the cadence allows:
    /// checkpoints were deleted (or never written).
    MissingCheckpoint,
    /// The newest records are older than `checkpoint_interval` and no checkpoint covers
    /// them (deleted, or the proxy stopped without its final checkpoint).
    UncoveredHead,
    /// A checkpoint names another ledger (origin) than the rest.
    WrongOrigin,
    /// A witness cosigned more records than the ledger holds: the newest were removed
    /// (a cut back to an older checkpoint, a wipe, a replaced ledger).
    Truncated,
    /// The records do not hash to a head a witness cosigned: rewritten since.
    Rewritten,
}

/// One problem, at the first record it affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyError {
    /// The record (or checkpoint) sequence number.
    pub seq: u64,
    /// What is wrong.
    pub kind: VerifyErrorKind,
    /// Where and how, for the auditor.
    pub detail: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// No problem found.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The problem with the lowest seq.
    pub first_error: Option<VerifyError>,
    /// Every problem found (at most 1000), by seq.
    pub errors: Vec<VerifyError>,
    /// A torn last line in the newest WAL segment, as a crash mid-write leaves it; not
    /// counted as tampering (the proxy cuts it off at its next start).
    pub incomplete_tail: Option<String>,
    /// Whether HMACs were checked (keys available).
    pub hmac_checked: bool,
    /// Whether checkpoint signatures were checked (public key available).
    pub signatures_checked: bool,
    /// The HMAC key ids available to check with.
    pub hmac_key_ids: Vec<String>,
    /// The public key came from the directory under audit, not from the auditor.
    pub public_key_from_directory: bool,
    /// The chain was verified from this retention anchor (records at or below were
    /// pruned), if any.
    pub anchor_seq: Option<u64>,
    /// The last record's seq and hash.
    pub head_seq: Option<u64>,
    /// The last record's hash.
    pub head_hash: Option<String>,
    /// The origin the checkpoints name.
    pub origin: Option<String>,
    /// Checkpoints whose Merkle root was recomputed from the records and matched.
    pub tree_heads_checked: u64,
    /// The newest checkpoint: `(tree size, signed note)`.
    pub newest_checkpoint: Option<(u64, String)>,
    /// One entry per witness whose heads were supplied.
    pub witnesses: Vec<WitnessCheck>,
}

const MAX_ERRORS: usize = 1000;

struct Anchor {
    seq: u64,
    hash: String,
    frontier: Vec<String>,
    confirmed: bool,
}

struct Checker {
    keys: HashMap<String, HmacSha256>,
    expected: u64,
    prev: [u8; 32],
    errors: Vec<VerifyError>,
    records: u64,
    head: Option<(u64, String)>,
    anchor: Option<Anchor>,
    /// Hashes of records at checkpoint seqs, to compare with the checkpoints.
    wanted: HashSet<u64>,
    found: HashMap<u64, String>,
    /// The Merkle tree over the records checked, in seq order; `None` once a record
    /// comes out of order (the chain reports that) and roots cannot be recomputed.
    tree: Option<Tree>,
}

impl Checker {
    fn err(&mut self, seq: u64, kind: VerifyErrorKind, detail: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(VerifyError {
                seq,
                kind,
                detail: detail.into(),
            });
        }
    }

    /// Check one record. `pos` is the seq it is stored under (index rows), `later`
    /// tells whether a seq appears later in the same source (gap vs reorder).
    fn check(
        &mut self,
        rec: &StoredRecord,
        pos: Option<u64>,
        source: &str,
        later: &dyn Fn(u64) -> bool,
    ) -> Option<Map<String, Value>> {
        use VerifyErrorKind::*;
        self.records += 1;
        let at = pos.unwrap_or(self.expected);
        let Ok(meta) = serde_json::from_str::<Map<String, Value>>(&rec.meta) else {
            self.err(
                at,
                Edited,
                format!("{source}: metadata is not a JSON object"),
            );
            return None;
        };
        let Some(seq) = meta.get("seq").and_then(Value::as_u64) else {
            self.err(at, Edited, format!("{source}: metadata has no seq"));
            return None;
        };
        let at = pos.unwrap_or(seq);
        let prev_in_meta = meta
            .get("prev_hash")
            .and_then(Value::as_str)
            .and_then(chain::decode_hash);
        let Some(prev_in_meta) = prev_in_meta else {
            self.err(
                at,
                Edited,
                format!("{source}: prev_hash missing or malformed"),
            );
            return None;
        };
        let hash = chain::chain_hash(&prev_in_meta, &rec.meta);
        if hex::encode(hash) != rec.hash {
            self.err(
                at,
                Edited,
                format!("{source}: record seq {seq} does not hash to its stored hash"),
            );
        }
        let digest = meta.get("content_sha256").and_then(Value::as_str);
        if let Some(c) = &rec.content {
            if digest != Some(chain::sha256_hex(c.as_bytes()).as_str()) {
                self.err(
                    at,
                    Edited,
                    format!("{source}: content of seq {seq} does not match content_sha256"),
                );
            }
        }
        if !self.keys.is_empty() {
            let id = meta
                .get("hmac_key_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            let stored_hash = chain::decode_hash(&rec.hash).unwrap_or(hash);
            match self.keys.get(id) {
                Some(k) if chain::hmac_hex(k, &stored_hash) == rec.hmac => {}
                Some(_) => self.err(
                    at,
                    BadHmac,
                    format!("{source}: HMAC of seq {seq} does not match"),
                ),
                None => self.err(
                    at,
                    BadHmac,
                    format!("{source}: seq {seq} names HMAC key `{id}`, which was not supplied"),
                ),
            }
        }
        if let Some(p) = pos {
            if p != seq {
                self.err(
                    p,
                    Reordered,
                    format!("{source}: the record stored as seq {p} is record {seq}"),
                );
            }
        }
        if pos.is_none_or(|p| p == seq) {
            if seq > self.expected {
                if later(self.expected) {
                    self.err(
                        self.expected,
                        Reordered,
                        format!("{source}: seq {} comes after seq {seq}", self.expected),
                    );
                } else {
                    self.err(
                        self.expected,
                        Deleted,
                        format!(
                            "{source}: records {}..={} are missing",
                            self.expected,
                            seq - 1
                        ),
                    );
                }
            } else if seq < self.expected {
                self.err(
                    seq,
                    Reordered,
                    format!("{source}: seq {seq} comes after seq {}", self.expected - 1),
                );
            } else if prev_in_meta != self.prev {
                self.err(
                    seq,
                    Reordered,
                    format!("{source}: seq {seq} does not link to the previous record (prev_hash)"),
                );
            }
        }
        self.expected = self.expected.max(seq + 1);
        let stored = chain::decode_hash(&rec.hash).unwrap_or(hash);
        if let Some(t) = &mut self.tree {
            if t.size() + 1 == seq {
                t.push(stored);
            } else {
                self.tree = None;
            }
        }
        self.prev = stored;
        self.head = Some((seq, rec.hash.clone()));
        if self.wanted.contains(&seq) {
            self.found.insert(seq, rec.hash.clone());
        }
        if let (Some(a), Some(d)) = (&mut self.anchor, meta.get("details")) {
            let frontier: Option<Vec<&str>> = d
                .pointer("/anchor/frontier")
                .and_then(Value::as_array)
                .map(|f| f.iter().filter_map(Value::as_str).collect());
            if d.pointer("/anchor/seq").and_then(Value::as_u64) == Some(a.seq)
                && d.pointer("/anchor/hash").and_then(Value::as_str) == Some(a.hash.as_str())
                && frontier.is_some_and(|f| f == a.frontier)
            {
                a.confirmed = true;
            }
        }
        Some(meta)
    }
}

/// A WAL record with where it was found.
struct WalRecord {
    seq: u64,
    rec: StoredRecord,
    segment: String,
}

/// Verify the ledger in `dir`.
///
/// # Errors
/// [`LedgerError`] when the directory, the index or a key cannot be read at all;
/// damage to the records themselves is reported in the [`VerifyReport`].
pub fn verify(dir: &Path, opts: &VerifyOptions<'_>) -> Result<VerifyReport, LedgerError> {
    use VerifyErrorKind::*;
    let key_map = if opts.hmac_keys.is_empty() {
        keys::load_hmac_keys(dir, None)?
    } else {
        opts.hmac_keys.clone()
    };
    let pem = match &opts.public_key_pem {
        Some(p) => Some((p.clone(), dir.to_path_buf())),
        None => {
            let p = keys::public_key_path(dir);
            std::fs::read_to_string(&p).ok().map(|s| (s, p))
        }
    };
    let public = pem
        .map(|(pem, origin)| keys::parse_public_pem(&pem, &origin))
        .transpose()?;
    let mut ck = Checker {
        keys: key_map
            .iter()
            .map(|(id, k)| (id.clone(), chain::hmac_for(k)))
            .collect(),
        expected: 1,
        prev: GENESIS,
        errors: Vec::new(),
        records: 0,
        head: None,
        anchor: None,
        wanted: HashSet::new(),
        found: HashMap::new(),
        tree: Some(Tree::new(Frontier::default())),
    };
    let mut report = VerifyReport {
        hmac_checked: !ck.keys.is_empty(),
        signatures_checked: public.is_some(),
        hmac_key_ids: {
            let mut ids: Vec<String> = ck.keys.keys().cloned().collect();
            ids.sort();
            ids
        },
        public_key_from_directory: opts.public_key_pem.is_none() && public.is_some(),
        ..VerifyReport::default()
    };

    // 1. The WAL, first (see the module doc for why).
    let (wal_records, wal_cps, tail) = read_wal(dir, &mut ck)?;

    // 2. The index, in one snapshot.
    let db = index::db_path(dir);
    let e = index::sql_err(&db);
    let have_db = db.exists();
    if !have_db && wal_records.is_empty() && !dir.join(keys::HMAC_KEY_FILE).exists() {
        return Err(LedgerError::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let mut checkpoints: Vec<(Checkpoint, &str)> =
        wal_cps.into_iter().map(|c| (c, "WAL")).collect();
    ck.wanted = checkpoints.iter().map(|(c, _)| c.seq).collect();
    let mut max_index_seq = 0u64;
    let mut index_seqs_in_wal: HashSet<u64> = HashSet::new();
    let wal_by_seq: BTreeMap<u64, usize> = wal_records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.seq, i))
        .collect();
    if have_db {
        let mut conn = index::open_ro(dir)?;
        let tx = conn.transaction().map_err(&e)?;
        if let Some((seq, hash, frontier)) = index::anchor(&tx).map_err(&e)? {
            ck.expected = seq + 1;
            ck.prev = chain::decode_hash(&hash).unwrap_or(GENESIS);
            report.anchor_seq = Some(seq);
            // What stays of the tree over the pruned records; trusted once the hashed
            // retention record names the same frontier (checked below).
            ck.tree = frontier
                .iter()
                .map(|h| chain::decode_hash(h))
                .collect::<Option<Vec<_>>>()
                .and_then(|roots| Frontier::from_parts(seq, roots))
                .map(Tree::new);
            ck.anchor = Some(Anchor {
                seq,
                hash,
                frontier,
                confirmed: false,
            });
        }
        for cp in index::checkpoints(&tx, 0).map_err(&e)? {
            checkpoints.push((cp, "index"));
        }
        ck.wanted.extend(checkpoints.iter().map(|(c, _)| c.seq));
        let total: i64 = tx
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .map_err(&e)?;
        let total = total as u64 + wal_records.len() as u64;
        let mut stmt = tx
            .prepare(
                "SELECT r.seq, r.meta, r.content, r.hash, r.hmac, r.ts, r.kind, r.provider,
                        r.model, r.decision, r.outcome, r.action, r.ts_ms, i.json,
                        r.input_tokens, r.output_tokens, r.cost_usd
                 FROM records r LEFT JOIN identities i ON i.id = r.identity_id
                 ORDER BY r.seq",
            )
            .map_err(&e)?;
        let mut u = Unpacker::new(&tx).map_err(&e)?;
        let mut rows = stmt.query([]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let pos = r.get::<_, i64>(0).map_err(&e)? as u64;
            max_index_seq = max_index_seq.max(pos);
            let texts = u.text(r, 1).and_then(|m| Ok((m, u.text(r, 2)?)));
            let (meta, content) = match texts {
                Ok((meta, content)) => (meta.unwrap_or_default(), content),
                Err(err) => {
                    ck.records += 1;
                    ck.err(
                        pos,
                        Edited,
                        format!("index: seq {pos} cannot be read back: {err}"),
                    );
                    continue;
                }
            };
            let rec = StoredRecord {
                meta,
                content,
                hash: r.get(3).map_err(&e)?,
                hmac: r.get(4).map_err(&e)?,
            };
            if let Some(meta) = ck.check(&rec, Some(pos), "index", &|_| false) {
                let cols = Columns::from_meta(&meta);
                let stored: [(&str, Option<String>, Option<String>); 7] = [
                    ("ts", r.get(5).map_err(&e)?, Some(cols.ts)),
                    ("kind", r.get(6).map_err(&e)?, Some(cols.kind)),
                    ("provider", r.get(7).map_err(&e)?, cols.provider),
                    ("model", r.get(8).map_err(&e)?, cols.model),
                    ("decision", r.get(9).map_err(&e)?, cols.decision),
                    ("outcome", r.get(10).map_err(&e)?, cols.outcome),
                    ("action", r.get(11).map_err(&e)?, cols.action),
                ];
                // Every column a report or a filter reads, the identity table included:
                // nothing is read from an unverified copy.
                let ts_ms: i64 = r.get(12).map_err(&e)?;
                let identity: Option<String> = r.get(13).map_err(&e)?;
                let tokens: (Option<i64>, Option<i64>) =
                    (r.get(14).map_err(&e)?, r.get(15).map_err(&e)?);
                let cost: Option<f64> = r.get(16).map_err(&e)?;
                let numbers = [
                    ("ts_ms", ts_ms == cols.ts_ms),
                    ("identity_id", identity == cols.identity),
                    ("input_tokens", tokens.0 == cols.input_tokens),
                    ("output_tokens", tokens.1 == cols.output_tokens),
                    ("cost_usd", same_cost(cost, cols.cost_usd)),
                ];
                let differing = stored
                    .iter()
                    .filter(|(_, col, want)| col != want)
                    .map(|(name, _, _)| *name)
                    .chain(numbers.iter().filter(|(_, same)| !same).map(|(n, _)| *n));
                for name in differing {
                    ck.err(
                        pos,
                        Edited,
                        format!(
                            "index: column `{name}` of seq {pos} differs from the hashed record"
                        ),
                    );
                }
            }
            if let Some(&i) = wal_by_seq.get(&pos) {
                index_seqs_in_wal.insert(pos);
                let w = &wal_records[i];
                // Content too: an answer edited in the WAL copy alone is an edit (content
                // removed by retention from one copy is not).
                let content_differs = matches!(
                    (&w.rec.content, &rec.content),
                    (Some(a), Some(b)) if a != b
                );
                if w.rec.hash != rec.hash
                    || w.rec.meta != rec.meta
                    || w.rec.hmac != rec.hmac
                    || content_differs
                {
                    ck.err(
                        pos,
                        Edited,
                        format!(
                            "seq {pos} differs between the index and WAL segment {}",
                            w.segment
                        ),
                    );
                }
            }
            if let Some(p) = opts.progress {
                if ck.records % 1000 == 0 {
                    p(ck.records, total);
                }
            }
        }
    }

    // 3. WAL records: missing from the index (deleted) or not indexed yet (checked).
    let anchor_seq = report.anchor_seq.unwrap_or(0);
    let pending: Vec<&WalRecord> = wal_records
        .iter()
        .filter(|w| w.seq > anchor_seq && !index_seqs_in_wal.contains(&w.seq))
        .collect();
    let pending_seqs: HashSet<u64> = pending
        .iter()
        .filter(|w| w.seq > max_index_seq)
        .map(|w| w.seq)
        .collect();
    for w in pending {
        if w.seq < max_index_seq {
            ck.err(
                w.seq,
                Deleted,
                format!(
                    "seq {} is missing from the index but present in WAL segment {}",
                    w.seq, w.segment
                ),
            );
            continue;
        }
        let src = format!("WAL segment {}", w.segment);
        ck.check(&w.rec, None, &src, &|s| pending_seqs.contains(&s));
    }
    if let Some(p) = opts.progress {
        p(ck.records, ck.records);
    }

    // 4. The torn tail of the newest segment: a crash, unless the record once existed.
    if let Some((segment, offset, seq)) = tail {
        let known = max_index_seq.max(checkpoints.iter().map(|(c, _)| c.seq).max().unwrap_or(0));
        if seq <= known {
            ck.err(
                seq,
                TruncatedWal,
                format!("WAL segment {segment} is cut at byte {offset}, inside record {seq} which the index or a checkpoint shows existed"),
            );
        } else {
            report.incomplete_tail = Some(format!(
                "WAL segment {segment}: incomplete last line at byte {offset} (record {seq} was being written when the proxy stopped)"
            ));
        }
    }

    // 5. Checkpoints: signature, origin, the Merkle root and the chain at their seq.
    let head_seq = ck.head.as_ref().map_or(anchor_seq, |h| h.0);
    let tree = ck.tree.take();
    let mut seen = HashSet::new();
    let mut covered: Vec<u64> = Vec::new();
    let mut origin = opts.origin.clone();
    let mut distinct = HashSet::new();
    for (cp, src) in &checkpoints {
        // The same checkpoint in the WAL and the index counts once.
        if !distinct.insert((cp.seq, &cp.hash, &cp.note)) {
            continue;
        }
        report.checkpoints += 1;
        let text = match chain::checkpoint_text(cp, public.as_ref()) {
            Ok(t) => t,
            Err(why) => {
                ck.err(
                    cp.seq,
                    BadCheckpointSignature,
                    format!("{src}: checkpoint at seq {}: {why}", cp.seq),
                );
                continue;
            }
        };
        match &origin {
            Some(o) if *o != text.origin => {
                ck.err(
                    cp.seq,
                    WrongOrigin,
                    format!(
                        "{src}: checkpoint at seq {} names origin `{}`, not `{o}`",
                        cp.seq, text.origin
                    ),
                );
                continue;
            }
            Some(_) => {}
            None => origin = Some(text.origin.clone()),
        }
        if !seen.insert((cp.seq, cp.hash.clone())) {
            continue;
        }
        if cp.seq < anchor_seq {
            continue;
        }
        covered.push(cp.seq);
        if report
            .newest_checkpoint
            .as_ref()
            .is_none_or(|(s, _)| *s < cp.seq)
        {
            report.newest_checkpoint = Some((cp.seq, cp.note.clone()));
        }
        if cp.seq <= head_seq && cp.seq > anchor_seq {
            if let Some(root) = tree.as_ref().and_then(|t| t.root(cp.seq).ok()) {
                if root == text.root {
                    report.tree_heads_checked += 1;
                } else {
                    ck.err(
                        cp.seq,
                        TreeHeadMismatch,
                        format!(
                            "{src}: records up to seq {} do not hash to the Merkle tree head the checkpoint signed",
                            cp.seq
                        ),
                    );
                }
            }
        }
        let actual = if cp.seq == anchor_seq {
            ck.anchor.as_ref().map(|a| a.hash.clone())
        } else {
            ck.found.get(&cp.seq).cloned()
        };
        match actual {
            Some(h) if h == cp.hash => {}
            Some(_) => ck.err(
                cp.seq,
                Edited,
                format!(
                    "{src}: the chain at seq {} differs from the signed checkpoint",
                    cp.seq
                ),
            ),
            None if cp.seq > head_seq => ck.err(
                head_seq + 1,
                Deleted,
                format!(
                    "{src}: a checkpoint covers seq {} but the chain ends at {head_seq}",
                    cp.seq
                ),
            ),
            None => {}
        }
    }
    report.origin = origin;

    // 6. Witnessed heads: every one the witness cosigned must still be the ledger's
    // tree at that size.
    let mut by_witness: BTreeMap<&str, Vec<&WitnessedHead>> = BTreeMap::new();
    for h in &opts.witnessed {
        by_witness.entry(h.witness.as_str()).or_default().push(h);
    }
    for (name, mut heads) in by_witness {
        heads.sort_by_key(|h| h.size);
        let mut wc = WitnessCheck {
            witness: name.to_owned(),
            newest: heads.last().map(|h| (h.size, h.cosigned_at)),
            ..WitnessCheck::default()
        };
        let mut last_ok = anchor_seq;
        if let Some(h) = heads.last().filter(|h| h.size > head_seq) {
            ck.err(
                head_seq + 1,
                Truncated,
                format!(
                    "witness {name} cosigned tree size {} (at {}), but the ledger ends at seq {head_seq}: records {}..={} are gone",
                    h.size,
                    crate::record::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(h.cosigned_at)),
                    head_seq + 1,
                    h.size
                ),
            );
        }
        for h in heads.iter().filter(|h| h.size <= head_seq) {
            if h.size <= anchor_seq && anchor_seq > 0 {
                wc.pruned += 1;
                continue;
            }
            match tree.as_ref().map(|t| t.root(h.size)) {
                Some(Ok(r)) if r == h.root => {
                    wc.matched += 1;
                    last_ok = h.size;
                }
                Some(Ok(_)) => {
                    ck.err(
                        last_ok + 1,
                        Rewritten,
                        format!(
                            "records {}..={} do not hash to the tree head witness {name} cosigned for size {}: rewritten since",
                            last_ok + 1,
                            h.size,
                            h.size
                        ),
                    );
                    break;
                }
                // The chain is broken (reported above) or the size is pruned.
                _ => {}
            }
        }
        report.witnesses.push(wc);
    }

    // 7. Coverage: a checkpoint at least every `checkpoint_every` records, and the
    // head covered within `checkpoint_interval` of its last write.
    let defaults = super::LedgerConfig::default();
    let (every, interval) = opts
        .cadence
        .unwrap_or((defaults.checkpoint_every, defaults.checkpoint_interval));
    let every = every.max(1);
    covered.sort_unstable();
    covered.dedup();
    let mut prev = anchor_seq;
    for &seq in covered.iter().filter(|&&c| c > anchor_seq) {
        if seq - prev > every {
            ck.err(
                prev + 1,
                MissingCheckpoint,
                format!(
                    "records {}..={seq} ({} of them) have no checkpoint between them; the ledger writes one every {every} records",
                    prev + 1,
                    seq - prev
                ),
            );
        }
        prev = seq;
    }
    if head_seq > prev {
        let range = format!("records {}..={head_seq}", prev + 1);
        // A segment is deleted only once a checkpoint covers it, so uncovered records
        // are all still in one; when it was last written tells how long they have
        // waited for their checkpoint.
        let segment = (prev + 1..=head_seq)
            .map(|s| wal_by_seq.get(&s).map(|&i| wal_records[i].segment.as_str()))
            .collect::<Option<HashSet<&str>>>();
        let now = opts.now.unwrap_or_else(SystemTime::now);
        if head_seq - prev > every {
            ck.err(
                prev + 1,
                MissingCheckpoint,
                format!(
                    "{range} ({} of them) have no checkpoint; the ledger writes one every {every} records",
                    head_seq - prev
                ),
            );
        } else if let Some(segs) = segment {
            let written = segs
                .iter()
                .filter_map(|s| {
                    std::fs::metadata(dir.join(s))
                        .and_then(|m| m.modified())
                        .ok()
                })
                .max();
            if let Some(age) = written.and_then(|w| now.duration_since(w).ok()) {
                if age > interval + COVER_GRACE {
                    ck.err(
                        prev + 1,
                        UncoveredHead,
                        format!(
                            "{range} were written {} s ago and no checkpoint covers them (the ledger writes one within {} s): deleted, or the proxy stopped without its final checkpoint and has not started since",
                            age.as_secs(),
                            interval.as_secs()
                        ),
                    );
                }
            }
        } else {
            ck.err(
                prev + 1,
                UncoveredHead,
                format!(
                    "{range} are no longer in a WAL segment, which is deleted only once a checkpoint covers it, yet no checkpoint covers them: the checkpoint was deleted"
                ),
            );
        }
    }

    if let Some(a) = &ck.anchor {
        if !a.confirmed {
            ck.err(
                a.seq + 1,
                Deleted,
                format!(
                    "records up to seq {} are gone but no admin record names that anchor",
                    a.seq
                ),
            );
        }
    }

    ck.errors.sort_by_key(|e| e.seq);
    report.records = ck.records;
    report.first_error = ck.errors.first().cloned();
    report.ok = ck.errors.is_empty();
    report.errors = ck.errors;
    if let Some((s, h)) = ck.head {
        report.head_seq = Some(s);
        report.head_hash = Some(h);
    }
    Ok(report)
}

type WalRead = (Vec<WalRecord>, Vec<Checkpoint>, Option<(String, u64, u64)>);

/// Every record and checkpoint in the WAL segments, in file order; damage other than a
/// torn last line of the newest segment is reported on `ck`.
fn read_wal(dir: &Path, ck: &mut Checker) -> Result<WalRead, LedgerError> {
    use VerifyErrorKind::*;
    let segs = wal::list_segments(dir)?;
    let n = segs.len();
    let mut records = Vec::new();
    let mut cps = Vec::new();
    let mut tail = None;
    for (i, (first, path)) in segs.into_iter().enumerate() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let newest = i + 1 == n;
        let mut seg = wal::read_segment(&path)?;
        if newest && seg.as_ref().is_some_and(|s| !s.bad.is_empty()) {
            // A line being written right now looks torn: look again.
            std::thread::sleep(std::time::Duration::from_millis(50));
            seg = wal::read_segment(&path)?;
        }
        let Some(seg) = seg else { continue };
        let mut prev: Option<u64> = None;
        let mut lines = seg.lines.into_iter().peekable();
        for bad in &seg.bad {
            // The seq the bad bytes hold: one after the last good record before them.
            while let Some((off, _)) = lines.peek() {
                if *off > bad.offset {
                    break;
                }
                let Some((_, line)) = lines.next() else { break };
                push_line(line, &name, &mut prev, &mut records, &mut cps);
            }
            let seq = prev.map_or(first, |p| p + 1);
            if newest && bad.at_end && seg.bad.len() == 1 {
                tail = Some((name.clone(), bad.offset, seq));
            } else {
                ck.err(
                    seq,
                    TruncatedWal,
                    format!(
                        "WAL segment {name}: {} bytes at byte {} are not a complete record",
                        bad.len, bad.offset
                    ),
                );
            }
        }
        for (_, line) in lines {
            push_line(line, &name, &mut prev, &mut records, &mut cps);
        }
    }
    Ok((records, cps, tail))
}

/// Index rows are the reference for records already indexed (a verifier compares them
/// with their WAL copies); the order of records not yet indexed is checked by the chain.
fn push_line(
    line: WalLine,
    name: &str,
    prev: &mut Option<u64>,
    records: &mut Vec<WalRecord>,
    cps: &mut Vec<Checkpoint>,
) {
    match line {
        WalLine::Checkpoint(c) => cps.push(c),
        WalLine::Record(rec) => {
            let seq = serde_json::from_str::<Map<String, Value>>(&rec.meta)
                .ok()
                .and_then(|m| m.get("seq").and_then(Value::as_u64))
                .unwrap_or(0);
            *prev = Some(seq.max(prev.unwrap_or(0)));
            records.push(WalRecord {
                seq,
                rec,
                segment: name.to_owned(),
            });
        }
    }
}

/// Index costs against the record's: equal, or both absent (floats stored by SQLite as
/// written, so exact equality holds for an untouched row).
fn same_cost(stored: Option<f64>, want: Option<f64>) -> bool {
    match (stored, want) {
        (Some(a), Some(b)) => a == b || (a - b).abs() <= f64::EPSILON * b.abs().max(1.0),
        (a, b) => a.is_none() && b.is_none(),
    }
}
