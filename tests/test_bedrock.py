"""AWS Bedrock Runtime end to end: the official boto3 `bedrock-runtime` client in the client
netns talks to the real host name (resolved to Sluice by the netns's /etc/hosts, no
`endpoint_url`), Sluice inspects and records, the mock provider answers like Bedrock
(Converse JSON, event-stream frames, Anthropic InvokeModel bodies).

What is checked: the record names provider `bedrock`, the model from the path, tokens from
the answer's usage and a cost from the price table, and no SigV4 credential material
(`AWS4-HMAC-SHA256`, `Signature=`, the secret key, the session token) appears in it.
"""

from __future__ import annotations

import json

import pytest

from sluice_stack import BEDROCK, Stack
from test_proxy_core import price

SECRET = "sluiceTestSecretKey/DoNotRecord+0123456789abcdef"
TOKEN = "sluiceTestSessionTokenDoNotRecord0123456789"


@pytest.fixture
def stack(topo, tmp_path):
    s = Stack(topo, tmp_path)
    yield s
    assert s.alive(), "the proxy died during the test"


def aws_env(stack: Stack) -> dict:
    """Dummy credentials, the org CA, one attempt, no instance metadata, no bearer key."""
    return {
        "AWS_ACCESS_KEY_ID": "AKIDSLUICETEST000001",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CA_BUNDLE": str(stack.org_ca),
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_BEARER_TOKEN_BEDROCK": "",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET_PROFILE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

BOTO3_ALL = f"""
import json, os, boto3
os.environ.pop("AWS_BEARER_TOKEN_BEDROCK", None)
c = boto3.client("bedrock-runtime", region_name="us-east-1")
assert c.meta.endpoint_url == "https://{BEDROCK}", c.meta.endpoint_url
r = c.converse(modelId="{HAIKU}", system=[{{"text": "Be brief."}}],
    messages=[{{"role": "user", "content": [{{"text": "What is a sluice"}}]}}],
    inferenceConfig={{"maxTokens": 100, "temperature": 0.2}})
s = c.converse_stream(modelId="{SONNET_PROFILE}",
    messages=[{{"role": "user", "content": [{{"text": "Stream about rivers"}}]}}])
text, usage, stop, events = "", None, None, 0
for e in s["stream"]:
    events += 1
    if "contentBlockDelta" in e:
        text += e["contentBlockDelta"]["delta"]["text"]
    if "messageStop" in e:
        stop = e["messageStop"]["stopReason"]
    if "metadata" in e:
        usage = e["metadata"]["usage"]
i = c.invoke_model(modelId="{HAIKU}", body=json.dumps({{"anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 50, "messages": [{{"role": "user", "content": "Invoke me please"}}]}}))
ib = json.loads(i["body"].read())
w = c.invoke_model_with_response_stream(modelId="{HAIKU}", body=json.dumps({{
    "anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
    "messages": [{{"role": "user", "content": "Invoke and stream"}}]}}))
wtext = ""
for e in w["body"]:
    ev = json.loads(e["chunk"]["bytes"])
    if ev["type"] == "content_block_delta":
        wtext += ev["delta"]["text"]
print(json.dumps({{
    "text": r["output"]["message"]["content"][0]["text"], "in": r["usage"]["inputTokens"],
    "out": r["usage"]["outputTokens"], "stop": r["stopReason"],
    "s_text": text, "s_in": usage["inputTokens"], "s_out": usage["outputTokens"],
    "s_stop": stop, "s_events": events,
    "i_text": ib["content"][0]["text"], "i_in": ib["usage"]["input_tokens"],
    "i_out": ib["usage"]["output_tokens"],
    "i_hdr_in": int(i["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"]),
    "w_text": wtext,
}}))
"""


def cost(provider: str, model: str, tokens_in: int, tokens_out: int) -> float:
    pin, pout = price(provider, model)
    return (tokens_in * pin + tokens_out * pout) / 1e6


def test_boto3_converse_stream_and_invoke_are_recorded(stack):
    out = stack.python(BOTO3_ALL, env=aws_env(stack))
    assert out["text"] == "Mock reply to: What is a sluice"
    assert out["s_text"] == "Mock reply to: Stream about rivers"
    assert out["s_events"] > 3, "the event stream reached boto3 as several events"
    assert out["i_text"] == "Mock reply to: Invoke me please"
    assert out["i_hdr_in"] == out["i_in"]
    assert out["w_text"] == "Mock reply to: Invoke and stream"

    conv, conv_stream, invoke, invoke_stream = stack.wait_records(4, "interaction")
    for rec in (conv, conv_stream, invoke, invoke_stream):
        assert rec["provider"] == "bedrock"
        assert rec["status"] == 200 and rec["outcome"] == "success", rec
        assert rec["usage"]["estimated"] is False
        assert rec["upstream"] == {"addr": stack.mock_addr, "sni": BEDROCK}

    assert conv["endpoint"] == "converse" and conv["stream"] is False
    assert conv["model"] == HAIKU
    assert conv["request"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is a sluice"},
    ]
    assert conv["request"]["params"]["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.2}
    assert conv["response"]["output"] == out["text"]
    assert conv["response"]["finish_reason"] == out["stop"] == "end_turn"
    assert (conv["usage"]["input_tokens"], conv["usage"]["output_tokens"]) == (out["in"], out["out"])
    assert conv["cost_usd"] == pytest.approx(
        cost("bedrock", "anthropic.claude-3-5-haiku", out["in"], out["out"]))

    # A cross-region inference profile: recorded as sent, priced as its model.
    assert conv_stream["endpoint"] == "converse-stream" and conv_stream["stream"] is True
    assert conv_stream["model"] == SONNET_PROFILE
    assert conv_stream["response"]["output"] == out["s_text"]
    assert conv_stream["response"]["finish_reason"] == out["s_stop"] == "end_turn"
    assert conv_stream["response"]["events"] == out["s_events"]
    assert (conv_stream["usage"]["input_tokens"], conv_stream["usage"]["output_tokens"]) == (
        out["s_in"], out["s_out"])
    assert conv_stream["cost_usd"] == pytest.approx(
        cost("bedrock", "anthropic.claude-sonnet-4-5", out["s_in"], out["s_out"]))
    assert 0 < conv_stream["ttft_ms"] <= conv_stream["latency_ms"]

    assert invoke["endpoint"] == "invoke" and invoke["model"] == HAIKU
    assert invoke["request"]["messages"] == [{"role": "user", "content": "Invoke me please"}]
    assert invoke["request"]["params"]["anthropic_version"] == "bedrock-2023-05-31"
    assert invoke["response"]["output"] == out["i_text"]
    assert (invoke["usage"]["input_tokens"], invoke["usage"]["output_tokens"]) == (
        out["i_in"], out["i_out"])
    assert invoke["cost_usd"] == pytest.approx(
        cost("bedrock", "anthropic.claude-3-5-haiku", out["i_in"], out["i_out"]))

    assert invoke_stream["endpoint"] == "invoke-with-response-stream"
    assert invoke_stream["stream"] is True and invoke_stream["model"] == HAIKU
    assert invoke_stream["response"]["output"] == out["w_text"]
    assert invoke_stream["usage"]["output_tokens"] == 8
    assert invoke_stream["cost_usd"] > 0

    # The provider saw boto3's own signed request, path bytes as sent.
    seen = [r for r in stack.mock_requests() if r["host"] == BEDROCK]
    assert [r["path"] for r in seen] == [
        f"/model/{HAIKU.replace(':', '%3A')}/converse",
        f"/model/{SONNET_PROFILE.replace(':', '%3A')}/converse-stream",
        f"/model/{HAIKU.replace(':', '%3A')}/invoke",
        f"/model/{HAIKU.replace(':', '%3A')}/invoke-with-response-stream",
    ]
    auth = dict((k.lower(), v) for k, v in seen[0]["headers"])["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDSLUICETEST000001/")

    # Nothing of the credentials reached the ledger.
    recorded = json.dumps(stack.all_records())
    for secret in ("AWS4-HMAC-SHA256", "Signature=", SECRET, TOKEN, "X-Amz-Security-Token"):
        assert secret not in recorded, secret


BOTO3_THROTTLED = f"""
import json, boto3, botocore
c = boto3.client("bedrock-runtime", region_name="us-east-1")
# After signing: ask the mock for a 429 (the mock checks no signature).
c.meta.events.register("before-send.bedrock-runtime.Converse",
                       lambda request, **kw: request.headers.__setitem__("x-mock-status", "429"))
try:
    c.converse(modelId="{HAIKU}", messages=[{{"role": "user", "content": [{{"text": "hi"}}]}}])
    print(json.dumps({{"raised": None}}))
except botocore.exceptions.ClientError as e:
    print(json.dumps({{"raised": type(e).__name__, "code": e.response["Error"]["Code"],
                      "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}}))
"""


def test_boto3_raises_the_modelled_exception_for_upstream_errors(stack):
    """Bedrock's error shape (x-amzn-ErrorType + {"message"}) passes through; the record
    keeps the provider's message."""
    out = stack.python(BOTO3_THROTTLED, env=aws_env(stack))
    assert out == {"raised": "ThrottlingException", "code": "ThrottlingException", "status": 429}
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["provider"] == "bedrock" and rec["model"] == HAIKU
    assert rec["status"] == 429 and rec["outcome"] == "upstream_error"
    assert "x-mock-status" in json.dumps(rec["response"]), rec["response"]


DENY_OPUS = """
policy:
  policies:
    - id: no-opus
      version: 3
      models: {deny: ["*opus*"]}
"""

BOTO3_DENIED = """
import json, boto3, botocore
c = boto3.client("bedrock-runtime", region_name="us-east-1")
try:
    c.converse(modelId="anthropic.claude-opus-4-1-20250805-v1:0",
               messages=[{"role": "user", "content": [{"text": "hi"}]}])
    print(json.dumps({"raised": None}))
except c.exceptions.AccessDeniedException as e:
    print(json.dumps({"raised": type(e).__name__, "message": e.response["Error"]["Message"],
                      "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}))
"""


def test_sluice_refusal_raises_access_denied_in_boto3(topo, tmp_path):
    """Sluice answers a denied model itself, in Bedrock's error shape."""
    stack = Stack(topo, tmp_path, extra_config=DENY_OPUS)
    out = stack.python(BOTO3_DENIED, env=aws_env(stack))
    assert out["raised"] == "AccessDeniedException" and out["status"] == 403
    assert "no-opus@v3" in out["message"], out
    (rec,) = stack.wait_records(1, "interaction")
    assert rec["provider"] == "bedrock" and rec["outcome"] == "refused"
    assert rec["model"] == "anthropic.claude-opus-4-1-20250805-v1:0"
    assert not [r for r in stack.mock_requests() if r["host"] == BEDROCK], \
        "nothing reached the provider"
    assert stack.alive()
