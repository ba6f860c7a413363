//! The audit ledger: every record Sluice emits, in one tamper-evident, queryable chain.
//!
//! # Write path
//! [`Ledger::append`] runs on the request path, before the last response byte is
//! released. It serialises the record outside any lock, then under one mutex assigns
//! the next `seq`, computes the chain hash and HMAC, and appends one line to the current
//! write-ahead segment `wal-<first_seq>.jsonl` with a single `write(2)`. Once `append`
//! returns the record survives a crash of the proxy (it is in the page cache); against
//! power loss `fsync: interval` (default) syncs the segment every 100 ms from a
//! background thread (a segment closed at 16 MiB too, on that thread's next turn: never
//! under the writer lock), `fsync: always` syncs inside `append`. A background indexer
//! inserts the records, in order and in transactions of up to 4,096, into SQLite
//! (`ledger.sqlite`, WAL journal mode) for queries; `append` waits only when 32k records
//! are queued for it. On open the segments are replayed into SQLite idempotently (keyed
//! by `seq`). A third thread checkpoints SQLite's WAL (the indexer finishes one itself
//! every 16 MiB it writes, so that WAL starts over) and deletes a segment once every
//! record in it is indexed, a checkpoint covers it and a complete SQLite checkpoint has
//! synced those rows.
//!
//! # Hashing scheme
//! The JSON object of a [`Record`] is split in two:
//! - **content** (interactions only): `request.messages`, `request.params`,
//!   `response.output`, `response.tool_calls`, as `{"request":{…},"response":{…}}`;
//! - **metadata**: everything else, plus `seq`, `prev_hash`, `hmac_key_id`, and for
//!   interactions `content_mode` and `content_sha256` = SHA-256 (hex) of the canonical
//!   content text.
//!
//! *Canonical* JSON: object keys sorted by their UTF-8 bytes at every depth, no
//! whitespace, strings and numbers as serde_json writes them (sorted explicitly, so the
//! form does not depend on serde_json's map feature). Then
//!
//! ```text
//! hash = SHA-256( prev_hash (32 raw bytes; zeros for seq 1) ‖ canonical(metadata) )
//! hmac = HMAC-SHA256( key named by hmac_key_id, hash (32 raw bytes) )
//! ```
//!
//! The exact canonical texts are stored (WAL line `{"meta":…,"content":…,"hash":…,
//! "hmac":…}`, SQLite columns `meta`/`content`, compressed there with a zstd dictionary
//! the index keeps: see `index`), so verification hashes bytes and never
//! depends on re-serialisation. Because the content enters the chain only through its
//! digest, retention can delete the content and the chain still verifies; while content
//! is present, verify checks it against `content_sha256`.
//!
//! Every `checkpoint_every` records or `checkpoint_interval` a **checkpoint**
//! `{seq, hash, ts, signature}` is written (WAL and `checkpoints` table), signed with
//! Ed25519 over the text `"{seq}|{hash}|{ts}"`. The signing key is `checkpoint.key`
//! (generated, 0600); its public key `checkpoint.pub.pem` ([`Ledger::public_key_pem`]) lets
//! an auditor without the HMAC secret verify the chain heads. An auditor should take the
//! public key from a trusted copy, not from the directory under audit.
//!
//! # Keys
//! The HMAC key comes from `hmac_key_file`, else `$SLUICE_LEDGER_HMAC_KEY` (hex or raw
//! text), else `<dir>/hmac.key`, generated (32 random bytes, hex, mode 0600) at first
//! open. `hmac_key_id` is derived from the key (16 hex digits of a SHA-256), so rotating
//! means: keep the old key as `<dir>/hmac-<anything>.key` for [`verify`] and configure a
//! new one.
//!
//! # Guarantees and limits
//! [`verify`] detects an edited record or content, a deleted record (gap), reordered
//! records, a wrong HMAC, a forged checkpoint and a truncated WAL. It cannot detect the
//! removal of the newest records after the last checkpoint by someone holding the
//! directory (the chain head is only pinned by checkpoints), nor a rewrite of the whole
//! chain by someone holding the HMAC key *and* the signing key. A torn last line of the
//! newest segment (a crash mid-write) is reported as an incomplete tail, not as
//! tampering, unless the index shows the record once existed in full.
//!
//! This module does not decide what a record contains ([`crate::record`]) nor what to do
//! when appending fails (`on_ledger_failure` is the caller's policy).

mod canon;
mod chain;
mod config;
mod error;
mod export;
mod index;
mod indexer;
mod keys;
mod maintenance;
mod query;
mod replay;
mod report;
mod retention;
mod sink;
mod verify;
mod wal;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{ContentMode, FsyncPolicy, LedgerConfig};
pub use error::LedgerError;
pub use export::{export, export_with_audit, ExportFormat};
pub use keys::{load_hmac_keys, rotate_hmac_key, Rotation, HMAC_KEY_ENV, PUBLIC_KEY_FILE};
pub use query::{query, tail_after, Filter};
pub use report::{render_report_text, report, ReportKind};
pub use sink::{record_id, LedgerSink};
pub use verify::{verify, VerifyError, VerifyErrorKind, VerifyOptions, VerifyReport};
pub use writer::{Appended, Ledger, RetentionReport};
