//! Layout of the shared structs and byte order of the key builders.

use super::*;
use std::mem::{offset_of, size_of};

include!(concat!(env!("OUT_DIR"), "/layout.rs"));

/// The Rust side of `C_LAYOUT`, entry for entry, named the same way.
fn rust_layout() -> Vec<(&'static str, usize)> {
    vec![
        (
            "sizeof(struct sluice_lpm_v4)",
            size_of::<aya::maps::lpm_trie::Key<[u8; 4]>>(),
        ),
        ("offsetof(struct sluice_lpm_v4, addr)", 4),
        (
            "sizeof(struct sluice_lpm_v6)",
            size_of::<aya::maps::lpm_trie::Key<[u8; 16]>>(),
        ),
        ("offsetof(struct sluice_lpm_v6, addr)", 4),
        ("sizeof(struct sluice_ports)", size_of::<PortsValue>()),
        ("sizeof(struct sluice_target)", size_of::<TargetValue>()),
        (
            "offsetof(struct sluice_target, port)",
            offset_of!(TargetValue, port),
        ),
        (
            "offsetof(struct sluice_target, enabled)",
            offset_of!(TargetValue, enabled),
        ),
        ("sizeof(struct sluice_config)", size_of::<ConfigValue>()),
        (
            "offsetof(struct sluice_config, heartbeat_timeout_ns)",
            offset_of!(ConfigValue, heartbeat_timeout_ns),
        ),
        (
            "offsetof(struct sluice_config, proxy_cgroup_id)",
            offset_of!(ConfigValue, proxy_cgroup_id),
        ),
        (
            "offsetof(struct sluice_config, mark)",
            offset_of!(ConfigValue, mark),
        ),
        (
            "offsetof(struct sluice_config, on_proxy_down)",
            offset_of!(ConfigValue, on_proxy_down),
        ),
        (
            "offsetof(struct sluice_config, host_v4)",
            offset_of!(ConfigValue, host_v4),
        ),
        (
            "offsetof(struct sluice_config, host_v6)",
            offset_of!(ConfigValue, host_v6),
        ),
        (
            "offsetof(struct sluice_config, pod_v4)",
            offset_of!(ConfigValue, pod_v4),
        ),
        (
            "offsetof(struct sluice_config, pod_v6)",
            offset_of!(ConfigValue, pod_v6),
        ),
        ("sizeof(struct sluice_orig)", size_of::<OrigValue>()),
        (
            "offsetof(struct sluice_orig, port)",
            offset_of!(OrigValue, port),
        ),
        (
            "offsetof(struct sluice_orig, family)",
            offset_of!(OrigValue, family),
        ),
        (
            "offsetof(struct sluice_orig, pid)",
            offset_of!(OrigValue, pid),
        ),
        (
            "offsetof(struct sluice_orig, tgid)",
            offset_of!(OrigValue, tgid),
        ),
        (
            "offsetof(struct sluice_orig, uid)",
            offset_of!(OrigValue, uid),
        ),
        (
            "offsetof(struct sluice_orig, gid)",
            offset_of!(OrigValue, gid),
        ),
        (
            "offsetof(struct sluice_orig, cgroup_id)",
            offset_of!(OrigValue, cgroup_id),
        ),
        (
            "offsetof(struct sluice_orig, netns_cookie)",
            offset_of!(OrigValue, netns_cookie),
        ),
        (
            "offsetof(struct sluice_orig, comm)",
            offset_of!(OrigValue, comm),
        ),
        ("sizeof(struct sluice_tuple)", size_of::<TupleKey>()),
        (
            "offsetof(struct sluice_tuple, proxy_addr)",
            offset_of!(TupleKey, proxy_addr),
        ),
        (
            "offsetof(struct sluice_tuple, client_port)",
            offset_of!(TupleKey, client_port),
        ),
        (
            "offsetof(struct sluice_tuple, proxy_port)",
            offset_of!(TupleKey, proxy_port),
        ),
    ]
}

#[test]
fn rust_mirrors_match_c_layout() {
    // Compared as whole lists so a field added on one side only shows up as
    // a missing or extra row, not just as a size mismatch.
    assert_eq!(rust_layout(), C_LAYOUT.to_vec());
    assert_eq!(StatSlot::SkippedProxyCgroup as usize + 1, C_STAT_MAX);
}

#[test]
fn addr16_maps_ipv4_and_keeps_network_order_in_memory() {
    let words = addr16("198.18.0.1".parse().unwrap());
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    assert_eq!(
        bytes,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1]
    );
    assert_eq!(ip_from16(words), "198.18.0.1".parse::<IpAddr>().unwrap());

    let v6: IpAddr = "2001:2::1".parse().unwrap();
    let bytes: Vec<u8> = addr16(v6).iter().flat_map(|w| w.to_ne_bytes()).collect();
    assert_eq!(bytes[..4], [0x20, 0x01, 0x00, 0x02]);
    assert_eq!(ip_from16(addr16(v6)), v6);
}

#[test]
fn tuple_key_ports_are_network_order() {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:15001".parse().unwrap();
    let k = tuple_key(peer, local);
    // 40000 = 0x9c40: the first byte in memory is the high byte, as in a
    // __be16 read from bpf_sock.dst_port or sock_ops remote_port >> 16.
    assert_eq!(k.client_port.to_ne_bytes(), [0x9c, 0x40]);
    assert_eq!(k.proxy_port.to_ne_bytes(), 15001u16.to_be_bytes());
}

#[test]
fn tuple_key_from_dual_stack_listener_equals_ipv4() {
    // A listener on [::] reports an IPv4 client as ::ffff:a.b.c.d.
    let v4 = tuple_key(
        "10.1.2.3:5000".parse().unwrap(),
        "169.254.20.11:15001".parse().unwrap(),
    );
    let mapped = tuple_key(
        "[::ffff:10.1.2.3]:5000".parse().unwrap(),
        "[::ffff:169.254.20.11]:15001".parse().unwrap(),
    );
    assert_eq!(v4, mapped);
}

/// What sockops builds on the client side: `local_port` host order,
/// `remote_port` a __be16 in the upper half of a u32 (little-endian ctx
/// rewrite). Mirrors `tuple_from_sock_ops` in redirect.bpf.c.
#[cfg(target_endian = "little")]
#[test]
fn sock_ops_key_equals_accepted_socket_key() {
    let client: SocketAddrV4 = "127.0.0.1:40000".parse().unwrap();
    let proxy: SocketAddrV4 = "127.0.0.1:15001".parse().unwrap();
    let local_port: u32 = u32::from(client.port());
    let remote_port: u32 = u32::from(proxy.port().to_be()) << 16;
    let from_sock_ops = TupleKey {
        client_addr: addr16(IpAddr::V4(*client.ip())),
        proxy_addr: addr16(IpAddr::V4(*proxy.ip())),
        client_port: (local_port as u16).to_be(),
        proxy_port: (remote_port >> 16) as u16,
    };
    // The proxy accepted the connection: peer = client, local = proxy.
    assert_eq!(from_sock_ops, tuple_key(client.into(), proxy.into()));
}

/// What cgroup/getsockopt builds from the accepted socket's bpf_sock:
/// `src_port` host order, `dst_port` network order.
#[test]
fn bpf_sock_key_equals_accepted_socket_key() {
    let client: SocketAddr = "[2001:2::10]:40000".parse().unwrap();
    let proxy: SocketAddr = "[::1]:15001".parse().unwrap();
    let src_port: u32 = u32::from(proxy.port());
    let dst_port: u16 = client.port().to_be();
    let from_bpf_sock = TupleKey {
        client_addr: addr16(client.ip()),
        proxy_addr: addr16(proxy.ip()),
        client_port: dst_port,
        proxy_port: (src_port as u16).to_be(),
    };
    assert_eq!(from_bpf_sock, tuple_key(client, proxy));
}

#[test]
fn orig_value_roundtrip() {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    let v = OrigValue {
        addr: addr16("160.79.104.10".parse().unwrap()),
        port: 443u16.to_be(),
        comm,
        ..OrigValue::default()
    };
    assert_eq!(v.dst(), "160.79.104.10:443".parse::<SocketAddr>().unwrap());
    assert_eq!(v.comm(), "curl");
}

#[test]
fn prefixes_are_masked() {
    assert_eq!(
        masked_v4("160.79.105.7".parse().unwrap(), 23),
        [160, 79, 104, 0]
    );
    assert_eq!(masked_v4("1.2.3.4".parse().unwrap(), 0), [0; 4]);
    assert_eq!(masked_v4("1.2.3.4".parse().unwrap(), 32), [1, 2, 3, 4]);
    let m = masked_v6("2607:6bc0:0:1::5".parse().unwrap(), 48);
    assert_eq!(
        Ipv6Addr::from(m),
        "2607:6bc0::".parse::<Ipv6Addr>().unwrap()
    );
}
