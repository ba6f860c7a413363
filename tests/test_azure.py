"""Azure OpenAI end to end: the official `openai` SDK's `AzureOpenAI` client in a client netns,
its deployment routes (`/openai/deployments/{name}/…?api-version=`) and `api-key` header,
through Sluice to the mock provider. The deployment names the model in the record."""

from __future__ import annotations

import json

from sluice_stack import Stack

AZURE = "myres.openai.azure.com"


def test_azure_openai_sdk_is_recorded_by_deployment(topo, tmp_path):
    stack = Stack(topo, tmp_path)
    out = stack.python(f"""
import json, openai
c = openai.AzureOpenAI(azure_endpoint="https://{AZURE}", api_key="azure-secret-key-123",
                       api_version="2024-10-21", max_retries=0)
r = c.chat.completions.create(model="gpt-4o-mini",
                              messages=[{{"role": "user", "content": "hello azure"}}])
s = c.chat.completions.create(model="gpt-4o-mini", stream=True,
                              stream_options={{"include_usage": True}},
                              messages=[{{"role": "user", "content": "stream azure"}}])
text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
d = openai.AzureOpenAI(azure_endpoint="https://{AZURE}", api_key="azure-secret-key-123",
                       api_version="2024-10-21", azure_deployment="prod-chat", max_retries=0)
e = d.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "which"}}])
print(json.dumps({{"plain": r.choices[0].message.content, "stream": text,
                  "deployment": e.choices[0].message.content}}))
""")
    assert out == {"plain": "Mock reply to: hello azure", "stream": "Mock reply to: stream azure",
                   "deployment": "Mock reply to: which"}
    plain, streamed, deployed = stack.wait_records(3, "interaction")
    for rec in (plain, streamed):
        assert rec["provider"] == "azure_openai"
        assert rec["model"] == "gpt-4o-mini"
        assert rec["endpoint"] == "chat.completions"
        assert rec["request"]["path"].startswith("/openai/deployments/gpt-4o-mini/chat/completions")
        assert rec["usage"]["input_tokens"] > 0 and rec["usage"]["output_tokens"] > 0
        assert rec["cost_usd"] > 0, "an Azure deployment of gpt-4o-mini costs what OpenAI's does"
        assert rec["identity"]["api_key_fingerprint"].startswith("sha256:")
    assert streamed["stream"] is True
    # The deployment, not the body's `model`, says what Azure serves: it names the model.
    assert deployed["model"] == "prod-chat"
    assert deployed["request"]["params"]["model"] == "gpt-4o"
    assert deployed["cost_usd"] is None
    assert "azure-secret-key-123" not in json.dumps([plain, streamed, deployed])
