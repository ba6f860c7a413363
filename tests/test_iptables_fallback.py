"""The fallback for hosts without cgroup BPF (what `sluice doctor` offers): iptables
REDIRECT rules send provider traffic to Sluice, which asks the kernel for each
connection's destination with getsockopt(SO_ORIGINAL_DST). No static table, no probe:
the destination can only come from the kernel.

- pods / routed clients: a PREROUTING rule on the client's veth; the unmodified openai SDK
  and curl in the client netns, resolving the provider to its real address, are captured;
- host processes: an OUTPUT rule that skips Sluice's own marked upstream sockets (no loop);
- traffic no rule matches (the plain-HTTP port of the same address) is untouched.
"""

from __future__ import annotations

import contextlib
import json
import subprocess

import pytest

from sluice_stack import Stack

MARK = "0x534c"


@contextlib.contextmanager
def nat_rule(*spec: str):
    """An iptables nat rule in the root netns, removed afterwards whatever happens."""
    subprocess.run(["iptables", "-t", "nat", "-A", *spec], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-t", "nat", "-D", *spec], check=False, capture_output=True)


@pytest.fixture
def stack(topo, tmp_path):
    # 127.0.0.1:443 too: an OUTPUT REDIRECT sends host connections to loopback.
    s = Stack(topo, tmp_path, static_dst=False, hosts_to=topo.provider_addr,
              listen=[f"{topo.client_gw}:443", "127.0.0.1:443"],
              extra_config="original_dst:\n  so_original_dst: true\n")
    yield s
    assert s.alive()


def test_prerouting_redirect_captures_pod_traffic_through_so_original_dst(stack, topo):
    topo.enable_forwarding()  # what no rule matches is routed on to the provider
    rule = ("PREROUTING", "-i", topo.client.name, "-p", "tcp", "-d", topo.provider_addr,
            "--dport", "443", "-j", "REDIRECT", "--to-ports", "443")
    with nat_rule(*rule):
        out = stack.python("""
import json, openai
c = openai.OpenAI(api_key="sk-client", max_retries=0)
r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "via nat"}])
print(json.dumps({"text": r.choices[0].message.content}))
""")
        assert out["text"] == "Mock reply to: via nat"
        # Not redirected (no rule for this port): straight to the plain mock, unseen.
        r = stack.curl("-sS", "http://llm.internal:8000/v1/models", check=True)
        assert json.loads(r.stdout)["object"] == "list"
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["upstream"]["addr"] == f"{topo.provider_addr}:443"
    assert rec["identity"]["client_addr"].startswith(topo.client_addr)
    assert rec["outcome"] == "success"
    seen = [r for r in stack.all_records() if r["kind"] == "interaction"]
    assert len(seen) == 1, "the plain-HTTP call bypassed Sluice"


def test_output_redirect_captures_host_processes_without_looping(stack, topo):
    # Sluice's upstream connection leaves from this netns too: the mark keeps it out.
    rule = ("OUTPUT", "-p", "tcp", "-d", topo.provider_addr, "--dport", "443",
            "-m", "mark", "!", "--mark", MARK, "-j", "REDIRECT", "--to-ports", "443")
    with nat_rule(*rule):
        r = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(stack.org_ca),
             "--resolve", f"api.openai.com:443:{topo.provider_addr}",
             "-H", "content-type: application/json", "--data-binary",
             '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"from the host"}]}',
             "https://api.openai.com/v1/chat/completions"],
            capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["choices"][0]["message"]["content"] == "Mock reply to: from the host"
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["upstream"]["addr"] == f"{topo.provider_addr}:443"
    # The org CA was presented (curl trusted only it), so Sluice terminated TLS: captured.
    # A host process: its source is this host's address on the route to the provider.
    assert rec["identity"]["client_addr"].startswith(f"{topo.provider_gw}:")
