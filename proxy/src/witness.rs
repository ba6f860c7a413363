//! `sluice witness`: a small append-only service, run on another host than the nodes it
//! watches, that cosigns a node's checkpoint only when it extends the last one it holds
//! for that node, and serves what it holds to auditors.
//!
//! It speaks C2SP `tlog-witness`: `POST /add-checkpoint` with `old <size>`, the RFC 6962
//! consistency proof lines, a blank line and the signed checkpoint; it answers with a
//! `tlog-cosignature/v1` line (200), the size it holds (409, `text/x.tlog.size`), or a
//! refusal: unknown origin (404), no valid signature by the node's key (403),
//! malformed (400), a proof that does not verify (422), or a different root at a size
//! it already holds (409). So any standard witness can cosign Sluice's checkpoints, and
//! Sluice's witness can serve any log that speaks the protocol.
//!
//! **Trust.** A node authenticates with its checkpoint key: the witness is configured
//! with each node's vkey (`--log`) and accepts only checkpoints signed by it, under that
//! origin. The witness keeps one secret, its cosigning key, which an auditor does not
//! need to trust beyond its public vkey. Its store is append-only files under `--dir`:
//! `logs/<log id>/history.jsonl` (every checkpoint it cosigned, with the cosignature)
//! and `logs/<log id>/evidence.jsonl` (every checkpoint it refused although the origin
//! is known: a fork, a rewind, a bad proof, another key), both served read-only at
//! `GET /logs/<log id>/history` and `…/evidence`; `<log id>` is [`log_id`] of the
//! origin. Check-and-persist is atomic (one lock; the line is synced before the answer),
//! as the protocol requires.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::http::{reply, Reply};
use crate::tlog::merkle::{self, Hash};
use crate::tlog::note::{CheckpointText, Note, NoteSigner, NoteVerifier};

/// File name of the witness's cosigning key (32 bytes, hex, mode 0600).
pub const KEY_FILE: &str = "witness.key";
/// The most a request body may hold (a checkpoint and at most 63 proof lines fit well).
pub const MAX_BODY: usize = 64 << 10;
/// An evidence file stops growing at this size (refusals come from anyone who can
/// reach the port; the history, written only for valid checkpoints, is not capped).
const MAX_EVIDENCE: u64 = 64 << 20;

/// Why the witness cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// A file of the store or the key cannot be used.
    #[error("witness: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key or a stored line is malformed.
    #[error("witness: {}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// Two `--log` keys name the same origin.
    #[error("witness: origin `{0}` is configured twice; give each node one key")]
    DuplicateLog(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WitnessError {
    let path = path.to_path_buf();
    move |source| WitnessError::Io { op, path, source }
}

/// The directory name of an origin's files and its URL segment: 32 hex digits of the
/// origin's SHA-256 (origins hold `/`).
pub fn log_id(origin: &str) -> String {
    hex::encode(&Sha256::digest(origin.as_bytes())[..16])
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the witness cosigned (RFC 3339).
    pub received: String,
    /// Tree size.
    pub size: u64,
    /// The checkpoint as submitted (note text and the node's signature), with the
    /// witness's cosignature line appended.
    pub checkpoint: String,
}

/// One line of `evidence.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvidenceEntry {
    /// When it was refused.
    pub received: String,
    /// Why, in words.
    pub reason: String,
    /// The HTTP status it was refused with.
    pub status: u16,
    /// The request body as received.
    pub request: String,
}

struct Latest {
    size: u64,
    root: Hash,
}

/// The witness: its key, the logs it knows and what it holds of each.
pub struct Witness {
    signer: NoteSigner,
    logs: HashMap<String, NoteVerifier>,
    dir: PathBuf,
    latest: Mutex<HashMap<String, Latest>>,
}

impl Witness {
    /// Open (creating) the store in `dir`, load or generate the cosigning key, and read
    /// back the newest checkpoint held for each log.
    ///
    /// # Errors
    /// [`WitnessError`] naming the file that cannot be used.
    pub fn open(dir: &Path, name: &str, logs: Vec<NoteVerifier>) -> Result<Witness, WitnessError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("logs"))
            .map_err(io("create", dir))?;
        let key = load_or_create_key(&dir.join(KEY_FILE))?;
        let mut by_origin = HashMap::new();
        for v in logs {
            if by_origin.contains_key(&v.name) {
                return Err(WitnessError::DuplicateLog(v.name));
            }
            by_origin.insert(v.name.clone(), v);
        }
        let mut latest = HashMap::new();
        for origin in by_origin.keys() {
            let path = history_path(dir, origin);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &path)(e)),
            };
            let Some(last) = text.lines().rfind(|l| !l.trim().is_empty()) else {
                continue;
            };
            let corrupt = |detail: String| WitnessError::Corrupt {
                path: path.clone(),
                detail,
            };
            let entry: HistoryEntry = serde_json::from_str(last)
                .map_err(|e| corrupt(format!("last line is not a history entry: {e}")))?;
            let note = Note::parse(&entry.checkpoint).map_err(|e| corrupt(e.to_string()))?;
            let cp = CheckpointText::parse(&note.text).map_err(|e| corrupt(e.to_string()))?;
            latest.insert(
                origin.clone(),
                Latest {
                    size: cp.size,
                    root: cp.root,
                },
            );
        }
        Ok(Witness {
            signer: NoteSigner {
                name: name.to_owned(),
                key,
            },
            logs: by_origin,
            dir: dir.to_path_buf(),
            latest: Mutex::new(latest),
        })
    }

    /// The witness's cosigner vkey, for auditors (`audit verify --witness-key`).
    pub fn vkey(&self) -> String {
        self.signer.cosigner_vkey()
    }

    /// Handle `POST /add-checkpoint`.
    pub fn add_checkpoint(&self, body: &str) -> Reply {
        let req = match parse_request(body) {
            Ok(r) => r,
            Err(why) => return reply(400, format!("{why}\n")),
        };
        let Some(log) = self.logs.get(&req.cp.origin) else {
            return reply(404, format!("unknown origin `{}`\n", req.cp.origin));
        };
        let origin = &req.cp.origin;
        if !req.note.signed_by(log) {
            return self.refuse(
                origin,
                body,
                403,
                "no valid signature by the node's configured key (a new or foreign key)",
            );
        }
        if req.old > req.cp.size {
            return reply(400, "old size is larger than the checkpoint size\n");
        }
        // Check and persist under one lock: two submissions cannot both extend the
        // same size and roll each other back.
        let mut latest = self.latest.lock();
        let (held_size, held_root) = latest
            .get(origin)
            .map_or((0, merkle::empty_root()), |l| (l.size, l.root));
        if req.old != held_size {
            if req.cp.size <= held_size {
                if let Some(root) = self.held_root_at(origin, req.cp.size) {
                    if root != req.cp.root {
                        drop(latest);
                        return self.refuse(
                            origin,
                            body,
                            409,
                            &format!(
                                "fork: a different root for size {} than the one cosigned before",
                                req.cp.size
                            ),
                        );
                    }
                }
            }
            return Reply {
                status: 409,
                content_type: "text/x.tlog.size",
                body: format!("{held_size}\n"),
            };
        }
        if req.cp.size == held_size && req.cp.root != held_root && held_size > 0 {
            drop(latest);
            return self.refuse(
                origin,
                body,
                409,
                &format!("fork: a different root for the size {held_size} held"),
            );
        }
        if req.old > 0
            && !merkle::verify_consistency(
                req.old,
                req.cp.size,
                &req.proof,
                &held_root,
                &req.cp.root,
            )
        {
            drop(latest);
            return self.refuse(
                origin,
                body,
                422,
                &format!(
                    "the consistency proof from size {} to {} does not verify: not an append-only extension",
                    req.old, req.cp.size
                ),
            );
        }
        let now = SystemTime::now();
        let time = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cosig = self.signer.cosign(&req.note.text, time);
        let mut cosigned = req.note.clone();
        cosigned.signatures.push(cosig.clone());
        let entry = HistoryEntry {
            received: crate::record::rfc3339(now),
            size: req.cp.size,
            checkpoint: cosigned.render(),
        };
        if let Err(e) = append_line(&history_path(&self.dir, origin), &entry, None) {
            tracing::error!(error = %e, origin, "witness: cannot persist a checkpoint");
            return reply(500, "the witness cannot persist the checkpoint\n");
        }
        latest.insert(
            origin.clone(),
            Latest {
                size: req.cp.size,
                root: req.cp.root,
            },
        );
        drop(latest);
        tracing::info!(origin, size = req.cp.size, "witness: cosigned");
        let mut body = String::new();
        body.push_str(&cosig.render());
        Reply {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    /// The root this witness cosigned for `size`, if it holds that size.
    fn held_root_at(&self, origin: &str, size: u64) -> Option<Hash> {
        let text = std::fs::read_to_string(history_path(&self.dir, origin)).ok()?;
        text.lines().find_map(|l| {
            let e: HistoryEntry = serde_json::from_str(l).ok()?;
            if e.size != size {
                return None;
            }
            let note = Note::parse(&e.checkpoint).ok()?;
            Some(CheckpointText::parse(&note.text).ok()?.root)
        })
    }

    fn refuse(&self, origin: &str, body: &str, status: u16, reason: &str) -> Reply {
        tracing::warn!(origin, status, reason, "witness: refused a checkpoint");
        let entry = EvidenceEntry {
            received: crate::record::rfc3339(SystemTime::now()),
            reason: reason.to_owned(),
            status,
            request: body.to_owned(),
        };
        let path = self
            .dir
            .join("logs")
            .join(log_id(origin))
            .join("evidence.jsonl");
        if let Err(e) = append_line(&path, &entry, Some(MAX_EVIDENCE)) {
            tracing::error!(error = %e, origin, "witness: cannot keep evidence");
        }
        reply(status, format!("{reason}\n"))
    }

    /// `GET /logs/<log id>/history` or `…/evidence`: the file as stored (JSON lines).
    pub fn read(&self, log: &str, file: &str) -> Reply {
        let known = self.logs.keys().any(|o| log_id(o) == log);
        if !known || !matches!(file, "history" | "evidence") {
            return reply(404, "no such log or file\n");
        }
        let path = self
            .dir
            .join("logs")
            .join(log)
            .join(format!("{file}.jsonl"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Reply {
                status: 200,
                content_type: "application/jsonl",
                body: text,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reply {
                status: 200,
                content_type: "application/jsonl",
                body: String::new(),
            },
            Err(e) => reply(500, format!("cannot read {}: {e}\n", path.display())),
        }
    }

    /// Route one request.
    pub fn handle(&self, method: &str, path: &str, body: &str) -> Reply {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            ("POST", ["add-checkpoint"]) => self.add_checkpoint(body),
            ("GET", ["logs", log, file]) => self.read(log, file),
            ("GET", ["key"]) => reply(200, format!("{}\n", self.vkey())),
            ("GET", ["healthz"]) => reply(200, "ok\n"),
            _ => reply(404, "not found\n"),
        }
    }
}

fn history_path(dir: &Path, origin: &str) -> PathBuf {
    dir.join("logs").join(log_id(origin)).join("history.jsonl")
}

/// Append one JSON line and sync it (creating the log's directory).
fn append_line<T: Serialize>(path: &Path, value: &T, cap: Option<u64>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if cap.is_some_and(|c| f.metadata().map(|m| m.len()).unwrap_or(0) >= c) {
        return Ok(());
    }
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()
}

fn load_or_create_key(path: &Path) -> Result<ed25519_dalek::SigningKey, WitnessError> {
    let bytes: [u8; 32] = match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut b = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut b).map_err(|e| WitnessError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("not 64 hex digits: {e}"),
            })?;
            b
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            getrandom::getrandom(&mut b).map_err(|e| WitnessError::Io {
                op: "generate a key for",
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let mut f = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(io("create", path))?;
            f.write_all(hex::encode(b).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io("write", path))?;
            tracing::info!(path = %path.display(), "witness: generated a cosigning key");
            b
        }
        Err(e) => return Err(io("read", path)(e)),
    };
    Ok(ed25519_dalek::SigningKey::from_bytes(&bytes))
}

struct Request {
    old: u64,
    proof: Vec<Hash>,
    note: Note,
    cp: CheckpointText,
}

fn parse_request(body: &str) -> Result<Request, String> {
    let (head, note) = body
        .split_once("\n\n")
        .ok_or("the body is `old N`, proof lines, a blank line and the checkpoint")?;
    let mut lines = head.split('\n');
    let old = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .filter(|n| n == &"0" || (!n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or("the first line is `old <size>` in decimal")?;
    let proof = lines
        .map(|l| {
            B64.decode(l)
                .ok()
                .and_then(|b| <Hash>::try_from(b).ok())
                .ok_or_else(|| format!("proof line `{l}` is not a base64 32-byte hash"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if proof.len() > 63 {
        return Err("more than 63 proof lines".into());
    }
    if old == 0 && !proof.is_empty() {
        return Err("the proof must be empty when the old size is 0".into());
    }
    let note = Note::parse(note).map_err(|e| e.to_string())?;
    let cp = CheckpointText::parse(&note.text).map_err(|e| e.to_string())?;
    Ok(Request {
        old,
        proof,
        note,
        cp,
    })
}

/// The body of an `add-checkpoint` request.
pub fn add_checkpoint_body(old: u64, proof: &[Hash], checkpoint: &str) -> String {
    let mut b = format!("old {old}\n");
    for p in proof {
        b.push_str(&B64.encode(p));
        b.push('\n');
    }
    b.push('\n');
    b.push_str(checkpoint);
    b
}

/// Serve the witness on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, witness: Arc<Witness>) {
    let handler: crate::http::Handler =
        Arc::new(move |method, path, body| witness.handle(method, path, body));
    crate::http::serve(listener, None, MAX_BODY, handler).await;
}

pub mod s3;

#[cfg(test)]
mod tests;
