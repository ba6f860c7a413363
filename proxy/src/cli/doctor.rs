//! `sluice doctor`: can this host run the eBPF redirect, and what to do when it cannot.
//!
//! In a Kubernetes pod (the chart sets `SLUICE_KUBERNETES=1`) the checks also cover what
//! the DaemonSet's spec provides — host PID namespace, the node's cgroup root and the
//! kubelet's directories as mounted, `NODE_IP` — and every fix names the chart value to
//! set instead of a command to run on the host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sluice_probe::Check;

/// Where the chart mounts the Sluice config.
const CHART_CONFIG: &str = "/etc/sluice/config/sluice.yaml";

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The config whose redirect cgroup and kubelet directories (in a pod), and fleet
    /// stores (Redis, the central PostgreSQL) are checked. Default in a Kubernetes pod:
    /// the chart's.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Mount bpffs at /sys/fs/bpf first when it is not (the chart's `agent.bpffsInit`
    /// init container).
    #[arg(long)]
    mount_bpffs: bool,
    /// Check the appliance's capture (forwarding, the nftables table, the policy routes)
    /// instead of the eBPF redirect; implied by `appliance.enabled` in the config.
    #[arg(long)]
    appliance: bool,
}

/// Prints each check with its fix; exit 1 (with the iptables fallback outside Kubernetes)
/// when the redirect cannot run here.
pub fn run(args: DoctorArgs) -> ExitCode {
    let kubernetes = std::env::var_os("SLUICE_KUBERNETES").is_some();
    if args.mount_bpffs {
        if let Err(e) = sluice_probe::mount_bpffs() {
            println!("[FAIL] mount bpffs at /sys/fs/bpf: {e}");
            return ExitCode::FAILURE;
        }
        println!("[ ok ] bpffs mounted at /sys/fs/bpf");
    }
    if let Some(code) = appliance(&args) {
        return code;
    }
    let mut checks = sluice_probe::doctor();
    if kubernetes {
        let config = args
            .config
            .clone()
            .or_else(|| Some(PathBuf::from(CHART_CONFIG)).filter(|p| p.exists()));
        let config = config.and_then(|p| match sluice::config::Config::load(&p) {
            Ok(c) => Some(c),
            Err(e) => {
                checks.push(failed(
                    "config",
                    e.to_string(),
                    "fix the chart's `config` value",
                ));
                None
            }
        });
        checks = in_chart_terms(checks);
        checks.extend(pod_checks(config.as_ref()));
        if let Some(c) = &config {
            checks.extend(fleet_checks(c));
        }
    } else if let Some(path) = &args.config {
        match sluice::config::Config::load(path) {
            Ok(c) => checks.extend(fleet_checks(&c)),
            Err(e) => checks.push(failed("config", e.to_string(), "fix the config file")),
        }
    }
    let ok = print(&checks);
    match (ok, kubernetes) {
        (true, true) => println!("\nThis node can run the Sluice agent."),
        (true, false) => println!("\nThis host can run the eBPF redirect (`redirect.enabled: true`)."),
        (false, true) => println!("\nThis node cannot run the Sluice agent as deployed: set the values above (helm upgrade … --set …)."),
        (false, false) => println!("\nThe eBPF redirect cannot run here as is. {IPTABLES_FALLBACK}"),
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The appliance's checks, when asked for (by flag or by the config): `None` otherwise.
fn appliance(args: &DoctorArgs) -> Option<ExitCode> {
    let config = match &args.config {
        Some(p) => match sluice::config::Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                println!("[FAIL] config: {e:#}\n       fix: fix the config file");
                return Some(ExitCode::FAILURE);
            }
        },
        None => sluice::config::Config::default(),
    };
    if !(args.appliance || config.appliance.enabled) {
        return None;
    }
    let mut checks: Vec<Check> = sluice::appliance::check(&config.appliance)
        .into_iter()
        .map(|(name, ok, detail)| Check {
            name,
            ok,
            detail,
            fix: None,
        })
        .collect();
    checks.extend(fleet_checks(&config));
    if print(&checks) {
        println!("\nThe appliance capture is in place: routed provider traffic reaches Sluice.");
        Some(ExitCode::SUCCESS)
    } else {
        println!("\nThe appliance capture is not (fully) in place: start `sluice run --mode appliance` as root.");
        Some(ExitCode::FAILURE)
    }
}

/// Prints each check with its fix; whether all passed.
fn print(checks: &[Check]) -> bool {
    for c in checks {
        let mark = if c.ok { " ok " } else { "FAIL" };
        println!("[{mark}] {}: {}", c.name, c.detail);
        if let (false, Some(fix)) = (c.ok, &c.fix) {
            println!("       fix: {fix}");
        }
    }
    checks.iter().all(|c| c.ok)
}

fn failed(name: &str, detail: String, fix: &str) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail,
        fix: Some(fix.into()),
    }
}

fn passed(name: &str, detail: String) -> Check {
    Check {
        name: name.into(),
        ok: true,
        detail,
        fix: None,
    }
}

/// The fleet's shared stores, when the config names them: answering now, within the
/// timeouts Sluice itself uses.
fn fleet_checks(config: &sluice::config::Config) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(r) = &config.fleet.redis {
        out.push(match r.ping() {
            Ok(_) => passed(
                "fleet redis",
                "answers: budgets and rate limits are shared".into(),
            ),
            Err(e) => failed(
                "fleet redis",
                format!("does not answer ({e}): policies act on on_counter_store_unavailable"),
                "check fleet.redis.url (host, port, password) and that Redis is up",
            ),
        });
    }
    if let Some(c) = &config.ledger.central {
        let answer = sluice::ledger::central::connect(&c.url, std::time::Duration::from_secs(5))
            .and_then(|mut client| sluice::ledger::central::migrate(&mut client));
        out.push(match answer {
            Ok(version) => passed(
                "central ledger",
                format!("PostgreSQL answers, schema version {version}"),
            ),
            Err(e) => failed(
                "central ledger",
                format!("{e}: records wait on the node"),
                "check ledger.central.url and that PostgreSQL is up",
            ),
        });
    }
    for sink in &config.sinks {
        let name = format!("sink {}", sink.name);
        out.push(match sluice::delivery::reach(sink) {
            Ok(detail) => passed(&name, detail),
            Err(e) => failed(
                &name,
                format!("{e}: its records wait in the ledger (lag grows)"),
                "check the sink's URL, the network path from the node, and its ca_file",
            ),
        });
    }
    out
}

/// The probe's fixes, said as chart values.
fn in_chart_terms(checks: Vec<Check>) -> Vec<Check> {
    checks
        .into_iter()
        .map(|mut c| {
            if !c.ok {
                let fix = match c.name.as_str() {
                    "privileges" | "bpf syscall" => Some(
                        "the agent needs agent.capabilities to include SYS_ADMIN (or set \
                         agent.capabilitiesModern: true on kernels >= 5.8) and NET_ADMIN; \
                         a Pod Security admission level below `privileged` on the release \
                         namespace also drops them",
                    ),
                    "bpffs" => Some(
                        "this node does not mount bpffs at boot: set agent.bpffsInit: true \
                         (a privileged init container mounts it), or mount it from the \
                         node's boot configuration",
                    ),
                    "cgroup v2" => Some(
                        "the node needs cgroup v2 (Kubernetes >= 1.25 nodes use it; on \
                         hybrid hosts set agent.cgroupRoot: /sys/fs/cgroup/unified)",
                    ),
                    _ => None,
                };
                if let Some(fix) = fix {
                    c.fix = Some(fix.into());
                }
            }
            c
        })
        .collect()
}

/// What the DaemonSet's spec must give the agent.
fn pod_checks(config: Option<&sluice::config::Config>) -> Vec<Check> {
    let mut checks = Vec::new();
    // hostPID: PID 1 is the node's init, not a process of this pod.
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    checks.push(if init.trim() == "sluice" {
        failed(
            "host PID namespace",
            "PID 1 is sluice: this pod has its own PID namespace".into(),
            "the DaemonSet needs hostPID: true (attribution reads /proc of every process)",
        )
    } else {
        passed("host PID namespace", format!("PID 1 is {}", init.trim()))
    });
    // SYS_PTRACE: the executables of other processes (some may be out of reach for other
    // reasons, such as a sandbox's init; one readable is enough).
    checks.push(match other_executable() {
        Some(Ok((pid, exe))) => passed(
            "read other processes' /proc",
            format!("/proc/{pid}/exe -> {}", exe.display()),
        ),
        Some(Err(e)) => failed(
            "read other processes' /proc",
            format!("no other process's executable is readable: {e}"),
            "add SYS_PTRACE to agent.capabilities (records then name each executable)",
        ),
        None => passed(
            "read other processes' /proc",
            "no other process to read".into(),
        ),
    });
    checks.push(match std::env::var("NODE_IP") {
        Ok(ip) if ip.parse::<std::net::IpAddr>().is_ok() => {
            passed("NODE_IP", format!("{ip} (pods are redirected there)"))
        }
        _ => failed(
            "NODE_IP",
            "unset or not an address".into(),
            "the DaemonSet sets NODE_IP from status.hostIP (downward API); keep that env entry",
        ),
    });
    let Some(config) = config else {
        return checks;
    };
    if let Some(cgroup) = &config.redirect.cgroup {
        checks.push(match is_cgroup2(cgroup) {
            Ok(true) => passed(
                "node cgroup root",
                format!("{} is cgroup v2", cgroup.display()),
            ),
            Ok(false) => failed(
                "node cgroup root",
                format!("{} is not a cgroup v2 directory", cgroup.display()),
                "set agent.cgroupRoot to the node's cgroup v2 mount: /sys/fs/cgroup, or \
                 /sys/fs/cgroup/unified on hosts with the hybrid v1/v2 layout",
            ),
            Err(e) => failed(
                "node cgroup root",
                format!("{}: {e}", cgroup.display()),
                "set agent.cgroupRoot to the node's cgroup v2 mount (hostPath)",
            ),
        });
    }
    for (what, dir, value) in [
        (
            "kubelet pod logs",
            &config.kubernetes.pod_logs,
            "agent.podLogDir",
        ),
        (
            "kubelet container logs",
            &config.kubernetes.container_logs,
            "agent.containerLogDir",
        ),
    ] {
        checks.push(match std::fs::read_dir(dir) {
            Ok(entries) => passed(
                what,
                format!("{}: {} entries", dir.display(), entries.count()),
            ),
            Err(e) => failed(
                what,
                format!("{}: {e}", dir.display()),
                &format!("set {value} to the kubelet's directory (records then lack namespace and pod names)"),
            ),
        });
    }
    checks
}

/// The first other process whose executable is readable, or the last error; `None` when
/// there is no other process.
fn other_executable() -> Option<std::io::Result<(u32, PathBuf)>> {
    let me = std::process::id();
    let mut last = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten().take(512) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        match std::fs::read_link(entry.path().join("exe")) {
            Ok(exe) => return Some(Ok((pid, exe))),
            Err(e) => last = Some(Err(e)),
        }
    }
    last
}

fn is_cgroup2(path: &Path) -> std::io::Result<bool> {
    // A cgroup v2 directory holds cgroup.controllers; v1 hierarchies and tmpfs do not.
    Ok(std::fs::metadata(path)?.is_dir() && path.join("cgroup.controllers").exists())
}

/// What `sluice doctor` offers when the host cannot run the eBPF redirect.
const IPTABLES_FALLBACK: &str = "Fallback without cgroup BPF: let iptables (or nftables) \
redirect provider traffic and have Sluice ask the kernel where each connection was going:

  # sluice.yaml
  listen: [\"0.0.0.0:15443\"]
  original_dst: {so_original_dst: true}   # getsockopt(SO_ORIGINAL_DST) on each connection

  # processes on this host; Sluice's own upstream sockets carry SO_MARK 0x534c (redirect.mark)
  iptables -t nat -A OUTPUT -p tcp -d <provider CIDR> --dport 443 \\
      -m mark ! --mark 0x534c -j REDIRECT --to-ports 15443
  # pods or routed clients whose traffic crosses this host
  iptables -t nat -A PREROUTING -p tcp -d <provider CIDR> --dport 443 -j REDIRECT --to-ports 15443
  (ip6tables likewise for IPv6; one rule per provider CIDR, kept current by you)

What you give up: provider addresses are not refreshed from DNS for you, records carry the
client address but not the connecting process (no connect-time attribution), and UDP/443
(HTTP/3) is not refused. `original_dst.static` and `local_addr` also work without the probe.";
