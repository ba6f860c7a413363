//! Handing records off the request path to a [`RecordSink`].
//!
//! The request path calls [`Recorder::submit`], which waits for room in a bounded
//! channel rather than dropping a record: under a stalled disk requests slow down, they
//! do not vanish from the audit trail. A dedicated writer thread drains the channel in
//! batches into the sink, so blocking file I/O never runs on the proxy's async workers.
//!
//! This module does not decide what a record contains ([`crate::record`]) nor how the
//! ledger chains them ([`crate::ledger::LedgerSink`] is the sink). Interactions do not come
//! this way: they are appended to the ledger on the request path, before the last byte of
//! the response is released (see `proxy::http`).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::metrics;
use crate::record::Record;

/// Errors from a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The record file could not be opened or written.
    #[error(
        "record file {path}: {source} (check the path exists, is writable and the disk has room)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A record could not be serialised (a bug; the record is logged instead).
    #[error("record serialisation failed: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Somewhere records are kept.
pub trait RecordSink: Send + 'static {
    /// Write a batch, in order. On error nothing in the batch may be half-written in a
    /// way that a retry would duplicate silently; JSONL appends whole lines only.
    ///
    /// # Errors
    /// [`SinkError`] when the batch could not be kept; the writer retries it.
    fn write_batch(&mut self, records: &[Record]) -> Result<(), SinkError>;
}

enum Msg {
    Record(Record),
    Flush(oneshot::Sender<()>),
}

/// Cheap, cloneable handle the request path submits records through.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Queue a record, waiting for room if the writer is behind.
    pub async fn submit(&self, record: Record) {
        metrics::RECORD_QUEUE.inc();
        if let Err(mpsc::error::SendError(Msg::Record(r))) = self.tx.send(Msg::Record(record)).await
        {
            // Only after shutdown: keep the record in the log rather than lose it.
            metrics::RECORD_QUEUE.dec();
            tracing::error!(record = %serde_json::to_string(&r).unwrap_or_default(), "record writer stopped; record logged instead");
        }
    }

    /// Queue a record from outside an async context (start-up), waiting for room.
    pub fn submit_blocking(&self, record: Record) {
        metrics::RECORD_QUEUE.inc();
        if self.tx.blocking_send(Msg::Record(record)).is_err() {
            metrics::RECORD_QUEUE.dec();
            tracing::error!("record writer stopped; start-up record not kept");
        }
    }

    /// Wait until every record submitted before this call has been written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Start the writer thread for `sink`; records queue up to `capacity`.
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn_writer(
    mut sink: Box<dyn RecordSink>,
    capacity: usize,
) -> std::io::Result<(Recorder, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<Msg>(capacity);
    let handle = std::thread::Builder::new()
        .name("sluice-records".into())
        .spawn(move || {
            let mut batch: Vec<Record> = Vec::with_capacity(256);
            let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                let mut next = Some(first);
                // Drain what is already queued into one batch.
                while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                    match msg {
                        Msg::Record(r) => batch.push(r),
                        Msg::Flush(w) => waiters.push(w),
                    }
                    if batch.len() >= 1024 {
                        break;
                    }
                }
                write_with_retry(sink.as_mut(), &mut batch);
                for w in waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        })?;
    Ok((Recorder { tx }, handle))
}

/// Write `batch` until it is kept, backing off on errors; never drops a record.
fn write_with_retry(sink: &mut dyn RecordSink, batch: &mut Vec<Record>) {
    if batch.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        match sink.write_batch(batch) {
            Ok(()) => {
                for r in batch.iter() {
                    metrics::RECORDS_WRITTEN
                        .with_label_values(&[r.kind()])
                        .inc();
                }
                metrics::RECORD_QUEUE.sub(batch.len() as i64);
                batch.clear();
                return;
            }
            Err(e) => {
                metrics::RECORD_ERRORS.inc();
                tracing::error!(error = %e, pending = batch.len(), "cannot write records; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Connection, Identity, Outcome, Upstream};

    fn conn(n: u64) -> Record {
        Record::Connection(Box::new(Connection {
            id: crate::record::new_id(),
            ts: crate::record::rfc3339(std::time::SystemTime::now()),
            kind: "connection",
            outcome: Outcome::Passthrough,
            reason: "not_inspected".into(),
            sni: None,
            identity: Identity::default(),
            upstream: Upstream::default(),
            bytes_up: n,
            bytes_down: 0,
            duration_ms: 0.0,
            error: None,
        }))
    }

    /// Fails the first `failures` writes, then keeps everything.
    struct Flaky {
        failures: usize,
        kept: std::sync::Arc<parking_lot::Mutex<Vec<u64>>>,
    }
    impl RecordSink for Flaky {
        fn write_batch(&mut self, records: &[Record]) -> Result<(), SinkError> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(SinkError::Io {
                    path: "flaky".into(),
                    source: std::io::Error::other("disk full"),
                });
            }
            for r in records {
                if let Record::Connection(c) = r {
                    self.kept.lock().push(c.bytes_up);
                }
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn records_survive_write_errors_in_order() {
        let kept = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (rec, _h) = spawn_writer(
            Box::new(Flaky {
                failures: 2,
                kept: kept.clone(),
            }),
            4,
        )
        .unwrap();
        for n in 0..100 {
            rec.submit(conn(n)).await;
        }
        rec.flush().await;
        assert_eq!(*kept.lock(), (0..100).collect::<Vec<_>>());
    }
}
