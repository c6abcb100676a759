"""The shared engine of the asynchronous media doubles (WaveSpeed, Replicate, fal, DashScope
tasks, Veo): a job store whose jobs advance deterministically, output files served by the
double itself, and webhook delivery. Each provider's module speaks its own wire format and
signature scheme on top of it.

A job's course is chosen by markers in its input's `prompt`:
- none: the first poll sees it running, the second sees it succeeded; a job submitted with a
  webhook URL is finished at once and its webhook sent right after the submit is answered;
- `[[async:fail]]`: the same course, ending failed with the provider's error;
  `[[async:fail:{provider}]]` fails on that provider only (e.g. `wavespeed`), so a fallback
  to another provider with the same input succeeds;
- `[[async:never]]`: running for ever, no webhook (the deadline's test);
- `[[async:nohook]]`: no webhook even when one was asked for (the polling path).
Outputs are `{base}/files/{job}/{n}.png` (or one `.mp4` for video models), `n` from the
input's `num_images` / `n` / `num_outputs` (1 by default). `GET /_webhooks` lists the
deliveries made (url, job id, status) for the tests.
"""

from __future__ import annotations

import asyncio
import secrets as _secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from .common import DoubleState, add_side_routes

VIDEO_MARKERS = ("video", "t2v", "i2v", "veo")
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@dataclass
class Job:
    id: str
    model: str
    input: dict
    webhook: str | None
    base_url: str
    provider: str = ""
    state: str = "queued"  # queued | running | succeeded | failed | canceled
    polls: int = 0
    created: float = field(default_factory=time.time)

    @property
    def prompt(self) -> str:
        return str(self.input.get("prompt", ""))

    @property
    def never(self) -> bool:
        return "[[async:never]]" in self.prompt

    @property
    def fails(self) -> bool:
        return ("[[async:fail]]" in self.prompt
                or f"[[async:fail:{self.provider}]]" in self.prompt)

    @property
    def sends_webhook(self) -> bool:
        return bool(self.webhook) and not self.never and "[[async:nohook]]" not in self.prompt

    @property
    def is_video(self) -> bool:
        return any(m in self.model.lower() for m in VIDEO_MARKERS)

    def outputs(self) -> list[str]:
        if self.state != "succeeded":
            return []
        if self.is_video:
            return [f"{self.base_url}/files/{self.id}/0.mp4"]
        params = self.input.get("parameters") or {}
        n = int(self.input.get("num_images") or self.input.get("n") or
                self.input.get("num_outputs") or params.get("n") or 1)
        return [f"{self.base_url}/files/{self.id}/{i}.png" for i in range(n)]

    def finish(self) -> None:
        if self.state in ("queued", "running"):
            self.state = "failed" if self.fails else "succeeded"

    def poll(self) -> None:
        """One poll's worth of progress."""
        if self.state not in ("queued", "running"):
            return
        self.polls += 1
        if self.never or self.polls < 2:
            self.state = "running"
        else:
            self.finish()


class JobStore:
    def __init__(self, provider: str, id_fn: Callable[[], str] | None = None) -> None:
        self.provider = provider
        self.jobs: dict[str, Job] = {}
        self.deliveries: list[dict] = []
        self.id_fn = id_fn or (lambda: _secrets.token_hex(16))

    def submit(self, request: web.Request, model: str, input: dict,
               webhook: str | None) -> Job:
        base = f"{request.scheme}://{request.host}"
        job = Job(self.id_fn(), model, input if isinstance(input, dict) else {}, webhook, base,
                  self.provider)
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def send_later(self, job: Job, make: Callable[[Job], tuple[bytes, dict]]) -> None:
        """Finishes a webhook job and delivers its webhook once the submit has been answered."""
        if not job.sends_webhook:
            return
        job.finish()

        async def deliver() -> None:
            await asyncio.sleep(0.05)
            body, headers = make(job)
            await self.deliver(job.webhook or "", body, headers, job.id)

        asyncio.get_running_loop().create_task(deliver())

    async def deliver(self, url: str, body: bytes, headers: dict, job_id: str = "") -> None:
        entry: dict[str, Any] = {"url": url, "job": job_id, "status": None, "error": None}
        self.deliveries.append(entry)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(url, data=body, headers={
                        "content-type": "application/json", **headers},
                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    entry["status"] = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            entry["error"] = str(err)


def bearer_ok(request: web.Request, api_key: str, scheme: str = "Bearer") -> bool:
    return request.headers.get("Authorization", "") == f"{scheme} {api_key}"


def make_base_app(state: DoubleState, store: JobStore,
                  error_fn: Callable[[int], dict] | None = None) -> web.Application:
    """An app with the side routes, the job files and `GET /_webhooks`."""
    @web.middleware
    async def record(request: web.Request, handler) -> web.StreamResponse:
        if not request.path.startswith(("/_", "/files/")):
            entry = state.record(request, await request.read())
            response = await handler(request)
            entry["response"] = getattr(response, "status", None)
            return response
        return await handler(request)

    app = web.Application(middlewares=[record])
    add_side_routes(app, state)

    async def files(request: web.Request) -> web.Response:
        job = store.get(request.match_info["job"])
        if job is None or job.state != "succeeded":
            return web.Response(status=404)
        if request.match_info["name"].endswith(".mp4"):
            return web.Response(body=b"\x00\x00\x00\x18ftypmp42", content_type="video/mp4")
        return web.Response(body=PNG_1X1, content_type="image/png")

    async def webhooks(_: web.Request) -> web.Response:
        return web.json_response(store.deliveries)

    app.router.add_get("/files/{job}/{name}", files)
    app.router.add_get("/_webhooks", webhooks)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
