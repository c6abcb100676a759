"""The OpenAI double's Responses API: `POST /v1/responses`, plain and streamed.

Wire format: https://platform.openai.com/docs/api-reference/responses (request: `input` as a
string or items — messages, `function_call`, `function_call_output` — `instructions`,
function `tools`; answer: the `response` object with `output` items and `usage`; stream: the
typed events `response.created` … `response.completed`, each with its `sequence_number`).
Fields the double does not model are refused with the API's own error shape rather than
ignored, so a gateway that sends them is caught.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from . import common
from .common import Conversation, Reply, ToolResult, ToolSpec

# Request fields the API documents; anything else is a 400 `unknown_parameter`, as there.
KNOWN_FIELDS = {
    "model", "input", "instructions", "tools", "tool_choice", "stream", "stream_options",
    "temperature", "top_p", "max_output_tokens", "parallel_tool_calls", "store", "metadata",
    "user", "text", "reasoning", "truncation", "include", "service_tier", "previous_response_id",
    "background", "conversation", "prompt", "prompt_cache_key", "safety_identifier",
    "max_tool_calls", "top_logprobs",
}


def error(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}


def text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def validate(body: dict) -> dict | None:
    """The API's checks the double mirrors; returns an error body or None."""
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        return error(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error("Missing required parameter: 'model'.", "model",
                     "missing_required_parameter")
    items = body.get("input")
    if isinstance(items, list):
        calls = set()
        for i, item in enumerate(items):
            kind = item.get("type", "message")
            if kind == "message":
                if item.get("role") not in ("user", "assistant", "system", "developer"):
                    return error(f"Invalid value: '{item.get('role')}'.", f"input[{i}].role",
                                 "invalid_value")
            elif kind == "function_call":
                if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
                    return error("Missing required parameter.", f"input[{i}]",
                                 "missing_required_parameter")
                calls.add(item["call_id"])
            elif kind == "function_call_output":
                if item.get("call_id") not in calls:
                    return error(f"No tool call found for function call output with call_id "
                                 f"{item.get('call_id')}.", "input", None)
            else:
                return error(f"Invalid value: '{kind}'.", f"input[{i}].type", "invalid_value")
    elif not isinstance(items, str):
        return error("Missing required parameter: 'input'.", "input",
                     "missing_required_parameter")
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type") != "function" or not tool.get("name"):
            return error("Missing required parameter: 'tools[0].name'.", f"tools[{i}].name",
                         "missing_required_parameter")
    return None


def conversation(body: dict) -> Conversation:
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    texts = [body["instructions"]] if body.get("instructions") else []
    last_user = ""
    names: dict[str, str] = {}
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            texts.append(text_of(item.get("content")))
            if item.get("role") == "user":
                last_user = text_of(item.get("content"))
        elif kind == "function_call":
            names[item["call_id"]] = item["name"]
    results = []
    for item in reversed(items):
        if item.get("type") != "function_call_output":
            break
        output = item.get("output")
        results.insert(0, ToolResult(names.get(item["call_id"], item["call_id"]),
                                     output if isinstance(output, str) else text_of(output)))
    tools = [ToolSpec(t["name"], t.get("parameters") or {}) for t in body.get("tools") or []]
    return Conversation(model=body["model"], texts=texts, last_user_text=last_user, tools=tools,
                        tool_results=results, stream=bool(body.get("stream")))


def usage_json(reply: Reply) -> dict:
    u = reply.usage
    return {"input_tokens": u.input, "input_tokens_details": {"cached_tokens": u.cached},
            "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.input + u.output}


def output_items(reply: Reply) -> list[dict]:
    items = []
    if reply.text:
        items.append({"id": common.new_id("msg_"), "type": "message", "status": "completed",
                      "role": "assistant", "content": [
                          {"type": "output_text", "text": reply.text, "annotations": [],
                           "logprobs": []}]})
    for call in reply.tool_calls:
        items.append({"id": common.new_id("fc_"), "type": "function_call",
                      "status": "completed", "call_id": call.id, "name": call.name,
                      "arguments": call.arguments_json})
    return items


def response_object(body: dict, reply: Reply | None, output: list[dict], status: str) -> dict:
    return {
        "id": body["_id"], "object": "response", "created_at": body["_created"],
        "status": status, "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
        "model": body["model"], "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "service_tier": "default", "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [dict(t, strict=t.get("strict", True)) for t in body.get("tools") or []],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": usage_json(reply) if reply else None, "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def stream_events(body: dict, reply: Reply):
    seq = 0

    def event(kind: str, **fields) -> str:
        nonlocal seq
        payload = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    yield event("response.created", response=response_object(body, None, [], "in_progress"))
    yield event("response.in_progress", response=response_object(body, None, [], "in_progress"))
    done = output_items(reply)
    for index, item in enumerate(done):
        if item["type"] == "message":
            part = item["content"][0]
            yield event("response.output_item.added", output_index=index,
                        item=dict(item, status="in_progress", content=[]))
            yield event("response.content_part.added", item_id=item["id"], output_index=index,
                        content_index=0, part=dict(part, text=""))
            for piece in common.split_text(part["text"]):
                yield event("response.output_text.delta", item_id=item["id"],
                            output_index=index, content_index=0, delta=piece, logprobs=[])
            yield event("response.output_text.done", item_id=item["id"], output_index=index,
                        content_index=0, text=part["text"], logprobs=[])
            yield event("response.content_part.done", item_id=item["id"], output_index=index,
                        content_index=0, part=part)
        else:
            yield event("response.output_item.added", output_index=index,
                        item=dict(item, status="in_progress", arguments=""))
            for frag in common.split_json(item["arguments"]):
                yield event("response.function_call_arguments.delta", item_id=item["id"],
                            output_index=index, delta=frag)
            yield event("response.function_call_arguments.done", item_id=item["id"],
                        output_index=index, name=item["name"], arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=response_object(body, reply, done, "completed"))


class ResponsesRoute:
    """Adds `POST {prefix}/responses` to an `OpenAIDouble` (its auth, faults and state)."""

    def __init__(self, double) -> None:
        self.double = double

    def routes(self, app: web.Application, prefix: str = "/v1") -> None:
        app.router.add_post(prefix + "/responses", self.create)

    async def create(self, request: web.Request) -> web.StreamResponse:
        d = self.double
        entry, body, early = await d.begin(request)
        if early:
            return early
        invalid = validate(body)
        if invalid:
            return common.json_response(invalid, 400)
        if body.get("previous_response_id"):
            return common.json_response(error(
                f"Previous response with id '{body['previous_response_id']}' not found.",
                "previous_response_id", "previous_response_not_found"), 404)
        conv = conversation(body)
        fault = common.parse_fault_marker(conv.last_user_text) or d.state.next_fault(request.path)
        faulted = await d.apply_fault(request, fault)
        if faulted:
            return faulted
        reply = common.plan_reply(d.provider, conv)
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        body = dict(body, _id=common.new_id("resp_"), _created=int(time.time()))
        if not conv.stream:
            return common.json_response(response_object(body, reply, output_items(reply),
                                                        "completed"))
        stream = common.Stream(request, fault, common.sse_headers())
        return await common.run_stream(stream, stream_events(body, reply))
