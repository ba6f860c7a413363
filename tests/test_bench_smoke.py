"""Smoke test of the benchmark harness: `cargo xtask bench --smoke` runs every path that
can run on this machine and writes figures for each; a path that cannot run says why.

Asserts that figures exist and have the right shape, never their values: timings depend
on the machine and its load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(os.environ.get("SLUICE_REPO", Path(__file__).resolve().parent.parent))

# Paths built from this repository alone: they always run.
OWN_PATHS = ["direct", "pingora-minimal", "sluice", "sluice-passthrough"]
# Peers from apt: they run whenever their binary is installed (the harness installs them).
APT_PEERS = ["nginx", "haproxy"]
# Peers from PyPI: the smoke run leaves them out, with a reason.
PYPI_PEERS = ["litellm", "mitmproxy"]

SCENARIOS = {
    "sat_1k": ["rps"],
    "sat_100k": ["rps"],
    "newconn": ["rps"],
    "lat1_1k": ["p50", "p90", "p99", "p999"],
    "lat1_100k": ["p50", "p90", "p99", "p999"],
    "open_1k": ["p50", "p90", "p99", "p999"],
    "open_100k": ["p50", "p90", "p99", "p999"],
    "sse": ["ttfe_p50", "ttfe_p99", "gap_p50", "gap_p99"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    cargo = os.environ.get("CARGO", "cargo")
    proc = subprocess.run(
        [cargo, "xtask", "bench", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def assert_figures(name: str, entry: dict) -> None:
    assert entry["available"] is True, f"{name}: {entry.get('reason')}"
    scenarios = entry["scenarios"]
    for scenario, keys in SCENARIOS.items():
        fig = scenarios[scenario]
        assert is_number(fig["error_rate"]), (name, scenario)
        for key in keys:
            stat = fig[key]
            assert stat is not None, f"{name}/{scenario}/{key} missing: {fig.get('error_samples')}"
            for part in ("median", "min", "max"):
                assert is_number(stat[part]), (name, scenario, key, part)
    assert is_number(scenarios["sse"]["fidelity"]), name
    assert entry["version"], name
    if name != "direct":
        assert is_number(entry["rss_idle_kb"]) and is_number(entry["rss_peak_kb"]), name
        assert is_number(entry["cpu_s_per_10k_requests"]["median"]), name
        for scenario in ("lat1_1k", "open_1k"):
            assert is_number(scenarios[scenario]["added_p50"]), (name, scenario)
        # Memory with connections held open: idle keep-alive and open streams.
        for mode in ("idle", "streams"):
            held = entry["hold"][mode]
            assert "error" not in held, (name, mode, held)
            # Every connection asked for was set up and held (10 in the smoke profile).
            assert held["held"] == held["asked"] > 0, (name, mode, held)
            assert is_number(held["kb_per_1000"]), (name, mode, held)


@pytest.mark.timeout(300)
def test_every_path_has_figures_or_a_reason(results):
    paths = results["paths"]
    for name in OWN_PATHS:
        assert_figures(name, paths[name])
    for name in APT_PEERS:
        entry = paths[name]
        if shutil.which(name) or Path(f"/usr/sbin/{name}").exists():
            assert_figures(name, entry)
        else:
            assert entry["available"] is False and entry["reason"], name
    for name in PYPI_PEERS:
        entry = paths[name]
        assert entry["available"] is False, name
        assert "--smoke" in entry["reason"], entry["reason"]


@pytest.mark.timeout(300)
def test_sluice_paths_report_audit_completeness(results):
    for name, kind in (("sluice", "interaction"), ("sluice-passthrough", "connection")):
        audit = results["paths"][name]["audit"]
        assert audit["kind"] == kind
        assert is_number(audit["records"]) and is_number(audit["expected"]), audit
        assert audit["expected"] > 0, audit


@pytest.mark.timeout(300)
def test_results_carry_reproducibility_and_the_tables(results):
    meta = results["meta"]
    for key in ("nproc", "kernel", "cpu_model"):
        assert meta["machine"][key], key
    assert meta["placement"] and meta["command"] and meta["date"]
    for name in ("sat_1k", "sat_100k", "newconn"):
        assert is_number(results["rig_ceiling"][name]["median"]), name
    assert "sluice/nginx" in results["ratios"] and "sluice/direct" in results["ratios"]
    table = results["markdown"]
    assert "### Throughput and resources" in table and "### Ratios" in table
    for name in OWN_PATHS:
        assert f"| {name} |" in table, name


@pytest.mark.timeout(300)
def test_component_figures_ledger_guardrails_and_connect_hook(results):
    c = results["components"]
    assert c["available"] is True, c.get("reason")
    # The central ledger's ingest into a PostgreSQL the suite started (setup installs it).
    central = c["raw"]["central_ingest"]
    assert central["error"] is None and central["records_per_s"], central
    for key in ("ledger_records_per_s", "guardrail_mb_per_s", "central_records_per_s"):
        for part in ("median", "min", "max"):
            assert is_number(c[key][part]), (key, c["raw"])
    # Every filtered query of `events tail` timed on a filled ledger, each finding rows.
    queries = c["ledger_query"]
    assert set(queries) == {
        "provider_model", "decision", "identity", "time_window", "decision_identity"
    }, c["raw"]["ledger_query"]
    for name, q in queries.items():
        assert is_number(q["ms"]["median"]) and q["ms"]["n"] >= 3, (name, q)
    # The 2,000 records: record i is anthropic for i % 4 == 1, model-3 for i % 10 == 3, a
    # block for i % 50 == 0, pid i % 1000; at most the newest 100 are returned.
    n = c["raw"]["ledger_query"]["records"]
    assert n == 2000, n
    expect = {
        "provider_model": min(100, sum(1 for i in range(n) if i % 4 == 1 and i % 10 == 3)),
        "decision": sum(1 for i in range(n) if i % 50 == 0),
        "identity": sum(1 for i in range(n) if i % 1000 == 123),
        "decision_identity": sum(1 for i in range(n) if i % 50 == 0 and i % 1000 == 300),
    }
    assert {k: queries[k]["rows"] for k in expect} == expect, queries
    # A fifth of the fill's duration: some records, not all of them.
    assert 0 < queries["time_window"]["rows"] <= 100, queries["time_window"]
    assert "`events tail` query on 2000 records: decision" in results["markdown"]
    # Root on a BPF-capable kernel (CI): the hook is measured against no hook; iptables
    # too when the kernel has nat tables, else a reason is given.
    modes = c["connect"]
    assert {"none", "hook_miss", "hook_redirect"} <= set(modes), c["raw"]["connect"]
    for mode in modes.values():
        assert is_number(mode["p50_us"]["median"]) and is_number(mode["mean_us"]["median"])
    ipt = c["raw"]["connect"]["iptables"]
    assert ipt["available"] is True or ipt["reason"], ipt
    if ipt["available"]:
        assert {"iptables_miss", "iptables_redirect"} <= set(modes)
    assert "### Components" in results["markdown"]


@pytest.mark.timeout(300)
def test_the_cost_of_fleet_counters_is_reported_against_local_ones(results):
    """`sluice-fleet` (budget and rate limit in Redis) next to `sluice-budget` (the same
    policy on the node), and their ratio, from one run."""
    for name in ("sluice-budget", "sluice-fleet"):
        entry = results["paths"][name]
        assert entry["available"] is True, (name, entry.get("reason"))
        assert is_number(entry["scenarios"]["lat1_1k"]["added_p50"]), name
        assert entry["audit"]["kind"] == "interaction" and entry["audit"]["expected"] > 0, name
    ratio = results["ratios"]["sluice-fleet/sluice-budget"]
    assert is_number(ratio["added_p50_1k"]) and is_number(ratio["added_p99_1k"]), ratio


@pytest.mark.timeout(300)
def test_the_soak_reports_growth_and_records_every_answer(results):
    """`--scenario soak` (a few seconds in the smoke run): plain, streamed, refused and
    cancelled requests together; memory, descriptors, ledger size and queues read at the
    start and the end; and every answer — refusals and cancelled streams included — has
    its interaction record, counted after Sluice stopped."""
    s = results["soak"]
    assert s["available"] is True, s.get("reason")
    for at in ("start", "end", "drained"):
        for key in ("rss_kb", "anon_kb", "fds", "ledger_bytes", "records", "record_queue",
                    "index_lag"):
            assert is_number(s[at][key]), (at, key, s[at])
    assert s["end"]["ledger_bytes"] > s["start"]["ledger_bytes"] > 0, s
    load = s["load"]
    assert set(load) == {"plain", "streamed", "refused", "cancelled"}, load
    for name, figures in load.items():
        assert figures["ok"] > 0, (name, figures)
    assert load["cancelled"]["cancelled"] == load["cancelled"]["responses_total"] > 0, load
    assert not load["refused"]["error_samples"], load["refused"]
    audit = s["audit"]
    assert audit["kind"] == "interaction" and audit["records"] == audit["expected"] > 0, audit
    assert s["checks"]["every_answer_recorded"] is True
    assert set(s["checks"]) == {"rss", "fds", "queued", "ledger_per_record", "throughput",
                                "every_answer_recorded"}
    assert "### Soak" in results["markdown"]
