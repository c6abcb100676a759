"""DashScope (Alibaba Model Studio, Qwen) double: the native text-generation API
`POST /api/v1/services/aigc/text-generation/generation` (`result_format` message or text,
streaming with `X-DashScope-SSE: enable`: `id:`/`event:result`/`:HTTP_STATUS/200`/`data:` events
without spaces, `incremental_output` true or false, finish_reason the string "null" until the
end, cumulative usage on every event, tool calls), plus the OpenAI-compatible mode under
`/compatible-mode/v1`. Credential: `Authorization: Bearer`.

Wire format: https://www.alibabacloud.com/help/en/model-studio/qwen-api-reference (see README.md).
"""

from __future__ import annotations

import json

from aiohttp import web

from . import common
from .common import DoubleState, Reply
from .openai_double import OpenAIDouble, conversation as openai_conversation

PROVIDER = "dashscope"
CODES = {400: ("InvalidParameter", "The request is missing required parameters or in a wrong "
               "format, please check the parameters that you send."),
         401: ("InvalidApiKey", "Invalid API-key provided."),
         404: ("ModelNotFound", "Model not exist."),
         429: ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
         500: ("InternalError", "An internal error has occured, please try again later or "
               "contact service support."),
         503: ("ServiceUnavailable", "The service is temporarily unavailable, please try again "
               "later.")}


def ds_error(status: int, message: str | None = None, code: str | None = None) -> dict:
    default_code, default_message = CODES.get(status, ("InternalError", f"error {status}"))
    return {"code": code or default_code, "message": message or default_message,
            "request_id": common.new_id("")}


def compat_error(status: int) -> dict:
    from .openai_double import error_for_status
    body = error_for_status(status)
    body["request_id"] = common.new_id("")
    return body


def usage_json(reply: Reply, output: int | None = None) -> dict:
    u = reply.usage
    out = u.output if output is None else output
    usage = {"input_tokens": u.input, "output_tokens": out, "total_tokens": u.input + out}
    if u.cached:
        usage["prompt_tokens_details"] = {"cached_tokens": u.cached}
    return usage


def tool_calls_json(reply: Reply) -> list[dict]:
    return [{"function": {"name": c.name, "arguments": c.arguments_json}, "index": i,
             "id": c.id, "type": "function"} for i, c in enumerate(reply.tool_calls)]


def output(reply: Reply, result_format: str, text: str | None, tool_calls: list | None,
           finish: str) -> dict:
    if result_format == "text":
        return {"text": text or "", "finish_reason": finish}
    message: dict = {"role": "assistant", "content": text or ""}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"choices": [{"finish_reason": finish, "message": message}]}


def stream_events(reply: Reply, result_format: str, incremental: bool, rid: str):
    finish = "tool_calls" if reply.tool_calls else "stop"
    frames: list[tuple[str | None, list | None]] = []
    for piece in common.split_text(reply.text) if reply.text else []:
        frames.append((piece, None))
    for i, c in enumerate(reply.tool_calls):
        frags = common.split_json(c.arguments_json)
        frames.append((None, [{"index": i, "id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": frags[0]}}]))
        for frag in frags[1:]:
            frames.append((None, [{"index": i, "id": "", "type": "function",
                                   "function": {"arguments": frag}}]))
    if not frames:
        frames = [("", None)]
    text_so_far, produced = "", 0
    for n, (text, calls) in enumerate(frames, start=1):
        last = n == len(frames)
        text_so_far += text or ""
        produced = reply.usage.output if last else min(reply.usage.output,
                                                       produced + common.words(text or "") + 1)
        if incremental:
            out = output(reply, result_format, text or "", calls, finish if last else "null")
        else:
            full_calls = tool_calls_json(reply) if last and reply.tool_calls else None
            out = output(reply, result_format, text_so_far, full_calls, finish if last else "null")
        payload = {"output": out, "usage": usage_json(reply, produced), "request_id": rid}
        yield f"id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(payload)}\n\n"


class DashScopeDouble:
    def __init__(self, api_key: str, state: DoubleState) -> None:
        self.api_key = api_key
        self.state = state
        self.compat = OpenAIDouble(api_key, state, provider=PROVIDER, error_fn=compat_error,
                                   auth_error_fn=lambda present: compat_error(401))

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/services/aigc/text-generation/generation", self.generation)
        self.compat.routes(app, prefix="/compatible-mode/v1")

    async def generation(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.state.record(request, raw)
        auth = request.headers.get("Authorization", "")
        presented = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if not presented:
            return common.json_response(ds_error(401, "No API-key provided."), 401)
        if presented != self.api_key:
            return common.json_response(ds_error(401), 401)
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return common.json_response(ds_error(400, "Request body is not valid JSON."), 400)
        inp = body.get("input") or {}
        params = body.get("parameters") or {}
        if "messages" not in inp and "prompt" not in inp:
            return common.json_response(ds_error(
                400, 'Either "prompt" or "messages" must exist and cannot both be none'), 400)
        messages = inp.get("messages") or [{"role": "user", "content": inp.get("prompt", "")}]
        conv = openai_conversation({"model": body.get("model", ""), "messages": messages,
                                    "tools": params.get("tools")})
        sse = (request.headers.get("X-DashScope-SSE", "").lower() == "enable"
               or "text/event-stream" in request.headers.get("Accept", ""))
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        if fault:
            if fault["kind"] == "status":
                status = int(fault.get("status", 500))
                headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
                return common.json_response(ds_error(status), status, headers)
            if fault["kind"] == "hang":
                await common.hang(fault)
            if fault["kind"] == "close_headers":
                return await common.close_mid_headers(request)
        reply = common.plan_reply(PROVIDER, conv)
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        # Without result_format the native API answers in "text" format; tools need "message".
        result_format = params.get("result_format") or ("message" if conv.tools else "text")
        rid = common.new_id("")
        if not sse:
            finish = "tool_calls" if reply.tool_calls else "stop"
            out = output(reply, result_format, reply.text, tool_calls_json(reply), finish)
            return common.json_response({"output": out, "usage": usage_json(reply),
                                         "request_id": rid})
        incremental = bool(params.get("incremental_output", False))
        stream = common.Stream(request, fault, common.sse_headers({"X-DashScope-SSE": "enable"}))
        return await common.run_stream(stream, stream_events(reply, result_format, incremental, rid))


def make_app(api_key: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    DashScopeDouble(api_key, state).routes(app)
    common.add_side_routes(app, state)
    return app, state
