"""`sluice policy lint`: errors with file:line fail it (exit 1); a valid chain whose rules
cannot take effect as written gets warnings with file:line (exit 1); a clean one passes."""

from __future__ import annotations

import subprocess

from netns import sluice_bin


def lint(tmp_path, text: str) -> subprocess.CompletedProcess:
    f = tmp_path / "sluice.yaml"
    f.write_text(text)
    return subprocess.run([str(sluice_bin()), "policy", "lint", "--file", str(f)],
                          capture_output=True, text=True, timeout=30)


CLEAN = """
policy:
  virtual_keys:
    - {key: sk-sluice-a, user: alice, team: ml, provider_keys: {}}
  policies:
    - id: approved
      models: {allow: ["gpt-4o*", "claude-*"]}
    - id: dlp
      prompt: {pii: redact, secrets: block}
      response: {secrets: redact}
"""


def test_clean_policy_passes(tmp_path):
    r = lint(tmp_path, CLEAN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(": ok")


def test_errors_name_file_line_and_key(tmp_path):
    r = lint(tmp_path, CLEAN.replace("response: {secrets: redact}", "response: {secrets: block}")
             .replace("prompt:", "promt:"))
    assert r.returncode == 1
    # An unknown key is a syntax error with line and column.
    assert "sluice.yaml" in r.stderr and "promt" in r.stderr and "line" in r.stderr.lower()
    r = lint(tmp_path, CLEAN.replace("response: {secrets: redact}", "response: {secrets: block}"))
    assert r.returncode == 1
    assert "sluice.yaml:10" in r.stderr and "policy.policies[1].response.secrets" in r.stderr
    assert "redact" in r.stderr


def test_unreachable_rules_and_conflicting_scopes_are_warned_with_lines(tmp_path):
    r = lint(tmp_path, """
policy:
  virtual_keys:
    - {key: sk-sluice-a, user: alice, team: ml, provider_keys: {}}
    - {key: sk-sluice-b, user: bob, team: web, provider_keys: {}}
  policies:
    - id: nobody
      scope: {users: [alice], teams: [web]}
      models: {deny: ["o3*"]}
    - id: web-off
      scope: {teams: [web]}
      providers: {deny: ["*"]}
    - id: web-budget
      scope: {teams: [web]}
      budget: {usd: 5}
    - id: ml-o3
      scope: {teams: [ml]}
      models: {allow: ["o3-mini"]}
    - id: no-o3
      models: {deny: ["o3-mini"]}
""")
    assert r.returncode == 1, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("warning: ")]
    by_line = {l.split(": ")[1]: l for l in lines}
    assert "selects nobody" in by_line[f"{tmp_path}/sluice.yaml:7"]
    assert "unreachable" in by_line[f"{tmp_path}/sluice.yaml:13"] and "web-off" in by_line[f"{tmp_path}/sluice.yaml:13"]
    assert "ml-o3" in by_line[f"{tmp_path}/sluice.yaml:19"]
    assert "3 warning(s)" in r.stderr


def test_environment_references_expand_and_a_missing_one_is_named(tmp_path):
    """`${NAME}` takes the node's environment (e.g. NODE_IP from the downward API)."""
    import os
    text = CLEAN + 'redirect:\n  pod_facing_v4: "${SLUICE_TEST_NODE_IP}:15443"\n'
    f = tmp_path / "sluice.yaml"
    f.write_text(text)
    argv = [str(sluice_bin()), "policy", "lint", "--file", str(f)]
    env = {**os.environ, "SLUICE_TEST_NODE_IP": "10.1.2.3"}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    env.pop("SLUICE_TEST_NODE_IP")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1
    assert "${SLUICE_TEST_NODE_IP} is not set in the environment" in r.stderr, r.stderr
    assert f"sluice.yaml:{text.count(chr(10), 0, text.index('${'))+1}:" in r.stderr, r.stderr
