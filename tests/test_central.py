"""The fleet's central ledger: three `sluice run` instances ship their ledgers to one real
PostgreSQL (Debian's, started once per run; each test in its own database) while the
openai SDK sends to all three — through a SIGKILL of one instance and a restart of
PostgreSQL — and the central store ends up with every record exactly once, each node's
chain intact: `sluice audit verify --central` passes, and names the node and seq of a row
edited or deleted in PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

from netns import free_port, sluice_bin
from servers import wait_until
from sluice_stack import Stack

CALLS = """
import json, openai
for port in PORTS:
    c = openai.OpenAI(base_url=f"https://api.openai.com:{port}/v1", api_key="sk-central", max_retries=0)
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"to the center via {port}"}])
print(json.dumps({"ok": True}))
"""


def nodes_with_central(topo, tmp_path, url: str, n: int = 3) -> tuple[list[Stack], list[str]]:
    ids = [f"node-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    nodes: list[Stack] = []
    for i, node_id in enumerate(ids):
        extra = f"""fleet:
  node_id: {node_id}
ledger:
  checkpoint_every: 5
  central:
    url: "{url}"
    batch: 4
    interval_ms: 200
"""
        nodes.append(Stack(topo, tmp_path / node_id, extra_config=extra,
                           listen=[f"{topo.client_gw}:{free_port(topo.client_gw)}"],
                           peer=nodes[0] if nodes else None))
    return nodes, ids


def traffic(nodes: list[Stack], rounds: int = 1):
    ports = [n.listen_addr[1] for n in nodes] * rounds
    assert nodes[0].python(CALLS.replace("PORTS", json.dumps(ports))) == {"ok": True}


def central(pg, db: str, query: str) -> list[list[str]]:
    out = pg.sql(query, db=db)
    return [line.split("|") for line in out.splitlines() if line]


def verify(node: Stack, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(sluice_bin()), "audit", "verify", "--central", *extra,
                           "--config", str(node.config)], capture_output=True, text=True, timeout=60)


def test_every_record_of_three_nodes_reaches_postgres_once_through_a_kill_and_a_restart(
        topo, tmp_path, postgres_server):
    db = f"central_{uuid.uuid4().hex[:8]}"
    url = postgres_server.database(db)
    nodes, ids = nodes_with_central(topo, tmp_path, url)
    traffic(nodes, rounds=3)

    # One node dies without a word and comes back: its ledger recovers from the WAL,
    # and shipping resumes where PostgreSQL says it stopped.
    os.killpg(nodes[1].proxy.pid, signal.SIGKILL)
    nodes[1].proxy.popen.wait(10)
    traffic([nodes[0], nodes[2]])
    nodes[1].start_proxy()
    traffic(nodes)

    # PostgreSQL goes away and returns: records wait on the nodes, then arrive.
    postgres_server.stop()
    try:
        traffic(nodes, rounds=2)
    finally:
        postgres_server.start()
    traffic(nodes)

    # What each node served (node 1 missed one round while dead), indexed locally first.
    for node, expected in zip(nodes, (8, 7, 8)):
        node.wait_records(expected, "interaction")

    def caught_up():
        for node, node_id in zip(nodes, ids):
            local = {r["seq"]: r["hash"] for r in node.all_records()}
            rows = central(postgres_server, db,
                           f"SELECT seq, hash FROM sluice_records WHERE node_id = '{node_id}' ORDER BY seq")
            if {int(s): h for s, h in rows} != local:
                return False
        return True
    wait_until(caught_up, timeout=60, what="every node's records in PostgreSQL")
    # Exactly once, and each node's chain from its first record.
    for node_id in ids:
        [[count, distinct, first, last]] = central(
            postgres_server, db, f"SELECT count(*), count(DISTINCT seq), min(seq), max(seq) "
                                 f"FROM sluice_records WHERE node_id = '{node_id}'")
        assert count == distinct and first == "1" and int(last) == int(count), (node_id, count, first, last)
    for node in nodes:
        assert node.metric("sluice_central_lag_records") == 0
        assert node.metric("sluice_central_shipped_total") > 0

    doctor = subprocess.run([str(sluice_bin()), "doctor", "--config", str(nodes[0].config)],
                            capture_output=True, text=True, timeout=60).stdout
    assert "[ ok ] central ledger: PostgreSQL answers, schema version 3" in doctor, doctor
    r = verify(nodes[0])
    assert r.returncode == 0, r.stdout + r.stderr
    for node_id in ids:
        assert f"ok: node {node_id}:" in r.stdout, r.stdout
    assert "HMACs not checked" in r.stdout or "HMACs ok" in r.stdout

    # The same filters read the whole fleet.
    out = nodes[2].cli("events", "tail", "--central", "--json", "--limit", "100000",
                       "--kind", "interaction").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert {r["node_id"] for r in rows} == set(ids)
    assert len(rows) == 8 + 7 + 8

    # ...and export it, node by node in seq order; syslog names each record's node.
    out = nodes[2].cli("audit", "export", "--central", "--format", "jsonl").stdout
    exported = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(exported) == sum(len(n.all_records()) for n in nodes)
    assert [(r["node_id"], r["seq"]) for r in exported] == sorted((r["node_id"], r["seq"]) for r in exported)
    syslog = nodes[2].cli("audit", "export", "--central", "--format", "syslog").stdout.splitlines()
    assert len(syslog) == len(exported) and all(line.split(" ")[2] in ids for line in syslog), syslog[:2]

    # ...and report on it: the usage report sums every node's interactions, and the
    # change report lists each node's admin records with its node.
    usage = json.loads(nodes[1].cli("report", "--central", "--type", "usage", "--json").stdout)
    assert sum(r["requests"] for r in usage["rows"]) == 8 + 7 + 8, usage
    local_cost = sum(r.get("cost_usd") or 0 for n in nodes for r in n.all_records() if r["kind"] == "interaction")
    assert abs(sum(r["cost_usd"] for r in usage["rows"]) - local_cost) < 1e-9
    local = [r for n in nodes for r in n.all_records() if r["kind"] == "interaction"]
    for k in ("input_tokens", "output_tokens"):
        assert sum(r[k] for r in usage["rows"]) == sum(r["usage"][k] for r in local), (k, usage)
    assert min(r["first_seen"] for r in usage["rows"]) == min(r["ts"] for r in local)
    assert max(r["last_seen"] for r in usage["rows"]) == max(r["ts"] for r in local)
    # One client, many connections and processes: one principal, never a row per request.
    assert len(usage["rows"]) == 1 and usage["columns"][0] == "principal", usage
    assert usage["totals"]["requests"] == 8 + 7 + 8
    by_node = json.loads(nodes[1].cli("report", "--central", "--type", "usage", "--by", "node,model",
                                      "--json").stdout)
    assert sorted((r["node"], r["requests"]) for r in by_node["rows"]) == sorted(zip(ids, (8, 7, 8))), by_node
    top = json.loads(nodes[1].cli("report", "--central", "--type", "usage", "--by", "node", "--top", "1",
                                  "--json").stdout)
    assert [r["node"] for r in top["rows"]][1:] == ["(others)"] and top["rows"][1]["requests"] == 15, top
    text = nodes[1].cli("report", "--central", "--type", "usage", "--by", "provider").stdout
    assert "PROVIDER" in text and "total: 23 requests in 1 groups" in text, text
    bad = nodes[1].cli("report", "--type", "usage", "--by", "pid", check=False)
    assert bad.returncode != 0 and "`pid` is not a grouping" in bad.stderr, bad.stderr
    access = json.loads(nodes[1].cli("report", "--central", "--type", "access", "--json").stdout)
    assert {(r["provider"], r["model"]) for r in access["rows"]} == {("openai", "gpt-4o-mini")}
    change = json.loads(nodes[1].cli("report", "--central", "--type", "change", "--json").stdout)
    assert change["columns"][0] == "node_id" and {r["node_id"] for r in change["rows"]} == set(ids)
    assert "node_id" in nodes[1].cli("report", "--central", "--type", "change").stdout.splitlines()[2].lower()

    # Rows lost centrally (say, a restore from an older backup) are sent again.
    postgres_server.sql(f"DELETE FROM sluice_records WHERE node_id = '{ids[0]}' "
                        f"AND seq > (SELECT max(seq) - 3 FROM sluice_records WHERE node_id = '{ids[0]}')", db=db)
    nodes[0].proxy.stop(timeout=30)
    nodes[0].start_proxy()
    wait_until(caught_up, timeout=60, what="the lost rows to be sent again")
    assert verify(nodes[0]).returncode == 0

    # Tampering in PostgreSQL is found, by node and seq. The edited row is an answered
    # interaction's (which seq that is varies: admin and alert records share the sequence).
    edited = min(r["seq"] for r in exported
                 if r["node_id"] == ids[1] and r.get("kind") == "interaction" and r.get("status") == 200)
    postgres_server.sql(f"UPDATE sluice_records SET meta = replace(meta, '\"status\":200', '\"status\":201') "
                        f"WHERE node_id = '{ids[1]}' AND seq = {edited}", db=db)
    postgres_server.sql(f"DELETE FROM sluice_records WHERE node_id = '{ids[2]}' AND seq = 4", db=db)
    r = verify(nodes[0])
    assert r.returncode == 1, r.stdout
    assert f"FAIL: node {ids[1]}: seq {edited}: the hash does not match the record (edited)" in r.stdout, r.stdout
    assert f"FAIL: node {ids[2]}: seq 4..4: missing (deleted)" in r.stdout, r.stdout
    assert f"ok: node {ids[0]}:" in r.stdout
    r = verify(nodes[0], "--node", ids[0])
    assert r.returncode == 0 and ids[1] not in r.stdout, r.stdout


def test_a_bad_central_section_is_refused_with_the_key_named(tmp_path):
    config = tmp_path / "sluice.yaml"
    config.write_text("""listen: ["127.0.0.1:0"]
ledger:
  central:
    url: "mysql://nope"
    batch: 0
""")
    r = subprocess.run([str(sluice_bin()), "policy", "lint", "--file", str(config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    for key in ("ledger.central.url", "ledger.central.batch", "postgres://"):
        assert key in r.stdout + r.stderr, (key, r.stdout, r.stderr)
    # Without a central section, --central says what to configure.
    r = subprocess.run([str(sluice_bin()), "audit", "verify", "--central", "--config", str(config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0


def test_migrations_are_safe_from_many_nodes_at_once(tmp_path, postgres_server):
    """Eight processes meet a fresh database at the same moment: one applies the schema
    under the advisory lock, the others find it applied; nobody fails."""
    db = f"migrate_{uuid.uuid4().hex[:8]}"
    url = postgres_server.database(db)
    config = tmp_path / "sluice.yaml"
    config.write_text(f"""listen: ["127.0.0.1:0"]
state_dir: "{tmp_path / 'state'}"
ledger:
  central: {{url: "{url}"}}
""")
    procs = [subprocess.Popen([str(sluice_bin()), "audit", "verify", "--central", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    # Each reads an empty, migrated store: "no records" (exit 1), never a schema error.
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 1 and "holds no records" in out, (out, err)
    assert central(postgres_server, db, "SELECT version FROM sluice_migrations ORDER BY version") == [["1"], ["2"], ["3"]]


def test_central_retention_prunes_a_prefix_and_the_rest_still_verifies(topo, tmp_path, postgres_server):
    db = f"retention_{uuid.uuid4().hex[:8]}"
    url = postgres_server.database(db)
    nodes, ids = nodes_with_central(topo, tmp_path, url, n=2)

    def shipped(node, node_id):
        local = {r["seq"] for r in node.all_records()}
        rows = central(postgres_server, db, f"SELECT seq FROM sluice_records WHERE node_id = '{node_id}'")
        anchor = central(postgres_server, db, f"SELECT seq FROM sluice_anchors WHERE node_id = '{node_id}'")
        floor = int(anchor[0][0]) if anchor else 0
        return {int(r[0]) for r in rows} == {s for s in local if s > floor}

    traffic(nodes, rounds=2)
    for node in nodes:
        node.wait_records(2, "interaction")
    wait_until(lambda: all(shipped(n, i) for n, i in zip(nodes, ids)), what="the first records shipped")
    time.sleep(1.2)
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 0.5))
    time.sleep(1.2)
    traffic(nodes, rounds=2)
    for node in nodes:
        node.wait_records(4, "interaction")
    wait_until(lambda: all(shipped(n, i) for n, i in zip(nodes, ids)), what="the newer records shipped")

    out = nodes[0].cli("audit", "prune-central", "--before", cutoff).stdout
    anchors = dict(central(postgres_server, db, "SELECT node_id, seq FROM sluice_anchors"))
    assert set(anchors) == set(ids), (out, anchors)
    for node_id in ids:
        assert f"node {node_id}: {anchors[node_id]} records pruned" in out, out
        [[first]] = central(postgres_server, db, f"SELECT min(seq) FROM sluice_records WHERE node_id = '{node_id}'")
        assert int(first) == int(anchors[node_id]) + 1
    r = verify(nodes[0])
    assert r.returncode == 0, r.stdout
    for node_id in ids:
        assert f"(after the retention anchor at seq {anchors[node_id]})" in r.stdout, r.stdout

    # A restarted node does not send what was pruned again.
    nodes[0].proxy.stop(timeout=30)
    nodes[0].start_proxy()
    traffic(nodes)
    nodes[0].wait_records(5, "interaction")
    wait_until(lambda: shipped(nodes[0], ids[0]), what="the restarted node to catch up")
    assert central(postgres_server, db, f"SELECT count(*) FROM sluice_records WHERE node_id = '{ids[0]}' "
                                        f"AND seq <= {anchors[ids[0]]}") == [["0"]]
    assert verify(nodes[0]).returncode == 0

    # The anchor is part of what is checked.
    a = int(anchors[ids[1]])
    postgres_server.sql(f"UPDATE sluice_anchors SET hash = repeat('0', 64) WHERE node_id = '{ids[1]}'", db=db)
    r = verify(nodes[0])
    assert r.returncode == 1 and f"FAIL: node {ids[1]}: seq {a + 1}: prev_hash is not seq {a}'s hash" in r.stdout, r.stdout


def test_a_row_planted_ahead_of_a_node_is_replaced_by_its_record(topo, tmp_path, postgres_server):
    """Someone with write access to PostgreSQL plants a row under a node's id at a seq the
    node has not shipped yet, hoping shipping skips the real one (`ON CONFLICT`): the
    node's own record replaces it, the conflict is counted, and the chain verifies."""
    db = f"planted_{uuid.uuid4().hex[:8]}"
    url = postgres_server.database(db)
    probe = tmp_path / "probe.yaml"
    probe.write_text(f'listen: ["127.0.0.1:0"]\nstate_dir: "{tmp_path / "probe"}"\n'
                     f'ledger:\n  central: {{url: "{url}"}}\n')
    # Any reader applies the schema first.
    subprocess.run([str(sluice_bin()), "audit", "verify", "--central", "--config", str(probe)],
                   capture_output=True, timeout=60)
    nodes, ids = nodes_with_central(topo, tmp_path, url, n=1)
    node, node_id = nodes[0], ids[0]
    # Stop shipping first, so the planted row is ahead of the node.
    node.proxy.stop(timeout=30)
    [[head]] = central(postgres_server, db, f"SELECT coalesce(max(seq), 0) FROM sluice_records WHERE node_id = '{node_id}'")
    forged = int(head) + 3
    postgres_server.sql(
        f"INSERT INTO sluice_records (node_id, seq, ts, kind, decision, meta, hash, hmac) VALUES "
        f"('{node_id}', {forged}, now(), 'interaction', 'allow', '{{\"seq\":{forged},\"note\":\"planted\"}}', "
        f"repeat('a', 64), 'forged')", db=db)
    node.start_proxy()
    traffic(nodes, rounds=4)
    node.wait_records(4, "interaction")

    def caught_up():
        local = {r["seq"]: r["hash"] for r in node.all_records()}
        rows = central(postgres_server, db, f"SELECT seq, hash FROM sluice_records WHERE node_id = '{node_id}'")
        return local and {int(s): h for s, h in rows} == local
    wait_until(caught_up, timeout=60, what="the node's records, the planted one replaced")
    assert central(postgres_server, db,
                   """SELECT count(*) FROM sluice_records WHERE meta LIKE '%"note":"planted"%'""") == [["0"]]
    assert node.metric("sluice_central_conflicts_total") == 1
    r = verify(node)
    assert r.returncode == 0, r.stdout


# The schema as the release before partitioning made it (migrations 1 and 2), kept
# verbatim: a store of that release must upgrade in place.
SCHEMA_V2 = """
CREATE TABLE sluice_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE sluice_records (
    node_id text NOT NULL, seq bigint NOT NULL, id text, ts timestamptz NOT NULL, kind text NOT NULL,
    provider text, model text, decision text, identity text, meta text NOT NULL, content text,
    hash text NOT NULL, hmac text NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, seq));
CREATE INDEX sluice_records_ts ON sluice_records (ts);
CREATE INDEX sluice_records_kind_ts ON sluice_records (kind, ts);
CREATE INDEX sluice_records_provider_model_ts ON sluice_records (provider, model, ts);
CREATE INDEX sluice_records_decision_ts ON sluice_records (decision, ts);
CREATE TABLE sluice_anchors (node_id text PRIMARY KEY, seq bigint NOT NULL, hash text NOT NULL,
                             pruned_at timestamptz NOT NULL DEFAULT now());
INSERT INTO sluice_migrations (version) VALUES (1), (2);
"""


def probe_config(tmp_path, url: str, name: str = "probe"):
    probe = tmp_path / f"{name}.yaml"
    probe.write_text(f'listen: ["127.0.0.1:0"]\nstate_dir: "{tmp_path / name}"\n'
                     f'ledger:\n  central: {{url: "{url}"}}\n')
    return probe


def cli(config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(sluice_bin()), *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def days_of(pg, db: str) -> list[str]:
    """The day partitions holding rows, by name."""
    return [r[0] for r in central(pg, db, "SELECT DISTINCT tableoid::regclass::text FROM sluice_records ORDER BY 1")]


def test_a_store_of_the_previous_schema_is_upgraded_in_place(topo, tmp_path, postgres_server):
    """Records shipped before partitioning (schema 2, one plain table) move into day
    partitions with tokens and cost as columns, on the first connection of a new binary;
    chains, reports and shipping carry on."""
    new, old = (f"{p}_{uuid.uuid4().hex[:8]}" for p in ("now", "old"))
    url = postgres_server.database(new)
    nodes, ids = nodes_with_central(topo, tmp_path, url, n=1)
    node = nodes[0]
    traffic(nodes, rounds=3)
    node.wait_records(3, "interaction")
    wait_until(lambda: central(postgres_server, new, "SELECT count(*) FROM sluice_records")
               == [[str(len(node.all_records()))]], what="the node's records shipped")
    node.proxy.stop(timeout=30)
    # The same rows in a store of the previous schema.
    old_url = postgres_server.database(old)
    postgres_server.sql(SCHEMA_V2, db=old)
    inserts = postgres_server.sql(
        "SELECT format('INSERT INTO sluice_records (node_id, seq, id, ts, kind, provider, model, decision, "
        "identity, meta, content, hash, hmac) VALUES (%L, %s, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L);', "
        "node_id, seq, id, ts, kind, provider, model, decision, identity, meta, content, hash, hmac) "
        "FROM sluice_records ORDER BY seq", db=new)
    postgres_server.sql(inserts, db=old)
    rows = central(postgres_server, old, "SELECT count(*) FROM sluice_records")

    probe = probe_config(tmp_path, old_url)
    r = cli(probe, "audit", "verify", "--central")
    assert r.returncode == 0 and f"node {ids[0]}" in r.stdout, (r.stdout, r.stderr)
    assert central(postgres_server, old, "SELECT version FROM sluice_migrations ORDER BY version") == [["1"], ["2"], ["3"]]
    assert central(postgres_server, old, "SELECT relkind FROM pg_class WHERE relname = 'sluice_records'") == [["p"]]
    assert central(postgres_server, old, "SELECT count(*) FROM sluice_records") == rows
    days = days_of(postgres_server, old)
    assert days and all(d.startswith("sluice_records_2") for d in days), days
    assert central(postgres_server, old, "SELECT count(*) FROM sluice_records WHERE kind = 'interaction' AND "
                   "input_tokens IS DISTINCT FROM (meta::jsonb #>> '{usage,input_tokens}')::bigint") == [["0"]]
    now_report = json.loads(cli(probe_config(tmp_path, url, "now"), "report", "--central", "--type", "usage", "--json").stdout)
    old_report = json.loads(cli(probe, "report", "--central", "--type", "usage", "--json").stdout)
    assert old_report["rows"] == now_report["rows"] and old_report["rows"], old_report

    # The node, pointed at the upgraded store, ships what follows.
    node.config.write_text(node.config.read_text().replace(url, old_url))
    node.start_proxy()
    traffic(nodes)
    node.wait_records(4, "interaction")
    wait_until(lambda: central(postgres_server, old, "SELECT count(*) FROM sluice_records")
               == [[str(len(node.all_records()))]], what="the new records in the upgraded store")
    assert cli(probe, "audit", "verify", "--central").returncode == 0


def test_retention_drops_whole_days_and_a_planted_second_row_is_named(topo, tmp_path, postgres_server):
    """A cutoff past every record drops the day partitions (no row-by-row delete), leaves
    each node's anchor, and shipping and verification carry on from it; a row planted
    under a node's seq in another day is not hidden by the key — verify names it."""
    db = f"days_{uuid.uuid4().hex[:8]}"
    url = postgres_server.database(db)
    nodes, ids = nodes_with_central(topo, tmp_path, url, n=2)

    def shipped():
        return all(central(postgres_server, db, f"SELECT count(*) FROM sluice_records WHERE node_id = '{i}'")
                   == [[str(sum(1 for r in n.all_records() if r["seq"] > anchor(i)))]] for n, i in zip(nodes, ids))

    def anchor(node_id):
        a = central(postgres_server, db, f"SELECT seq FROM sluice_anchors WHERE node_id = '{node_id}'")
        return int(a[0][0]) if a else 0

    traffic(nodes, rounds=2)
    for node in nodes:
        node.wait_records(2, "interaction")
    wait_until(shipped, what="the records shipped")
    days = days_of(postgres_server, db)
    # Stop shipping so that the cutoff (two days ahead) covers every record.
    for node in nodes:
        node.proxy.stop(timeout=30)
    heads = {i: max(r["seq"] for r in n.all_records()) for n, i in zip(nodes, ids)}
    cutoff = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() + 2 * 86400))
    out = cli(nodes[0].config, "audit", "prune-central", "--before", cutoff).stdout
    assert f"{len(days)} day partitions dropped: {', '.join(days)}" in out, (out, days)
    for node_id in ids:
        assert f"node {node_id}: {heads[node_id]} records pruned" in out, out
        assert anchor(node_id) == heads[node_id]
    assert central(postgres_server, db, "SELECT count(*) FROM sluice_records") == [["0"]]
    assert central(postgres_server, db, "SELECT count(*) FROM pg_class WHERE relname = ANY(ARRAY["
                   + ",".join(f"'{d}'" for d in days) + "])") == [["0"]]

    for node in nodes:
        node.start_proxy()
    traffic(nodes)
    for node in nodes:
        node.wait_records(3, "interaction")
    wait_until(shipped, what="the records after the anchor shipped")
    r = verify(nodes[0])
    assert r.returncode == 0, r.stdout
    for node_id in ids:
        assert f"(after the retention anchor at seq {heads[node_id]})" in r.stdout, r.stdout

    # A second row under a shipped seq, a day earlier (another partition, so the key
    # does not stop it): named.
    seq = heads[ids[1]] + 1
    postgres_server.sql(
        f"INSERT INTO sluice_records (node_id, seq, ts, kind, meta, hash, hmac) SELECT node_id, seq, "
        f"ts - interval '1 day', kind, meta, repeat('b', 64), 'forged' FROM sluice_records "
        f"WHERE node_id = '{ids[1]}' AND seq = {seq}", db=db)
    r = verify(nodes[0])
    assert r.returncode == 1 and f"seq {seq}: a second row under this seq (planted)" in r.stdout, r.stdout
