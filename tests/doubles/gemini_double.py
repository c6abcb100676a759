"""Gemini double: `models/{model}:generateContent`, `:streamGenerateContent?alt=sse` (CRLF-framed
SSE, cumulative usageMetadata on every chunk, no [DONE]), functionCall / functionResponse parts,
`:embedContent` and `:batchEmbedContents`. Credential: `x-goog-api-key` (or `?key=`).

Thinking (`generationConfig.thinkingConfig.thinkingBudget` above 0): the thoughts are counted
as `thoughtsTokenCount` (apart from `candidatesTokenCount`, in the total) and, with
`includeThoughts: true`, returned first as a thought part (`thought: true`).

Thought signatures (https://ai.google.dev/gemini-api/docs/thought-signatures): a Gemini 3 model
(`gemini-3*`) puts a `thoughtSignature` on the first `functionCall` part of every answer with
calls (parallel calls: the first only), and answers 400 to a request whose current turn (the
contents after the last user text) has a model step whose first `functionCall` part lacks one
(or carries one it did not give; Google's documented dummy `skip_thought_signature_validator`
passes). Gemini 2.x models neither give nor check them.

Wire format: https://ai.google.dev/api/generate-content and
https://ai.google.dev/gemini-api/docs/thinking (see README.md).
"""

from __future__ import annotations

import base64
import json
import re

from aiohttp import web

from . import common
from .common import Conversation, DoubleState, Reply, ToolResult, ToolSpec
from .openai_double import embedding_vector

PROVIDER = "gemini"
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                504: "DEADLINE_EXCEEDED"}
MESSAGES = {429: "Resource has been exhausted (e.g. check quota).",
            500: "An internal error has occurred. Please retry or report in "
                 "https://developers.generativeai.google/guide/troubleshooting",
            503: "The model is overloaded. Please try again later."}


def google_error(code: int, message: str, details: list | None = None) -> dict:
    err = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    if details is not None:
        err["details"] = details
    return {"error": err}


def error_for_status(status: int) -> dict:
    return google_error(status, MESSAGES.get(status, f"error {status}"))


# GenerationConfig's fields (camelCase; snake_case is accepted too); others are a 400.
GENERATION_CONFIG = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
    "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP", "topK",
    "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
    "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig",
    "mediaResolution"}

# GenerateContentRequest's top-level fields (Vertex adds `labels`); others are a 400.
REQUEST_FIELDS = {
    "model", "contents", "systemInstruction", "tools", "toolConfig", "safetySettings",
    "generationConfig", "cachedContent", "labels"}


def g(obj: dict, camel: str):
    """Gemini's JSON accepts camelCase and snake_case field names alike."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(camel, obj.get(snake))


def parts_text(parts) -> str:
    return "".join(p.get("text", "") for p in parts or [] if isinstance(p, dict))


def conversation(model: str, body: dict, stream: bool) -> Conversation:
    contents = body.get("contents") or []
    system = g(body, "systemInstruction") or {}
    texts = [parts_text(system.get("parts"))] + [parts_text(c.get("parts")) for c in contents]
    last_user = ""
    results: list[ToolResult] = []
    for i, c in enumerate(contents):
        if c.get("role", "user") != "user":
            continue
        text = parts_text(c.get("parts"))
        if text:
            last_user = text
        if i == len(contents) - 1:
            for p in c.get("parts") or []:
                resp = g(p, "functionResponse")
                if resp:
                    content = resp.get("response")
                    if isinstance(content, dict) and set(content) <= {"content", "result", "output"} and content:
                        content = next(iter(content.values()))
                    if not isinstance(content, str):
                        content = json.dumps(content, separators=(",", ":"))
                    results.append(ToolResult(resp.get("name", ""), content))
    tools = []
    for t in body.get("tools") or []:
        for decl in g(t, "functionDeclarations") or []:
            schema = decl.get("parameters") or g(decl, "parametersJsonSchema") or {}
            tools.append(ToolSpec(decl["name"], schema))
    config = g(body, "generationConfig") or {}
    schema = g(config, "responseSchema") or g(config, "responseJsonSchema")
    return Conversation(model=model, texts=texts, last_user_text=last_user, tools=tools,
                        tool_results=results, stream=stream, output_schema=schema)


def usage_json(reply: Reply, output: int | None = None) -> dict:
    u = reply.usage
    out = u.output if output is None else output
    thoughts = min(u.reasoning, out)
    meta = {"promptTokenCount": u.input, "candidatesTokenCount": out - thoughts,
            "totalTokenCount": u.input + out,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u.input}]}
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    if u.cached:
        meta["cachedContentTokenCount"] = u.cached
    return meta


def thinking_config(body: dict) -> dict:
    return g(g(body, "generationConfig") or {}, "thinkingConfig") or {}


def thought_parts(reply: Reply, body: dict) -> list[dict]:
    """The thought summary, returned only when the request asked for it."""
    if reply.thinking and g(thinking_config(body), "includeThoughts"):
        return [{"text": reply.thinking, "thought": True}]
    return []


def response(model: str, parts: list[dict], finish: str | None, usage: dict, rid: str) -> dict:
    candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
            "responseId": rid}


def signs_calls(model: str) -> bool:
    """Gemini 3 models sign (and check) function calls; 2.x models do neither."""
    return model.startswith("gemini-3")


def call_signature(name: str, args) -> str:
    """The double's thought signature over one call (the real one is opaque too)."""
    return common.sign_thinking("call:" + name + ":" + json.dumps(
        args or {}, sort_keys=True, separators=(",", ":")))


# Google's documented dummy for calls not made by a Gemini 3 model (thought-signatures page,
# "FAQ": transferring a conversation from another model).
DUMMY_SIGNATURES = {"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"}


def same_bytes(given, signature: str) -> bool:
    """`thoughtSignature` is a protobuf `bytes` field: its JSON is base64, and Google's parser
    takes the standard and the URL-safe alphabet alike (google-genai sends the latter)."""
    if not isinstance(given, str):
        return False
    try:
        padded = given + "=" * (-len(given) % 4)
        return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_")) == \
            base64.b64decode(signature)
    except ValueError:
        return False


def call_parts(model: str, reply: Reply) -> list[dict]:
    parts = [{"functionCall": {"name": c.name, "args": c.arguments}} for c in reply.tool_calls]
    if parts and signs_calls(model):
        first = parts[0]["functionCall"]
        parts[0]["thoughtSignature"] = call_signature(first["name"], first["args"])
    return parts


def reply_parts(model: str, reply: Reply) -> list[dict]:
    parts: list[dict] = []
    if reply.text:
        parts.append({"text": reply.text})
    return parts + call_parts(model, reply)


def missing_signature(model: str, body: dict) -> web.Response | None:
    """Gemini 3's 400 for a current turn whose model steps' first calls come back unsigned.
    Message as the API wrote it (quoted in
    https://discuss.ai.google.dev/t/openai-api-compatibility-broken-due-to-thought-signature-on-gemini-3-pro-preview/109823)."""
    if not signs_calls(model):
        return None
    contents = body.get("contents") or []
    start = 0
    for i, c in enumerate(contents):
        if c.get("role", "user") == "user" and parts_text(c.get("parts")):
            start = i + 1
    for i, c in enumerate(contents[start:], start):
        if c.get("role") != "model":
            continue
        first = next((p for p in c.get("parts") or [] if g(p, "functionCall")), None)
        if first is None:
            continue
        call = g(first, "functionCall")
        sig = g(first, "thoughtSignature")
        if sig in DUMMY_SIGNATURES or same_bytes(sig, call_signature(call.get("name", ""),
                                                                     call.get("args"))):
            continue
        return common.json_response(google_error(
            400, "Function call is missing a thought_signature in functionCall parts. This is "
                 "required for tools to work correctly, and missing thought_signature may lead "
                 "to degraded model performance. Additional data, function call "
                 f"`default_api:{call.get('name', '')}` , position {i + 1}. please refer to "
                 "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."),
            400)
    return None


def stream_events(model: str, reply: Reply, thoughts: list[dict]):
    rid = common.new_id("")
    pieces = common.split_text(reply.text) if reply.text else []
    chunks: list[list[dict]] = [[t] for t in thoughts] + [[{"text": p}] for p in pieces]
    calls = call_parts(model, reply)
    if calls:
        chunks.append(calls)
    if not chunks:
        chunks = [[{"text": ""}]]
    so_far = 0
    for i, parts in enumerate(chunks):
        last = i == len(chunks) - 1
        so_far = reply.usage.output if last else min(
            reply.usage.output, so_far + sum(common.words(p.get("text", "")) for p in parts))
        so_far = max(so_far, min(reply.usage.reasoning, reply.usage.output))
        payload = response(model, parts, "STOP" if last else None, usage_json(reply, so_far), rid)
        yield f"data: {json.dumps(payload)}\r\n\r\n"


class GeminiDouble:
    # The name in the answers' text (`expected_text`).
    provider = PROVIDER

    def __init__(self, api_key: str, state: DoubleState) -> None:
        self.api_key = api_key
        self.state = state

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{target}", self.dispatch)
        app.router.add_post("/v1/models/{target}", self.dispatch)

    def authenticate(self, request: web.Request) -> web.Response | None:
        """The answer for a request without the right credential, or None."""
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return common.json_response(google_error(
                403, "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."), 403)
        if key != self.api_key:
            return common.json_response(google_error(
                400, "API key not valid. Please pass a valid API key.",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                  "domain": "googleapis.com",
                  "metadata": {"service": "generativelanguage.googleapis.com"}}]), 400)
        return None

    def check_body(self, body: dict) -> web.Response | None:
        """A request body the service refuses beyond the common checks, or None."""
        return None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.state.record(request, raw)
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        model, _, method = request.match_info["target"].partition(":")
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return common.json_response(google_error(
                400, "Invalid JSON payload received."), 400)
        if method in ("embedContent", "batchEmbedContents"):
            return self.embed(entry, method, body)
        if method not in ("generateContent", "streamGenerateContent"):
            return common.json_response(google_error(
                404, f"Method {method} not found."), 404)
        stream = method == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return common.json_response(google_error(
                400, "this double only streams with ?alt=sse"), 400)
        if not body.get("contents"):
            return common.json_response(google_error(
                400, "* GenerateContentRequest.contents: contents is not specified\n"), 400)
        for name in body:
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
            if camel not in REQUEST_FIELDS:
                return common.json_response(google_error(
                    400, f'Invalid JSON payload received. Unknown name "{name}": '
                         "Cannot find field."), 400)
        for name in g(body, "generationConfig") or {}:
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
            if camel not in GENERATION_CONFIG:
                return common.json_response(google_error(
                    400, f'Invalid JSON payload received. Unknown name "{name}" at '
                         "'generation_config': Cannot find field."), 400)
        refused = self.check_body(body) or missing_signature(model, body)
        if refused is not None:
            return refused
        conv = conversation(model, body, stream)
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        if fault:
            if fault["kind"] == "status":
                status = int(fault.get("status", 500))
                headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
                return common.json_response(error_for_status(status), status, headers)
            if fault["kind"] == "hang":
                await common.hang(fault)
            if fault["kind"] == "close_headers":
                return await common.close_mid_headers(request)
        reply = common.plan_reply(self.provider, conv)
        budget = g(thinking_config(body), "thinkingBudget")
        if (isinstance(budget, int) and budget != 0) or g(thinking_config(body), "thinkingLevel"):
            reply = common.with_thinking(reply, conv)
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        thoughts = thought_parts(reply, body)
        if not stream:
            return common.json_response(response(model, thoughts + reply_parts(model, reply), "STOP",
                                                 usage_json(reply), common.new_id("")))
        s = common.Stream(request, fault, common.sse_headers())
        return await common.run_stream(s, stream_events(model, reply, thoughts))

    def embed(self, entry: dict, method: str, body: dict) -> web.Response:
        requests = body.get("requests") if method == "batchEmbedContents" else [body]
        out = []
        for req in requests or []:
            text = parts_text((req.get("content") or {}).get("parts"))
            dims = int(g(req, "outputDimensionality") or 8)
            out.append({"values": embedding_vector(text, dims)})
        entry["response"] = {"usage": {"input": 0, "output": 0, "cached": 0}}
        if method == "embedContent":
            return common.json_response({"embedding": out[0] if out else {"values": []}})
        return common.json_response({"embeddings": out})


def make_app(api_key: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    GeminiDouble(api_key, state).routes(app)
    common.add_side_routes(app, state)
    return app, state
