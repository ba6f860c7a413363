//! The redirect on a real kernel: programs attached to a child cgroup, clients
//! in helper processes inside it, providers on addresses of a test netns.
//!
//! Host-netns clients use a provider prefix in 127.77.0.0/16 (so a broken
//! redirect hits a closed loopback port, never the network); pod clients live
//! in a netns whose lo holds 198.18.0.1, 198.18.1.1 and 2001:2::1.

mod support;

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener};
use std::time::Duration;

use sluice_probe::{Probe, ProbeConfig, ProviderPrefix, ProxyDownPolicy};
use support::{
    accept, has_pending, privileged, Helper, TestCgroup, TestNetns, TestPinDir, OTHER_V4,
    PROVIDER_V4, PROVIDER_V6,
};

const MARK: u32 = 0x5155;
const EPERM: &str = "1";

/// Re-executed as the helper process (no-op in a normal run).
#[test]
fn helper_entry() {
    support::helper_main();
}

fn providers() -> Vec<ProviderPrefix> {
    vec![
        ProviderPrefix {
            net: "198.18.0.0/24".parse().unwrap(),
            ports: vec![443],
        },
        ProviderPrefix {
            net: "2001:2::/48".parse().unwrap(),
            ports: vec![443],
        },
        ProviderPrefix {
            net: "127.77.0.0/16".parse().unwrap(),
            ports: vec![],
        },
    ]
}

fn v4(l: &TcpListener) -> SocketAddrV4 {
    match l.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        a => panic!("not v4: {a}"),
    }
}

fn v6(l: &TcpListener) -> SocketAddrV6 {
    match l.local_addr().unwrap() {
        SocketAddr::V6(a) => a,
        a => panic!("not v6: {a}"),
    }
}

/// Config for pod (test netns) clients: the host target is a closed port so
/// that a wrong netns decision shows up as ECONNREFUSED.
fn pod_config(pod_v4: SocketAddrV4, pod_v6: Option<SocketAddrV6>) -> ProbeConfig {
    ProbeConfig {
        proxy_v4: "127.0.0.1:9".parse().unwrap(),
        proxy_v6: None,
        pod_facing_v4: Some(pod_v4),
        pod_facing_v6: pod_v6,
        mark: MARK,
        on_proxy_down: ProxyDownPolicy::FailOpen,
        heartbeat_timeout: Duration::from_secs(600),
        pin_dir: None,
    }
}

fn probe(cfg: &ProbeConfig, cgroup: &TestCgroup) -> Probe {
    let mut probe = Probe::load(cfg).expect("load probe");
    probe.set_providers(&providers()).expect("set providers");
    probe.attach(&cgroup.path).expect("attach");
    probe
}

fn tcp(cg: &TestCgroup, ns: Option<&TestNetns>, addr: &str) -> Helper {
    Helper {
        mode: "tcp",
        cgroup: Some(cg.path.clone()),
        netns: ns.map(TestNetns::path),
        addr: addr.to_owned(),
        ..Helper::default()
    }
}

/// (1) + (2), host netns: a connect to a provider address lands on the proxy,
/// `original()` returns the provider address and the client's identity, and
/// the client's getpeername() still reports the provider.
#[test]
fn host_client_is_redirected_with_attribution() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = ProbeConfig {
        proxy_v4: v4(&proxy),
        pod_facing_v4: None,
        ..pod_config(v4(&proxy), None)
    };
    let probe = probe(&cfg, &cg);

    let client = Helper {
        uid: Some(65534),
        ..tcp(&cg, None, "127.77.0.1:443")
    }
    .start();
    assert_eq!(client.get("result"), "ok", "{:?}", client.report);
    let (stream, peer) = accept(&proxy).expect("redirected connection reached the proxy");
    assert_eq!(peer, client.addr("local"));
    // (2) getpeername
    assert_eq!(client.addr("peer"), "127.77.0.1:443".parse().unwrap());

    let orig = probe
        .original(peer, stream.local_addr().unwrap())
        .expect("original recorded");
    assert_eq!(orig.dst, "127.77.0.1:443".parse().unwrap());
    assert_eq!(orig.pid.to_string(), client.get("pid"));
    assert_eq!(orig.tgid.to_string(), client.get("tgid"));
    assert_eq!(orig.uid, 65534);
    assert_eq!(orig.comm, client.get("comm"));
    assert_eq!(orig.cgroup_id, cg.id());
    drop(stream);
    client.finish();

    let stats = probe.stats();
    assert_eq!(stats.redirected, 1);
    assert_eq!(stats.tuple_recorded, 1);
    assert_eq!(stats.getpeername_rewritten, 1);
    probe.detach().unwrap();
}

/// (1) for a pod, (3): a client in another netns is sent to the pod-facing
/// address; a non-provider address and a provider address on an unlisted
/// port are untouched.
#[test]
fn pod_client_is_redirected_and_others_untouched() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let cg = TestCgroup::new();
    let proxy = ns.listen("127.0.0.1:0");
    let other = ns.listen(&format!("{OTHER_V4}:443"));
    let probe = probe(&pod_config(v4(&proxy), None), &cg);

    let client = tcp(&cg, Some(&ns), &format!("{PROVIDER_V4}:443")).start();
    assert_eq!(client.get("result"), "ok", "{:?}", client.report);
    let (stream, peer) = accept(&proxy).expect("pod connection reached the pod-facing proxy");
    assert_eq!(
        client.addr("peer"),
        format!("{PROVIDER_V4}:443").parse().unwrap()
    );
    let orig = probe
        .original(peer, stream.local_addr().unwrap())
        .expect("original recorded");
    assert_eq!(orig.dst, format!("{PROVIDER_V4}:443").parse().unwrap());
    assert_eq!(orig.cgroup_id, cg.id());
    assert_ne!(orig.netns_cookie, 0);
    drop(stream);
    client.finish();

    // (3) not a provider: reaches the real listener, the proxy sees nothing.
    let client = tcp(&cg, Some(&ns), &format!("{OTHER_V4}:443")).start();
    assert_eq!(client.get("result"), "ok");
    assert_eq!(
        client.addr("peer"),
        format!("{OTHER_V4}:443").parse().unwrap()
    );
    let (direct, _) = accept(&other).expect("direct connection");
    assert!(!has_pending(&proxy));
    drop(direct);
    client.finish();

    // Provider address, port not in its list: untouched (nothing listens).
    let report = tcp(&cg, Some(&ns), &format!("{PROVIDER_V4}:80")).run();
    assert_eq!(report["errno"], libc::ECONNREFUSED.to_string());
    assert!(!has_pending(&proxy));

    assert_eq!(probe.stats().redirected, 1);
    probe.detach().unwrap();
}

/// (4) the proxy's own upstream sockets (SO_MARK) are never redirected.
#[test]
fn marked_socket_is_not_redirected() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let cg = TestCgroup::new();
    let proxy = ns.listen("127.0.0.1:0");
    let provider = ns.listen(&format!("{PROVIDER_V4}:443"));
    let probe = probe(&pod_config(v4(&proxy), None), &cg);

    let client = Helper {
        mark: Some(MARK),
        ..tcp(&cg, Some(&ns), &format!("{PROVIDER_V4}:443"))
    }
    .start();
    assert_eq!(client.get("result"), "ok");
    let (direct, _) = accept(&provider).expect("marked connection went to the provider");
    assert!(!has_pending(&proxy));
    drop(direct);
    client.finish();

    let stats = probe.stats();
    assert_eq!((stats.skipped_marked, stats.redirected), (1, 0));
    probe.detach().unwrap();
}

/// (5) UDP/443 to a provider is refused (QUIC falls back to TCP), both
/// unconnected sendto() and connect(); other UDP is untouched.
#[test]
fn quic_to_provider_is_refused() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let cg = TestCgroup::new();
    let proxy = ns.listen("127.0.0.1:0");
    let probe = probe(&pod_config(v4(&proxy), None), &cg);
    let udp = |addr: String| {
        Helper {
            mode: "udp",
            ..tcp(&cg, Some(&ns), &addr)
        }
        .run()
    };

    let refused = udp(format!("{PROVIDER_V4}:443"));
    assert_eq!(
        (refused["result"].as_str(), refused["errno"].as_str()),
        ("err", EPERM)
    );
    assert_eq!(refused["connect"], format!("err{EPERM}"));
    let refused6 = udp(format!("[{PROVIDER_V6}]:443"));
    assert_eq!(refused6["errno"], EPERM);
    for addr in [format!("{PROVIDER_V4}:53"), format!("{OTHER_V4}:443")] {
        let ok = udp(addr.clone());
        assert_eq!(
            (ok["result"].as_str(), ok["connect"].as_str()),
            ("ok", "ok"),
            "{addr}"
        );
    }
    assert_eq!(probe.stats().quic_refused, 4);
    probe.detach().unwrap();
}

/// (6) IPv6 providers go to the IPv6 proxy; a dual-stack socket connecting
/// to ::ffff:198.18.0.1 matches the IPv4 prefix and lands on the IPv4 proxy.
#[test]
fn ipv6_and_v4_mapped_are_redirected() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let cg = TestCgroup::new();
    let proxy = ns.listen("127.0.0.1:0");
    let proxy6 = ns.listen("[::1]:0");
    let probe = probe(&pod_config(v4(&proxy), Some(v6(&proxy6))), &cg);

    let target6 = format!("[{PROVIDER_V6}]:443");
    let client = tcp(&cg, Some(&ns), &target6).start();
    assert_eq!(client.get("result"), "ok", "{:?}", client.report);
    let (stream, peer) = accept(&proxy6).expect("IPv6 connection reached the IPv6 proxy");
    assert_eq!(client.addr("peer"), target6.parse().unwrap());
    let orig = probe
        .original(peer, stream.local_addr().unwrap())
        .expect("original recorded");
    assert_eq!(orig.dst, target6.parse().unwrap());
    drop(stream);
    client.finish();

    let mapped = format!("[::ffff:{PROVIDER_V4}]:443");
    let client = tcp(&cg, Some(&ns), &mapped).start();
    assert_eq!(client.get("result"), "ok", "{:?}", client.report);
    let (stream, peer) = accept(&proxy).expect("v4-mapped connection reached the IPv4 proxy");
    // The dual-stack client still sees the v4-mapped provider address.
    assert_eq!(client.addr("peer"), mapped.parse().unwrap());
    let orig = probe
        .original(peer, stream.local_addr().unwrap())
        .expect("original recorded");
    assert_eq!(orig.dst, format!("{PROVIDER_V4}:443").parse().unwrap());
    drop(stream);
    client.finish();

    assert_eq!(probe.stats().redirected, 2);
    probe.detach().unwrap();
}

/// (7) stale heartbeat: fail-open goes direct, fail-closed refuses (EPERM).
#[test]
fn stale_heartbeat_follows_policy() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let proxy = ns.listen("127.0.0.1:0");
    let provider = ns.listen(&format!("{PROVIDER_V4}:443"));
    // A 1 ns timeout makes every heartbeat stale by the time a client runs.
    let stale = |policy| ProbeConfig {
        on_proxy_down: policy,
        heartbeat_timeout: Duration::from_nanos(1),
        ..pod_config(v4(&proxy), None)
    };

    let cg = TestCgroup::new();
    let open = probe(&stale(ProxyDownPolicy::FailOpen), &cg);
    open.heartbeat().unwrap();
    let client = tcp(&cg, Some(&ns), &format!("{PROVIDER_V4}:443")).start();
    assert_eq!(client.get("result"), "ok");
    let (direct, _) = accept(&provider).expect("fail-open went to the provider");
    assert!(!has_pending(&proxy));
    drop(direct);
    client.finish();
    assert_eq!((open.stats().fail_open, open.stats().redirected), (1, 0));
    open.detach().unwrap();

    let cg = TestCgroup::new();
    let closed = probe(&stale(ProxyDownPolicy::FailClosed), &cg);
    let report = tcp(&cg, Some(&ns), &format!("{PROVIDER_V4}:443")).run();
    assert_eq!(
        (report["result"].as_str(), report["errno"].as_str()),
        ("err", EPERM)
    );
    assert!(!has_pending(&proxy) && !has_pending(&provider));
    assert_eq!(closed.stats().fail_closed, 1);
    closed.detach().unwrap();
}

/// (8) after detach the same client connects directly.
#[test]
fn detach_restores_direct_connections() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let cg = TestCgroup::new();
    let proxy = ns.listen("127.0.0.1:0");
    let provider = ns.listen(&format!("{PROVIDER_V4}:443"));
    let probe = probe(&pod_config(v4(&proxy), None), &cg);
    let target = format!("{PROVIDER_V4}:443");

    let client = tcp(&cg, Some(&ns), &target).start();
    let (redirected, _) = accept(&proxy).expect("redirected while attached");
    drop(redirected);
    client.finish();

    probe.detach().unwrap();
    let client = tcp(&cg, Some(&ns), &target).start();
    assert_eq!(client.get("result"), "ok");
    let (direct, _) = accept(&provider).expect("direct after detach");
    assert!(!has_pending(&proxy));
    drop(direct);
    client.finish();
}

/// (9) the proxy's accepted sockets answer getsockopt(SO_ORIGINAL_DST) at
/// SOL_IP and SOL_IPV6 when the program is attached to the proxy's cgroup.
#[test]
fn getsockopt_answers_original_dst_in_proxy_cgroup() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let client_cg = TestCgroup::new();
    let proxy_cg = TestCgroup::new();
    let proxy_helper = |addr: &str| Helper {
        mode: "proxy",
        cgroup: Some(proxy_cg.path.clone()),
        netns: Some(ns.path()),
        addr: addr.to_owned(),
        ..Helper::default()
    };
    let mut proxy4 = proxy_helper("127.0.0.1:0").start();
    let mut proxy6 = proxy_helper("[::1]:0").start();
    let (SocketAddr::V4(p4), SocketAddr::V6(p6)) = (proxy4.addr("listen"), proxy6.addr("listen"))
    else {
        panic!("listener families");
    };
    let mut probe = probe(&pod_config(p4, Some(p6)), &client_cg);
    probe
        .attach_getsockopt(&proxy_cg.path)
        .expect("attach getsockopt");

    let client = tcp(&client_cg, Some(&ns), &format!("{PROVIDER_V4}:443")).start();
    proxy4.next_report();
    assert_eq!(proxy4.get("orig4"), format!("{PROVIDER_V4}:443"));
    assert_eq!(proxy4.get("orig6"), format!("[::ffff:{PROVIDER_V4}]:443"));
    // The map lookup and the getsockopt answer agree.
    let orig = probe
        .original(proxy4.addr("peer"), proxy4.addr("local"))
        .expect("original");
    assert_eq!(orig.dst.to_string(), proxy4.get("orig4"));
    proxy4.finish();
    client.finish();

    let client = tcp(&client_cg, Some(&ns), &format!("[{PROVIDER_V6}]:443")).start();
    proxy6.next_report();
    assert_eq!(proxy6.get("orig6"), format!("[{PROVIDER_V6}]:443"));
    proxy6.finish();
    client.finish();

    assert_eq!(probe.stats().original_dst_answered, 3);
    probe.detach().unwrap();
}

/// With `pin_dir`, links outlive the `Probe` (a proxy restart keeps the
/// redirect); the next load replaces the pins, so the old programs detach
/// and only the new ones handle connections; `detach` removes everything.
#[test]
fn pinned_links_survive_drop_and_are_replaced() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let cg = TestCgroup::new();
    let pins = TestPinDir::new();
    let proxy = ns.listen("127.0.0.1:0");
    let provider = ns.listen(&format!("{PROVIDER_V4}:443"));
    let cfg = ProbeConfig {
        pin_dir: Some(pins.path.clone()),
        ..pod_config(v4(&proxy), None)
    };
    let target = format!("{PROVIDER_V4}:443");
    let expect_redirect = || {
        let client = tcp(&cg, Some(&ns), &target).start();
        let (stream, _) = accept(&proxy).expect("redirected");
        drop(stream);
        client.finish();
    };

    drop(probe(&cfg, &cg));
    // 7 links (all but getsockopt) and 7 maps stay pinned.
    assert_eq!(
        pins.entries()
            .iter()
            .filter(|e| e.starts_with("link_"))
            .count(),
        7
    );
    assert_eq!(
        pins.entries()
            .iter()
            .filter(|e| e.starts_with("map_"))
            .count(),
        7
    );
    expect_redirect();

    let restarted = probe(&cfg, &cg);
    assert_eq!(pins.entries().len(), 14, "{:?}", pins.entries());
    expect_redirect();
    // The first run's pinned counter (1) carries over, and the new connect4 counts its
    // own (1). Had the old connect4 still been attached, it would have rewritten first
    // (into the old map, read before) and the new one would have seen the proxy
    // address, not a provider: 1 in all.
    assert_eq!(restarted.stats().redirected, 2);

    restarted.detach().unwrap();
    assert!(!pins.path.exists(), "pin dir left: {:?}", pins.entries());
    let client = tcp(&cg, Some(&ns), &target).start();
    let (direct, _) = accept(&provider).expect("direct after detach");
    assert!(!has_pending(&proxy));
    drop(direct);
    client.finish();
}

/// `set_providers` replaces the whole set, and a v4-mapped IPv6 prefix
/// applies to IPv4 destinations.
#[test]
fn set_providers_replaces_the_set() {
    if !privileged() {
        return;
    }
    let ns = TestNetns::new();
    let cg = TestCgroup::new();
    let proxy = ns.listen("127.0.0.1:0");
    let provider = ns.listen(&format!("{PROVIDER_V4}:443"));
    let mut probe = probe(&pod_config(v4(&proxy), None), &cg);
    let connect = |addr: &str, expect: &TcpListener, not: &TcpListener| {
        let client = tcp(&cg, Some(&ns), addr).start();
        assert_eq!(client.get("result"), "ok", "{addr}: {:?}", client.report);
        let (stream, _) =
            accept(expect).unwrap_or_else(|| panic!("{addr}: not accepted where expected"));
        assert!(!has_pending(not), "{addr}");
        drop(stream);
        client.finish();
    };

    let other = ns.listen(&format!("{OTHER_V4}:443"));
    connect(&format!("{PROVIDER_V4}:443"), &proxy, &provider);
    connect(&format!("{OTHER_V4}:443"), &other, &proxy);

    let mapped = ProviderPrefix {
        net: format!("::ffff:{OTHER_V4}/120").parse().unwrap(),
        ports: vec![443],
    };
    probe.set_providers(&[mapped]).unwrap();
    connect(&format!("{PROVIDER_V4}:443"), &provider, &proxy);
    connect(&format!("{OTHER_V4}:443"), &proxy, &other);

    let bad = ProviderPrefix {
        net: "198.18.0.0/24".parse().unwrap(),
        ports: vec![0],
    };
    assert!(probe.set_providers(&[bad]).is_err());
    assert_eq!(probe.stats().redirected, 2);
    probe.detach().unwrap();
}
