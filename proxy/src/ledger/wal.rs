//! Write-ahead segments: `wal-<first_seq>.jsonl`, one JSON object per line (a record or a
//! checkpoint), appended with one `write(2)` per line under the writer lock.

use std::path::{Path, PathBuf};

use super::chain::{parse_line, WalLine};
use super::LedgerError;

/// Name of the segment whose first record is `first_seq`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.jsonl")
}

/// Segments in `dir`, oldest first: `(first_seq, path)`.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LedgerError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LedgerError::io("list", dir, e))?;
    let mut segs = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("wal-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            segs.push((n, e.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

/// A line that is not a well-formed record or checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct BadLine {
    /// Byte offset of the line in the segment.
    pub offset: u64,
    /// Whether it is the last bytes of the file with no newline after it (a torn write).
    pub at_end: bool,
    /// Length of the bad bytes.
    pub len: usize,
}

/// A segment read back.
#[derive(Default)]
pub(crate) struct Segment {
    pub lines: Vec<(u64, WalLine)>,
    pub bad: Vec<BadLine>,
    /// Length of the good prefix (up to the first bad line).
    pub good_len: u64,
}

/// Read and parse a segment. `Ok(None)` when it has disappeared (deleted once indexed).
pub(crate) fn read_segment(path: &Path) -> Result<Option<Segment>, LedgerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LedgerError::io("read WAL segment", path, e)),
    };
    let mut seg = Segment::default();
    let mut off = 0usize;
    while off < bytes.len() {
        let (line, next, complete) = match bytes[off..].iter().position(|&b| b == b'\n') {
            Some(n) => (&bytes[off..off + n], off + n + 1, true),
            None => (&bytes[off..], bytes.len(), false),
        };
        match (complete, parse_line(line)) {
            (true, Some(l)) => {
                seg.lines.push((off as u64, l));
                if seg.bad.is_empty() {
                    seg.good_len = next as u64;
                }
            }
            _ => seg.bad.push(BadLine {
                offset: off as u64,
                at_end: !complete,
                len: line.len(),
            }),
        }
        off = next;
    }
    Ok(Some(seg))
}
