//! Failures (a full disk), the sink and the config section.

use super::*;

#[test]
fn full_disk_is_a_clear_error_and_counted() {
    let t = TempDir::new("full");
    let l = Ledger::open(&cfg(&t.ledger())).unwrap();
    l.append(&interaction(0)).unwrap();
    let before = crate::metrics::LEDGER_APPEND_ERRORS.get();
    l.redirect_wal(Path::new("/dev/full"));
    let err = l.append(&interaction(1)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/dev/full") && msg.contains("disk is full"),
        "{msg}"
    );
    assert!(crate::metrics::LEDGER_APPEND_ERRORS.get() > before);
    let err = Ledger::open(&cfg(Path::new("/proc/sluice-ledger-test"))).unwrap_err();
    assert!(
        err.to_string().contains("/proc/sluice-ledger-test"),
        "{err}"
    );
    l.crash();
}

#[tokio::test]
async fn ledger_sink_feeds_the_writer_thread() {
    let t = TempDir::new("sink");
    let dir = t.ledger();
    let ledger = Arc::new(Ledger::open(&cfg(&dir)).unwrap());
    let (rec, handle) =
        crate::sink::spawn_writer(Box::new(LedgerSink::new(ledger.clone())), 16).unwrap();
    for i in 0..50 {
        rec.submit(interaction(i)).await;
    }
    rec.flush().await;
    drop(rec);
    handle.join().unwrap();
    ledger.flush();
    assert_eq!(tail_after(&dir, 0).unwrap().len(), 50);
    drop(ledger);
    assert!(check(&dir).ok);
}

#[test]
fn sink_retry_does_not_duplicate() {
    let t = TempDir::new("sinkretry");
    let ledger = Arc::new(Ledger::open(&cfg(&t.ledger())).unwrap());
    let mut sink = LedgerSink::new(ledger.clone());
    let batch: Vec<Record> = (0..3).map(interaction).collect();
    sink.resume = Some((record_id(&batch[0]).to_owned(), 2));
    sink.write_batch(&batch).unwrap();
    ledger.flush();
    assert_eq!(
        tail_after(&t.ledger(), 0).unwrap().len(),
        1,
        "records already appended are skipped"
    );
}

#[test]
fn config_parses_with_defaults_and_rejects_unknown_keys() {
    let c: LedgerConfig = serde_yaml_ng::from_str(
        "dir: /var/lib/sluice/ledger\nfsync: always\ncheckpoint_interval: 500ms\ncontent_mode: metadata\ncontent_retention_days: 30\n",
    )
    .unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Always);
    assert_eq!(c.checkpoint_interval, Duration::from_millis(500));
    assert_eq!(c.checkpoint_every, 1000);
    assert_eq!(c.retention_days, 90);
    assert_eq!(c.content_mode, ContentMode::Metadata);
    let c: LedgerConfig =
        serde_yaml_ng::from_str("fsync: 250ms\ncheckpoint_interval: 3\n").unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(250)));
    assert_eq!(c.checkpoint_interval, Duration::from_secs(3));
    let e = serde_yaml_ng::from_str::<LedgerConfig>("fsnyc: always\n").unwrap_err();
    assert!(e.to_string().contains("fsnyc"), "{e}");
    let e = serde_yaml_ng::from_str::<LedgerConfig>("fsync: sometimes\n").unwrap_err();
    assert!(e.to_string().contains("sometimes"), "{e}");
}

#[test]
fn fsync_always_and_timed_checkpoints() {
    let t = TempDir::new("always");
    let dir = t.ledger();
    let l = Ledger::open(&LedgerConfig {
        fsync: FsyncPolicy::Always,
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_millis(50),
        ..cfg(&dir)
    })
    .unwrap();
    l.append(&interaction(0)).unwrap();
    // The maintenance thread checkpoints within a few ticks; wait on the index, not time.
    let mut n = 0;
    for _ in 0..100 {
        n = rw(&dir)
            .query_row("SELECT count(*) FROM checkpoints", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        if n > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(n, 1);
    l.close().unwrap();
}
