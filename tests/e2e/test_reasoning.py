"""Reasoning across dialects (#19, docs/fields.md), through each host with the official SDKs:
Anthropic thinking comes back with its signature and goes back to Anthropic unchanged (from
an Anthropic client, and from an OpenAI Chat client as `reasoning_details`); thinking asked
Anthropic's way of a Gemini model comes back as thinking blocks; a google-genai client gets
thought parts; reasoning tokens reach every dialect's usage (Anthropic has no such count).

The doubles think when asked (doubles/common.py `with_thinking`): the Anthropic double signs
its thinking and refuses thinking sent back with a signature it did not give."""

from __future__ import annotations

import json

import openai
import pytest
from google.genai import types

from doubles.common import sign_thinking

from .test_sdk_matrix import gemini_client, gemini_config

THINKING = {"type": "enabled", "budget_tokens": 1024}


def final_message(client, stream: bool, **kw):
    if stream:
        with client.messages.stream(**kw) as s:
            return s.get_final_message()
    return client.messages.create(**kw)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_anthropic_thinking_round_trips_to_anthropic(gw, stream):
    client = gw.anthropic()
    ask = [{"role": "user", "content": "Is 97 prime?"}]
    r = final_message(client, stream, model="claude-haiku", max_tokens=2048, thinking=THINKING,
                      messages=ask)
    thinking, text = r.content[0], r.content[1]
    assert thinking.type == "thinking" and text.type == "text", r.content
    assert thinking.thinking.startswith("thinking about ")
    assert thinking.signature == sign_thinking(thinking.thinking)
    # The next turn sends the answer back; the double checks the signature.
    turn = [b.model_dump(exclude_none=True) for b in r.content]
    r2 = final_message(client, stream, model="claude-haiku", max_tokens=2048, thinking=THINKING,
                       messages=ask + [{"role": "assistant", "content": turn},
                                       {"role": "user", "content": "Why?"}])
    assert r2.content[-1].type == "text"
    sent = gw.doubles["anthropic"].last()["body"]["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": thinking.thinking,
                       "signature": thinking.signature}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_an_openai_chat_client_gets_anthropic_thinking_and_sends_it_back(gw, stream):
    client = gw.openai()
    ask = [{"role": "user", "content": "Is 89 prime?"}]
    if stream:
        chunks = list(client.chat.completions.create(
            model="claude-haiku", messages=ask, reasoning_effort="low", stream=True,
            stream_options={"include_usage": True}))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        details = [x for d in deltas for x in (d.model_extra or {}).get("reasoning_details") or []]
        signature = next(x["signature"] for x in details if x.get("signature"))
        content = "".join(d.content or "" for d in deltas)
        usage = chunks[-1].usage
        message = {"role": "assistant", "content": content, "reasoning_details": [
            {"type": "reasoning.text", "text": reasoning, "signature": signature,
             "format": "anthropic-claude-v1"}]}
    else:
        r = client.chat.completions.create(model="claude-haiku", messages=ask,
                                           reasoning_effort="low")
        extra = r.choices[0].message.model_extra
        reasoning = extra["reasoning_content"]
        signature = extra["reasoning_details"][0]["signature"]
        usage = r.usage
        message = r.choices[0].message.model_dump(exclude_none=True)
    assert reasoning.startswith("thinking about ")
    assert signature == sign_thinking(reasoning)
    # Anthropic has no reasoning breakdown: the count is in the output tokens.
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.completion_tokens >= gw.doubles["anthropic"].last()["response"]["usage"]["reasoning"]
    client.chat.completions.create(model="claude-haiku", reasoning_effort="low",
                                   messages=ask + [message, {"role": "user", "content": "Why?"}])
    sent = gw.doubles["anthropic"].last()["body"]["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": reasoning, "signature": signature}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_gemini_thoughts_reach_an_anthropic_client(gw, stream):
    r = final_message(gw.anthropic(), stream, model="gemini-flash", max_tokens=2048,
                      thinking=THINKING, messages=[{"role": "user", "content": "Is 83 prime?"}])
    body = gw.doubles["gemini"].last()["body"]
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024,
                                                          "includeThoughts": True}
    assert r.content[0].type == "thinking", r.content
    assert r.content[0].thinking.startswith("thinking about ")
    # Gemini's thought is not Anthropic-signed: the block says so with an empty signature.
    assert r.content[0].signature == ""
    assert r.content[1].type == "text"


@pytest.mark.parametrize("model,provider", [("claude-haiku", "anthropic"),
                                            ("gemini-flash", "gemini")])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_gemini_client_gets_thought_parts_and_thoughts_tokens(gw, model, provider, stream):
    client = gemini_client(gw)
    config = types.GenerateContentConfig(
        max_output_tokens=2048,
        thinking_config=types.ThinkingConfig(thinking_budget=1024, include_thoughts=True))
    if stream:
        chunks = list(client.models.generate_content_stream(
            model=model, contents="Is 79 prime?", config=config))
        parts = [p for c in chunks if c.candidates for p in c.candidates[0].content.parts or []]
        usage = chunks[-1].usage_metadata
    else:
        r = client.models.generate_content(model=model, contents="Is 79 prime?", config=config)
        parts = r.candidates[0].content.parts
        usage = r.usage_metadata
    thoughts = "".join(p.text or "" for p in parts if p.thought)
    answer = "".join(p.text or "" for p in parts if not p.thought)
    assert thoughts.startswith("thinking about "), parts
    assert answer and not answer.startswith("thinking about ")
    reasoning = gw.doubles[provider].last()["response"]["usage"]["reasoning"]
    assert reasoning > 0
    if provider == "gemini":
        assert usage.thoughts_token_count == reasoning
    else:
        # Anthropic reports no breakdown: all output is candidates.
        assert not usage.thoughts_token_count


@pytest.mark.parametrize("model,provider", [("gemini-flash", "gemini"),
                                            ("gpt-4o-mini", "openai")])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_reasoning_tokens_reach_openai_clients(gw, model, provider, stream):
    client = gw.openai()
    if stream:
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Is 73 prime?"}],
            reasoning_effort="low", stream=True, stream_options={"include_usage": True}))
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Is 73 prime?"}],
            reasoning_effort="low").usage
    reasoning = gw.doubles[provider].last()["response"]["usage"]["reasoning"]
    assert reasoning > 0
    assert usage.completion_tokens_details.reasoning_tokens == reasoning
    assert usage.completion_tokens > reasoning


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_responses_client_gets_reasoning_items_and_tokens(gw, stream):
    client = gw.openai()
    kw = dict(model="claude-haiku", input="Is 71 prime?", reasoning={"effort": "low"})
    if stream:
        with client.responses.stream(**kw) as s:
            r = s.get_final_response()
    else:
        r = client.responses.create(**kw)
    assert r.output[0].type == "reasoning", r.output
    assert r.output[0].summary[0].text.startswith("thinking about ")
    assert r.output_text and not r.output_text.startswith("thinking about ")
    # Anthropic has no breakdown; Gemini does.
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    r = client.responses.create(model="gemini-flash", input="Is 71 prime?",
                                reasoning={"effort": "low"})
    reasoning = gw.doubles["gemini"].last()["response"]["usage"]["reasoning"]
    assert reasoning > 0
    assert r.usage.output_tokens_details.reasoning_tokens == reasoning


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_responses_client_sends_anthropic_thinking_back(gw, stream):
    """The reasoning item carries the signed thinking in `encrypted_content`; the client's
    usual `input += response.output` brings it back and Anthropic checks the signature."""
    client = gw.openai()
    ask = [{"role": "user", "content": "Is 67 prime?"}]
    kw = dict(model="claude-haiku", input=ask, reasoning={"effort": "low"})
    if stream:
        with client.responses.stream(**kw) as s:
            r = s.get_final_response()
    else:
        r = client.responses.create(**kw)
    item = r.output[0]
    assert item.type == "reasoning" and item.encrypted_content, r.output
    thinking = item.summary[0].text
    history = ask + [o.model_dump(exclude_none=True) for o in r.output]
    r2 = client.responses.create(model="claude-haiku", reasoning={"effort": "low"},
                                 input=history + [{"role": "user", "content": "Why?"}])
    assert r2.output_text
    sent = gw.doubles["anthropic"].last()["body"]["messages"][1]["content"][0]
    assert sent == {"type": "thinking", "thinking": thinking,
                    "signature": sign_thinking(thinking)}


def test_anthropic_thinking_is_openai_reasoning_effort(gw):
    r = gw.anthropic().messages.create(
        model="gpt-4o-mini", max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 4096},
        messages=[{"role": "user", "content": "Is 67 prime?"}])
    entry = gw.doubles["openai"].last()
    assert entry["body"]["reasoning_effort"] == "medium" and "thinking" not in entry["body"]
    # OpenAI returns no reasoning text; its tokens are in the Anthropic client's output.
    assert [b.type for b in r.content] == ["text"]
    assert r.usage.output_tokens == entry["response"]["usage"]["output"]
    assert entry["response"]["usage"]["reasoning"] > 0


# --- Gemini thought signatures on function calls (gemini-3: the double signs its calls and
# answers 400 to a current turn sent back without them, as Gemini 3 does) -------------------

SIGNED_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
]


def sent_calls(gw) -> list[dict]:
    """The functionCall parts of the last request the Gemini double got."""
    body = gw.doubles["gemini"].last()["body"]
    return [p for c in body["contents"] for p in c["parts"] if "functionCall" in p]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_an_openai_client_round_trips_gemini_call_signatures(gw, stream):
    """The openai SDK echoes `extra_content.google.thought_signature` back on its tool calls
    (as with Google's own OpenAI-compatible endpoint); Gemini gets it on the first call."""
    client = gw.openai()
    ask = [{"role": "user", "content": "Weather and time?"}]
    if stream:
        calls: dict[int, dict] = {}
        for chunk in client.chat.completions.create(model="gemini-3", messages=ask,
                                                    tools=SIGNED_TOOLS, stream=True):
            for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(tc.index, {"type": "function", "function": {
                    "name": "", "arguments": ""}})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["function"]["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["function"]["arguments"] += tc.function.arguments
                if (tc.model_extra or {}).get("extra_content"):
                    call["extra_content"] = tc.model_extra["extra_content"]
        assistant = {"role": "assistant", "tool_calls": [calls[i] for i in sorted(calls)]}
    else:
        r = client.chat.completions.create(model="gemini-3", messages=ask, tools=SIGNED_TOOLS)
        assistant = r.choices[0].message.model_dump(exclude_none=True)
    tool_calls = assistant["tool_calls"]
    given = [p for p in gw.doubles["gemini"].last()["response"]["tool_calls"]]
    assert len(tool_calls) == len(given) == 2
    signature = tool_calls[0]["extra_content"]["google"]["thought_signature"]
    assert signature and "extra_content" not in tool_calls[1]
    results = [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in tool_calls]
    second = client.chat.completions.create(model="gemini-3", tools=SIGNED_TOOLS,
                                            messages=ask + [assistant] + results)
    assert second.choices[0].message.content == "tool results: get_weather=ok; get_time=ok"
    sent = sent_calls(gw)
    assert sent[0]["thoughtSignature"] == signature and "thoughtSignature" not in sent[1]
    # Without the signature, Gemini 3's own 400 reaches the client.
    for call in tool_calls:
        call.pop("extra_content", None)
    with pytest.raises(openai.BadRequestError, match="thought_signature"):
        client.chat.completions.create(model="gemini-3", tools=SIGNED_TOOLS,
                                       messages=ask + [assistant] + results)


def test_an_anthropic_client_round_trips_gemini_call_signatures(gw):
    """Anthropic has no field for it: the signature rides in the tool_use id and comes back."""
    client = gw.anthropic()
    tools = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]}
             for t in SIGNED_TOOLS]
    ask = [{"role": "user", "content": "Weather and time?"}]
    r = client.messages.create(model="gemini-3", max_tokens=200, tools=tools, messages=ask)
    uses = [b for b in r.content if b.type == "tool_use"]
    assert len(uses) == 2 and "__thought_signature__" in uses[0].id
    turn = [b.model_dump(exclude_none=True) for b in r.content]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "ok"} for u in uses]
    second = client.messages.create(model="gemini-3", max_tokens=200, tools=tools, messages=ask + [
        {"role": "assistant", "content": turn}, {"role": "user", "content": results}])
    assert second.content[0].text == "tool results: get_weather=ok; get_time=ok"
    sent = sent_calls(gw)
    assert sent[0]["thoughtSignature"] and "thoughtSignature" not in sent[1]
    assert "__thought_signature__" not in json.dumps(gw.doubles["gemini"].last()["body"])


def test_a_gemini_client_round_trips_call_signatures(gw):
    """google-genai keeps the model's parts, signatures included, in the history it sends."""
    client = gemini_client(gw)
    config = gemini_config(tools=True)
    ask = types.Content(role="user", parts=[types.Part(text="Weather and time?")])
    r = client.models.generate_content(model="gemini-3", contents=[ask], config=config)
    model_turn = r.candidates[0].content
    calls = [p for p in model_turn.parts if p.function_call]
    assert len(calls) == 2 and calls[0].thought_signature and not calls[1].thought_signature
    results = types.Content(role="user", parts=[
        types.Part(function_response=types.FunctionResponse(
            id=p.function_call.id, name=p.function_call.name, response={"result": "ok"}))
        for p in calls])
    second = client.models.generate_content(model="gemini-3", contents=[ask, model_turn, results],
                                            config=config)
    assert second.text == "tool results: get_weather=ok; get_time=ok"
    assert sent_calls(gw)[0]["thoughtSignature"]


# --- Claude's thinking on Bedrock (Converse `additionalModelRequestFields.thinking`, answers'
# `reasoningContent`); the Bedrock double signs its reasoning and checks it when sent back ---

@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_anthropic_thinking_round_trips_through_bedrock(gw, stream):
    client = gw.anthropic()
    ask = [{"role": "user", "content": "Is 83 prime?"}]
    r = final_message(client, stream, model="claude-bedrock", max_tokens=2048,
                      thinking=THINKING, messages=ask)
    thinking, text = r.content[0], r.content[1]
    assert thinking.type == "thinking" and text.type == "text", r.content
    assert thinking.thinking.startswith("thinking about ")
    assert thinking.signature == sign_thinking(thinking.thinking)
    body = gw.doubles["bedrock"].last()["body"]
    assert body["additionalModelRequestFields"] == {"thinking": THINKING}
    turn = [b.model_dump(exclude_none=True) for b in r.content]
    r2 = final_message(client, stream, model="claude-bedrock", max_tokens=2048,
                       thinking=THINKING,
                       messages=ask + [{"role": "assistant", "content": turn},
                                       {"role": "user", "content": "Why?"}])
    assert r2.content[-1].type == "text"
    sent = gw.doubles["bedrock"].last()["body"]["messages"][1]["content"][0]
    assert sent == {"reasoningContent": {"reasoningText": {
        "text": thinking.thinking, "signature": thinking.signature}}}


def test_reasoning_effort_thinks_on_bedrock_for_an_openai_client(gw):
    r = gw.openai().chat.completions.create(
        model="claude-bedrock", reasoning_effort="low", max_tokens=256,
        messages=[{"role": "user", "content": "Is 71 prime?"}])
    message = r.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content", "").startswith("thinking about ")
    details = message.model_extra["reasoning_details"]
    assert details[0]["signature"] == sign_thinking(message.model_extra["reasoning_content"])
    body = gw.doubles["bedrock"].last()["body"]
    assert body["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert body["inferenceConfig"]["maxTokens"] == 256 + 1024
