"""Fallback along a model's deployments, and upstream faults: failures before the first
response byte are invisible to the client, streaming included."""

from __future__ import annotations

import anthropic
import openai
import pytest

from doubles.common import expected_text

from .checks import assert_upstream_request

PRIMARY = ("openai", "gpt-primary")
SECONDARY = ("anthropic", "claude-secondary")


def ask(gw, prompt, stream=False):
    c = gw.openai()
    if not stream:
        r = c.chat.completions.create(model="fallback-chain",
                                      messages=[{"role": "user", "content": prompt}])
        return r.choices[0].message.content
    chunks = c.chat.completions.create(model="fallback-chain", stream=True,
                                       messages=[{"role": "user", "content": prompt}])
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_primary_serves_when_healthy(gw):
    assert ask(gw, "healthy") == expected_text(*PRIMARY, "healthy")
    assert gw.doubles["anthropic"].requests() == []


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 503},
    {"kind": "status", "status": 429, "retry_after": 1},
    {"kind": "status", "status": 500},
    {"kind": "close_headers"},
    {"kind": "hang", "seconds": 6},
], ids=["503", "429", "500", "closed-mid-headers", "timeout"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_falls_back_before_first_byte(gw, fault, stream):
    gw.doubles["openai"].fault(**fault, path="/chat/completions")
    prompt = f"fallback {fault['kind']} {stream}"
    answer = ask(gw, prompt, stream)
    assert answer == expected_text(*SECONDARY, prompt)
    assert len(gw.doubles["openai"].requests()) == 1
    entry = gw.doubles["anthropic"].last()
    assert_upstream_request(gw.doubles["anthropic"], entry, "claude-secondary")


def test_client_error_is_not_retried(gw):
    """A 400 from the provider is the caller's problem: no fallback, status kept."""
    gw.doubles["openai"].fault(kind="status", status=400)
    with pytest.raises(openai.BadRequestError):
        ask(gw, "bad request")
    assert gw.doubles["anthropic"].requests() == []


def test_all_deployments_fail(gw):
    with pytest.raises(openai.APIStatusError) as e:
        ask(gw, "everyone fails [[fault:status,status=503]]")
    assert e.value.status_code in (502, 503)
    assert e.value.response.json()["error"]["message"]
    assert len(gw.doubles["openai"].requests()) == 1
    assert len(gw.doubles["anthropic"].requests()) == 1


def test_failure_mid_stream_reaches_the_client(gw):
    """After the first byte the gateway cannot switch providers: the client must see the
    stream end abnormally, not a clean but truncated answer."""
    prompt = "one two three four five six seven eight [[fault:cut_stream,after=3]]"
    with pytest.raises((openai.APIError, anthropic.APIError, Exception)) as e:
        chunks = list(gw.openai().chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": prompt}]))
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert "stop" not in finishes, "a cut stream must not look finished"
        raise RuntimeError("stream ended without an error")
    assert not isinstance(e.value, RuntimeError), "stream ended without an error"


def test_malformed_upstream_sse_is_an_error(gw):
    prompt = "one two three four [[fault:malformed_sse]]"
    with pytest.raises(Exception) as e:
        chunks = list(gw.anthropic().messages.stream(
            model="claude-haiku", max_tokens=50,
            messages=[{"role": "user", "content": prompt}]).__enter__())
        raise RuntimeError(f"no error surfaced: {chunks[-3:]}")
    assert not isinstance(e.value, RuntimeError), str(e.value)


def test_failing_deployment_is_ejected(gw):
    """Passive health: after `eject_after_failures` failures the deployment is skipped."""
    openai_double = gw.doubles["openai"]
    openai_double.fault(kind="status", status=503, times=2, path="/chat/completions")
    client = gw.openai()
    for i in range(3):
        r = client.chat.completions.create(model="ejecting",
                                           messages=[{"role": "user", "content": f"try {i}"}])
        assert r.choices[0].message.content == expected_text("anthropic", "claude-standby",
                                                             f"try {i}")
    assert len(openai_double.requests()) == 2, "the third request should skip the ejected primary"
