//! The witness outbox: every checkpoint goes to each configured witness (C2SP
//! `tlog-witness` `add-checkpoint`, with the RFC 6962 consistency proof from the size
//! the witness holds) until the witness cosigns it.
//!
//! Durable without a queue of its own: the checkpoints table is the outbox and
//! `witnesses.json` holds, per witness, the size it last cosigned. A witness that is
//! down or refuses is retried with backoff (1 s doubling to 60 s); only the newest
//! checkpoint is sent, since a witness keeps only the latest and the proof covers the
//! records in between. Cosigned checkpoints are appended to `cosigned.jsonl` for
//! auditors and for `audit export --with-proofs`. `sluice_ledger_witness_lag_seconds`
//! rises while a witness holds less than the newest checkpoint and falls to 0 when it
//! catches up. A witness that answers with a size *larger* than this ledger's newest
//! checkpoint means the ledger was cut back or replaced: logged as an error
//! (`witness_ahead`), never adopted.
//!
//! The thread keeps the leaf hashes of the records since the retention anchor in memory
//! (32 bytes a record) to compute proofs; retention never prunes past the size every
//! witness holds, so a proof from that size can always be made.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::chain::{self, Checkpoint};
use super::config::WitnessKind;
use super::index;
use super::writer::Inner;
use crate::http::client;
use crate::metrics::{WITNESS_ERRORS, WITNESS_LAG, WITNESS_SIZE};
use crate::tlog::merkle::{Frontier, Tree};
use crate::tlog::note::{CheckpointText, Note};

/// Per witness (by name), the tree size it last cosigned.
pub(super) const STATE_FILE: &str = "witnesses.json";
/// Every checkpoint as cosigned, one JSON object a line.
pub(super) const COSIGNED_FILE: &str = "cosigned.jsonl";

const TICK: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What `witnesses.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) sizes: BTreeMap<String, u64>,
}

pub(super) fn read_state(dir: &Path) -> State {
    crate::state_file::load(&dir.join(STATE_FILE))
}

fn write_state(dir: &Path, state: &State) -> std::io::Result<()> {
    crate::state_file::save(&dir.join(STATE_FILE), state)
}

/// One line of `cosigned.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Cosigned {
    pub(super) witness: String,
    pub(super) size: u64,
    /// The checkpoint note with the witness's cosignature line appended.
    pub(super) checkpoint: String,
}

struct Target {
    name: String,
    kind: WitnessKind,
    held: u64,
    waiting_since: Option<Instant>,
    retry_at: Instant,
    failures: u32,
}

impl Target {
    fn fail(&mut self, reason: &str, detail: &str) {
        WITNESS_ERRORS
            .with_label_values(&[&self.name, reason])
            .inc();
        self.failures += 1;
        let backoff = Duration::from_secs(1 << self.failures.min(6)).min(MAX_BACKOFF);
        self.retry_at = Instant::now() + backoff;
        tracing::warn!(witness = %self.name, reason, detail, retry_in_s = backoff.as_secs(), "ledger: checkpoint not cosigned");
    }
}

/// The outbox thread: runs until the ledger stops, then makes one last round.
pub(super) fn outbox(inner: Arc<Inner>) {
    let dir = inner.cfg.dir.clone();
    let mut state = read_state(&dir);
    let mut targets: Vec<Target> = inner
        .cfg
        .witnesses
        .iter()
        .filter_map(|w| {
            let kind = w.kind().ok()?;
            let name = kind.name();
            Some(Target {
                held: state.sizes.get(&name).copied().unwrap_or(0),
                name,
                kind,
                waiting_since: None,
                retry_at: Instant::now(),
                failures: 0,
            })
        })
        .collect();
    let mut tree: Option<Tree> = None;
    let mut newest: Option<Checkpoint> = None;
    let mut conn = None;
    loop {
        let stopping = inner.stop.load(Ordering::SeqCst);
        if conn.is_none() {
            conn = index::open_ro(&dir)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "ledger: witness outbox cannot open the index"),
                )
                .ok();
        }
        if let Some(c) = &conn {
            if let Err(e) = round(&inner, c, &mut targets, &mut tree, &mut newest, stopping) {
                tracing::warn!(error = %e, "ledger: witness outbox cannot read the index");
                conn = None;
            }
        }
        let sizes: BTreeMap<String, u64> =
            targets.iter().map(|t| (t.name.clone(), t.held)).collect();
        if sizes != state.sizes {
            state.sizes = sizes;
            if let Err(e) = write_state(&dir, &state) {
                tracing::error!(error = %e, "ledger: cannot save the witness outbox state");
            }
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(TICK);
    }
}

fn round(
    inner: &Inner,
    conn: &rusqlite::Connection,
    targets: &mut [Target],
    tree: &mut Option<Tree>,
    newest: &mut Option<Checkpoint>,
    last: bool,
) -> Result<(), String> {
    let after = newest.as_ref().map_or(0, |c| c.seq);
    if let Some(cp) = index::checkpoints(conn, after)
        .map_err(|e| e.to_string())?
        .pop()
    {
        *newest = Some(cp);
    }
    let Some(cp) = newest.as_ref() else {
        return Ok(());
    };
    for t in targets.iter_mut() {
        if t.held >= cp.seq {
            t.waiting_since = None;
            WITNESS_LAG.with_label_values(&[&t.name]).set(0);
            WITNESS_SIZE
                .with_label_values(&[&t.name])
                .set(t.held as i64);
            continue;
        }
        let since = *t.waiting_since.get_or_insert_with(Instant::now);
        WITNESS_LAG
            .with_label_values(&[&t.name])
            .set(since.elapsed().as_secs() as i64);
        if Instant::now() < t.retry_at && !last {
            continue;
        }
        match &t.kind {
            WitnessKind::Tlog { .. } => {
                let tr = extend(conn, tree, cp.seq)?;
                deliver(inner, t, tr, cp);
            }
            WitnessKind::S3(s3) => {
                let origin = Note::parse(&cp.note)
                    .ok()
                    .and_then(|n| CheckpointText::parse(&n.text).ok())
                    .map(|c| c.origin);
                let result = origin
                    .ok_or_else(|| "the checkpoint's note does not parse".to_owned())
                    .and_then(|o| crate::witness::s3::put_checkpoint(s3, &o, cp.seq, &cp.note));
                match result {
                    Ok(()) => held(t, cp.seq),
                    Err(e) if e.starts_with("PUT answered") => t.fail("http_error", &e),
                    Err(e) => t.fail("unreachable", &e),
                }
            }
        }
    }
    Ok(())
}

/// The tree, grown to at least `size` from the index (rebuilt when it cannot grow).
fn extend<'a>(
    conn: &rusqlite::Connection,
    tree: &'a mut Option<Tree>,
    size: u64,
) -> Result<&'a Tree, String> {
    if tree.as_ref().is_none_or(|t| t.size() > size) {
        let base = match index::anchor(conn).map_err(|e| e.to_string())? {
            Some((seq, _, roots)) => roots
                .iter()
                .map(|h| chain::decode_hash(h))
                .collect::<Option<Vec<_>>>()
                .and_then(|r| Frontier::from_parts(seq, r))
                .ok_or("the retention anchor's frontier is malformed")?,
            None => Frontier::default(),
        };
        *tree = Some(Tree::new(base));
    }
    let Some(t) = tree.as_mut() else {
        return Err("no tree".into());
    };
    if t.size() < size {
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, hash FROM records WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
            )
            .map_err(|e| e.to_string())?;
        let mut rows = stmt
            .query([t.size() as i64, size as i64])
            .map_err(|e| e.to_string())?;
        while let Some(r) = rows.next().map_err(|e| e.to_string())? {
            let seq = r.get::<_, i64>(0).map_err(|e| e.to_string())? as u64;
            let hash: String = r.get(1).map_err(|e| e.to_string())?;
            let h = chain::decode_hash(&hash).ok_or(format!("record {seq}: malformed hash"))?;
            if seq != t.size() + 1 {
                *tree = None;
                return Err(format!("the index skips from {} to {seq}", seq - 1));
            }
            t.push(h);
        }
    }
    tree.as_ref().ok_or_else(|| "no tree".into())
}

fn deliver(inner: &Inner, t: &mut Target, tree: &Tree, cp: &Checkpoint) {
    // At most two tries: the second after a 409 told which size the witness holds.
    for _ in 0..2 {
        if t.held > cp.seq {
            return t.fail(
                "witness_ahead",
                &format!(
                    "the witness holds size {} but this ledger's newest checkpoint is {}: the ledger was cut back or replaced (run `sluice audit verify --witness`)",
                    t.held, cp.seq
                ),
            );
        }
        let proof = match tree.consistency_proof(t.held, cp.seq) {
            Ok(p) => p,
            Err(e) => return t.fail("proof", &e.to_string()),
        };
        let body = crate::witness::add_checkpoint_body(t.held, &proof, &cp.note);
        let WitnessKind::Tlog { url, .. } = &t.kind else {
            return;
        };
        let ans = match client::exchange(url, "POST", "/add-checkpoint", &body, TIMEOUT) {
            Ok(a) => a,
            Err(e) => return t.fail("unreachable", &e.to_string()),
        };
        match ans.status {
            200 => return accept(inner, t, cp, &ans.body),
            409 if ans.content_type.starts_with("text/x.tlog.size") => {
                match ans.body.trim().parse::<u64>() {
                    Ok(n) if n > cp.seq => t.held = n,
                    Ok(n) => {
                        tracing::info!(witness = %t.name, holds = n, "ledger: witness holds another size; sending the proof from it");
                        t.held = n;
                    }
                    Err(_) => return t.fail("http_error", "409 without a size"),
                }
            }
            s @ (403 | 404 | 409 | 422) => {
                return t.fail(&format!("refused_{s}"), ans.body.trim());
            }
            s => return t.fail("http_error", &format!("status {s}: {}", ans.body.trim())),
        }
    }
}

fn accept(inner: &Inner, t: &mut Target, cp: &Checkpoint, answer: &str) {
    let Ok(mut note) = Note::parse(&cp.note) else {
        return t.fail("proof", "the checkpoint's own note does not parse");
    };
    let Ok(lines) = Note::parse(&format!("-\n\n{answer}")) else {
        return t.fail("bad_cosignature", "the answer is not signature lines");
    };
    note.signatures.extend(lines.signatures);
    let WitnessKind::Tlog { key, .. } = &t.kind else {
        return;
    };
    if note.cosigned_by(key).is_none() {
        return t.fail(
            "bad_cosignature",
            "no valid cosignature by the configured witness key",
        );
    }
    let line = Cosigned {
        witness: t.name.clone(),
        size: cp.seq,
        checkpoint: note.render(),
    };
    if let Err(e) = append_cosigned(&inner.cfg.dir, &line) {
        tracing::error!(error = %e, "ledger: cannot keep a cosigned checkpoint");
    }
    held(t, cp.seq);
}

/// The witness holds `size` now.
fn held(t: &mut Target, size: u64) {
    t.held = size;
    t.failures = 0;
    t.waiting_since = None;
    WITNESS_LAG.with_label_values(&[&t.name]).set(0);
    WITNESS_SIZE.with_label_values(&[&t.name]).set(size as i64);
    tracing::debug!(witness = %t.name, size, at = ?SystemTime::now(), "ledger: checkpoint witnessed");
}

fn append_cosigned(dir: &Path, line: &Cosigned) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(COSIGNED_FILE))?;
    let mut b = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    b.push(b'\n');
    f.write_all(&b)
}
