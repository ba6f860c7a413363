//! The ledger as a [`RecordSink`]: where the record writer hands finished records.

use std::sync::Arc;

use super::writer::Ledger;
use crate::record::Record;
use crate::sink::{RecordSink, SinkError};

/// Feeds the existing record writer thread into the ledger, for records that were not
/// appended synchronously on the request path.
pub struct LedgerSink {
    pub(super) ledger: Arc<Ledger>,
    /// After a failed batch: `(id of its first record, records already appended)`, so
    /// the writer's retry of the same batch does not append them twice.
    pub(super) resume: Option<(String, usize)>,
}

impl LedgerSink {
    /// A sink appending to `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> LedgerSink {
        LedgerSink {
            ledger,
            resume: None,
        }
    }
}

/// The id of any record.
pub fn record_id(r: &Record) -> &str {
    match r {
        Record::Interaction(i) => &i.id,
        Record::Connection(c) => &c.id,
        Record::Admin(a) => &a.id,
        Record::Alert(a) => &a.id,
    }
}

impl RecordSink for LedgerSink {
    fn write_batch(&mut self, records: &[Record]) -> Result<(), SinkError> {
        let first = records.first().map(record_id).unwrap_or_default();
        let skip = match self.resume.take() {
            Some((id, n)) if id == first => n,
            _ => 0,
        };
        for (i, r) in records.iter().enumerate().skip(skip) {
            if let Err(e) = self.ledger.append(r) {
                self.resume = Some((first.to_owned(), i));
                return Err(SinkError::Io {
                    path: self.ledger.dir().to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
        Ok(())
    }
}
