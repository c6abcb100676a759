"""Cohere double: Chat API v2 (`POST /v2/chat`), plain and streamed as typed SSE events
(`message-start`, `content-start`, `content-delta`, `content-end`, `tool-plan-delta`,
`tool-call-start`, `tool-call-delta`, `tool-call-end`, `message-end` with usage). Requests are
validated as v2 does: known fields only, roles `system`/`user`/`assistant`/`tool`, a `tool`
message needs `tool_call_id` that answers an earlier call, `tool_choice` only `REQUIRED` or
`NONE`.

Wire format: https://docs.cohere.com/reference/chat , https://docs.cohere.com/v2/docs/streaming ,
https://docs.cohere.com/v2/docs/tool-use-streaming (see README.md).
"""

from __future__ import annotations

import json

from aiohttp import web

from . import common
from .common import Conversation, DoubleState, Reply, ToolResult, ToolSpec

PROVIDER = "cohere"
# Cohere's models explain tool calls in a `tool_plan`; without planned text, the double's is
# this.
DEFAULT_TOOL_PLAN = "I will call the tools."
FIELDS = {"model", "messages", "stream", "tools", "documents", "citation_options",
          "response_format", "safety_mode", "max_tokens", "stop_sequences", "temperature",
          "seed", "frequency_penalty", "presence_penalty", "k", "p", "logprobs", "tool_choice",
          "strict_tools", "thinking", "priority"}


def cohere_error(status: int, message: str) -> web.Response:
    return common.json_response({"id": common.new_id(""), "message": message}, status)


def error_for_status(status: int, retry_after=None) -> web.Response:
    resp = cohere_error(status, {429: "You are past the per minute request limit, please wait "
                                      "and try again later.",
                                 500: "internal server error, this has been reported to our "
                                      "developers"}.get(status, f"error {status}"))
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def validate(body: dict) -> str | None:
    extra = sorted(set(body) - FIELDS)
    if extra:
        return f"invalid request: unknown field '{extra[0]}'"
    if not body.get("model"):
        return "invalid request: model must be specified"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "invalid request: messages cannot be empty"
    calls: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            return f"invalid request: messages[{i}].role '{role}' is not valid"
        for call in m.get("tool_calls") or []:
            if call.get("type") != "function" or not call.get("id"):
                return f"invalid request: messages[{i}].tool_calls needs id and type function"
            json.loads((call.get("function") or {}).get("arguments") or "{}")
            calls.add(call["id"])
        if role == "tool" and m.get("tool_call_id") not in calls:
            return f"invalid request: messages[{i}].tool_call_id must answer an earlier tool call"
        if role == "assistant" and m.get("tool_calls") and m.get("content"):
            return ("invalid request: an assistant message with tool_calls carries its text "
                    "as tool_plan, not content")
    if body.get("tool_choice") not in (None, "REQUIRED", "NONE"):
        return "invalid request: tool_choice must be one of REQUIRED, NONE"
    for t in body.get("tools") or []:
        if t.get("type") != "function" or not (t.get("function") or {}).get("name"):
            return "invalid request: tools must be of type function with a name"
    return None


def conversation(body: dict) -> Conversation:
    messages = body.get("messages") or []
    texts = [text_of(m.get("content")) + (m.get("tool_plan") or "") for m in messages]
    last_user = next((text_of(m.get("content")) for m in reversed(messages)
                      if m.get("role") == "user"), "")
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    results = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        results.insert(0, ToolResult(names.get(m["tool_call_id"], m["tool_call_id"]),
                                     text_of(m.get("content"))))
    tools = [ToolSpec(t["function"]["name"], t["function"].get("parameters") or {})
             for t in body.get("tools") or []]
    fmt = body.get("response_format") or {}
    return Conversation(model=body["model"], texts=texts, last_user_text=last_user,
                        tools=tools, tool_results=results, stream=bool(body.get("stream")),
                        output_schema=fmt.get("json_schema") if fmt.get("type") == "json_object" else None)


def usage_json(reply: Reply) -> dict:
    u = reply.usage
    return {"billed_units": {"input_tokens": u.input, "output_tokens": u.output},
            "tokens": {"input_tokens": u.input + 64, "output_tokens": u.output + 2},
            "cached_tokens": u.cached}


def finish_reason(reply: Reply) -> str:
    return "TOOL_CALL" if reply.tool_calls else "COMPLETE"


def message(reply: Reply) -> dict:
    msg: dict = {"role": "assistant"}
    if reply.tool_calls:
        msg["tool_plan"] = reply.text or DEFAULT_TOOL_PLAN
        msg["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments_json}}
                             for c in reply.tool_calls]
    else:
        msg["content"] = [{"type": "text", "text": reply.text}]
    return msg


def event(kind: str, body: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(dict({'type': kind}, **body))}\n\n"


def stream_events(reply: Reply):
    yield event("message-start", {"id": common.new_id(""), "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})
    if reply.tool_calls:
        for piece in common.split_text(reply.text or DEFAULT_TOOL_PLAN):
            yield event("tool-plan-delta", {"delta": {"message": {"tool_plan": piece}}})
        for i, call in enumerate(reply.tool_calls):
            yield event("tool-call-start", {"index": i, "delta": {"message": {"tool_calls": {
                "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}}}})
            for frag in common.split_json(call.arguments_json):
                yield event("tool-call-delta", {"index": i, "delta": {"message": {
                    "tool_calls": {"function": {"arguments": frag}}}}})
            yield event("tool-call-end", {"index": i})
    else:
        yield event("content-start", {"index": 0, "delta": {"message": {
            "content": {"type": "text", "text": ""}}}})
        for piece in common.split_text(reply.text):
            yield event("content-delta", {"index": 0, "delta": {"message": {
                "content": {"text": piece}}}})
        yield event("content-end", {"index": 0})
    yield event("message-end", {"delta": {"finish_reason": finish_reason(reply),
                                          "usage": usage_json(reply)}})


class CohereDouble:
    def __init__(self, api_key: str, state: DoubleState) -> None:
        self.api_key = api_key
        self.state = state

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/chat", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.state.record(request, raw)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return cohere_error(401, "invalid api token")
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return cohere_error(400, "invalid request: could not parse the body as JSON")
        problem = validate(body)
        if problem:
            return cohere_error(400, problem)
        conv = conversation(body)
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        if fault:
            if fault["kind"] == "status":
                return error_for_status(int(fault.get("status", 500)), fault.get("retry_after"))
            if fault["kind"] == "hang":
                await common.hang(fault)
            if fault["kind"] == "close_headers":
                return await common.close_mid_headers(request)
        reply = common.plan_reply(PROVIDER, conv, id_prefix="get_weather_")
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        if not conv.stream:
            return common.json_response({"id": common.new_id(""), "message": message(reply),
                                         "finish_reason": finish_reason(reply),
                                         "usage": usage_json(reply)})
        s = common.Stream(request, fault, common.sse_headers())
        return await common.run_stream(s, stream_events(reply))


def make_app(api_key: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    CohereDouble(api_key, state).routes(app)
    common.add_side_routes(app, state)
    return app, state
