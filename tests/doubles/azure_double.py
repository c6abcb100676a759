"""Azure OpenAI double: `POST /openai/deployments/{deployment}/chat/completions?api-version=...`
with an `api-key` header. Bodies and answers are OpenAI's (the OpenAI double's renderers), plus
Azure's differences: the deployment (not the body's `model`) picks the model, an `api-version`
is required, unknown request arguments are refused, a stream starts with a chunk carrying
`prompt_filter_results` and no choices, every choice carries `content_filter_results`, and
errors have Azure's shape (`{"error":{"code":"429","message":...}}`).

Wire format: https://learn.microsoft.com/en-us/azure/ai-foundry/openai/reference (2024-10-21),
content filtering: https://learn.microsoft.com/en-us/azure/ai-foundry/openai/concepts/content-filter
(see README.md).
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from . import common, openai_double
from .common import DoubleState, Reply

PROVIDER = "azure"
API_VERSIONS = {"2024-06-01", "2024-10-21", "2025-01-01-preview", "2025-04-01-preview"}
CHAT_ARGUMENTS = {
    "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "user", "functions", "function_call", "data_sources", "store",
    "metadata", "reasoning_effort", "prediction", "audio", "modalities", "user_security_context",
}
SAFE = {"hate": {"filtered": False, "severity": "safe"},
        "self_harm": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "safe"},
        "violence": {"filtered": False, "severity": "safe"}}


def azure_error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return common.json_response({"error": {"code": code, "message": message}}, status, headers)


def error_for_status(status: int, retry_after=None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if status == 429:
        return azure_error(429, "429", "Requests to the ChatCompletions_Create Operation under "
                           "Azure OpenAI API version 2024-10-21 have exceeded token rate limit of "
                           "your current OpenAI S0 pricing tier. Please retry after 2 seconds.",
                           headers)
    if status >= 500:
        return azure_error(status, "InternalServerError", "The server had an error while "
                           "processing your request. Sorry about that!", headers)
    return azure_error(status, str(status), f"error {status}", headers)


def content_filter_error() -> web.Response:
    return common.json_response({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
                   "content management policy. Please modify your prompt and retry.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            "hate": {"filtered": True, "severity": "high"}}}}}, 400)


def completion(model: str, reply: Reply, n: int = 1) -> dict:
    body = openai_double.completion(model, reply, n)
    body.pop("service_tier", None)
    for choice in body["choices"]:
        choice["content_filter_results"] = SAFE
    body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": SAFE}]
    return body


def stream_events(model: str, reply: Reply, include_usage: bool):
    # Azure's first chunk reports the prompt filter and has no choices.
    yield "data: " + json.dumps({
        "choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": SAFE}]}) + "\n\n"
    for raw in openai_double.stream_events(model, reply, include_usage):
        data = raw[len("data: "):].strip()
        if data == "[DONE]":
            yield raw
            continue
        chunk = json.loads(data)
        chunk.pop("service_tier", None)
        for choice in chunk["choices"]:
            choice["content_filter_results"] = {} if choice["finish_reason"] else SAFE
        yield "data: " + json.dumps(chunk) + "\n\n"


class AzureDouble:
    def __init__(self, api_key: str, state: DoubleState) -> None:
        self.api_key = api_key
        self.state = state

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.state.record(request, raw)
        if request.query.get("api-version") not in API_VERSIONS:
            return azure_error(404, "404", "Resource not found")
        if request.headers.get("api-key") != self.api_key:
            return azure_error(401, "401", "Access denied due to invalid subscription key or "
                               "wrong API endpoint. Make sure to provide a valid key for an "
                               "active subscription and use a correct regional API endpoint "
                               "for your resource.")
        deployment = request.match_info["deployment"]
        if deployment.startswith("missing"):
            return azure_error(404, "DeploymentNotFound", "The API deployment for this resource "
                               "does not exist. If you created the deployment within the last "
                               "5 minutes, please wait a moment and try again.")
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return azure_error(400, "BadRequest", "Failed to parse the request body as JSON.")
        unknown = sorted(set(body) - CHAT_ARGUMENTS)
        if unknown:
            return azure_error(400, "BadRequest",
                               f"Unrecognized request argument supplied: {unknown[0]}")
        if not body.get("messages"):
            return azure_error(400, "BadRequest", "'messages' is a required property")
        conv = openai_double.conversation(body)
        # The deployment, not the body, names the model.
        conv.model = deployment
        fault = common.parse_fault_marker(conv.last_user_text) or self.state.next_fault(request.path)
        if fault:
            if fault["kind"] == "status":
                return error_for_status(int(fault.get("status", 500)), fault.get("retry_after"))
            if fault["kind"] == "content_filter":
                return content_filter_error()
            if fault["kind"] == "hang":
                await common.hang(fault)
            if fault["kind"] == "close_headers":
                return await common.close_mid_headers(request)
        reply = common.plan_reply(PROVIDER, conv)
        entry["response"] = {"usage": reply.usage.__dict__, "text": reply.text,
                             "tool_calls": [c.__dict__ for c in reply.tool_calls]}
        model = f"{deployment}-2024-07-18"
        if not body.get("stream"):
            return common.json_response(completion(model, reply, int(body.get("n") or 1)),
                                        headers={"apim-request-id": common.new_id(""),
                                                 "x-ms-region": "East US"})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        s = common.Stream(request, fault, common.sse_headers({"x-ms-region": "East US",
                                                               "date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}))
        return await common.run_stream(s, stream_events(model, reply, include_usage))


def make_app(api_key: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    AzureDouble(api_key, state).routes(app)
    common.add_side_routes(app, state)
    return app, state
