"""A running Sluice stack on the test topology: mock provider, proxy, client netns.

Layout (all made by the test, removed after it):

    client netns  ──veth──▶  root netns: `sluice run` on topo.client_gw:443
      /etc/hosts: provider names → client_gw          │ static original destinations
                                                       ▼
                                  provider netns: `sluice-mock` on provider_addr:443
                                  (TLS, its own test CA, certificate for INSPECTED + PASSTHROUGH)

`api.mistral.ai` is routed to the mock too, whose certificate does not cover it: the
upstream certificate check must fail closed. `unknown.example` resolves to the proxy but has
no destination: it must be refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from netns import Proc, free_port, mock_bin, run, sluice_bin, wait_for_port

BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
INSPECTED = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com",
             "myres.openai.azure.com", BEDROCK]
PASSTHROUGH = "pass.example"
BAD_CERT = "api.mistral.ai"
UNKNOWN = "unknown.example"
PLAIN = "llm.internal"  # a self-hosted OpenAI-compatible server over plain HTTP
PLAIN_PORT = 8000
DEFAULT_PROVIDERS = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com",
                     "*.openai.azure.com", "api.mistral.ai", BEDROCK]


CHAT = """
import json, openai
key, model, texts = json.loads(ARGS)
c = openai.OpenAI(api_key=key, max_retries=0)
out = []
for t in texts:
    try:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": t}])
        out.append("ok")
    except openai.APIStatusError as e:
        out.append(e.status_code)
print(json.dumps(out))
"""


class Stack:
    """The proxy, the mock provider and helpers to drive clients and read records."""

    def __init__(self, topo, tmp_path: Path, extra_config: str = "", start: bool = True,
                 static_dst: bool = True, hosts_to: str | None = None,
                 listen: list[str] | None = None, peer: Stack | None = None):
        """`static_dst=False` leaves out the static destination table (another source must
        know); `hosts_to` points the client's provider names elsewhere than the proxy;
        `peer`: another node of the same fleet, whose mock provider and organisation CA
        this one shares (give it its own `listen`)."""
        self.topo = topo
        self.dir = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.state = tmp_path / "state"
        self.mock_addr = f"{topo.provider_addr}:443"
        if peer is not None:
            self.provider_ca = peer.provider_ca
            self.mock = self.plain_mock = None
        else:
            self.provider_ca = tmp_path / "provider-ca.pem"
            self._start_mocks(topo, tmp_path)
        self.metrics_port = free_port("127.0.0.1")
        static = "\n".join(
            f"    {h}: \"{self.mock_addr}\"" for h in INSPECTED + [PASSTHROUGH, BAD_CERT]
        ) + f"\n    {PLAIN}: \"{topo.provider_addr}:{PLAIN_PORT}\""
        providers = "\n".join(f"  - host: \"{h}\"" for h in DEFAULT_PROVIDERS) + (
            f"\n  - host: {PLAIN}\n    tls: false\n    adapter: openai_compatible")
        self.config = tmp_path / "sluice.yaml"
        listen = listen or [f"{topo.client_gw}:443"]
        host, _, port = listen[0].rpartition(":")
        self.listen_addr = (host.strip("[]"), int(port))
        self.config.write_text(
            f"""listen: {json.dumps(listen)}
metrics_listen: "127.0.0.1:{self.metrics_port}"
state_dir: "{self.state}"
upstream:
  ca_file: "{self.provider_ca}"
providers:
{providers}
passthrough: ["{PASSTHROUGH}"]
{"original_dst:" + chr(10) + "  static:" + chr(10) + static if static_dst else ""}
{extra_config}"""
        )
        if peer is None:
            subprocess.run([sluice_bin(), "ca", "init", "--config", str(self.config)], check=True,
                           capture_output=True)
        else:
            (self.state / "ca").mkdir(parents=True)
            for name in ("ca.crt", "ca.key"):
                shutil.copy2(peer.state / "ca" / name, self.state / "ca" / name)
        self.org_ca = self.state / "ca" / "ca.crt"
        self.proxy = None
        if start:
            self.start_proxy()
        topo.client.hosts({h: hosts_to or topo.client_gw
                           for h in INSPECTED + [PASSTHROUGH, BAD_CERT, UNKNOWN, PLAIN]})

    def _start_mocks(self, topo, tmp_path: Path):
        self.mock = Proc(
            [
                "ip", "netns", "exec", topo.provider.name, mock_bin(),
                "--listen", self.mock_addr,
                "--tls-hosts", ",".join(INSPECTED + [PASSTHROUGH]),
                "--ca-out", str(self.provider_ca),
            ],
            tmp_path / "mock.log",
        )
        self.plain_mock = Proc(
            ["ip", "netns", "exec", topo.provider.name, mock_bin(),
             "--listen", f"{topo.provider_addr}:{PLAIN_PORT}"],
            tmp_path / "mock-plain.log",
        )
        wait_for_port(topo.provider_addr, 443, timeout=20, netns=topo.provider)
        wait_for_port(topo.provider_addr, PLAIN_PORT, timeout=20, netns=topo.provider)

    def start_proxy(self):
        self.proxy = Proc([sluice_bin(), "run", "--config", str(self.config)],
                          self.dir / f"proxy-{time.monotonic_ns()}.log",
                          env={**os.environ, "SLUICE_LOG": os.environ.get("SLUICE_TEST_LOG", "info")})
        wait_for_port(*self.listen_addr, timeout=30)

    # --- clients -------------------------------------------------------------------------

    def client_env(self, ca: Path | None = None) -> dict:
        ca = str(ca or self.org_ca)
        env = {k: v for k, v in os.environ.items() if not k.endswith("_PROXY") and not k.endswith("_proxy")}
        env.update({"SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "CURL_CA_BUNDLE": ca})
        return env

    def python(self, script: str, timeout: float = 60, check: bool = True, ca: Path | None = None,
               env: dict | None = None):
        """Run a Python snippet in the client netns; return its stdout parsed as JSON. `env`
        adds variables to the client environment."""
        r = self.topo.client.run([sys.executable, "-c", script],
                                 env={**self.client_env(ca), **(env or {})},
                                 timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"client script failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def chat(self, key: str, texts: list[str], model: str = "gpt-4o-mini") -> list:
        """One chat completion per text through the openai SDK with `key`, from the
        client netns; each answer's outcome: "ok" or the HTTP status the SDK raised."""
        return self.python(CHAT.replace("ARGS", repr(json.dumps([key, model, texts]))))

    def curl(self, *args: str, ca: Path | None = None, check: bool = True, timeout: float = 60):
        """Run curl in the client netns; returns the CompletedProcess."""
        r = self.topo.client.run(
            ["curl", "--silent", "--show-error", "--max-time", "30", "--cacert",
             str(ca or self.org_ca), *args],
            env=self.client_env(ca), timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"curl failed ({r.returncode}): {r.stderr}")
        return r

    # --- records and metrics -------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = 60):
        """Run a `sluice` subcommand against this stack's config."""
        return run([str(sluice_bin()), *args, "--config", str(self.config)], timeout=timeout,
                   check=check)

    def all_records(self) -> list[dict]:
        """Every record in the ledger, oldest first (through `sluice events tail --json`)."""
        out = self.cli("events", "tail", "--json", "--limit", "1000000").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return sorted(rows, key=lambda r: r["seq"])

    def wait_records(self, n: int, kind: str | None = None, timeout: float = 15) -> list[dict]:
        """Wait until at least n records (of kind) exist; return those of that kind."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in self.all_records() if kind is None or r["kind"] == kind]
            if len(rows) >= n or time.monotonic() > deadline:
                assert len(rows) >= n, f"expected {n} {kind or ''} records, got {len(rows)}: {rows}"
                return rows
            time.sleep(0.05)

    def newest_since(self, before: int, kind: str, timeout: float = 15) -> dict:
        """The newest record of `kind` among those after the first `before` records, waiting
        for the indexer (queries read the index, a few milliseconds behind the WAL)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [x for x in self.all_records()[before:] if x["kind"] == kind]
            if rows or time.monotonic() > deadline:
                assert rows, f"no {kind} record after the first {before}"
                return rows[-1]
            time.sleep(0.05)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def http_get(self, path: str) -> tuple[int, str]:
        """Status and body of GET `path` on the metrics port (/readyz, /healthz)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, series: str) -> float:
        """Value of one series, written exactly as exposed (labels sorted by name), e.g.
        'sluice_connections_refused_total{reason="no_destination"}'; 0 when absent."""
        for line in self.metrics().splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return 0.0

    def mock_requests(self) -> list[dict]:
        """What the mock provider received (asked directly, in the provider netns)."""
        r = self.topo.provider.run(
            ["curl", "--silent", "--cacert", str(self.provider_ca), "--resolve",
             f"api.openai.com:443:{self.topo.provider_addr}",
             "https://api.openai.com/__mock/requests"], check=True)
        return json.loads(r.stdout)

    def alive(self) -> bool:
        return self.proxy.poll() is None
