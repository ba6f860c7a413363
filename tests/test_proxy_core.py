"""Proxy core end to end: real SDKs and curl in a client netns, Sluice in the root netns,
the mock provider in a provider netns. Every assertion is on bytes, records or counters."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from netns import sluice_bin
from sluice_stack import BAD_CERT, PASSTHROUGH, PLAIN, UNKNOWN, Stack

REPO = Path(__file__).resolve().parent.parent


def price(provider: str, model: str) -> tuple[float, float]:
    """(input, output) USD per 1M tokens for an exact model from the shipped price table."""
    table = yaml.safe_load((REPO / "proxy" / "pricing.yaml").read_text())
    for m in table["models"]:
        if m["provider"] == provider and m["model"] == model:
            return m["input_per_mtok"], m["output_per_mtok"]
    raise AssertionError(f"{provider}/{model} not in pricing.yaml")


@pytest.fixture
def stack(topo, tmp_path):
    s = Stack(topo, tmp_path)
    yield s
    assert s.alive(), "the proxy died during the test"


OPENAI_PLAIN = """
import json, openai
c = openai.OpenAI(api_key="sk-client-key-123")
r = c.chat.completions.create(model="gpt-4o-mini", temperature=0.3,
    messages=[{"role": "system", "content": "Be terse."},
              {"role": "user", "content": "Hello from the client netns"}])
print(json.dumps({"text": r.choices[0].message.content, "in": r.usage.prompt_tokens,
                  "out": r.usage.completion_tokens, "finish": r.choices[0].finish_reason}))
"""

OPENAI_STREAM = """
import json, openai
c = openai.OpenAI(api_key="sk-client-key-123")
s = c.chat.completions.create(model="gpt-4o", stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "Stream me a short answer please"}])
text, usage, chunks = "", None, 0
for ch in s:
    chunks += 1
    if ch.choices and ch.choices[0].delta.content:
        text += ch.choices[0].delta.content
    if ch.usage:
        usage = ch.usage
print(json.dumps({"text": text, "in": usage.prompt_tokens, "out": usage.completion_tokens,
                  "chunks": chunks}))
"""


def test_openai_sdk_plain_and_streaming(stack):
    plain = stack.python(OPENAI_PLAIN)
    assert plain["text"] == "Mock reply to: Hello from the client netns"
    streamed = stack.python(OPENAI_STREAM)
    assert streamed["text"] == "Mock reply to: Stream me a short answer please"
    assert streamed["chunks"] > 3, "the stream reached the client as several chunks"

    first, second = stack.wait_records(2, "interaction")
    assert first["provider"] == "openai"
    assert first["model"] == "gpt-4o-mini"
    assert first["endpoint"] == "chat.completions"
    assert first["stream"] is False
    assert first["status"] == 200 and first["outcome"] == "success"
    assert first["request"]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hello from the client netns"},
    ]
    assert first["request"]["params"]["temperature"] == 0.3
    assert first["response"]["output"] == plain["text"]
    assert first["response"]["finish_reason"] == plain["finish"] == "stop"
    assert first["usage"]["input_tokens"] == plain["in"]
    assert first["usage"]["output_tokens"] == plain["out"]
    assert first["usage"]["estimated"] is False
    pin, pout = price("openai", "gpt-4o-mini")
    assert first["cost_usd"] == pytest.approx((plain["in"] * pin + plain["out"] * pout) / 1e6)
    assert first["latency_ms"] > 0 and first["ttft_ms"] is None
    assert first["upstream"] == {"addr": stack.mock_addr, "sni": "api.openai.com"}
    assert first["identity"]["client_addr"].startswith(stack.topo.client_addr)

    assert second["model"] == "gpt-4o" and second["stream"] is True
    assert second["response"]["output"] == streamed["text"]
    assert second["usage"]["input_tokens"] == streamed["in"]
    assert second["usage"]["output_tokens"] == streamed["out"]
    assert second["response"]["events"] >= streamed["chunks"]
    assert 0 < second["ttft_ms"] <= second["latency_ms"]
    pin, pout = price("openai", "gpt-4o")
    assert second["cost_usd"] == pytest.approx((streamed["in"] * pin + streamed["out"] * pout) / 1e6)

    # The provider saw the client's own key, and a request it could read.
    seen = [r for r in stack.mock_requests() if r["path"] == "/v1/chat/completions"]
    assert len(seen) == 2
    assert ("authorization", "Bearer sk-client-key-123") in [tuple(h) for h in seen[0]["headers"]]


ANTHROPIC_BOTH = """
import json, anthropic
c = anthropic.Anthropic(api_key="sk-ant-client")
m = c.messages.create(model="claude-sonnet-4-5", max_tokens=100, system="Be brief.",
    messages=[{"role": "user", "content": "What is a sluice"}])
with c.messages.stream(model="claude-haiku-4-5", max_tokens=100,
        messages=[{"role": "user", "content": "Stream about rivers"}]) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
print(json.dumps({"plain": m.content[0].text, "in": m.usage.input_tokens, "out": m.usage.output_tokens,
                  "streamed": streamed, "s_in": final.usage.input_tokens,
                  "s_out": final.usage.output_tokens, "stop": final.stop_reason}))
"""


def test_anthropic_sdk_plain_and_streaming(stack):
    out = stack.python(ANTHROPIC_BOTH)
    assert out["plain"] == "Mock reply to: What is a sluice"
    assert out["streamed"] == "Mock reply to: Stream about rivers"
    plain, streamed = stack.wait_records(2, "interaction")
    assert plain["provider"] == "anthropic" and plain["endpoint"] == "messages"
    assert plain["model"] == "claude-sonnet-4-5"
    assert plain["request"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert plain["request"]["messages"][1] == {"role": "user", "content": "What is a sluice"}
    assert plain["request"]["params"]["max_tokens"] == 100
    assert plain["response"]["output"] == out["plain"]
    assert (plain["usage"]["input_tokens"], plain["usage"]["output_tokens"]) == (out["in"], out["out"])
    pin, pout = price("anthropic", "claude-sonnet-4-5")
    assert plain["cost_usd"] == pytest.approx((out["in"] * pin + out["out"] * pout) / 1e6)

    assert streamed["stream"] is True and streamed["model"] == "claude-haiku-4-5"
    assert streamed["response"]["output"] == out["streamed"]
    assert streamed["response"]["finish_reason"] == out["stop"] == "end_turn"
    assert (streamed["usage"]["input_tokens"], streamed["usage"]["output_tokens"]) == (out["s_in"], out["s_out"])
    assert streamed["ttft_ms"] > 0


def test_curl_http2(stack):
    r = stack.curl("--http2", "-w", "\\n%{http_version}", "-H", "content-type: application/json",
                   "-H", "authorization: Bearer sk-curl",
                   "--data-binary", '{"model":"gpt-4.1-mini","input":"ping over h2"}',
                   "https://api.openai.com/v1/responses")
    body, version = r.stdout.rsplit("\n", 1)
    assert version == "2"
    assert "Mock reply to: ping over h2" in body
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["endpoint"] == "responses" and rec["model"] == "gpt-4.1-mini"
    assert rec["request"]["messages"] == [{"role": "user", "content": "ping over h2"}]
    assert rec["response"]["output"] == "Mock reply to: ping over h2"


def test_passthrough_is_byte_exact_and_recorded(stack, tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 512)  # 128 KiB, every byte value
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    # Trusting only the provider's own CA: the proxy must not have touched the TLS session.
    r = stack.curl("--http1.1", "--data-binary", f"@{payload}", "-H",
                   "content-type: application/octet-stream",
                   f"https://{PASSTHROUGH}/v1/embeddings", ca=stack.provider_ca, check=False)
    assert r.returncode == 0, r.stderr
    seen = [s for s in stack.mock_requests() if s["host"] == PASSTHROUGH]
    assert len(seen) == 1
    assert seen[0]["body_len"] == 128 * 1024 and seen[0]["body_sha256"] == digest
    (conn,) = stack.wait_records(1, "connection")
    assert conn["outcome"] == "passthrough" and conn["reason"] == "passthrough_listed"
    assert conn["sni"] == PASSTHROUGH
    assert conn["bytes_up"] > 128 * 1024 and conn["bytes_down"] > 0
    assert conn["upstream"]["addr"] == stack.mock_addr
    assert [r for r in stack.all_records() if r["kind"] != "admin"] == [conn], \
        "no interaction record for an uninspected host"
    assert stack.metric("sluice_passthrough_connections_total") == 1


def test_unknown_destination_is_refused(stack):
    r = stack.curl(f"https://{UNKNOWN}/v1/models", check=False)
    assert r.returncode != 0
    (conn,) = stack.wait_records(1, "connection")
    assert conn["outcome"] == "refused" and conn["reason"] == "no_destination"
    assert conn["sni"] == UNKNOWN and conn["bytes_up"] == 0
    assert stack.metric('sluice_connections_refused_total{reason="no_destination"}') == 1


def test_invalid_upstream_certificate_fails_closed(stack):
    r = stack.curl("-w", "%{http_code}", "-o", "/dev/null", "-H", "content-type: application/json",
                   "--data-binary", '{"model":"mistral-large-latest","messages":[{"role":"user","content":"x"}]}',
                   f"https://{BAD_CERT}/v1/chat/completions", check=False)
    assert r.stdout.strip() == "502"
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["provider"] == "mistral" and rec["outcome"] == "failed"
    assert "certificate" in rec["error"] or "TLS" in rec["error"], rec["error"]
    assert not [s for s in stack.mock_requests() if s["host"] == BAD_CERT], "nothing reached the provider"
    # What the SluiceUpstreamTLSErrors alert counts.
    assert stack.metric('sluice_upstream_errors_total{kind="tls",provider="mistral"}') == 1


def test_fifty_megabyte_body_is_forwarded_whole(stack, tmp_path):
    big = tmp_path / "big.json"
    filler = "a" * (50 * 1024 * 1024)
    big.write_text(json.dumps({"model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": filler}]}))
    size = big.stat().st_size
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    r = stack.curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/json",
                   "--data-binary", f"@{big}", "https://api.openai.com/v1/chat/completions",
                   timeout=120)
    assert r.stdout.strip() == "200"
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["request"]["body_bytes"] == size
    assert rec["request"]["truncated"] is True
    assert rec["outcome"] == "success"
    seen = [s for s in stack.mock_requests() if s["path"] == "/v1/chat/completions"]
    assert seen[-1]["body_len"] == size and seen[-1]["body_sha256"] == digest
    # Still healthy: a normal request right after works.
    assert stack.python(OPENAI_PLAIN)["text"].startswith("Mock reply to:")


HANG_UP = """
import json, openai
c = openai.OpenAI(api_key="sk-client")
s = c.chat.completions.create(model="gpt-4o-mini", stream=True,
    messages=[{"role": "user", "content": "long answer please"}],
    extra_headers={"x-mock-chunks": "40", "x-mock-delay-ms": "100",
                   "x-mock-content": ("word " * 40).strip()})
got = ""
for i, ch in enumerate(s):
    if ch.choices and ch.choices[0].delta.content:
        got += ch.choices[0].delta.content
    if i == 3:
        break
s.response.close()
print(json.dumps({"got": got}))
"""


def test_client_hanging_up_mid_stream_is_recorded_as_cancelled(stack):
    got = stack.python(HANG_UP)["got"]
    assert got, "the client saw the start of the stream"
    (rec,) = stack.wait_records(1, "interaction", timeout=20)
    assert rec["outcome"] == "cancelled" and rec["stream"] is True
    assert rec["response"]["output"].startswith(got)
    assert len(rec["response"]["output"]) < len(("word " * 40).strip()), "cut short, not the whole answer"
    assert rec["usage"]["output_tokens"] > 0 and rec["usage"]["estimated"] is True
    # Healthy afterwards.
    assert stack.python(OPENAI_PLAIN)["text"] == "Mock reply to: Hello from the client netns"


# One TLS connection, HTTP/1.1, driven by hand: request, idle, then a request whose head
# arrives a byte first and the rest in pieces, then an ordinary one. `SPLIT` marks where the
# client pauses. Printed: each answer's text and how the connection ended.
KEPT_ALIVE = """
import http.client, json, socket, ssl, time
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("api.openai.com", 443)), server_hostname="api.openai.com")
assert s.selected_alpn_protocol() in (None, "http/1.1")
def ask(text, cuts=(), pause=0.0):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).encode()
    data = (b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n"
            b"Authorization: Bearer sk-kept-alive\\r\\nContent-Type: application/json\\r\\n"
            b"Content-Length: %d\\r\\n\\r\\n" % len(body)) + body
    start = 0
    for cut in (*cuts, len(data)):
        s.sendall(data[start:cut])
        start = cut
        time.sleep(pause)
    r = http.client.HTTPResponse(s, method="POST")
    r.begin()
    answer = json.loads(r.read())
    assert r.getheader("connection", "").lower() != "close", r.getheaders()
    return answer["choices"][0]["message"]["content"]
texts = [ask("first on the connection")]
time.sleep(2)
texts.append(ask("second, trickled after an idle pause", cuts=(1, 2, 40, 120), pause=0.3))
texts.append(ask("third, straight after"))
print(json.dumps({"texts": texts}))
"""


def test_a_kept_alive_connection_serves_requests_after_idling_and_trickled_heads(stack):
    """Between two HTTP/1.1 requests Sluice waits for the next one itself (the first byte,
    then Pingora parses the rest): an idle pause, a head that arrives a byte at a time and a
    request straight after all reach the provider on one connection, each recorded."""
    out = stack.python(KEPT_ALIVE)
    assert out["texts"] == [
        "Mock reply to: first on the connection",
        "Mock reply to: second, trickled after an idle pause",
        "Mock reply to: third, straight after",
    ]
    recs = stack.wait_records(3, "interaction")
    assert [r["request"]["messages"][0]["content"] for r in recs] == [
        "first on the connection", "second, trickled after an idle pause", "third, straight after"]
    assert all(r["outcome"] == "success" and r["status"] == 200 for r in recs)
    # One client connection, so one handshake for the three.
    assert stack.metric('sluice_tls_handshakes_total{result="ok"}') == 1


IDLE_AT_SHUTDOWN = """
import http.client, json, socket, ssl, sys, time
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("api.openai.com", 443)), server_hostname="api.openai.com")
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "then idle"}]}).encode()
s.sendall(b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: api.openai.com\\r\\n"
          b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
r = http.client.HTTPResponse(s, method="POST")
r.begin()
r.read()
print("answered", flush=True)
s.settimeout(25)
try:
    ended = "eof" if s.recv(1) == b"" else "data"
except socket.timeout:
    ended = "still open"
except (ConnectionError, ssl.SSLError) as e:
    ended = "eof"
print(ended, flush=True)
"""


def test_an_idle_kept_alive_connection_is_closed_when_sluice_stops(stack):
    """A client idling on a kept-alive connection does not hold up a graceful stop: the
    connection is closed when the stop begins (not after the 30 s shutdown timeout), Sluice
    exits cleanly, and the answer it gave is on the record."""
    client = stack.topo.client.popen([sys.executable, "-c", IDLE_AT_SHUTDOWN], env=stack.client_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "answered", client.stderr.read()
        assert stack.proxy.stop(timeout=40) == 0, "a clean exit on SIGTERM"
        out, err = client.communicate(timeout=40)
    finally:
        client.kill()
    assert out.strip() == "eof", (out, err)
    stack.start_proxy()
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["outcome"] == "success" and rec["response"]["output"] == "Mock reply to: then idle"


def test_a_taken_listen_address_stops_start_up_with_a_clear_error(stack, tmp_path):
    """Sluice binds its data-plane listeners itself (its own accept loops): a second
    instance asked to listen where the first does exits at start-up, naming the address and
    the likely cause, and leaves the first one serving."""
    second = tmp_path / "second"
    second.mkdir()
    config = stack.config.read_text()
    config = config.replace(f'state_dir: "{stack.state}"', f'state_dir: "{second / "state"}"')
    config = config.replace(f'metrics_listen: "127.0.0.1:{stack.metrics_port}"',
                            'metrics_listen: null')
    assert str(second) in config, "the second instance has its own state"
    (second / "sluice.yaml").write_text(config)
    subprocess.run([sluice_bin(), "ca", "init", "--config", str(second / "sluice.yaml")],
                   check=True, capture_output=True)
    r = subprocess.run([sluice_bin(), "run", "--config", str(second / "sluice.yaml")],
                       capture_output=True, text=True, timeout=60)
    host, port = stack.listen_addr
    assert r.returncode != 0, r.stderr
    assert f"binding listen address {host}:{port}" in r.stderr, r.stderr
    assert "is the port in use?" in r.stderr, r.stderr
    assert stack.chat("sk-test", ["still here"]) == ["ok"]


CUSTOM_MODEL = """
import json, openai
c = openai.OpenAI(api_key="sk-client-key-123")
r = c.chat.completions.create(model="acme-finetune-7f3a9", messages=[{"role": "user", "content": "hi"}])
print(json.dumps({"text": r.choices[0].message.content}))
"""


def test_metrics_count_what_happened(stack):
    stack.python(OPENAI_PLAIN)
    stack.python(OPENAI_PLAIN)
    stack.python(OPENAI_STREAM)
    # A model string the price table does not know is counted as `other`: clients cannot
    # grow the label set.
    stack.python(CUSTOM_MODEL)
    stack.wait_records(4, "interaction")
    assert stack.metric(
        'sluice_requests_total{endpoint="chat.completions",outcome="success",provider="openai"}') == 4
    assert stack.metric('sluice_tokens_total{direction="input",model="gpt-4o-mini",provider="openai"}') > 0
    assert stack.metric('sluice_tokens_total{direction="input",model="other",provider="openai"}') > 0
    assert "acme-finetune" not in stack.metrics()
    assert stack.metric('sluice_cost_usd_total{model="gpt-4o-mini",provider="openai"}') > 0
    assert stack.metric('sluice_time_to_first_token_seconds_count{provider="openai"}') == 1
    assert stack.metric('sluice_tls_handshakes_total{result="ok"}') >= 1
    assert stack.metric('sluice_ledger_records_total{kind="interaction"}') == 4
    assert stack.metric("sluice_added_latency_seconds_count") == 4
    # Every request left the in-flight gauge it entered (the stream too).
    assert 'sluice_requests_in_flight{provider="openai"} 0' in stack.metrics()


def test_plain_http_provider_is_inspected(stack):
    """A self-hosted OpenAI-compatible server on plain HTTP: the proxy listens on 443 only,
    so the client is pointed at it like a gateway would route it (Host header decides)."""
    out = stack.python(f"""
import json, openai
c = openai.OpenAI(api_key="local", base_url="http://{PLAIN}:443/v1")
r = c.chat.completions.create(model="llama-3.1-8b", messages=[{{"role": "user", "content": "plain hello"}}])
print(json.dumps({{"text": r.choices[0].message.content}}))
""")
    assert out["text"] == "Mock reply to: plain hello"
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["provider"] == "openai_compatible" and rec["model"] == "llama-3.1-8b"
    assert rec["upstream"] == {"addr": f"{stack.topo.provider_addr}:8000", "sni": None}
    assert rec["cost_usd"] is None, "an unpriced model has a null cost"
    assert stack.metric('sluice_unpriced_interactions_total{provider="openai_compatible"}') == 1


def test_malformed_request_is_forwarded_and_explained(stack):
    r = stack.curl("-w", "\n%{http_code}", "-H", "content-type: application/json",
                   "--data-binary", '{"model": "gpt-4o", "messages": [', 
                   "https://api.openai.com/v1/chat/completions", check=False)
    assert r.stdout.rsplit("\n", 1)[1] == "400", r.stdout  # the provider's own answer
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["outcome"] == "upstream_error" and rec["status"] == 400
    assert "JSON" in rec["request"]["parse_error"], rec["request"]
    assert rec["response"]["error"], "the provider's error message is kept"
    seen = [s for s in stack.mock_requests() if s["path"] == "/v1/chat/completions"]
    assert seen and seen[-1]["body"] == '{"model": "gpt-4o", "messages": ['
