"""AWS Bedrock Runtime double: Converse (`POST /model/{modelId}/converse`) and ConverseStream
(`/converse-stream`, a binary `application/vnd.amazon.eventstream`).

Requests must be SigV4-signed for service `bedrock` in the double's region with its access
key (the signature is recomputed with botocore, AWS's own signer, and compared; a signature
older than 5 minutes is refused as AWS does), or carry a Bedrock API key as
`Authorization: Bearer`. The body is validated as strictly as Converse does: known top-level
fields only, alternating user/assistant turns starting with a user turn, one non-blank
member per content block, tool blocks only with a `toolConfig`.

Claude's extended thinking (`additionalModelRequestFields.thinking`, Claude model ids only;
`budget_tokens` at least 1024 and below `maxTokens`) makes the model think: the answer starts
with a `reasoningContent` block (`reasoningText` with a `signature`, streamed as
`reasoningContent` deltas: text pieces, then the signature), and signed reasoning sent back in
an assistant turn must carry the signature the double gave
(https://docs.aws.amazon.com/bedrock/latest/userguide/claude-messages-extended-thinking.html ,
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ReasoningContentBlock.html).

Wire format: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html ,
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html ,
event-stream framing: https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html
(see README.md).
"""

from __future__ import annotations

import base64
import datetime
import json
import random
import struct
import zlib
from urllib.parse import unquote

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from . import common
from .common import Conversation, DoubleState, Reply, ToolResult, ToolSpec

PROVIDER = "bedrock"
REGION = "us-east-1"
ACCESS_KEY_ID = "AKIAUPSTREAMBEDROCK7"
SERVICE = "bedrock"
MAX_SKEW = datetime.timedelta(minutes=5)
TOP_LEVEL = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
             "additionalModelRequestFields", "additionalModelResponseFieldPaths",
             "promptVariables", "requestMetadata", "performanceConfig", "outputConfig"}
BLOCK_KINDS = {"text", "image", "document", "video", "toolUse", "toolResult", "guardContent",
               "cachePoint", "reasoningContent", "citationsContent"}
ERRORS = {400: "ValidationException", 403: "AccessDeniedException",
          404: "ResourceNotFoundException", 408: "ModelTimeoutException",
          424: "ModelErrorException", 429: "ThrottlingException",
          500: "InternalServerException", 503: "ServiceUnavailableException"}
MESSAGES = {429: "Too many requests, please wait before trying again.",
            500: "The server encountered an internal error while processing the request.",
            503: "Bedrock is unable to process your request."}


def aws_error(status: int, message: str, kind: str | None = None) -> web.Response:
    kind = kind or ERRORS.get(status, "ValidationException" if status < 500 else
                              "InternalServerException")
    return common.json_response({"message": message}, status,
                                {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                                 "x-amzn-RequestId": common.new_id("")})


def error_for_status(status: int, retry_after=None) -> web.Response:
    resp = aws_error(status, MESSAGES.get(status, f"error {status}"))
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


# -- event-stream framing -------------------------------------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (type 7)."""
    head = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        head += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


def padding(n: int) -> str:
    """The `p` field AWS adds to event payloads so their length says nothing."""
    return "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[: 1 + n % 40]


def event(kind: str, body: dict) -> bytes:
    body = dict(body, p=padding(len(json.dumps(body))))
    return frame({":event-type": kind, ":content-type": "application/json",
                  ":message-type": "event"}, json.dumps(body, separators=(",", ":")).encode())


def exception(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json",
                  ":message-type": "exception"}, json.dumps({"message": message}).encode())


# -- requests ---------------------------------------------------------------------------------


def text_of(blocks) -> str:
    return "".join(b.get("text", "") for b in blocks or [] if isinstance(b, dict))


def validate(body: dict) -> str | None:
    """The ValidationException message Converse would answer with, or None."""
    extra = set(body) - TOP_LEVEL
    if extra:
        return f"Malformed input request: extraneous key [{sorted(extra)[0]}] is not permitted"
    if "outputConfig" in body:
        fmt = (body["outputConfig"] or {}).get("textFormat") or {}
        schema = ((fmt.get("structure") or {}).get("jsonSchema") or {}).get("schema")
        if fmt.get("type") != "json_schema" or not isinstance(schema, str):
            return ("outputConfig.textFormat: type must be json_schema and "
                    "structure.jsonSchema.schema a JSON string")
        try:
            json.loads(schema)
        except ValueError:
            return "outputConfig.textFormat.structure.jsonSchema.schema is not valid JSON"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "The messages field is required and must contain at least one message."
    if messages[0].get("role") != "user":
        return "A conversation must start with a user message. Try again with a conversation that starts with a user message."
    uses_tools = False
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant"
        if i and m.get("role") == messages[i - 1].get("role"):
            return "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again."
        content = m.get("content")
        if not isinstance(content, list) or not content:
            return f"messages.{i}.content: must be a non-empty list"
        for j, block in enumerate(content):
            kinds = [k for k in block if k in BLOCK_KINDS]
            if len(kinds) != 1 or len(block) != 1:
                return f"messages.{i}.content.{j}: a ContentBlock needs exactly one member"
            if "text" in block and not block["text"].strip():
                return "The text field in the ContentBlock object at messages.%d.content.%d is blank. Add text to the text field, and try again." % (i, j)
            if "image" in block:
                img = block["image"]
                if img.get("format") not in ("png", "jpeg", "gif", "webp"):
                    return f"messages.{i}.content.{j}.image.format: invalid"
                try:
                    base64.b64decode(img["source"]["bytes"], validate=True)
                except (KeyError, TypeError, ValueError):
                    return f"messages.{i}.content.{j}.image.source.bytes: invalid base64"
            if "toolUse" in block:
                uses_tools = True
                tu = block["toolUse"]
                if not tu.get("toolUseId") or not tu.get("name") or not isinstance(tu.get("input"), dict):
                    return f"messages.{i}.content.{j}.toolUse: toolUseId, name and an object input are required"
            if "toolResult" in block:
                uses_tools = True
                if m["role"] != "user":
                    return "toolResult blocks belong in user messages"
                tr = block["toolResult"]
                if not tr.get("toolUseId") or not isinstance(tr.get("content"), list):
                    return f"messages.{i}.content.{j}.toolResult: toolUseId and content are required"
    tc = body.get("toolConfig")
    if uses_tools and not tc:
        return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    if tc is not None:
        tools = tc.get("tools")
        if not isinstance(tools, list) or not tools:
            return "toolConfig.tools: must contain at least one tool"
        for t in tools:
            spec = t.get("toolSpec") or {}
            if not spec.get("name") or "json" not in (spec.get("inputSchema") or {}):
                return "toolConfig.tools: every toolSpec needs a name and inputSchema.json"
        choice = tc.get("toolChoice")
        if choice is not None and (len(choice) != 1 or next(iter(choice)) not in ("auto", "any", "tool")):
            return "toolConfig.toolChoice: must be one of auto, any, tool"
    ic = body.get("inferenceConfig") or {}
    if set(ic) - {"maxTokens", "temperature", "topP", "stopSequences"}:
        return "inferenceConfig: unknown field"
    if "maxTokens" in ic and (not isinstance(ic["maxTokens"], int) or ic["maxTokens"] < 1):
        return "inferenceConfig.maxTokens: must be an integer >= 1"
    for s in body.get("system") or []:
        if "text" in s and not s["text"].strip():
            return "system: text blocks must not be blank"
    return None


def thinking_problem(model: str, body: dict) -> str | None:
    """The ValidationException for thinking asked wrongly, or signed reasoning sent back that
    the double did not sign; None when all is well."""
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking")
    if thinking is not None:
        if "anthropic.claude" not in model:
            return ("The model returned the following errors: Malformed input request: "
                    "extraneous key [thinking] is not permitted")
        if thinking.get("type") == "enabled":
            budget = thinking.get("budget_tokens")
            limit = (body.get("inferenceConfig") or {}).get("maxTokens")
            if not isinstance(budget, int) or budget < 1024:
                return ("The model returned the following errors: thinking.enabled.budget_tokens: "
                        "Input should be greater than or equal to 1024")
            if not isinstance(limit, int) or limit <= budget:
                return ("The model returned the following errors: `max_tokens` must be greater "
                        "than `thinking.budget_tokens`")
        elif thinking.get("type") != "disabled":
            return "The model returned the following errors: thinking.type: invalid"
    for m in body.get("messages") or []:
        for block in m.get("content") or []:
            rc = block.get("reasoningContent")
            if rc is None:
                continue
            if m.get("role") != "assistant":
                return "reasoningContent blocks belong in assistant messages"
            text = rc.get("reasoningText")
            if text is not None and text.get("signature") != common.sign_thinking(
                    text.get("text", "")):
                return ("The model returned the following errors: messages.1.content.0: "
                        "Invalid `signature` in `thinking` block")
    return None


def thinks(body: dict) -> bool:
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking") or {}
    return thinking.get("type") == "enabled"


def conversation(model: str, body: dict, stream: bool) -> Conversation:
    messages = body.get("messages") or []
    texts = [text_of(body.get("system"))] + [text_of(m.get("content")) for m in messages]
    names = {b["toolUse"]["toolUseId"]: b["toolUse"]["name"] for m in messages
             for b in m.get("content") or [] if "toolUse" in b}
    last_user = ""
    results: list[ToolResult] = []
    for i, m in enumerate(messages):
        if m.get("role") != "user":
            continue
        text = text_of(m.get("content"))
        if text:
            last_user = text
        if i == len(messages) - 1:
            for b in m.get("content") or []:
                if "toolResult" in b:
                    tr = b["toolResult"]
                    parts = [c.get("text") if "text" in c else json.dumps(c.get("json"))
                             for c in tr.get("content") or []]
                    results.append(ToolResult(names.get(tr["toolUseId"], tr["toolUseId"]),
                                              "".join(p or "" for p in parts)))
    tools = [ToolSpec(t["toolSpec"]["name"], t["toolSpec"]["inputSchema"]["json"])
             for t in (body.get("toolConfig") or {}).get("tools") or []]
    # Structured output: `outputConfig.textFormat` carries the JSON schema as a string.
    fmt = (body.get("outputConfig") or {}).get("textFormat") or {}
    schema = ((fmt.get("structure") or {}).get("jsonSchema") or {}).get("schema")
    return Conversation(model=model, texts=texts, last_user_text=last_user, tools=tools,
                        tool_results=results, stream=stream,
                        output_schema=json.loads(schema)
                        if fmt.get("type") == "json_schema" and schema else None)


def usage_json(reply: Reply) -> dict:
    u = reply.usage
    # Converse's inputTokens excludes cache reads (and writes).
    usage = {"inputTokens": u.input - u.cached, "outputTokens": u.output,
             "totalTokens": u.input + u.output}
    if u.cached:
        usage["cacheReadInputTokens"] = u.cached
        usage["cacheWriteInputTokens"] = 0
    return usage


def stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.tool_calls else "end_turn"


def content(reply: Reply) -> list[dict]:
    out: list[dict] = []
    if reply.thinking:
        out.append({"reasoningContent": {"reasoningText": {
            "text": reply.thinking, "signature": common.sign_thinking(reply.thinking)}}})
    if reply.text:
        out.append({"text": reply.text})
    for call in reply.tool_calls:
        out.append({"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}})
    return out


def stream_events(reply: Reply):
    yield event("messageStart", {"role": "assistant"})
    index = 0
    if reply.thinking:
        for piece in common.split_text(reply.thinking):
            yield event("contentBlockDelta", {"contentBlockIndex": index,
                                              "delta": {"reasoningContent": {"text": piece}}})
        yield event("contentBlockDelta", {"contentBlockIndex": index, "delta": {
            "reasoningContent": {"signature": common.sign_thinking(reply.thinking)}}})
        yield event("contentBlockStop", {"contentBlockIndex": index})
        index += 1
    if reply.text:
        for piece in common.split_text(reply.text):
            yield event("contentBlockDelta", {"contentBlockIndex": index,
                                              "delta": {"text": piece}})
        yield event("contentBlockStop", {"contentBlockIndex": index})
        index += 1
    for call in reply.tool_calls:
        yield event("contentBlockStart", {"contentBlockIndex": index, "start": {
            "toolUse": {"toolUseId": call.id, "name": call.name}}})
        for frag in common.split_json(call.arguments_json):
            yield event("contentBlockDelta", {"contentBlockIndex": index,
                                              "delta": {"toolUse": {"input": frag}}})
        yield event("contentBlockStop", {"contentBlockIndex": index})
        index += 1
    yield event("messageStop", {"stopReason": stop_reason(reply)})
    yield event("metadata", {"usage": usage_json(reply), "metrics": {"latencyMs": 42}})


# -- authentication ---------------------------------------------------------------------------


def check_sigv4(request: web.Request, raw: bytes, access_key_id: str, secret: str,
                session_token: str | None) -> str | None:
    """Why the request's SigV4 signature is not acceptable, or None."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "Missing Authentication Token"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    try:
        key_id, date, region, service, terminator = fields["Credential"].split("/")
    except (KeyError, ValueError):
        return "Authorization header requires 'Credential' parameter."
    if key_id != access_key_id:
        return "The security token included in the request is invalid."
    if (region, service, terminator) != (REGION, SERVICE, "aws4_request"):
        return f"Credential should be scoped to a valid region and service ('{REGION}', '{SERVICE}')."
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        return "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    if date != amz_date[:8]:
        return "Credential date does not match X-Amz-Date."
    now = datetime.datetime.now(datetime.timezone.utc)
    if abs(now - when) > MAX_SKEW:
        return f"Signature expired: {amz_date} is now earlier than the allowed window."
    if session_token is not None and request.headers.get("X-Amz-Security-Token") != session_token:
        return "The security token included in the request is invalid."
    signed = fields.get("SignedHeaders", "").split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return "Host and x-amz-date must be signed."
    headers = {name: request.headers.get(name, "") for name in signed}
    aws_request = AWSRequest(method=request.method,
                             url=f"http://{request.headers.get('Host', '')}{request.raw_path}",
                             headers=headers, data=raw)
    aws_request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key_id, secret, session_token), SERVICE, REGION)
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    if fields.get("Signature") != expected:
        return ("The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.")
    return None


class BedrockDouble:
    def __init__(self, credentials: dict, state: DoubleState) -> None:
        self.credentials = credentials
        self.state = state

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/model/{model}/converse", self.converse)
        app.router.add_post("/model/{model}/converse-stream", self.converse_stream)

    async def converse(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, stream=False)

    async def converse_stream(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, stream=True)

    def authenticate(self, request: web.Request, raw: bytes) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            if auth[7:].strip() != self.credentials["api_key"]:
                return aws_error(403, "Invalid API Key format: Must start with pre-defined prefix",
                                 "AccessDeniedException")
            return None
        why = check_sigv4(request, raw, self.credentials["access_key_id"],
                          self.credentials["secret_access_key"],
                          self.credentials.get("session_token"))
        if why is None:
            return None
        kind = ("MissingAuthenticationTokenException" if why.startswith("Missing")
                else "UnrecognizedClientException" if "security token" in why
                else "InvalidSignatureException")
        return aws_error(403, why, kind)

    async def handle(self, request: web.Request, stream: bool) -> web.StreamResponse:
        raw = await request.read()
        entry = self.state.record(request, raw)
        denied = self.authenticate(request, raw)
        if denied is not None:
            return denied
        # aiohttp decodes the path; the model id is the raw segment, percent-decoded once.
        model = unquote(request.raw_path.split("/")[2])
        if not model or model.startswith("unknown"):
            return aws_error(400, "The provided model identifier is invalid.")
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return aws_error(400, "Malformed input request, please reformat your input and try again.")
        problem = validate(body) or thinking_problem(model, body)
        if problem:
            return aws_error(400, problem)
        conv = conversation(model, body, stream)
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        if fault:
            if fault["kind"] == "status":
                return error_for_status(int(fault.get("status", 500)), fault.get("retry_after"))
            if fault["kind"] == "hang":
                await common.hang(fault)
            if fault["kind"] == "close_headers":
                return await common.close_mid_headers(request)
        reply = common.plan_reply(PROVIDER, conv, id_prefix="tooluse_")
        if thinks(body):
            reply = common.with_thinking(reply, conv)
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        if not stream:
            return common.json_response({
                "output": {"message": {"role": "assistant", "content": content(reply)}},
                "stopReason": stop_reason(reply), "usage": usage_json(reply),
                "metrics": {"latencyMs": 42}})
        broken = bytearray(event("contentBlockDelta", {"contentBlockIndex": 0,
                                                       "delta": {"text": "x"}}))
        broken[-1] ^= 0xFF  # a frame whose checksum does not match
        s = common.Stream(request, fault, {"Content-Type": "application/vnd.amazon.eventstream",
                                           "x-amzn-RequestId": common.new_id("")},
                          malformed=bytes(broken))
        events = stream_events(reply)
        if fault and fault["kind"] == "stream_exception":
            events = [next(stream_events(reply)),
                      exception("throttlingException", MESSAGES[429])]
        return await common.run_stream(s, events)


def make_app(credentials: dict) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    BedrockDouble(credentials, state).routes(app)
    common.add_side_routes(app, state)
    return app, state


def new_credentials() -> dict:
    """The double's credentials: SigV4 keys and a Bedrock API key."""
    rnd = random.Random(7)
    secret = "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+")
                     for _ in range(40))
    return {"access_key_id": ACCESS_KEY_ID, "secret_access_key": secret,
            "api_key": "bedrock-api-key-upstream-5e1f"}


def encode_fixture(events_json: str) -> bytes:
    """The binary stream of a fixture's events (`[[headers, payload], ...]`), framed as
    the double frames its own streams."""
    with open(events_json, encoding="utf-8") as f:
        events = json.load(f)
    return b"".join(frame(headers, json.dumps(payload, separators=(",", ":"),
                                              ensure_ascii=False).encode())
                    for headers, payload in events)


if __name__ == "__main__":
    # Regenerate the core's binary Bedrock fixtures from their JSON descriptions:
    #   cd tests && ../.venv/bin/python -m doubles.bedrock_double ../filter/core/tests/fixtures/bedrock/*.events.json
    import sys

    for path in sys.argv[1:]:
        out = path.replace(".events.json", ".eventstream")
        with open(out, "wb") as f:
            f.write(encode_fixture(path))
        print(f"wrote {out}")
