"""The two newer ingresses against every provider kind's double, through each host, driven by
their official SDKs: the `openai` SDK's Responses API and `google-genai` (the Gemini API).
Text, streams, one tool, parallel tools, streamed tools with text, tool results sent back,
usage with cached tokens, and provider errors in the client's dialect. (OpenAI Chat and
Anthropic clients run the same scenarios in test_chat.py, test_streaming.py, test_tools.py and
test_errors.py, over the same models.)"""

from __future__ import annotations

import json

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from doubles.cohere_double import DEFAULT_TOOL_PLAN as COHERE_TOOL_PLAN
from doubles.common import expected_text

from .checks import assert_upstream_request, usage_of
from .gateway_config import CHAT_MODELS, KEY_ALL
from .test_errors import assert_openai_error

MODELS = list(CHAT_MODELS)
WEATHER_SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
CLOCK_SCHEMA = {"type": "object", "properties": {
    "tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"]}
WEATHER_ARGS = {"city": "city-get_weather", "days": 42}
CLOCK_ARGS = {"tz": "UTC"}
RESPONSES_TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Current weather for a city",
     "parameters": WEATHER_SCHEMA},
    {"type": "function", "name": "get_time", "description": "Current time in a time zone",
     "parameters": CLOCK_SCHEMA},
]


def gemini_client(gw) -> genai.Client:
    """A google-genai client pointed at the gateway (keep a reference while using it: the
    client closes its connection pool when collected)."""
    return genai.Client(api_key=KEY_ALL, http_options=types.HttpOptions(
        base_url=gw.base_url, timeout=15_000))


def gemini_config(tools: bool = False, **kw) -> types.GenerateContentConfig:
    if tools:
        kw["tools"] = [types.Tool(function_declarations=[
            types.FunctionDeclaration(name="get_weather", description="Current weather for a city",
                                      parameters_json_schema=WEATHER_SCHEMA),
            types.FunctionDeclaration(name="get_time", description="Current time in a time zone",
                                      parameters_json_schema=CLOCK_SCHEMA)])]
        kw["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(disable=True)
    return types.GenerateContentConfig(**kw)


# --- OpenAI Responses API -------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_responses_text_with_cached_usage(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Responses hello to {provider} [cache]"
    r = gw.openai().responses.create(model=model, instructions="You are terse.", input=prompt)
    double = gw.doubles[provider]
    entry = double.last()
    assert_upstream_request(double, entry, upstream)
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == expected_text(provider, upstream, prompt)
    usage = usage_of(entry)
    assert usage["cached"] > 0
    assert r.usage.input_tokens == usage["input"]
    assert r.usage.output_tokens == usage["output"]
    assert r.usage.input_tokens_details.cached_tokens == usage["cached"]
    if provider == "openai":
        # The Responses API's own provider gets the request untouched but for the model.
        assert entry["path"] == "/v1/responses"
        assert entry["body"]["instructions"] == "You are terse."


@pytest.mark.parametrize("model", MODELS)
def test_responses_stream(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Responses stream several words from {provider}"
    with gw.openai().responses.stream(model=model, input=prompt) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2
    assert "".join(deltas) == expected_text(provider, upstream, prompt)
    assert final.output_text == "".join(deltas)
    usage = usage_of(gw.doubles[provider].last())
    assert final.usage.input_tokens == usage["input"]
    assert final.usage.output_tokens == usage["output"]


@pytest.mark.parametrize("model", MODELS)
def test_responses_one_tool_then_parallel_tools(gw, model):
    provider, _ = CHAT_MODELS[model]
    client = gw.openai()
    one = client.responses.create(model=model, tools=RESPONSES_TOOLS,
                                  input="Weather only [tool:get_weather]")
    calls = [i for i in one.output if i.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", WEATHER_ARGS)]
    both = client.responses.create(model=model, tools=RESPONSES_TOOLS, input="Weather and time?")
    calls = [i for i in both.output if i.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", WEATHER_ARGS), ("get_time", CLOCK_ARGS)]
    assert all(c.call_id for c in calls) and len({c.call_id for c in calls}) == 2
    # Cohere always explains its calls in a tool plan, which reaches clients as text.
    assert both.output_text == (COHERE_TOOL_PLAN if provider == "cohere" else "")


@pytest.mark.parametrize("model", MODELS)
def test_responses_streamed_tools_with_text_and_results_sent_back(gw, model):
    provider, upstream = CHAT_MODELS[model]
    client = gw.openai()
    prompt = "Think aloud, then call tools [text+tools]"
    with client.responses.stream(model=model, tools=RESPONSES_TOOLS, input=prompt) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert final.output_text == expected_text(provider, upstream, prompt)
    calls = [i for i in final.output if i.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", WEATHER_ARGS), ("get_time", CLOCK_ARGS)]
    results = {"get_weather": "sunny", "get_time": "noon"}
    back = client.responses.create(model=model, tools=RESPONSES_TOOLS, input=[
        {"role": "user", "content": prompt},
        *[item.model_dump(exclude_none=True) for item in final.output],
        *[{"type": "function_call_output", "call_id": c.call_id, "output": results[c.name]}
          for c in calls]])
    assert back.output_text == "tool results: get_weather=sunny; get_time=noon"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("status", [400, 429, 503])
def test_responses_provider_errors(gw, model, status):
    provider, _ = CHAT_MODELS[model]
    with pytest.raises(openai.APIStatusError) as e:
        gw.openai().responses.create(
            model=model, input=f"fail please [[fault:status,status={status}]]")
    assert e.value.status_code == status
    # The Responses API's errors are OpenAI's error object.
    assert_openai_error(e.value.response.json())
    assert gw.doubles[provider].requests(), "the provider was called"


def test_responses_previous_response_id_is_refused_by_name(gw):
    with pytest.raises(openai.BadRequestError) as e:
        gw.openai().responses.create(model="claude-haiku", input="continue",
                                     previous_response_id="resp_123")
    assert e.value.response.json()["error"]["param"] == "previous_response_id"
    assert not gw.doubles["anthropic"].requests()


# --- Gemini API (google-genai) --------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_gemini_text_with_cached_usage(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Gemini-dialect hello to {provider} [cache]"
    client = gemini_client(gw)
    r = client.models.generate_content(
        model=model, contents=prompt, config=gemini_config(system_instruction="You are terse."))
    double = gw.doubles[provider]
    entry = double.last()
    assert_upstream_request(double, entry, upstream)
    assert r.text == expected_text(provider, upstream, prompt)
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    usage = usage_of(entry)
    assert usage["cached"] > 0
    assert r.usage_metadata.prompt_token_count == usage["input"]
    assert r.usage_metadata.candidates_token_count == usage["output"]
    assert r.usage_metadata.cached_content_token_count == usage["cached"]


@pytest.mark.parametrize("model", MODELS)
def test_gemini_stream(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = f"Gemini stream several words from {provider}"
    client = gemini_client(gw)
    chunks = list(client.models.generate_content_stream(model=model, contents=prompt))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 2
    assert "".join(texts) == expected_text(provider, upstream, prompt)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    usage = usage_of(gw.doubles[provider].last())
    assert chunks[-1].usage_metadata.prompt_token_count == usage["input"]
    assert chunks[-1].usage_metadata.candidates_token_count == usage["output"]


@pytest.mark.parametrize("model", MODELS)
def test_gemini_one_tool_then_parallel_tools(gw, model):
    client = gemini_client(gw)
    one = client.models.generate_content(model=model, contents="Weather only [tool:get_weather]",
                                         config=gemini_config(tools=True))
    assert [(c.name, c.args) for c in one.function_calls] == [("get_weather", WEATHER_ARGS)]
    both = client.models.generate_content(model=model, contents="Weather and time?",
                                          config=gemini_config(tools=True))
    assert [(c.name, c.args) for c in both.function_calls] == [
        ("get_weather", WEATHER_ARGS), ("get_time", CLOCK_ARGS)]


@pytest.mark.parametrize("model", MODELS)
def test_gemini_streamed_tools_with_text_and_results_sent_back(gw, model):
    provider, upstream = CHAT_MODELS[model]
    client = gemini_client(gw)
    prompt = "Think aloud, then call tools [text+tools]"
    chunks = list(client.models.generate_content_stream(model=model, contents=prompt,
                                                        config=gemini_config(tools=True)))
    text = "".join(c.text or "" for c in chunks if c.candidates and c.candidates[0].content
                   and any(p.text for p in c.candidates[0].content.parts or []))
    assert text == expected_text(provider, upstream, prompt)
    calls = [fc for c in chunks for fc in (c.function_calls or [])]
    assert [(c.name, c.args) for c in calls] == [
        ("get_weather", WEATHER_ARGS), ("get_time", CLOCK_ARGS)]
    results = {"get_weather": "sunny", "get_time": "noon"}
    back = client.models.generate_content(model=model, config=gemini_config(tools=True), contents=[
        types.Content(role="user", parts=[types.Part(text=prompt)]),
        types.Content(role="model", parts=[types.Part(text=text)] + [
            types.Part(function_call=c) for c in calls]),
        types.Content(role="user", parts=[
            types.Part.from_function_response(name=c.name, response={"result": results[c.name]})
            for c in calls])])
    assert back.text == "tool results: get_weather=sunny; get_time=noon"


GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("status", [400, 429, 503])
def test_gemini_provider_errors(gw, model, status):
    provider, _ = CHAT_MODELS[model]
    client = gemini_client(gw)
    with pytest.raises(genai_errors.APIError) as e:
        client.models.generate_content(
            model=model, contents=f"fail please [[fault:status,status={status}]]")
    assert e.value.code == status
    assert e.value.status == GOOGLE_STATUS[status]
    assert e.value.message
    assert gw.doubles[provider].requests(), "the provider was called"


def test_gemini_key_as_query_parameter_and_unknown_model(gw):
    r = gw.post(f"/v1beta/models/claude-haiku:generateContent?key={KEY_ALL}",
                {"contents": [{"role": "user", "parts": [{"text": "query key"}]}]}, key=None)
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == expected_text(
        "anthropic", CHAT_MODELS["claude-haiku"][1], "query key")
    client = gemini_client(gw)
    with pytest.raises(genai_errors.ClientError) as e:
        client.models.generate_content(model="no-such-model", contents="hi")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"


# --- one model, three wire formats ----------------------------------------------------------


@pytest.mark.parametrize("sdk", ["openai-chat", "responses", "anthropic", "google-genai"])
def test_bedrock_then_azure_then_gemini_with_tools(gw, sdk):
    """`tri-fallback` is served by Bedrock, then Azure, then Gemini: Bedrock answers 503 and
    Azure 429, so Gemini's tool calls reach the client — in its own dialect, with the tools
    translated for each provider on the way."""
    gw.doubles["bedrock"].fault(kind="status", status=503, path="/converse")
    gw.doubles["azure"].fault(kind="status", status=429, path="/chat/completions")
    prompt = "Weather and time? [tool:get_weather]"
    if sdk == "openai-chat":
        r = gw.openai().chat.completions.create(
            model="tri-fallback", messages=[{"role": "user", "content": prompt}],
            tools=[{"type": "function", "function": {k: t[k] for k in (
                "name", "description", "parameters")}} for t in RESPONSES_TOOLS])
        calls = [(c.function.name, json.loads(c.function.arguments))
                 for c in r.choices[0].message.tool_calls]
    elif sdk == "responses":
        r = gw.openai().responses.create(model="tri-fallback", input=prompt,
                                         tools=RESPONSES_TOOLS)
        calls = [(i.name, json.loads(i.arguments)) for i in r.output if i.type == "function_call"]
    elif sdk == "anthropic":
        m = gw.anthropic().messages.create(
            model="tri-fallback", max_tokens=100, messages=[{"role": "user", "content": prompt}],
            tools=[{"name": t["name"], "description": t["description"],
                    "input_schema": t["parameters"]} for t in RESPONSES_TOOLS])
        calls = [(b.name, b.input) for b in m.content if b.type == "tool_use"]
    else:
        client = gemini_client(gw)
        r = client.models.generate_content(model="tri-fallback", contents=prompt,
                                           config=gemini_config(tools=True))
        calls = [(c.name, c.args) for c in r.function_calls]
    assert calls == [("get_weather", WEATHER_ARGS)]
    bedrock = gw.doubles["bedrock"].requests()
    azure = gw.doubles["azure"].requests()
    gemini = gw.doubles["gemini"].requests()
    assert [len(bedrock), len(azure), len(gemini)] == [1, 1, 1]
    # Each provider got the tools in its own format.
    assert bedrock[0]["body"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
    assert azure[0]["body"]["tools"][0]["function"]["name"] == "get_weather"
    decls = gemini[0]["body"]["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in decls] == ["get_weather", "get_time"]
    assert_upstream_request(gw.doubles["gemini"], gemini[0], "gemini-tri")
