//! The in-VPC appliance: Sluice as the router that a network's route to the LLM providers
//! points at, governing every AI call of a subnet with nothing installed on its hosts.
//!
//! # Capture: TPROXY, not `sk_lookup`
//! Forwarded TCP to a provider prefix and port is delivered to Sluice's transparent
//! listener with its original destination intact (no NAT on the path: the accepted
//! socket's local address *is* the provider address the client dialled, and its peer is
//! the client itself). The mechanism is nftables TPROXY:
//! - the provider set lives in two nftables interval sets (`addr . port`), so prefix
//!   matching, port lists and atomic replacement come with the kernel; the refusal of
//!   QUIC (UDP to the same prefixes and ports), the fail-closed rule and the forward/drop
//!   choice for everything else live in the same table, one `nft -f` transaction;
//! - it works for IPv4 and IPv6 with one rule each;
//! - the one thing it needs from the listener is `IP_TRANSPARENT`, which this module's
//!   transparent listener ([`crate::proxy::listen`]) sets.
//!
//! eBPF `sk_lookup` would steer without the socket option but still needs a local route
//! per provider prefix and a BPF program and maps to keep in sync; it adds nothing here
//! that nftables lacks, so it is not built (the probe's cgroup hooks remain the node
//! agent's mechanism).
//!
//! # The kernel side, set up and torn down idempotently
//! - sysctls: IPv4 and IPv6 forwarding on (an appliance is a router; left on at stop);
//! - nftables table `inet <table>` (replaced whole at each start): sets `providers4` /
//!   `providers6`; chain `capture` (prerouting: TPROXY to the listener, mark
//!   `appliance.mark`); chain `refuse` (forward: provider TCP that reached forwarding —
//!   Sluice is down — is reset, never forwarded unaudited; UDP to providers is refused
//!   with ICMP port-unreachable so QUIC clients fall back to TCP; with
//!   `non_provider: drop` everything else forwarded is dropped); chain `egress` (with
//!   `masquerade`, forwarded traffic leaves with the appliance's address, as a NAT
//!   gateway's would);
//! - policy routing: `fwmark <mark> lookup <route_table>` and `local default dev lo` in
//!   that table, for both families.
//!
//! A clean stop keeps all of it by default (`on_stop: keep`): while Sluice restarts,
//! provider connections are refused rather than let through. `on_stop: detach` removes
//! the table, the rules and the routes.
//!
//! The provider set is the node probe's: `redirect.prefixes` (static), the provider hosts
//! resolved every `redirect.refresh_secs` and kept `redirect.grace_secs` after they stop
//! resolving, on `redirect.ports`; a change replaces the sets' elements in one transaction.

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_probe::ProviderPrefix;

use crate::redirect::{OnStop, RedirectConfig, Resolver};

/// `appliance:` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceConfig {
    /// Run as the appliance (also `sluice run --mode appliance`). Needs root
    /// (CAP_NET_ADMIN for nftables and routes, CAP_NET_RAW is not needed). Default: false.
    pub enabled: bool,
    /// Port of the transparent listener on 127.0.0.1 and ::1 that captured connections
    /// are handed to. Default: 15001.
    pub port: u16,
    /// Packet mark of captured packets (routed to the local table). Must differ from
    /// `redirect.mark`. Default: 0x534d.
    pub mark: u32,
    /// Routing table holding the `local default` route for marked packets. Default: 21325.
    pub route_table: u32,
    /// Name of the nftables table (family `inet`). Default: `sluice`.
    pub table: String,
    /// Forwarded traffic that is not for a provider: `forward` (routed on) or `drop`.
    /// Default: forward — pointing a subnet's whole egress at the appliance keeps working.
    pub non_provider: NonProvider,
    /// Forwarded traffic leaves with the appliance's address (masquerade), as a NAT
    /// gateway's would. Set false when the network routes the clients' addresses back
    /// itself. Default: true.
    pub masquerade: bool,
    /// What a clean stop does to the kernel side: `keep` (provider connections are
    /// refused until the next start: no unaudited window) or `detach` (everything is
    /// removed; forwarding stays on). Default: keep.
    pub on_stop: OnStop,
}

/// What happens to forwarded traffic that is not for a provider.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NonProvider {
    /// Routed on (with `masquerade`, under the appliance's address).
    #[default]
    Forward,
    /// Dropped (replies of connections already open still pass).
    Drop,
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        ApplianceConfig {
            enabled: false,
            port: 15001,
            mark: 0x534d,
            route_table: 21325,
            table: "sluice".into(),
            non_provider: NonProvider::Forward,
            masquerade: true,
            on_stop: OnStop::Keep,
        }
    }
}

impl ApplianceConfig {
    /// What is wrong with these settings, as (key, message) pairs.
    pub fn problems(&self, redirect: &RedirectConfig) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.port == 0 {
            out.push((
                "port",
                "must be a port number, 1-65535 (default 15001)".into(),
            ));
        }
        if self.mark == 0 {
            out.push((
                "mark",
                "must not be 0 (unmarked packets are everyone's)".into(),
            ));
        }
        if redirect.enabled && self.mark == redirect.mark {
            out.push((
                "mark",
                format!(
                    "{:#x} is also redirect.mark; Sluice's upstream sockets carry that one and \
                     must not be captured: pick another",
                    self.mark
                ),
            ));
        }
        if matches!(self.route_table, 0 | 253..=255) {
            out.push((
                "route_table",
                format!(
                    "{} is a reserved routing table; pick another (default 21325)",
                    self.route_table
                ),
            ));
        }
        if self.table.is_empty()
            || !self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            out.push((
                "table",
                format!(
                    "{:?} is not an nftables table name (letters, digits, _ and -)",
                    self.table
                ),
            ));
        }
        out
    }

    /// The transparent listener's addresses: loopback of each family on `port`.
    pub fn listeners(&self) -> [SocketAddr; 2] {
        [
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, self.port)),
        ]
    }
}

/// Errors of the appliance's kernel side.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// A command (`nft`, `ip`) could not be run or failed.
    #[error("{what}: {detail} (appliance mode needs root, nftables and iproute2; run `sluice doctor --config …`)")]
    Command {
        /// What was being done.
        what: String,
        /// The command's own words.
        detail: String,
    },
    /// A sysctl could not be written.
    #[error("setting {path}: {source} (appliance mode needs root)")]
    Sysctl {
        /// The /proc/sys path.
        path: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A provider prefix in `redirect.prefixes` is invalid.
    #[error(transparent)]
    Prefix(#[from] crate::redirect::RedirectError),
}

const SYSCTLS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

/// The appliance's kernel side while Sluice runs: the table, the routes and the thread
/// that keeps the provider sets fresh and the capture in place.
pub struct Appliance {
    cfg: ApplianceConfig,
    stop: Arc<AtomicBool>,
    healthy: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the capture is checked against what Sluice wrote (and put back if it differs).
const CHECK_EVERY: Duration = Duration::from_secs(2);

impl Appliance {
    /// Set up forwarding, the nftables table with the current provider set and the policy
    /// routes, then start the refresh thread. Idempotent: a table or routes left by an
    /// earlier run are replaced.
    ///
    /// # Errors
    /// [`ApplianceError`] with what to fix.
    pub fn start(
        cfg: &ApplianceConfig,
        providers: &RedirectConfig,
        hosts: Vec<String>,
    ) -> Result<Appliance, ApplianceError> {
        let statics = providers
            .prefixes
            .iter()
            .map(|p| crate::redirect::parse_prefix(p))
            .collect::<Result<Vec<_>, _>>()?;
        for path in SYSCTLS {
            // Already on (the image sets it at boot): no write, so a unit that makes
            // /proc/sys read-only (ProtectKernelTunables=) still starts.
            if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
                continue;
            }
            std::fs::write(path, "1\n")
                .map_err(|source| ApplianceError::Sysctl { path, source })?;
        }
        let mut resolver = Resolver::new(hosts, providers.ports.clone(), providers.grace_secs);
        let mut set = statics.clone();
        set.extend(resolver.refresh());
        nft(&ruleset(cfg, &set), "installing the nftables table")?;
        routes(cfg, true)?;
        tracing::info!(
            table = %cfg.table,
            prefixes = set.len(),
            port = cfg.port,
            non_provider = ?cfg.non_provider,
            masquerade = cfg.masquerade,
            "appliance capture installed"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = Arc::new(AtomicBool::new(true));
        let refresh = Duration::from_secs(providers.refresh_secs.max(1));
        let thread = {
            let (stop, healthy, cfg) = (stop.clone(), healthy.clone(), cfg.clone());
            let state = Maintained {
                resolver,
                statics,
                current: set,
                kernel: snapshot(&cfg),
            };
            std::thread::Builder::new()
                .name("sluice-appliance".into())
                .spawn(move || maintain(&cfg, &stop, &healthy, state, refresh))
                .map_err(|e| ApplianceError::Command {
                    what: "spawning the provider refresh thread".into(),
                    detail: e.to_string(),
                })?
        };
        Ok(Appliance {
            cfg: cfg.clone(),
            stop,
            healthy,
            thread: Some(thread),
        })
    }

    /// Whether the capture is in place (checked every two seconds; `/readyz` reads it).
    pub fn health(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    /// Stop refreshing; with `on_stop: detach` remove the table and the routes.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.cfg.on_stop == OnStop::Keep {
            tracing::info!(table = %self.cfg.table, "appliance capture kept (on_stop: keep): provider connections are refused until the next start");
            return;
        }
        match teardown(&self.cfg) {
            Ok(()) => tracing::info!(table = %self.cfg.table, "appliance capture removed"),
            Err(e) => tracing::error!(error = %e, "removing the appliance capture failed"),
        }
    }
}

/// Remove the table, the rules and the routes (what `on_stop: detach` does).
///
/// # Errors
/// A command fails for another reason than "already gone".
pub fn teardown(cfg: &ApplianceConfig) -> Result<(), ApplianceError> {
    let table = &cfg.table;
    nft(
        &format!("table inet {table}\ndelete table inet {table}\n"),
        "removing the nftables table",
    )?;
    routes(cfg, false)
}

/// What the maintenance thread keeps between rounds.
struct Maintained {
    resolver: Resolver,
    statics: Vec<ProviderPrefix>,
    /// The provider set the kernel holds.
    current: Vec<ProviderPrefix>,
    /// The table as the kernel listed it right after Sluice wrote it.
    kernel: Option<String>,
}

/// Every [`CHECK_EVERY`], put the capture back if it went (someone flushed the ruleset or
/// the policy routes: provider traffic would then be refused by nothing and forwarded
/// unaudited); every `refresh`, re-resolve the provider hosts and replace the sets when
/// they changed.
fn maintain(
    cfg: &ApplianceConfig,
    stop: &AtomicBool,
    healthy: &AtomicBool,
    mut state: Maintained,
    refresh: Duration,
) {
    let mut last_refresh = Instant::now();
    let mut last_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            if !installed(cfg, state.kernel.as_deref()) {
                tracing::warn!(table = %cfg.table, "the appliance capture was removed from the kernel; putting it back");
                crate::metrics::APPLIANCE_EVENTS
                    .with_label_values(&["reinstalled"])
                    .inc();
                let back = nft(
                    &ruleset(cfg, &state.current),
                    "reinstalling the nftables table",
                )
                .and_then(|()| routes(cfg, true));
                if let Err(e) = &back {
                    tracing::error!(error = %e, "reinstalling the appliance capture failed");
                }
                state.kernel = snapshot(cfg);
                healthy.store(back.is_ok(), Ordering::Relaxed);
            } else {
                healthy.store(true, Ordering::Relaxed);
            }
        }
        if last_refresh.elapsed() < refresh {
            continue;
        }
        last_refresh = Instant::now();
        let mut fresh = state.statics.clone();
        fresh.extend(state.resolver.refresh());
        if same_set(&fresh, &state.current) {
            continue;
        }
        match nft(&set_update(cfg, &fresh), "updating the provider sets") {
            Ok(()) => {
                tracing::info!(prefixes = fresh.len(), "appliance provider set updated");
                crate::metrics::APPLIANCE_EVENTS
                    .with_label_values(&["set_updated"])
                    .inc();
                state.current = fresh;
                state.kernel = snapshot(cfg);
            }
            Err(e) => {
                crate::metrics::APPLIANCE_EVENTS
                    .with_label_values(&["update_failed"])
                    .inc();
                tracing::error!(error = %e, "updating the appliance provider set failed");
            }
        }
    }
}

/// Whether the capture is in the kernel as Sluice left it: the table exactly as listed
/// after it was written (an emptied set, a deleted or edited rule, a rule added to it all
/// differ), and for both families the policy rule and the policy table's local route.
fn installed(cfg: &ApplianceConfig, written: Option<&str>) -> bool {
    let table_intact = written.is_some_and(|w| snapshot(cfg).as_deref() == Some(w));
    let stdout = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let table = cfg.route_table.to_string();
    table_intact
        && ["-4", "-6"].iter().all(|family| {
            stdout(&[family, "rule", "show"]).contains(&rule_text(cfg))
                && stdout(&[family, "route", "show", "table", &table]).contains("local default")
        })
}

/// The table as the kernel lists it, without counters (`nft -s`); `None` if it cannot
/// be listed (absent, or no nft).
fn snapshot(cfg: &ApplianceConfig) -> Option<String> {
    let out = Command::new("nft")
        .args(["-s", "list", "table", "inet", &cfg.table])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The policy rule as `ip rule show` prints it.
fn rule_text(cfg: &ApplianceConfig) -> String {
    format!("fwmark {:#x} lookup {}", cfg.mark, cfg.route_table)
}

fn same_set(a: &[ProviderPrefix], b: &[ProviderPrefix]) -> bool {
    let key = |s: &[ProviderPrefix]| {
        let mut v: Vec<String> = elements(s, true)
            .into_iter()
            .chain(elements(s, false))
            .collect();
        v.sort();
        v
    };
    key(a) == key(b)
}

/// The whole table, replacing any earlier one in the same transaction.
pub fn ruleset(cfg: &ApplianceConfig, set: &[ProviderPrefix]) -> String {
    let ApplianceConfig {
        table, port, mark, ..
    } = cfg;
    let mut forward_rest = String::new();
    if cfg.non_provider == NonProvider::Drop {
        forward_rest.push_str("    ct state established,related accept\n    counter drop\n");
    }
    let egress = if cfg.masquerade && cfg.non_provider == NonProvider::Forward {
        "  chain egress {\n    type nat hook postrouting priority srcnat; policy accept;\n    fib saddr type != local masquerade\n  }\n"
    } else {
        ""
    };
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         {sets}\
         \x20 chain capture {{\n\
         \x20   type filter hook prerouting priority mangle; policy accept;\n\
         \x20   ip daddr . tcp dport @providers4 tproxy ip to 127.0.0.1:{port} meta mark set {mark:#x} accept\n\
         \x20   ip6 daddr . tcp dport @providers6 tproxy ip6 to [::1]:{port} meta mark set {mark:#x} accept\n\
         \x20 }}\n\
         \x20 chain refuse {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   ip daddr . tcp dport @providers4 counter reject with tcp reset\n\
         \x20   ip6 daddr . tcp dport @providers6 counter reject with tcp reset\n\
         \x20   ip daddr . udp dport @providers4 counter reject\n\
         \x20   ip6 daddr . udp dport @providers6 counter reject\n\
         {forward_rest}\
         \x20 }}\n\
         {egress}\
         }}\n",
        sets = set_defs(set),
    )
}

fn set_defs(set: &[ProviderPrefix]) -> String {
    let mut out = String::new();
    for (v4, name, ty) in [
        (true, "providers4", "ipv4_addr"),
        (false, "providers6", "ipv6_addr"),
    ] {
        let els = elements(set, v4);
        let els = if els.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", els.join(", "))
        };
        out.push_str(&format!(
            "  set {name} {{ type {ty} . inet_service; flags interval;{els} }}\n"
        ));
    }
    out
}

/// The sets' new elements, replacing the old ones in one transaction.
fn set_update(cfg: &ApplianceConfig, set: &[ProviderPrefix]) -> String {
    let table = &cfg.table;
    let mut out = String::new();
    for (v4, name) in [(true, "providers4"), (false, "providers6")] {
        out.push_str(&format!("flush set inet {table} {name}\n"));
        let els = elements(set, v4);
        if !els.is_empty() {
            out.push_str(&format!(
                "add element inet {table} {name} {{ {} }}\n",
                els.join(", ")
            ));
        }
    }
    out
}

/// `net/len . port` (or `. 0-65535` for every port) of one family, deduplicated.
fn elements(set: &[ProviderPrefix], v4: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in set.iter().filter(|p| p.net.addr().is_ipv4() == v4) {
        // nft wants the network address: host bits cleared.
        let Ok(net) = ipnet::IpNet::new(p.net.addr(), p.net.len()).map(|n| n.trunc()) else {
            continue; // IpPrefix already refused a length beyond the address
        };
        if p.ports.is_empty() {
            out.push(format!("{net} . 0-65535"));
        }
        for port in &p.ports {
            out.push(format!("{net} . {port}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Run `nft -f -` with `script` as one transaction.
fn nft(script: &str, what: &str) -> Result<(), ApplianceError> {
    let fail = |detail: String| ApplianceError::Command {
        what: what.to_string(),
        detail,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run nft: {e} (install nftables)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| fail(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Add (`on`) or remove the policy routing for marked packets, both families.
fn routes(cfg: &ApplianceConfig, on: bool) -> Result<(), ApplianceError> {
    let mark = format!("{:#x}", cfg.mark);
    let table = cfg.route_table.to_string();
    for family in ["-4", "-6"] {
        // Remove every copy first: a crash may have left one, a rerun must not add two.
        while ip(&[family, "rule", "del", "fwmark", &mark, "lookup", &table]).is_ok() {}
        if on {
            ip(&[family, "rule", "add", "fwmark", &mark, "lookup", &table])?;
            ip(&[
                family, "route", "replace", "local", "default", "dev", "lo", "table", &table,
            ])?;
        } else {
            let _ = ip(&[family, "route", "flush", "table", &table]);
        }
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), ApplianceError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ApplianceError::Command {
            what: format!("ip {}", args.join(" ")),
            detail: format!("cannot run ip: {e} (install iproute2)"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ApplianceError::Command {
            what: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// What `sluice doctor` says of the appliance's kernel side: (check, ok, detail).
pub fn check(cfg: &ApplianceConfig) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    for path in SYSCTLS {
        let v = std::fs::read_to_string(path).unwrap_or_default();
        out.push((
            path.trim_start_matches("/proc/sys/").replace('/', "."),
            v.trim() == "1",
            if v.trim() == "1" {
                "on".into()
            } else {
                "off: Sluice turns it on at start (needs root)".into()
            },
        ));
    }
    let listed = Command::new("nft")
        .args(["list", "table", "inet", &cfg.table])
        .output();
    let (ok, detail) = match listed {
        Err(e) => (false, format!("cannot run nft: {e} (install nftables)")),
        Ok(o) if !o.status.success() => (
            false,
            format!(
                "absent ({}): `sluice run --mode appliance` installs it",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let n = text.matches(" . ").count();
            let tproxy = text.contains("tproxy ip to") && text.contains("tproxy ip6 to");
            (
                tproxy,
                format!(
                    "present, {n} provider set elements{}",
                    if tproxy {
                        ""
                    } else {
                        "; its TPROXY rules are missing"
                    }
                ),
            )
        }
    };
    out.push((format!("nftables table inet {}", cfg.table), ok, detail));
    for family in ["-4", "-6"] {
        let rules = Command::new("ip")
            .args([family, "rule", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let want = rule_text(cfg);
        let ok = rules.contains(&want);
        out.push((
            format!("ip {family} rule {want}"),
            ok,
            if ok {
                "present".into()
            } else {
                "absent: `sluice run --mode appliance` adds it".into()
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirect::parse_prefix;

    fn set() -> Vec<ProviderPrefix> {
        [
            "160.79.104.7/23",
            "2607:6bc0::/48",
            "198.19.0.2/32:443,8443",
            "198.19.0.2/32:443",
        ]
        .iter()
        .map(|p| parse_prefix(p).unwrap())
        .collect()
    }

    #[test]
    fn the_ruleset_captures_refuses_and_forwards_as_configured() {
        let cfg = ApplianceConfig::default();
        let r = ruleset(&cfg, &set());
        // Replaces an earlier table in the same transaction, whether or not one exists.
        assert!(r.starts_with("table inet sluice\ndelete table inet sluice\n"));
        // Host bits cleared, every port for a bare prefix, duplicates once.
        assert!(r.contains("160.79.104.0/23 . 0-65535"), "{r}");
        assert!(
            r.contains("198.19.0.2/32 . 443, 198.19.0.2/32 . 8443 }"),
            "{r}"
        );
        assert!(r.contains("2607:6bc0::/48 . 0-65535"), "{r}");
        assert!(r.contains("tproxy ip to 127.0.0.1:15001 meta mark set 0x534d"));
        assert!(r.contains("tproxy ip6 to [::1]:15001"));
        assert!(r.contains("udp dport @providers4 counter reject"));
        assert!(r.contains("tcp dport @providers4 counter reject with tcp reset"));
        assert!(r.contains("masquerade"));
        assert!(!r.contains("drop"));
        let drop = ApplianceConfig {
            non_provider: NonProvider::Drop,
            ..ApplianceConfig::default()
        };
        let r = ruleset(&drop, &set());
        assert!(
            r.contains("counter drop") && !r.contains("masquerade"),
            "{r}"
        );
    }

    #[test]
    fn updates_flush_and_refill_both_sets() {
        let u = set_update(&ApplianceConfig::default(), &set()[..1]);
        assert_eq!(
            u,
            "flush set inet sluice providers4\n\
             add element inet sluice providers4 { 160.79.104.0/23 . 0-65535 }\n\
             flush set inet sluice providers6\n"
        );
        assert!(same_set(&set(), &set()[..3]));
        assert!(!same_set(&set(), &set()[..2]));
    }

    #[test]
    fn bad_settings_are_named() {
        let redirect = RedirectConfig {
            enabled: true,
            mark: 0x534d,
            ..RedirectConfig::default()
        };
        let cfg = ApplianceConfig {
            port: 0,
            route_table: 254,
            table: "a b".into(),
            ..ApplianceConfig::default()
        };
        let keys: Vec<_> = cfg.problems(&redirect).into_iter().map(|p| p.0).collect();
        assert_eq!(keys, ["port", "mark", "route_table", "table"]);
        assert!(ApplianceConfig::default()
            .problems(&RedirectConfig::default())
            .is_empty());
    }
}
