"""WaveSpeedAI double: `POST /api/v3/{model}` (optionally `?webhook=`), `GET
/api/v3/predictions/{id}/result`. Every answer is HTTP 200 with a `{code, message, data}`
envelope (a failed task too: `data.status: "failed"`, `data.error`); a bad key is HTTP 401
with `code: 401`. Webhooks carry the prediction itself, signed `webhook-signature:
v3,<hex HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.{body}` keyed with the
secret's text after `whsec_` (not base64-decoded). Credential: `Authorization: Bearer`.

Wire format: https://wavespeed.ai/docs/docs-api/submit-task ,
https://wavespeed.ai/docs/docs-api/get-result ,
https://wavespeed.ai/docs/docs-api/verifying_webhook .
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from aiohttp import web

from .async_tasks import Job, JobStore, bearer_ok, make_base_app
from .common import DoubleState, new_id

PROVIDER = "wavespeed"
WEBHOOK_SECRET = "whsec_wavespeed-double-4f1c9a"
STATES = {"queued": "created", "running": "processing", "succeeded": "completed",
          "failed": "failed", "canceled": "failed"}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = secret.removeprefix("whsec_").encode()
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v3," + hmac.new(key, content, hashlib.sha256).hexdigest()


def prediction(job: Job) -> dict:
    return {"id": job.id, "model": job.model, "input": job.input, "outputs": job.outputs(),
            "urls": {"get": f"{job.base_url}/api/v3/predictions/{job.id}/result"},
            "has_nsfw_contents": [False for _ in job.outputs()],
            "status": STATES[job.state],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(job.created)),
            "error": "prompt violates the content policy" if job.state == "failed" else "",
            "timings": {"inference": 1200 if job.state == "succeeded" else 0}}


def envelope(data: dict | None, code: int = 200, message: str = "success",
             status: int = 200) -> web.Response:
    return web.json_response({"code": code, "message": message, "data": data}, status=status)


def webhook(job: Job, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
            ) -> tuple[bytes, dict]:
    body = json.dumps(prediction(job)).encode()
    msg_id = new_id("")
    ts = int(time.time()) if timestamp is None else timestamp
    return body, {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                  "webhook-signature": sign(secret, msg_id, ts, body)}


def make_app(api_key: str):
    state = DoubleState()
    store = JobStore(PROVIDER)
    app = make_base_app(state, store)

    async def submit(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return envelope(None, 401, "Unauthorized: invalid API key", status=401)
        try:
            body = await request.json()
        except ValueError:
            return envelope(None, 400, "invalid JSON body")
        if not isinstance(body, dict) or not body.get("prompt"):
            return envelope(None, 400, "prompt is required")
        job = store.submit(request, request.match_info["model"], body,
                           request.query.get("webhook"))
        store.send_later(job, webhook)
        answer = prediction(job)
        if job.sends_webhook:  # the submit answer shows the job as created
            answer.update(status="created", outputs=[], error="", has_nsfw_contents=[])
        return envelope(answer)

    async def result(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return envelope(None, 401, "Unauthorized: invalid API key", status=401)
        job = store.get(request.match_info["id"])
        if job is None:
            return envelope(None, 404, "prediction not found")
        job.poll()
        return envelope(prediction(job))

    app.router.add_get("/api/v3/predictions/{id}/result", result)
    app.router.add_post("/api/v3/{model:.+}", submit)
    return app, state
