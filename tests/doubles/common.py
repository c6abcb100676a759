"""Shared machinery of the provider test doubles.

Each double (OpenAI, Anthropic, Gemini, DashScope) parses its provider's native request into a
small provider-neutral `Conversation`, asks `plan_reply` what to answer, and renders that
`Reply` in its provider's exact wire format. The answer is a pure function of the request, so
tests can assert real content:

* text reply: ``"<provider>/<upstream model> echo <hash8>: <last user text>"`` where ``hash8`` is
  the first 8 hex digits of SHA-256 of the last user text (`expected_text`);
* when the request offers tools and the last message is a user turn, the double calls tools:
  every offered tool (at most 3), with arguments built from each tool's JSON schema
  (`tool_arguments`); a user text containing ``[text+tools]`` also gets a text part first;
  ``[tool:NAME]`` restricts the calls to that one tool;
* when the last turn carries tool results, the reply text is
  ``"tool results: <name or id>=<content>; ..."`` so tests see the results arrived;
* usage is deterministic (`usage_for`): input = whitespace-separated words of every text in the
  request + 10 per offered tool, output = words of the reply + 7 per tool call; a user text
  containing ``[cache]`` reports half the input as cached;
* the OpenAI double answers a user text containing ``[refusal]`` with the text as the model's
  refusal (``message.refusal`` / ``delta.refusal``, ``content: null``);
* a request that asks the model to think (Anthropic ``thinking``, Gemini ``thinkingConfig``
  with a budget, OpenAI ``reasoning_effort``) gets reasoning (`with_thinking`): the text
  ``"thinking about <hash8>: <last user text>"`` where the provider returns it (Anthropic
  signs it with `sign_thinking` and checks signed thinking sent back; Gemini returns it with
  ``includeThoughts``), and its words as reasoning tokens, counted in the output.

Fault injection, per request (a marker in the last user text or embedding input, e.g.
``[[fault:status=503,retry_after=2]]``) or queued with ``POST /_faults``
(``{"faults": [{"kind": "status", "status": 503, "retry_after": 2, "times": 1}]}``):

* ``status`` — answer ``status`` (429/500/503/4xx...) in the provider's error format, with
  ``Retry-After`` when ``retry_after`` is given;
* ``hang`` — sleep ``seconds`` (bounded, default 20) before answering normally;
* ``close_headers`` — write part of the status line and headers, then close the connection;
* ``cut_stream`` — for streams: send ``after`` events (default 2), then drop the connection;
* ``malformed_sse`` — for streams: send one good event, then a broken ``data:`` line, then
  end the stream;
* ``stall_stream`` — for streams: send ``after`` events (default 2), then go silent for
  ``seconds`` (default 10) before sending the rest;
* ``linger_end`` — for streams: send every event, then hold the body open ``seconds``
  (default 1) before ending it, as a slow upstream may after its terminal event;
* ``cut_body`` — for complete (non-streamed) answers: send the head with the full
  ``Content-Length`` and half the body, then drop the connection.

Concurrency cap (OpenAI and Anthropic doubles), as a provider's own quota: ``POST /_limits``
(``{"concurrent": 100}``) lets at most that many requests per upstream model (the body's
``model``) be in flight at once — a streamed answer counts until its last byte — and answers
the next one 429 in the provider's error format with ``Retry-After: 1``. ``GET /_limits``
reports ``in_flight``, ``peak`` and ``refused`` per model; ``POST /_reset`` lifts the cap.

Side endpoints on every double: ``GET /_last`` (last request: method, path, query, headers,
body, and the usage the double answered with), ``GET /_requests`` (all since the last reset),
``POST /_reset`` (clear requests and faults), ``POST /_faults``, ``GET /_health``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAULT_RE = re.compile(r"\[\[fault:([a-z_]+)((?:,?[a-z_]+=[^,\]]+)*)\]\]")
MARKER_RE = re.compile(r"\[\[fault:[^\]]*\]\]|\[text\+tools\]|\[cache\]|\[tool:[^\]]*\]")
MAX_HANG_S = 60.0


def sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def clean(text: str) -> str:
    """The user text without the double's control markers."""
    return " ".join(MARKER_RE.sub("", text).split())


def expected_text(provider: str, upstream_model: str, user_text: str) -> str:
    """The text reply a double gives to `user_text` (tests compute the same)."""
    return f"{provider}/{upstream_model} echo {sha8(clean(user_text))}: {clean(user_text)}"


def words(text: str) -> int:
    return len(text.split())


@dataclass
class ToolSpec:
    name: str
    schema: dict


@dataclass
class ToolResult:
    ref: str  # tool name if the provider carries it, else the call id
    content: str


@dataclass
class Conversation:
    model: str
    texts: list[str]  # every text in the request, system included, in order
    last_user_text: str  # text of the last user turn ("" when it carries only tool results)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)  # of the last turn
    stream: bool = False
    # The JSON schema the answer must match, from the provider's own structured-output field
    # (OpenAI `response_format`, Anthropic `output_config.format`, Gemini `responseSchema`...).
    output_schema: dict | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass
class Usage:
    input: int
    output: int  # reasoning included
    cached: int
    reasoning: int = 0


@dataclass
class Reply:
    text: str | None
    tool_calls: list[ToolCall]
    usage: Usage
    thinking: str | None = None

    @property
    def finished_by_tools(self) -> bool:
        return bool(self.tool_calls)


def tool_arguments(tool: ToolSpec) -> dict:
    """Deterministic arguments for `tool` from its JSON schema's properties."""
    props = (tool.schema or {}).get("properties") or {}
    args: dict[str, Any] = {}
    for name, spec in props.items():
        typ = (spec or {}).get("type", "string")
        if isinstance(typ, list):
            typ = typ[0]
        if "enum" in (spec or {}):
            args[name] = spec["enum"][0]
        elif typ in ("integer", "number"):
            args[name] = 42
        elif typ == "boolean":
            args[name] = True
        elif typ == "array":
            args[name] = ["a", "b"]
        elif typ == "object":
            args[name] = {"k": "v"}
        else:
            args[name] = f"{name}-{tool.name}"
    return args


def plan_reply(provider: str, conv: Conversation, id_prefix: str = "call_") -> Reply:
    user = conv.last_user_text
    in_tokens = sum(words(clean(t)) for t in conv.texts) + 10 * len(conv.tools)
    calls: list[ToolCall] = []
    text: str | None
    if conv.tool_results:
        text = "tool results: " + "; ".join(f"{r.ref}={r.content}" for r in conv.tool_results)
    elif conv.tools:
        only = re.search(r"\[tool:([^\]]+)\]", user)
        chosen = [t for t in conv.tools if not only or t.name == only.group(1)][:3]
        for i, tool in enumerate(chosen):
            calls.append(
                ToolCall(
                    id=f"{id_prefix}{sha8(user + tool.name)}{i}",
                    name=tool.name,
                    arguments=tool_arguments(tool),
                )
            )
        text = expected_text(provider, conv.model, user) if "[text+tools]" in user else None
    elif conv.output_schema is not None:
        # Structured output: a JSON value that matches the schema, as the real API guarantees.
        text = json.dumps(tool_arguments(ToolSpec("output", conv.output_schema)))
    else:
        text = expected_text(provider, conv.model, user)
    out_tokens = (words(text) if text else 0) + 7 * len(calls)
    cached = in_tokens // 2 if "[cache]" in user else 0
    return Reply(text=text, tool_calls=calls, usage=Usage(in_tokens, out_tokens, cached))


# The key the Anthropic double signs its thinking with (the real signature is opaque too).
THINKING_KEY = b"switchyard-double-thinking"


def sign_thinking(text: str) -> str:
    """The signature of a thinking block: what Anthropic checks when the block comes back."""
    import base64
    import hmac

    return base64.b64encode(hmac.new(THINKING_KEY, text.encode(), hashlib.sha256).digest()).decode()


def with_thinking(reply: Reply, conv: Conversation) -> Reply:
    """`reply` of a model that thought first: the thinking text, its words as reasoning tokens
    (counted in the output, as every provider bills them)."""
    user = conv.last_user_text
    text = f"thinking about {sha8(user)}: {clean(user)}"
    n = words(text)
    u = reply.usage
    return Reply(text=reply.text, tool_calls=reply.tool_calls, thinking=text,
                 usage=Usage(u.input, u.output + n, u.cached, reasoning=n))


def split_text(text: str, parts: int = 4) -> list[str]:
    """Split `text` into at most `parts` pieces at word boundaries, keeping every space."""
    tokens = re.findall(r"\S+\s*", text)
    if not tokens:
        return [text]
    step = max(1, -(-len(tokens) // parts))
    return ["".join(tokens[i : i + step]) for i in range(0, len(tokens), step)]


def split_json(s: str, parts: int = 3) -> list[str]:
    """Split a JSON string into incremental fragments (like providers stream tool arguments)."""
    if len(s) < parts:
        return [s]
    step = -(-len(s) // parts)
    return [s[i : i + step] for i in range(0, len(s), step)]


def parse_fault_marker(text: str) -> dict | None:
    m = FAULT_RE.search(text or "")
    if not m:
        return None
    fault: dict[str, Any] = {"kind": m.group(1)}
    for pair in filter(None, m.group(2).split(",")):
        k, v = pair.split("=", 1)
        fault[k] = float(v) if re.fullmatch(r"\d+\.\d+", v) else int(v) if v.isdigit() else v
    return fault


class DoubleState:
    """What one double has seen and what it has been told to do wrong."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.faults: list[dict] = []
        self.clear_limits()

    def clear_limits(self) -> None:
        self.concurrent: int | None = None
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    def record(self, request: web.Request, body: bytes) -> dict:
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        entry = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": parsed,
            "response": None,
        }
        self.requests.append(entry)
        del self.requests[:-200]
        return entry

    def next_fault(self, path: str) -> dict | None:
        for fault in self.faults:
            if fault.get("path") and fault["path"] not in path:
                continue
            fault["times"] = fault.get("times", 1) - 1
            if fault["times"] <= 0:
                self.faults.remove(fault)
            return dict(fault)
        return None

    def take_fault(self, path: str, kind: str) -> bool:
        """Consumes the next queued fault for `path` if it is of `kind`."""
        for fault in self.faults:
            if fault.get("path") and fault["path"] not in path:
                continue
            if fault.get("kind") != kind:
                return False
            self.next_fault(path)
            return True
        return False


CUT_BODY_MARKER = b"[[fault:cut_body]]"


def cut_body_fault(state: DoubleState):
    """The ``cut_body`` fault, around every handler: a complete answer's head (full
    ``Content-Length``) and half its body, then the connection drops, as a provider that dies
    mid-answer."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        cut = CUT_BODY_MARKER in await request.read() or state.take_fault(request.path,
                                                                          "cut_body")
        response = await handler(request)
        if (cut and isinstance(response, web.Response) and response.body
                and request.transport is not None):
            body = bytes(response.body)
            head = (f"HTTP/1.1 {response.status} {response.reason}\r\n"
                    f"Content-Type: {response.content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            request.transport.write(head + body[:len(body) // 2])
            await asyncio.sleep(0.05)
            request.transport.abort()
            raise asyncio.CancelledError()
        return response

    return middleware


def concurrency_cap(state: DoubleState, error_fn):
    """The concurrency cap (see the module docs), around every non-side handler."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        if state.concurrent is None or request.path.startswith("/_"):
            return await handler(request)
        try:
            model = str(json.loads(await request.read()).get("model", ""))
        except (ValueError, AttributeError):
            model = ""
        if state.in_flight.get(model, 0) >= state.concurrent:
            state.refused[model] = state.refused.get(model, 0) + 1
            return json_response(error_fn(429), 429, {"Retry-After": "1"})
        state.in_flight[model] = state.in_flight.get(model, 0) + 1
        state.peak[model] = max(state.peak.get(model, 0), state.in_flight[model])
        try:
            return await handler(request)
        finally:
            state.in_flight[model] -= 1

    return middleware


def add_side_routes(app: web.Application, state: DoubleState, error_fn=None) -> None:
    app.middlewares.append(cut_body_fault(state))
    if error_fn is not None:
        app.middlewares.append(concurrency_cap(state, error_fn))
    async def last(_: web.Request) -> web.Response:
        if not state.requests:
            return web.json_response({"error": "no request yet"}, status=404)
        return web.json_response(state.requests[-1])

    async def requests(_: web.Request) -> web.Response:
        return web.json_response(state.requests)

    async def reset(_: web.Request) -> web.Response:
        state.requests.clear()
        state.faults.clear()
        state.clear_limits()
        return web.json_response({"ok": True})

    async def limits(request: web.Request) -> web.Response:
        if request.method == "POST":
            state.clear_limits()
            state.concurrent = int((await request.json())["concurrent"])
        return web.json_response({"concurrent": state.concurrent, "in_flight": state.in_flight,
                                  "peak": state.peak, "refused": state.refused})

    async def faults(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            state.faults.clear()
        else:
            payload = await request.json()
            state.faults.extend(payload.get("faults", [payload]))
        return web.json_response({"faults": state.faults})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/_last", last)
    app.router.add_get("/_requests", requests)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/_faults", faults)
    app.router.add_delete("/_faults", faults)
    app.router.add_get("/_health", health)
    app.router.add_post("/_limits", limits)
    app.router.add_get("/_limits", limits)


async def close_mid_headers(request: web.Request) -> web.StreamResponse:
    """Write half a response head and drop the connection."""
    transport = request.transport
    if transport is not None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: applic")
        await asyncio.sleep(0.05)
        transport.abort()
    raise asyncio.CancelledError()


def cut_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def hang(fault: dict) -> None:
    await asyncio.sleep(min(float(fault.get("seconds", 20)), MAX_HANG_S))


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def sse_headers(extra: dict | None = None) -> dict:
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    headers.update(extra or {})
    return headers


class Stream:
    """A streamed response (SSE, or a binary event stream) that honours the stream faults
    (`cut_stream`, `stall_stream`, `malformed_sse`, `linger_end`)."""

    def __init__(self, request: web.Request, fault: dict | None, headers: dict,
                 malformed: bytes = b'data: {"this is": not json\n\n') -> None:
        self.request = request
        self.fault = fault or {}
        self.response = web.StreamResponse(status=200, headers=headers)
        self.sent = 0
        self.stalled = False
        # What `malformed_sse` sends: broken SSE, or a broken frame of a binary stream.
        self.malformed = malformed

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, raw: str | bytes) -> None:
        kind = self.fault.get("kind")
        if kind == "cut_stream" and self.sent >= int(self.fault.get("after", 2)):
            cut_connection(self.request)
            raise asyncio.CancelledError()
        if (kind == "stall_stream" and self.sent == int(self.fault.get("after", 2))
                and not self.stalled):
            self.stalled = True
            await asyncio.sleep(min(float(self.fault.get("seconds", 10)), MAX_HANG_S))
        if kind == "malformed_sse" and self.sent == 1:
            await self.response.write(self.malformed)
            self.sent += 1
            raise _EndStream()
        await self.response.write(raw if isinstance(raw, bytes) else raw.encode())
        self.sent += 1
        await asyncio.sleep(0)

    async def finish(self) -> web.StreamResponse:
        if self.fault.get("kind") == "linger_end":
            await asyncio.sleep(min(float(self.fault.get("seconds", 1)), MAX_HANG_S))
        await self.response.write_eof()
        return self.response


class _EndStream(Exception):
    pass


async def run_stream(stream: Stream, events) -> web.StreamResponse:
    """Send every raw SSE event of the iterable `events`, honouring stream faults."""
    await stream.start()
    try:
        for raw in events:
            await stream.send(raw)
    except _EndStream:
        pass
    return await stream.finish()


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )
