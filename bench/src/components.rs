//! Component figures for the bench harness: ledger appends per second, how long the
//! ledger's filtered queries take on a large ledger, guardrail scanning MB/s, and what the
//! connect hook costs a client's `connect(2)`.
//!
//! The connect figure compares, in one process and one run, the latency of a TCP connect
//! on loopback:
//!
//! - `none` — no hook: the floor;
//! - `hook_miss` — the probe attached to this process's cgroup, destination not a provider
//!   (what every other connection on a node pays);
//! - `hook_redirect` — destination a provider prefix (127.0.0.2/32:443), rewritten to the
//!   listener: what a captured AI connection pays;
//! - `iptables_miss` / `iptables_redirect` — the same with an `iptables -t nat OUTPUT`
//!   REDIRECT rule (127.0.0.3:443 → the listener) instead of the hook, the classic way.
//!
//! The process moves itself into a child cgroup made for the run, so nothing else on the
//! host is redirected; every address is on loopback. The cgroup, the rule and the
//! programs are removed at the end, also on error.

mod guardrails;
mod ledger;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_probe::{Probe, ProbeConfig, ProxyDownPolicy};

/// What `sluice-bench components` measures, and how much.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Records appended per ledger repetition.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Records in the ledger the query figure is taken on (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    query_records: usize,
    /// MiB scanned per guardrail repetition.
    #[arg(long, default_value_t = 64)]
    scan_mb: usize,
    /// Connects per mode and repetition (0: skip the connect figure).
    #[arg(long, default_value_t = 5_000)]
    connects: usize,
    /// Seconds of the paced disk-per-record figure (10 records/s; 0: skip it).
    #[arg(long, default_value_t = 20)]
    paced_seconds: usize,
    /// Repetitions of each figure.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// A PostgreSQL to time the central ledger's ingest against (the suite starts one).
    #[arg(long)]
    postgres_url: Option<String>,
}

/// Runs every component figure `reps` times; one JSON object with per-repetition lists.
pub fn run(opts: &Options) -> Value {
    let Options {
        records,
        query_records,
        scan_mb,
        connects,
        paced_seconds,
        reps,
        ref postgres_url,
    } = *opts;
    let reps = reps.max(1);
    let mut ledger = Vec::new();
    let mut ledger_err = None;
    let mut scan = Vec::new();
    for _ in 0..reps {
        match ledger::append(records) {
            Ok(r) => ledger.push(r),
            Err(e) => ledger_err = Some(e.to_string()),
        }
        scan.push(guardrails::scan(scan_mb));
    }
    // Filled once (a million records take about half a minute), each query timed `reps`
    // times.
    let query = if query_records == 0 {
        json!({"available": false, "reason": "not asked for (--query-records 0)"})
    } else {
        match ledger::query(query_records, reps) {
            Ok(v) => v,
            Err(e) => json!({"available": false, "reason": e.to_string()}),
        }
    };
    // Disk writes per record: once paced (10/s, what a quiet node sees), once saturated.
    let paced = |fsync| {
        if paced_seconds == 0 {
            json!({"available": false, "reason": "not asked for (--paced-seconds 0)"})
        } else {
            ledger::disk_per_record(Some(10.0), paced_seconds * 10, fsync)
                .unwrap_or_else(|e| json!({"available": false, "reason": e.to_string()}))
        }
    };
    let disk = json!({
        "paced_10_per_s": paced(None),
        "paced_10_per_s_fsync_1s": paced(Some(sluice::ledger::FsyncPolicy::Interval(
            Duration::from_secs(1),
        ))),
        "saturated": ledger::disk_per_record(None, records, None)
            .unwrap_or_else(|e| json!({"available": false, "reason": e.to_string()})),
        "targets": {"paced_10_per_s": 8192, "paced_10_per_s_fsync_1s": 8192, "saturated": 4096},
        "what": "write_bytes of /proc/self/io per record (pages dirtied for the disk: WAL line, SQLite WAL and database), through the clean close",
    });
    let connect = if connects == 0 {
        json!({"available": false, "reason": "not asked for (--connects 0)"})
    } else {
        match connect_cost(connects, reps) {
            Ok(v) => v,
            Err(reason) => json!({"available": false, "reason": reason}),
        }
    };
    let central = match postgres_url {
        None => {
            json!({"available": false, "reason": "no PostgreSQL (the suite starts Debian's when installed)"})
        }
        Some(url) => {
            let mut rates = Vec::new();
            let mut err = None;
            for rep in 0..reps {
                match ledger::central_ingest(records, url, rep) {
                    Ok(r) => rates.push(r),
                    Err(e) => err = Some(e.to_string()),
                }
            }
            json!({
                "records": records,
                "records_per_s": rates,
                "error": err,
                "what": "a ledger of varied ~1 KiB records shipped to PostgreSQL on loopback (ledger::central::ship_all: 1000 rows per transaction, ON CONFLICT on (node_id, seq)), read from the node's index",
            })
        }
    };
    json!({
        "central_ingest": central,
        "ledger": {
            "records": records,
            "records_per_s": ledger,
            "error": ledger_err,
            "what": "Ledger::append from 2 threads, ~1 KiB interaction records, hash chain + HMAC, fsync interval; sustained (the SQLite indexer paces appends once 32k are queued)",
        },
        "ledger_query": query,
        "ledger_disk": disk,
        "guardrails": {
            "mb": scan_mb,
            "mb_per_s": scan,
            "what": "Scanner::all over typical prompt text (prose, code, JSON, numbers, the odd email and key), one core",
        },
        "connect": connect,
    })
}

/// Latency of `connect(2)` per mode, `reps` interleaved repetitions of `n` connects.
fn connect_cost(n: usize, reps: usize) -> Result<Value, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (cgroup, BPF and iptables)".into());
    }
    let root = sluice_probe::unified_cgroup_root().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let target = match listener.local_addr().map_err(|e| e.to_string())? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => return Err("listener is not IPv4".into()),
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let cg = ChildCgroup::enter(&root)?;
    let iptables = iptables_version();
    let hooked = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 443));
    let natted = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), 443));
    let direct = SocketAddr::V4(target);
    // Per mode, one (p50, p99, mean) per repetition.
    let mut runs: Vec<(&str, Vec<[f64; 3]>)> = [
        "none",
        "hook_miss",
        "hook_redirect",
        "iptables_miss",
        "iptables_redirect",
    ]
    .into_iter()
    .map(|m| (m, Vec::new()))
    .collect();
    let mut record = |mode: &str, mut lat: Vec<f64>| {
        if lat.is_empty() {
            return;
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        let mean = lat.iter().sum::<f64>() / lat.len() as f64;
        if let Some((_, v)) = runs.iter_mut().find(|(m, _)| *m == mode) {
            v.push([q(0.5), q(0.99), mean]);
        }
    };
    let mut ipt_error = None;
    for _ in 0..reps {
        // The floor is taken half before and half after the hook, so neither order nor
        // drift favours it.
        let mut none = time_connects(direct, n / 2)?;
        let probe = attach(&cg.path, target)?;
        record("hook_miss", time_connects(direct, n)?);
        record("hook_redirect", time_connects(hooked, n)?);
        probe.detach().map_err(|e| e.to_string())?;
        none.extend(time_connects(direct, n - n / 2)?);
        record("none", none);
        if iptables.is_ok() {
            match NatRule::add(natted, target.port()) {
                Ok(rule) => {
                    record("iptables_miss", time_connects(direct, n)?);
                    record("iptables_redirect", time_connects(natted, n)?);
                    drop(rule);
                }
                Err(e) => ipt_error = Some(e),
            }
        }
    }
    drop(cg);
    let mut modes = serde_json::Map::new();
    for (mode, reps) in runs {
        if reps.is_empty() {
            continue;
        }
        let col = |i: usize| reps.iter().map(|r| r[i]).collect::<Vec<f64>>();
        modes.insert(
            mode.into(),
            json!({"p50_us": col(0), "p99_us": col(1), "mean_us": col(2)}),
        );
    }
    Ok(json!({
        "available": true,
        "connects": n,
        "iptables": match (&iptables, &ipt_error) {
            (Ok(v), None) => json!({"available": true, "version": v}),
            (Ok(_), Some(e)) | (Err(e), _) => json!({"available": false, "reason": e}),
        },
        "modes": modes,
    }))
}

/// Connect and close (RST, so no TIME_WAIT piles up) `n` times; µs per connect.
fn time_connects(dst: SocketAddr, n: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))
            .map_err(|e| format!("connect to {dst}: {e}"))?;
        let el = t.elapsed();
        let _ = nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
        drop(s);
        // The first tenth warms caches and is not counted.
        if i >= n / 10 {
            out.push(el.as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

fn attach(cgroup: &Path, target: SocketAddrV4) -> Result<Probe, String> {
    let mut probe = Probe::load(&ProbeConfig {
        proxy_v4: target,
        proxy_v6: None,
        pod_facing_v4: None,
        pod_facing_v6: None,
        mark: 0x534c,
        on_proxy_down: ProxyDownPolicy::FailOpen,
        heartbeat_timeout: Duration::from_secs(3600),
        pin_dir: None,
    })
    .map_err(|e| e.to_string())?;
    let prefix = sluice::redirect::parse_prefix("127.0.0.2/32:443").map_err(|e| e.to_string())?;
    probe.set_providers(&[prefix]).map_err(|e| e.to_string())?;
    probe.attach(cgroup).map_err(|e| e.to_string())?;
    Ok(probe)
}

/// A cgroup made for the run, holding this process until dropped.
struct ChildCgroup {
    root: PathBuf,
    path: PathBuf,
}

impl ChildCgroup {
    fn enter(root: &Path) -> Result<ChildCgroup, String> {
        let path = root.join(format!("sluice-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        std::fs::write(path.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("joining {}: {e}", path.display()))?;
        Ok(ChildCgroup {
            root: root.to_path_buf(),
            path,
        })
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.root.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn iptables_version() -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("--version")
        .output()
        .map_err(|e| format!("iptables not installed ({e}); apt-get install iptables"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `iptables -t nat -A OUTPUT -d <dst> -p tcp --dport <port> -j REDIRECT --to-ports <to>`,
/// deleted on drop.
struct NatRule {
    args: Vec<String>,
}

impl NatRule {
    fn add(dst: SocketAddr, to: u16) -> Result<NatRule, String> {
        let args: Vec<String> = [
            "OUTPUT",
            "-d",
            &dst.ip().to_string(),
            "-p",
            "tcp",
            "--dport",
            &dst.port().to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &to.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = Command::new("iptables")
            .args(["-t", "nat", "-A"])
            .args(&args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "iptables -t nat -A failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(NatRule { args })
    }
}

impl Drop for NatRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-D"])
            .args(&self.args)
            .output();
    }
}
