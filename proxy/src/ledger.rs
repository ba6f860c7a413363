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
//! are queued for it, and wakes it only at the queue length it asked for (its first
//! record after idling, or the one completing the batch it gathers). On open the segments are replayed into SQLite idempotently (keyed
//! by `seq`). A third thread checkpoints SQLite's WAL (the indexer finishes one itself
//! every 16 MiB it writes, so that WAL starts over) and deletes a segment once every
//! record in it is indexed, a checkpoint covers it and a complete SQLite checkpoint has
//! synced those rows. With `witnesses` configured a fourth thread, the outbox, hands each
//! newest checkpoint to every witness off the node with the consistency proof from the
//! size it holds (`outbox`).
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
//! Every `checkpoint_every` records or `checkpoint_interval` a **checkpoint** is written
//! (WAL and `checkpoints` table): the RFC 6962 Merkle tree head over records `1..=seq`
//! (leaf input: each record's 32-byte chain hash; see `merkle`) as a C2SP
//! `tlog-checkpoint` signed note (`note`): origin (`ledger.origin`, default
//! `sluice/<key fingerprint>`), tree size, base64 root, signed with Ed25519. The signing
//! key is `checkpoint.key` (generated, 0600); its public key `checkpoint.pub.pem`
//! ([`Ledger::public_key_pem`]) lets an auditor without the HMAC secret verify the tree
//! heads. An auditor should take the public key from a trusted copy, not from the
//! directory under audit. Retention prunes only up to a checkpoint and keeps its Merkle
//! frontier in the hashed retention record, so roots and proofs past it still compute.
//!
//! Which mechanism proves what: the **chain** orders records and names the first one a
//! local edit broke; the **HMAC** shows a record was written by a holder of the secret
//! key; the **tree heads** pin every record before them under a signature, and
//! consistency proofs between them show the ledger only grew, which a witness off the
//! node checks before it cosigns.
//!
//! # Keys
//! The HMAC key comes from `hmac_key_command` (a command printing it: a KMS or vault
//! agent), else `hmac_key_file`, else `$SLUICE_LEDGER_HMAC_KEY` (hex or raw text), else
//! `<dir>/hmac.key`, generated (32 random bytes, hex, mode 0600) at first open. The
//! signing key likewise from `signing_key_command`, `signing_key_file` (PKCS#8 PEM or a
//! hex seed), else `<dir>/checkpoint.key`, generated. A key file must be owned by root or
//! Sluice's user and readable by nobody else, or the ledger refuses to open (see `keys`).
//! `hmac_key_id` is derived from the key (16 hex digits of a SHA-256), so rotating
//! means: keep the old key as `<dir>/hmac-<anything>.key` for [`verify`] and configure a
//! new one.
//!
//! # Guarantees and limits
//! [`verify`] detects an edited record or content, a deleted record (gap), reordered
//! records, a wrong HMAC, a forged checkpoint, records that do not hash to a signed tree
//! head, checkpoints missing from the cadence (`checkpoint_every` records; the head
//! within `checkpoint_interval`) and a truncated WAL. On the node alone it cannot
//! detect a cut back to an older checkpoint, nor a rewrite of the whole ledger, by
//! someone holding the signing key (node root): that takes a witness off the node. A torn last line of the
//! newest segment (a crash mid-write) is reported as an incomplete tail, not as
//! tampering, unless the index shows the record once existed in full.
//!
//! This module does not decide what a record contains ([`crate::record`]) nor what to do
//! when appending fails (`on_ledger_failure` is the caller's policy).

mod canon;
pub mod central;
mod chain;
mod config;
mod error;
mod export;
pub mod follow;
mod index;
mod indexer;
mod keys;
mod maintenance;
mod outbox;
mod proof;
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

pub(crate) use config::de_duration;
pub use config::{ContentMode, FsyncPolicy, LedgerConfig, WitnessKind, WitnessTarget};
pub use error::LedgerError;
pub(crate) use export::syslog_line;
pub use export::{export, export_with_audit, export_with_proofs, ExportFormat};
pub use keys::{
    checkpoint_verifier, load_hmac_keys, rotate_hmac_key, Rotation, Secret, HMAC_KEY_ENV,
    PUBLIC_KEY_FILE,
};
pub use proof::{check_exported, CheckedRecord};
pub use query::{query, tail_after, Filter};
pub(crate) use report::value_of;
pub use report::{
    concerns, principal, render_report_html, render_report_text, report, workload, By, ReportKind,
    ReportOptions, Sums,
};
pub use sink::{record_id, LedgerSink};
pub use verify::{
    verify, VerifyError, VerifyErrorKind, VerifyOptions, VerifyReport, WitnessCheck, WitnessedHead,
};
pub use writer::{Appended, Ledger, RetentionReport};
