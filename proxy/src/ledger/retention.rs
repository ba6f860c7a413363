//! Retention: records older than `retention_days` deleted (behind an anchor admin record,
//! so the remaining chain verifies from it) and content older than
//! `content_retention_days` removed, both recorded.

use std::time::{Duration, Instant, SystemTime};

use super::error::LedgerError;
use super::writer::{self_admin, Inner, RetentionReport};
use super::{chain, index};
use crate::record::{AdminAction, AdminOutcome};

impl Inner {
    /// Shared by [`Ledger::run_retention`] and the maintenance thread.
    pub(super) fn run_retention(&self, now: SystemTime) -> Result<RetentionReport, LedgerError> {
        let mut last = self.retention.lock();
        *last = Some(Instant::now());
        // Cover the head first: records are pruned only up to a checkpoint.
        self.checkpoint_locked(&mut self.writer.lock())?;
        self.flush();
        let dir = &self.cfg.dir;
        let db = index::db_path(dir);
        let e = index::sql_err(&db);
        let mut conn = index::open_rw(dir)?;
        let mut report = RetentionReport::default();
        let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        };

        if self.cfg.retention_days > 0 {
            let cutoff = now - days(self.cfg.retention_days);
            // Prune only a prefix of the chain: up to the first record that is kept.
            let keep_from: Option<i64> = conn
                .query_row(
                    "SELECT min(seq) FROM records WHERE ts_ms >= ?1",
                    [ms(cutoff)],
                    |r| r.get(0),
                )
                .map_err(&e)?;
            // …and only up to a checkpoint: its frontier is what stays of the Merkle tree
            // over the pruned part (records after it wait for the next run).
            let mut limit = keep_from.map_or(u64::MAX, |k| (k as u64).saturating_sub(1));
            // …and never past what every witness holds: the outbox proves growth from
            // there, which takes the leaves after it.
            if !self.cfg.witnesses.is_empty() {
                let held = super::outbox::read_state(dir);
                let least = self
                    .cfg
                    .witnesses
                    .iter()
                    .map(|w| {
                        w.kind()
                            .ok()
                            .and_then(|k| held.sizes.get(&k.name()).copied())
                            .unwrap_or(0)
                    })
                    .min()
                    .unwrap_or(0);
                limit = limit.min(least);
            }
            let anchored = index::anchor(&conn).map_err(&e)?.map_or(0, |a| a.0);
            let head = index::checkpoints(&conn, anchored)
                .map_err(&e)?
                .into_iter()
                .rev()
                .find(|c| c.seq <= limit && c.frontier().is_some());
            if let Some(cp) = head {
                let seq = cp.seq as i64;
                let count: i64 = conn
                    .query_row("SELECT count(*) FROM records WHERE seq <= ?1", [seq], |r| {
                        r.get(0)
                    })
                    .map_err(&e)?;
                let anchor = self.append_counted(&self_admin(
                    AdminAction::Delete,
                    AdminOutcome::Success,
                    "ledger",
                    "records",
                    serde_json::json!({
                        "event": "retention_prune",
                        "anchor": { "seq": seq, "hash": cp.hash, "frontier": cp.frontier },
                        "pruned_records": count,
                        "before": crate::record::rfc3339(cutoff),
                        "retention_days": self.cfg.retention_days,
                    }),
                    now,
                ))?;
                self.flush();
                let tx = conn.transaction().map_err(&e)?;
                tx.execute("DELETE FROM records WHERE seq <= ?1", [seq])
                    .map_err(&e)?;
                tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [seq])
                    .map_err(&e)?;
                tx.execute(
                    "INSERT OR REPLACE INTO anchors (seq, hash, record_seq, frontier)
                     VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![
                        seq,
                        cp.hash,
                        anchor.seq as i64,
                        serde_json::to_string(&cp.frontier).unwrap_or_default()
                    ],
                )
                .map_err(&e)?;
                tx.commit().map_err(&e)?;
                report.pruned = count as u64;
                report.anchor_seq = Some(seq as u64);
            }
        }

        if let Some(d) = self.cfg.content_retention_days {
            let cutoff = now - days(d);
            let (up_to, count): (Option<i64>, i64) = conn
                .query_row(
                    "SELECT max(seq), count(*) FROM records WHERE content IS NOT NULL AND ts_ms < ?1",
                    [ms(cutoff)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(&e)?;
            if let (Some(up_to), true) = (up_to, count > 0) {
                self.append_counted(&self_admin(
                    AdminAction::Update,
                    AdminOutcome::Success,
                    "ledger",
                    "content",
                    serde_json::json!({
                        "event": "retention_content_removed",
                        "records": count,
                        "up_to_seq": up_to,
                        "before": crate::record::rfc3339(cutoff),
                        "content_retention_days": d,
                        "fields": chain::CONTENT_FIELDS
                            .iter()
                            .map(|(o, f)| format!("{o}.{f}"))
                            .collect::<Vec<_>>(),
                    }),
                    now,
                ))?;
                let n = conn
                    .execute(
                        "UPDATE records SET content = NULL
                         WHERE content IS NOT NULL AND ts_ms < ?1 AND seq <= ?2",
                        rusqlite::params![ms(cutoff), up_to],
                    )
                    .map_err(&e)?;
                report.content_removed = n as u64;
            }
        }
        Ok(report)
    }
}
