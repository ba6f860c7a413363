"""A fleet: three `sluice run` instances on this machine (their own state directories,
listeners, metrics ports and node ids, one organisation CA) sharing budgets and rate limits
through one real Redis (Debian's `redis-server`, started once per run), with the official
openai SDK sending concurrently to all three.

    client netns: api.openai.com → client_gw      node-0  client_gw:P0 ─┐
    SDK clients spread over :P0 :P1 :P2     ──▶   node-1  client_gw:P1 ─┼─▶ mock provider
                                                  node-2  client_gw:P2 ─┘
                                                     │  Lua scripts
                                                     ▼
                                                   redis-server 127.0.0.1

Each test has its own key prefix in Redis, so they share the server without sharing
counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from netns import free_port, sluice_bin
from servers import wait_until
from sluice_stack import Stack

MODEL = "gpt-4o-mini"


def fleet(topo, tmp_path, redis, policies: list[str], lease_ttl_ms: int = 30000) -> tuple[list[Stack], str]:
    """One node per entry of `policies` (that node's `policy.policies` YAML items)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    nodes: list[Stack] = []
    for i, policy in enumerate(policies):
        port = free_port(topo.client_gw)
        extra = f"""fleet:
  node_id: node-{i}
  nodes: {len(policies)}
  redis:
    url: "{redis.url}"
    timeout_ms: 200
    lease_ttl_ms: {lease_ttl_ms}
    prefix: "{prefix}"
policy:
  policies:
{policy}"""
        nodes.append(Stack(topo, tmp_path / f"node-{i}", extra_config=extra,
                           listen=[f"{topo.client_gw}:{port}"], peer=nodes[0] if nodes else None))
    return nodes, prefix


def doctor(node: Stack) -> str:
    """`sluice doctor --config` of a node: its output (the exit code also covers the host's
    eBPF checks)."""
    return subprocess.run([str(sluice_bin()), "doctor", "--config", str(node.config)],
                          capture_output=True, text=True, timeout=60).stdout


def port(node: Stack) -> int:
    return node.listen_addr[1]


def interactions(node: Stack) -> list[dict]:
    return [r for r in node.all_records() if r["kind"] == "interaction"]


def budget_hash(redis, prefix: str, name: str) -> dict:
    """The shared budget's hash in Redis (keys are named by a hash of the counter)."""
    h = hashlib.sha256(f"shared:{name}".encode()).hexdigest()[:32]
    out = redis.cli("--no-raw", "HGETALL", f"{prefix}:{{b:{h}}}")
    items = [line.split(") ", 1)[-1].strip('"') for line in out.splitlines() if line.strip()]
    return {items[i]: float(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def clear_of_minute_end(margin: float = 20):
    """Rate windows are per minute: start a count early enough in one to end in it."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.5)


CALL = """
import json, openai
out = []
for port in PORTS:
    c = openai.OpenAI(base_url=f"https://api.openai.com:{port}/v1", api_key="sk-fleet-client", max_retries=0)
    try:
        c.chat.completions.create(model="MODEL", max_tokens=60, messages=[{"role": "user", "content": "count me"}])
        out.append([200, None])
    except openai.APIStatusError as e:
        out.append([e.status_code, e.response.headers.get("retry-after")])
print(json.dumps(out))
"""


def call(*nodes: Stack, times: int = 1) -> list[list]:
    """One request to each of `nodes` in turn (`times` rounds): [status, Retry-After]."""
    ports = [port(n) for n in nodes] * times
    return nodes[0].python(CALL.replace("PORTS", json.dumps(ports)).replace("MODEL", MODEL))


# Plain, streamed and cancelled requests from 4 threads per node, each until its rounds
# are done (most end refused once the budget is spent).
SPEND = """
import json, threading, openai
ports = PORTS
results, lock = [], threading.Lock()
def worker(port, w):
    c = openai.OpenAI(base_url=f"https://api.openai.com:{port}/v1", api_key="sk-fleet-client", max_retries=0)
    h = {"x-mock-chunks": "50"}
    msgs = [{"role": "user", "content": f"spend from worker {w} on {port}"}]
    for r in range(ROUNDS):
        kind = (w + r) % 3
        try:
            if kind == 0:
                c.chat.completions.create(model="MODEL", max_tokens=60, messages=msgs, extra_headers=h)
            elif kind == 1:
                s = c.chat.completions.create(model="MODEL", max_tokens=60, messages=msgs, extra_headers=h,
                    stream=True, stream_options={"include_usage": True})
                for _ in s:
                    pass
            else:
                s = c.chat.completions.create(model="MODEL", max_tokens=60, messages=msgs, stream=True,
                    extra_headers={**h, "x-mock-delay-ms": "20"})
                it = iter(s)
                next(it); next(it)
                s.close()
            out = ["ok", kind]
        except openai.APIStatusError as e:
            out = [e.status_code, kind]
        with lock:
            results.append(out)
threads = [threading.Thread(target=worker, args=(p, w)) for p in ports for w in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def test_a_shared_budget_holds_across_three_nodes_under_concurrent_spend(topo, tmp_path, redis_server):
    cap = 0.001
    policy = f"""    - id: team-budget
      budget: {{usd: {cap}, period: day, shared: team}}
"""
    nodes, prefix = fleet(topo, tmp_path, redis_server, [policy] * 3)
    script = SPEND.replace("PORTS", json.dumps([port(n) for n in nodes])).replace(
        "ROUNDS", "8").replace("MODEL", MODEL)
    results = nodes[0].python(script, timeout=120)
    assert len(results) == 96
    statuses = [s for s, _ in results]
    assert statuses.count("ok") >= 10, statuses
    assert 429 in statuses, "the budget ran out"
    assert set(statuses) <= {"ok", 429}, statuses

    # Every node's records, settled: what was spent fleet-wide never passed the cap (each
    # request reserved its worst case, and none cost more than it: output ≤ max_tokens).
    def settled():
        rows = [r for n in nodes for r in interactions(n)]
        return rows if len(rows) == 96 else None
    rows = wait_until(settled, what="96 interaction records over the three nodes")
    spent = sum(r["cost_usd"] or 0 for r in rows)
    assert 0 < spent <= cap + 1e-12, spent
    # One budget for the three: served on more than one node, and refused on every node
    # once spent (which node's requests win the race for the budget is the scheduler's).
    served = [n for n in nodes if any(r["outcome"] != "refused" and r["status"] == 200 for r in interactions(n))]
    assert len(served) >= 2, "the budget was served on one node only"
    assert all(any(r["status"] == 429 for r in interactions(n)) for n in nodes), "a node never saw the budget run out"
    outcomes = {r["outcome"] for r in rows}
    assert {"success", "cancelled"} <= outcomes, outcomes
    refused = [r for r in rows if r["status"] == 429]
    assert refused and all("budget_exceeded" in r["reason_codes"] for r in refused)

    # Redis agrees to the cent: every settlement counted once, no reservation left over.
    h = wait_until(lambda: (lambda b: b if abs(sum(v for k, v in b.items() if k.startswith("spent:")) - spent) < 1e-9
                            else None)(budget_hash(redis_server, prefix, "team")),
                   what="Redis's spend to match the ledgers'")
    assert all(abs(v) < 1e-9 for k, v in h.items() if k.startswith("reserved:")), h


def test_a_shared_rate_limit_holds_across_nodes_with_retry_after(topo, tmp_path, redis_server):
    policy = """    - id: rl
      rate_limit: {requests_per_minute: 6}
"""
    nodes, _ = fleet(topo, tmp_path, redis_server, [policy] * 3)
    clear_of_minute_end()
    answers = call(*nodes, times=3)
    assert [s for s, _ in answers] == [200] * 6 + [429] * 3, answers
    assert all(1 <= int(r) <= 60 for s, r in answers if s == 429), answers
    refused = wait_until(lambda: (lambda rs: rs if len(rs) == 3 else None)(
        [r for n in nodes for r in interactions(n) if r["status"] == 429]), what="3 refusal records")
    assert all(r["reason_codes"] == ["rate_limit_requests"] for r in refused), refused
    assert {r["identity"].get("api_key_fingerprint") for r in refused} != {None}


SLOW = """
import sys, openai
c = openai.OpenAI(base_url="https://api.openai.com:PORT/v1", api_key="sk-fleet-client", max_retries=0)
s = c.chat.completions.create(model="MODEL", stream=True, messages=[{"role": "user", "content": "slow"}],
    extra_headers={"x-mock-chunks": "200", "x-mock-delay-ms": "200"})
for i, _ in enumerate(s):
    if i == 0:
        print("streaming", flush=True)
"""


def test_a_killed_nodes_concurrency_slots_expire(topo, tmp_path, redis_server):
    policy = """    - id: one-at-a-time
      rate_limit: {concurrent: 1}
"""
    # A lease long enough that the check right after the kill (a new SDK process) lands
    # inside it even on a loaded machine; renewals come every third of it.
    lease_s = 5
    nodes, _ = fleet(topo, tmp_path, redis_server, [policy] * 2, lease_ttl_ms=lease_s * 1000)
    slow = topo.client.popen([sys.executable, "-c", SLOW.replace("PORT", str(port(nodes[0]))).replace("MODEL", MODEL)],
                             env=nodes[0].client_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert slow.stdout.readline().strip() == "streaming"
        # Longer than a lease: the live request's slot is renewed, not lost.
        time.sleep(lease_s + 1)
        assert call(nodes[1])[0][0] == 429
        # The node dies mid-request: nothing releases its slot...
        os.killpg(nodes[0].proxy.pid, signal.SIGKILL)
        nodes[0].proxy.popen.wait(10)
        assert call(nodes[1])[0][0] == 429, "the lease outlives the node for up to lease_ttl_ms"
        # ...until its lease runs out.
        wait_until(lambda: call(nodes[1])[0][0] == 200, timeout=20, what="the dead node's lease to expire")
        refused = wait_until(lambda: [r for r in interactions(nodes[1]) if r["status"] == 429],
                             what="the refusal records")
        assert all(r["reason_codes"] == ["concurrency_limit"] for r in refused)
    finally:
        slow.kill()
        slow.wait()


def test_each_failure_mode_when_redis_stops_and_returns(topo, tmp_path, redis_server):
    def policy(mode: str) -> str:
        return f"""    - id: fleet-limits
      on_counter_store_unavailable: {mode}
      rate_limit: {{requests_per_minute: 30}}
      budget: {{usd: 1.0, period: day, shared: ops}}
"""
    nodes, prefix = fleet(topo, tmp_path, redis_server,
                          [policy("fail_closed"), policy("fail_open"), policy("local")])
    closed, open_, local = nodes
    clear_of_minute_end(30)
    assert [s for s, _ in call(*nodes)] == [200, 200, 200]
    for n in nodes:
        assert n.metric('sluice_counter_store_up{store="redis"}') == 1
    assert "[ ok ] fleet redis: answers" in doctor(closed)

    redis_server.stop()
    try:
        assert "[FAIL] fleet redis: does not answer" in doctor(closed)
        assert call(closed, times=2) == [[503, "1"], [503, "1"]], "fail_closed refuses without the shared counters"
        assert [s for s, _ in call(open_, times=3)] == [200] * 3, "fail_open serves"
        # local: this node's third of 30/min.
        assert [s for s, _ in call(local, times=12)] == [200] * 10 + [429] * 2
        for n in nodes:
            assert n.metric('sluice_counter_store_up{store="redis"}') == 0
        assert closed.metric('sluice_counter_store_fallbacks_total{mode="fail_closed"}') >= 2
        assert local.metric("sluice_counter_store_pending") == 10, "spend queued for reconciliation"
    finally:
        redis_server.start()

    # Back: probes find it, queued spend is pushed, fail_closed serves again.
    for n in nodes:
        wait_until(lambda n=n: n.metric('sluice_counter_store_up{store="redis"}') == 1
                   and n.metric("sluice_counter_store_pending") == 0, what="the fleet to reconnect")
    assert call(closed)[0][0] == 200

    counts = {closed.config: 4, open_.config: 4, local.config: 13}
    rows = wait_until(lambda: (lambda rs: rs if all(len(rs[k]) == v for k, v in counts.items()) else None)(
        {n.config: interactions(n) for n in nodes}), what="every node's records")
    c_rows, o_rows = rows[closed.config], rows[open_.config]
    assert [r["status"] for r in c_rows].count(503) == 2
    assert all(r["reason_codes"] == ["counter_store_unavailable"] for r in c_rows if r["status"] == 503)
    assert sum("counter_store_unavailable" in r["reason_codes"] for r in o_rows) == 3
    # Everything spent, before, during and after the outage, is in Redis exactly once.
    total = sum(r["cost_usd"] or 0 for rs in rows.values() for r in rs)
    wait_until(lambda: abs(sum(v for k, v in budget_hash(redis_server, prefix, "ops").items()
                               if k.startswith("spent:")) - total) < 1e-9,
               what="Redis's spend to match every node's ledger")


def test_a_bad_fleet_section_is_refused_with_the_key_named(tmp_path):
    config = tmp_path / "sluice.yaml"
    config.write_text("""listen: ["127.0.0.1:0"]
fleet:
  nodes: 0
  redis:
    url: "http://redis.example:6379"
    lease_ttl_ms: 10
""")
    r = subprocess.run([str(sluice_bin()), "policy", "lint", "--file", str(config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    for key in ("fleet.nodes", "fleet.redis.url", "fleet.redis.lease_ttl_ms", "redis://host:6379"):
        assert key in r.stdout + r.stderr, (key, r.stdout, r.stderr)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
