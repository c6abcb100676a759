"""Tool calling through the gateway, every provider: several calls, text mixed with calls,
streamed (arguments arriving in fragments) and not, and tool results sent back."""

from __future__ import annotations

import json

import pytest

from doubles.cohere_double import DEFAULT_TOOL_PLAN as COHERE_TOOL_PLAN
from doubles.common import expected_text

from .gateway_config import CHAT_MODELS

MODELS = list(CHAT_MODELS)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {
        "tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"]}}}
WEATHER_ARGS = {"city": "city-get_weather", "days": 42}
CLOCK_ARGS = {"tz": "UTC"}


def anthropic_tool(t):
    f = t["function"]
    return {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]}


@pytest.mark.parametrize("model", MODELS)
def test_two_tool_calls(gw, model):
    provider, _ = CHAT_MODELS[model]
    r = gw.openai().chat.completions.create(
        model=model, tools=[WEATHER, CLOCK],
        messages=[{"role": "user", "content": "Weather in Paris and the time?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [WEATHER_ARGS, CLOCK_ARGS]
    assert all(c.type == "function" and c.id for c in calls)
    assert len({c.id for c in calls}) == 2
    # Cohere always explains its calls in a tool plan, which reaches clients as text.
    assert (choice.message.content or "") == (COHERE_TOOL_PLAN if provider == "cohere" else "")


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_calls_with_text(gw, model):
    provider, upstream = CHAT_MODELS[model]
    prompt = "Think aloud, then call tools [text+tools]"
    chunks = list(gw.openai().chat.completions.create(
        model=model, tools=[WEATHER, CLOCK], stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": prompt}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(provider, upstream, prompt)
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["args"] += tc.function.arguments
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert [json.loads(calls[i]["args"]) for i in sorted(calls)] == [WEATHER_ARGS, CLOCK_ARGS]
    assert all(calls[i]["id"] for i in calls)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_tool_results_sent_back(gw, model):
    provider, _ = CHAT_MODELS[model]
    client = gw.openai()
    first = client.chat.completions.create(
        model=model, tools=[WEATHER, CLOCK],
        messages=[{"role": "user", "content": "Weather and time?"}])
    calls = first.choices[0].message.tool_calls
    assert len(calls) == 2
    messages = [{"role": "user", "content": "Weather and time?"},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
                {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"}]
    second = client.chat.completions.create(model=model, tools=[WEATHER, CLOCK],
                                            messages=messages)
    assert second.choices[0].message.content == "tool results: get_weather=sunny; get_time=noon"
    assert second.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_tools_round_trip(gw, model):
    provider, upstream = CHAT_MODELS[model]
    client = gw.anthropic()
    tools = [anthropic_tool(WEATHER), anthropic_tool(CLOCK)]
    prompt = "Check the weather [tool:get_weather] [text+tools]"
    with client.messages.stream(model=model, max_tokens=200, tools=tools,
                                messages=[{"role": "user", "content": prompt}]) as s:
        msg = s.get_final_message()
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[0].text == expected_text(provider, upstream, prompt)
    use = msg.content[1]
    assert use.name == "get_weather" and use.input == WEATHER_ARGS and use.id
    assert msg.stop_reason == "tool_use"
    reply = client.messages.create(model=model, max_tokens=200, tools=tools, messages=[
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "rainy"}]}])
    assert reply.content[0].text == "tool results: get_weather=rainy"
    assert reply.stop_reason == "end_turn"


def test_tool_definitions_reach_provider_natively(gw):
    gw.openai().chat.completions.create(model="gemini-flash", tools=[WEATHER],
                                        messages=[{"role": "user", "content": "w?"}])
    body = gw.doubles["gemini"].last()["body"]
    decls = [d for t in body["tools"] for d in (t.get("functionDeclarations") or
                                                 t.get("function_declarations") or [])]
    assert [d["name"] for d in decls] == ["get_weather"]
    gw.openai().chat.completions.create(model="claude-haiku", tools=[WEATHER],
                                        messages=[{"role": "user", "content": "w?"}])
    body = gw.doubles["anthropic"].last()["body"]
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
