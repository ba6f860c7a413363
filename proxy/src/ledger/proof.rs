//! Inclusion proofs for exported records: `sluice audit export --with-proofs` adds to each
//! record a `sluice_proof` object, and [`check_exported`] (`sluice audit check-record`)
//! checks one record offline, without the ledger, against the checkpoint it names:
//!
//! ```json
//! "sluice_proof": {
//!   "meta": "<the canonical metadata text that was hashed>",
//!   "content": "<the canonical content text>" | null,
//!   "leaf_index": 41, "tree_size": 1000,
//!   "inclusion": ["<base64 hash>", …],
//!   "checkpoint": "<the C2SP checkpoint note, with witnesses' cosignatures>"
//! }
//! ```
//!
//! What a check proves: the exported fields are exactly the hashed metadata and content
//! (rebuilt the way the export built them), the record's chain hash is its metadata's,
//! its leaf is at `leaf_index` under the checkpoint's root (RFC 6962 inclusion proof),
//! the checkpoint is signed by the node's key under its origin and cosigned by at least
//! `quorum` of the given witnesses. Each record is proved against the newest cosigned
//! checkpoint that covers it, else the newest signed one (then no witness vouches for
//! it, which the check reports); records newer than every checkpoint carry
//! `{"unproven": …}`.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::chain::{self, Checkpoint};
use super::outbox::{Cosigned, COSIGNED_FILE};
use super::{index, LedgerError};
use crate::tlog::merkle::{self, Frontier, Tree};
use crate::tlog::note::{CheckpointText, Note, NoteVerifier};

/// Makes the proofs of one export.
pub(super) struct Prover {
    tree: Tree,
    /// `(size, note)` of the newest checkpoint cosigned by witnesses (their
    /// cosignatures for that size merged into one note).
    cosigned: Option<(u64, String)>,
    /// The newest checkpoint the node signed.
    signed: Option<Checkpoint>,
}

impl Prover {
    /// Read the tree (from the retention anchor on) and the newest checkpoints.
    pub(super) fn open(dir: &Path, conn: &rusqlite::Connection) -> Result<Prover, LedgerError> {
        let db = index::db_path(dir);
        let e = index::sql_err(&db);
        let corrupt = |detail: String| LedgerError::Corrupt {
            path: db.clone(),
            offset: 0,
            detail,
        };
        let base = match index::anchor(conn).map_err(&e)? {
            Some((seq, _, roots)) => roots
                .iter()
                .map(|h| chain::decode_hash(h))
                .collect::<Option<Vec<_>>>()
                .and_then(|r| Frontier::from_parts(seq, r))
                .ok_or_else(|| corrupt("the retention anchor's frontier is malformed".into()))?,
            None => Frontier::default(),
        };
        let mut tree = Tree::new(base);
        let mut stmt = conn
            .prepare("SELECT seq, hash FROM records WHERE seq > ?1 ORDER BY seq")
            .map_err(&e)?;
        let mut rows = stmt.query([tree.size() as i64]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let seq = r.get::<_, i64>(0).map_err(&e)? as u64;
            let hash: String = r.get(1).map_err(&e)?;
            match chain::decode_hash(&hash) {
                Some(h) if seq == tree.size() + 1 => tree.push(h),
                _ => {
                    return Err(corrupt(format!(
                        "record {seq} does not continue the tree (run `sluice audit verify`)"
                    )))
                }
            }
        }
        tree.cache();
        let signed = index::checkpoints(conn, 0).map_err(&e)?.pop();
        Ok(Prover {
            tree,
            cosigned: newest_cosigned(dir),
            signed,
        })
    }

    /// The `sluice_proof` of the record at `seq` with these stored texts.
    pub(super) fn proof(&self, seq: u64, meta: &str, content: Option<&str>) -> Value {
        let cp = match (&self.cosigned, &self.signed) {
            (Some((size, note)), _) if *size >= seq => Some((*size, note.as_str())),
            (_, Some(c)) if c.seq >= seq => Some((c.seq, c.note.as_str())),
            _ => None,
        };
        let Some((size, note)) = cp else {
            return json!({ "unproven": "no checkpoint covers this record yet" });
        };
        match self.tree.inclusion_proof(seq - 1, size) {
            Ok(path) => json!({
                "meta": meta,
                "content": content,
                "leaf_index": seq - 1,
                "tree_size": size,
                "inclusion": path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                "checkpoint": note,
            }),
            Err(err) => json!({ "unproven": err.to_string() }),
        }
    }
}

/// The largest size in `cosigned.jsonl`, with every witness's cosignature of it.
fn newest_cosigned(dir: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(dir.join(COSIGNED_FILE)).ok()?;
    let lines: Vec<Cosigned> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let size = lines.iter().map(|c| c.size).max()?;
    let mut merged: Option<Note> = None;
    for c in lines.iter().filter(|c| c.size == size) {
        let Ok(n) = Note::parse(&c.checkpoint) else {
            continue;
        };
        match &mut merged {
            None => merged = Some(n),
            Some(m) if m.text == n.text => {
                for s in n.signatures {
                    if !m.signatures.contains(&s) {
                        m.signatures.push(s);
                    }
                }
            }
            Some(_) => {}
        }
    }
    merged.map(|n| (size, n.render()))
}

/// What [`check_exported`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRecord {
    /// The record's seq.
    pub seq: u64,
    /// The size of the tree head it was proved under.
    pub tree_size: u64,
    /// The witnesses (of those given) that cosigned that head.
    pub cosigned_by: Vec<String>,
}

/// Check one exported record (an object with `sluice_proof`) offline against the node's
/// checkpoint key `node` and, with `quorum > 0`, at least `quorum` cosignatures by
/// `witnesses`.
///
/// # Errors
/// What does not hold, in words.
pub fn check_exported(
    record: &Value,
    node: &NoteVerifier,
    witnesses: &[NoteVerifier],
    quorum: usize,
) -> Result<CheckedRecord, String> {
    let mut rec: Map<String, Value> = record.as_object().cloned().ok_or("not a JSON object")?;
    let proof = rec
        .remove("sluice_proof")
        .ok_or("no sluice_proof (export with --with-proofs)")?;
    if let Some(why) = proof.get("unproven").and_then(Value::as_str) {
        return Err(format!("exported without a proof: {why}"));
    }
    let text = |k: &str| proof.get(k).and_then(Value::as_str);
    let meta = text("meta").ok_or("sluice_proof.meta is missing")?;
    let content = text("content");
    let hash = rec
        .get("hash")
        .and_then(Value::as_str)
        .ok_or("the record has no hash")?;
    let hmac = rec.get("hmac").and_then(Value::as_str).unwrap_or("");
    if index::display(meta, content, hash, hmac) != Value::Object(rec.clone()) {
        return Err("the exported fields differ from the hashed metadata and content".into());
    }
    let m: Map<String, Value> =
        serde_json::from_str(meta).map_err(|_| "sluice_proof.meta is not a JSON object")?;
    let seq = m
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("the metadata has no seq")?;
    let prev = m
        .get("prev_hash")
        .and_then(Value::as_str)
        .and_then(chain::decode_hash)
        .ok_or("the metadata has no prev_hash")?;
    let h = chain::chain_hash(&prev, meta);
    if chain::hex_string(&h) != hash {
        return Err(format!(
            "seq {seq}: the metadata does not hash to the record's hash"
        ));
    }
    if let Some(c) = content {
        if m.get("content_sha256").and_then(Value::as_str) != Some(&chain::sha256_hex(c.as_bytes()))
        {
            return Err(format!(
                "seq {seq}: the content does not match content_sha256"
            ));
        }
    }
    let note = Note::parse(text("checkpoint").ok_or("sluice_proof.checkpoint is missing")?)
        .map_err(|e| format!("the checkpoint: {e}"))?;
    let cp = CheckpointText::parse(&note.text).map_err(|e| format!("the checkpoint: {e}"))?;
    if cp.origin != node.name {
        return Err(format!(
            "the checkpoint is for origin `{}`, not `{}`",
            cp.origin, node.name
        ));
    }
    if !note.signed_by(node) {
        return Err("the checkpoint carries no valid signature by the node's key".into());
    }
    let cosigned_by: Vec<String> = witnesses
        .iter()
        .filter(|w| note.cosigned_by(w).is_some())
        .map(|w| w.name.clone())
        .collect();
    if cosigned_by.len() < quorum {
        return Err(format!(
            "the checkpoint is cosigned by {} of the witnesses given, {quorum} required",
            cosigned_by.len()
        ));
    }
    let index = proof.get("leaf_index").and_then(Value::as_u64);
    let size = proof.get("tree_size").and_then(Value::as_u64);
    if index != Some(seq - 1) || size != Some(cp.size) {
        return Err(format!(
            "seq {seq}: the proof is for leaf {index:?} of size {size:?}, not leaf {} of the checkpoint's size {}",
            seq - 1,
            cp.size
        ));
    }
    let path = proof
        .get("inclusion")
        .and_then(Value::as_array)
        .ok_or("sluice_proof.inclusion is missing")?
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| B64.decode(s).ok())
                .and_then(|b| <merkle::Hash>::try_from(b).ok())
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("sluice_proof.inclusion holds something other than base64 hashes")?;
    if !merkle::verify_inclusion(&merkle::leaf_hash(&h), seq - 1, cp.size, &path, &cp.root) {
        return Err(format!(
            "seq {seq}: the inclusion proof does not lead to the checkpoint's root (size {})",
            cp.size
        ));
    }
    Ok(CheckedRecord {
        seq,
        tree_size: cp.size,
        cosigned_by,
    })
}
