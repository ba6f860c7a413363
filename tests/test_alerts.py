"""Prometheus alerting rules (deploy/prometheus/sluice-rules.yml) checked and unit-tested
with Debian's `promtool`: the witness-lag alert fires after the lag has been over five
minutes for five minutes and clears when the outbox catches up, a witness refusal fires at
once, a failing ledger append too; every other alert has cases where it fires and where it
stays silent. That every series the rules read is one Sluice exports is checked against the
registry (metrics::catalogue's Rust test); the recording rules run on a real Prometheus in
test_dashboards.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from netns import run

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "sluice-rules.yml"


def rule_series() -> set[str]:
    """The sluice_* series the alerting rules read."""
    return set(re.findall(r"\b(sluice_[a-z_]+)", RULES.read_text()))


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `cargo xtask setup` installs Debian's prometheus"
    return path


def test_the_rules_load_and_their_unit_tests_pass(promtool):
    out = run([promtool, "check", "rules", str(RULES)]).stdout
    assert "SUCCESS: 22 rules found" in out, out
    # rule_files in the test file are relative to it.
    r = run([promtool, "test", "rules", str(REPO / "tests" / "prometheus" / "sluice-rules-test.yml")],
            check=False)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    assert rule_series() >= {"sluice_ledger_witness_lag_seconds",
                             "sluice_ledger_witness_errors_total",
                             "sluice_ledger_append_errors_total"}


def test_every_alert_has_a_runbook_and_a_unit_test_that_fires_and_one_that_stays_silent():
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    cases = yaml.safe_load((REPO / "tests" / "prometheus" / "sluice-rules-test.yml").read_text())
    fired, silent = set(), set()
    for case in cases["tests"]:
        for t in case.get("alert_rule_test", []):
            (fired if t["exp_alerts"] else silent).add(t["alertname"])
    for a in alerts:
        name = a["alert"]
        assert name in fired and name in silent, f"{name}: a test where it fires and one where it does not"
        assert a["labels"]["severity"] in ("warning", "critical"), name
        assert a["annotations"]["summary"] and len(a["annotations"]["description"]) > 40, \
            f"{name}: the description is the runbook: what it means and what to do"


def test_a_broken_rule_is_refused_with_a_reason(promtool, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES.read_text().replace("> 300", "> > 300", 1))
    r = run([promtool, "check", "rules", str(bad)], check=False)
    assert r.returncode != 0 and "parse error" in (r.stdout + r.stderr), r.stdout + r.stderr
