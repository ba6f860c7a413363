//! Rust mirrors of the map keys and values in `bpf/redirect.h`, and the key
//! builders that must agree byte for byte with the eBPF side.
//!
//! Conventions (same as the header): an address is 16 bytes in network order,
//! IPv4 as `::ffff:a.b.c.d`; ports are network order except in
//! [`PortsValue`]. The layouts are checked against the C compiler's by the
//! tests in `maps/tests.rs`; change both sides together.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Map names in the object, in one place.
pub(crate) mod name {
    pub(crate) const PROVIDER_V4: &str = "provider_v4";
    pub(crate) const PROVIDER_V6: &str = "provider_v6";
    pub(crate) const CONFIG: &str = "config";
    pub(crate) const HEARTBEAT: &str = "heartbeat";
    pub(crate) const ORIG_BY_COOKIE: &str = "orig_by_cookie";
    pub(crate) const ORIG_BY_TUPLE: &str = "orig_by_tuple";
    pub(crate) const STATS: &str = "stats";
    pub(crate) const ALL: [&str; 7] = [
        PROVIDER_V4,
        PROVIDER_V6,
        CONFIG,
        HEARTBEAT,
        ORIG_BY_COOKIE,
        ORIG_BY_TUPLE,
        STATS,
    ];
}

/// `SLUICE_MAX_PORTS`.
pub(crate) const MAX_PORTS: usize = 8;

/// `struct sluice_ports`: ports in **host** order, 0 = unused; all 0 = any port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortsValue {
    pub(crate) ports: [u16; MAX_PORTS],
}

/// `struct sluice_target`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TargetValue {
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) enabled: u16,
}

/// `struct sluice_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigValue {
    pub(crate) host_netns_cookie: u64,
    pub(crate) heartbeat_timeout_ns: u64,
    pub(crate) proxy_cgroup_id: u64,
    pub(crate) mark: u32,
    pub(crate) on_proxy_down: u32,
    pub(crate) host_v4: TargetValue,
    pub(crate) host_v6: TargetValue,
    pub(crate) pod_v4: TargetValue,
    pub(crate) pod_v6: TargetValue,
}

/// `struct sluice_orig`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OrigValue {
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) family: u16,
    pub(crate) pid: u32,
    pub(crate) tgid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) cgroup_id: u64,
    pub(crate) netns_cookie: u64,
    pub(crate) comm: [u8; 16],
}

/// `struct sluice_tuple`: the client connection as the proxy sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct TupleKey {
    pub(crate) client_addr: [u32; 4],
    pub(crate) proxy_addr: [u32; 4],
    pub(crate) client_port: u16,
    pub(crate) proxy_port: u16,
}

// SAFETY: all of these are `#[repr(C)]`, made of integers only and have no
// implicit padding (checked against the C layout by the tests), so every bit
// pattern is valid and no uninitialised byte reaches the kernel.
unsafe impl aya::Pod for PortsValue {}
unsafe impl aya::Pod for ConfigValue {}
unsafe impl aya::Pod for OrigValue {}
unsafe impl aya::Pod for TupleKey {}

// === address conventions ===

/// The 16-byte form of an address: IPv4 becomes `::ffff:a.b.c.d`.
pub(crate) fn addr16(ip: IpAddr) -> [u32; 4] {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    // Each word keeps the octets in memory order (network order), exactly as
    // the kernel's __be32 words of user_ip6 / local_ip6.
    std::array::from_fn(|i| {
        u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    })
}

/// Inverse of [`addr16`]; v4-mapped addresses come back as IPv4.
pub(crate) fn ip_from16(words: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        octets[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Key of `orig_by_tuple` for a connection the proxy accepted: `peer` is the
/// accepted socket's peer address (the client), `local` its local address
/// (the listener). A dual-stack listener reports IPv4 clients as
/// `::ffff:a.b.c.d`; that normalises to the same key as plain IPv4.
pub(crate) fn tuple_key(peer: SocketAddr, local: SocketAddr) -> TupleKey {
    TupleKey {
        client_addr: addr16(peer.ip()),
        proxy_addr: addr16(local.ip()),
        client_port: peer.port().to_be(),
        proxy_port: local.port().to_be(),
    }
}

impl TargetValue {
    pub(crate) fn from_addr(addr: Option<SocketAddr>) -> Self {
        match addr {
            None => Self::default(),
            Some(a) => Self {
                addr: addr16(a.ip()),
                port: a.port().to_be(),
                enabled: 1,
            },
        }
    }
}

impl OrigValue {
    /// The original destination, with IPv4 unmapped.
    pub(crate) fn dst(&self) -> SocketAddr {
        let port = u16::from_be(self.port);
        match ip_from16(self.addr) {
            IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, port)),
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
        }
    }

    /// `comm` up to its first NUL (bpf_get_current_comm always terminates it).
    pub(crate) fn comm(&self) -> String {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

// === provider prefixes ===

/// LPM trie key data of a prefix, with host bits cleared so that
/// `10.0.0.1/8` and `10.0.0.0/8` are one entry (the trie keeps the bytes it
/// was given, and stale-entry removal compares them).
pub(crate) fn masked_v4(ip: Ipv4Addr, len: u8) -> [u8; 4] {
    let bits = u32::from(ip);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    (bits & mask).to_be_bytes()
}

/// See [`masked_v4`].
pub(crate) fn masked_v6(ip: Ipv6Addr, len: u8) -> [u8; 16] {
    let bits = u128::from(ip);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    (bits & mask).to_be_bytes()
}

// === stats ===

/// Slots of the per-CPU `stats` array (`SLUICE_STAT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum StatSlot {
    Redirected = 0,
    SkippedMarked = 1,
    FailOpen = 2,
    FailClosed = 3,
    QuicRefused = 4,
    GetpeernameRewritten = 5,
    NoProxyAddr = 6,
    TupleRecorded = 7,
    OriginalDstAnswered = 8,
    SkippedProxyCgroup = 9,
}

#[cfg(test)]
mod tests;
