"""Replicate double: `POST /v1/models/{owner}/{name}/predictions`, `POST /v1/predictions`
(with `version`), `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`,
`GET /v1/webhooks/default/secret`. Creates answer **201**; states `starting | processing |
succeeded | failed | canceled`; webhooks (`webhook`, `webhook_events_filter`) carry the
prediction, signed per Standard Webhooks with the reference `standardwebhooks` library.
Credential: `Authorization: Bearer`; a bad token is 401 `{"title","detail","status"}`.

Wire format: https://replicate.com/docs/reference/http#predictions.create ,
https://replicate.com/docs/topics/predictions/lifecycle ,
https://replicate.com/docs/topics/webhooks/verify-webhook .
"""

from __future__ import annotations

import datetime
import json
import time

from aiohttp import web
from standardwebhooks import Webhook

from .async_tasks import Job, JobStore, bearer_ok, make_base_app
from .common import DoubleState, new_id

PROVIDER = "replicate"
# A Standard Webhooks secret: `whsec_` + base64 of the key.
WEBHOOK_SECRET = "whsec_cmVwbGljYXRlLWRvdWJsZS13ZWJob29rLWtleQ=="
STATES = {"queued": "starting", "running": "processing", "succeeded": "succeeded",
          "failed": "failed", "canceled": "canceled"}


def problem(status: int, title: str, detail: str) -> web.Response:
    return web.json_response({"title": title, "detail": detail, "status": status}, status=status)


def prediction(job: Job) -> dict:
    outputs = job.outputs()
    base = f"{job.base_url}/v1/predictions/{job.id}"
    body = {"id": job.id, "model": job.model.split(":")[0], "version": job.model.split(":")[-1],
            "input": job.input, "logs": "", "data_removed": False,
            "output": (outputs[0] if job.is_video else outputs) if outputs else None,
            "error": "NSFW content detected. Try running it again, or try a different prompt."
            if job.state == "failed" else None,
            "status": STATES[job.state],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(job.created)),
            "urls": {"get": base, "cancel": f"{base}/cancel"}}
    if job.state == "succeeded":
        body["metrics"] = {"predict_time": 1.2, "total_time": 1.3}
    return body


def webhook(job: Job, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
            ) -> tuple[bytes, dict]:
    payload = json.dumps(prediction(job))
    msg_id = new_id("msg_")
    ts = datetime.datetime.fromtimestamp(int(time.time()) if timestamp is None else timestamp,
                                         tz=datetime.timezone.utc)
    signature = Webhook(secret).sign(msg_id, ts, payload)
    return payload.encode(), {"webhook-id": msg_id,
                              "webhook-timestamp": str(int(ts.timestamp())),
                              "webhook-signature": signature}


def make_app(api_key: str):
    state = DoubleState()
    store = JobStore(PROVIDER, lambda: new_id("")[:26].lower())
    app = make_base_app(state, store)

    def unauthorized() -> web.Response:
        return problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    async def create(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return unauthorized()
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "Invalid JSON", "The request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return problem(422, "Input validation failed", "input is required")
        if "owner" in request.match_info:
            model = f"{request.match_info['owner']}/{request.match_info['name']}"
        elif body.get("version"):
            model = f"unknown/model:{body['version']}"
        else:
            return problem(422, "Input validation failed", "version is required")
        job = store.submit(request, model, body["input"], body.get("webhook"))
        answer = prediction(job)
        store.send_later(job, webhook)
        return web.json_response(answer, status=201)

    async def get(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return unauthorized()
        job = store.get(request.match_info["id"])
        if job is None:
            return problem(404, "Not found", "The requested resource could not be found.")
        job.poll()
        return web.json_response(prediction(job))

    async def cancel(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return unauthorized()
        job = store.get(request.match_info["id"])
        if job is None:
            return problem(404, "Not found", "The requested resource could not be found.")
        if job.state in ("queued", "running"):
            job.state = "canceled"
        return web.json_response(prediction(job))

    async def secret(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return unauthorized()
        return web.json_response({"key": WEBHOOK_SECRET})

    app.router.add_post("/v1/models/{owner}/{name}/predictions", create)
    app.router.add_post("/v1/predictions", create)
    app.router.add_get("/v1/predictions/{id}", get)
    app.router.add_post("/v1/predictions/{id}/cancel", cancel)
    app.router.add_get("/v1/webhooks/default/secret", secret)
    return app, state
