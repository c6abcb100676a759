"""fal queue double: `POST /{model}` (optionally `?fal_webhook=`), `GET
/{app}/requests/{id}/status` (**202** with `IN_QUEUE` / `IN_PROGRESS`, 200 with `COMPLETED`),
`GET /{app}/requests/{id}` (the model's output; a failed request answers 422 with
`{"detail": [...]}`), `PUT /{app}/requests/{id}/cancel`, and the webhook keys at
`GET /.well-known/jwks.json`. `{app}` is the model's first two path segments. Webhooks send
`{request_id, gateway_request_id, status: "OK" | "ERROR", payload, error}`, signed with
Ed25519 over `request_id \\n user_id \\n timestamp \\n hex(sha256(body))` in
`X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp`, `-Signature` (hex).
Credential: `Authorization: Key`; a bad key is 401 `{"detail": ...}`.

Wire format: https://docs.fal.ai/model-endpoints/queue ,
https://docs.fal.ai/model-endpoints/webhooks (verification: JWKS at
https://rest.alpha.fal.ai/.well-known/jwks.json, `x` base64url Ed25519 keys).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .async_tasks import Job, JobStore, bearer_ok, make_base_app
from .common import DoubleState

PROVIDER = "fal"
USER_ID = "github|switchyard-double"
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fal double key").digest())
FAILED_DETAIL = [{"loc": ["body", "prompt"], "msg": "the prompt was flagged",
                  "type": "value_error"}]


def jwks(key: Ed25519PrivateKey = SIGNING_KEY) -> dict:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).decode()  # fal's live JWKS keeps the padding
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "fal-double-1",
                      "use": "sig", "alg": "EdDSA"}]}


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp,
                      hashlib.sha256(body).hexdigest()]).encode()


def app_of(model: str) -> str:
    return "/".join(model.strip("/").split("/")[:2])


def payload(job: Job) -> dict:
    urls = job.outputs()
    if job.is_video:
        return {"video": {"url": urls[0], "content_type": "video/mp4", "file_name": "out.mp4"}}
    return {"images": [{"url": u, "width": 1024, "height": 768, "content_type": "image/png"}
                       for u in urls],
            "timings": {"inference": 1.2}, "seed": 196619188014358660,
            "has_nsfw_concepts": [False for _ in urls], "prompt": job.prompt}


def webhook(job: Job, key: Ed25519PrivateKey = SIGNING_KEY, timestamp: int | None = None
            ) -> tuple[bytes, dict]:
    if job.state == "succeeded":
        hook = {"request_id": job.id, "gateway_request_id": job.id, "status": "OK",
                "payload": payload(job)}
    else:
        hook = {"request_id": job.id, "gateway_request_id": job.id, "status": "ERROR",
                "error": "Invalid status code: 422", "payload": {"detail": FAILED_DETAIL}}
    body = json.dumps(hook).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(signed_message(job.id, USER_ID, ts, body)).hex()
    return body, {"x-fal-webhook-request-id": job.id, "x-fal-webhook-user-id": USER_ID,
                  "x-fal-webhook-timestamp": ts, "x-fal-webhook-signature": signature}


def make_app(api_key: str):
    state = DoubleState()
    store = JobStore(PROVIDER, lambda: str(uuid.uuid4()))
    app = make_base_app(state, store)

    def unauthorized() -> web.Response:
        return web.json_response({"detail": "Invalid Key authorization header format or "
                                  "invalid key."}, status=401)

    def job_of(request: web.Request) -> Job | None:
        job = store.get(request.match_info["id"])
        if job is None or app_of(job.model) != request.match_info["app"]:
            return None
        return job

    def urls(job: Job) -> dict:
        base = f"{job.base_url}/{app_of(job.model)}/requests/{job.id}"
        return {"response_url": base, "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel"}

    async def submit(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key, "Key"):
            return unauthorized()
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"detail": "Invalid JSON body"}, status=422)
        if not isinstance(body, dict) or not body.get("prompt"):
            return web.json_response({"detail": [{"loc": ["body", "prompt"],
                                                  "msg": "field required",
                                                  "type": "value_error.missing"}]}, status=422)
        job = store.submit(request, request.match_info["model"], body,
                           request.query.get("fal_webhook"))
        store.send_later(job, webhook)
        return web.json_response({"request_id": job.id, "gateway_request_id": job.id,
                                  "status": "IN_QUEUE", "queue_position": 0, **urls(job)})

    async def status(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key, "Key"):
            return unauthorized()
        job = job_of(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        job.poll()
        if job.state == "queued":
            return web.json_response({"status": "IN_QUEUE", "queue_position": 0,
                                      **urls(job)}, status=202)
        if job.state == "running":
            return web.json_response({"status": "IN_PROGRESS", "logs": None, **urls(job)},
                                     status=202)
        return web.json_response({"status": "COMPLETED", "logs": None,
                                  "metrics": {"inference_time": 1.2}, **urls(job)})

    async def result(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key, "Key"):
            return unauthorized()
        job = job_of(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if job.state in ("queued", "running"):
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if job.state != "succeeded":
            return web.json_response({"detail": FAILED_DETAIL}, status=422)
        return web.json_response(payload(job))

    async def cancel(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key, "Key"):
            return unauthorized()
        job = job_of(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if job.state not in ("queued", "running"):
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        job.state = "canceled"
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def keys(_: web.Request) -> web.Response:
        return web.json_response(jwks())

    app.router.add_get("/.well-known/jwks.json", keys)
    app.router.add_get("/{app:[^/]+/[^/]+}/requests/{id}/status", status)
    app.router.add_put("/{app:[^/]+/[^/]+}/requests/{id}/cancel", cancel)
    app.router.add_get("/{app:[^/]+/[^/]+}/requests/{id}", result)
    app.router.add_post("/{model:.+}", submit)
    return app, state
