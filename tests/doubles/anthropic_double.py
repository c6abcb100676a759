"""Anthropic double: Messages API (`POST /v1/messages`), plain and streamed with the exact
event sequence (message_start, content_block_start, ping, content_block_delta with text_delta /
input_json_delta / thinking_delta / signature_delta, content_block_stop, message_delta with
usage, message_stop).

Extended thinking (`thinking: {type: enabled, budget_tokens}`) answers with a signed
`thinking` block first; thinking blocks sent back in assistant turns must carry the signature
the double gave them (`redacted_thinking` blocks are opaque and pass), as the real API checks.

Wire format: https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/docs/build-with-claude/streaming and
https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking (see README.md).
"""

from __future__ import annotations

import json

from aiohttp import web

from . import common
from .common import Conversation, DoubleState, Reply, ToolResult, ToolSpec

PROVIDER = "anthropic"
# The Messages API's request fields; anything else is a 400 (`Extra inputs are not permitted`).
FIELDS = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
          "temperature", "top_k", "top_p", "tools", "tool_choice", "thinking", "output_config",
          "service_tier", "container", "mcp_servers", "context_management"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
ERROR_MESSAGES = {429: "Number of request tokens has exceeded your per-minute rate limit",
                  500: "Internal server error", 529: "Overloaded", 503: "Service unavailable"}


def anthropic_error(type_: str, message: str) -> dict:
    return {"type": "error", "error": {"type": type_, "message": message},
            "request_id": common.new_id("req_")}


def error_for_status(status: int) -> dict:
    type_ = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return anthropic_error(type_, ERROR_MESSAGES.get(status, f"error {status}"))


def blocks(content) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in blocks(content) if b.get("type") == "text")


def conversation(body: dict) -> Conversation:
    messages = body.get("messages") or []
    texts = [text_of(body.get("system") or "")] + [text_of(m.get("content")) for m in messages]
    names = {b.get("id"): b.get("name") for m in messages for b in blocks(m.get("content"))
             if b.get("type") == "tool_use"}
    last_user = ""
    results: list[ToolResult] = []
    for i, m in enumerate(messages):
        if m.get("role") != "user":
            continue
        text = text_of(m.get("content"))
        if text:
            last_user = text
        if i == len(messages) - 1:
            for b in blocks(m.get("content")):
                if b.get("type") == "tool_result":
                    ref = names.get(b.get("tool_use_id")) or b.get("tool_use_id", "")
                    results.append(ToolResult(ref, text_of(b.get("content"))))
    tools = [ToolSpec(t["name"], t.get("input_schema") or {}) for t in body.get("tools") or []
             if "name" in t]
    fmt = (body.get("output_config") or {}).get("format") or {}
    return Conversation(model=body.get("model", ""), texts=texts, last_user_text=last_user,
                        tools=tools, tool_results=results, stream=bool(body.get("stream")),
                        output_schema=fmt.get("schema") if fmt.get("type") == "json_schema" else None)


def usage_json(reply: Reply) -> dict:
    u = reply.usage
    # Anthropic reports cache reads separately: input_tokens excludes them.
    return {"input_tokens": u.input - u.cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": u.cached, "output_tokens": u.output,
            "service_tier": "standard"}


def thinking_error(body: dict) -> str | None:
    """Why the request's thinking is invalid, as the real API says it, or None."""
    thinking = body.get("thinking")
    if thinking is not None:
        kind = (thinking or {}).get("type")
        if kind not in ("enabled", "disabled"):
            return "thinking.type: Input should be 'enabled' or 'disabled'"
        budget = thinking.get("budget_tokens")
        if kind == "enabled":
            if not isinstance(budget, int) or budget < 1024:
                return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            if budget >= body.get("max_tokens", 0):
                return "`max_tokens` must be greater than `thinking.budget_tokens`"
    for i, m in enumerate(body.get("messages") or []):
        for j, b in enumerate(blocks(m.get("content"))):
            if b.get("type") not in ("thinking", "redacted_thinking"):
                continue
            if m.get("role") != "assistant":
                return f"messages.{i}.content.{j}: thinking blocks belong to assistant turns"
            if b.get("type") == "thinking" and (
                    b.get("signature") != common.sign_thinking(b.get("thinking", ""))):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
            if b.get("type") == "redacted_thinking" and not b.get("data"):
                return f"messages.{i}.content.{j}.data: Field required"
    return None


def content_blocks(reply: Reply) -> list[dict]:
    out: list[dict] = []
    if reply.thinking:
        out.append({"type": "thinking", "thinking": reply.thinking,
                    "signature": common.sign_thinking(reply.thinking)})
    if reply.text:
        out.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        out.append({"type": "tool_use", "id": call.id, "name": call.name,
                    "input": call.arguments})
    return out


def message(model: str, reply: Reply) -> dict:
    return {"id": common.new_id("msg_01"), "type": "message", "role": "assistant",
            "model": model, "content": content_blocks(reply),
            "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
            "stop_sequence": None, "usage": usage_json(reply)}


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def stream_events(model: str, reply: Reply):
    start = message(model, reply)
    start.update(content=[], stop_reason=None)
    start["usage"] = dict(start["usage"], output_tokens=1)
    yield event("message_start", {"type": "message_start", "message": start})
    index = 0
    if reply.thinking:
        yield event("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        for piece in common.split_text(reply.thinking):
            yield event("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": piece}})
        yield event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta",
                      "signature": common.sign_thinking(reply.thinking)}})
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        index = 1
    if reply.text:
        yield event("content_block_start", {"type": "content_block_start", "index": index,
                                            "content_block": {"type": "text", "text": ""}})
        yield event("ping", {"type": "ping"})
        for piece in common.split_text(reply.text):
            yield event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "text_delta", "text": piece}})
        yield event("content_block_stop", {"type": "content_block_stop", "index": index})
        index += 1
    for call in reply.tool_calls:
        yield event("content_block_start", {
            "type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": call.id, "name": call.name,
                              "input": {}}})
        if index == 0:
            yield event("ping", {"type": "ping"})
        for frag in [""] + common.split_json(call.arguments_json):
            yield event("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": frag}})
        yield event("content_block_stop", {"type": "content_block_stop", "index": index})
        index += 1
    yield event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use" if reply.tool_calls else "end_turn",
                  "stop_sequence": None},
        "usage": {"output_tokens": reply.usage.output}})
    yield event("message_stop", {"type": "message_stop"})


class AnthropicDouble:
    def __init__(self, api_key: str, state: DoubleState) -> None:
        self.api_key = api_key
        self.state = state

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.state.record(request, raw)
        headers = {"request-id": common.new_id("req_"),
                   "anthropic-organization-id": "00000000-0000-4000-8000-00000000d0b1"}
        # `x-api-key` is the documented header; the official Python SDK (2.x) sends the same
        # API key as `Authorization: Bearer`, which the API accepts too.
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        key = request.headers.get("x-api-key") or bearer
        if key != self.api_key:
            return common.json_response(anthropic_error(
                "authentication_error", "invalid x-api-key"), 401, headers)
        if not request.headers.get("anthropic-version"):
            return common.json_response(anthropic_error(
                "invalid_request_error", "anthropic-version: header is required"), 400, headers)
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return common.json_response(anthropic_error(
                "invalid_request_error", "There was an error parsing the body"), 400, headers)
        extra = sorted(set(body) - FIELDS)
        if extra:
            return common.json_response(anthropic_error(
                "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted"),
                400, headers)
        for required in ("model", "max_tokens", "messages"):
            if required not in body:
                return common.json_response(anthropic_error(
                    "invalid_request_error", f"{required}: Field required"), 400, headers)
        if not isinstance(body["messages"], list) or not body["messages"]:
            return common.json_response(anthropic_error(
                "invalid_request_error", "messages: at least one message is required"),
                400, headers)
        if any(m.get("role") not in ("user", "assistant") for m in body["messages"]):
            return common.json_response(anthropic_error(
                "invalid_request_error",
                "messages: roles must be 'user' or 'assistant' (system goes in `system`)"),
                400, headers)
        invalid = thinking_error(body)
        if invalid:
            return common.json_response(anthropic_error("invalid_request_error", invalid),
                                        400, headers)
        conv = conversation(body)
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        if fault:
            if fault["kind"] == "status":
                status = int(fault.get("status", 500))
                if "retry_after" in fault:
                    headers["retry-after"] = str(fault["retry_after"])
                return common.json_response(error_for_status(status), status, headers)
            if fault["kind"] == "hang":
                await common.hang(fault)
            if fault["kind"] == "close_headers":
                return await common.close_mid_headers(request)
        reply = common.plan_reply(PROVIDER, conv, id_prefix="toolu_01")
        if (body.get("thinking") or {}).get("type") == "enabled":
            reply = common.with_thinking(reply, conv)
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        if not conv.stream:
            return common.json_response(message(conv.model, reply), headers=headers)
        stream = common.Stream(request, fault, common.sse_headers(headers))
        return await common.run_stream(stream, stream_events(conv.model, reply))


def make_app(api_key: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    AnthropicDouble(api_key, state).routes(app)
    common.add_side_routes(app, state, error_for_status)
    return app, state
