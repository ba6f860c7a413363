"""The audit ledger end to end: nothing a client received goes unrecorded (SIGKILL under
load), tampering is caught by `sluice audit verify`, the syslog export reaches a real
rsyslog, a full disk fails closed with a clear error, and the CLI defaults read what
`sluice demo` wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zstandard

from netns import Proc, free_port, run, sluice_bin, wait_for_port
from sluice_stack import Stack

LOAD = """
import json, sys, threading, openai
done, lock = [], threading.Lock()
def worker(t):
    c = openai.OpenAI(api_key="sk-load", max_retries=0, timeout=10)
    for i in range(100000):
        tag = f"req-{t}-{i}"
        try:
            r = c.chat.completions.create(model="gpt-4o-mini",
                messages=[{"role": "user", "content": tag}])
        except Exception:
            return
        assert r.choices[0].message.content == "Mock reply to: " + tag
        with lock:
            print(tag, flush=True)
threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


def test_sigkill_under_load_loses_no_completed_interaction(topo, tmp_path):
    stack = Stack(topo, tmp_path)
    env = stack.client_env()
    client = subprocess.Popen(topo.client.argv([sys.executable, "-c", LOAD]), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    completed = []
    for line in client.stdout:
        completed.append(line.strip())
        if len(completed) >= 150:
            break
    os.kill(stack.proxy.pid, signal.SIGKILL)
    rest, _ = client.communicate(timeout=60)
    completed += [x for x in rest.splitlines() if x.strip()]
    assert len(completed) >= 150

    stack.start_proxy()  # restart: the write-ahead file is replayed
    recorded = set()
    for r in stack.all_records():
        if r["kind"] == "interaction" and r["outcome"] == "success":
            recorded.add(r["request"]["messages"][0]["content"])
    missing = [c for c in completed if c not in recorded]
    assert not missing, f"{len(missing)} completed requests have no record, e.g. {missing[:5]}"
    v = stack.cli("audit", "verify", check=False)
    assert v.returncode == 0, v.stdout + v.stderr


def test_tampering_is_caught_by_audit_verify(topo, tmp_path):
    stack = Stack(topo, tmp_path)
    for _ in range(3):
        stack.curl("-o", "/dev/null", "-H", "content-type: application/json", "--data-binary",
                   '{"model":"gpt-4o","messages":[{"role":"user","content":"audit me"}]}',
                   "https://api.openai.com/v1/chat/completions")
    recs = stack.wait_records(3, "interaction")
    assert stack.cli("audit", "verify").returncode == 0
    stack.proxy.stop()
    db = stack.state / "ledger" / "ledger.sqlite"
    con = sqlite3.connect(db)
    seq = recs[1]["seq"]
    # A row holds its metadata as one byte naming a dictionary of the index, then a zstd
    # frame: standard tools read and rewrite it, as someone tampering would.
    (blob,) = con.execute("select meta from records where seq = ?", (seq,)).fetchone()
    (dict_bytes,) = con.execute("select bytes from dictionaries where id = ?",
                                (blob[0],)).fetchone()
    zdict = zstandard.ZstdCompressionDict(dict_bytes)
    meta = zstandard.ZstdDecompressor(dict_data=zdict).decompress(blob[1:]).decode()
    assert '"model":"gpt-4o"' in meta
    # An auditor's nightmare: someone quietly downgrades the model of one record.
    forged = meta.replace('"model":"gpt-4o"', '"model":"gpt-4o-mini"').encode()
    packed = blob[:1] + zstandard.ZstdCompressor(dict_data=zdict).compress(forged)
    con.execute("update records set meta = ? where seq = ?", (packed, seq))
    con.commit()
    con.close()
    v = stack.cli("audit", "verify", check=False)
    assert v.returncode != 0
    out = v.stdout + v.stderr
    assert str(seq) in out and "edited" in out.lower()
    # Caught by its hash, not because the rewritten row failed to decode.
    assert "cannot be read back" not in out, out


def test_verify_says_what_it_checked_and_fails_on_what_it_could_not(topo, tmp_path):
    stack = Stack(topo, tmp_path)
    stack.curl("-o", "/dev/null", "-H", "content-type: application/json", "--data-binary",
               '{"model":"gpt-4o","messages":[{"role":"user","content":"checked?"}]}',
               "https://api.openai.com/v1/chat/completions")
    stack.wait_records(1, "interaction")
    stack.proxy.stop()
    ledger = stack.state / "ledger"
    pub = tmp_path / "trusted.pub.pem"
    pub.write_text((ledger / "checkpoint.pub.pem").read_text())
    v = stack.cli("audit", "verify", "--public-key", str(pub), check=False)
    assert v.returncode == 0, v.stdout
    assert "checked     HMACs, with key ids" in v.stdout
    assert f"checked     checkpoint signatures, with the public key {pub}" in v.stdout
    # Without the HMAC key the records' HMACs cannot be checked: said, and not "ok".
    (ledger / "hmac.key").rename(tmp_path / "hmac.key")
    v = stack.cli("audit", "verify", "--public-key", str(pub), check=False)
    assert v.returncode != 0 and v.stdout.startswith("INCOMPLETE"), v.stdout
    assert "NOT checked HMACs: no key available" in v.stdout
    v = stack.cli("audit", "verify", "--public-key", str(pub), "--allow-partial", check=False)
    assert v.returncode == 0 and "NOT checked HMACs" in v.stdout, v.stdout


SYSLOG_LINE = re.compile(
    r'^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) (\S{1,255}) '
    r'(\S{1,48}) (\S{1,128}) (\S{1,32}) (-|(?:\[[^ \]=]+(?: [^ =\]"]+="(?:[^"\\\]]|\\["\\\]])*")*\])+)(?: (.*))?$')


def test_syslog_export_reaches_a_real_rsyslog(topo, tmp_path):
    stack = Stack(topo, tmp_path)
    # A prompt with the characters RFC 5424 makes us escape.
    stack.curl("-o", "/dev/null", "-H", "content-type: application/json", "--data-binary",
               json.dumps({"model": "gpt-4o", "messages": [
                   {"role": "user", "content": 'quote " backslash \\ bracket ] newline \n end'}]}),
               "https://api.openai.com/v1/chat/completions")
    stack.wait_records(1, "interaction")
    port = free_port("127.0.0.1")
    out = tmp_path / "rsyslog.out"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f"""global(workDirectory="{tmp_path}")
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{out}" template="raw")
""")
    Proc(["rsyslogd", "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslog.pid")],
         tmp_path / "rsyslogd.log")
    wait_for_port("127.0.0.1", port, timeout=20)
    r = stack.cli("audit", "export", "--format", "syslog", "--out", f"tcp://127.0.0.1:{port}")
    assert r.returncode == 0
    # The export is itself audited (through the inbox, since the proxy holds the ledger),
    # with the number of records it sent.
    deadline = time.monotonic() + 15
    while not any(r["kind"] == "admin" and r["action"] == "export" for r in stack.all_records()):
        assert time.monotonic() < deadline, "the export left no admin record"
        time.sleep(0.2)
    exp = next(r for r in stack.all_records() if r["kind"] == "admin" and r["action"] == "export")
    assert exp["outcome"] == "success" and exp["details"]["records"] >= 1, exp
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = out.read_text().splitlines() if out.exists() else []
        if len(lines) >= exp["details"]["records"]:
            break
        time.sleep(0.1)
    assert len(lines) == exp["details"]["records"], (lines, exp)
    for line in lines:
        m = SYSLOG_LINE.match(line)
        assert m, f"not RFC 5424: {line!r}"
        assert m.group(4) == "sluice"
    interaction = next(x for x in lines if 'provider="openai"' in x)
    assert 'model="gpt-4o"' in interaction


def test_full_disk_fails_closed_with_a_clear_error(topo, tmp_path):
    ledger = tmp_path / "small"
    ledger.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=4m", "sluice-test", str(ledger)])
    try:
        stack = Stack(topo, tmp_path, extra_config=f'ledger:\n  dir: "{ledger}"\non_ledger_failure: fail_closed\n')
        code, text = stack.http_get("/readyz")
        assert code == 200 and "ok   ledger: writable" in text, text
        # Fill the disk.
        filler = ledger / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=2000"],
                       capture_output=True)
        statuses = set()
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 2000}]})
        for _ in range(20):
            r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                           "--data-binary", body, "https://api.openai.com/v1/chat/completions",
                           check=False)
            statuses.add(r.stdout.rsplit("\n", 1)[-1])
            if "503" in statuses:
                break
        assert "503" in statuses, statuses
        assert "ledger" in r.stdout.lower()
        # Readiness tells the truth; liveness stays up.
        code, text = stack.http_get("/readyz")
        assert code == 503 and "FAIL ledger" in text, text
        assert stack.http_get("/healthz") == (200, "ok\n")
        assert stack.metric("sluice_ledger_append_errors_total") >= 1
        assert stack.alive()
        stack.proxy.stop()
        assert "ledger" in stack.proxy.tail(200).lower()
    finally:
        subprocess.run(["umount", "-l", str(ledger)], capture_output=True)


def test_demo_then_events_tail_with_no_flags(tmp_path):
    env = {**os.environ, "SLUICE_STATE_DIR": str(tmp_path / "state")}
    demo = subprocess.run([str(sluice_bin()), "demo"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    # As root the demo shows the headline: capture with no client change, from a network
    # namespace of its own, attributed to the calling process.
    assert "mode: transparent" in demo.stdout, demo.stdout
    assert demo.stdout.count("curl (pid ") == 6, demo.stdout
    assert "--connect-to" not in demo.stdout
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "sdc" not in leftovers and "sdp" not in leftovers, leftovers
    tail = subprocess.run([str(sluice_bin()), "events", "tail"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert tail.returncode == 0, tail.stderr
    for model in ("gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"):
        assert model in tail.stdout
    verify = subprocess.run([str(sluice_bin()), "audit", "verify"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_demo_without_root_falls_back_to_explicit_mode_and_says_why():
    # pytest's tmp_path (and maybe the checkout) is private to root: nobody gets a
    # directory of its own, with its own copy of the binary.
    state = Path(tempfile.mkdtemp(prefix="sluice-demo-nobody-"))
    try:
        state.chmod(0o777)
        binary = state / "sluice"
        shutil.copy(sluice_bin(), binary)
        binary.chmod(0o755)
        env = {**os.environ, "SLUICE_STATE_DIR": str(state / "state")}
        demo = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               str(binary), "demo"], env=env, capture_output=True,
                              text=True, timeout=180, cwd=state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "mode: explicit" in demo.stdout and "not running as root" in demo.stdout, demo.stdout
    assert demo.stdout.count(" 200 (") == 6, demo.stdout


def test_administrative_changes_are_recorded(topo, tmp_path):
    stack = Stack(topo, tmp_path)
    deadline = time.monotonic() + 15
    while True:
        admin = [r for r in stack.all_records() if r["kind"] == "admin"]
        if len(admin) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ca = next(r for r in admin if r["target"]["type"] == "ca")
    assert ca["action"] == "create" and ca["outcome"] == "success"
    assert ca["initiator"]["id"] == f"uid:{os.getuid()}"
    start = next(r for r in admin if r["target"]["type"] == "config")
    assert start["action"] == "reload" and start["details"]["event"] == "start"
    assert start["target"]["id"] == str(stack.config)
    report = json.loads(stack.cli("report", "--type", "change", "--json").stdout)
    assert len(report["rows"]) >= 2


def test_hmac_key_rotation_is_recorded_and_both_keys_verify(topo, tmp_path):
    stack = Stack(topo, tmp_path)
    call = """
import json, openai
c = openai.OpenAI(api_key="sk-client", max_retries=0)
r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "k"}])
print(json.dumps({"text": r.choices[0].message.content}))
"""
    assert stack.python(call)["text"] == "Mock reply to: k"
    # While the proxy runs: the admin record goes through the inbox, the new key waits for
    # the next start.
    out = stack.cli("audit", "rotate-key").stdout
    assert "until it restarts" in out
    old_id, new_id = out.split("rotated: ")[1].split(" (")[0].split(" -> ")
    assert old_id != new_id
    ledger = stack.state / "ledger"
    assert (ledger / f"hmac-{old_id}.key").stat().st_mode & 0o777 == 0o600
    stack.proxy.stop()
    stack.start_proxy()
    assert stack.python(call)["text"] == "Mock reply to: k"
    recs = stack.wait_records(2, "interaction")
    admin = [r for r in stack.all_records() if r["kind"] == "admin"
             and r["target"]["type"] == "hmac_key"]
    assert len(admin) == 1 and admin[0]["action"] == "update"
    assert admin[0]["details"]["old_key_id"] == old_id
    assert admin[0]["details"]["new_key_id"] == new_id
    # Key ids only: neither key's bytes appear anywhere in the ledger.
    everything = json.dumps(stack.all_records())
    for key_file in (ledger / f"hmac-{old_id}.key", ledger / "hmac.key"):
        assert key_file.read_text().strip() not in everything
    # Records under both keys verify (the retired key is picked up from hmac-<id>.key).
    assert recs[0]["hmac_key_id"] == old_id and recs[-1]["hmac_key_id"] == new_id
    v = stack.cli("audit", "verify", check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    # Without the retired key the old records no longer verify: the key id matters.
    (ledger / f"hmac-{old_id}.key").rename(tmp_path / "away.key")
    v = stack.cli("audit", "verify", check=False)
    assert v.returncode != 0


def test_exchanges_open_at_shutdown_are_still_recorded(topo, tmp_path):
    """A stream and a passthrough connection still open when the proxy stops: both end up
    in the ledger (what was seen, and that Sluice stopped), and the chain verifies."""
    stack = Stack(topo, tmp_path)
    env = stack.client_env()
    body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"slow"}]}'

    def slow_stream(ca, host):  # 300 chunks, 100 ms apart
        return topo.client.popen(
            ["curl", "-sS", "-N", "--max-time", "30", "--cacert", str(ca),
             "-H", "content-type: application/json", "-H", "x-mock-chunks: 300",
             "-H", "x-mock-delay-ms: 100", "--data-binary", body,
             f"https://{host}/v1/chat/completions"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    stream = slow_stream(stack.org_ca, "api.openai.com")
    relay = slow_stream(stack.provider_ca, "pass.example")
    try:
        time.sleep(2)  # both are mid-way: 20 of 300 chunks
        assert stream.poll() is None and relay.poll() is None
        stack.proxy.stop()
    finally:
        for p in (stream, relay):
            p.kill()
            p.wait()
    stack.start_proxy()  # `events tail` reads the ledger either way; verify sees it whole
    recs = stack.wait_records(2)
    inter = [r for r in recs if r["kind"] == "interaction"]
    conn = [r for r in recs if r["kind"] == "connection"]
    assert len(inter) == 1 and len(conn) == 1, recs
    assert inter[0]["outcome"] in ("failed", "cancelled"), inter[0]
    assert inter[0]["response"]["events"] > 0 and inter[0]["request"]["path"] == "/v1/chat/completions"
    assert conn[0]["bytes_down"] > 0 and conn[0]["sni"] == "pass.example", conn[0]
    assert stack.cli("audit", "verify").returncode == 0


def test_a_forged_inbox_record_is_rejected_and_recorded(topo, tmp_path):
    """A backdated retention prune with an anchor, dropped into the inbox while the proxy
    runs (finding 4 of the ledger's audit): never appended as if genuine; kept aside and
    recorded as a security event."""
    stack = Stack(topo, tmp_path)
    inbox = stack.state / "ledger" / "inbox"
    inbox.mkdir(exist_ok=True)
    forged = {"id": "00000000-forged", "ts": "2020-01-01T00:00:00.000Z", "kind": "admin",
              "action": "delete", "outcome": "success",
              "initiator": {"id": "sluice-ledger", "role": "system", "ip": None},
              "target": {"type": "ledger", "id": "retention"},
              "details": {"event": "retention_prune", "anchor": {"seq": 40, "hash": "00" * 32}}}
    (inbox / "00000000-forged.json").write_text(json.dumps(forged))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        admin = [r for r in stack.all_records() if r["kind"] == "admin"]
        rejected = [r for r in admin if r["details"].get("event") == "inbox_record_rejected"]
        if rejected:
            break
        time.sleep(0.2)
    assert rejected, admin
    assert not [r for r in admin if r["id"] == "00000000-forged"], "the forged record was appended"
    assert (inbox / "rejected" / "00000000-forged.json").exists()
    # A genuine command's record still goes through the inbox.
    stack.cli("audit", "export", "--format", "jsonl", "--out", str(tmp_path / "e.jsonl"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if [r for r in stack.all_records() if r["kind"] == "admin" and r["action"] == "export"]:
            break
        time.sleep(0.2)
    assert [r for r in stack.all_records() if r["kind"] == "admin" and r["action"] == "export"]
