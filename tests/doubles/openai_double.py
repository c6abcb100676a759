"""OpenAI double: Chat Completions (plain, streamed with `stream_options.include_usage`, tool
calls streamed with incremental arguments), Responses (`openai_responses.py`), Embeddings
(float and base64), Models, and the media endpoints (`openai_media.py`).

A request with `reasoning_effort` (other than `none`) thinks first: OpenAI's Chat API
returns no reasoning text, only its count, `usage.completion_tokens_details.reasoning_tokens`
(part of `completion_tokens`).

Wire format: https://platform.openai.com/docs/api-reference/chat (see README.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time

from aiohttp import web

from . import common
from .common import Conversation, DoubleState, Reply, ToolResult, ToolSpec
from .openai_media import MediaRoutes
from .openai_responses import ResponsesRoute

PROVIDER = "openai"


def openai_error(status: int, message: str, type_: str, code: str | None = None, param=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_for_status(status: int) -> dict:
    if status == 429:
        return openai_error(
            429,
            "Rate limit reached for gpt-4o-mini in organization org-test on requests per min "
            "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
            "requests",
            "rate_limit_exceeded",
        )
    if status == 400:
        return openai_error(400, "Invalid value for 'temperature'.", "invalid_request_error",
                            "invalid_value", "temperature")
    if status == 404:
        return openai_error(404, "The model does not exist or you do not have access to it.",
                            "invalid_request_error", "model_not_found")
    if status == 503:
        return openai_error(503, "The engine is currently overloaded, please try again later.",
                            "server_error")
    if status >= 500:
        return openai_error(status, "The server had an error while processing your request. "
                            "Sorry about that!", "server_error")
    return openai_error(status, f"error {status}", "invalid_request_error")


def text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def conversation(body: dict) -> Conversation:
    messages = body.get("messages") or []
    texts = [text_of(m.get("content")) for m in messages]
    last_user = next((text_of(m.get("content")) for m in reversed(messages)
                      if m.get("role") == "user"), "")
    names = {}
    for m in messages:
        for call in m.get("tool_calls") or []:
            names[call.get("id")] = call.get("function", {}).get("name")
    results = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        ref = names.get(m.get("tool_call_id")) or m.get("tool_call_id", "")
        results.insert(0, ToolResult(ref, text_of(m.get("content"))))
    tools = [ToolSpec(t["function"]["name"], t["function"].get("parameters") or {})
             for t in body.get("tools") or [] if t.get("type") == "function"]
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    return Conversation(model=body.get("model", ""), texts=texts, last_user_text=last_user,
                        tools=tools, tool_results=results, stream=bool(body.get("stream")),
                        output_schema=schema)


def usage_json(reply: Reply) -> dict:
    u = reply.usage
    return {
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


ACCOUNT_HEADERS = {"openai-organization": "org-double", "openai-project": "proj_double",
                   "x-ratelimit-remaining-requests": "9999"}


def completion(model: str, reply: Reply, n: int = 1, refusal: bool = False) -> dict:
    """A chat.completion; with `refusal`, the text comes as the model's refusal
    (`content: null`, `message.refusal`), as structured outputs answer when the model declines."""
    message: dict = {"role": "assistant", "content": reply.text, "refusal": None,
                     "annotations": []}
    if refusal:
        message.update(content=None, refusal=reply.text)
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in reply.tool_calls
        ]
    return {
        "id": common.new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if reply.tool_calls else "stop"}
                    for i in range(n)],
        "usage": usage_json(reply),
        "service_tier": "default",
        "system_fingerprint": "fp_double",
    }


def stream_events(model: str, reply: Reply, include_usage: bool, refusal: bool = False):
    cid, created = common.new_id("chatcmpl-"), int(time.time())

    def chunk(delta: dict | None, finish=None, usage=None, choices=True) -> str:
        payload = {"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": model, "service_tier": "default", "system_fingerprint": "fp_double",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                "finish_reason": finish}] if choices else []}
        if include_usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    if reply.text:
        for piece in common.split_text(reply.text):
            yield chunk({"refusal": piece} if refusal else {"content": piece})
    for index, call in enumerate(reply.tool_calls):
        yield chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                     "function": {"name": call.name, "arguments": ""}}]})
        for frag in common.split_json(call.arguments_json):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": frag}}]})
    yield chunk({}, finish="tool_calls" if reply.tool_calls else "stop")
    if include_usage:
        yield chunk(None, usage=usage_json(reply), choices=False)
    yield "data: [DONE]\n\n"


def embedding_vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % 32] - 127.5) / 127.5 for i in range(dims)]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [round(x / norm, 6) for x in raw]


class OpenAIDouble:
    """The OpenAI API. `error_fn(status)` and `auth_error_fn(present)` let DashScope's
    OpenAI-compatible mode reuse this with its own error bodies."""

    def __init__(self, api_key: str, state: DoubleState, provider: str = PROVIDER,
                 error_fn=error_for_status, auth_error_fn=None) -> None:
        self.api_key = api_key
        self.state = state
        self.provider = provider
        self.error_fn = error_fn
        self.auth_error_fn = auth_error_fn or self._auth_error

    @staticmethod
    def _auth_error(presented: str | None) -> dict:
        if not presented:
            return openai_error(401, "You didn't provide an API key. You need to provide your "
                                "API key in an Authorization header using Bearer auth (i.e. "
                                "Authorization: Bearer YOUR_KEY).", "invalid_request_error")
        masked = presented[:3] + "*" * 4 + presented[-4:]
        return openai_error(401, f"Incorrect API key provided: {masked}. You can find your API "
                            "key at https://platform.openai.com/account/api-keys.",
                            "invalid_request_error", "invalid_api_key")

    def routes(self, app: web.Application, prefix: str = "/v1") -> None:
        app.router.add_post(prefix + "/chat/completions", self.chat)
        app.router.add_post(prefix + "/embeddings", self.embeddings)
        app.router.add_get(prefix + "/models", self.models)

    def check_auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        presented = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if presented != self.api_key:
            return common.json_response(self.auth_error_fn(presented), 401)
        return None

    async def begin(self, request: web.Request):
        raw = await request.read()
        entry = self.state.record(request, raw)
        denied = self.check_auth(request)
        if denied:
            return entry, None, denied
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return entry, None, common.json_response(openai_error(
                400, "We could not parse the JSON body of your request.",
                "invalid_request_error"), 400)
        return entry, body, None

    async def apply_fault(self, request, fault):
        if not fault:
            return None
        kind = fault["kind"]
        if kind == "status":
            status = int(fault.get("status", 500))
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
            return common.json_response(self.error_fn(status), status, headers)
        if kind == "hang":
            await common.hang(fault)
        if kind == "close_headers":
            return await common.close_mid_headers(request)
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        entry, body, early = await self.begin(request)
        if early:
            return early
        conv = conversation(body)
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        faulted = await self.apply_fault(request, fault)
        if faulted:
            return faulted
        if not body.get("messages"):
            return common.json_response(openai_error(
                400, "Missing required parameter: 'messages'.", "invalid_request_error",
                "missing_required_parameter", "messages"), 400)
        reply = common.plan_reply(self.provider, conv)
        if body.get("reasoning_effort") not in (None, "none"):
            reply = common.with_thinking(reply, conv)
            reply.thinking = None  # counted, never returned
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        refusal = "[refusal]" in conv.last_user_text
        if not conv.stream:
            # OpenAI names the account behind every answer (organisation and project).
            return common.json_response(
                completion(conv.model, reply, int(body.get("n") or 1), refusal),
                headers=ACCOUNT_HEADERS)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = common.Stream(request, fault, common.sse_headers(ACCOUNT_HEADERS))
        return await common.run_stream(
            stream, stream_events(conv.model, reply, include_usage, refusal))

    async def embeddings(self, request: web.Request) -> web.Response:
        entry, body, early = await self.begin(request)
        if early:
            return early
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs or not all(isinstance(i, str) for i in inputs):
            return common.json_response(openai_error(
                400, "'input' must be a string or an array of strings.",
                "invalid_request_error", None, "input"), 400)
        fault = common.parse_fault_marker(" ".join(inputs)) or self.state.next_fault(request.path)
        faulted = await self.apply_fault(request, fault)
        if faulted:
            return faulted
        dims = int(body.get("dimensions") or 8)
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vec = embedding_vector(text, dims)
            emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(common.words(t) for t in inputs)
        entry["response"] = {"usage": {"input": tokens, "output": 0, "cached": 0}}
        return common.json_response({"object": "list", "data": data, "model": body.get("model"),
                                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def models(self, request: web.Request) -> web.Response:
        self.state.record(request, b"")
        denied = self.check_auth(request)
        if denied:
            return denied
        return common.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1686935002, "owned_by": "openai"}
            for m in ("gpt-4o-mini", "text-embedding-3-small")]})


def make_app(api_key: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    double = OpenAIDouble(api_key, state)
    double.routes(app)
    ResponsesRoute(double).routes(app)
    MediaRoutes(double).routes(app)
    common.add_side_routes(app, state, error_for_status)
    return app, state
