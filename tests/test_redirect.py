"""eBPF transparent redirect end to end: the probe attached to a child cgroup made for the
test, unmodified SDKs and curl in a client netns (a pod) calling the provider's real
address, and Sluice capturing them with no base URL, proxy setting or /etc/hosts trick
pointing at Sluice — only the organisation CA is trusted.

    client netns (pod)                 root netns                      provider netns
    /etc/hosts: api.openai.com   ──▶   connect4/6 rewrite to     ──▶   mock provider on
      → provider_addr (real)           client_gw:PORT (pod-facing)      provider_addr:443
                                       sluice (in the same cgroup,      and [provider_addr6]:443
                                       its upstream sockets marked)

Everything is made by the test and removed after it: namespaces, the cgroup, pins.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from netns import Cgroup, Proc, free_port, mock_bin, run, sluice_bin, wait_for_port

class Redirected:
    """Mock provider (v4 + v6), `sluice run` with the redirect on, both in the test cgroup."""

    def __init__(self, topo, tmp_path: Path, policy: str):
        self.topo, self.dir = topo, tmp_path
        self.cg = Cgroup(f"sluice-e2e-{os.getpid()}-{tmp_path.name[-12:]}")
        self.pins = Path(f"/sys/fs/bpf/sluice-e2e-{os.getpid()}")
        self.provider_ca = tmp_path / "provider-ca.pem"
        self.mock = Proc(
            ["ip", "netns", "exec", topo.provider.name, mock_bin(),
             "--listen", f"{topo.provider_addr}:443,[{topo.provider_addr6}]:443,{topo.provider_addr}:8000",
             "--tls-hosts", "api.openai.com,api.anthropic.com",
             "--ca-out", str(self.provider_ca)],
            tmp_path / "mock.log")
        wait_for_port(topo.provider_addr, 443, timeout=20, netns=topo.provider)
        self.port = free_port("127.0.0.1")
        self.metrics_port = free_port("127.0.0.1")
        self.state = tmp_path / "state"
        self.config = tmp_path / "sluice.yaml"
        self.config.write_text(f"""listen: ["127.0.0.1:{self.port}", "{topo.client_gw}:{self.port}", "[{topo.client_gw6}]:{self.port}"]
metrics_listen: "127.0.0.1:{self.metrics_port}"
state_dir: "{self.state}"
upstream:
  ca_file: "{self.provider_ca}"
redirect:
  enabled: true
  cgroup: "{self.cg.path}"
  pod_facing_v4: "{topo.client_gw}:{self.port}"
  pod_facing_v6: "[{topo.client_gw6}]:{self.port}"
  pin_dir: "{self.pins}"
  on_proxy_down: {policy}
  heartbeat_timeout_ms: 1000
  prefixes: ["{topo.provider_addr}/32:443", "{topo.provider_addr6}/128:443"]
""")
        run([sluice_bin(), "ca", "init", "--config", str(self.config)])
        self.org_ca = self.state / "ca" / "ca.crt"
        topo.client.hosts({"api.openai.com": topo.provider_addr,
                           "api.anthropic.com": topo.provider_addr6})
        self.proxy = None
        self.start_proxy()

    def start_proxy(self):
        self.proxy = Proc(self.cg.wrap([sluice_bin(), "run", "--config", str(self.config)]),
                          self.dir / f"proxy-{time.monotonic_ns()}.log")
        wait_for_port("127.0.0.1", self.port, timeout=30)

    def stop_proxy(self, sig=signal.SIGINT):
        os.kill(self.proxy.pid, sig)
        deadline = time.monotonic() + 30
        while self.proxy.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.proxy.poll() is not None, "proxy did not stop"

    def close(self):
        if self.proxy and self.proxy.poll() is None:
            self.stop_proxy()
        self.cg.close()
        shutil.rmtree(self.pins, ignore_errors=True)

    # --- clients, always inside the test cgroup and the client netns ---------------------

    def client(self, argv: list[str], ca: Path | None = None, timeout: float = 60):
        ca = str(ca or self.org_ca)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update({"SSL_CERT_FILE": ca, "CURL_CA_BUNDLE": ca})
        return run(self.cg.wrap(self.topo.client.argv(argv)), env=env, timeout=timeout, check=False)

    def python(self, script: str, ca: Path | None = None):
        r = self.client([sys.executable, "-c", script], ca=ca)
        assert r.returncode == 0, f"client failed:\n{r.stdout}\n{r.stderr}"
        return json.loads(r.stdout)

    def interactions(self) -> list[dict]:
        out = run([str(sluice_bin()), "events", "tail", "--json", "--limit", "100000",
                   "--kind", "interaction", "--config", str(self.config)], check=False)
        rows = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
        return sorted(rows, key=lambda r: r["seq"])

    def wait_interactions(self, n: int, timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.interactions()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        rows = self.interactions()
        assert len(rows) >= n, f"expected {n} interactions, got {rows}"
        return rows

    def wait_metric(self, series: str, at_least: float, timeout: float = 10) -> None:
        """Probe counters are exported by the maintenance thread; wait for them."""
        deadline = time.monotonic() + timeout
        while self.metric(series) < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.metric(series) >= at_least, f"{series} = {self.metric(series)}"

    def metric(self, series: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.rpartition(" ")
                if name == series:
                    return float(value)
        return 0.0


@pytest.fixture
def fail_open(topo, tmp_path):
    r = Redirected(topo, tmp_path, "fail_open")
    yield r
    r.close()


@pytest.fixture
def fail_closed(topo, tmp_path):
    r = Redirected(topo, tmp_path, "fail_closed")
    yield r
    r.close()


SDKS = """
import json, os, socket, openai, anthropic
o = openai.OpenAI(api_key="sk-pod-key")
r = o.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "captured from a pod"}])
a = anthropic.Anthropic(api_key="sk-ant-pod")
m = a.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "over ipv6"}])
s = socket.create_connection(("api.openai.com", 443), timeout=5)
peer = s.getpeername()
print(json.dumps({"openai": r.choices[0].message.content, "anthropic": m.content[0].text,
                  "peer": [peer[0], peer[1]], "pid": os.getpid()}))
"""


def test_unmodified_clients_are_captured_with_attribution(fail_open):
    r = fail_open
    out = r.python(SDKS)
    assert out["openai"] == "Mock reply to: captured from a pod"
    assert out["anthropic"] == "Mock reply to: over ipv6"
    # The client sees the provider's address, not the proxy's.
    assert out["peer"] == [r.topo.provider_addr, 443]

    oai, ant = r.wait_interactions(2)
    assert oai["provider"] == "openai" and oai["model"] == "gpt-4o-mini"
    assert oai["upstream"] == {"addr": f"{r.topo.provider_addr}:443", "sni": "api.openai.com"}
    assert ant["provider"] == "anthropic"
    assert ant["upstream"]["addr"] == f"[{r.topo.provider_addr6}]:443"
    for rec in (oai, ant):
        ident = rec["identity"]
        assert ident["process"] == "python3" or ident["process"].startswith("python")
        assert ident["uid"] == os.geteuid()
        assert ident["pid"] == out["pid"], "the process that connected (tgid)"
        assert ident["cgroup"] is None or ident["cgroup"].endswith(r.cg.path.name)
        assert ident["cgroup_id"] == r.cg.path.stat().st_ino
    r.wait_metric('sluice_redirect_events_total{event="redirected"}', 3)

    # curl, unmodified, too.
    c = r.client(["curl", "-sS", "--max-time", "20", "-H", "content-type: application/json",
                  "--data-binary", '{"model":"gpt-4o","messages":[{"role":"user","content":"curl"}]}',
                  "https://api.openai.com/v1/chat/completions"])
    assert c.returncode == 0 and "Mock reply to: curl" in c.stdout, c.stderr
    (_, _, cur) = r.wait_interactions(3)
    assert cur["identity"]["process"] == "curl"


def test_what_must_not_be_redirected_is_not(fail_open):
    r = fail_open
    r.topo.enable_forwarding()
    # A non-provider port on the same host goes direct (the mock answers plain HTTP there).
    # Trusting only the provider's CA proves nobody terminated TLS in between.
    c = r.client(["curl", "-sS", "--max-time", "10", "https://api.openai.com:8000/v1/models"],
                 ca=r.provider_ca)
    assert c.returncode == 0 and '"object"' in c.stdout, c.stderr
    # UDP/443 to the provider is refused (QUIC falls back to TCP); other UDP works.
    out = r.python(f"""
import json, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"quic", ("{r.topo.provider_addr}", 443)); quic = "sent"
except PermissionError:
    quic = "refused"
s.sendto(b"dns", ("{r.topo.provider_addr}", 53))
print(json.dumps({{"quic": quic}}))
""")
    assert out["quic"] == "refused"
    # The proxy itself runs inside the redirected cgroup: its upstream sockets carry the
    # mark and are not looped back (the request completes, one record, no loop refusal).
    r.python(SDKS)
    assert len(r.wait_interactions(2)) == 2
    assert r.metric('sluice_connections_refused_total{reason="loop"}') == 0
    r.wait_metric('sluice_redirect_events_total{event="skipped_marked"}', 2)


def test_detach_and_fail_open(fail_open):
    r = fail_open
    r.topo.enable_forwarding()
    direct = ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
              "https://api.openai.com/v1/models"]
    # While attached, trusting only the provider's CA fails: the proxy presents the org CA.
    assert r.client(direct, ca=r.provider_ca).returncode != 0
    # Killed proxy, stale heartbeat: fail_open lets the client reach the provider directly.
    r.stop_proxy(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        c = r.client(direct, ca=r.provider_ca)
        if c.returncode == 0:
            break
        time.sleep(0.2)
    assert c.stdout == "200", c.stderr
    # Restarted: the redirect resumes with the pinned programs.
    r.start_proxy()
    assert r.python(SDKS)["openai"] == "Mock reply to: captured from a pod"
    # Clean stop detaches: the same client connects directly again.
    r.stop_proxy(signal.SIGINT)
    c = r.client(direct, ca=r.provider_ca)
    assert c.returncode == 0 and c.stdout == "200", c.stderr
    assert not r.pins.exists() or not list(r.pins.iterdir()), "detach removed the pins"


def test_fail_closed_refuses_while_the_proxy_is_down(fail_closed):
    r = fail_closed
    r.topo.enable_forwarding()
    r.stop_proxy(signal.SIGKILL)
    probe = f"""
import json, socket
try:
    socket.create_connection(("{r.topo.provider_addr}", 443), timeout=3); res = "connected"
except PermissionError:
    res = "refused"
except ConnectionRefusedError:
    res = "redirected to a dead proxy"  # until the heartbeat goes stale
print(json.dumps({{"res": res}}))
"""
    deadline = time.monotonic() + 15
    res = None
    while time.monotonic() < deadline:
        res = r.python(probe)["res"]
        if res == "refused":
            break
        time.sleep(0.2)
    assert res == "refused"
    r.start_proxy()
    assert r.python(SDKS)["openai"] == "Mock reply to: captured from a pod"


ONE_CALL = """
import json, openai
r = openai.OpenAI(api_key="sk-pod-key", max_retries=0).chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "still captured"}])
print(json.dumps(r.choices[0].message.content))
"""


def test_a_second_instance_on_a_taken_address_leaves_the_redirect_alone(fail_open, tmp_path):
    """Someone on the node starts `sluice run` again — by mistake, or to knock the running
    one out: same listen addresses, same cgroup, same bpffs pins, its own state. It must find
    the address taken and exit before it touches the eBPF redirect: a probe re-attached by an
    instance that then died would send captured connections where nothing answers the
    heartbeat, and with `fail_open` they would go to the provider unaudited."""
    r = fail_open
    assert r.python(ONE_CALL) == "Mock reply to: still captured"
    before = len(r.wait_interactions(1))
    second = tmp_path / "second"
    second.mkdir()
    config = r.config.read_text()
    config = config.replace(f'state_dir: "{r.state}"', f'state_dir: "{second / "state"}"')
    config = config.replace(f'metrics_listen: "127.0.0.1:{r.metrics_port}"', "metrics_listen: null")
    assert str(second) in config and "metrics_listen: null" in config
    (second / "sluice.yaml").write_text(config)
    run([sluice_bin(), "ca", "init", "--config", str(second / "sluice.yaml")])
    p = run(r.cg.wrap([sluice_bin(), "run", "--config", str(second / "sluice.yaml")]),
            check=False, timeout=60)
    assert p.returncode != 0, p.stderr
    assert f"binding listen address 127.0.0.1:{r.port}" in p.stderr, p.stderr
    # Past the heartbeat timeout (1 s): a probe whose proxy is gone would have failed open.
    time.sleep(1.5)
    assert r.python(ONE_CALL) == "Mock reply to: still captured"
    rows = r.wait_interactions(before + 1)
    assert rows[-1]["response"]["output"] == "Mock reply to: still captured"
    assert r.proxy.poll() is None, "the first instance still runs"
