"""Streamed chat through the gateway, every provider, both SDKs: text arrives in several
chunks, reassembles to the provider's answer, and usage is reported at the end."""

from __future__ import annotations

import pytest

from doubles.common import expected_text

from .checks import assert_upstream_request, usage_of
from .gateway_config import CHAT_MODELS

MODELS = list(CHAT_MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_stream_with_usage(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Stream several words back from {provider} now"
    chunks = list(gw.openai().chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": prompt}]))
    entry = gw.doubles[provider].last()
    assert_upstream_request(gw.doubles[provider], entry, upstream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2, "the answer should arrive in several chunks"
    assert "".join(deltas) == expected_text(provider, upstream, prompt)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    usage = usage_of(entry)
    assert chunks[-1].usage.prompt_tokens == usage["input"]
    assert chunks[-1].usage.completion_tokens == usage["output"]


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_stream_without_usage_option(gw, model):
    """Without include_usage the client gets no usage chunk (the gateway may still force
    usage upstream to meter it)."""
    provider, upstream = CHAT_MODELS[model]
    prompt = "no usage chunk please"
    chunks = list(gw.openai().chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": prompt}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(provider, upstream, prompt)
    assert not any(c.usage for c in chunks)
    if provider == "openai":
        body = gw.doubles["openai"].last()["body"]
        assert body.get("stream_options", {}).get("include_usage") is True, (
            "the gateway should force include_usage upstream to meter streams")


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_stream(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Anthropic-dialect stream from {provider}"
    with gw.anthropic().messages.stream(model=model, max_tokens=100,
                                        messages=[{"role": "user", "content": prompt}]) as s:
        events = [e.type for e in s]
        text = s.get_final_text()
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events
    assert events.count("message_delta") == 1
    assert events.count("text") >= 2
    assert text == expected_text(provider, upstream, prompt)
    assert final.stop_reason == "end_turn"
    usage = usage_of(gw.doubles[provider].last())
    assert final.usage.output_tokens == usage["output"]


def test_stream_wire_format_is_sse(gw):
    """Raw bytes: OpenAI-dialect streams are `data:` frames ending with [DONE]; Anthropic-dialect
    streams carry `event:` names."""
    import httpx

    from .gateway_config import KEY_ALL

    with httpx.stream("POST", gw.base_url + "/v1/chat/completions", timeout=30, headers={
            "authorization": f"Bearer {KEY_ALL}"}, json={
            "model": "claude-haiku", "stream": True,
            "messages": [{"role": "user", "content": "raw sse"}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = [f for f in raw.replace("\r\n", "\n").split("\n\n") if f.strip()]
    assert all(f.startswith("data: ") for f in frames), raw[:500]
    assert frames[-1] == "data: [DONE]"
    with httpx.stream("POST", gw.base_url + "/v1/messages", timeout=30, headers={
            "x-api-key": KEY_ALL, "anthropic-version": "2023-06-01"}, json={
            "model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": "raw sse"}]}) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    names = [line.split(":", 1)[1].strip() for line in raw.splitlines()
             if line.startswith("event:")]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "message_delta" in names
