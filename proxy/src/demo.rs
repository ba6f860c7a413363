//! `sluice demo`: the whole main job, hermetically, on one machine.
//!
//! It starts a mock LLM provider (OpenAI, Anthropic and Gemini formats, TLS with its own
//! test CA), runs the real `sluice run` binary, sends real requests with curl to
//! `https://api.openai.com/…` and friends (the organisation CA trusted), and prints what was
//! captured.
//!
//! Two modes, chosen automatically:
//! - **transparent** (root on a host that can run the eBPF redirect; bpffs is mounted if
//!   it is not): the demo makes a client network namespace (a "pod") and a provider
//!   namespace holding the mock ([`topology`]); curl runs in the client namespace and in
//!   a cgroup made for the demo, resolves `api.openai.com` to the "provider's" address and
//!   connects there as it would to the real one. The eBPF redirect captures it — no proxy
//!   setting, no base URL, no `--connect-to` — and the table shows the process and pid;
//! - **explicit** otherwise: curl is pointed at the proxy with `--connect-to`, and the static
//!   original-destination table sends it on. The demo says why it fell back.
//!
//! No traffic leaves this machine: loopback, or the namespaces the demo made (addresses
//! from the benchmarking range 198.18.0.0/15), all removed when it ends.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_mock::pki::TestPki;

mod topology;

use sluice_mock::{MockOptions, MockProvider};
use topology::Topology;

/// The provider hosts the demo and the mock serve.
pub const DEMO_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
];

/// One request the demo sends.
struct DemoCall {
    label: &'static str,
    host: &'static str,
    path: &'static str,
    body: &'static str,
    headers: &'static [&'static str],
}

const CALLS: &[DemoCall] = &[
    DemoCall {
        label: "OpenAI chat completion",
        host: "api.openai.com",
        path: "/v1/chat/completions",
        body: r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Name three rivers in Europe."}],"temperature":0.2}"#,
        headers: &["authorization: Bearer sk-demo-not-a-real-key"],
    },
    DemoCall {
        label: "OpenAI chat completion, streamed",
        host: "api.openai.com",
        path: "/v1/chat/completions",
        body: r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Write a haiku about sluice gates."}]}"#,
        headers: &["authorization: Bearer sk-demo-not-a-real-key"],
    },
    DemoCall {
        label: "OpenAI responses API",
        host: "api.openai.com",
        path: "/v1/responses",
        body: r#"{"model":"gpt-4.1-mini","input":"Summarise the GDPR in one sentence."}"#,
        headers: &["authorization: Bearer sk-demo-not-a-real-key"],
    },
    DemoCall {
        label: "Anthropic message",
        host: "api.anthropic.com",
        path: "/v1/messages",
        body: r#"{"model":"claude-sonnet-4-5","max_tokens":256,"system":"Answer briefly.","messages":[{"role":"user","content":"What is a hash chain?"}]}"#,
        headers: &["x-api-key: sk-ant-demo", "anthropic-version: 2023-06-01"],
    },
    DemoCall {
        label: "Anthropic message, streamed",
        host: "api.anthropic.com",
        path: "/v1/messages",
        body: r#"{"model":"claude-haiku-4-5","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Explain eBPF to a manager."}]}"#,
        headers: &["x-api-key: sk-ant-demo", "anthropic-version: 2023-06-01"],
    },
    DemoCall {
        label: "Gemini generateContent, streamed (SSE)",
        host: "generativelanguage.googleapis.com",
        path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        body: r#"{"contents":[{"role":"user","parts":[{"text":"List two uses of a proxy."}]}]}"#,
        headers: &["x-goog-api-key: demo-key"],
    },
];

/// Kills the proxy child if the demo stops early.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run the demo; state goes to `dir` (default `<state dir>/demo`).
///
/// # Errors
/// What failed and how to fix it (curl missing, a port taken, the proxy exiting).
pub fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| crate::config::default_state_dir().join("demo"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if Command::new("curl").arg("--version").output().is_err() {
        bail!("the demo sends its requests with curl; install it (apt-get install curl) or run `cargo xtask demo`");
    }
    println!(
        "Sluice demo — everything stays on this machine (state in {})\n",
        dir.display()
    );

    // 1. The organisation CA clients trust.
    let ca_cert = dir.join("ca/ca.crt");
    let ca_key = dir.join("ca/ca.key");
    if !ca_cert.exists() {
        crate::ca::init(&ca_cert, &ca_key, "Sluice Demo Organisation CA")?;
        println!("• created the organisation CA       {}", ca_cert.display());
    } else {
        println!("• using the organisation CA         {}", ca_cert.display());
    }

    // 2. Transparent mode when this host can run the eBPF redirect: a client namespace
    //    (a "pod") and a provider namespace, made for the demo.
    let transparent = match transparent_capability() {
        Ok(root) => Transparent::set_up(&root),
        Err(why) => Err(anyhow::anyhow!(why)),
    };
    let transparent = match transparent {
        Ok(t) => {
            println!(
                "• mode: transparent — curl runs in network namespace {} (a pod) with no proxy
  setting; the eBPF redirect on cgroup {} captures its connections",
                t.topology.client_name(),
                t.cgroup.0.display()
            );
            Some(t)
        }
        Err(why) => {
            println!("• mode: explicit (curl --connect-to the proxy); the eBPF redirect is off because {why:#}");
            None
        }
    };

    // 3. A mock provider with its own test CA: in the provider namespace, or on loopback.
    let hosts: Vec<String> = DEMO_HOSTS.iter().map(|h| h.to_string()).collect();
    let pki = TestPki::mint("Sluice mock provider test CA", &hosts)?;
    let provider_ca_path = dir.join("provider-ca.pem");
    std::fs::write(&provider_ca_path, pki.ca_pem())?;
    let server_config = pki.server_config(sluice_mock::alpn_protocols())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = match &transparent {
        Some(t) => t.topology.bind_provider(443)?,
        None => {
            let l = StdListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            l
        }
    };
    let mock = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        MockProvider::start(listener, Some(server_config), MockOptions::default())
    })?;
    let mock_addr = mock.local_addr();
    println!("• mock provider (TLS) listening on  {mock_addr}");

    // 4. The proxy, as a real `sluice run` process.
    let proxy_addr = free_addr()?;
    let metrics_addr = free_addr()?;
    // The default ledger, so `sluice events tail` with no flags shows what the demo did.
    let ledger_dir = crate::config::default_state_dir().join("ledger");
    let before = last_seq(&ledger_dir);
    let config_path = dir.join("sluice.yaml");
    let yaml = config_yaml(
        &dir,
        &provider_ca_path,
        &ledger_dir,
        proxy_addr,
        metrics_addr,
        mock_addr,
        transparent.as_ref(),
    );
    std::fs::write(&config_path, yaml)?;
    let exe = std::env::current_exe().context("locating the sluice binary")?;
    let log = std::fs::File::create(dir.join("proxy.log"))?;
    let child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting `sluice run`")?;
    let mut guard = ChildGuard(Some(child));
    wait_for(proxy_addr, &mut guard, &dir)?;
    println!(
        "• sluice proxy listening on         {proxy_addr}  (metrics http://{metrics_addr}/metrics)"
    );
    println!(
        "• config                            {}\n",
        config_path.display()
    );

    // 5. Real requests, as a client would send them.
    match &transparent {
        Some(_) => println!("Sending requests (curl in the pod → https://<provider>/… → redirected by eBPF into sluice → mock provider):"),
        None => println!("Sending requests (curl → https://<provider>/… → sluice → mock provider):"),
    }
    for call in CALLS {
        let out = curl(call, &ca_cert, proxy_addr, transparent.as_ref())?;
        println!("  {:<40} HTTP {}", call.label, out);
    }

    // 6. What Sluice recorded.
    let rows = wait_for_records(&ledger_dir, before, CALLS.len())?;
    println!(
        "\nCaptured interactions (audit ledger {}):",
        ledger_dir.display()
    );
    println!(
        "  {:<10} {:<18} {:<22} {:>6} {:>5} {:>5} {:>11} {:>9} {:>8}  client",
        "provider", "model", "endpoint", "stream", "in", "out", "cost USD", "latency", "ttft",
    );
    for r in &rows {
        let num = |v: &serde_json::Value| v.as_u64().map(|n| n.to_string()).unwrap_or("-".into());
        let ms = |v: &serde_json::Value| {
            v.as_f64()
                .map(|n| format!("{n:.1}ms"))
                .unwrap_or("-".into())
        };
        let client = match (
            r["identity"]["process"].as_str(),
            r["identity"]["pid"].as_u64(),
        ) {
            (Some(p), Some(pid)) => format!("{p} (pid {pid})"),
            _ => r["identity"]["client_addr"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
        };
        println!(
            "  {:<10} {:<18} {:<22} {:>6} {:>5} {:>5} {:>11} {:>9} {:>8}  {}",
            r["provider"].as_str().unwrap_or("?"),
            r["model"].as_str().unwrap_or("?"),
            r["endpoint"].as_str().unwrap_or("?"),
            r["stream"].as_bool().unwrap_or(false),
            num(&r["usage"]["input_tokens"]),
            num(&r["usage"]["output_tokens"]),
            r["cost_usd"]
                .as_f64()
                .map(|c| format!("{c:.8}"))
                .unwrap_or("unpriced".into()),
            ms(&r["latency_ms"]),
            ms(&r["ttft_ms"]),
            client,
        );
    }
    if let Some(first) = rows.first() {
        println!(
            "\n  e.g. the first prompt: {:?}\n       its answer:       {:?}",
            first["request"]["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or(""),
            first["response"]["output"].as_str().unwrap_or("")
        );
    }

    // 7. Stop the proxy cleanly (SIGINT flushes records and detaches) and the mock.
    if let Some(child) = guard.0.take() {
        stop(child)?;
    }
    rt.block_on(mock.shutdown());
    println!(
        "\nSee them again with `sluice events tail`, check the chain with `sluice audit verify`,\nor summarise with `sluice report --type usage`."
    );
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_for(addr: SocketAddr, guard: &mut ChildGuard, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(c) = guard.0.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "the proxy exited ({status}); its log is {}",
                    dir.join("proxy.log").display()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the proxy did not start listening on {addr} within 30 s")
}

/// Why the transparent mode cannot run here, or the unified cgroup root when it can.
/// Mounts bpffs first, as `sluice run` would, so a fresh host passes `sluice doctor`.
fn transparent_capability() -> Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the demo is not running as root".into());
    }
    if let Err(e) = sluice_probe::mount_bpffs() {
        return Err(format!("bpffs cannot be mounted at /sys/fs/bpf: {e}"));
    }
    if let Some(failed) = sluice_probe::doctor().into_iter().find(|c| !c.ok) {
        return Err(format!(
            "`sluice doctor` reports {}: {}",
            failed.name, failed.detail
        ));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("`ip` (iproute2) is not installed".into());
    }
    sluice_probe::unified_cgroup_root().map_err(|e| e.to_string())
}

/// What the transparent mode made: the cgroup the redirect is attached to and the
/// namespaces. Dropped in reverse: the namespaces, then the cgroup.
struct Transparent {
    topology: Topology,
    cgroup: CgroupGuard,
}

impl Transparent {
    fn set_up(cgroup_root: &Path) -> anyhow::Result<Transparent> {
        let cg = cgroup_root.join(format!("sluice-demo-{}", std::process::id()));
        std::fs::create_dir_all(&cg)
            .with_context(|| format!("creating the demo cgroup {}", cg.display()))?;
        let cgroup = CgroupGuard(cg);
        let topology = Topology::create()?;
        topology.client_hosts(DEMO_HOSTS)?;
        Ok(Transparent { topology, cgroup })
    }
}

/// The demo's `sluice.yaml`: the org CA and ledger where the demo keeps them; in
/// transparent mode the redirect (the provider's address only, in the demo cgroup only)
/// and a pod-facing listener; in explicit mode the static destination table.
fn config_yaml(
    dir: &Path,
    provider_ca: &Path,
    ledger_dir: &Path,
    proxy_addr: SocketAddr,
    metrics_addr: SocketAddr,
    mock_addr: SocketAddr,
    transparent: Option<&Transparent>,
) -> String {
    let mut yaml = format!(
        "# Written by `sluice demo`.\nmetrics_listen: \"{metrics_addr}\"\nstate_dir: \"{}\"\nupstream:\n  ca_file: \"{}\"\nledger:\n  dir: \"{}\"\n",
        dir.display(),
        provider_ca.display(),
        ledger_dir.display()
    );
    match transparent {
        Some(t) => {
            let pod_facing = SocketAddr::from((t.topology.client_gw, proxy_addr.port()));
            yaml.push_str(&format!(
                "listen: [\"{proxy_addr}\", \"{pod_facing}\"]\nredirect:\n  enabled: true\n  cgroup: \"{}\"\n  pod_facing_v4: \"{pod_facing}\"\n  pin_dir: null\n  prefixes: [\"{}/32:{}\"]\n",
                t.cgroup.0.display(),
                mock_addr.ip(),
                mock_addr.port()
            ));
        }
        None => {
            yaml.push_str(&format!(
                "listen: [\"{proxy_addr}\"]\noriginal_dst:\n  static:\n"
            ));
            for h in DEMO_HOSTS {
                yaml.push_str(&format!("    {h}: \"{mock_addr}\"\n"));
            }
        }
    }
    yaml
}

/// Removes the demo cgroup (once its processes have exited).
struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the demo cgroup {}", self.0.display());
    }
}

/// Sends one call with curl: in transparent mode from the client namespace to the real
/// URL, nothing pointing at Sluice (the redirect captures it); in explicit mode pinned
/// to the proxy with `--connect-to`. Both trust the organisation CA.
fn curl(
    call: &DemoCall,
    ca: &Path,
    proxy: SocketAddr,
    transparent: Option<&Transparent>,
) -> anyhow::Result<String> {
    let mut cmd = match transparent {
        Some(t) => t.topology.client_command(&t.cgroup.0, "curl"),
        None => {
            let mut c = Command::new("curl");
            c.arg("--connect-to")
                .arg(format!("{}:443:{}:{}", call.host, proxy.ip(), proxy.port()));
            c
        }
    };
    cmd.args([
        "--silent",
        "--show-error",
        "--no-buffer",
        "--max-time",
        "30",
    ])
    .arg("--cacert")
    .arg(ca)
    .args(["-o", "/dev/null", "-w", "%{http_code} (%{http_version})"])
    .args(["-H", "content-type: application/json"]);
    for h in call.headers {
        cmd.args(["-H", h]);
    }
    cmd.args(["--data-binary", call.body])
        .arg(format!("https://{}{}", call.host, call.path));
    let out = cmd.output().context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl to {} failed: {}",
            call.host,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The newest sequence number in the ledger (0 when empty or absent).
fn last_seq(ledger: &Path) -> u64 {
    let filter = crate::ledger::Filter {
        limit: 1,
        ..Default::default()
    };
    crate::ledger::query(ledger, &filter)
        .ok()
        .and_then(|rows| rows.first().and_then(|r| r["seq"].as_u64()))
        .unwrap_or(0)
}

/// Wait until the ledger holds `n` interactions after `after`; oldest first.
fn wait_for_records(ledger: &Path, after: u64, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let filter = crate::ledger::Filter {
            limit: 10_000,
            kind: Some("interaction".into()),
            ..Default::default()
        };
        let mut rows: Vec<serde_json::Value> = crate::ledger::query(ledger, &filter)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["seq"].as_u64().unwrap_or(0) > after)
            .collect();
        rows.reverse();
        if rows.len() >= n {
            return Ok(rows);
        }
        if Instant::now() > deadline {
            bail!(
                "expected {n} interaction records in the ledger {}, found {}",
                ledger.display(),
                rows.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: Child) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    let _ = kill(pid, Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}
