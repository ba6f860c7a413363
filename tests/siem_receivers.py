"""Receivers that implement the documented request formats, authentication and error
answers of the SIEM and log products Sluice's sinks deliver to, for the tests (no such
product can run here): Splunk HTTP Event Collector, Datadog Logs intake v2,
Elasticsearch `_bulk`, and a webhook receiver that checks Sluice's signature.

Each keeps what it accepted, by record id, and can be told to answer "busy" for a number
of requests and to refuse, as invalid, any record whose text contains `POISON` — the way
each product refuses an invalid event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POISON = "POISON"


class Receiver:
    """One HTTP server on loopback in a thread; subclasses answer `handle`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records: dict[str, list[dict]] = {}   # id -> every copy accepted
        self.requests = 0
        self.busy = 0          # answer this many requests "busy"
        self.refused_auth = 0
        self.down = False      # close connections without answering
        recv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = self.rfile.read(n)
                if recv.down:
                    self.close_connection = True
                    return
                with recv.lock:
                    recv.requests += 1
                    status, answer = recv.handle(self.path, self.headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keep(self, record: dict):
        self.records.setdefault(record["id"], []).append(record)

    def take_busy(self) -> bool:
        if self.busy > 0:
            self.busy -= 1
            return True
        return False

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.records)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SplunkHEC(Receiver):
    """`POST /services/collector/event`, `Authorization: Splunk <token>`, concatenated
    event objects; HEC's codes: 0 success, 2/4 token, 6 invalid data format with
    `invalid-event-number` (events before it are indexed), 9 server busy (503), 12 event
    field required. With a request channel: `ackId`, and `/services/collector/ack`."""

    def __init__(self, token: str):
        self.token = token
        self.next_ack = 0
        self.acked: set[int] = set()
        self.ack_polls = 0
        super().__init__()

    def handle(self, path, headers, body):
        auth = headers.get("Authorization", "")
        if not auth.startswith("Splunk "):
            return 401, {"text": "Token is required", "code": 2}
        if auth != f"Splunk {self.token}":
            self.refused_auth += 1
            return 403, {"text": "Invalid token", "code": 4}
        channel = headers.get("X-Splunk-Request-Channel")
        if path == "/services/collector/ack":
            self.ack_polls += 1
            asked = json.loads(body)["acks"]
            # Acknowledged from the second poll on, as an indexer would after a while.
            return 200, {"acks": {str(a): (a in self.acked and self.ack_polls % 2 == 0) for a in asked}}
        if path != "/services/collector/event":
            return 404, {"text": "not found", "code": 404}
        if self.take_busy():
            return 503, {"text": "Server is busy", "code": 9}
        events, dec, text = [], json.JSONDecoder(), body.decode()
        i = 0
        while i < len(text):
            while i < len(text) and text[i].isspace():
                i += 1
            if i >= len(text):
                break
            try:
                obj, i = dec.raw_decode(text, i)
            except json.JSONDecodeError:
                return 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": len(events)}
            events.append(obj)
        if not events:
            return 400, {"text": "No data", "code": 5}
        for n, e in enumerate(events):
            if "event" not in e:
                return 400, {"text": "Event field is required", "code": 12, "invalid-event-number": n}
            if POISON in json.dumps(e["event"]):
                return 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": n}
            assert e["sourcetype"] and e["host"] and isinstance(e.get("time"), float | int), e
            self.keep(e["event"])
        answer = {"text": "Success", "code": 0}
        if channel:
            self.next_ack += 1
            self.acked.add(self.next_ack)
            answer["ackId"] = self.next_ack
        return 200, answer


class Datadog(Receiver):
    """`POST /api/v2/logs` with `DD-API-KEY`: a JSON array of at most 1,000 logs and
    5 MB; 202 accepted; 400 invalid; 403 bad key; 413 too large; 429/5xx busy."""

    def __init__(self, api_key: str):
        self.api_key = api_key
        self.logs: list[dict] = []
        super().__init__()

    def handle(self, path, headers, body):
        if path != "/api/v2/logs":
            return 404, {"errors": ["not found"]}
        if headers.get("DD-API-KEY") != self.api_key:
            self.refused_auth += 1
            return 403, {"errors": ["Forbidden"]}
        if len(body) > 5 * 1024 * 1024:
            return 413, {"errors": ["Payload too large"]}
        if self.take_busy():
            return 429, {"errors": ["Too many requests"]}
        logs = json.loads(body)
        if not isinstance(logs, list) or len(logs) > 1000:
            return 400, {"errors": ["Bad request"]}
        if any(POISON in json.dumps(log) for log in logs):
            return 400, {"errors": ["Bad request: invalid log"]}
        for log in logs:
            assert log["ddsource"] == "sluice" and log["service"] and log["hostname"], log
            self.logs.append(log)
            self.keep(log["sluice"])
        return 202, {}


class ElasticBulk(Receiver):
    """`POST /_bulk`, NDJSON action/document pairs, `Authorization: ApiKey …`: per-item
    results, 409 for a `create` of an `_id` already there, 400 mapper_parsing_exception
    for an invalid document, and a whole-request 429 when busy."""

    def __init__(self, api_key: str):
        self.api_key = api_key
        self.docs: dict[str, dict] = {}
        super().__init__()

    def handle(self, path, headers, body):
        if headers.get("Authorization") != f"ApiKey {self.api_key}":
            self.refused_auth += 1
            return 401, {"error": {"type": "security_exception"}, "status": 401}
        if path != "/_bulk":
            return 404, {"error": "no handler"}
        if self.take_busy():
            return 429, {"error": {"type": "es_rejected_execution_exception"}, "status": 429}
        lines = body.decode().splitlines()
        items, errors = [], False
        for action_line, doc_line in zip(lines[::2], lines[1::2]):
            action = json.loads(action_line)["create"]
            doc = json.loads(doc_line)
            _id = action["_id"]
            if POISON in doc_line:
                errors = True
                items.append({"create": {"_index": action["_index"], "_id": _id, "status": 400,
                                         "error": {"type": "mapper_parsing_exception",
                                                   "reason": "failed to parse field [sluice.request]"}}})
            elif _id in self.docs:
                errors = True
                items.append({"create": {"_index": action["_index"], "_id": _id, "status": 409,
                                         "error": {"type": "version_conflict_engine_exception",
                                                   "reason": "document already exists"}}})
            else:
                assert doc["@timestamp"] and doc["event"]["id"] == _id, doc
                self.docs[_id] = doc
                self.keep(doc["sluice"])
                items.append({"create": {"_index": action["_index"], "_id": _id, "status": 201,
                                         "result": "created"}})
        return 200, {"took": 1, "errors": errors, "items": items}


class Webhook(Receiver):
    """Checks `x-sluice-signature` (HMAC-SHA256 over `<timestamp>.<body>`) and refuses a
    timestamp more than 5 minutes off, as a receiver should; 400 for an invalid batch."""

    def __init__(self, secret: str):
        self.secret = secret.encode()
        self.bad_signatures = 0
        self.batches: list[dict] = []
        super().__init__()

    def handle(self, path, headers, body):
        ts = headers.get("x-sluice-timestamp", "")
        sig = headers.get("x-sluice-signature", "")
        want = "v1=" + hmac.new(self.secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, want) or abs(time.time() - int(ts or 0)) > 300:
            self.bad_signatures += 1
            return 401, {"error": "bad signature"}
        if self.take_busy():
            return 503, {"error": "busy"}
        batch = json.loads(body)
        if POISON in body.decode():
            return 400, {"error": "invalid record"}
        assert headers.get("idempotency-key"), headers
        self.batches.append(batch)
        for r in batch["records"]:
            self.keep(r)
        return 200, {"ok": True}


class Slack(Receiver):
    """A Slack incoming webhook: `POST /services/T…/B…/…` with `{"text", "blocks"}`;
    `ok`, or 400 `invalid_payload`."""

    def __init__(self):
        self.messages: list[dict] = []
        super().__init__()

    def handle(self, path, headers, body):
        if not path.startswith("/services/"):
            return 404, "no_service"
        msg = json.loads(body)
        if not isinstance(msg.get("text"), str) or not msg["text"]:
            return 400, "invalid_payload"
        for b in msg.get("blocks", []):
            if b.get("type") not in ("header", "section", "divider", "context"):
                return 400, "invalid_blocks"
        self.messages.append(msg)
        return 200, "ok"


class PagerDuty(Receiver):
    """PagerDuty Events API v2, `POST /v2/enqueue`: a 32-character `routing_key`,
    `event_action` trigger / acknowledge / resolve, `dedup_key`; a trigger needs
    `payload.summary`, `payload.source` and `payload.severity` (critical, error, warning,
    info). 202 with the dedup key, or 400 "invalid event". Keeps incidents by dedup key."""

    def __init__(self, routing_key: str):
        self.routing_key = routing_key
        self.events: list[dict] = []
        self.incidents: dict[str, str] = {}   # dedup_key -> triggered | resolved
        super().__init__()

    def handle(self, path, headers, body):
        if path != "/v2/enqueue":
            return 404, {"status": "not found"}
        e = json.loads(body)
        errors = []
        if e.get("routing_key") != self.routing_key or len(e.get("routing_key", "")) != 32:
            errors.append("'routing_key' is invalid")
        action = e.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid")
        if action == "trigger":
            p = e.get("payload") or {}
            for k in ("summary", "source", "severity"):
                if not p.get(k):
                    errors.append(f"'payload.{k}' is missing or blank")
            if p.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("'payload.severity' is invalid")
            if len(p.get("summary", "")) > 1024:
                errors.append("'payload.summary' is too long")
        elif not e.get("dedup_key"):
            errors.append("'dedup_key' is required")
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        if self.take_busy():
            return 429, {"status": "throttled"}
        self.events.append(e)
        self.incidents[e["dedup_key"]] = "triggered" if action == "trigger" else "resolved"
        return 202, {"status": "success", "message": "Event processed", "dedup_key": e["dedup_key"]}


class Teams(Receiver):
    """A Microsoft Teams workflow webhook: a message whose attachment is an Adaptive
    Card; 202, or 400."""

    def __init__(self):
        self.cards: list[dict] = []
        super().__init__()

    def handle(self, path, headers, body):
        m = json.loads(body)
        try:
            att = m["attachments"][0]
            ok = (m["type"] == "message" and att["contentType"] == "application/vnd.microsoft.card.adaptive"
                  and att["content"]["type"] == "AdaptiveCard" and att["content"]["body"])
        except (KeyError, IndexError, TypeError):
            ok = False
        if not ok:
            return 400, {"error": {"code": "BadRequest", "message": "Invalid adaptive card"}}
        self.cards.append(att["content"])
        return 202, {}


class AzureMonitor(Receiver):
    """Microsoft Entra ID's token endpoint (`POST /<tenant>/oauth2/v2.0/token`, client
    credentials, scope `https://monitor.azure.com/.default`) and the Logs Ingestion API
    (`POST /dataCollectionRules/<dcr>/streams/<stream>?api-version=2023-01-01`, a bearer
    token, a JSON array of at most 1 MB whose rows have `TimeGenerated`): 204, 400 for an
    invalid row, 401 for an unknown token, 413, 503 when busy. `revoke()` invalidates the
    tokens issued so far."""

    def __init__(self, tenant: str, client_id: str, secret: str, dcr: str, stream: str):
        self.tenant, self.client_id, self.secret, self.dcr, self.stream = tenant, client_id, secret, dcr, stream
        self.tokens: set[str] = set()
        self.issued = 0
        self.rows: list[dict] = []
        super().__init__()

    def revoke(self):
        with self.lock:
            self.tokens.clear()

    def handle(self, path, headers, body):
        from urllib.parse import parse_qs, urlparse
        if path == f"/{self.tenant}/oauth2/v2.0/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            if form.get("grant_type") != "client_credentials" or form.get("scope") != "https://monitor.azure.com/.default":
                return 400, {"error": "invalid_request"}
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.secret:
                self.refused_auth += 1
                return 401, {"error": "invalid_client"}
            self.issued += 1
            token = f"token-{self.issued}"
            self.tokens.add(token)
            return 200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        url = urlparse(path)
        if url.path != f"/dataCollectionRules/{self.dcr}/streams/{self.stream}" or \
                parse_qs(url.query).get("api-version") != ["2023-01-01"]:
            return 404, {"error": {"code": "NotFound"}}
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return 401, {"error": {"code": "InvalidToken", "message": "The token is invalid or expired"}}
        if len(body) > 1024 * 1024:
            return 413, {"error": {"code": "ContentLengthLimitExceeded"}}
        if self.take_busy():
            return 503, {"error": {"code": "ServiceUnavailable"}}
        rows = json.loads(body)
        if not isinstance(rows, list) or any("TimeGenerated" not in r for r in rows):
            return 400, {"error": {"code": "InvalidArgument", "message": "TimeGenerated missing"}}
        if POISON in body.decode():
            return 400, {"error": {"code": "InvalidArgument", "message": "a row does not match the stream's declaration"}}
        for r in rows:
            assert r["RecordId"] == r["Record"]["id"] and r["Kind"] == r["Record"]["kind"], r
            self.rows.append(r)
            self.keep(r["Record"])
        return 204, {}


class OtlpLogs(Receiver):
    """An OpenTelemetry collector's OTLP/HTTP logs endpoint: `POST /v1/logs`, protobuf
    `ExportLogsServiceRequest` (decoded with `opentelemetry-proto`); 200, or 400 for a body
    that does not decode."""

    def __init__(self):
        self.logs: list = []
        super().__init__()

    def handle(self, path, headers, body):
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        if path != "/v1/logs" or headers.get("content-type") != "application/x-protobuf":
            return 404, {}
        try:
            req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        except Exception:  # noqa: BLE001 - any decode failure is the client's fault
            return 400, {}
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for log in sl.log_records:
                    self.logs.append(log)
                    self.keep(json.loads(log.body.string_value))
        return 200, {}
