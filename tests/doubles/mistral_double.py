"""Mistral double: `POST /v1/chat/completions` in Mistral's dialect of OpenAI's shape. Requests
are validated as Mistral does: unknown fields are a 422 (`extra_forbidden`), tool call ids must
be 9 characters of `[a-zA-Z0-9]`, `tool_choice` is `auto`/`none`/`any`/`required` or a named
function, `seed` is `random_seed`. Answers carry 9-character call ids; streams send each tool
call whole in one chunk and usage in the last chunk, unasked, then `data: [DONE]`.

Wire format: https://docs.mistral.ai/api/ , https://docs.mistral.ai/capabilities/function_calling/
(see README.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import time

from aiohttp import web

from . import common, openai_double
from .common import DoubleState, Reply

PROVIDER = "mistral"
FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
          "random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
          "frequency_penalty", "n", "prediction", "parallel_tool_calls", "safe_prompt",
          "prompt_mode", "prompt_cache_key"}
MESSAGE_FIELDS = {"system": {"role", "content"}, "user": {"role", "content"},
                  "assistant": {"role", "content", "tool_calls", "prefix"},
                  "tool": {"role", "content", "tool_call_id", "name"}}
ID_RE = re.compile(r"^[a-zA-Z0-9]{9}$")


def validation_error(loc: list, msg: str, kind: str = "value_error", value=None) -> web.Response:
    return common.json_response({"object": "error", "message": {"detail": [
        {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}]},
        "type": "invalid_request_error", "param": None, "code": None}, 422)


def error_for_status(status: int, retry_after=None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    message = {429: "Requests rate limit exceeded", 500: "Internal server error",
               503: "Service unavailable"}.get(status, f"error {status}")
    return common.json_response({"message": message, "request_id": common.new_id("")}, status,
                                headers)


def validate(body: dict) -> web.Response | None:
    for key in body:
        if key not in FIELDS:
            return validation_error([key], "Extra inputs are not permitted", "extra_forbidden",
                                    body[key])
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return validation_error(["messages"], "Field required", "missing")
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in MESSAGE_FIELDS:
            return validation_error(["messages", i, "role"], "Input should be 'system', "
                                    "'user', 'assistant' or 'tool'")
        for key in m:
            if key not in MESSAGE_FIELDS[role]:
                return validation_error(["messages", i, key], "Extra inputs are not permitted",
                                        "extra_forbidden", m[key])
        ids = [c.get("id", "") for c in m.get("tool_calls") or []]
        if role == "tool":
            ids.append(m.get("tool_call_id", ""))
        for call_id in ids:
            if not ID_RE.match(call_id):
                return common.json_response({
                    "object": "error", "message": f"Tool call id was {call_id} but must be "
                    "a-z, A-Z, 0-9, with a length of 9.", "type": "invalid_request_message_order",
                    "param": None, "code": "3280"}, 400)
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice not in ("auto", "none", "any", "required"):
        return validation_error(["tool_choice"], "Input should be 'auto', 'none', 'any' or "
                                "'required'", value=choice)
    return None


def call_id(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return "".join(c for c in digest if c.isalnum())[:9]


def usage_json(reply: Reply) -> dict:
    """Mistral's usage; cache hits (prompt caching) are part of `prompt_tokens` and reported in
    `prompt_tokens_details.cached_tokens` only when there is one."""
    u = reply.usage
    usage = {"prompt_tokens": u.input, "completion_tokens": u.output,
             "total_tokens": u.input + u.output}
    if u.cached:
        usage["prompt_tokens_details"] = {"cached_tokens": u.cached}
    return usage


def stream_events(model: str, reply: Reply):
    cid, created = common.new_id("cmpl-"), int(time.time())

    def chunk(delta: dict, finish=None, usage=None) -> str:
        payload = {"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish, "logprobs": None}]}
        if usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    usage = usage_json(reply)
    yield chunk({"role": "assistant", "content": ""})
    if reply.text:
        for piece in common.split_text(reply.text):
            yield chunk({"content": piece})
    if reply.tool_calls:
        # Mistral sends every call whole, with the finish reason and the usage.
        yield chunk({"tool_calls": [{"id": c.id, "function": {"name": c.name,
                                                              "arguments": c.arguments_json},
                                     "index": i} for i, c in enumerate(reply.tool_calls)]},
                    finish="tool_calls", usage=usage)
    else:
        yield chunk({"content": ""}, finish="stop", usage=usage)
    yield "data: [DONE]\n\n"


class MistralDouble:
    def __init__(self, api_key: str, state: DoubleState) -> None:
        self.api_key = api_key
        self.state = state

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.state.record(request, raw)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return common.json_response({"message": "Unauthorized",
                                         "request_id": common.new_id("")}, 401)
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return validation_error([], "Invalid JSON", "json_invalid")
        invalid = validate(body)
        if invalid:
            return invalid
        conv = openai_double.conversation(body)
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        if fault:
            if fault["kind"] == "status":
                return error_for_status(int(fault.get("status", 500)), fault.get("retry_after"))
            if fault["kind"] == "hang":
                await common.hang(fault)
            if fault["kind"] == "close_headers":
                return await common.close_mid_headers(request)
        reply = common.plan_reply(PROVIDER, conv)
        for c in reply.tool_calls:
            c.id = call_id(c.id)
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        if not conv.stream:
            body = openai_double.completion(conv.model, reply)
            for key in ("service_tier", "system_fingerprint"):
                body.pop(key, None)
            body["usage"] = usage_json(reply)
            return common.json_response(body)
        s = common.Stream(request, fault, common.sse_headers())
        return await common.run_stream(s, stream_events(conv.model, reply))


def make_app(api_key: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    MistralDouble(api_key, state).routes(app)
    common.add_side_routes(app, state)
    return app, state
