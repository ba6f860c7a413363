"""OpenTelemetry export: a receiver on loopback decodes what Sluice posts with the official
`opentelemetry-proto` Python package (the real protobuf messages of OTLP/HTTP), while the
openai SDK sends plain, streamed and blocked requests through Sluice; the spans and the
GenAI metrics carry the conventions' attributes with the values of those requests. With the
collector gone, Sluice keeps serving and counts what it drops."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from sluice_stack import Stack

CALLS = """
import json, openai
o = openai.OpenAI(api_key="sk-otel", max_retries=0)
r = o.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "trace me"}])
s = o.chat.completions.create(model="gpt-4o", stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "stream me"}])
sid = None
for chunk in s:
    sid = sid or chunk.id
try:
    o.chat.completions.create(model="gpt-4.1-nano", messages=[{"role": "user", "content": "no"}])
    blocked = None
except openai.APIStatusError as e:
    blocked = e.status_code
print(json.dumps({"reply": r.choices[0].message.content, "usage": [r.usage.prompt_tokens, r.usage.completion_tokens], "blocked": blocked,
                  "id": r.id, "model": r.model, "stream_id": sid}))
"""


class Receiver:
    """An OTLP/HTTP endpoint that keeps the decoded requests."""

    def __init__(self):
        self.spans, self.metrics, self.resources = [], [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"] == "application/x-protobuf"
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    for rs in req.resource_spans:
                        receiver.resources.append(rs.resource)
                        for ss in rs.scope_spans:
                            receiver.spans.extend(ss.spans)
                    answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    for rm in req.resource_metrics:
                        for sm in rm.scope_metrics:
                            receiver.metrics.extend(sm.metrics)
                    answer = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [x.string_value for x in v.array_value.values]
        else:
            out[kv.key] = getattr(v, kind)
    return out


def test_spans_and_genai_metrics_reach_a_collector_and_drops_are_counted(topo, tmp_path):
    receiver = Receiver()
    try:
        stack = Stack(topo, tmp_path, extra_config=f"""
otel:
  endpoint: "http://127.0.0.1:{receiver.port}"
  content: true
  flush_interval_ms: 200
  metrics_interval_ms: 300
policy:
  policies:
    - id: no-nano
      models: {{deny: ["gpt-4.1-nano"]}}
""")
        out = stack.python(CALLS)
        assert out["blocked"] == 403
        def exported_durations() -> int:
            newest = [m for m in receiver.metrics if m.name == "gen_ai.client.operation.duration"]
            return sum(p.count for p in newest[-1].histogram.data_points) if newest else 0

        deadline = time.monotonic() + 20
        while (len(receiver.spans) < 3 or exported_durations() < 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        spans = {s.name: s for s in receiver.spans}
        assert set(spans) >= {"chat gpt-4o-mini", "chat gpt-4o", "chat gpt-4.1-nano"}, list(spans)

        plain = attrs(spans["chat gpt-4o-mini"].attributes)
        assert plain["gen_ai.operation.name"] == "chat"
        assert plain["gen_ai.provider.name"] == "openai"
        assert plain["gen_ai.request.model"] == "gpt-4o-mini"
        assert [plain["gen_ai.usage.input_tokens"], plain["gen_ai.usage.output_tokens"]] == out["usage"]
        assert plain["server.address"] == "api.openai.com" and plain["server.port"] == 443
        # The provider's own id and model, as the SDK saw them (streamed: from the chunks).
        assert [plain["gen_ai.response.id"], plain["gen_ai.response.model"]] == [out["id"], out["model"]]
        streamed = attrs(spans["chat gpt-4o"].attributes)
        assert streamed["gen_ai.response.id"] == out["stream_id"] and out["stream_id"]
        assert plain["sluice.decision"] == "allow" and "error.type" not in plain
        assert "trace me" in plain["gen_ai.input.messages"]
        assert out["reply"] in plain["gen_ai.output.messages"]
        assert plain.get("process.executable.name") or plain["client.address"], "the caller"
        assert spans["chat gpt-4o-mini"].kind == 3  # SPAN_KIND_CLIENT
        assert spans["chat gpt-4o-mini"].end_time_unix_nano > spans["chat gpt-4o-mini"].start_time_unix_nano

        blocked = attrs(spans["chat gpt-4.1-nano"].attributes)
        assert blocked["error.type"] == "403" and blocked["sluice.decision"] == "block"
        assert blocked["sluice.reason_codes"] == ["model_denied"]
        assert blocked["sluice.policy_id"].startswith("no-nano")
        assert spans["chat gpt-4.1-nano"].status.code == 2  # STATUS_CODE_ERROR

        service = attrs(receiver.resources[0].attributes)
        assert service["service.name"] == "sluice"

        # Metrics are cumulative: the newest export of each has everything.
        newest = {}
        for m in receiver.metrics:
            newest[m.name] = m
        usage = newest["gen_ai.client.token.usage"]
        assert usage.unit == "{token}"
        points = {(attrs(p.attributes)["gen_ai.request.model"], attrs(p.attributes)["gen_ai.token.type"]): p
                  for p in usage.histogram.data_points}
        assert points[("gpt-4o-mini", "input")].sum == out["usage"][0]
        assert points[("gpt-4o-mini", "output")].sum == out["usage"][1]
        durations = newest["gen_ai.client.operation.duration"].histogram.data_points
        assert sum(p.count for p in durations) == 3 and newest["gen_ai.client.operation.duration"].unit == "s"
        ttfc = newest["gen_ai.client.operation.time_to_first_chunk"].histogram.data_points
        assert [attrs(p.attributes)["gen_ai.request.model"] for p in ttfc] == ["gpt-4o"], "streams only"
        assert stack.metric('sluice_otel_exported_total{signal="traces"}') >= 3
    finally:
        receiver.close()

    # The collector is gone: requests still succeed, and the lost spans are counted.
    before = stack.metric('sluice_otel_dropped_total{reason="export_failed",signal="traces"}')
    assert stack.python(CALLS)["blocked"] == 403
    deadline = time.monotonic() + 30
    while (stack.metric('sluice_otel_dropped_total{reason="export_failed",signal="traces"}') < before + 3
           and time.monotonic() < deadline):
        time.sleep(0.2)
    assert stack.metric('sluice_otel_dropped_total{reason="export_failed",signal="traces"}') >= before + 3
    assert stack.alive()


def test_spans_still_queued_at_a_clean_stop_reach_the_collector(topo, tmp_path):
    """Batches held back (a long flush interval): stopping Sluice sends them, and the
    metrics, before it exits."""
    receiver = Receiver()
    try:
        stack = Stack(topo, tmp_path, extra_config=f"""
otel:
  endpoint: "http://127.0.0.1:{receiver.port}"
  flush_interval_ms: 600000
  metrics_interval_ms: 600000
  batch: 1000
policy:
  policies:
    - id: no-nano
      models: {{deny: ["gpt-4.1-nano"]}}
""")
        assert stack.python(CALLS)["blocked"] == 403
        time.sleep(1)
        assert receiver.spans == [], "held back until the flush interval or the stop"
        assert stack.proxy.stop(timeout=30) == 0, stack.proxy.tail()
        names = sorted(s.name for s in receiver.spans)
        assert names == ["chat gpt-4.1-nano", "chat gpt-4o", "chat gpt-4o-mini"], names
        assert {m.name for m in receiver.metrics} >= {"gen_ai.client.operation.duration",
                                                       "gen_ai.client.token.usage"}
    finally:
        receiver.close()
