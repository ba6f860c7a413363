//! Where an accepted connection was really going.
//!
//! A transparent proxy only sees a connection to itself; an [`OriginalDst`] source says
//! which provider address the client dialled. This module holds the trait and the
//! static source used by tests and gateways (a host → address table, plus "the accepted
//! socket's local address" for routed appliance traffic), and [`SockoptDst`], which asks
//! the kernel with `getsockopt(SO_ORIGINAL_DST)` — the answer of an iptables/nftables
//! `REDIRECT` (conntrack) on hosts without cgroup BPF, or of the probe's own
//! `cgroup/getsockopt` program. The eBPF probe's maps are another source behind the
//! same trait.
//!
//! It also holds the loop guard: a destination that is one of Sluice's own listeners is
//! never forwarded to, whatever a source says.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;

use serde::Deserialize;

use crate::providers::normalize_host;

/// Sources of original destinations, in the order they are asked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginalDstConfig {
    /// Host name → upstream address, used by tests and by gateways that resolve names
    /// themselves. Keyed by SNI (TLS) or `Host` (plain HTTP). A host listed here that is
    /// not a provider is refused unless it is listed in `passthrough:`.
    #[serde(rename = "static")]
    pub static_map: BTreeMap<String, String>,
    /// Use the accepted socket's local address as the destination when no other source
    /// knows it (appliance mode: traffic routed or steered to this host). Default: false.
    pub local_addr: bool,
    /// Ask the kernel with `getsockopt(SO_ORIGINAL_DST)`: the fallback for hosts without
    /// cgroup BPF, where an iptables/nftables `REDIRECT` rule sends provider traffic to
    /// Sluice (`sluice doctor` prints the rules). Asked first; upstream sockets then carry
    /// `redirect.mark` so a rule can exclude them. Default: false.
    pub so_original_dst: bool,
}

/// The two ends of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Accepted {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the connection was accepted on.
    pub local: SocketAddr,
}

/// The process that opened a redirected connection, as the probe saw it at connect time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// Thread id that called connect.
    pub pid: u32,
    /// Process (thread group) id.
    pub tgid: u32,
    /// User id.
    pub uid: u32,
    /// Task name (`comm`).
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup_id: u64,
}

/// Where a connection was going, and who opened it when a source knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The address the client dialled.
    pub addr: SocketAddr,
    /// The connecting process, from the eBPF probe.
    pub attribution: Option<Attribution>,
}

impl Destination {
    /// A destination with no attribution.
    pub fn addr(addr: SocketAddr) -> Destination {
        Destination {
            addr,
            attribution: None,
        }
    }
}

/// A source of original destinations.
pub trait OriginalDst: Send + Sync {
    /// The destination the client meant for `conn`. `host` is the SNI (TLS) or `Host`
    /// header (plain HTTP) when the connection carried one.
    fn lookup(&self, conn: &Accepted, host: Option<&str>) -> Option<Destination>;

    /// The same, with the accepted socket at hand: sources that ask the kernel about the
    /// socket itself answer here; the others answer from [`OriginalDst::lookup`].
    fn lookup_socket(
        &self,
        _socket: BorrowedFd<'_>,
        conn: &Accepted,
        host: Option<&str>,
    ) -> Option<Destination> {
        self.lookup(conn, host)
    }
}

/// Sources asked in order; the first that knows wins.
pub struct Chain(pub Vec<Box<dyn OriginalDst>>);

impl OriginalDst for Chain {
    fn lookup(&self, conn: &Accepted, host: Option<&str>) -> Option<Destination> {
        self.0.iter().find_map(|s| s.lookup(conn, host))
    }

    fn lookup_socket(
        &self,
        socket: BorrowedFd<'_>,
        conn: &Accepted,
        host: Option<&str>,
    ) -> Option<Destination> {
        self.0
            .iter()
            .find_map(|s| s.lookup_socket(socket, conn, host))
    }
}

/// `getsockopt(SO_ORIGINAL_DST)` (`IP6T_SO_ORIGINAL_DST` for IPv6) on the accepted socket:
/// where a connection was going before an iptables/nftables `REDIRECT` (or the probe's
/// `cgroup/getsockopt` program) sent it here. A connection that was not redirected has no
/// answer (or the listener's own address, which is no answer either).
#[derive(Debug, Default)]
pub struct SockoptDst;

impl OriginalDst for SockoptDst {
    fn lookup(&self, _conn: &Accepted, _host: Option<&str>) -> Option<Destination> {
        None
    }

    fn lookup_socket(
        &self,
        socket: BorrowedFd<'_>,
        conn: &Accepted,
        _host: Option<&str>,
    ) -> Option<Destination> {
        use nix::sys::socket::{getsockopt, sockopt};
        let addr = match conn.local {
            SocketAddr::V4(_) => getsockopt(&socket, sockopt::OriginalDst).ok().map(|a| {
                SocketAddr::from((
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))
            }),
            SocketAddr::V6(_) => getsockopt(&socket, sockopt::Ip6tOriginalDst).ok().map(|a| {
                SocketAddr::from((
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                ))
            }),
        }?;
        (addr != conn.local).then(|| Destination::addr(addr))
    }
}

/// Static table plus, optionally, the accepted socket's local address.
#[derive(Debug, Default)]
pub struct StaticDst {
    by_host: HashMap<String, SocketAddr>,
    local_addr: bool,
}

impl StaticDst {
    /// Build from the (already validated) config section.
    pub fn from_config(c: &OriginalDstConfig) -> StaticDst {
        StaticDst {
            by_host: c
                .static_map
                .iter()
                .filter_map(|(h, a)| Some((normalize_host(h), a.parse().ok()?)))
                .collect(),
            local_addr: c.local_addr,
        }
    }
}

impl OriginalDst for StaticDst {
    fn lookup(&self, conn: &Accepted, host: Option<&str>) -> Option<Destination> {
        if let Some(addr) = host.and_then(|h| self.by_host.get(&normalize_host(h))) {
            return Some(Destination::addr(*addr));
        }
        self.local_addr.then(|| Destination::addr(conn.local))
    }
}

/// Refuses destinations that would loop back into Sluice.
#[derive(Debug, Clone)]
pub struct LoopGuard {
    listeners: Vec<SocketAddr>,
}

impl LoopGuard {
    /// Guard against the given listener addresses.
    pub fn new(listeners: Vec<SocketAddr>) -> LoopGuard {
        LoopGuard { listeners }
    }

    /// Whether forwarding to `dst` could reach one of our own listeners. A connection
    /// accepted on the address it names as its destination is one to ourselves — unless it
    /// came through a `transparent` listener, where that address is the client's real
    /// destination (TPROXY keeps it on the accepted socket).
    pub fn is_self(&self, dst: SocketAddr, accepted_on: SocketAddr, transparent: bool) -> bool {
        if dst == accepted_on && !transparent {
            return true;
        }
        self.listeners.iter().any(|l| {
            l.port() == dst.port()
                && (l.ip() == dst.ip()
                    || (l.ip().is_unspecified()
                        && (dst.ip().is_loopback() || dst.ip() == accepted_on.ip()))
                    || (dst.ip().is_unspecified()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> Accepted {
        Accepted {
            peer: "198.18.0.2:40000".parse().unwrap(),
            local: "198.18.0.1:443".parse().unwrap(),
        }
    }

    #[test]
    fn static_table_is_keyed_by_normalized_host() {
        let mut c = OriginalDstConfig::default();
        c.static_map
            .insert("api.openai.com".into(), "198.19.0.2:443".into());
        let s = StaticDst::from_config(&c);
        let want = Some(Destination::addr("198.19.0.2:443".parse().unwrap()));
        assert_eq!(s.lookup(&accepted(), Some("API.OpenAI.com.")), want);
        assert_eq!(s.lookup(&accepted(), Some("api.openai.com:443")), want);
        assert_eq!(s.lookup(&accepted(), Some("example.com")), None);
        assert_eq!(s.lookup(&accepted(), None), None);
    }

    #[test]
    fn local_addr_mode_falls_back_to_the_accepted_address() {
        let c = OriginalDstConfig {
            local_addr: true,
            ..Default::default()
        };
        let s = StaticDst::from_config(&c);
        assert_eq!(
            s.lookup(&accepted(), Some("x")),
            Some(Destination::addr(accepted().local))
        );
    }

    #[test]
    fn loop_guard() {
        let g = LoopGuard::new(vec!["0.0.0.0:15443".parse().unwrap()]);
        let on: SocketAddr = "10.0.0.5:15443".parse().unwrap();
        assert!(g.is_self(on, on, false));
        assert!(g.is_self("127.0.0.1:15443".parse().unwrap(), on, false));
        assert!(g.is_self("10.0.0.5:15443".parse().unwrap(), on, false));
        assert!(!g.is_self("198.19.0.2:443".parse().unwrap(), on, false));
        assert!(!g.is_self("127.0.0.1:443".parse().unwrap(), on, false));
        // Captured by TPROXY: accepted on the provider's address, which is the destination;
        // but a direct connection to the transparent listener itself is still a loop.
        let provider: SocketAddr = "198.19.0.2:443".parse().unwrap();
        assert!(!g.is_self(provider, provider, true));
        let capture = LoopGuard::new(vec!["127.0.0.1:15001".parse().unwrap()]);
        let direct: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        assert!(capture.is_self(direct, direct, true));
    }
}
