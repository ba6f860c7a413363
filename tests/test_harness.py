"""Tests of the namespace harness itself: routing, per-namespace /etc/hosts, teardown."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns import (
    Netns,
    Proc,
    Topology,
    free_port,
    run,
    unique_name,
    venv_python,
    wait_for_port,
)

CURL_COULDNT_CONNECT = 7
CURL_TIMED_OUT = 28
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def serve_file(topo: Topology, tmp_path: Path, addr: str) -> tuple[str, str]:
    """Starts `python -m http.server` in the provider netns on `addr`; returns the URL of a
    file it serves and that file's content."""
    www = tmp_path / "www"
    www.mkdir()
    body = f"hello from {topo.provider.name}\n"
    (www / "token.txt").write_text(body)
    port = free_port(addr, netns=topo.provider)
    argv = [venv_python(), "-m", "http.server", "--bind", addr, "--directory", str(www), str(port)]
    Proc(argv, tmp_path / "http-server.log", netns=topo.provider)
    wait_for_port(addr, port, timeout=10, netns=topo.provider)
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}/token.txt", body


def curl(url: str) -> list[str]:
    # --globoff keeps the brackets of an IPv6 literal from being read as a glob.
    return [
        "curl",
        "--silent",
        "--show-error",
        "--globoff",
        "--connect-timeout",
        "1",
        "--max-time",
        "5",
        url,
    ]


def test_provider_reachable_from_root_and_from_client_only_with_forwarding(topo, tmp_path):
    url, body = serve_file(topo, tmp_path, topo.provider_addr)
    # As on a fresh VM; a Kubernetes node (or a host running dockerd) has it on.
    topo.set_forwarding(False)

    assert run(curl(url)).stdout == body

    blocked = topo.client.run(curl(url), check=False)
    assert blocked.returncode in (CURL_COULDNT_CONNECT, CURL_TIMED_OUT), blocked
    assert blocked.stdout == ""

    topo.enable_forwarding()
    assert IP_FORWARD.read_text().strip() == "1"
    assert topo.client.run(curl(url)).stdout == body


def test_provider_reachable_over_ipv6_from_root(topo, tmp_path):
    url, body = serve_file(topo, tmp_path, topo.provider_addr6)

    assert run(curl(url)).stdout == body


def test_netns_hosts_file_maps_names_inside_only(topo):
    root_hosts = Path("/etc/hosts").read_bytes()

    topo.client.hosts({"api.openai.com": topo.provider_addr})

    # No DNS server is reachable here, so only the namespace's own answer is asserted.
    answer = topo.client.run(["getent", "hosts", "api.openai.com"]).stdout.split()
    assert answer == [topo.provider_addr, "api.openai.com"]
    localhost = topo.client.run(["getent", "ahostsv4", "localhost"]).stdout.split()
    assert localhost[0] == "127.0.0.1"
    assert Path("/etc/hosts").read_bytes() == root_hosts


def test_topology_teardown_removes_namespaces_links_and_settings(privileged, request):
    forward_before = IP_FORWARD.read_text()

    with (
        pytest.raises(RuntimeError, match="test body failed"),
        Topology(request.node.nodeid) as topo,
    ):
        names = [topo.client.name, topo.provider.name]
        gateways = [topo.client_gw, topo.provider_gw, topo.client_gw6, topo.provider_gw6]
        topo.client.hosts({"api.openai.com": topo.provider_addr})
        topo.enable_forwarding()
        for name in names:
            assert Path("/run/netns", name).exists()
            assert Path("/sys/class/net", name).exists()
        raise RuntimeError("test body failed")

    for name in names:
        assert not Path("/run/netns", name).exists()
        assert not Path("/sys/class/net", name).exists()
        assert not Path("/etc/netns", name).exists()
    root_addrs = run(["ip", "-o", "addr", "show"]).stdout
    for gw in gateways:
        assert f" {gw}/" not in root_addrs
    assert IP_FORWARD.read_text() == forward_before


def test_netns_alone_has_loopback_and_is_removed(privileged, request):
    with Netns(unique_name(request.node.nodeid)) as ns:
        ns.hosts({"example.test": "198.18.0.9"})
        assert "UP" in ns.run(["ip", "-o", "link", "show", "lo"]).stdout
        assert ns.run(["getent", "hosts", "example.test"]).stdout.split()[0] == "198.18.0.9"

    assert not Path("/run/netns", ns.name).exists()
    assert not Path("/etc/netns", ns.name).exists()
