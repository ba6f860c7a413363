//! The eBPF transparent redirect, as the proxy runs it: loading and attaching the probe,
//! keeping its provider address set fresh, beating its heartbeat, and answering
//! "where was this connection going, and who opened it" for each accepted socket.
//!
//! Provider host names are resolved on a dedicated thread (never on the request path)
//! every `refresh_secs`; an address that stops resolving is kept for `grace_secs`, so
//! flows that started on it keep being captured. Static prefixes from config (e.g.
//! Anthropic's published ranges) are always included. The system resolver gives no TTLs,
//! so the refresh interval bounds how stale the set can be.
//!
//! A clean shutdown detaches (connections go direct again) unless `on_stop: keep`, as
//! the Kubernetes chart sets it: a rolling update's SIGTERM must not open an unaudited
//! window, so the pinned programs stay and follow `on_proxy_down` until the new pod takes
//! them over. A crash leaves them in place likewise; the heartbeat then goes stale and
//! the probe follows `on_proxy_down`. The next start replaces the pinned links without a
//! gap.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use sluice_probe::{IpPrefix, Probe, ProbeConfig, ProviderPrefix, ProxyDownPolicy};

use crate::metrics;
use crate::original_dst::{Accepted, Attribution, Destination, OriginalDst};

/// Redirect settings (`redirect:` in the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Attach the eBPF probe. Needs root (CAP_BPF, CAP_NET_ADMIN) and cgroup v2;
    /// `sluice doctor` says what is missing. Default: false.
    pub enabled: bool,
    /// cgroup v2 directory whose processes (and descendants) are redirected.
    /// Default: the root of the unified hierarchy (every process on the host).
    pub cgroup: Option<PathBuf>,
    /// Address reachable from other network namespaces (pods) where the proxy also
    /// listens, e.g. the node IP or a link-local address on a dummy interface.
    /// Default: none (pods are not redirected).
    pub pod_facing_v4: Option<SocketAddrV4>,
    /// The same for IPv6 destinations. Default: none.
    pub pod_facing_v6: Option<SocketAddrV6>,
    /// SO_MARK the proxy puts on its upstream sockets; marked sockets are never
    /// redirected. Default: 0x534c.
    pub mark: u32,
    /// While the proxy's heartbeat is stale: `fail_open` (connections go direct,
    /// unaudited, counted) or `fail_closed` (connect is refused). Default: fail_open.
    pub on_proxy_down: ProxyDown,
    /// Heartbeat age after which the proxy counts as down, milliseconds. Default: 5000.
    pub heartbeat_timeout_ms: u64,
    /// bpffs directory where links and maps are pinned so a restart keeps the redirect;
    /// `null` disables pinning. Default: /sys/fs/bpf/sluice.
    pub pin_dir: Option<PathBuf>,
    /// Static prefixes always redirected, `CIDR` or `CIDR:port,port`. Default: Anthropic's
    /// published inbound ranges.
    pub prefixes: Vec<String>,
    /// Ports redirected for resolved provider addresses. Default: [443].
    pub ports: Vec<u16>,
    /// Provider host resolution interval, seconds. Default: 30.
    pub refresh_secs: u64,
    /// What a clean stop (SIGINT, SIGTERM) does: `detach` (connections go direct again)
    /// or `keep` (the pinned programs stay and follow `on_proxy_down` until the next
    /// start takes them over: restarts and upgrades leave no unaudited window; needs
    /// `pin_dir`). Default: detach.
    pub on_stop: OnStop,
    /// How long an address is kept after it stops resolving, seconds. Default: 600.
    pub grace_secs: u64,
}

/// What a clean stop does to the redirect.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStop {
    /// Detach and unpin: connections go direct again.
    #[default]
    Detach,
    /// Leave the pinned programs attached for the next start.
    Keep,
}

/// Proxy-down policy as written in config.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyDown {
    /// Connections go direct.
    #[default]
    FailOpen,
    /// Connections are refused.
    FailClosed,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            enabled: false,
            cgroup: None,
            pod_facing_v4: None,
            pod_facing_v6: None,
            mark: 0x534c,
            on_proxy_down: ProxyDown::FailOpen,
            heartbeat_timeout_ms: 5000,
            pin_dir: Some(PathBuf::from("/sys/fs/bpf/sluice")),
            prefixes: vec!["160.79.104.0/23".into(), "2607:6bc0::/48".into()],
            ports: vec![443],
            refresh_secs: 30,
            grace_secs: 600,
            on_stop: OnStop::Detach,
        }
    }
}

/// Errors from the redirect layer.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// A prefix in config does not parse.
    #[error("redirect.prefixes: {0:?} is not CIDR[:port,…] (e.g. \"160.79.104.0/23\" or \"10.0.0.0/8:443,8443\")")]
    Prefix(String),
    /// No listener the probe can send host connections to.
    #[error("redirect needs an IPv4 `listen` address to send connections to; add one (e.g. \"127.0.0.1:15443\")")]
    NoTarget,
    /// The probe failed.
    #[error("eBPF probe: {0} (run `sluice doctor` to see what this host lacks)")]
    Probe(#[from] sluice_probe::ProbeError),
}

/// Parse `CIDR` or `CIDR:port,port`.
pub fn parse_prefix(s: &str) -> Result<ProviderPrefix, RedirectError> {
    let bad = || RedirectError::Prefix(s.to_string());
    // The port list follows the last ':' only when a '/' precedes it (IPv6 has colons).
    let (net, ports) = match s.rfind(':') {
        Some(i) if s[..i].contains('/') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    };
    let (addr, len) = net.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let ports = match ports {
        Some(list) => list
            .split(',')
            .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?,
        None => Vec::new(),
    };
    Ok(ProviderPrefix {
        net: IpPrefix::new(addr, len).map_err(|_| bad())?,
        ports,
    })
}

/// The running redirect: the probe and its maintenance thread.
pub struct Redirect {
    probe: Arc<Mutex<Option<Probe>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `on_stop: keep` with a pin directory.
    keep_on_stop: bool,
}

impl Redirect {
    /// Load and attach the probe, set the provider prefixes and start the maintenance
    /// thread (heartbeat, resolution, stats).
    ///
    /// # Errors
    /// [`RedirectError`] with what to fix.
    pub fn start(
        cfg: &RedirectConfig,
        listen: &[SocketAddr],
        provider_hosts: Vec<String>,
    ) -> Result<Redirect, RedirectError> {
        let statics = cfg
            .prefixes
            .iter()
            .map(|p| parse_prefix(p))
            .collect::<Result<Vec<_>, _>>()?;
        let target = |want_v4: bool| {
            listen.iter().find(|a| a.is_ipv4() == want_v4).map(|a| {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(if want_v4 {
                        IpAddr::from([127, 0, 0, 1])
                    } else {
                        IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                    });
                }
                a
            })
        };
        let Some(SocketAddr::V4(proxy_v4)) = target(true) else {
            return Err(RedirectError::NoTarget);
        };
        let proxy_v6 = match target(false) {
            Some(SocketAddr::V6(a)) => Some(a),
            _ => None,
        };
        let mut probe = Probe::load(&ProbeConfig {
            proxy_v4,
            proxy_v6,
            pod_facing_v4: cfg.pod_facing_v4,
            pod_facing_v6: cfg.pod_facing_v6,
            mark: cfg.mark,
            on_proxy_down: match cfg.on_proxy_down {
                ProxyDown::FailOpen => ProxyDownPolicy::FailOpen,
                ProxyDown::FailClosed => ProxyDownPolicy::FailClosed,
            },
            heartbeat_timeout: Duration::from_millis(cfg.heartbeat_timeout_ms),
            pin_dir: cfg.pin_dir.clone(),
        })?;
        let mut resolver = Resolver::new(provider_hosts, cfg.ports.clone(), cfg.grace_secs);
        let mut prefixes = statics.clone();
        prefixes.extend(resolver.refresh());
        probe.set_providers(&prefixes)?;
        let cgroup = match &cfg.cgroup {
            Some(c) => c.clone(),
            None => sluice_probe::unified_cgroup_root()?,
        };
        probe.attach(&cgroup)?;
        tracing::info!(cgroup = %cgroup.display(), prefixes = prefixes.len(), on_proxy_down = ?cfg.on_proxy_down, "eBPF redirect attached");

        let probe = Arc::new(Mutex::new(Some(probe)));
        let stop = Arc::new(AtomicBool::new(false));
        let beat = Duration::from_millis((cfg.heartbeat_timeout_ms / 4).clamp(100, 1000));
        let refresh = Duration::from_secs(cfg.refresh_secs.max(1));
        let thread = {
            let probe = probe.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("sluice-redirect".into())
                .spawn(move || maintain(probe, stop, resolver, statics, beat, refresh))
                .map_err(|e| {
                    RedirectError::Probe(sluice_probe::ProbeError::Sys {
                        what: "spawning the redirect thread",
                        source: e,
                    })
                })?
        };
        if cfg.on_stop == OnStop::Keep && cfg.pin_dir.is_none() {
            tracing::warn!(
                "redirect.on_stop: keep needs redirect.pin_dir; a clean stop will detach"
            );
        }
        Ok(Redirect {
            probe,
            stop,
            thread: Some(thread),
            keep_on_stop: cfg.on_stop == OnStop::Keep && cfg.pin_dir.is_some(),
        })
    }

    /// The original-destination source backed by the probe's maps.
    pub fn source(&self) -> ProbeDst {
        ProbeDst {
            probe: self.probe.clone(),
        }
    }

    /// Stop maintenance and detach (connections go direct again), or with `on_stop: keep`
    /// leave the pinned programs to follow `on_proxy_down` until the next start.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(probe) = self.probe.lock().take() {
            if self.keep_on_stop {
                // Dropping a pinned probe closes our fds only; the links stay.
                drop(probe);
                tracing::info!(
                    "eBPF redirect kept attached (on_stop: keep): the next start takes it over"
                );
                return;
            }
            match probe.detach() {
                Ok(()) => tracing::info!("eBPF redirect detached"),
                Err(e) => tracing::error!(error = %e, "detaching the eBPF redirect failed"),
            }
        }
    }
}

/// Heartbeat, provider refresh and stats export until `stop`.
fn maintain(
    probe: Arc<Mutex<Option<Probe>>>,
    stop: Arc<AtomicBool>,
    mut resolver: Resolver,
    statics: Vec<ProviderPrefix>,
    beat: Duration,
    refresh: Duration,
) {
    let mut last_refresh = Instant::now();
    let mut seen = sluice_probe::Stats::default();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(beat);
        let due = last_refresh.elapsed() >= refresh;
        // Resolve without holding the probe lock: DNS may be slow.
        let fresh = due.then(|| resolver.refresh());
        let mut guard = probe.lock();
        let Some(p) = guard.as_mut() else { return };
        if let Err(e) = p.heartbeat() {
            tracing::error!(error = %e, "redirect heartbeat failed");
        }
        if let Some(fresh) = fresh {
            last_refresh = Instant::now();
            let mut all = statics.clone();
            all.extend(fresh);
            if let Err(e) = p.set_providers(&all) {
                tracing::error!(error = %e, "updating provider prefixes failed");
            }
        }
        let now = p.stats();
        drop(guard);
        export_stats(&seen, &now);
        seen = now;
    }
}

fn export_stats(before: &sluice_probe::Stats, now: &sluice_probe::Stats) {
    let pairs = [
        ("redirected", before.redirected, now.redirected),
        ("skipped_marked", before.skipped_marked, now.skipped_marked),
        ("fail_open", before.fail_open, now.fail_open),
        ("fail_closed", before.fail_closed, now.fail_closed),
        ("quic_refused", before.quic_refused, now.quic_refused),
        ("no_proxy_addr", before.no_proxy_addr, now.no_proxy_addr),
    ];
    // Every event's series exists from the first export, at zero until it happens: a
    // dashboard or an alert on `fail_open` then reads 0 rather than "no data".
    for (name, a, b) in pairs {
        metrics::REDIRECT_EVENTS
            .with_label_values(&[name])
            .inc_by(b.saturating_sub(a));
    }
}

/// Resolves provider hosts, remembering each address until `grace` after it was last seen.
/// The node probe and the appliance keep their provider sets with it.
pub(crate) struct Resolver {
    hosts: Vec<String>,
    ports: Vec<u16>,
    grace: Duration,
    seen: HashMap<IpAddr, Instant>,
}

impl Resolver {
    pub(crate) fn new(hosts: Vec<String>, ports: Vec<u16>, grace_secs: u64) -> Resolver {
        Resolver {
            hosts,
            ports,
            grace: Duration::from_secs(grace_secs),
            seen: HashMap::new(),
        }
    }

    /// Resolve every host now; the addresses seen within the grace period, as prefixes.
    pub(crate) fn refresh(&mut self) -> Vec<ProviderPrefix> {
        let now = Instant::now();
        for host in &self.hosts {
            match (host.as_str(), 443).to_socket_addrs() {
                Ok(addrs) => {
                    for a in addrs {
                        self.seen.insert(a.ip(), now);
                    }
                }
                Err(e) => tracing::debug!(host, error = %e, "provider host does not resolve"),
            }
        }
        self.seen
            .retain(|_, t| now.duration_since(*t) <= self.grace);
        self.seen
            .keys()
            .filter_map(|ip| {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                Some(ProviderPrefix {
                    net: IpPrefix::new(*ip, len).ok()?,
                    ports: self.ports.clone(),
                })
            })
            .collect()
    }
}

/// Original destinations from the probe's 4-tuple map.
pub struct ProbeDst {
    probe: Arc<Mutex<Option<Probe>>>,
}

impl OriginalDst for ProbeDst {
    fn lookup(&self, conn: &Accepted, _host: Option<&str>) -> Option<Destination> {
        let guard = self.probe.lock();
        let o = guard.as_ref()?.original(conn.peer, conn.local)?;
        Some(Destination {
            addr: o.dst,
            attribution: Some(Attribution {
                pid: o.pid,
                tgid: o.tgid,
                uid: o.uid,
                comm: o.comm,
                cgroup_id: o.cgroup_id,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_with_and_without_ports() {
        let p = parse_prefix("160.79.104.0/23").unwrap();
        assert_eq!(p.net.to_string(), "160.79.104.0/23");
        assert!(p.ports.is_empty());
        let p = parse_prefix("2607:6bc0::/48:443,8443").unwrap();
        assert_eq!(p.ports, vec![443, 8443]);
        assert_eq!(p.net.len(), 48);
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/8:0",
            "10.0.0.0/8:http",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolver_keeps_addresses_for_the_grace_period() {
        let mut r = Resolver::new(vec!["localhost".into()], vec![443], 600);
        let first = r.refresh();
        assert!(first.iter().any(|p| p.net.addr().is_loopback()));
        r.hosts.clear();
        assert_eq!(
            r.refresh().len(),
            first.len(),
            "kept within the grace period"
        );
        r.grace = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(5));
        assert!(r.refresh().is_empty());
    }
}
