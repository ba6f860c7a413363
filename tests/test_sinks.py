"""Continuous delivery of the ledger to SIEMs: one `sluice run` with every sink enabled
while the openai SDK sends real traffic — syslog over TCP and TLS into a real rsyslog,
Splunk HEC (with indexer acknowledgement), Datadog Logs, Elasticsearch `_bulk` and a
signed webhook into receivers that implement each product's documented format, auth and
error answers (`siem_receivers`). Every record reaches every sink once (by record id),
"busy" answers are retried, a record a destination refuses as invalid is dead-lettered
with the reason (and an admin record), the sinks catch up across a SIGKILL and a dead
destination without losing anything, and a metadata-only sink never sees a prompt.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from netns import Proc, free_port, sluice_bin, wait_for_port
from servers import wait_until
from siem_receivers import POISON, Datadog, ElasticBulk, SplunkHEC, Webhook
from sluice_stack import Stack

CALLS = """
import json, sys, openai
c = openai.OpenAI(api_key="sk-sinks", max_retries=0)
for text in json.loads(sys.argv[1]):
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
print(json.dumps({"ok": True}))
"""

SYSLOG_FRAME = re.compile(r"^<(\d+)>1 (\S+) (\S+) sluice \S+ (\S+) ")


def tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 it signed (openssl)."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2", "-subj", "/CN=sink test CA")
    run("req", *ec, "-keyout", d / "srv.key", "-out", d / "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                           "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", d / "srv.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
        "-CAcreateserial", "-out", d / "srv.pem", "-days", "1", "-extfile", d / "ext")
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


class Rsyslog:
    """A real rsyslogd taking RFC 5424 over TCP and over TLS (GnuTLS driver), octet-counted
    frames, each message written raw to its own file."""

    def __init__(self, d: Path):
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = tls_files(d / "tls")
        self.tcp_port, self.tls_port = free_port("127.0.0.1"), free_port("127.0.0.1")
        self.tcp_out, self.tls_out = d / "tcp.out", d / "tls.out"
        self.conf = d / "rsyslog.conf"
        self.conf.write_text(f"""global(workDirectory="{d}"
       DefaultNetstreamDriverCAFile="{self.ca}"
       DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}"
       maxMessageSize="256k")
module(load="imtcp" MaxSessions="100")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="tcp") {{ action(type="omfile" file="{self.tcp_out}" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{self.tls_out}" template="raw") }}
input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1" ruleset="tcp")
input(type="imtcp" port="{self.tls_port}" address="127.0.0.1" ruleset="tls"
      StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
""")
        self.start()

    def start(self):
        self.proc = Proc(["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.dir / "rsyslog.pid")],
                         self.dir / f"rsyslogd-{time.monotonic_ns()}.log")
        wait_for_port("127.0.0.1", self.tcp_port, timeout=20)
        wait_for_port("127.0.0.1", self.tls_port, timeout=20)

    def stop(self):
        self.proc.stop(timeout=10)

    @staticmethod
    def ids(out: Path) -> list[str]:
        """The record id (RFC 5424 MSGID... the record id is in the SD) of every line."""
        lines = out.read_text().splitlines() if out.exists() else []
        ids = []
        for line in lines:
            assert SYSLOG_FRAME.match(line), f"not RFC 5424: {line!r}"
            m = re.search(r' id="([^"]+)"', line)
            assert m, line
            ids.append(m.group(1))
        return ids


def sinks_config(recv: dict, syslog: Rsyslog, secrets: Path) -> str:
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "hec").write_text("hec-token-1\n")
    return f"""sinks:
  - name: splunk
    batch: 50
    interval_ms: 200
    splunk_hec: {{url: "{recv['splunk'].url}", token: {{file: "{secrets / 'hec'}"}}, index: ai_audit, ack: true}}
  - name: datadog
    content: metadata
    filter: {{kinds: [interaction]}}
    interval_ms: 200
    datadog: {{url: "{recv['datadog'].url}", api_key: {{value: "dd-key-1"}}, service: ai-gateway, tags: ["env:test"]}}
  - name: elastic
    interval_ms: 200
    elasticsearch: {{url: "{recv['elastic'].url}", index: logs-sluice-default, api_key: {{value: "ZWxhc3RpYzprZXk="}}}}
  - name: hook
    interval_ms: 200
    webhook: {{url: "{recv['hook'].url}/hook", secret: {{value: "whsec-1"}}}}
  - name: syslog-tcp
    interval_ms: 200
    syslog: {{url: "tcp://127.0.0.1:{syslog.tcp_port}"}}
  - name: syslog-tls
    interval_ms: 200
    ca_file: "{syslog.ca}"
    syslog: {{url: "tls://127.0.0.1:{syslog.tls_port}"}}
"""


def receivers() -> dict:
    return {"splunk": SplunkHEC("hec-token-1"), "datadog": Datadog("dd-key-1"),
            "elastic": ElasticBulk("ZWxhc3RpYzprZXk="), "hook": Webhook("whsec-1")}


def send(stack: Stack, texts: list[str]):
    assert stack.python(CALLS.replace("sys.argv[1]", repr(json.dumps(texts)))) == {"ok": True}


def status(stack: Stack) -> dict:
    out = stack.cli("sinks", "status", "--json").stdout
    return {s["name"]: s for s in map(json.loads, out.splitlines())}


def test_every_sink_gets_every_record_once_and_refused_ones_are_dead_lettered(topo, tmp_path):
    recv = receivers()
    syslog = Rsyslog(tmp_path / "rsyslog")
    recv["splunk"].busy = 2          # "Server is busy" twice
    recv["elastic"].busy = 1         # a whole-request 429
    recv["hook"].busy = 1
    stack = Stack(topo, tmp_path / "node", extra_config=sinks_config(recv, syslog, tmp_path / "secrets"))
    try:
        send(stack, [f"to the sinks {i}" for i in range(3)] + [f"a {POISON} prompt"] + ["after the bad one"])
        stack.wait_records(5, "interaction")
        poison = next(r for r in stack.all_records() if r["kind"] == "interaction"
                      and POISON in json.dumps(r["request"]))

        def expected(kinds=None):
            return {r["id"] for r in stack.all_records() if kinds is None or r["kind"] in kinds}

        refusing = ("splunk", "elastic", "hook")

        def admins():
            return [r for r in stack.all_records() if r["kind"] == "admin"
                    and (r.get("details") or {}).get("event") == "dead_letter"]
        wait_until(lambda: len(admins()) == len(refusing), timeout=60,
                   what="a dead-letter admin record from each refusing sink")
        # Every record of the ledger reached every sink, but the refused one; the dead
        # letters' admin records follow them (they are ledger records too).
        def delivered():
            want = expected()
            return (all(recv[n].ids() == want - {poison["id"]} for n in refusing)
                    and recv["datadog"].ids() == expected({"interaction"})
                    and set(Rsyslog.ids(syslog.tcp_out)) == want
                    and set(Rsyslog.ids(syslog.tls_out)) == want
                    and all(s["lag_records"] == 0 for s in status(stack).values()))
        wait_until(delivered, timeout=60, what="every record at every sink")

        # Once each (Elasticsearch by `_id`; the others took each record in one request).
        for n in refusing + ("datadog",):
            assert all(len(v) == 1 for v in recv[n].records.values()), n
        assert sorted(Rsyslog.ids(syslog.tcp_out)) == sorted(expected())
        # Busy answers were retried; the HEC batches were acknowledged.
        assert recv["splunk"].ack_polls >= 1 and recv["hook"].bad_signatures == 0
        st = status(stack)
        for n in refusing:
            assert st[n]["dead_letters"] == 1, st[n]
            dead = [json.loads(line) for line in
                    (stack.state / "ledger" / "sinks" / f"{n}.dead.jsonl").read_text().splitlines()]
            assert [d["record"]["id"] for d in dead] == [poison["id"]], dead
            assert dead[0]["reason"], dead
        dead = json.loads((stack.state / "ledger" / "sinks" / "splunk.dead.jsonl").read_text())
        assert "Splunk HEC code 6: Invalid data format" in dead["reason"], dead
        dead = json.loads((stack.state / "ledger" / "sinks" / "elastic.dead.jsonl").read_text())
        assert "mapper_parsing_exception" in dead["reason"], dead
        dead_admins = admins()
        assert sorted(a["target"]["id"] for a in dead_admins) == sorted(refusing), dead_admins
        assert all(a["details"]["record_id"] == poison["id"] and a["target"]["type"] == "sink"
                   for a in dead_admins)
        assert stack.metric('sluice_sink_dead_letters_total{sink="elastic"}') == 1
        assert stack.metric('sluice_sink_errors_total{sink="splunk"}') >= 2
        assert stack.metric('sluice_sink_lag_records{sink="hook"}') == 0

        # The metadata-only sink never saw a prompt or an answer, only their digests.
        dd = json.dumps(recv["datadog"].logs)
        assert "to the sinks" not in dd and "content_sha256" in dd
        assert all(log["ddtags"].startswith("kind:interaction") and "env:test" in log["ddtags"]
                   for log in recv["datadog"].logs)
        # Elasticsearch documents are ECS.
        doc = next(iter(recv["elastic"].docs.values()))
        assert doc["event"]["dataset"] == "sluice.audit" and doc["host"]["name"] and doc["@timestamp"]
        # Splunk events carry the index and sourcetype configured.
        text = stack.cli("sinks", "status").stdout
        assert "splunk (splunk_hec): lag 0 records" in text, text
    finally:
        for r in recv.values():
            r.close()


def test_sinks_catch_up_after_a_sigkill_and_a_dead_destination(topo, tmp_path):
    recv = receivers()
    syslog = Rsyslog(tmp_path / "rsyslog")
    stack = Stack(topo, tmp_path / "node", extra_config=sinks_config(recv, syslog, tmp_path / "secrets"))
    try:
        ids = lambda: {r["id"] for r in stack.all_records()}  # noqa: E731
        send(stack, ["before the kill"] * 3)
        stack.wait_records(3, "interaction")
        # SIGKILL while the sinks work, then restart: they resume from their cursors.
        os.killpg(stack.proxy.pid, signal.SIGKILL)
        stack.proxy.popen.wait(timeout=10)
        # Meanwhile Elasticsearch and the webhook go away, and rsyslog restarts.
        recv["elastic"].down = True
        recv["hook"].busy = 10 ** 6
        syslog.stop()
        stack.start_proxy()
        syslog.start()
        send(stack, ["while a destination is down"] * 4)
        stack.wait_records(7, "interaction")
        # Requests are served; the dead sinks only fall behind, and say why.
        wait_until(lambda: status(stack)["elastic"]["lag_records"] > 0
                   and status(stack)["hook"]["last_error"], what="the dead sinks to report lag")
        assert "HTTP 503" in status(stack)["hook"]["last_error"], status(stack)["hook"]
        assert stack.metric('sluice_sink_lag_records{sink="elastic"}') > 0
        recv["elastic"].down = False
        recv["hook"].busy = 0
        want = ids

        def caught_up():
            w = want()
            return (all(recv[n].ids() == w for n in ("splunk", "elastic", "hook"))
                    and set(Rsyslog.ids(syslog.tcp_out)) == w
                    and set(Rsyslog.ids(syslog.tls_out)) == w
                    and all(s["lag_records"] == 0 for s in status(stack).values()))
        wait_until(caught_up, timeout=120, what="every sink to catch up")
        # Elasticsearch has each record once whatever was sent again (`_id`); the rest at
        # least once.
        assert len(recv["elastic"].docs) == len(want())
    finally:
        for r in recv.values():
            r.close()


def test_a_bad_sink_is_refused_with_the_key_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    for body, expect in [
        ("sinks:\n  - name: a\n    webhook: {url: 'http://x', secret: {value: s}}\n    "
         "syslog: {url: 'tcp://h:514'}\n", "sinks[0].destination"),
        ("sinks:\n  - name: Bad Name\n    syslog: {url: 'tcp://h:514'}\n", "sinks[0].name"),
        ("sinks:\n  - name: s\n    splunk_hec: {url: 'http://x', token: {file: /nonexistent/token}}\n",
         "sinks[0].splunk_hec.token"),
        ("sinks:\n  - name: s\n    syslog: {url: 'udp://h:514'}\n", "sinks[0].syslog.url"),
        ("sinks:\n  - name: s\n    syslog: {url: 'tcp://h:514'}\n  - name: s\n    syslog: {url: 'tcp://h:515'}\n",
         "sinks[1].name"),
        ("sinks:\n  - name: s\n    syslog: {url: 'tcp://h:514', verify: false}\n", "verify"),
    ]:
        cfg.write_text(f'state_dir: "{tmp_path}"\n' + body)
        r = subprocess.run([str(sluice_bin()), "sinks", "status", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and expect in r.stderr, (body, r.stderr)


def test_s3_gets_every_record_once_as_partitioned_gzip_jsonl_under_object_lock(topo, tmp_path, monkeypatch):
    """S3 (moto, an S3-compatible server from PyPI): gzip JSON Lines objects under
    `dt=…/hour=…`, each under COMPLIANCE retention; every record present once in the
    bucket's current objects, even across a SIGKILL and a restart mid-delivery."""
    import boto3
    import gzip

    from netns import venv_python
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSLUICESINK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sink-secret")
    port = free_port("127.0.0.1")
    Proc([str(Path(venv_python()).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
         tmp_path / "moto.log")
    wait_for_port("127.0.0.1", port, timeout=30)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    s3.create_bucket(Bucket="ai-audit", ObjectLockEnabledForBucket=True)
    stack = Stack(topo, tmp_path / "node", extra_config=f"""sinks:
  - name: archive
    batch: 3
    interval_ms: 200
    s3:
      endpoint: "http://127.0.0.1:{port}"
      bucket: ai-audit
      prefix: "sluice/"
      object_lock: {{mode: compliance, retention_days: 1}}
""")

    def current() -> dict[str, list[str]]:
        """Record ids per current object."""
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="ai-audit"):
            for o in page.get("Contents", []):
                body = s3.get_object(Bucket="ai-audit", Key=o["Key"])["Body"].read()
                lines = gzip.decompress(body).decode().splitlines()
                out[o["Key"]] = [json.loads(line)["id"] for line in lines]
        return out

    send(stack, ["to the archive"] * 4)
    stack.wait_records(4, "interaction")
    os.killpg(stack.proxy.pid, signal.SIGKILL)
    stack.proxy.popen.wait(timeout=10)
    stack.start_proxy()
    send(stack, ["after the restart"] * 3)
    stack.wait_records(7, "interaction")

    def all_there():
        ids = [i for v in current().values() for i in v]
        return sorted(ids) == sorted(r["id"] for r in stack.all_records()) and \
            status(stack)["archive"]["lag_records"] == 0
    wait_until(all_there, timeout=60, what="every record in the bucket")
    objects = current()
    ids = [i for v in objects.values() for i in v]
    assert len(ids) == len(set(ids)), "a record twice in the bucket's current objects"
    for key in objects:
        m = re.fullmatch(r"sluice/([^/]+)/dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/(\d{20})\.jsonl\.gz", key)
        assert m, key
    head = s3.head_object(Bucket="ai-audit", Key=next(iter(objects)))
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ContentEncoding"] == "gzip", head


def test_azure_monitor_gets_every_record_with_a_renewed_token_and_parks_an_invalid_one(topo, tmp_path):
    from siem_receivers import AzureMonitor
    az = AzureMonitor("tenant-1", "client-1", "s3cret", "dcr-0123abcd", "Custom-SluiceAudit_CL")
    (tmp_path / "az-secret").write_text("s3cret\n")
    stack = Stack(topo, tmp_path / "node", extra_config=f"""sinks:
  - name: azure
    interval_ms: 200
    azure_monitor:
      endpoint: "{az.url}"
      authority: "{az.url}"
      dcr_immutable_id: dcr-0123abcd
      stream: Custom-SluiceAudit_CL
      tenant_id: tenant-1
      client_id: client-1
      client_secret: {{file: "{tmp_path / 'az-secret'}"}}
""")
    try:
        send(stack, ["to azure 1", "to azure 2"])
        stack.wait_records(2, "interaction")
        wait_until(lambda: az.ids() == {r["id"] for r in stack.all_records()}, what="the first rows in Azure Monitor")
        # The token is revoked (as Entra ID may): the sink gets a new one and carries on.
        az.revoke()
        send(stack, ["to azure 3", f"a {POISON} row"])
        stack.wait_records(4, "interaction")
        poison = next(r for r in stack.all_records() if POISON in json.dumps(r.get("request")))

        def done():
            want = {r["id"] for r in stack.all_records()} - {poison["id"]}
            return az.ids() == want and status(stack)["azure"]["lag_records"] == 0
        wait_until(done, timeout=60, what="every row in Azure Monitor")
        assert az.issued == 2, az.issued
        assert all(len(v) == 1 for v in az.records.values())
        dead = json.loads((stack.state / "ledger" / "sinks" / "azure.dead.jsonl").read_text())
        assert dead["record"]["id"] == poison["id"] and "InvalidArgument" in dead["reason"], dead
        row = next(r for r in az.rows if r["Kind"] == "interaction")
        assert row["TimeGenerated"] == row["Record"]["ts"] and row["Node"] and row["Principal"], row
    finally:
        az.close()


def test_otlp_logs_reach_a_collector_as_log_records(topo, tmp_path):
    from siem_receivers import OtlpLogs
    col = OtlpLogs()
    stack = Stack(topo, tmp_path / "node", extra_config=f"""sinks:
  - name: otel
    interval_ms: 200
    otlp_logs: {{endpoint: "{col.url}", headers: {{x-tenant: team-a}}}}
""")
    try:
        send(stack, ["to the collector"] * 2)
        stack.wait_records(2, "interaction")
        wait_until(lambda: col.ids() == {r["id"] for r in stack.all_records()}, what="every record as a log")
        log = next(lg for lg in col.logs if json.loads(lg.body.string_value)["kind"] == "interaction")
        attrs = {a.key: a.value.string_value for a in log.attributes}
        assert attrs["event.name"] == "sluice.interaction" and attrs["gen_ai.provider.name"] == "openai", attrs
        assert log.time_unix_nano > 0 and log.severity_text == "INFO"
    finally:
        col.close()


def test_doctor_says_which_sink_destinations_answer(tmp_path):
    hook = Webhook("s")
    dead = free_port("127.0.0.1")
    cfg = tmp_path / "doctor.yaml"
    cfg.write_text(f"""state_dir: "{tmp_path / 'state'}"
sinks:
  - name: hook
    webhook: {{url: "{hook.url}/hook", secret: {{value: s}}}}
  - name: gone
    syslog: {{url: "tcp://127.0.0.1:{dead}"}}
""")
    try:
        r = subprocess.run([str(sluice_bin()), "doctor", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert f"[ ok ] sink hook: {hook.url}/hook answers (HTTP " in r.stdout, r.stdout
        assert "[FAIL] sink gone:" in r.stdout and "its records wait in the ledger" in r.stdout, r.stdout
        assert r.returncode != 0
    finally:
        hook.close()


def test_a_cursor_edited_past_the_head_does_not_make_a_sink_skip_records(topo, tmp_path):
    """A node user (or a restored ledger) leaves a sink cursor far past the ledger's head:
    taken at its word, the sink would skip everything up to it. It delivers from the start
    instead, and says so."""
    hook = Webhook("s")
    stack = Stack(topo, tmp_path / "node", start=False, extra_config=f"""sinks:
  - name: hook
    interval_ms: 200
    webhook: {{url: "{hook.url}/hook", secret: {{value: s}}}}
""")
    sinks = stack.state / "ledger" / "sinks"
    sinks.mkdir(parents=True, exist_ok=True)
    (sinks / "hook.json").write_text(json.dumps({"seq": 10 ** 9, "delivered": 0, "dead_letters": 0}))
    try:
        stack.start_proxy()
        send(stack, ["after the edit"] * 2)
        stack.wait_records(2, "interaction")
        wait_until(lambda: hook.ids() == {r["id"] for r in stack.all_records()}, what="every record at the sink")
        assert status(stack)["hook"]["lag_records"] == 0
        assert "its cursor is past the ledger's head" in stack.proxy.log.read_text()
    finally:
        hook.close()
