"""Google Veo double (Gemini API long-running operations): `POST
/v1beta/models/{model}:predictLongRunning` (`instances[0].prompt`, `parameters`) answers
`{"name": "models/{model}/operations/{id}"}`; `GET /v1beta/models/{model}/operations/{id}`
answers the operation, `done: true` at the end with either
`response.generateVideoResponse.generatedSamples[].video.uri` or, for a prompt the safety
filters stop, `raiMediaFilteredCount` / `raiMediaFilteredReasons`; `POST
/v1beta/{name}:cancel`. No webhooks. Credential: `x-goog-api-key` (errors as the Gemini
double's: no key 403 `PERMISSION_DENIED`, wrong key 400 `API_KEY_INVALID`).

Wire format: https://ai.google.dev/gemini-api/docs/video ,
https://ai.google.dev/api/models#method:-models.predictlongrunning .
"""

from __future__ import annotations

import uuid

from aiohttp import web

from .async_tasks import Job, JobStore, make_base_app
from .common import DoubleState

PROVIDER = "veo"
TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"


def google_error(status: int, message: str, state: str, reason: str | None = None):
    error: dict = {"code": status, "message": message, "status": state}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": reason, "domain": "googleapis.com"}]
    return web.json_response({"error": error}, status=status)


def operation(job: Job) -> dict:
    name = f"models/{job.model}/operations/{job.id}"
    if job.state in ("queued", "running"):
        return {"name": name, "done": False} if job.state == "queued" else \
            {"name": name, "done": False, "metadata": {}}
    if job.state == "canceled":
        return {"name": name, "done": True, "error": {"code": 1, "message": "CANCELLED"}}
    if job.state == "failed":
        response = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [
            "Unable to generate videos because the prompt violates the usage guidelines."]}
    else:
        response = {"generatedSamples": [{"video": {"uri": u}} for u in job.outputs()]}
    return {"name": name, "done": True,
            "response": {"@type": TYPE, "generateVideoResponse": response}}


def make_app(api_key: str):
    state = DoubleState()
    store = JobStore(PROVIDER, lambda: uuid.uuid4().hex[:12])
    app = make_base_app(state, store)

    def auth(request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return google_error(403, "Method doesn't allow unregistered callers.",
                                "PERMISSION_DENIED")
        if key != api_key:
            return google_error(400, "API key not valid. Please pass a valid API key.",
                                "INVALID_ARGUMENT", "API_KEY_INVALID")
        return None

    async def predict(request: web.Request) -> web.Response:
        if (denied := auth(request)) is not None:
            return denied
        try:
            body = await request.json()
            instance = body["instances"][0]
            assert isinstance(instance, dict) and instance.get("prompt")
        except (ValueError, KeyError, IndexError, TypeError, AssertionError):
            return google_error(400, "* instances[0].prompt: field required",
                                "INVALID_ARGUMENT")
        input = dict(instance, parameters=body.get("parameters") or {})
        job = store.submit(request, request.match_info["model"], input, None)
        return web.json_response({"name": f"models/{job.model}/operations/{job.id}"})

    def job_of(request: web.Request) -> Job | None:
        job = store.get(request.match_info["id"])
        return job if job is not None and job.model == request.match_info["model"] else None

    async def get(request: web.Request) -> web.Response:
        if (denied := auth(request)) is not None:
            return denied
        job = job_of(request)
        if job is None:
            return google_error(404, "Operation not found", "NOT_FOUND")
        job.poll()
        return web.json_response(operation(job))

    async def cancel(request: web.Request) -> web.Response:
        if (denied := auth(request)) is not None:
            return denied
        job = job_of(request)
        if job is None:
            return google_error(404, "Operation not found", "NOT_FOUND")
        if job.state in ("queued", "running"):
            job.state = "canceled"
        return web.json_response({})

    app.router.add_post("/v1beta/models/{model}:predictLongRunning", predict)
    app.router.add_get("/v1beta/models/{model}/operations/{id}", get)
    app.router.add_post("/v1beta/models/{model}/operations/{id}:cancel", cancel)
    return app, state
