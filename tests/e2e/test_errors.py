"""Failures answered in the caller's dialect with the right status, through the SDKs'
own exception classes."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from .gateway_config import CHAT_MODELS, KEY_ALL, KEY_EXPIRED, KEY_LIMITED, MAX_REQUEST_BYTES

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hello"}]


def assert_openai_error(body: dict, type_: str | None = None, code: str | None = None) -> dict:
    assert set(body) >= {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if type_:
        assert err["type"] == type_, err
    if code:
        assert err["code"] == code, err
    return err


def assert_anthropic_error(body: dict, type_: str | None = None) -> dict:
    assert body.get("type") == "error", body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    if type_:
        assert err["type"] == type_, err
    return err


def assert_no_upstream_call(gw):
    for d in gw.doubles.by_name.values():
        assert d.requests() == [], f"{d.name} was called: {d.requests()}"


# --- keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [None, "sk-not-a-gateway-key", KEY_EXPIRED],
                         ids=["missing", "bad", "expired"])
def test_openai_sdk_auth_errors(gw, key):
    omit = {"Authorization": openai.omit} if key is None else None
    with pytest.raises(openai.AuthenticationError) as e:
        gw.openai(key=key).chat.completions.create(model="gpt-4o-mini", messages=MSGS,
                                                   extra_headers=omit)
    assert e.value.status_code == 401
    assert_openai_error(e.value.response.json())
    assert_no_upstream_call(gw)


@pytest.mark.parametrize("key", ["sk-not-a-gateway-key", KEY_EXPIRED], ids=["bad", "expired"])
def test_anthropic_sdk_auth_errors(gw, key):
    with pytest.raises(anthropic.AuthenticationError) as e:
        gw.anthropic(key=key).messages.create(model="claude-haiku", max_tokens=10,
                                              messages=MSGS)
    assert e.value.status_code == 401
    assert_anthropic_error(e.value.response.json(), "authentication_error")
    assert_no_upstream_call(gw)


def test_anthropic_missing_key(gw):
    with pytest.raises(anthropic.AuthenticationError) as e:
        gw.anthropic().messages.create(model="claude-haiku", max_tokens=10, messages=MSGS,
                                       extra_headers={"Authorization": anthropic.omit})
    assert_anthropic_error(e.value.response.json(), "authentication_error")


def test_model_not_allowed_for_key(gw):
    with pytest.raises(openai.PermissionDeniedError) as e:
        gw.openai(key=KEY_LIMITED).chat.completions.create(model="claude-haiku", messages=MSGS)
    assert e.value.status_code == 403
    assert_openai_error(e.value.response.json())
    with pytest.raises(anthropic.PermissionDeniedError) as e2:
        gw.anthropic(key=KEY_LIMITED).messages.create(model="qwen-plus", max_tokens=10,
                                                      messages=MSGS)
    assert_anthropic_error(e2.value.response.json(), "permission_error")
    assert_no_upstream_call(gw)
    # ...while the models its glob allows work.
    r = gw.openai(key=KEY_LIMITED).chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert r.choices[0].message.content.endswith("hello")


def test_unknown_model(gw):
    with pytest.raises(openai.NotFoundError) as e:
        gw.openai().chat.completions.create(model="no-such-model", messages=MSGS)
    assert_openai_error(e.value.response.json(), code="model_not_found")
    with pytest.raises(anthropic.NotFoundError) as e2:
        gw.anthropic().messages.create(model="no-such-model", max_tokens=5, messages=MSGS)
    assert_anthropic_error(e2.value.response.json(), "not_found_error")
    assert_no_upstream_call(gw)


# --- bad requests ---------------------------------------------------------------------------

def test_malformed_json(gw):
    r = gw.post(CHAT, content=b'{"model": "gpt-4o-mini", "messages": [')
    assert r.status_code == 400, r.text
    assert_openai_error(r.json(), "invalid_request_error")
    r = gw.post("/v1/messages", content=b"{not json", headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 400, r.text
    assert_anthropic_error(r.json(), "invalid_request_error")
    assert_no_upstream_call(gw)


@pytest.mark.parametrize("body", [
    {"model": "gpt-4o-mini", "messages": "hello"},
    {"model": 42, "messages": MSGS},
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 7}]},
    {"model": "gpt-4o-mini"},
    {"model": "gpt-4o-mini", "messages": MSGS, "stream": "yes"},
], ids=["messages-string", "model-number", "content-number", "no-messages", "stream-string"])
def test_wrong_types(gw, body):
    r = gw.post(CHAT, body)
    assert r.status_code == 400, r.text
    assert_openai_error(r.json(), "invalid_request_error")
    assert_no_upstream_call(gw)


def test_wrong_types_anthropic_dialect(gw):
    r = gw.post("/v1/messages", {"model": "claude-haiku", "max_tokens": "ten", "messages": MSGS},
                headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 400, r.text
    assert_anthropic_error(r.json(), "invalid_request_error")


def test_oversize_body(gw):
    big = "x" * (MAX_REQUEST_BYTES + 1024)
    with pytest.raises(openai.APIStatusError) as e:
        gw.openai().chat.completions.create(model="gpt-4o-mini",
                                            messages=[{"role": "user", "content": big}])
    assert e.value.status_code == 413
    assert_openai_error(e.value.response.json())
    r = gw.post("/v1/messages", {"model": "claude-haiku", "max_tokens": 5,
                                 "messages": [{"role": "user", "content": big}]},
                headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 413
    assert_anthropic_error(r.json(), "request_too_large")
    assert_no_upstream_call(gw)


def test_client_cannot_pick_the_cluster(gw):
    """A client-sent routing header neither bypasses the key check nor redirects traffic."""
    r = gw.post(CHAT, {"model": "gpt-4o-mini", "messages": MSGS}, key="sk-not-a-gateway-key",
                headers={"x-switchyard-cluster": "anthropic_upstream"})
    assert r.status_code == 401
    r = gw.post(CHAT, {"model": "gpt-4o-mini", "messages": MSGS},
                headers={"x-switchyard-cluster": "anthropic_upstream"})
    assert r.status_code == 200, r.text
    assert gw.doubles["anthropic"].requests() == []
    assert len(gw.doubles["openai"].requests()) == 1


# --- provider errors ------------------------------------------------------------------------

STATUS_ERRORS = {400: openai.BadRequestError, 429: openai.RateLimitError,
                 500: openai.InternalServerError, 503: openai.InternalServerError}
ANTHROPIC_TYPES = {400: "invalid_request_error", 429: "rate_limit_error"}


@pytest.mark.parametrize("model", list(CHAT_MODELS))
@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_provider_error_mapped_openai_dialect(gw, model, status):
    provider, _ = CHAT_MODELS[model]
    fault = f"[[fault:status,status={status},retry_after=7]]"
    with pytest.raises(openai.APIStatusError) as e:
        gw.openai().chat.completions.create(model=model, messages=[
            {"role": "user", "content": f"fail please {fault}"}])
    assert isinstance(e.value, STATUS_ERRORS[status]), type(e.value)
    assert e.value.status_code == status
    err = assert_openai_error(e.value.response.json())
    assert "sk-upstream" not in json.dumps(err) and "AIza" not in json.dumps(err)
    if status == 429:
        assert e.value.response.headers.get("retry-after") == "7"
    assert gw.doubles[provider].requests(), "the provider was called"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
@pytest.mark.parametrize("status", [400, 429, 503])
def test_provider_error_mapped_anthropic_dialect(gw, model, status):
    with pytest.raises(anthropic.APIStatusError) as e:
        gw.anthropic().messages.create(model=model, max_tokens=10, messages=[
            {"role": "user", "content": f"fail [[fault:status,status={status}]]"}])
    assert e.value.status_code == status
    err = assert_anthropic_error(e.value.response.json())
    if status in ANTHROPIC_TYPES:
        assert err["type"] == ANTHROPIC_TYPES[status]


def test_streaming_request_upstream_error_before_first_byte(gw):
    """A stream whose upstream fails before answering gets a plain error response."""
    with pytest.raises(openai.RateLimitError):
        list(gw.openai().chat.completions.create(
            model="claude-haiku", stream=True,
            messages=[{"role": "user", "content": "x [[fault:status,status=429]]"}]))
