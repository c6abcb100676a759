#!/usr/bin/env python3
"""The task plane under a burst (#15): thousands of clients submit `POST /v1/tasks` at once
through the edge (Envoy + filter.wasm by default), each naming a webhook; the task plane in a
real `gpu-backend` (SQLite store) runs every task against the OpenAI double and delivers a
Standard Webhooks message to a receiver in this process, which verifies each signature with
the reference implementation (`standardwebhooks`).

With `--kill-after N` the backend is killed with SIGKILL once N submits were accepted, and
started again on the same store and port. Clients do what a production client does with an
`Idempotency-Key`: a submit that failed in transport or got a 5xx is sent again with the same
key (those retries are counted), so a submit that was stored before the crash but never
answered is not duplicated.

The run prints, as Markdown: accepted (202) and failed submits, retries, tasks finished and
how, webhooks received / verified / duplicates (same `webhook-id`) / missing, the time until
the last 202 and until the last webhook, and the RSS of the task plane and of the edge
(before / peak / after). It exits non-zero unless every client got its 202, no task was
duplicated, and every task's webhook arrived and verified.

    .venv/bin/python tests/bench/tasks_load.py [--host envoy] [--tasks 5000] [--kill-after 2500]

Not part of `./switchyard test`; the kill -9 case in small is
`tests/e2e/test_tasks_durability.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "bench"))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from standardwebhooks import Webhook, WebhookVerificationError  # noqa: E402

from e2e.control_plane import ControlPlane  # noqa: E402
from e2e.gateway_config import KEY_ALL  # noqa: E402
from e2e.task_plane import start_task_edge, start_task_plane  # noqa: E402
from spike import DoublesProcess, rss_kib  # noqa: E402

MODEL = "gpt-4o-mini"


@dataclass
class Receiver:
    """Webhook receiver: verifies each delivery as it arrives, keeps ids only."""

    secret: str = ""
    by_task: dict[str, set[str]] = field(default_factory=dict)
    deliveries: int = 0
    forged: int = 0
    last_at: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries += 1
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.forged += 1
            return web.Response(status=400)
        self.by_task.setdefault(payload["data"]["id"], set()).add(request.headers["webhook-id"])
        self.last_at = time.monotonic()
        return web.Response(status=204)


@dataclass
class Submit:
    status: int = 0
    task_id: str = ""
    retries: int = 0
    error: str = ""
    first_error: str = ""


async def submit(session: aiohttp.ClientSession, url: str, hook: str, i: int,
                 accepted: list[int]) -> Submit:
    out = Submit()
    idem = f"load-{i}-{uuid.uuid4().hex}"
    body = {"model": MODEL, "webhook": hook,
            "input": {"messages": [{"role": "user", "content": f"load {i}"}]}}
    headers = {"authorization": f"Bearer {KEY_ALL}", "idempotency-key": idem}
    deadline = time.monotonic() + 300
    while True:
        try:
            async with session.post(url, json=body, headers=headers) as r:
                out.status = r.status
                raw = await r.read()
            if r.status == 202:
                out.task_id = json.loads(raw)["id"]
                accepted[0] += 1
                return out
            out.error = raw[:200].decode(errors="replace")
            if r.status < 500:
                return out  # a refusal is final: retrying would not change it
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            out.status, out.error = 0, f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            return out
        out.first_error = out.first_error or f"{out.status} {out.error}"[:160]
        out.retries += 1
        await asyncio.sleep(0.2)


@dataclass
class Run:
    submits: list[Submit]
    receiver: Receiver
    started: float
    all_accepted_at: float
    rss: dict[str, tuple[int, int, int]]
    finished: dict[str, int]
    killed: bool


async def drive(edge_url: str, n: int, kill_after: int, plane: ControlPlane,
                receiver: Receiver, timeout_s: float) -> tuple[list[Submit], float, float, bool]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 — aiohttp has no accessor
    hook = f"http://127.0.0.1:{port}/hook"

    accepted = [0]
    killed = False

    async def killer() -> None:
        nonlocal killed
        while accepted[0] < kill_after:
            await asyncio.sleep(0.01)
        plane.kill()
        killed = True
        await asyncio.to_thread(plane.start)

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        kill_task = asyncio.create_task(killer()) if kill_after else None
        submits = await asyncio.gather(*(submit(session, edge_url + "/v1/tasks", hook, i,
                                                accepted) for i in range(n)))
        all_accepted_at = time.monotonic()
        if kill_task:
            await kill_task
    ids = {s.task_id for s in submits if s.task_id}
    deadline = time.monotonic() + timeout_s
    while not ids <= set(receiver.by_task) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # late duplicates, if any, are counted too
    await runner.cleanup()
    return submits, started, all_accepted_at, killed


def run(host_name: str, n: int, kill_after: int, workdir: Path, timeout_s: float) -> Run:
    doubles = DoublesProcess()
    plane = host = None
    try:
        plane = start_task_plane(doubles, workdir, "--task-lease-ms", "3000",
                                 "--webhook-retry-base-ms", "200", "--webhook-retry-max-ms",
                                 "2000", "--webhook-max-attempts", "50")
        host = start_task_edge(host_name, plane, doubles, workdir / "edge",
                               call_timeout_ms=30000)
        secret = json_get(host.base_url + "/v1/webhook-settings")["secret"]
        receiver = Receiver(secret=secret)

        pids = {"task plane": lambda: plane.proc.pid, host_name: lambda: host.proc.pid}
        rss = {k: [rss_kib(p()), rss_kib(p()), 0] for k, p in pids.items()}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                for k, p in pids.items():
                    rss[k][1] = max(rss[k][1], rss_kib(p()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        submits, started, all_accepted_at, killed = asyncio.run(
            drive(host.base_url, n, kill_after, plane, receiver, timeout_s))
        stop.set()
        sampler.join()
        for k, p in pids.items():
            rss[k][2] = rss_kib(p())
        finished: dict[str, int] = {}
        for s in submits:
            if s.task_id and s.task_id not in receiver.by_task:
                state = json_get(f"{host.base_url}/v1/tasks/{s.task_id}")["status"]
                finished[state] = finished.get(state, 0) + 1
        return Run(submits, receiver, started, all_accepted_at,
                   {k: tuple(v) for k, v in rss.items()}, finished, killed)
    finally:
        if host:
            host.stop()
        if plane:
            plane.stop()
        doubles.stop()


def json_get(url: str) -> dict:
    import httpx
    r = httpx.get(url, headers={"authorization": f"Bearer {KEY_ALL}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def markdown(host_name: str, n: int, r: Run) -> tuple[str, bool]:
    accepted = [s for s in r.submits if s.status == 202]
    ids = [s.task_id for s in accepted]
    duplicated_tasks = len(ids) - len(set(ids))
    got = r.receiver.by_task
    missing = [i for i in ids if i not in got]
    duplicate_hooks = sum(len(v) - 1 for v in got.values())
    last = (r.receiver.last_at - r.started) if r.receiver.last_at else float("nan")
    rows = [
        ("edge", f"{host_name} + filter.wasm"),
        ("clients (concurrent submits)", n),
        ("backend killed (SIGKILL) and restarted mid-run", "yes" if r.killed else "no"),
        ("202 Accepted", len(accepted)),
        ("submits failed for good", n - len(accepted)),
        ("submits retried with the same Idempotency-Key", sum(s.retries for s in r.submits)),
        ("clients that retried", sum(1 for s in r.submits if s.retries)),
        ("tasks duplicated", duplicated_tasks),
        ("webhooks received / verified", f"{r.receiver.deliveries} / "
                                         f"{r.receiver.deliveries - r.receiver.forged}"),
        ("tasks whose webhook arrived", f"{len(ids) - len(missing)} of {len(ids)}"),
        ("same message delivered twice (same webhook-id)",
         r.receiver.deliveries - r.receiver.forged - len(got) - duplicate_hooks),
        ("two messages for one task (different webhook-ids)", duplicate_hooks),
        ("tasks without a webhook, by state", json.dumps(r.finished) if r.finished else "none"),
        ("time until the last 202", f"{r.all_accepted_at - r.started:.1f} s"),
        ("time until the last webhook", f"{last:.1f} s"),
    ]
    for name, (before, peak, after) in r.rss.items():
        rows.append((f"RSS {name} before / peak / after",
                     f"{before // 1024} / {peak // 1024} / {after // 1024} MiB"))
    ok = (len(accepted) == n and duplicated_tasks == 0 and not missing
          and r.receiver.forged == 0 and duplicate_hooks == 0)
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="envoy", choices=["envoy", "host-runner"])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--kill-after", type=int, default=0,
                        help="SIGKILL the backend once this many submits were accepted")
    parser.add_argument("--timeout-s", type=float, default=600,
                        help="how long to wait for the webhooks after the last 202")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tasks-load-") as tmp:
        (Path(tmp) / "edge").mkdir()
        r = run(args.host, args.tasks, args.kill_after, Path(tmp), args.timeout_s)
        table, ok = markdown(args.host, args.tasks, r)
        print(table)
        for s in [s for s in r.submits if s.status != 202][:5]:
            print(f"  e.g. {s}", file=sys.stderr)
        why: dict[str, int] = {}
        for s in r.submits:
            if s.first_error:
                why[s.first_error] = why.get(s.first_error, 0) + 1
        for text, count in sorted(why.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  retried after {count}×: {text}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
