//! Sluice's eBPF redirect probe: cgroup programs that send TCP connections
//! bound for LLM provider prefixes to the local Sluice proxy, and tell the
//! proxy where each one was going and who opened it.
//!
//! The programs are C (`bpf/redirect.bpf.c`), built by this crate's build
//! script with clang and embedded in the library; this crate loads them with
//! aya, attaches them to a cgroup v2 directory and manages their maps.
//!
//! ```text
//! connect4/6      dst in provider trie? record original dst + pid/uid/comm/cgroup
//!                 by socket cookie, rewrite dst to the proxy
//! sockops         on ACTIVE_ESTABLISHED re-key the record by the client 4-tuple
//! getpeername4/6  the client still sees the provider's address
//! sendmsg4/6      UDP/443 to providers refused, so QUIC falls back to TCP
//! getsockopt      SO_ORIGINAL_DST answered for the proxy's accepted sockets
//! ```
//!
//! What it is not: it does not redirect traffic routed through the host
//! (appliance mode needs sk_lookup/TC), existing connections, or processes
//! outside the attached cgroup; privileged workloads can detach it.
//!
//! The proxy looks up an accepted connection with [`Probe::original`] (or
//! asks `getsockopt(SO_ORIGINAL_DST)` once [`Probe::attach_getsockopt`] ran).

mod cgroup;
mod doctor;
mod loader;
mod maps;
mod sys;

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use cgroup::{cgroup_id, unified_cgroup_root};
pub use doctor::{doctor, mount_bpffs, Check};
pub use loader::Probe;

/// How the probe treats provider-bound connections while the proxy's
/// heartbeat is stale (the proxy is down or hung).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyDownPolicy {
    /// Let connections go directly to the provider, unaudited (counted in
    /// [`Stats::fail_open`]).
    #[default]
    FailOpen,
    /// Refuse them: `connect()` fails with `EPERM` (counted in
    /// [`Stats::fail_closed`]).
    FailClosed,
}

/// Where the probe sends redirected connections and how it behaves.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Proxy listener for callers in the host netns (e.g. `127.0.0.1:15001`).
    pub proxy_v4: SocketAddrV4,
    /// Proxy listener for IPv6 destinations from the host netns; `None` leaves
    /// IPv6 provider connections untouched (counted as `no_proxy_addr`).
    pub proxy_v6: Option<SocketAddrV6>,
    /// Node-local address reachable from pods (other netns) for IPv4, e.g. a
    /// link-local IP on a dummy interface; `None` leaves pods untouched.
    pub pod_facing_v4: Option<SocketAddrV4>,
    /// Same as `pod_facing_v4` for native IPv6 destinations.
    pub pod_facing_v6: Option<SocketAddrV6>,
    /// SO_MARK the proxy puts on its upstream sockets; they are never
    /// redirected. 0 disables the check (then rely on the proxy's cgroup).
    pub mark: u32,
    /// What to do while the heartbeat is stale.
    pub on_proxy_down: ProxyDownPolicy,
    /// Max age of the last [`Probe::heartbeat`]; zero disables the check.
    pub heartbeat_timeout: Duration,
    /// bpffs directory (e.g. `/sys/fs/bpf/sluice`) to pin links and maps in,
    /// so the redirect outlives the process (with `FailClosed`, a dead proxy
    /// then refuses connections). `None`: everything detaches on drop.
    pub pin_dir: Option<PathBuf>,
}

/// An IP prefix such as `160.79.104.0/23`; host bits are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// A prefix of `len` bits of `addr`.
    ///
    /// # Errors
    /// [`ProbeError::InvalidPrefix`] if `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, ProbeError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(ProbeError::InvalidPrefix {
                prefix: format!("{addr}/{len}"),
                reason: "prefix length longer than the address",
            });
        }
        Ok(Self { addr, len })
    }

    /// The address as given (host bits included).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for `/0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromStr for IpPrefix {
    type Err = ProbeError;

    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (full length).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| ProbeError::InvalidPrefix {
            prefix: s.to_owned(),
            reason,
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid("not an IP address"))?;
        let len = match len {
            Some(l) => l
                .parse()
                .map_err(|_| invalid("prefix length is not a number"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, len)
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A provider prefix and the TCP ports redirected for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderPrefix {
    /// The provider's addresses. A v4-mapped IPv6 prefix (`::ffff:0:0/96` or
    /// longer) is stored as the IPv4 prefix it denotes.
    pub net: IpPrefix,
    /// At most 8 ports; empty means every port. UDP/443 to the prefix is
    /// refused (QUIC) whatever the ports.
    pub ports: Vec<u16>,
}

/// The original destination and attribution of a redirected connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Original {
    /// Where the client was connecting (IPv4 unmapped).
    pub dst: SocketAddr,
    /// Thread id of the connecting thread.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// Real uid of the process.
    pub uid: u32,
    /// Command name of the connecting thread (`/proc/<pid>/task/<tid>/comm`).
    pub comm: String,
    /// cgroup v2 id of the process (inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Netns cookie of the socket (`SO_NETNS_COOKIE`); differs from the
    /// host's for pods.
    pub netns_cookie: u64,
}

/// Counters summed over all CPUs since the programs were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections rewritten to the proxy.
    pub redirected: u64,
    /// Provider connections left alone because they carry the proxy's mark.
    pub skipped_marked: u64,
    /// Provider connections from the proxy's own cgroup, left alone.
    pub skipped_proxy_cgroup: u64,
    /// Provider connections sent direct because the heartbeat was stale.
    pub fail_open: u64,
    /// Provider connections refused because the heartbeat was stale.
    pub fail_closed: u64,
    /// UDP/443 sends or connects to providers refused.
    pub quic_refused: u64,
    /// getpeername() answers rewritten to the original destination.
    pub getpeername_rewritten: u64,
    /// Provider connections left alone: no proxy address for that family and
    /// netns (see [`ProbeConfig::proxy_v6`], [`ProbeConfig::pod_facing_v4`]).
    pub no_proxy_addr: u64,
    /// Established redirected connections re-keyed by their 4-tuple.
    pub tuple_recorded: u64,
    /// SO_ORIGINAL_DST answers given by the getsockopt program.
    pub original_dst_answered: u64,
}

impl Stats {
    /// The sum of two sets of counters.
    #[must_use]
    pub fn plus(&self, other: &Stats) -> Stats {
        Stats {
            redirected: self.redirected + other.redirected,
            skipped_marked: self.skipped_marked + other.skipped_marked,
            skipped_proxy_cgroup: self.skipped_proxy_cgroup + other.skipped_proxy_cgroup,
            fail_open: self.fail_open + other.fail_open,
            fail_closed: self.fail_closed + other.fail_closed,
            quic_refused: self.quic_refused + other.quic_refused,
            getpeername_rewritten: self.getpeername_rewritten + other.getpeername_rewritten,
            no_proxy_addr: self.no_proxy_addr + other.no_proxy_addr,
            tuple_recorded: self.tuple_recorded + other.tuple_recorded,
            original_dst_answered: self.original_dst_answered + other.original_dst_answered,
        }
    }
}

/// Errors of loading, attaching and operating the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The embedded object could not be parsed or its maps created.
    #[error("loading the eBPF object failed: {0}; run `sluice doctor` (root or CAP_BPF+CAP_NET_ADMIN, kernel >= 6.1)")]
    Object(#[from] aya::EbpfError),
    /// The verifier or the kernel rejected a program.
    #[error("loading eBPF program `{program}` failed: {source}")]
    Program {
        /// Function name in redirect.bpf.c.
        program: &'static str,
        /// aya's error, with the verifier log when there is one.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("eBPF map `{map}`: {source}")]
    Map {
        /// Map name in redirect.bpf.c.
        map: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The object lacks a program or map this crate expects (build mismatch).
    #[error("the eBPF object has no {0}; rebuild sluice-probe")]
    Missing(String),
    /// Attaching a program to a cgroup failed.
    #[error("attaching `{program}` to cgroup {} failed: {source}; the path must be a cgroup v2 directory and attaching needs CAP_BPF+CAP_NET_ADMIN", cgroup.display())]
    Attach {
        /// Function name in redirect.bpf.c.
        program: &'static str,
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The bpf(BPF_LINK_CREATE) error.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup path could not be used.
    #[error("cgroup {}: {source}", path.display())]
    Cgroup {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup2 mount found in /proc/self/mountinfo; mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    /// Pinning or unpinning under the bpffs directory failed.
    #[error("pinning under {}: {source}; the directory must be on bpffs (`mount -t bpf bpf /sys/fs/bpf`)", path.display())]
    Pin {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A provider prefix is malformed.
    #[error("invalid provider prefix `{prefix}`: {reason}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A system call needed for the configuration failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done, and the kernel requirement if any.
        what: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}
