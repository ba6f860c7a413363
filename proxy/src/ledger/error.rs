//! What can go wrong with the ledger, each with the path involved and what to do.

use std::path::{Path, PathBuf};

/// Why the ledger could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file or directory of the ledger could not be used.
    #[error("ledger: cannot {op} {}: {source} ({hint})", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    /// The SQLite index failed.
    #[error("ledger index {}: {source} (check free disk space and permissions; `sluice audit verify` reports damaged records)", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A key file is missing, unreadable or malformed.
    #[error("ledger key {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    /// The ledger was written in a format this version does not continue.
    #[error("ledger {}: {detail}", path.display())]
    Format { path: PathBuf, detail: String },
    /// No ledger at that path.
    #[error("no ledger at {} (check `ledger.dir`; the proxy creates it at first start)", path.display())]
    NotFound { path: PathBuf },
    /// Another process has the ledger open for writing.
    #[error("ledger {} is in use by another process ({detail}); one proxy per ledger directory", path.display())]
    Locked { path: PathBuf, detail: String },
    /// A WAL segment holds bytes that are not a record, before its end.
    #[error("WAL segment {} is damaged at byte {offset}: {detail} (run `sluice audit verify`; move the segment aside to start anyway)", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// A failed write could not be undone; the ledger refuses records until reopened.
    #[error("ledger {} stopped accepting records after a write it could not undo: {detail} (fix the disk, then restart the proxy)", path.display())]
    Broken { path: PathBuf, detail: String },
    /// A record did not serialise to a JSON object (a bug).
    #[error("record cannot be serialised: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The ledger is shutting down.
    #[error("the ledger is closed")]
    Closed,
}

impl LedgerError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> LedgerError {
        use std::io::ErrorKind as K;
        let hint = match source.kind() {
            K::StorageFull => "the disk is full: free space or move `ledger.dir` to a larger volume",
            K::PermissionDenied | K::ReadOnlyFilesystem => {
                "the proxy user cannot write there: fix ownership/permissions or choose another `ledger.dir`"
            }
            K::NotFound => "the path does not exist: create it or fix `ledger.dir`",
            _ => "check that `ledger.dir` exists, is writable and has free space",
        };
        LedgerError::Io {
            op,
            path: path.to_path_buf(),
            source,
            hint,
        }
    }
}
