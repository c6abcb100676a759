"""DashScope asynchronous-task double (Wan / Qwen-Image): `POST
/api/v1/services/aigc/text2image/image-synthesis` and `.../video-generation/video-synthesis`
with `X-DashScope-Async: enable` (required: without it DashScope answers 403
`AccessDenied` "current user api does not support synchronous calls"), `GET
/api/v1/tasks/{task_id}`, `POST /api/v1/tasks/{task_id}/cancel` (PENDING only). States
`PENDING | RUNNING | SUCCEEDED | FAILED | CANCELED | UNKNOWN` (an id it never issued is
`UNKNOWN`). No webhooks. Credential: `Authorization: Bearer`.

Wire format: https://www.alibabacloud.com/help/en/model-studio/text-to-image-v2-api-reference ,
https://www.alibabacloud.com/help/en/model-studio/text-to-video-api-reference ,
errors: https://www.alibabacloud.com/help/en/model-studio/error-code .
"""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from .async_tasks import Job, JobStore, bearer_ok, make_base_app
from .common import DoubleState
from .dashscope_double import ds_error

PROVIDER = "dashscope_tasks"
STATES = {"queued": "PENDING", "running": "RUNNING", "succeeded": "SUCCEEDED",
          "failed": "FAILED", "canceled": "CANCELED"}
STAMP = "%Y-%m-%d %H:%M:%S.000"


def task_body(job: Job) -> dict:
    output: dict = {"task_id": job.id, "task_status": STATES[job.state],
                    "submit_time": time.strftime(STAMP, time.gmtime(job.created))}
    body: dict = {"request_id": str(uuid.uuid4()), "output": output}
    if job.state == "failed":
        output.update(code="DataInspectionFailed",
                      message="Output data may contain inappropriate content.")
    elif job.state == "succeeded":
        urls = job.outputs()
        output["end_time"] = time.strftime(STAMP, time.gmtime())
        if job.is_video:
            output["video_url"] = urls[0]
            seconds = (job.input.get("parameters") or {}).get("duration", 5)
            body["usage"] = {"video_count": 1, "video_duration": seconds,
                             "video_ratio": "1280*720"}
        else:
            output["results"] = [{"orig_prompt": job.prompt, "actual_prompt": job.prompt,
                                  "url": u} for u in urls]
            output["task_metrics"] = {"TOTAL": len(urls), "SUCCEEDED": len(urls), "FAILED": 0}
            body["usage"] = {"image_count": len(urls)}
    return body


def make_app(api_key: str):
    state = DoubleState()
    store = JobStore(PROVIDER, lambda: str(uuid.uuid4()))
    app = make_base_app(state, store)

    def error(status: int, message: str | None = None, code: str | None = None):
        return web.json_response(ds_error(status, message, code), status=status)

    async def submit(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return error(401)
        if request.headers.get("X-DashScope-Async", "").lower() != "enable":
            return error(403, "current user api does not support synchronous calls",
                         "AccessDenied")
        try:
            body = await request.json()
        except ValueError:
            return error(400)
        if not isinstance(body, dict) or not body.get("model") or \
                not isinstance(body.get("input"), dict) or not body["input"].get("prompt"):
            return error(400, "Field required: input.prompt")
        input = dict(body["input"], parameters=body.get("parameters") or {})
        job = store.submit(request, body["model"], input, None)
        return web.json_response({"output": {"task_status": "PENDING", "task_id": job.id},
                                  "request_id": str(uuid.uuid4())})

    async def get(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return error(401)
        job = store.get(request.match_info["id"])
        if job is None:
            return web.json_response({"request_id": str(uuid.uuid4()), "output": {
                "task_id": request.match_info["id"], "task_status": "UNKNOWN"}})
        job.poll()
        return web.json_response(task_body(job))

    async def cancel(request: web.Request) -> web.Response:
        if not bearer_ok(request, api_key):
            return error(401)
        job = store.get(request.match_info["id"])
        if job is None or job.state != "queued":
            return error(400, "The task status is not PENDING and cannot be canceled.",
                         "UnsupportedOperation")
        job.state = "canceled"
        return web.json_response({"request_id": str(uuid.uuid4())})

    for path in ("/api/v1/services/aigc/text2image/image-synthesis",
                 "/api/v1/services/aigc/video-generation/video-synthesis"):
        app.router.add_post(path, submit)
    app.router.add_get("/api/v1/tasks/{id}", get)
    app.router.add_post("/api/v1/tasks/{id}/cancel", cancel)
    return app, state
