"""The doubles themselves, driven by the official SDKs: if these fail, the e2e suite would test
against a wrong picture of the providers."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from doubles.common import expected_text
from doubles.server import Doubles

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object",
                                       "properties": {"tz": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def doubles():
    d = Doubles().start()
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def _reset(doubles):
    doubles.reset()


def oai(d, **kw):
    return openai.OpenAI(base_url=d.base_url + "/v1", api_key=d.api_key, max_retries=0, **kw)


def ant(d, **kw):
    return anthropic.Anthropic(base_url=d.base_url, api_key=d.api_key, max_retries=0, **kw)


def test_openai_chat(doubles):
    d = doubles["openai"]
    r = oai(d).chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == expected_text("openai", "gpt-4o-mini", "hello there")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 5
    assert d.last()["headers"]["authorization"] == f"Bearer {d.api_key}"


def test_openai_image_edits_validate_like_openai(doubles):
    """`/v1/images/edits` with the SDK's own multipart: `image[]` files, mask, prompt."""
    from doubles.openai_media import PNG_1X1
    d = doubles["openai"]
    client = oai(d)
    r = client.images.edit(model="gpt-image-1", prompt="add a hat", n=2,
                           image=[("a.png", PNG_1X1, "image/png"),
                                  ("b.png", PNG_1X1, "image/png")],
                           mask=("m.png", PNG_1X1, "image/png"))
    assert len(r.data) == 2 and r.data[0].b64_json and r.usage.input_tokens > 0
    last = d.last()
    assert [f["name"] for f in last["files"]] == ["image[]", "image[]", "mask"]
    assert last["form"]["prompt"] == "add a hat" and last["form"]["n"] == "2"
    r = client.images.edit(model="dall-e-2", prompt="x", image=("a.png", PNG_1X1))
    assert r.data[0].url.startswith("https://")
    for kwargs, param in [
            ({"model": "gpt-image-1", "image": ("a.txt", b"not an image")}, "image"),
            ({"model": "gpt-image-1", "image": ("a.png", PNG_1X1), "response_format": "url"},
             "response_format"),
            ({"model": "dall-e-2", "image": [("a.png", PNG_1X1), ("b.png", PNG_1X1)]},
             "image"),
            ({"model": "gpt-image-1", "image": ("a.png", PNG_1X1), "size": "10x10"}, "size")]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.edit(prompt="x", **kwargs)
        assert caught.value.body["param"] == param, kwargs


def test_openai_stream_with_usage(doubles):
    d = doubles["openai"]
    chunks = list(oai(d).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me a reply"}],
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text("openai", "gpt-4o-mini", "stream me a reply")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_openai_streamed_tool_calls(doubles):
    d = doubles["openai"]
    with oai(d).chat.completions.stream(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "weather? [text+tools]"}],
            tools=[WEATHER, TIME]) as stream:
        final = stream.get_final_completion()
    msg = final.choices[0].message
    assert [c.function.name for c in msg.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "city-get_weather",
                                                                "days": 42}
    assert msg.content.startswith("openai/gpt-4o-mini echo")
    assert final.choices[0].finish_reason == "tool_calls"


def test_openai_tool_results(doubles):
    d = doubles["openai"]
    r = oai(d).chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], tools=[WEATHER])
    assert r.choices[0].message.content == "tool results: get_weather=sunny"


RESPONSES_WEATHER = {"type": "function", "name": "get_weather",
                     "parameters": WEATHER["function"]["parameters"]}


def test_openai_responses_create_stream_and_tool_round_trip(doubles):
    d = doubles["openai"]
    client = oai(d)
    r = client.responses.create(model="gpt-4o-mini", instructions="be brief",
                                input="hello there [cache]")
    assert r.output_text == expected_text("openai", "gpt-4o-mini", "hello there [cache]")
    assert r.status == "completed"
    assert r.usage.input_tokens == 4 and r.usage.input_tokens_details.cached_tokens == 2
    # The SDK's accumulator checks event order, indexes and the final object.
    with client.responses.stream(model="gpt-4o-mini", tools=[RESPONSES_WEATHER],
                                 input="weather? [text+tools]") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    assert [i.type for i in final.output] == ["message", "function_call"]
    call = final.output[1]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "city-get_weather", "days": 42}
    events = [json.loads(line[6:]) for line in httpx.post(
        d.base_url + "/v1/responses", headers={"authorization": f"Bearer {d.api_key}"},
        json={"model": "m", "input": "hi", "stream": True}).text.splitlines()
        if line.startswith("data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    back = client.responses.create(model="gpt-4o-mini", tools=[RESPONSES_WEATHER], input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert back.output_text == "tool results: get_weather=sunny"
    # Strict like the API: unknown fields, orphan outputs and stored state are refused.
    for body, status, param in [
            ({"model": "m", "input": "x", "bogus": 1}, 400, "bogus"),
            ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c",
                                       "output": "x"}]}, 400, "input"),
            ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, 404,
             "previous_response_id")]:
        bad = httpx.post(d.base_url + "/v1/responses", json=body,
                         headers={"authorization": f"Bearer {d.api_key}"})
        assert bad.status_code == status and bad.json()["error"]["param"] == param


def test_openai_embeddings_base64_default(doubles):
    d = doubles["openai"]
    r = oai(d).embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 8
    assert r.usage.prompt_tokens == 3


def test_openai_auth_and_faults(doubles):
    d = doubles["openai"]
    bad = openai.OpenAI(base_url=d.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    d.fault(kind="status", status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as e:
        oai(d).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.InternalServerError):
        oai(d).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x [[fault:status,status=503]]"}])
    with pytest.raises(openai.APIConnectionError):
        oai(d).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x [[fault:close_headers]]"}])
    with pytest.raises(openai.APITimeoutError):
        oai(d, timeout=0.5).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x [[fault:hang,seconds=3]]"}])
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(oai(d).chat.completions.create(
            model="m", stream=True,
            messages=[{"role": "user", "content": "a b c d e f [[fault:cut_stream,after=2]]"}]))
    with pytest.raises(Exception):
        list(oai(d).chat.completions.create(
            model="m", stream=True,
            messages=[{"role": "user", "content": "a b c d [[fault:malformed_sse]]"}]))


def test_concurrency_cap_answers_429_like_the_provider(doubles):
    """With a cap of one, a second request while a streamed one is still open is refused 429
    in the provider's error format (the SDK's RateLimitError), then served once it ends."""
    from concurrent.futures import ThreadPoolExecutor
    import time

    for name in ("openai", "anthropic"):
        d = doubles[name]
        d.cap(1)

        def streamed():
            if name == "openai":
                return list(oai(d).chat.completions.create(
                    model="capped", stream=True,
                    messages=[{"role": "user", "content": "slow [[fault:linger_end,seconds=1]]"}]))
            with ant(d).messages.stream(model="capped", max_tokens=10, messages=[
                    {"role": "user", "content": "slow [[fault:linger_end,seconds=1]]"}]) as s:
                return list(s.text_stream)

        def one():
            if name == "openai":
                return oai(d).chat.completions.create(
                    model="capped", messages=[{"role": "user", "content": "second"}])
            return ant(d).messages.create(model="capped", max_tokens=10,
                                          messages=[{"role": "user", "content": "second"}])

        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(streamed)
            time.sleep(0.4)
            with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as info:
                one()
            assert held.result()
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "1"
        if name == "anthropic":
            assert info.value.body["type"] == "error"
        else:
            assert info.value.body["code"] == "rate_limit_exceeded"
        # The double counts the stream out after its last byte: wait for that, then room again.
        deadline = time.monotonic() + 5
        while d.limits()["in_flight"]["capped"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert one()
        limits = d.limits()
        assert (limits["peak"]["capped"], limits["refused"]["capped"]) == (1, 1)
        assert limits["in_flight"]["capped"] == 0


def test_anthropic_message_and_stream(doubles):
    d = doubles["anthropic"]
    c = ant(d)
    m = c.messages.create(model="claude-3-5-haiku-20241022", max_tokens=100, system="be brief",
                          messages=[{"role": "user", "content": "hi claude"}])
    assert m.content[0].text == expected_text("anthropic", "claude-3-5-haiku-20241022",
                                              "hi claude")
    assert m.stop_reason == "end_turn" and m.usage.input_tokens == 4
    h = d.last()["headers"]
    assert d.api_key in (h.get("x-api-key"), h.get("authorization", "")[7:])
    assert h["anthropic-version"]
    with c.messages.stream(model="claude-3-5-haiku-20241022", max_tokens=100,
                           messages=[{"role": "user", "content": "stream it [text+tools]"}],
                           tools=[{"name": "get_weather", "input_schema":
                                   WEATHER["function"]["parameters"]}]) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "city-get_weather", "days": 42}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 0


def test_anthropic_sse_wire_sequence(doubles):
    d = doubles["anthropic"]
    r = httpx.post(d.base_url + "/v1/messages", headers={
        "x-api-key": d.api_key, "anthropic-version": "2023-06-01"}, json={
        "model": "c", "max_tokens": 10, "stream": True,
        "messages": [{"role": "user", "content": "hey"}]})
    names = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_anthropic_errors(doubles):
    d = doubles["anthropic"]
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=d.base_url, api_key="x", max_retries=0).messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.InternalServerError) as e:
        ant(d).messages.create(model="c", max_tokens=5, messages=[
            {"role": "user", "content": "[[fault:status,status=529]]"}])
    assert e.value.status_code == 529
    assert e.value.body["error"]["type"] == "overloaded_error"


def test_gemini_generate_and_stream(doubles):
    d = doubles["gemini"]
    h = {"x-goog-api-key": d.api_key}
    body = {"contents": [{"role": "user", "parts": [{"text": "hi gemini"}]}],
            "tools": [{"functionDeclarations": [WEATHER["function"]]}]}
    r = httpx.post(d.base_url + "/v1beta/models/gemini-2.0-flash:generateContent", headers=h,
                   json=body).json()
    assert r["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_weather"
    body.pop("tools")
    r = httpx.post(d.base_url + "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                   headers=h, json=body)
    frames = [json.loads(f[6:]) for f in r.text.split("\r\n\r\n") if f.startswith("data: ")]
    text = "".join(p["text"] for f in frames for p in f["candidates"][0]["content"]["parts"])
    assert text == expected_text("gemini", "gemini-2.0-flash", "hi gemini")
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"
    assert frames[-1]["usageMetadata"]["candidatesTokenCount"] == 5
    bad = httpx.post(d.base_url + "/v1beta/models/g:generateContent",
                     headers={"x-goog-api-key": "wrong"}, json=body)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_dashscope_native_and_compat(doubles):
    d = doubles["dashscope"]
    h = {"Authorization": f"Bearer {d.api_key}"}
    url = d.base_url + "/api/v1/services/aigc/text-generation/generation"
    body = {"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "ni hao"}]},
            "parameters": {"result_format": "message", "incremental_output": True}}
    r = httpx.post(url, headers=h, json=body).json()
    assert r["output"]["choices"][0]["message"]["content"] == expected_text(
        "dashscope", "qwen-plus", "ni hao")
    assert r["usage"]["output_tokens"] == 5
    r = httpx.post(url, headers={**h, "X-DashScope-SSE": "enable"}, json=body)
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.splitlines()[1:3] == ["event:result", ":HTTP_STATUS/200"] for e in events)
    datas = [json.loads(e.splitlines()[3][5:]) for e in events]
    assert datas[0]["output"]["choices"][0]["finish_reason"] == "null"
    assert datas[-1]["output"]["choices"][0]["finish_reason"] == "stop"
    assert "".join(x["output"]["choices"][0]["message"]["content"] for x in datas) == \
        expected_text("dashscope", "qwen-plus", "ni hao")
    r = httpx.post(url, headers={"Authorization": "Bearer bad"}, json=body)
    assert r.status_code == 401 and r.json()["code"] == "InvalidApiKey"
    compat = openai.OpenAI(base_url=d.base_url + "/compatible-mode/v1", api_key=d.api_key,
                           max_retries=0)
    c = compat.chat.completions.create(model="qwen-plus",
                                       messages=[{"role": "user", "content": "ni hao"}])
    assert c.choices[0].message.content.startswith("dashscope/qwen-plus echo")


# -- Bedrock: boto3 (AWS's own SDK) signs and parses; the double verifies with botocore --------


def bedrock(d, **kw):
    import boto3
    from botocore.config import Config

    from doubles.server import BEDROCK_CREDENTIALS
    creds = dict(aws_access_key_id=BEDROCK_CREDENTIALS["access_key_id"],
                 aws_secret_access_key=BEDROCK_CREDENTIALS["secret_access_key"])
    creds.update(kw)
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=d.base_url,
                        config=Config(retries={"max_attempts": 0}), **creds)


TOOL_CONFIG = {"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather",
                                       "inputSchema": {"json": WEATHER["function"]["parameters"]}}}]}
MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"


def test_bedrock_converse_and_tool_round_trip(doubles):
    d = doubles["bedrock"]
    client = bedrock(d)
    r = client.converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "hi aws"}]}],
                        system=[{"text": "be brief"}], inferenceConfig={"maxTokens": 64})
    assert r["output"]["message"]["content"] == [{"text": expected_text("bedrock", MODEL_ID, "hi aws")}]
    assert r["stopReason"] == "end_turn"
    assert r["usage"]["outputTokens"] > 0
    # The model id travels percent-encoded and is signed double-encoded; the double checked it.
    assert d.last()["path"] == f"/model/{MODEL_ID}/converse"
    msgs = [{"role": "user", "content": [{"text": "weather? [cache]"}]}]
    r = client.converse(modelId=MODEL_ID, messages=msgs, toolConfig=TOOL_CONFIG)
    use = r["output"]["message"]["content"][0]["toolUse"]
    assert use["name"] == "get_weather" and use["input"] == {"city": "city-get_weather", "days": 42}
    assert r["stopReason"] == "tool_use" and r["usage"]["cacheReadInputTokens"] > 0
    msgs += [r["output"]["message"],
             {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"],
                                                          "content": [{"text": "sunny"}]}}]}]
    r = client.converse(modelId=MODEL_ID, messages=msgs, toolConfig=TOOL_CONFIG)
    assert r["output"]["message"]["content"][0]["text"] == "tool results: get_weather=sunny"


def test_bedrock_converse_stream_is_parsed_by_boto3(doubles):
    d = doubles["bedrock"]
    r = bedrock(d).converse_stream(
        modelId=MODEL_ID, toolConfig=TOOL_CONFIG,
        messages=[{"role": "user", "content": [{"text": "stream it [text+tools]"}]}])
    kinds, text, args, usage, stop = [], "", "", None, None
    for ev in r["stream"]:
        kind = next(iter(ev))
        kinds.append(kind)
        if kind == "contentBlockDelta":
            delta = ev[kind]["delta"]
            text += delta.get("text", "")
            args += delta.get("toolUse", {}).get("input", "")
        if kind == "messageStop":
            stop = ev[kind]["stopReason"]
        if kind == "metadata":
            usage = ev[kind]["usage"]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert "contentBlockStart" in kinds
    assert text == expected_text("bedrock", MODEL_ID, "stream it [text+tools]")
    assert json.loads(args) == {"city": "city-get_weather", "days": 42}
    assert stop == "tool_use" and usage["outputTokens"] > 0


def test_bedrock_rejects_bad_signatures_and_requests(doubles):
    import botocore.exceptions

    d = doubles["bedrock"]
    msgs = [{"role": "user", "content": [{"text": "hi"}]}]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bedrock(d, aws_secret_access_key="wrong").converse(modelId=MODEL_ID, messages=msgs)
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bedrock(d, aws_access_key_id="AKIAOTHER").converse(modelId=MODEL_ID, messages=msgs)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    for bad in ([{"role": "assistant", "content": [{"text": "x"}]}],
                [{"role": "user", "content": [{"text": "  "}]}],
                msgs + msgs):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            bedrock(d).converse(modelId=MODEL_ID, messages=bad)
        assert e.value.response["Error"]["Code"] == "ValidationException"
    # A signature from 10 minutes ago is expired.
    r = httpx.post(d.base_url + "/model/m/converse", content=b"{}", headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAUPSTREAMBEDROCK7/20200101/us-east-1/"
                         "bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
        "X-Amz-Date": "20200101T000000Z"})
    assert r.status_code == 403 and "expired" in r.json()["message"]
    # A Bedrock API key works as a bearer token.
    from doubles.server import BEDROCK_CREDENTIALS
    r = httpx.post(d.base_url + "/model/m/converse", json={"messages": msgs},
                   headers={"Authorization": f"Bearer {BEDROCK_CREDENTIALS['api_key']}"})
    assert r.status_code == 200, r.text
    # Faults in AWS's shape, and a throttling exception inside the stream.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bedrock(d).converse(modelId=MODEL_ID, messages=[
            {"role": "user", "content": [{"text": "x [[fault:status,status=429]]"}]}])
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    r = bedrock(d).converse_stream(modelId=MODEL_ID, messages=[
        {"role": "user", "content": [{"text": "x [[fault:stream_exception]]"}]}])
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        list(r["stream"])
    assert "throttlingException" in str(e.value)


def test_gemini_double_with_google_genai(doubles):
    from google import genai
    from google.genai import types

    d = doubles["gemini"]
    client = genai.Client(api_key=d.api_key, http_options=types.HttpOptions(base_url=d.base_url))
    r = client.models.generate_content(model="gemini-2.0-flash", contents="hi genai")
    assert r.text == expected_text("gemini", "gemini-2.0-flash", "hi genai")
    text = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.0-flash", contents="stream genai"))
    assert text == expected_text("gemini", "gemini-2.0-flash", "stream genai")


def test_bedrock_fixture_streams_decode_with_botocore():
    """The core's binary Bedrock fixtures (written by this double's framing) are what
    botocore's own event-stream parser reads back: prelude, headers, payload, CRCs."""
    import glob
    import os

    from botocore.eventstream import EventStreamBuffer

    root = os.path.join(os.path.dirname(__file__), "..", "..", "filter", "core", "tests",
                        "fixtures", "bedrock")
    paths = sorted(glob.glob(os.path.join(root, "*.events.json")))
    assert len(paths) >= 3
    for path in paths:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
        with open(path.replace(".events.json", ".eventstream"), "rb") as f:
            raw = f.read()
        buffer = EventStreamBuffer()
        buffer.add_data(raw)
        decoded = [(m.headers, json.loads(m.payload)) for m in buffer]
        assert decoded == [(h, p) for h, p in events], path


def test_azure_double_with_the_official_azure_client(doubles):
    d = doubles["azure"]
    client = openai.AzureOpenAI(azure_endpoint=d.base_url, api_key=d.api_key,
                                api_version="2024-10-21", max_retries=0)
    r = client.chat.completions.create(model="gpt-4o-mini-prod",
                                       messages=[{"role": "user", "content": "hi azure"}])
    assert r.choices[0].message.content == expected_text("azure", "gpt-4o-mini-prod", "hi azure")
    assert d.last()["path"] == "/openai/deployments/gpt-4o-mini-prod/chat/completions"
    assert d.last()["query"] == {"api-version": "2024-10-21"}
    assert d.last()["headers"]["api-key"] == d.api_key
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini-prod", stream=True, stream_options={"include_usage": True},
        tools=[WEATHER], messages=[{"role": "user", "content": "weather [text+tools]"}]))
    assert chunks[0].choices == [] and chunks[0].prompt_filter_results
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text("azure", "gpt-4o-mini-prod", "weather [text+tools]")
    assert chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="d", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"top_k": 3})
    assert "Unrecognized request argument" in str(e.value)
    with pytest.raises(openai.AuthenticationError):
        openai.AzureOpenAI(azure_endpoint=d.base_url, api_key="nope", api_version="2024-10-21",
                           max_retries=0).chat.completions.create(
            model="d", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="d", messages=[
            {"role": "user", "content": "x [[fault:content_filter]]"}])
    assert e.value.code == "content_filter"


def test_cohere_double_with_the_official_sdk(doubles):
    import cohere

    d = doubles["cohere"]
    co = cohere.ClientV2(api_key=d.api_key, base_url=d.base_url)
    r = co.chat(model="command-a-03-2025", messages=[{"role": "user", "content": "hi cohere"}])
    assert r.message.content[0].text == expected_text("cohere", "command-a-03-2025", "hi cohere")
    assert r.finish_reason == "COMPLETE" and r.usage.billed_units.output_tokens > 0
    tools = [{"type": "function", "function": {"name": "get_weather",
                                               "parameters": WEATHER["function"]["parameters"]}}]
    events = list(co.chat_stream(model="command-a-03-2025", tools=tools,
                                 messages=[{"role": "user", "content": "weather [text+tools]"}]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message-start" and kinds[-1] == "message-end"
    assert "tool-call-start" in kinds and "tool-plan-delta" in kinds
    args = "".join(e.delta.message.tool_calls.function.arguments or "" for e in events
                   if e.type == "tool-call-delta")
    assert json.loads(args) == {"city": "city-get_weather", "days": 42}
    assert events[-1].delta.finish_reason == "TOOL_CALL"
    call_id = next(e.delta.message.tool_calls.id for e in events if e.type == "tool-call-start")
    r = co.chat(model="command-a-03-2025", tools=tools, messages=[
        {"role": "user", "content": "weather"},
        {"role": "assistant", "tool_plan": "I will check.", "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"}])
    assert r.message.content[0].text == "tool results: get_weather=sunny"
    with pytest.raises(cohere.errors.BadRequestError):
        co.chat(model="m", messages=[{"role": "user", "content": "x"}], tool_choice="AUTO")


def test_mistral_double_with_the_official_sdk(doubles):
    from mistralai.client import Mistral

    d = doubles["mistral"]
    client = Mistral(api_key=d.api_key, server_url=d.base_url)
    r = client.chat.complete(model="mistral-large-latest",
                             messages=[{"role": "user", "content": "hi mistral"}])
    assert r.choices[0].message.content == expected_text("mistral", "mistral-large-latest",
                                                         "hi mistral")
    r = client.chat.complete(model="mistral-large-latest", tools=[WEATHER], tool_choice="any",
                             messages=[{"role": "user", "content": "weather?"}])
    call = r.choices[0].message.tool_calls[0]
    assert len(call.id) == 9 and call.id.isalnum()
    chunks = list(client.chat.stream(model="mistral-large-latest", tools=[WEATHER],
                                     messages=[{"role": "user", "content": "stream [text+tools]"}]))
    last = chunks[-1].data
    assert last.choices[0].finish_reason == "tool_calls" and last.usage.completion_tokens > 0
    r = httpx.post(d.base_url + "/v1/chat/completions", headers={
        "Authorization": f"Bearer {d.api_key}"}, json={
        "model": "m", "user": "u-1", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 422 and r.json()["message"]["detail"][0]["type"] == "extra_forbidden"
    r = httpx.post(d.base_url + "/v1/chat/completions", headers={
        "Authorization": f"Bearer {d.api_key}"}, json={"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_abc123", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_abc123", "content": "1"}]})
    assert r.status_code == 400 and "length of 9" in r.json()["message"]


def test_vertex_double_with_google_genai_in_vertex_mode(doubles):
    from google import genai
    from google.genai import types
    from google.oauth2.credentials import Credentials

    from doubles.vertex_double import LOCATION, PROJECT

    d = doubles["vertex"]
    client = genai.Client(vertexai=True, project=PROJECT, location=LOCATION,
                          credentials=Credentials(token=d.api_key),
                          http_options=types.HttpOptions(base_url=d.base_url + "/"))
    r = client.models.generate_content(model="gemini-2.5-flash", contents="hi vertex")
    assert r.text == expected_text("vertex", "gemini-2.5-flash", "hi vertex")
    assert d.last()["path"].endswith(f"/projects/{PROJECT}/locations/{LOCATION}/publishers/"
                                     "google/models/gemini-2.5-flash:generateContent")
    assert d.last()["headers"]["authorization"] == f"Bearer {d.api_key}"
    text = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="stream vertex"))
    assert text == expected_text("vertex", "gemini-2.5-flash", "stream vertex")
    r = httpx.post(d.base_url + f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/"
                   "models/m:generateContent", headers={"Authorization": "Bearer nope"},
                   json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


def test_anthropic_thinking_is_signed_and_checked(doubles):
    """Extended thinking as the API documents it: a signed `thinking` block first (streamed as
    thinking_delta then signature_delta); a block sent back with another signature is a 400;
    a budget under 1024 or not under `max_tokens` is a 400."""
    client = ant(doubles["anthropic"])
    ask = [{"role": "user", "content": "think first"}]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    r = client.messages.create(model="c", max_tokens=2048, thinking=thinking, messages=ask)
    block = r.content[0]
    assert block.type == "thinking" and block.signature
    with client.messages.stream(model="c", max_tokens=2048, thinking=thinking,
                                messages=ask) as s:
        streamed = s.get_final_message()
    assert streamed.content[0].model_dump() == block.model_dump()
    assert r.usage.output_tokens == streamed.usage.output_tokens
    turn = [b.model_dump(exclude_none=True) for b in r.content]
    client.messages.create(model="c", max_tokens=2048, thinking=thinking, messages=ask + [
        {"role": "assistant", "content": turn}, {"role": "user", "content": "go on"}])
    turn[0]["signature"] = "forged"
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        client.messages.create(model="c", max_tokens=2048, thinking=thinking, messages=ask + [
            {"role": "assistant", "content": turn}, {"role": "user", "content": "go on"}])
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        client.messages.create(model="c", max_tokens=2048, messages=ask,
                               thinking={"type": "enabled", "budget_tokens": 512})
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model="c", max_tokens=1024, thinking=thinking, messages=ask)


def test_gemini_thoughts_with_google_genai(doubles):
    """Thinking as the Gemini API documents it: `thoughtsTokenCount` apart from the
    candidates, and the thought summary as a `thought: true` part only with includeThoughts."""
    from google import genai
    from google.genai import types

    d = doubles["gemini"]
    client = genai.Client(api_key=d.api_key, http_options=types.HttpOptions(base_url=d.base_url))
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(
        thinking_budget=1024, include_thoughts=True))
    r = client.models.generate_content(model="gemini-2.5-flash", contents="think", config=config)
    parts = r.candidates[0].content.parts
    assert parts[0].thought and parts[0].text.startswith("thinking about ")
    assert r.text == expected_text("gemini", "gemini-2.5-flash", "think")
    u = r.usage_metadata
    assert u.thoughts_token_count > 0
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count + \
        u.thoughts_token_count
    quiet = client.models.generate_content(
        model="gemini-2.5-flash", contents="think",
        config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(
            thinking_budget=1024)))
    assert not any(p.thought for p in quiet.candidates[0].content.parts)
    assert quiet.usage_metadata.thoughts_token_count == u.thoughts_token_count


def test_gemini_3_signs_function_calls_and_checks_them(doubles):
    """Gemini 3 (https://ai.google.dev/gemini-api/docs/thought-signatures): the first of
    parallel calls carries a `thoughtSignature`, and a current turn sent back without it is a
    400; Google's dummy signature passes; Gemini 2 neither signs nor checks."""
    d = doubles["gemini"]
    h = {"x-goog-api-key": d.api_key}
    ask = {"role": "user", "parts": [{"text": "weather and time"}]}
    tools = [{"functionDeclarations": [WEATHER["function"], TIME["function"]]}]
    url = d.base_url + "/v1beta/models/{}:generateContent"
    r = httpx.post(url.format("gemini-3-flash-preview"), headers=h,
                   json={"contents": [ask], "tools": tools}).json()
    parts = r["candidates"][0]["content"]["parts"]
    assert [p["functionCall"]["name"] for p in parts] == ["get_weather", "get_time"]
    assert parts[0]["thoughtSignature"] and "thoughtSignature" not in parts[1]
    results = {"role": "user", "parts": [
        {"functionResponse": {"name": p["functionCall"]["name"], "response": {"ok": True}}}
        for p in parts]}

    def turn(model, model_parts):
        return httpx.post(url.format(model), headers=h, json={
            "contents": [ask, {"role": "model", "parts": model_parts}, results],
            "tools": tools})

    assert turn("gemini-3-flash-preview", parts).status_code == 200
    unsigned = [{"functionCall": p["functionCall"]} for p in parts]
    bad = turn("gemini-3-flash-preview", unsigned)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "missing a thought_signature" in bad.json()["error"]["message"]
    forged = [dict(unsigned[0], thoughtSignature="Zm9yZ2Vk")] + unsigned[1:]
    assert turn("gemini-3-flash-preview", forged).status_code == 400
    dummy = [dict(unsigned[0], thoughtSignature="skip_thought_signature_validator")] + unsigned[1:]
    assert turn("gemini-3-flash-preview", dummy).status_code == 200
    assert turn("gemini-2.0-flash", unsigned).status_code == 200
    # Only the current turn is checked: after a new user text, old calls may be unsigned.
    later = httpx.post(url.format("gemini-3-flash-preview"), headers=h, json={
        "contents": [ask, {"role": "model", "parts": unsigned}, results,
                     {"role": "model", "parts": [{"text": "done"}]},
                     {"role": "user", "parts": [{"text": "thanks"}]}]})
    assert later.status_code == 200


def test_bedrock_claude_thinking_with_boto3(doubles):
    """Claude's extended thinking on Converse, as boto3 sends and reads it: a signed
    `reasoningContent` block first (streamed as reasoningContent deltas), checked when sent
    back; budget bounds and non-Claude models refused."""
    from doubles.common import sign_thinking

    d = doubles["bedrock"]
    client = bedrock(d)
    think = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    ask = [{"role": "user", "content": [{"text": "Is 97 prime?"}]}]
    r = client.converse(modelId=MODEL_ID, messages=ask, inferenceConfig={"maxTokens": 2048},
                        additionalModelRequestFields=think)
    blocks = r["output"]["message"]["content"]
    reasoning = blocks[0]["reasoningContent"]["reasoningText"]
    assert reasoning["text"].startswith("thinking about ")
    assert reasoning["signature"] == sign_thinking(reasoning["text"])
    assert blocks[1]["text"] == expected_text("bedrock", MODEL_ID, "Is 97 prime?")
    turn = ask + [r["output"]["message"], {"role": "user", "content": [{"text": "Why?"}]}]
    assert client.converse(modelId=MODEL_ID, messages=turn, inferenceConfig={"maxTokens": 2048},
                           additionalModelRequestFields=think)["stopReason"] == "end_turn"
    forged = json.loads(json.dumps(turn))
    forged[1]["content"][0]["reasoningContent"]["reasoningText"]["signature"] = "Zm9yZ2Vk"
    with pytest.raises(client.exceptions.ValidationException, match="signature"):
        client.converse(modelId=MODEL_ID, messages=forged, inferenceConfig={"maxTokens": 2048},
                        additionalModelRequestFields=think)
    with pytest.raises(client.exceptions.ValidationException, match="max_tokens"):
        client.converse(modelId=MODEL_ID, messages=ask, inferenceConfig={"maxTokens": 512},
                        additionalModelRequestFields=think)
    with pytest.raises(client.exceptions.ValidationException, match="thinking"):
        client.converse(modelId="amazon.nova-lite-v1:0", messages=ask,
                        inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=think)
    events = list(client.converse_stream(
        modelId=MODEL_ID, messages=ask, inferenceConfig={"maxTokens": 2048},
        additionalModelRequestFields=think)["stream"])
    deltas = [e["contentBlockDelta"]["delta"] for e in events if "contentBlockDelta" in e]
    text = "".join(x["reasoningContent"].get("text", "") for x in deltas if "reasoningContent" in x)
    sigs = [x["reasoningContent"]["signature"] for x in deltas
            if "signature" in x.get("reasoningContent", {})]
    assert text == reasoning["text"] and sigs == [sign_thinking(text)]
