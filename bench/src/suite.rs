//! `cargo xtask bench`: what Sluice costs next to a direct connection, nginx, HAProxy, a
//! bare Pingora proxy, LiteLLM and mitmproxy, measured on this machine.
//!
//! Everything runs on loopback (ports from binding :0): the mock provider (`sluice
//! mock-provider`, TLS) is the upstream of every path; each path terminates the client's
//! TLS for `api.openai.com` and re-encrypts to the mock (the passthrough path relays the
//! bytes instead). The load generator is `sluice loadgen` (so xtask stays light). With two
//! CPUs or more, the proxy under test is pinned to CPU 1 and the rig (load generator and
//! mock) to CPU 0, so the rig's cost and the proxy's do not mix.
//!
//! Each figure is the median of several repetitions with min–max; a figure whose runs
//! failed more than 0.1% of requests is marked, and so is any throughput within 10% of the
//! rig's own ceiling (the load generator against the mock at high concurrency), which
//! would measure the rig rather than the path.
//!
//! What it is **not**: a regression gate. Figures vary with the machine and its load; the
//! smoke test checks that figures exist, never their values.

mod json;
mod loadgen;
mod peers;
mod phases;
mod procfs;
mod profile;
mod report;
mod soak;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::json::JsonExt;
use self::loadgen::Loadgen;
use self::peers::{Records, Rig, Running, PATHS};
pub use self::profile::Options;
use self::profile::{loadgen_args, scenario_names, set_arg, Kind, Profile, Scenario, SCENARIOS};
use serde_json::Value as Json;
use sluice_mock::pki::TestPki;

/// Runs the benchmark.
///
/// # Errors
/// When the build fails, the mock cannot start, or results cannot be written. A path that
/// cannot run is not an error: its reason goes into the results.
pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let root = &repo_root();
    // The tree measured: taken now, before anyone edits it during a long run.
    let git = Command::new("git")
        .current_dir(root)
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let profile = Profile::of(opts);
    for s in &opts.scenario {
        let extra = ["components", "hold", "phases", "soak"];
        if !extra.contains(&s.as_str()) && !SCENARIOS.iter().any(|x| x.name == s) {
            bail!("unknown scenario {s}; known: {}", scenario_names());
        }
    }
    for p in &opts.paths {
        if !PATHS.contains(&p.as_str()) {
            bail!("unknown path {p}; known: {}", PATHS.join(", "));
        }
    }
    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| opts.scenario.is_empty() || opts.scenario.iter().any(|x| x == s.name))
        .collect();
    let wanted: Vec<&str> = PATHS
        .iter()
        .copied()
        .filter(|p| *p == "direct" || opts.paths.is_empty() || opts.paths.iter().any(|x| x == p))
        .collect();

    // Peers first: a missing one is a reason, not a failure.
    let mut unavailable: BTreeMap<String, String> = BTreeMap::new();
    if wanted.iter().any(|p| *p == "nginx" || *p == "haproxy") {
        if let Err(e) = peers::ensure_apt_peers() {
            for p in ["nginx", "haproxy"] {
                if !peers::which(p) {
                    unavailable.insert(p.into(), format!("not installed: {e:#}"));
                }
            }
        }
    }
    for peer in ["litellm", "mitmproxy"] {
        if !wanted.contains(&peer) {
            continue;
        }
        if !profile.pypi_peers {
            unavailable.insert(
                peer.into(),
                "not run by --smoke: PyPI peers are installed into .venv-bench and measured by \
                 the full and --quick runs"
                    .into(),
            );
        } else if let Err(e) = peers::ensure_pypi_peer(root, peer) {
            unavailable.insert(peer.into(), format!("cannot install: {e:#}"));
        }
    }

    // The binaries under test and of the rig, built together by `cargo xtask bench`.
    let bins = Bins::beside_current_exe()?;
    let sluice = bins.sluice.clone();
    let work = root.join("target/bench/work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = ncpu >= 2 && peers::which("taskset");
    let placement = if pin {
        "proxy under test pinned to CPU 1 (taskset -c 1); load generator and mock provider \
         pinned to CPU 0"
            .to_string()
    } else {
        format!(
            "not pinned ({ncpu} CPU(s) or no taskset): proxy, load generator and mock share CPUs"
        )
    };
    println!("bench: {placement}");
    let rig_cpu = pin.then_some(0);

    // Certificates of the fixed-certificate peers.
    let peer_ca = work.join("peer-ca.pem");
    let peer_cert = work.join("peer.crt");
    let peer_key = work.join("peer.key");
    TestPki::mint("Sluice benchmark peers CA", &["api.openai.com".to_owned()])?
        .write_files(&peer_ca, &peer_cert, &peer_key)?;
    let peer_pem = work.join("peer.pem");
    std::fs::write(
        &peer_pem,
        std::fs::read_to_string(&peer_cert)? + &std::fs::read_to_string(&peer_key)?,
    )?;

    // The upstream of every path; its certificate also names 127.0.0.1 (for LiteLLM).
    let mock_addr = peers::free_addr()?;
    let mock_ca = work.join("mock-ca.pem");
    let mock_log = work.join("mock.log");
    let mut mock_cmd = peers::pinned(rig_cpu, &bins.mock);
    mock_cmd
        .args(["--tls-hosts", "api.openai.com,127.0.0.1"])
        .arg("--listen")
        .arg(mock_addr.to_string())
        .arg("--ca-out")
        .arg(&mock_ca)
        .env("SLUICE_LOG", "warn");
    let mock = MockGuard(
        mock_cmd
            .stdout(std::fs::File::create(&mock_log)?)
            .stderr(std::fs::File::create(work.join("mock.err"))?)
            .spawn()
            .context("starting the mock provider")?,
    );
    wait_port(mock_addr, Duration::from_secs(20)).context("the mock provider did not start")?;

    let rig = Rig {
        root: root.to_path_buf(),
        sluice: sluice.clone(),
        bench: bins.bench.clone(),
        work: work.clone(),
        mock: mock_addr,
        mock_ca: mock_ca.clone(),
        peer_cert,
        peer_key,
        peer_pem,
        peer_ca,
        proxy_cpu: pin.then_some(1),
        rig_cpu,
    };
    let lg = Loadgen {
        bench: bins.bench.clone(),
        cpu: rig_cpu,
        mock: mock_addr,
        mock_ca: mock_ca.clone(),
    };

    // The rig's own ceiling: the load generator against the mock at high concurrency.
    let mut ceiling = Json::obj();
    for name in ["sat_1k", "sat_100k", "newconn"] {
        if !scenarios.iter().any(|s| s.name == name) {
            continue;
        }
        let mut args = loadgen_args(&profile, name);
        set_arg(
            &mut args,
            "--connections",
            &profile.ceiling_conns.to_string(),
        );
        let mut runs = Vec::new();
        for _ in 0..profile.reps {
            runs.push(lg.run(mock_addr, &mock_ca, &args, &profile, 30.0)?);
        }
        let rps: Vec<f64> = runs.iter().filter_map(|r| r.member("rps").num()).collect();
        println!(
            "bench: rig ceiling {name}: {:.0} req/s",
            report::median(&rps)
        );
        ceiling.set(name, report::stat(&rps));
    }

    // Each path in turn: start, warm up, measure, stop.
    let mut results = Json::obj();
    for path in &wanted {
        let mut entry = Json::obj();
        entry.set("version", peers::version(&rig, path));
        if let Some(reason) = unavailable.get(*path) {
            println!("bench: {path}: unavailable: {reason}");
            entry.set("available", false).set("reason", reason.as_str());
            results.set(path, entry);
            continue;
        }
        println!("bench: {path}: starting");
        let t = Instant::now();
        let hold = opts.scenario.is_empty() || opts.scenario.iter().any(|s| s == "hold");
        let measured = measure(&rig, &lg, &profile, &scenarios, hold, path);
        println!("bench: {path}: done in {:.1} s", t.elapsed().as_secs_f64());
        match measured {
            Ok(m) => {
                entry.set("available", true);
                if let Json::Object(map) = m {
                    for (k, v) in map {
                        entry.set(&k, v);
                    }
                }
            }
            Err(e) => {
                println!("bench: {path}: failed: {e:#}");
                entry
                    .set("available", false)
                    .set("reason", format!("failed to run: {e:#}"));
            }
        }
        results.set(path, entry);
    }
    // Where the full path's CPU goes, under callgrind: only when asked (minutes);
    // before the mock stops.
    let phases = if opts.scenario.iter().any(|s| s == "phases") {
        println!("bench: phases: sluice-budget under callgrind");
        let t = Instant::now();
        let r = phases::run(&rig, &lg, &profile).unwrap_or_else(|e| {
            println!("bench: phases: failed: {e:#}");
            serde_json::json!({"available": false, "reason": format!("{e:#}")})
        });
        println!("bench: phases: done in {:.1} s", t.elapsed().as_secs_f64());
        r
    } else {
        Json::Null
    };

    // The soak: when named, and in the smoke run (a few seconds, so the test command
    // runs it end to end).
    let soak =
        if opts.scenario.iter().any(|s| s == "soak") || (opts.smoke && opts.scenario.is_empty()) {
            println!("bench: soak: {:.0} s of mixed load", profile.soak_secs);
            let t = Instant::now();
            let r = soak::run(&rig, &lg, &profile).unwrap_or_else(|e| {
                println!("bench: soak: failed: {e:#}");
                serde_json::json!({"available": false, "reason": format!("{e:#}")})
            });
            println!("bench: soak: done in {:.1} s", t.elapsed().as_secs_f64());
            r
        } else {
            Json::Null
        };

    drop(mock);

    // Component figures, on both CPUs: the ledger's appenders and its indexer are
    // separate threads, and its target is stated for the whole 2-core machine.
    let components = if opts.scenario.is_empty() || opts.scenario.iter().any(|s| s == "components")
    {
        println!("bench: components: ledger, guardrails, connect hook");
        // The connect figure compares the hook with an iptables REDIRECT rule.
        if let Err(e) = peers::ensure_apt(&["iptables"]) {
            println!("bench: iptables unavailable: {e:#}");
        }
        let t = Instant::now();
        let c = components(&bins.bench, None, &profile);
        println!(
            "bench: components: done in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        c
    } else {
        Json::Null
    };

    let meta = meta(&git, &profile, &placement, &scenarios, started);
    let mut out = Json::obj();
    out.set("meta", meta)
        .set("rig_ceiling", ceiling)
        .set("paths", results)
        .set("components", components);
    let derived = report::derive(&mut out);
    out.set("ratios", derived);
    out.set("phases", phases.clone());
    out.set("soak", soak.clone());
    let mut table = report::markdown(&out, &profile);
    if phases["available"].as_bool() == Some(true) {
        table.push('\n');
        table.push_str(&phases::markdown(&phases));
    }
    if soak["available"].as_bool() == Some(true) {
        table.push('\n');
        table.push_str(&soak::markdown(&soak));
    }
    println!("\n{table}");
    let json_path = opts
        .json
        .clone()
        .unwrap_or_else(|| root.join("target/bench/results.json"));
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    out.set("markdown", table);
    std::fs::write(&json_path, out.pretty())
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!(
        "bench: results in {} ({:.0} s)",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `sluice-bench components`: raw per-repetition figures, summarised as
/// `{median, min, max}`; a failure is recorded as the reason.
fn components(bench: &Path, cpu: Option<u32>, p: &Profile) -> Json {
    let mut cmd = peers::pinned(cpu, bench);
    cmd.arg("components")
        .args(["--records", &p.comp_records.to_string()])
        .args(["--query-records", &p.comp_query_records.to_string()])
        .args(["--scan-mb", &p.comp_scan_mb.to_string()])
        .args(["--connects", &p.comp_connects.to_string()])
        .args(["--paced-seconds", &p.comp_paced_seconds.to_string()])
        .args(["--reps", &p.reps.to_string()])
        .env("SLUICE_LOG", "warn");
    // The central ledger's ingest, against a PostgreSQL of our own for the run.
    // (Under the temporary directory: the postgres user must reach it.)
    let postgres = peers::Postgres::start(
        &std::env::temp_dir().join(format!("sluice-bench-pg-{}", std::process::id())),
    );
    match &postgres {
        Ok(pg) => {
            cmd.args(["--postgres-url", &pg.url]);
        }
        Err(e) => println!("bench: no central ingest figure: {e:#}"),
    }
    let line = command_line(&cmd);
    let raw = match cmd.output() {
        Ok(o) if o.status.success() => Json::parse(String::from_utf8_lossy(&o.stdout).trim()),
        Ok(o) => Err(anyhow::anyhow!(
            "{}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(e.into()),
    };
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            let mut o = Json::obj();
            o.set("available", false)
                .set("reason", format!("`{line}` failed: {e:#}"));
            return o;
        }
    };
    let list = |v: &Json| -> Vec<f64> {
        match v {
            Json::Array(items) => items.iter().filter_map(Json::num).collect(),
            _ => Vec::new(),
        }
    };
    let mut o = Json::obj();
    o.set("available", true)
        .set("command", line)
        .set("raw", raw.clone())
        .set(
            "ledger_records_per_s",
            report::stat(&list(raw.at("ledger/records_per_s"))),
        )
        .set(
            "guardrail_mb_per_s",
            report::stat(&list(raw.at("guardrails/mb_per_s"))),
        )
        .set(
            "central_records_per_s",
            report::stat(&list(raw.at("central_ingest/records_per_s"))),
        );
    let mut query = Json::obj();
    for name in raw.at("ledger_query/queries").keys() {
        let q = raw.at(&format!("ledger_query/queries/{name}"));
        let mut m = Json::obj();
        m.set("ms", report::stat(&list(q.member("ms"))))
            .set("rows", q.member("rows").clone());
        query.set(&name, m);
    }
    o.set("ledger_query", query);
    let mut connect = Json::obj();
    for mode in raw.at("connect/modes").keys() {
        let mut m = Json::obj();
        for fig in ["p50_us", "p99_us", "mean_us"] {
            m.set(
                fig,
                report::stat(&list(raw.at(&format!("connect/modes/{mode}/{fig}")))),
            );
        }
        connect.set(&mode, m);
    }
    o.set("connect", connect);
    o
}

/// Kills the mock provider when the run ends, however it ends.
struct MockGuard(std::process::Child);

impl Drop for MockGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(addr: std::net::SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{addr} not listening after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts `path`, measures every scenario `reps` times (interleaved), stops it.
fn measure(
    rig: &Rig,
    lg: &Loadgen,
    p: &Profile,
    scenarios: &[&Scenario],
    hold: bool,
    path: &str,
) -> Result<Json> {
    let mut running = peers::start(rig, path)?;
    let pid = running.pid();
    let rss_idle = pid.map(|pid| procfs::status_kb(pid, "VmRSS"));
    let mut seen = Seen::default();
    seen.add(&warm_up(lg, &running, p)?);
    // Streams warm up too (a proxy may load a tokenizer on its first stream).
    if scenarios.iter().any(|s| s.kind == Kind::Sse) {
        let sse = lg.run_for(
            running.addr,
            &running.client_ca,
            &loadgen_args(p, "sse"),
            p.path_warmup,
            0.0,
            running.first_answer_timeout,
        )?;
        seen.add(&sse);
    }

    let mut runs: BTreeMap<&str, Vec<Json>> = BTreeMap::new();
    let mut cpu_per_10k = Vec::new();
    for _ in 0..p.reps {
        for s in scenarios {
            let args = loadgen_args(p, s.name);
            let cpu_before = pid.map(procfs::cpu_seconds);
            let r = lg.run(running.addr, &running.client_ca, &args, p, 30.0)?;
            if let (Some(pid), Some(before), "sat_1k") = (pid, cpu_before, s.name) {
                let n = r.member("responses_total").num().unwrap_or(0.0);
                if n > 0.0 {
                    cpu_per_10k.push((procfs::cpu_seconds(pid) - before) / n * 10_000.0);
                }
            }
            seen.add(&r);
            runs.entry(s.name).or_default().push(r);
        }
    }
    // Memory with many connections held open: idle keep-alive, then open streams.
    let mut held = Json::obj();
    if let (true, Some(pid)) = (hold && p.hold_conns > 0, pid) {
        for stream in [false, true] {
            let before = procfs::status_kb(pid, "VmRSS");
            let key = if stream { "streams" } else { "idle" };
            match lg.hold(&running, p, stream, || procfs::status_kb(pid, "VmRSS")) {
                Ok((report, during)) => {
                    seen.add(&report);
                    let mut h = Json::obj();
                    h.set("rss_before_kb", before)
                        .set("rss_held_kb", during)
                        .set("held", report.member("held").clone())
                        .set("asked", report.member("asked").clone())
                        .set("setup_s", report.member("setup_s").clone());
                    let n = report.member("held").num().unwrap_or(0.0);
                    if n > 0.0 {
                        h.set("kb_per_1000", (during as f64 - before as f64) / n * 1000.0);
                    }
                    held.set(key, h);
                }
                Err(e) => {
                    let mut h = Json::obj();
                    h.set("error", format!("{e:#}"));
                    held.set(key, h);
                }
            }
        }
    }
    let rss_peak = pid.map(|pid| procfs::status_kb(pid, "VmHWM"));
    running.stop();

    let mut out = Json::obj();
    out.set("scenarios", report::figures(&runs));
    if !cpu_per_10k.is_empty() {
        out.set("cpu_s_per_10k_requests", report::stat(&cpu_per_10k));
    }
    out.set("rss_idle_kb", rss_idle)
        .set("rss_peak_kb", rss_peak)
        .set("hold", held);
    out.set("audit", audit(&rig.sluice, &running, &seen));
    let mut raw = Json::obj();
    for (k, v) in runs {
        raw.set(k, Json::Array(v));
    }
    out.set("runs", raw);
    Ok(out)
}

/// Answers and connections the load generator saw, summed over its runs (warm-ups
/// included): what a recording path must have recorded.
#[derive(Default)]
struct Seen {
    responses: f64,
    connections: f64,
}

impl Seen {
    fn add(&mut self, run: &Json) {
        self.responses += run.member("responses_total").num().unwrap_or(0.0);
        self.connections += run.member("connections_total").num().unwrap_or(0.0);
    }
}

/// Warm-up and preflight: 1 KB prompts on one connection for the profile's warm-up; the
/// path must answer correctly before it is measured.
fn warm_up(lg: &Loadgen, running: &Running, p: &Profile) -> Result<Json> {
    let first = lg
        .run_for(
            running.addr,
            &running.client_ca,
            &loadgen_args(p, "lat1_1k"),
            p.path_warmup,
            0.0,
            running.first_answer_timeout,
        )
        .map_err(|e| e.context(format!("log: {}", peers::tail(&running.log, 3))))?;
    if first.member("ok").num().unwrap_or(0.0) == 0.0 {
        bail!(
            "no correct answer during the warm-up: {}; log: {}",
            samples(&first),
            peers::tail(&running.log, 3)
        );
    }
    Ok(first)
}

fn samples(r: &Json) -> String {
    match r.member("error_samples") {
        Json::Array(a) if !a.is_empty() => a
            .iter()
            .filter_map(Json::str)
            .collect::<Vec<_>>()
            .join("; "),
        _ => "no answer at all".into(),
    }
}

/// Records written by Sluice against what it served, read after it stopped and flushed,
/// from the first source that has them: `sluice events tail --json`, the JSONL file
/// `<state>/records.jsonl`, or the ledger index `<state>/ledger/ledger.sqlite` (through
/// Python's sqlite3, so xtask stays free of a SQLite dependency).
fn audit(sluice: &Path, running: &Running, seen: &Seen) -> Json {
    let (responses, connections) = (seen.responses, seen.connections);
    let Some(records) = &running.records else {
        return Json::Null;
    };
    let (state, config, kind, expected) = match records {
        Records::Interactions { state, config } => (state, config, "interaction", responses),
        Records::Connections { state, config } => (state, config, "connection", connections),
    };
    let mut out = Json::obj();
    out.set("kind", kind).set("expected", expected);
    let count = |text: &str| {
        text.lines()
            .filter(|l| {
                l.contains(&format!("\"kind\":\"{kind}\""))
                    || l.contains(&format!("\"kind\": \"{kind}\""))
            })
            .count()
    };
    let stdout = |cmd: &mut Command| match cmd.output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        _ => None,
    };
    let limit = (expected * 2.0 + 1000.0) as u64;
    let from_tail = stdout(
        Command::new(sluice)
            .args([
                "events",
                "tail",
                "--json",
                "--limit",
                &limit.to_string(),
                "--config",
            ])
            .arg(config),
    )
    .map(|t| count(&t))
    .filter(|n| *n > 0);
    let jsonl = state.join("records.jsonl");
    let db = state.join("ledger/ledger.sqlite");
    let found = if let Some(n) = from_tail {
        out.set("source", "sluice events tail --json");
        Some(n)
    } else if let Ok(text) = std::fs::read_to_string(&jsonl) {
        out.set("source", jsonl.display().to_string());
        Some(count(&text))
    } else if db.is_file() {
        out.set("source", db.display().to_string());
        let query = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
                     print(c.execute('select count(*) from records where kind = ?', \
                     (sys.argv[2],)).fetchone()[0])";
        stdout(
            Command::new("python3")
                .args(["-c", query])
                .arg(&db)
                .arg(kind),
        )
        .and_then(|t| t.trim().parse().ok())
    } else {
        None
    };
    match found {
        // Exactly one record per answer (or connection): fewer is loss, more duplication.
        Some(n) => out
            .set("records", n)
            .set("complete", n as f64 == expected && expected > 0.0),
        None => out.set("records", Json::Null).set("complete", false).set(
            "error",
            format!(
                "no record store readable: no `sluice events tail`, no {}, no {}",
                jsonl.display(),
                db.display()
            ),
        ),
    };
    out
}

fn meta(
    git: &str,
    p: &Profile,
    placement: &str,
    scenarios: &[&Scenario],
    started: Instant,
) -> Json {
    let sh = |cmd: &mut Command| {
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let mut machine = Json::obj();
    machine
        .set(
            "nproc",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )
        .set(
            "kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
        )
        .set("cpu_model", cpu_model)
        .set("rustc", sh(Command::new("rustc").arg("-V")));
    let mut profile = Json::obj();
    profile
        .set("name", p.name)
        .set("reps", p.reps)
        .set("duration_s", p.duration)
        .set("warmup_s", p.warmup)
        .set("rate_1k", p.rate_1k)
        .set("rate_100k", p.rate_100k)
        .set("open_pool", p.open_pool)
        .set("sat_connections", p.sat_conns)
        .set("ceiling_connections", p.ceiling_conns)
        .set("sse_chunks", p.sse_chunks)
        .set("sse_delay_ms", p.sse_delay_ms)
        .set("newconn_connections", p.newconn_conns)
        .set("build", if p.release { "release" } else { "debug" });
    let mut sc = Json::obj();
    for s in scenarios {
        sc.set(s.name, s.what);
    }
    let mut m = Json::obj();
    m.set(
        "date",
        sh(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
    )
    .set("command", std::env::args().collect::<Vec<_>>().join(" "))
    .set("git", git)
    .set("machine", machine)
    .set("placement", placement)
    .set("profile", profile)
    .set("scenarios", sc)
    .set("elapsed_s", started.elapsed().as_secs_f64());
    m
}

/// The binaries a run uses, from the directory this one was built into.
struct Bins {
    /// The proxy under test (`sluice run`), also read back with `sluice events tail`.
    sluice: PathBuf,
    /// The upstream of every path.
    mock: PathBuf,
    /// This binary: load generator, component figures, the bare Pingora baseline.
    bench: PathBuf,
}

impl Bins {
    fn beside_current_exe() -> Result<Bins> {
        let bench = std::env::current_exe().context("cannot find the running binary")?;
        let dir = bench
            .parent()
            .context("the running binary has no directory")?;
        let bins = Bins {
            sluice: dir.join("sluice"),
            mock: dir.join("sluice-mock"),
            bench: bench.clone(),
        };
        for bin in [&bins.sluice, &bins.mock] {
            if !bin.is_file() {
                bail!(
                    "{} is missing: run the benchmark with `cargo xtask bench`, which builds \
                     sluice, sluice-mock and sluice-bench together",
                    bin.display()
                );
            }
        }
        Ok(bins)
    }
}

/// The workspace root (the bench crate's parent), where results and peer venvs go.
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cmd` as one would type it (arguments unquoted), for messages.
fn command_line(cmd: &Command) -> String {
    let words: Vec<_> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| word.to_string_lossy())
        .collect();
    words.join(" ")
}
