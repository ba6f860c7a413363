//! `sluice demo`: the whole main job, hermetically, on one machine.
//!
//! It starts a mock LLM provider (OpenAI, Anthropic and Gemini formats, TLS with its own
//! test CA) on loopback, runs the real `sluice run` binary, sends real requests with curl to
//! `https://api.openai.com/…` and friends (the organisation CA trusted), and prints what was
//! captured.
//!
//! Two modes, chosen automatically:
//! - **transparent** (root on a host where `sluice doctor` passes): curl runs in a cgroup
//!   made for the demo and connects to the "provider" (the mock's loopback address) as it
//!   would to the real one; the eBPF redirect captures it — no proxy setting anywhere;
//! - **explicit** otherwise: curl is pointed at the proxy with `--connect-to`, and the static
//!   original-destination table sends it on. The demo says why it fell back.
//!
//! No traffic leaves loopback.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_mock::pki::TestPki;
use sluice_mock::{MockOptions, MockProvider};

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

    // 2. A mock provider on loopback with its own test CA.
    let hosts: Vec<String> = DEMO_HOSTS.iter().map(|h| h.to_string()).collect();
    let pki = TestPki::mint("Sluice mock provider test CA", &hosts)?;
    let (provider_ca, server_config) = (
        pki.ca_pem().to_owned(),
        pki.server_config(sluice_mock::alpn_protocols())?,
    );
    let provider_ca_path = dir.join("provider-ca.pem");
    std::fs::write(&provider_ca_path, provider_ca)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mock = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        MockProvider::start(listener, Some(server_config), MockOptions::default())
    })?;
    let mock_addr = mock.local_addr();
    println!("• mock provider (TLS) listening on  {mock_addr}");

    // 3. Transparent mode when this host can run the eBPF redirect.
    let cgroup = match transparent_capability() {
        Ok(root) => {
            let cg = root.join(format!("sluice-demo-{}", std::process::id()));
            std::fs::create_dir_all(&cg)
                .with_context(|| format!("creating the demo cgroup {}", cg.display()))?;
            println!(
                "• mode: transparent (eBPF redirect on cgroup {})",
                cg.display()
            );
            Some(CgroupGuard(cg))
        }
        Err(why) => {
            println!("• mode: explicit (curl --connect-to the proxy); the eBPF redirect is off because {why}");
            None
        }
    };

    // 4. The proxy, as a real `sluice run` process.
    let proxy_addr = free_addr()?;
    let metrics_addr = free_addr()?;
    // The default ledger, so `sluice events tail` with no flags shows what the demo did.
    let ledger_dir = crate::config::default_state_dir().join("ledger");
    let before = last_seq(&ledger_dir);
    let config_path = dir.join("sluice.yaml");
    let mut yaml = format!(
        "# Written by `sluice demo`.\nlisten: [\"{proxy_addr}\"]\nmetrics_listen: \"{metrics_addr}\"\nstate_dir: \"{}\"\nupstream:\n  ca_file: \"{}\"\nledger:\n  dir: \"{}\"\noriginal_dst:\n  static:\n",
        dir.display(),
        provider_ca_path.display(),
        ledger_dir.display()
    );
    for h in DEMO_HOSTS {
        yaml.push_str(&format!("    {h}: \"{mock_addr}\"\n"));
    }
    if let Some(cg) = &cgroup {
        // Only the mock's own address and port are "provider" here: nothing else on this
        // host is redirected, and the redirect lives in the demo's cgroup only.
        yaml.push_str(&format!(
            "redirect:\n  enabled: true\n  cgroup: \"{}\"\n  pin_dir: null\n  prefixes: [\"{}/32:{}\"]\n  ports: [{}]\n",
            cg.0.display(),
            mock_addr.ip(),
            mock_addr.port(),
            mock_addr.port()
        ));
    }
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

    // 5. Real requests, as a client on this host would send them.
    match &cgroup {
        Some(_) => println!("Sending requests (curl in the demo cgroup → https://<provider>/…, redirected by eBPF into sluice → mock provider):"),
        None => println!("Sending requests (curl → https://<provider>/… → sluice → mock provider):"),
    }
    for call in CALLS {
        let out = match &cgroup {
            Some(cg) => curl(call, mock_addr, &ca_cert, Some(&cg.0))?,
            None => curl(call, proxy_addr, &ca_cert, None)?,
        };
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
fn transparent_capability() -> Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the demo is not running as root".into());
    }
    if let Some(failed) = sluice_probe::doctor().into_iter().find(|c| !c.ok) {
        return Err(format!(
            "`sluice doctor` reports {}: {}",
            failed.name, failed.detail
        ));
    }
    sluice_probe::unified_cgroup_root().map_err(|e| e.to_string())
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

/// Send one call with curl to `target` (the proxy, or in transparent mode the provider's
/// address — then curl runs inside `cgroup`, where the redirect captures it).
fn curl(
    call: &DemoCall,
    target: SocketAddr,
    ca: &Path,
    cgroup: Option<&Path>,
) -> anyhow::Result<String> {
    let mut cmd = match cgroup {
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "echo $$ > '{}/cgroup.procs' && exec curl \"$@\"",
                    cg.display()
                ))
                .arg("sh");
            c
        }
        None => Command::new("curl"),
    };
    cmd.args([
        "--silent",
        "--show-error",
        "--no-buffer",
        "--max-time",
        "30",
    ])
    .arg("--connect-to")
    .arg(format!(
        "{}:443:{}:{}",
        call.host,
        target.ip(),
        target.port()
    ))
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
