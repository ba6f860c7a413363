"""Bypass attempts by a hostile workload: every attempt is either inspected with the right
decision or refused, the provider namespace sees no forbidden byte (asserted at the mock),
and the ledger holds a record with the reason.

Runs on the Sluice stack (client netns → sluice → mock provider netns); one SNI attempt also
goes through the real eBPF redirect (test_redirect's harness). The last test searches every
byte Sluice wrote (state directory, proxy logs) for the credentials the clients sent.
"""

from __future__ import annotations

import gzip
import json
import time

import pytest

from netns import run, sluice_bin
from sluice_stack import Stack

SECRET = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"
POLICY = """
policy:
  policies:
    - id: dlp
      version: 2
      prompt: {secrets: block}
"""
# Credentials the clients send in this module; none may be found where Sluice writes.
CREDENTIALS = ["sk-bypass-openai-0123456789", "AIzaBypassGeminiKey0123456789",
               "sk-ant-bypass-0123456789", "azure-bypass-key-0123456789",
               "AIzaBypassGoogHeader0123456789",
               # Bedrock (SigV4): access key id, secret key, session token.
               "AKIDBYPASSSWEEP00001", "bypassSweepSecret/0123456789abcdef",
               "bypassSweepSessionToken0123456789"]


@pytest.fixture
def stack(topo, tmp_path):
    s = Stack(topo, tmp_path, extra_config=POLICY)
    yield s
    assert s.alive()


def forbidden_seen(stack) -> list[dict]:
    """Requests the mock received that carry the secret."""
    return [r for r in stack.mock_requests() if SECRET in json.dumps(r)]


def last_record(stack, kind: str) -> dict:
    return stack.wait_records(1, kind)[-1]


TLS_CLIENT = """
import json, socket, ssl, time
ctx = ssl.create_default_context()
def connect(sni="api.openai.com", timeout=10, verify=True):
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(socket.create_connection(("api.openai.com", 443), timeout=timeout),
                           server_hostname=sni)
"""
"""Script preamble for hand-made clients in the client netns: `connect()` opens a TLS
connection to api.openai.com:443 presenting `sni` (None: no SNI)."""


# === SNI, through the real eBPF redirect ===================================================


@pytest.fixture
def redirected(topo, tmp_path):
    from test_redirect import Redirected
    r = Redirected(topo, tmp_path, "fail_closed")
    yield r
    r.close()


def connections(r, reason: str, timeout: float = 15) -> list[dict]:
    """The connection records with `reason`, waiting for the first (queries read the
    index, which gathers records for up to a second before it commits them)."""
    deadline = time.monotonic() + timeout
    while True:
        out = run([str(sluice_bin()), "events", "tail", "--json", "--kind", "connection",
                   "--config", str(r.config)])
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        rows = [c for c in rows if c["reason"] == reason]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def raw_tls(sni: str | None) -> str:
    """A hand-made TLS client: connects to api.openai.com's (real, captured) address with
    the given SNI, or none, and sends a chat request naming api.openai.com with a secret."""
    return TLS_CLIENT + f"""
out = {{}}
try:
    t = connect({sni!r}, verify=False)
    body = json.dumps({{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "{SECRET}"}}]}})
    t.sendall(("POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n"
               "Content-Type: application/json\\r\\nAuthorization: Bearer sk-bypass-openai-0123456789\\r\\n"
               f"Content-Length: {{len(body)}}\\r\\nConnection: close\\r\\n\\r\\n" + body).encode())
    out["reply"] = t.recv(4096).decode(errors="replace")[:80]
except (ssl.SSLError, OSError) as e:
    out["error"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


@pytest.mark.parametrize("sni,reason", [("www.example.com", "sni_not_inspected"),
                                        (None, "sni_missing")])
def test_unknown_or_missing_sni_is_refused_not_relayed(redirected, sni, reason):
    out = redirected.python(raw_tls(sni))
    assert "error" in out, out
    if sni:
        assert "UNRECOGNIZED_NAME" in out["error"].upper(), out
    (conn,) = connections(redirected, reason)
    assert conn["outcome"] == "refused" and conn["bytes_up"] == 0, conn
    assert conn["sni"] == sni
    assert conn["identity"]["process"], "attributed to the process that tried"
    seen = run(["ip", "netns", "exec", redirected.topo.provider.name, "curl", "--silent",
                "--cacert", str(redirected.provider_ca), "--resolve",
                f"api.openai.com:443:{redirected.topo.provider_addr}",
                "https://api.openai.com/__mock/requests"]).stdout
    assert SECRET not in seen and json.loads(seen) == [], "the provider saw nothing"


def test_plain_tcp_that_is_not_tls_or_http_is_refused(redirected):
    out = redirected.python("""
import json, socket
s = socket.create_connection(("api.openai.com", 443), timeout=10)
s.sendall(b"\\x00\\x01garbage that is neither TLS nor HTTP\\r\\n\\r\\n")
try:
    data = s.recv(100)
except OSError:
    data = b""
print(json.dumps({"got": len(data)}))
""")
    assert out["got"] == 0
    assert connections(redirected, "not_tls_or_http")


# === Host against SNI ======================================================================


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_a_host_that_is_not_the_sni_is_misdirected(stack, http):
    before = len(stack.all_records())
    r = stack.curl(http, "-w", "\n%{http_code}", "-H", "Host: example.org",
                   "-H", "authorization: Bearer sk-bypass-openai-0123456789",
                   "-H", "content-type: application/json", "--data-binary",
                   json.dumps({"model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": "front me"}]}),
                   "https://api.openai.com/v1/chat/completions", check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "421", r.stdout + r.stderr
    rec = stack.newest_since(before, "interaction")
    assert rec["reason_codes"] == ["host_sni_mismatch"] and rec["outcome"] == "refused"
    assert rec["request"]["host"] == "example.org"
    assert rec["upstream"]["sni"] == "api.openai.com"
    assert not [s for s in stack.mock_requests() if "front me" in json.dumps(s)]


# === bodies the parser rejects =============================================================


def chat(content_json: str, extra: str = "") -> bytes:
    """A chat body with `content_json` as the user content (raw JSON text) and `extra`
    members spliced in before `messages`."""
    return (f'{{"model":"gpt-4o-mini",{extra}"messages":[{{"role":"user","content":'
            f'{content_json}}}]}}').encode()


VARIANTS = {
    "lone_surrogate": chat(f'"{SECRET}"', '"x":"\\ud800",'),
    "number_out_of_range": chat(f'"{SECRET}"', '"temperature":1e400,'),
    "invalid_utf8": chat(f'"{SECRET} INVALID"').replace(b" INVALID", b" \xff"),
    "deep_nesting": chat(f'"{SECRET}"', '"deep":' + "[" * 200 + "1" + "]" * 200 + ","),
    "duplicate_content": (f'{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":'
                          f'"{SECRET}","content":"harmless"}}]}}').encode(),
    "over_64_kib": chat(f'"{"padding " * 10000}{SECRET}"'),
    # Every character as a JSON escape: the bytes never spell the secret, the string does.
    "json_escaped": chat('"' + "".join(f"\\u{ord(c):04x}" for c in SECRET) + '"'),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_secret_is_blocked_however_the_body_is_shaped(stack, tmp_path, name):
    body = tmp_path / f"{name}.json"
    body.write_bytes(VARIANTS[name])
    before = len(stack.all_records())
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "-H", "authorization: Bearer sk-bypass-openai-0123456789",
                   "--data-binary", f"@{body}", "https://api.openai.com/v1/chat/completions",
                   check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "403", (name, r.stdout[-500:], r.stderr)
    rec = stack.newest_since(before, "interaction")
    assert rec["decision"] == "block" and rec["outcome"] == "refused", rec
    assert "secret:github_token" in rec["reason_codes"], rec["reason_codes"]
    assert not forbidden_seen(stack), name


def test_a_chunked_body_is_judged_before_it_is_forwarded(stack, tmp_path):
    body = tmp_path / "chunked.json"
    body.write_bytes(chat(f'"{"more padding " * 8000}{SECRET}"'))
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{body}",
                   "https://api.openai.com/v1/chat/completions", check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "403", r.stdout[-500:]
    assert not forbidden_seen(stack)


def test_an_unparseable_body_with_nothing_in_it_is_refused(stack):
    before = len(stack.all_records())
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "--data-binary", '{"model":"gpt-4o-mini","t":1e400,"messages":[]}',
                   "https://api.openai.com/v1/chat/completions", check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "400", r.stdout
    rec = stack.newest_since(before, "interaction")
    assert "body_unparseable" in rec["reason_codes"] and rec["outcome"] == "refused"


def test_a_compressed_body_is_refused_not_forwarded(stack, tmp_path):
    """Content-Encoding: gzip hides every byte from the guardrails (Sluice does not
    decompress request bodies): it is refused as uninspectable, and never reaches the
    provider."""
    body = tmp_path / "body.json.gz"
    body.write_bytes(gzip.compress(chat(f'"{SECRET}"')))
    before = len(stack.all_records())
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "-H", "content-encoding: gzip", "--data-binary", f"@{body}",
                   "https://api.openai.com/v1/chat/completions", check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "400", r.stdout[-500:]
    rec = stack.newest_since(before, "interaction")
    assert rec["reason_codes"] == ["body_unparseable"] and rec["outcome"] == "refused", rec
    assert not [s for s in stack.mock_requests() if s["path"] == "/v1/chat/completions"]


def test_a_large_clean_body_is_judged_then_forwarded_whole(stack, tmp_path):
    """Over 64 KiB and clean: held back, judged, then forwarded byte for byte (chunked)."""
    out = stack.python("""
import json, openai
c = openai.OpenAI(api_key="sk-bypass-openai-0123456789", max_retries=0)
r = c.chat.completions.create(model="gpt-4o-mini",
                              messages=[{"role": "user", "content": "lorem ipsum " * 20000}])
print(json.dumps({"text": r.choices[0].message.content[:40]}))
""")
    assert out["text"].startswith("Mock reply to: lorem ipsum")
    seen = [s for s in stack.mock_requests() if s["path"] == "/v1/chat/completions"][-1]
    assert seen["body_len"] > 200_000
    rec = last_record(stack, "interaction")
    assert rec["decision"] == "allow" and rec["outcome"] == "success"
    assert rec["request"]["body_bytes"] == seen["body_len"]


def test_expect_100_continue_is_answered_before_the_body(stack, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(chat(json.dumps("x" * (20 * 1024 * 1024))))
    # HTTP/1.1: an HTTP/2 stream has no interim responses to send here (Pingora's h2
    # server cannot), so curl over h2 still waits its second; stated in the README.
    r = stack.curl("--http1.1", "-v", "-o", "/dev/null", "-w", "%{http_code}",
                   "-H", "Expect: 100-continue",
                   "-H", "content-type: application/json", "--data-binary", f"@{big}",
                   "https://api.openai.com/v1/chat/completions", check=False, timeout=120)
    # The protocol exchange, not the clock: curl saw the interim 100 before sending.
    assert "HTTP/1.1 100 Continue" in r.stderr, r.stderr[-2000:]
    assert r.stdout.strip() in ("200", "413"), r.stdout


# === credentials ===========================================================================


def test_a_credential_in_the_url_is_fingerprinted_not_stored(stack):
    key = "AIzaBypassGeminiKey0123456789"
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "--data-binary", json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}),
                   f"https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent?key={key}",
                   check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "200", r.stdout
    rec = last_record(stack, "interaction")
    assert key not in json.dumps(rec)
    assert "key=sha256:" in rec["request"]["path"]
    assert rec["identity"]["api_key_fingerprint"].startswith("sha256:")


def test_credentials_in_every_carrier_never_reach_the_disk(stack):
    stack.python("""
import json, anthropic, openai
o = openai.OpenAI(api_key="sk-bypass-openai-0123456789", max_retries=0)
o.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
a = anthropic.Anthropic(api_key="sk-ant-bypass-0123456789", max_retries=0)
a.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "b"}])
z = openai.AzureOpenAI(azure_endpoint="https://myres.openai.azure.com",
                       api_key="azure-bypass-key-0123456789", api_version="2024-10-21", max_retries=0)
z.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "c"}])
print(json.dumps({}))
""")
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "-H", "x-goog-api-key: AIzaBypassGoogHeader0123456789", "--data-binary",
                   json.dumps({"contents": [{"parts": [{"text": "d"}]}]}),
                   "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
                   check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "200", r.stdout
    from test_bedrock import HAIKU, aws_env
    env = aws_env(stack) | {"AWS_ACCESS_KEY_ID": CREDENTIALS[5],
                            "AWS_SECRET_ACCESS_KEY": CREDENTIALS[6],
                            "AWS_SESSION_TOKEN": CREDENTIALS[7]}
    stack.python(f"""
import json, os, boto3
os.environ.pop("AWS_BEARER_TOKEN_BEDROCK", None)
c = boto3.client("bedrock-runtime", region_name="us-east-1")
c.converse(modelId="{HAIKU}", messages=[{{"role": "user", "content": [{{"text": "e"}}]}}])
print(json.dumps({{}}))
""", env=env)
    recs = stack.wait_records(5, "interaction")
    assert all(x["identity"]["api_key_fingerprint"].startswith("sha256:") for x in recs)
    stack.cli("audit", "export", "--format", "jsonl", "--out", str(stack.dir / "export.jsonl"))
    found = []
    for path in [stack.state, *stack.dir.glob("*.log"), stack.dir / "export.jsonl"]:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            data = f.read_bytes()
            found += [(str(f), c) for c in CREDENTIALS if c.encode() in data]
    # The SQLite index compresses rows: read them back through the CLI too.
    tail = stack.cli("events", "tail", "--json", "--limit", "100000").stdout
    found += [("events tail", c) for c in CREDENTIALS if c in tail]
    assert not found, found


# === HTTP edge =============================================================================


SLOW = TLS_CLIENT + """
s = connect(timeout=20)
s.sendall(b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n"
          b"Content-Type: application/json\\r\\nContent-Length: 64\\r\\n\\r\\n")
reply = b""
for _ in range(MODE_BYTES):
    try:
        s.sendall(b"{")
    except OSError:
        break
    time.sleep(MODE_PAUSE)
s.settimeout(20)
try:
    while b"\\r\\n\\r\\n" not in reply:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
except OSError:
    pass
print(json.dumps({"status": reply.split(b"\\r\\n")[0].decode(errors="replace")}))
"""


@pytest.mark.parametrize("mode,sent,pause", [("trickle", 40, 0.25), ("stall", 3, 0.0)])
def test_a_stalled_or_trickling_body_gets_408_and_a_record(topo, tmp_path, mode, sent, pause):
    stack = Stack(topo, tmp_path, extra_config=POLICY + """
downstream:
  body_idle_timeout_ms: 1500
  body_deadline_ms: 2000
""")
    out = stack.python(SLOW.replace("MODE_BYTES", str(sent)).replace("MODE_PAUSE", str(pause)),
                       timeout=60)
    assert out["status"].startswith("HTTP/1.1 408"), out
    rec = last_record(stack, "interaction")
    assert rec["reason_codes"] == ["body_timeout"] and rec["outcome"] == "refused", rec
    assert stack.alive()


SLOW_HEAD = TLS_CLIENT + """
import select
s = connect(timeout=20)
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "first"}]}).encode()
answered = []
if WHOLE_FIRST:
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n"
              b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    reply = b""
    while b"Mock reply" not in reply:
        reply += s.recv(65536)
    answered.append(reply.split(b"\\r\\n")[0].decode())
# A head a byte every quarter second, 40 bytes of it: ten seconds if nobody stops it.
# LEADING: empty lines before the request line (allowed, and skipped by the parser), which
# must not pass for the end of a head.
s.sendall(LEADING + b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n")
sent = 0
for b in b"X-Slow: " + b"a" * 32:
    if select.select([s], [], [], 0)[0]:
        break  # Sluice answered (or closed) mid-head
    try:
        s.sendall(bytes([b]))
    except OSError:
        break
    sent += 1
    time.sleep(0.25)
reply = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
except OSError:
    pass
print(json.dumps({"answered": answered, "status": reply.split(b"\\r\\n")[0].decode(errors="replace"),
                  "sent": sent}))
"""


@pytest.mark.parametrize("whole_first,leading", [(False, b""), (True, b""), (False, b"\r\n\r\n"),
                                                 (False, b"\n\n")],
                         ids=["first_request", "kept_alive", "after_blank_lines", "after_bare_lf_lines"])
def test_a_trickled_request_head_gets_408_and_a_record(topo, tmp_path, whole_first, leading):
    """A request head sent a byte at a time holds no connection past
    `downstream.header_timeout_ms` from its first byte, whether it is a connection's first
    request or the next one on a kept-alive connection (Pingora bounds each read, not the
    head: one byte a minute held a connection for ever)."""
    stack = Stack(topo, tmp_path, extra_config=POLICY + """
downstream:
  header_timeout_ms: 2000
""")
    out = stack.python(SLOW_HEAD.replace("WHOLE_FIRST", str(whole_first)).replace("LEADING", repr(leading)),
                       timeout=60)
    assert out["status"] == "HTTP/1.1 408 Request Timeout", out
    assert out["sent"] < 40, f"answered before the head was complete: {out}"
    assert out["answered"] == (["HTTP/1.1 200 OK"] if whole_first else []), out
    conn = [c for c in stack.wait_records(1, "connection") if c["reason"] == "request_head_timeout"]
    assert conn and conn[-1]["outcome"] == "refused", conn
    assert len([r for r in stack.all_records() if r["kind"] == "interaction"]) == (1 if whole_first else 0)
    assert stack.metric('sluice_connections_refused_total{reason="request_head_timeout"}') == 1
    assert stack.alive()


STALLED_HANDSHAKE = TLS_CLIENT + """
raw = socket.create_connection(("api.openai.com", 443), timeout=20)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname="api.openai.com")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
raw.sendall(outgoing.read())  # the ClientHello; then the client never answers
got = b""
try:
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            ended = "closed"
            break
        got += chunk
except socket.timeout:
    ended = "still open after 20 s"
except OSError:
    ended = "closed"
print(json.dumps({"ended": ended, "server_hello": len(got) > 0}))
"""


def test_a_stalled_tls_handshake_is_dropped(topo, tmp_path):
    """A client that sends its ClientHello and then never finishes the handshake holds the
    connection no longer than `downstream.tls_handshake_timeout_ms` (Pingora sets no bound
    on the handshake); clients that do finish are served as usual."""
    stack = Stack(topo, tmp_path, extra_config=POLICY + """
downstream:
  tls_handshake_timeout_ms: 1000
""")
    out = stack.python(STALLED_HANDSHAKE, timeout=60)
    assert out == {"ended": "closed", "server_hello": True}, out
    assert stack.metric('sluice_tls_handshakes_total{result="timeout"}') == 1
    r = stack.curl("-w", "\n%{http_code}", "-o", "/dev/null", "https://api.openai.com/v1/models")
    assert r.stdout.rsplit("\n", 1)[-1] == "200", r.stdout
    assert stack.alive()


def test_connect_is_refused_and_recorded(stack):
    r = stack.curl("--http1.1", "-w", "\n%{http_code}", "-X", "CONNECT",
                   "https://api.openai.com/v1/models", check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "405", r.stdout
    assert last_record(stack, "interaction")["reason_codes"] == ["connect_refused"]


def test_pipelined_requests_are_never_forwarded_unjudged(stack):
    """HTTP/1.1 requests pipelined behind the first: the first is served, then the
    connection is closed (RFC 9112 §9.3.2: the client retries the rest on a new one); the
    pipelined ones never reach the provider and leave no half-record."""
    out = stack.python(TLS_CLIENT + f"""
s = connect()
def req(text):
    body = json.dumps({{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": text}}]}})
    return ("POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n"
            "Content-Type: application/json\\r\\n"
            f"Content-Length: {{len(body)}}\\r\\n\\r\\n" + body).encode()
s.sendall(req("first") + req("{SECRET}") + req("third"))
data, closed = b"", False
s.settimeout(10)
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            closed = True
            break
        data += chunk
except OSError:
    pass
statuses = [line.split(b" ")[1].decode() for line in data.split(b"\\r\\n") if line.startswith(b"HTTP/1.1 ")]
print(json.dumps({{"statuses": statuses, "closed": closed}}))
""")
    assert out == {"statuses": ["200"], "closed": True}, out
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["request"]["messages"][0]["content"] == "first"
    seen = [r for r in stack.mock_requests() if r["path"] == "/v1/chat/completions"]
    assert len(seen) == 1 and not forbidden_seen(stack)


def test_content_sent_to_endpoints_the_adapter_does_not_parse_is_judged_too(stack):
    """A file upload (multipart) or an assistants message is not an LLM call the adapter
    parses, but its content leaves all the same: the prompt guardrails judge it."""
    notes = stack.dir / "notes.txt"
    notes.write_text(f"meeting notes, token {SECRET}\n")
    r = stack.curl("-w", "\n%{http_code}", "-F", "purpose=assistants",
                   "-F", f"file=@{notes}", "https://api.openai.com/v1/files", check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "403", r.stdout
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "--data-binary", json.dumps({"role": "user", "content": SECRET}),
                   "https://api.openai.com/v1/threads/thread_1/messages", check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "403", r.stdout
    # A request without a body to an endpoint the adapter does not parse still passes.
    r = stack.curl("-w", "\n%{http_code}", "-o", "/dev/null", "https://api.openai.com/v1/models",
                   check=False)
    assert r.stdout.rsplit("\n", 1)[-1] == "200", r.stdout
    assert not forbidden_seen(stack)


@pytest.mark.parametrize("name,args", [
    ("many_headers", [a for i in range(2000) for a in ("-H", f"x-h{i}: v")]),
    ("obfuscated_te", ["-H", "Transfer-Encoding: chunked, identity", "-H", "Content-Length: 5"]),
])
def test_requests_the_http_layer_refuses_leave_a_record(stack, tmp_path, name, args):
    cfg = tmp_path / f"{name}.curlrc"
    # Too long for an argv: curl reads these options from a file.
    cfg.write_text("\n".join(f'header = "{value}"' for value in args[1::2]))
    r = stack.curl("--http1.1", "-K", str(cfg), "-w", "\n%{http_code}", "--data-binary", "hello",
                   "https://api.openai.com/v1/chat/completions", check=False)
    code = r.stdout.rsplit("\n", 1)[-1]
    assert code.startswith("4"), (code, r.stderr[-300:])
    conns = [c for c in stack.wait_records(1, "connection") if c["reason"] == "no_request_accepted"]
    assert conns and conns[-1]["outcome"] == "refused", conns
    assert not [s for s in stack.mock_requests() if s["path"] == "/v1/chat/completions"]


def test_a_megabyte_of_header_is_refused_with_a_record(stack):
    out = stack.python(TLS_CLIENT + """
s = connect()
head = ("POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n"
        "X-Pad: " + "a" * (1024 * 1024) + "\\r\\nContent-Length: 2\\r\\n\\r\\n{}")
try:
    s.sendall(head.encode())
    reply = s.recv(200)
except OSError:
    reply = b""
print(json.dumps({"status": reply.split(b"\\r\\n")[0].decode(errors="replace")}))
""")
    # 431, or a reset when the close lands while the client is still sending (unread
    # bytes in Sluice's receive buffer): Sluice reads no more of a hostile head.
    assert out["status"] in ("HTTP/1.1 431 Request Header Fields Too Large", ""), out
    conns = [c for c in stack.wait_records(1, "connection") if c["reason"] == "request_head_too_large"]
    assert conns and conns[-1]["outcome"] == "refused", "the refused request head left a record"
    assert not [s for s in stack.mock_requests() if s["path"] == "/v1/chat/completions"]
