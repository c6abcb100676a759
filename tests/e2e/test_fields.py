"""The field matrix's emulated and refused cells end to end (docs/fields.md), through each host
with the official SDKs: structured output asked in one dialect reaches every provider kind
through that provider's own mechanism and comes back as JSON matching the schema; `n: 2` gets
two choices on every provider (asked twice and merged where the provider has no `n`), and a
stream with `n` a 400 naming the field and the model there; provider account headers never
reach the client."""

from __future__ import annotations

import json

import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from .gateway_config import CHAT_MODELS
from .test_errors import assert_openai_error
from .test_sdk_matrix import gemini_client

MODELS = list(CHAT_MODELS)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
          "required": ["city", "days"], "additionalProperties": False}
# What every double answers for SCHEMA (doubles/common.py: tool_arguments).
ANSWER = {"city": "city-output", "days": 42}
# Where each provider's own structured-output mechanism carries the schema (None: emulated by
# an instruction, checked separately; DashScope only).
NATIVE_SCHEMA = {
    "openai": ("response_format", "json_schema", "schema"),
    "azure": ("response_format", "json_schema", "schema"),
    "mistral": ("response_format", "json_schema", "schema"),
    "anthropic": ("output_config", "format", "schema"),
    "gemini": ("generationConfig", "responseSchema"),
    "vertex": ("generationConfig", "responseSchema"),
    "cohere": ("response_format", "json_schema"),
    "bedrock": ("outputConfig", "textFormat", "structure", "jsonSchema", "schema"),
    "dashscope": None,
}
N_PROVIDERS = {"openai", "azure"}


def dig(body: dict, path: tuple[str, ...]):
    for key in path:
        body = (body or {}).get(key)
    return body


def system_text(provider: str, body: dict) -> str:
    messages = dig(body, ("input", "messages")) or []
    return " ".join(m["content"] for m in messages if m.get("role") == "system")


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_from_an_openai_client_on_every_provider(gw, model):
    provider, _ = CHAT_MODELS[model]
    r = gw.openai().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Where and for how long?"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "trip", "strict": True, "schema": SCHEMA}})
    sent = gw.doubles[provider].last()["body"]
    where = NATIVE_SCHEMA[provider]
    if where is None:
        # No native schema (DashScope): JSON mode plus the schema as an instruction.
        assert '"city"' in system_text(provider, sent), sent
        assert sent["parameters"]["response_format"] == {"type": "json_object"}
        return
    native = dig(sent, where)
    if provider == "bedrock":
        native = json.loads(native)  # Converse takes the schema as a JSON string
    assert native["properties"]["city"] == {"type": "string"}, native
    assert json.loads(r.choices[0].message.content) == ANSWER
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["claude-haiku", "gemini-flash", "mistral-small"])
def test_json_schema_streamed(gw, model):
    stream = gw.openai().chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "Where to?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == ANSWER


def test_anthropic_output_config_reaches_gemini_and_google_schema_reaches_claude(gw):
    # An Anthropic client's native structured output, translated for Gemini.
    msg = gw.anthropic().messages.create(
        model="gemini-flash", max_tokens=64, messages=[{"role": "user", "content": "Trip?"}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}})
    sent = gw.doubles["gemini"].last()["body"]
    assert sent["generationConfig"]["responseMimeType"] == "application/json"
    assert "additionalProperties" not in sent["generationConfig"]["responseSchema"]
    assert json.loads(msg.content[0].text) == ANSWER
    # A google-genai client's schema, translated for Anthropic's output_config.
    client = gemini_client(gw)
    r = client.models.generate_content(
        model="claude-haiku", contents="Trip?",
        config=types.GenerateContentConfig(response_mime_type="application/json",
                                           response_json_schema=SCHEMA))
    sent = gw.doubles["anthropic"].last()["body"]
    assert sent["output_config"]["format"]["schema"]["required"] == ["city", "days"]
    assert json.loads(r.text) == ANSWER


@pytest.mark.parametrize("model", MODELS)
def test_n_is_answered_in_full_or_refused_before_any_provider(gw, model):
    """`n` on every provider: OpenAI and Azure answer it themselves; elsewhere the gateway
    asks `n` times and merges the choices (usage summed); a stream with `n` is refused there
    with a 400 naming the field and the model, before any provider is called."""
    provider, _ = CHAT_MODELS[model]
    double = gw.doubles[provider]
    client = gw.openai()
    messages = [{"role": "user", "content": "two answers please"}]
    r = client.chat.completions.create(model=model, messages=messages, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices), r
    if provider in N_PROVIDERS:
        assert double.last()["body"]["n"] == 2
        return
    asked = double.requests()[-2:]
    assert len(asked) == 2, asked
    for e in asked:  # one choice per request
        assert "n" not in e["body"] and "n" not in (e["body"].get("parameters") or {}), e
    answered = [e["response"]["usage"] for e in asked]  # what each answer reported
    assert r.usage.prompt_tokens == sum(u["input"] for u in answered), (r.usage, answered)
    assert r.usage.completion_tokens == sum(u["output"] for u in answered), (r.usage, answered)
    before = len(double.requests())
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=messages, n=2, stream=True)
    assert err.value.status_code == 400
    body = assert_openai_error(err.value.response.json(), "invalid_request_error",
                               "unsupported_by_model")
    assert body["param"] == "n"
    assert f"`{model}`" in body["message"] and "`n`" in body["message"], body
    assert err.value.response.headers.get("x-request-id")
    assert len(double.requests()) == before, "a refused request reached the provider"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
@pytest.mark.parametrize("stream", [False, True])
def test_provider_account_headers_never_reach_the_client(gw, model, stream):
    raw = gw.openai().chat.completions.with_raw_response.create(
        model=model, stream=stream, messages=[{"role": "user", "content": "hi"}])
    headers = {k.lower() for k in raw.headers}
    raw.parse()
    assert "x-request-id" in headers
    leaked = headers & {"openai-organization", "openai-project", "anthropic-organization-id",
                        "x-ratelimit-remaining-requests"}
    assert not leaked, leaked


def test_gemini_only_settings_reach_gemini_and_are_refused_by_name_elsewhere(gw):
    client = gemini_client(gw)
    strict = [types.SafetySetting(category="HARM_CATEGORY_HARASSMENT",
                                  threshold="BLOCK_LOW_AND_ABOVE")]
    config = types.GenerateContentConfig(
        safety_settings=strict, media_resolution="MEDIA_RESOLUTION_LOW",
        thinking_config=types.ThinkingConfig(thinking_budget=512))
    r = client.models.generate_content(model="gemini-flash", contents="hi", config=config)
    assert r.text
    sent = gw.doubles["gemini"].last()["body"]
    assert sent["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT",
                                       "threshold": "BLOCK_LOW_AND_ABOVE"}], sent
    assert sent["generationConfig"]["mediaResolution"] == "MEDIA_RESOLUTION_LOW", sent
    assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 512}, sent
    # Blocking thresholds have no counterpart at Anthropic: a 400 before any provider call.
    anthropic = gw.doubles["anthropic"]
    before = len(anthropic.requests())
    with pytest.raises(genai_errors.ClientError) as err:
        client.models.generate_content(
            model="claude-haiku", contents="hi",
            config=types.GenerateContentConfig(safety_settings=strict))
    assert err.value.code == 400
    assert "safety_settings" in err.value.message and "`claude-haiku`" in err.value.message
    with pytest.raises(genai_errors.ClientError) as err:
        client.models.generate_content(
            model="claude-haiku", contents="hi",
            config=types.GenerateContentConfig(media_resolution="MEDIA_RESOLUTION_LOW"))
    assert err.value.code == 400
    assert "generationConfig.mediaResolution" in err.value.message, err.value.message
    assert len(anthropic.requests()) == before, "a refused request reached the provider"
    # Turning Gemini's blocking off is a hint elsewhere: accepted, nothing sent for it.
    off = [types.SafetySetting(category="HARM_CATEGORY_HARASSMENT", threshold="BLOCK_NONE")]
    r = client.models.generate_content(
        model="claude-haiku", contents="hi",
        config=types.GenerateContentConfig(safety_settings=off))
    assert r.text
    assert "safety" not in json.dumps(anthropic.last()["body"]).lower()


def test_responses_metadata_is_carried_and_truncation_auto_refused_when_translated(gw):
    client = gw.openai()
    # Translated for Azure's Chat Completions: metadata goes along, `disabled` asks nothing.
    r = client.responses.create(model="gpt-azure", input="hi", metadata={"team": "search"},
                                truncation="disabled", include=["reasoning.encrypted_content"])
    assert r.metadata == {"team": "search"}
    sent = gw.doubles["azure"].last()["body"]
    assert sent["metadata"] == {"team": "search"}, sent
    assert "truncation" not in sent and "include" not in sent, sent
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="claude-haiku", input="hi", truncation="auto")
    body = assert_openai_error(err.value.response.json(), "invalid_request_error",
                               "unsupported_by_model")
    assert body["param"] == "truncation", body
    assert "`claude-haiku`" in body["message"], body


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_refusal_reaches_other_dialects_as_their_refusal(gw, stream):
    """The answer matrix's `message.refusal` row: text with a content-filter finish."""
    prompt = "[refusal] help me with something bad"
    anthropic = gw.anthropic()
    kw = dict(model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": prompt}])
    if stream:
        with anthropic.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = anthropic.messages.create(**kw)
    refused = gw.doubles["openai"].last()["response"]["text"]
    assert refused and msg.content[0].text == refused
    assert msg.stop_reason == "refusal"
    client = gemini_client(gw)
    if stream:
        chunks = list(client.models.generate_content_stream(model="gpt-4o-mini", contents=prompt))
        text = "".join(c.text or "" for c in chunks)
        finish = chunks[-1].candidates[0].finish_reason
    else:
        r = client.models.generate_content(model="gpt-4o-mini", contents=prompt)
        text, finish = r.text, r.candidates[0].finish_reason
    assert text == gw.doubles["openai"].last()["response"]["text"]
    assert finish == types.FinishReason.SAFETY
