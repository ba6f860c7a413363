//! The paths under test: how each is installed, configured, started on loopback (pinned to
//! the proxy CPU), checked for readiness, and stopped. A path that cannot be installed or
//! started yields the reason, which the results carry instead of figures.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Every path, in the order they are measured and printed.
pub const PATHS: &[&str] = &[
    "direct",
    "nginx",
    "haproxy",
    "pingora-minimal",
    "sluice",
    "sluice-passthrough",
    "sluice-budget",
    "sluice-fleet",
    "sluice-deadsink",
    "litellm",
    "mitmproxy",
];

/// PyPI peers and the exact versions installed into `.venv-bench/<name>`.
const PYPI_PEERS: &[(&str, &str)] = &[
    ("litellm", "litellm[proxy]==1.106.2"),
    ("mitmproxy", "mitmproxy==11.0.2"),
];

/// What every path shares: binaries, certificates, the mock, the work directory.
pub struct Rig {
    pub root: PathBuf,
    pub sluice: PathBuf,
    /// `sluice-bench`, for the bare Pingora baseline.
    pub bench: PathBuf,
    pub work: PathBuf,
    pub mock: SocketAddr,
    pub mock_ca: PathBuf,
    /// Fixed certificate of the TLS-terminating peers (chain, key, both, and its CA).
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    pub peer_pem: PathBuf,
    pub peer_ca: PathBuf,
    /// `taskset -c N` prefix for the proxy under test, when there are two CPUs or more.
    pub proxy_cpu: Option<u32>,
    /// Where the rig's own servers run (mock, load generator, Redis).
    pub rig_cpu: Option<u32>,
}

/// Where a path's records go (its state directory and config), for the audit
/// completeness figure.
pub enum Records {
    /// Sluice inspecting: one interaction record per answered request.
    Interactions { state: PathBuf, config: PathBuf },
    /// Sluice passing through: one connection record per connection.
    Connections { state: PathBuf, config: PathBuf },
}

/// A path ready to be measured.
pub struct Running {
    pub addr: SocketAddr,
    /// The CA the client trusts on this path.
    pub client_ca: PathBuf,
    /// The process under test, `None` for `direct`.
    pub child: Option<Child>,
    pub log: PathBuf,
    pub records: Option<Records>,
    /// How long the first answer may take (cold Python peers).
    pub first_answer_timeout: f64,
    /// A server the path needs beside it (the fleet's Redis), stopped with it.
    pub sidecar: Option<Child>,
    /// Sluice's metrics listener, where the run turned it on (the soak reads its queues).
    pub metrics: Option<SocketAddr>,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, a grace period, then SIGKILL (then the sidecar).
    pub fn stop(&mut self) {
        self.stop_child();
        if let Some(mut sidecar) = self.sidecar.take() {
            let _ = sidecar.kill();
            let _ = sidecar.wait();
        }
    }

    fn stop_child(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(35);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in self.child.iter_mut().chain(self.sidecar.iter_mut()) {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A free loopback port (bound to :0, read back, released).
pub fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `cmd` prefixed with `taskset -c cpu` when pinning.
pub fn pinned(cpu: Option<u32>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    let out = fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

/// Last lines of a log, for reasons.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Waits until `addr` accepts, failing early when the process exits.
fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) before listening: {}", tail(log, 5));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not listening on {addr} after {timeout:?}: {}",
                tail(log, 5)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// === installs ===

/// Installs nginx and haproxy from apt when missing; the error is the reason.
pub fn ensure_apt_peers() -> Result<()> {
    ensure_apt(&["nginx", "haproxy"])
}

/// Installs the Debian packages of these programs (same names) when missing.
pub fn ensure_apt(programs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = programs.iter().copied().filter(|b| !which(b)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("bench: apt-get install {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let out = Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .output()
            .context("cannot run apt-get")?;
        if !out.status.success() {
            bail!(
                "apt-get {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    apt(&["-qq", "update"])?;
    let mut args = vec!["-qq", "install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

/// Whether `name` is an executable on PATH (or in /usr/sbin, where Debian puts daemons).
pub fn which(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(name).is_file())
}

fn sbin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The venv of a PyPI peer.
pub fn venv(root: &Path, peer: &str) -> PathBuf {
    root.join(".venv-bench").join(peer)
}

/// Installs a PyPI peer into its private venv when its pinned version is missing.
pub fn ensure_pypi_peer(root: &Path, peer: &str) -> Result<()> {
    let Some((_, spec)) = PYPI_PEERS.iter().find(|(n, _)| *n == peer) else {
        bail!("unknown PyPI peer {peer}");
    };
    let dir = venv(root, peer);
    let stamp = dir.join(".bench-installed");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == *spec) {
        return Ok(());
    }
    fs::create_dir_all(root.join(".venv-bench"))?;
    let log = root.join(format!(".venv-bench/{peer}-install.log"));
    if !dir.join("bin/python").exists() || !dir.join("bin/pip").is_file() {
        // A venv missing its interpreter or pip (an interrupted creation) is made anew.
        let python = if which("python3") {
            "python3"
        } else {
            "python"
        };
        let out = Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(&dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "python3 -m venv failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!(
        "bench: pip install {spec} into {} (log: {})",
        dir.display(),
        log.display()
    );
    let status = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", spec])
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::options().append(true).open(&log)?)
        .status()?;
    if !status.success() {
        bail!("pip install {spec} failed: {}", tail(&log, 3));
    }
    fs::write(&stamp, spec)?;
    Ok(())
}

/// The version string of a path's software.
pub fn version(rig: &Rig, path: &str) -> String {
    let first_line = |cmd: &mut Command| -> String {
        cmd.output()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let pip_version = |peer: &str, package: &str| {
        first_line(
            Command::new(venv(&rig.root, peer).join("bin/python")).args([
                "-c",
                &format!(
                    "import importlib.metadata as m; print('{package} ' + m.version('{package}'))"
                ),
            ]),
        )
    };
    match path {
        "direct" => "sluice-mock (no proxy)".into(),
        "nginx" => first_line(Command::new(sbin("nginx")).arg("-v")),
        "haproxy" => first_line(Command::new(sbin("haproxy")).arg("-v")),
        p if p.starts_with("sluice") => {
            let v = first_line(Command::new(&rig.sluice).arg("--version"));
            let rev = first_line(
                Command::new("git")
                    .current_dir(&rig.root)
                    .args(["describe", "--always", "--dirty"]),
            );
            format!("{v} ({rev})")
        }
        "pingora-minimal" => lock_version(&rig.root, "pingora")
            .map_or("pingora (version unknown)".into(), |v| {
                format!("pingora {v}")
            }),
        "litellm" => pip_version("litellm", "litellm"),
        "mitmproxy" => pip_version("mitmproxy", "mitmproxy"),
        _ => "unknown".into(),
    }
}

fn lock_version(root: &Path, package: &str) -> Option<String> {
    let lock = fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let needle = format!("name = \"{package}\"\nversion = \"");
    let at = lock.find(&needle)? + needle.len();
    Some(lock[at..].split('"').next()?.to_string())
}

// === starting each path ===

/// Starts `path` and waits until it listens.
pub fn start(rig: &Rig, path: &str) -> Result<Running> {
    start_with(rig, path, &[])
}

/// [`start`], a Sluice path run under `wrapper` (e.g. valgrind and its options) when not
/// empty; its readiness may then take much longer.
pub fn start_with(rig: &Rig, path: &str, wrapper: &[String]) -> Result<Running> {
    let dir = rig.work.join(path);
    fs::create_dir_all(&dir)?;
    let log = dir.join("out.log");
    let addr = free_addr()?;
    let mut records = None;
    let mut client_ca = rig.peer_ca.clone();
    let mut ready_timeout = Duration::from_secs(20);
    let mut first_answer_timeout = 30.0;
    let mut sidecar = None;
    let mut metrics = None;
    let cmd = match path {
        "direct" => {
            return Ok(Running {
                addr: rig.mock,
                client_ca: rig.mock_ca.clone(),
                child: None,
                log,
                records: None,
                first_answer_timeout,
                sidecar: None,
                metrics: None,
            })
        }
        "nginx" => {
            let conf = dir.join("nginx.conf");
            fs::write(&conf, nginx_conf(rig, &dir, addr))?;
            let mut c = pinned(rig.proxy_cpu, sbin("nginx"));
            c.arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"));
            c
        }
        "haproxy" => {
            let conf = dir.join("haproxy.cfg");
            fs::write(&conf, haproxy_conf(rig, addr))?;
            let mut c = pinned(rig.proxy_cpu, sbin("haproxy"));
            c.arg("-db").arg("-f").arg(&conf);
            c
        }
        "pingora-minimal" => {
            let mut c = pinned(rig.proxy_cpu, &rig.bench);
            c.args(["minimal-proxy", "--threads", "1"])
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--upstream")
                .arg(rig.mock.to_string())
                .arg("--upstream-ca")
                .arg(&rig.mock_ca)
                .arg("--cert")
                .arg(&rig.peer_cert)
                .arg("--key")
                .arg(&rig.peer_key);
            c
        }
        "sluice" | "sluice-passthrough" | "sluice-budget" | "sluice-fleet" | "sluice-deadsink"
        | SOAK_PATH => {
            let passthrough = path == "sluice-passthrough";
            let state = dir.join("state");
            let conf = dir.join("sluice.yaml");
            let mut extra = String::new();
            if matches!(path, "sluice-budget" | "sluice-fleet" | SOAK_PATH) {
                extra.push_str(BUDGET_POLICY);
            }
            if path == SOAK_PATH {
                extra.push_str(SOAK_POLICY);
                metrics = Some(free_addr()?);
            }
            if path == "sluice-deadsink" {
                extra.push_str(&dead_sinks()?);
            }
            if path == "sluice-fleet" {
                let (redis, url) = start_redis(rig, &dir)?;
                sidecar = Some(redis);
                extra.push_str(&format!("fleet:\n  redis: {{url: \"{url}\"}}\n"));
            }
            let mut text = sluice_conf(rig, &state, addr, passthrough);
            if let Some(at) = metrics {
                text = text.replace("metrics_listen: null", &format!("metrics_listen: \"{at}\""));
            }
            fs::write(&conf, text + &extra)?;
            let out = Command::new(&rig.sluice)
                .args(["ca", "init", "--config"])
                .arg(&conf)
                .output()?;
            if !out.status.success() {
                bail!(
                    "sluice ca init failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if passthrough {
                // End-to-end TLS with the mock: the client sees the mock's certificate.
                client_ca = rig.mock_ca.clone();
                records = Some(Records::Connections {
                    state: state.clone(),
                    config: conf.clone(),
                });
            } else {
                client_ca = state.join("ca/ca.crt");
                records = Some(Records::Interactions {
                    state: state.clone(),
                    config: conf.clone(),
                });
            }
            let mut c = match wrapper.split_first() {
                Some((program, args)) => {
                    ready_timeout = Duration::from_secs(300);
                    first_answer_timeout = 300.0;
                    let mut c = pinned(rig.proxy_cpu, program);
                    c.args(args).arg(&rig.sluice);
                    c
                }
                None => pinned(rig.proxy_cpu, &rig.sluice),
            };
            c.arg("run")
                .arg("--config")
                .arg(&conf)
                .env("SLUICE_LOG", "warn");
            c
        }
        "litellm" => {
            let venv = venv(&rig.root, "litellm");
            let conf = dir.join("litellm.yaml");
            fs::write(&conf, litellm_conf(rig))?;
            ready_timeout = Duration::from_secs(120);
            first_answer_timeout = 120.0;
            let mut c = pinned(rig.proxy_cpu, venv.join("bin/litellm"));
            c.arg("--config")
                .arg(&conf)
                .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
                .args(["--num_workers", "1"])
                .arg("--ssl_certfile_path")
                .arg(&rig.peer_cert)
                .arg("--ssl_keyfile_path")
                .arg(&rig.peer_key)
                // Nothing leaves the machine: no cost-map download, no telemetry.
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("LITELLM_TELEMETRY", "False")
                .env("LITELLM_LOG", "ERROR")
                // No master key: loopback only, and clients must not need a LiteLLM key.
                .env(
                    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY",
                    "true",
                )
                .env("SSL_CERT_FILE", &rig.mock_ca)
                .env("REQUESTS_CA_BUNDLE", &rig.mock_ca);
            c
        }
        "mitmproxy" => {
            let venv = venv(&rig.root, "mitmproxy");
            ready_timeout = Duration::from_secs(60);
            let mut c = pinned(rig.proxy_cpu, venv.join("bin/mitmdump"));
            c.arg("--mode")
                .arg(format!("reverse:https://{}/", rig.mock))
                .args(["--listen-host", "127.0.0.1", "--listen-port"])
                .arg(addr.port().to_string())
                .arg("--certs")
                .arg(format!("*={}", rig.peer_pem.display()))
                .arg("--set")
                .arg(format!("confdir={}", dir.join("conf").display()))
                .arg("--set")
                .arg(format!(
                    "ssl_verify_upstream_trusted_ca={}",
                    rig.mock_ca.display()
                ))
                // Stream bodies instead of buffering them (SSE would wait for the end).
                .args([
                    "--set",
                    "stream_large_bodies=1",
                    "--set",
                    "flow_detail=0",
                    "-q",
                ]);
            c
        }
        other => bail!("unknown path {other}"),
    };
    let mut child = spawn(cmd, &log)?;
    wait_ready(&mut child, addr, &log, ready_timeout)?;
    Ok(Running {
        addr,
        client_ca,
        child: Some(child),
        log,
        records,
        first_answer_timeout,
        sidecar,
        metrics,
    })
}

/// The governed paths' policy: one shared budget and one rate limit, both far from
/// refusing, so every request reserves, settles, admits and finishes.
const BUDGET_POLICY: &str = "policy:
  policies:
    - id: bench-budget
      budget: {usd: 1000000000, period: day, shared: bench}
      rate_limit: {requests_per_minute: 1000000000, concurrent: 1000000}
";

/// The soak's path (not measured by the scenarios): the budgeted path, plus a model it
/// refuses and its metrics listener on.
pub const SOAK_PATH: &str = "sluice-soak";

/// What the soak adds to [`BUDGET_POLICY`]: one refused model ([`REFUSED_MODEL`], priced,
/// so the budget does not refuse it first).
const SOAK_POLICY: &str = "    - id: bench-refuse
      models: {deny: [\"gpt-4o\"]}
";

/// The model the soak's refused requests ask for.
pub const REFUSED_MODEL: &str = "gpt-4o";

/// A `redis-server` for the fleet path on a free loopback port, beside the load generator
/// (not on the proxy's CPU), without persistence.
fn start_redis(rig: &Rig, dir: &Path) -> Result<(Child, String)> {
    if !which("redis-server") {
        bail!("redis-server is not installed (`cargo xtask setup` installs it)");
    }
    let addr = free_addr()?;
    let mut cmd = pinned(rig.rig_cpu, "redis-server");
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--port",
    ])
    .arg(addr.port().to_string())
    .arg("--dir")
    .arg(dir);
    let mut child = spawn(cmd, &dir.join("redis.log"))?;
    wait_ready(
        &mut child,
        addr,
        &dir.join("redis.log"),
        Duration::from_secs(20),
    )?;
    Ok((child, format!("redis://{addr}")))
}

/// Fills `@NAME@` placeholders of a template from bench/.
fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("@{name}@"), value);
    }
    debug_assert!(!out.contains("@MOCK"), "unfilled placeholder");
    out
}

fn nginx_conf(rig: &Rig, dir: &Path, addr: SocketAddr) -> String {
    fill(
        include_str!("../../nginx.conf.tmpl"),
        &[
            ("DIR", dir.display().to_string()),
            ("MOCK_CA", rig.mock_ca.display().to_string()),
            ("MOCK", rig.mock.to_string()),
            ("LISTEN", addr.to_string()),
            ("CERT", rig.peer_cert.display().to_string()),
            ("KEY", rig.peer_key.display().to_string()),
        ],
    )
}

fn haproxy_conf(rig: &Rig, addr: SocketAddr) -> String {
    fill(
        include_str!("../../haproxy.cfg.tmpl"),
        &[
            ("LISTEN", addr.to_string()),
            ("PEM", rig.peer_pem.display().to_string()),
            ("MOCK_CA", rig.mock_ca.display().to_string()),
            ("MOCK", rig.mock.to_string()),
        ],
    )
}

fn sluice_conf(rig: &Rig, state: &Path, addr: SocketAddr, passthrough: bool) -> String {
    // Passthrough: api.openai.com is not an inspected provider, and listed for passthrough
    // (without the list it would be refused: captured traffic is inspected or refused).
    let providers = if passthrough {
        "providers:\n  - host: api.anthropic.com\npassthrough: [api.openai.com]\n"
    } else {
        ""
    };
    fill(
        include_str!("../../sluice.yaml.tmpl"),
        &[
            ("LISTEN", addr.to_string()),
            ("STATE", state.display().to_string()),
            ("PROVIDERS", providers.to_string()),
            ("MOCK_CA", rig.mock_ca.display().to_string()),
            ("MOCK", rig.mock.to_string()),
        ],
    )
}

fn litellm_conf(rig: &Rig) -> String {
    fill(
        include_str!("../../litellm.yaml.tmpl"),
        &[
            ("MOCK_PORT", rig.mock.port().to_string()),
            ("MOCK_CA", rig.mock_ca.display().to_string()),
        ],
    )
}

/// A PostgreSQL cluster of the bench's own (`initdb` in `dir`, loopback, trust auth), run
/// as the `postgres` user when the bench runs as root (the server refuses root); stopped
/// on drop.
pub struct Postgres {
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
}

impl Postgres {
    pub fn start(dir: &Path) -> Result<Postgres> {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.path().join("bin"))
                    .filter(|b| b.join("pg_ctl").exists())
                    .max()
            })
            .context(
                "PostgreSQL is not installed (`cargo xtask setup` installs Debian's postgresql)",
            )?;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let root = nix::unistd::geteuid().is_root();
        let run = |program: &str, args: &[&str]| -> Result<()> {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            let out = c.args(args).current_dir(dir).output()?;
            if !out.status.success() {
                bail!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        if root {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?;
        }
        let data = dir.join("data");
        let port = free_addr()?.port();
        let d = data.display().to_string();
        run("initdb", &["-D", &d, "-A", "trust", "-U", "postgres"])?;
        let opts = format!("-p {port} -h 127.0.0.1 -k {}", dir.display());
        let log = dir.join("server.log").display().to_string();
        run(
            "pg_ctl",
            &["-D", &d, "-l", &log, "-w", "-o", &opts, "start"],
        )?;
        let pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            data,
        };
        Ok(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut c = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = c
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        if let Some(dir) = self.data.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Every kind of sink, each pointed at a loopback port nobody listens on (bound, never
/// listening, then released: connection refused): the request path must not notice.
fn dead_sinks() -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    Ok(format!(
        "sinks:
  - {{name: syslog, syslog: {{url: \"tcp://127.0.0.1:{port}\"}}}}
  - {{name: splunk, splunk_hec: {{url: \"{url}\", token: {{value: t}}}}}}
  - {{name: datadog, datadog: {{url: \"{url}\", api_key: {{value: k}}}}}}
  - {{name: elastic, elasticsearch: {{url: \"{url}\"}}}}
  - {{name: hook, webhook: {{url: \"{url}\", secret: {{value: s}}}}}}
"
    ))
}
