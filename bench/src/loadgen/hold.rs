//! `sluice loadgen hold`: open many connections (or streams) to a listener and keep them
//! open, so the harness can read what they cost the process behind it in memory.
//!
//! Idle mode: each connection completes one request and then sits idle, kept alive.
//! Stream mode: each connection starts one stream (the mock paces it slowly) and reads
//! only its first event, so every stream is open end to end at the same time.
//!
//! Once every connection is set up (or failed) it prints one JSON line and holds until
//! its standard input closes (or `hold_secs` pass), then drops everything at once.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use super::client::{self, Target};

/// Connections set up at once (a burst of thousands of handshakes measures the
/// listener's accept queue, not memory).
const PARALLEL_SETUP: usize = 64;

/// Set up `n` connections against `target`, report, hold.
pub async fn run(target: Target, n: usize, stream: bool, hold_secs: f64) -> anyhow::Result<()> {
    let target = Arc::new(target);
    let gate = Arc::new(Semaphore::new(PARALLEL_SETUP));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let target = target.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let mut conn = client::connect(&target).await.ok()?;
            if stream {
                let body = client::open(&mut conn, &target).await.ok()?;
                Some((conn, Some(body)))
            } else {
                client::exchange(&mut conn, &target).await.ok()?;
                Some((conn, None))
            }
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(h)) = t.await {
            held.push(h);
        }
    }
    println!(
        "{}",
        json!({
            "ready": true,
            "mode": if stream { "streams" } else { "idle" },
            "asked": n,
            "held": held.len(),
            "failed": n - held.len(),
            "setup_s": started.elapsed().as_secs_f64(),
            // Every held exchange reached the path (and, on Sluice, makes one record).
            "responses_total": held.len(),
            "connections_total": n,
        })
    );
    // Hold until the harness has measured (stdin closes) or the time is up.
    let wait = tokio::task::spawn_blocking(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(k) if k > 0) {}
    });
    let _ = tokio::time::timeout(Duration::from_secs_f64(hold_secs), wait).await;
    drop(held);
    Ok(())
}
