"""Plain (non-streamed) chat through the gateway, to every provider, with both official SDKs."""

from __future__ import annotations

import pytest

from doubles.common import expected_text

from .checks import assert_upstream_request, usage_of
from .gateway_config import CHAT_MODELS

MODELS = list(CHAT_MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_chat(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Say hello to {provider} please"
    r = gw.openai().chat.completions.create(
        model=model, temperature=0.2, max_tokens=64,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": prompt}])
    double = gw.doubles[provider]
    entry = double.last()
    assert_upstream_request(double, entry, upstream)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected_text(provider, upstream, prompt)
    assert r.choices[0].finish_reason == "stop"
    usage = usage_of(entry)
    assert r.usage.prompt_tokens == usage["input"]
    assert r.usage.completion_tokens == usage["output"]
    assert r.usage.total_tokens == usage["input"] + usage["output"]


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_messages(gw, model):
    """The Anthropic SDK against every provider: Anthropic-format model natively, the others
    translated (OpenAI-format models included)."""
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Greetings via messages to {provider}"
    m = gw.anthropic().messages.create(model=model, max_tokens=64, system="You are terse.",
                                       messages=[{"role": "user", "content": prompt}])
    double = gw.doubles[provider]
    entry = double.last()
    assert_upstream_request(double, entry, upstream)
    assert m.type == "message" and m.role == "assistant"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == expected_text(provider, upstream, prompt)
    assert m.stop_reason == "end_turn"
    usage = usage_of(entry)
    assert m.usage.output_tokens == usage["output"]
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == usage["input"]


def test_system_prompt_reaches_provider_natively(gw):
    """Each provider gets the system prompt where its API wants it."""
    for model, (provider, _) in CHAT_MODELS.items():
        gw.openai().chat.completions.create(
            model=model, messages=[{"role": "system", "content": "SYSTEM-MARKER-42"},
                                   {"role": "user", "content": "hi"}])
        body = gw.doubles[provider].last()["body"]
        if provider == "anthropic":
            system = body["system"]
            text = system if isinstance(system, str) else "".join(b["text"] for b in system)
            assert text == "SYSTEM-MARKER-42"
            assert all(m["role"] != "system" for m in body["messages"])
        elif provider == "bedrock":
            assert body["system"] == [{"text": "SYSTEM-MARKER-42"}]
            assert all(m["role"] != "system" for m in body["messages"])
        elif provider in ("gemini", "vertex"):
            si = body.get("systemInstruction") or body.get("system_instruction")
            assert si["parts"][0]["text"] == "SYSTEM-MARKER-42"
        elif provider == "dashscope":
            assert body["input"]["messages"][0] == {"role": "system", "content": "SYSTEM-MARKER-42"}
        else:
            assert body["messages"][0]["content"] == "SYSTEM-MARKER-42"


def test_alias_routes_to_the_model(gw):
    r = gw.openai().chat.completions.create(model="fast",
                                            messages=[{"role": "user", "content": "alias"}])
    assert r.choices[0].message.content == expected_text("openai", "gpt-4o-mini-2024-07-18",
                                                         "alias")
    assert gw.doubles["openai"].last()["body"]["model"] == "gpt-4o-mini-2024-07-18"


def test_key_in_x_api_key_header(gw):
    """Keys are accepted from `x-api-key` as well as `Authorization: Bearer`."""
    from .gateway_config import KEY_ALL

    r = gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "x-api-key works"}]}, key=None,
        headers={"x-api-key": KEY_ALL})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].endswith("x-api-key works")
    assert_upstream_request(gw.doubles["openai"], gw.doubles["openai"].last(),
                            "gpt-4o-mini-2024-07-18")


def test_anthropic_max_tokens_forwarded(gw):
    """OpenAI callers may omit max_tokens; Anthropic requires it, so the gateway supplies one."""
    gw.openai().chat.completions.create(model="claude-haiku",
                                        messages=[{"role": "user", "content": "no max"}])
    assert isinstance(gw.doubles["anthropic"].last()["body"]["max_tokens"], int)
    gw.openai().chat.completions.create(model="claude-haiku", max_tokens=33,
                                        messages=[{"role": "user", "content": "max 33"}])
    assert gw.doubles["anthropic"].last()["body"]["max_tokens"] == 33
