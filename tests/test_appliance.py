"""The in-VPC appliance end to end: a client subnet whose default route points at an
appliance namespace running `sluice run --mode appliance`, a provider namespace behind it.

The clients have no proxy settings and nothing of Sluice on their side: they resolve the
providers to their (test) addresses, send to them through their default route, and trust
the organisation CA as a managed fleet would through its own tooling. Sluice sets up the
kernel side itself (forwarding, the nftables TPROXY table, the policy routes).

What is tried, as an attacker on the client subnet would:
- provider calls over IPv4 and IPv6 (openai and anthropic SDKs, curl) are inspected,
  governed by a policy scoped on the client network, and recorded with the client's own
  address (no NAT on the path) and the mapped team;
- QUIC (UDP 443) to a provider is refused so clients fall back to TCP;
- traffic to a host that is not a provider is forwarded with masquerade — or dropped;
- while Sluice restarts, provider connections are refused, never forwarded unaudited;
  every interaction completed before the restart is still in the ledger after it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from netns import Proc, Vpc, free_port, mock_bin, sluice_bin, wait_for_port

OPENAI, ANTHROPIC, PLAIN = "api.openai.com", "api.anthropic.com", "plain.example"

OPENAI_CHAT = """
import json, openai
c = openai.OpenAI(api_key="sk-client", max_retries=0)
out = []
for model in ("gpt-4o-mini", "gpt-4o"):
    try:
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "from " + model}])
        out.append(r.choices[0].message.content)
    except openai.APIStatusError as e:
        out.append(e.status_code)
print(json.dumps(out))
"""

ANTHROPIC_V6 = """
import json, anthropic
c = anthropic.Anthropic(api_key="sk-ant-client", max_retries=0)
r = c.messages.create(model="claude-sonnet-4-5", max_tokens=50,
                      messages=[{"role": "user", "content": "over ipv6"}])
print(json.dumps(r.content[0].text))
"""

# UDP to host:443: "refused" when an ICMP port-unreachable comes back, else "silent".
QUIC = """
import json, socket, sys
out = {}
for host in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((host, 443))
    try:
        s.send(b"\\xc0quic-initial")
        s.recv(100)
        out[host] = "answered"
    except ConnectionRefusedError:
        out[host] = "refused"
    except TimeoutError:
        out[host] = "silent"
print(json.dumps(out))
"""


class Appliance:
    """The VPC with the mock providers, the appliance's config and helpers."""

    def __init__(self, vpc: Vpc, tmp_path):
        self.vpc, self.dir = vpc, tmp_path
        self.state = tmp_path / "state"
        self.provider_ca = tmp_path / "provider-ca.pem"
        Proc([mock_bin(), "--listen", f"{vpc.PROVIDER}:443,{vpc.MOVED}:443,[{vpc.PROVIDER6}]:443",
              "--tls-hosts", f"{OPENAI},{ANTHROPIC}", "--ca-out", str(self.provider_ca)],
             tmp_path / "mock.log", netns=vpc.provider)
        Proc([mock_bin(), "--listen", f"{vpc.OTHER}:8000"], tmp_path / "plain.log",
             netns=vpc.provider)
        wait_for_port(vpc.PROVIDER, 443, timeout=20, netns=vpc.provider)
        wait_for_port(vpc.OTHER, 8000, timeout=20, netns=vpc.provider)
        # The appliance resolves the providers as the clients do (its refresh keeps the
        # nftables sets in step); the clients reach Anthropic over IPv6.
        vpc.appliance.hosts({OPENAI: vpc.PROVIDER, ANTHROPIC: vpc.PROVIDER6})
        vpc.client.hosts({OPENAI: vpc.PROVIDER, ANTHROPIC: vpc.PROVIDER6, PLAIN: vpc.OTHER})
        self.metrics_port = free_port("127.0.0.1", netns=vpc.appliance)
        self.config = tmp_path / "sluice.yaml"
        self.write_config("forward")
        r = vpc.appliance.run([str(sluice_bin()), "ca", "init", "--config", str(self.config)])
        assert r.returncode == 0, r.stderr
        self.org_ca = self.state / "ca" / "ca.crt"
        self.proc = None

    def write_config(self, non_provider: str) -> None:
        self.config.write_text(f"""
listen: ["127.0.0.1:15443"]
metrics_listen: "127.0.0.1:{self.metrics_port}"
state_dir: "{self.state}"
upstream: {{ca_file: "{self.provider_ca}"}}
providers: [{{host: {OPENAI}}}, {{host: {ANTHROPIC}}}]
redirect: {{prefixes: [], refresh_secs: 1}}
appliance: {{non_provider: {non_provider}}}
networks:
  - {{cidr: "{self.vpc.CLIENT_NET}", name: office, team: payments, environment: prod, owner: alice@example.com}}
  - {{cidr: "{self.vpc.CLIENT_NET6}", name: office-v6, team: payments, environment: prod}}
policy:
  policies:
    - id: prod-payments-models
      scope: {{teams: [payments], environments: [prod]}}
      models: {{deny: ["gpt-4o"]}}
""")

    def start(self) -> None:
        self.proc = Proc([sluice_bin(), "run", "--mode", "appliance", "--config", str(self.config)],
                         self.dir / f"sluice-{time.monotonic_ns()}.log", netns=self.vpc.appliance)
        wait_for_port("127.0.0.1", self.metrics_port, timeout=30, netns=self.vpc.appliance)
        deadline = time.monotonic() + 20
        while self.doctor().returncode != 0:
            assert time.monotonic() < deadline, self.doctor().stdout
            assert self.proc.poll() is None, self.proc.tail()
            time.sleep(0.2)

    def stop(self) -> None:
        assert self.proc.stop(timeout=30) == 0, self.proc.tail()

    def doctor(self):
        return self.vpc.appliance.run(
            [str(sluice_bin()), "doctor", "--appliance", "--config", str(self.config)],
            check=False)

    def client_env(self) -> dict:
        ca = str(self.org_ca)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update({"SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "CURL_CA_BUNDLE": ca})
        return env

    def python(self, script: str, *args: str):
        r = self.vpc.client.run([sys.executable, "-c", script, *args], env=self.client_env(),
                                timeout=60, check=False)
        assert r.returncode == 0, f"client failed:\n{r.stdout}\n{r.stderr}"
        return json.loads(r.stdout)

    def curl(self, *args: str):
        return self.vpc.client.run(["curl", "-sS", "--max-time", "5", *args],
                                   env=self.client_env(), timeout=30, check=False)

    def curl_chat(self, text: str):
        return self.curl("-H", "content-type: application/json", "-H", "authorization: Bearer sk-c",
                         "--data-binary",
                         json.dumps({"model": "gpt-4o-mini",
                                     "messages": [{"role": "user", "content": text}]}),
                         f"https://{OPENAI}/v1/chat/completions")

    def records(self, kind: str = "interaction") -> list[dict]:
        r = self.vpc.appliance.run([str(sluice_bin()), "events", "tail", "--json", "--limit",
                                    "100000", "--config", str(self.config)])
        rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        return sorted((x for x in rows if x["kind"] == kind), key=lambda x: x["seq"])

    def wait_records(self, n: int) -> list[dict]:
        deadline = time.monotonic() + 15
        while len(rows := self.records()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rows) >= n, rows
        return rows

    def metric(self, series: str) -> float:
        """One series of the appliance's /metrics, written as exposed; 0 when absent."""
        r = self.vpc.appliance.run(["curl", "-sS", f"http://127.0.0.1:{self.metrics_port}/metrics"])
        for line in r.stdout.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return 0.0

    def mock_requests(self, addr: str | None = None) -> int:
        """How many requests the mock provider's listener on `addr` (default: IPv4) got."""
        addr = addr or self.vpc.PROVIDER
        r = self.vpc.provider.run(["curl", "-sS", "--cacert", str(self.provider_ca), "--resolve",
                                   f"{OPENAI}:443:{addr if '.' in addr else f'[{addr}]'}",
                                   f"https://{OPENAI}/__mock/requests"])
        return len(json.loads(r.stdout))


@pytest.fixture
def appliance(privileged, request, tmp_path):
    with Vpc(request.node.nodeid) as vpc:
        a = Appliance(vpc, tmp_path)
        a.start()
        yield a


def test_routed_clients_are_governed_and_recorded_with_their_network(appliance):
    vpc = appliance.vpc
    # IPv4: the openai SDK, no proxy settings; the scoped policy refuses gpt-4o.
    assert appliance.python(OPENAI_CHAT) == ["Mock reply to: from gpt-4o-mini", 403]
    # IPv6: the anthropic SDK.
    assert "over ipv6" in appliance.python(ANTHROPIC_V6)
    # curl, plain.
    r = appliance.curl_chat("from curl")
    assert r.returncode == 0 and "Mock reply to: from curl" in r.stdout, r.stderr

    rows = appliance.wait_records(4)
    assert len(rows) == 4, [x.get("model") for x in rows]
    by_model = {x["model"]: x for x in rows}
    mini = [x for x in rows if x["model"] == "gpt-4o-mini"]
    assert len(mini) == 2
    for rec in mini:
        ident = rec["identity"]
        # The client's own address: no NAT between it and Sluice.
        assert ident["client_addr"].split(":")[0] == vpc.CLIENT, ident
        assert ident["network"] == {"name": "office", "cidr": vpc.CLIENT_NET, "team": "payments",
                                    "environment": "prod", "owner": "alice@example.com"}
        assert rec["upstream"]["addr"] == f"{vpc.PROVIDER}:443"
        assert rec["outcome"] == "success"
    blocked = by_model["gpt-4o"]
    assert blocked["decision"] == "block" and blocked["outcome"] == "refused", blocked
    assert blocked["policy_id"] == "prod-payments-models@v1"
    v6 = by_model["claude-sonnet-4-5"]
    assert v6["identity"]["client_addr"].startswith(f"[{vpc.CLIENT6}]:"), v6["identity"]
    assert v6["identity"]["network"]["name"] == "office-v6"
    assert v6["upstream"]["addr"] == f"[{vpc.PROVIDER6}]:443"
    # The SDK's allowed call and curl's on IPv4 (the blocked one never left), one on IPv6.
    assert appliance.mock_requests() == 2, "the blocked call must not reach the provider"
    assert appliance.mock_requests(vpc.PROVIDER6) == 1

    # Reports group appliance callers by their network and its team.
    usage = json.loads(vpc.appliance.run(
        [str(sluice_bin()), "report", "--type", "usage", "--by", "network,team", "--json",
         "--config", str(appliance.config)]).stdout)
    assert sorted((r["network"], r["team"], r["requests"]) for r in usage["rows"]) == [
        ("office", "payments", 3), ("office-v6", "payments", 1)], usage

    # QUIC to a provider, both families: refused (ICMP), so clients fall back to TCP.
    assert appliance.python(QUIC, vpc.PROVIDER, vpc.PROVIDER6) == {
        vpc.PROVIDER: "refused", vpc.PROVIDER6: "refused"}

    # Not a provider: forwarded, and answered although the provider side has no route back
    # to the client subnet — the appliance masqueraded it. Not inspected, not recorded.
    r = appliance.curl(f"http://{PLAIN}:8000/v1/models")
    assert r.returncode == 0 and json.loads(r.stdout)["object"] == "list", r.stderr
    assert len(appliance.records()) == 4

    # `sluice doctor` sees the capture in place.
    d = appliance.doctor()
    assert d.returncode == 0 and "nftables table inet sluice: present" in d.stdout, d.stdout

    # A root user on the appliance wipes the firewall and the policy routes (a firewall
    # reload would do the same): for a moment provider traffic is routed on, so Sluice
    # puts the capture back within seconds and counts it.
    vpc.appliance.run(["nft", "flush", "ruleset"])
    vpc.appliance.run(["ip", "rule", "del", "fwmark", "0x534d", "lookup", "21325"])
    deadline = time.monotonic() + 10
    while appliance.doctor().returncode != 0:
        assert time.monotonic() < deadline, appliance.doctor().stdout
        time.sleep(0.2)
    r = appliance.curl_chat("after the flush")
    assert r.returncode == 0 and "Mock reply to: after the flush" in r.stdout, r.stderr
    assert appliance.wait_records(5)[-1]["identity"]["network"]["name"] == "office"
    assert appliance.metric('sluice_appliance_events_total{event="reinstalled"}') >= 1

    # Subtler: the table stays, but its provider set is emptied and the policy table's
    # route flushed. A check that only looks for the table would pass while every provider
    # call went straight past Sluice; the capture is compared with what Sluice installed.
    vpc.appliance.run(["nft", "flush", "set", "inet", "sluice", "providers4"])
    vpc.appliance.run(["ip", "route", "flush", "table", "21325"])
    # Both are waited for: the two wipes are two commands, and a repair that runs between
    # them (every 2 s) refills the set while the route is still there; the route it then
    # misses comes back with the next one.
    def repaired():
        refilled = vpc.PROVIDER in vpc.appliance.run(
            ["nft", "list", "set", "inet", "sluice", "providers4"]).stdout
        routed = "local default" in vpc.appliance.run(
            ["ip", "route", "show", "table", "21325"]).stdout
        return refilled, routed

    deadline = time.monotonic() + 10
    while repaired() != (True, True):
        assert time.monotonic() < deadline, f"(set refilled, route back) = {repaired()}"
        time.sleep(0.2)
    r = appliance.curl_chat("after the set was emptied")
    assert r.returncode == 0 and "Mock reply to: after the set was emptied" in r.stdout, r.stderr
    assert len(appliance.wait_records(6)) == 6
    assert appliance.metric('sluice_appliance_events_total{event="reinstalled"}') >= 2


def test_a_restart_refuses_provider_traffic_and_loses_nothing(appliance):
    vpc = appliance.vpc
    for i in range(3):
        assert appliance.curl_chat(f"before {i}").returncode == 0
    assert len(appliance.wait_records(3)) == 3
    served = appliance.mock_requests()
    appliance.stop()

    # Sluice is down: the kernel side stays (on_stop: keep) and refuses provider TCP; the
    # provider never sees the call, unaudited.
    r = appliance.curl_chat("while down")
    assert r.returncode != 0, r.stdout
    assert appliance.mock_requests() == served
    # Other traffic still flows.
    assert appliance.curl(f"http://{PLAIN}:8000/v1/models").returncode == 0

    # Back in drop mode: providers are served again, everything else is dropped.
    appliance.write_config("drop")
    appliance.start()
    assert appliance.curl_chat("after").returncode == 0
    assert appliance.curl(f"http://{PLAIN}:8000/v1/models").returncode != 0
    rows = appliance.wait_records(4)
    texts = [m["content"] for x in rows for m in x["request"]["messages"]]
    assert texts == ["before 0", "before 1", "before 2", "after"], texts
    v = vpc.appliance.run([str(sluice_bin()), "audit", "verify", "--config",
                           str(appliance.config)], check=False)
    assert v.returncode == 0, v.stdout + v.stderr


def test_a_provider_that_moves_is_followed(appliance):
    """The provider's name starts resolving to a new address (a DNS change): the appliance's
    refresh puts it in the kernel's set within seconds, and calls to it are captured — not
    routed past Sluice because the set was stale."""
    vpc = appliance.vpc
    assert appliance.curl_chat("old address").returncode == 0
    vpc.appliance.hosts({OPENAI: vpc.MOVED, ANTHROPIC: vpc.PROVIDER6})
    vpc.client.hosts({OPENAI: vpc.MOVED, ANTHROPIC: vpc.PROVIDER6, PLAIN: vpc.OTHER})
    deadline = time.monotonic() + 15
    while vpc.MOVED not in vpc.appliance.run(["nft", "list", "set", "inet", "sluice",
                                              "providers4"]).stdout:
        assert time.monotonic() < deadline, "the provider's new address never reached the set"
        time.sleep(0.2)
    r = appliance.curl_chat("new address")
    assert r.returncode == 0 and "Mock reply to: new address" in r.stdout, r.stderr
    rows = appliance.wait_records(2)
    assert [x["upstream"]["addr"] for x in rows] == [f"{vpc.PROVIDER}:443", f"{vpc.MOVED}:443"]
    assert appliance.metric('sluice_appliance_events_total{event="set_updated"}') >= 1
