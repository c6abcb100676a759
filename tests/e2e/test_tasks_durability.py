"""`kill -9` of the backend in the middle of a task run loses nothing, on every host.

Tasks are submitted through the edge to the task plane in a real `gpu-backend` (SQLite store),
their provider calls held open by the double so they are mid-run, and the webhook receiver
refuses every delivery (503) so deliveries are pending too. Then the backend is killed with
SIGKILL — no shutdown code runs — and started again on the same store and port. Afterwards
every task ends (succeeded, or failed with a reason), each lands in the ledger exactly once,
and every task's webhook is delivered and verifies with the reference Standard Webhooks
implementation."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from . import paths
from .conftest import Gateway
from .task_plane import start_task_edge, start_task_plane
from .webhook_receiver import WebhookReceiver

TASKS = 12
HOLD_S = 3
LEASE_MS = 1500
FINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module", params=paths.selected_hosts())
def setup(request, doubles, tmp_path_factory):
    """Per host: its own task plane and store (so the ledger holds this host's tasks only),
    the edge in front of it, and a receiver."""
    name = request.param
    receiver = WebhookReceiver()
    plane = start_task_plane(
        doubles, Path(tmp_path_factory.mktemp(f"{name}-durable-plane")),
        "--webhook-retry-base-ms", "200", "--webhook-retry-max-ms", "1000",
        "--webhook-max-attempts", "100", "--task-lease-ms", str(LEASE_MS))
    host = start_task_edge(name, plane, doubles,
                           Path(tmp_path_factory.mktemp(f"{name}-durable-edge")))
    yield Gateway(host, doubles), plane, receiver
    host.stop()
    plane.stop()
    receiver.stop()


def statuses(edge: Gateway, ids: list[str]) -> dict[str, dict]:
    out = {}
    for task_id in ids:
        r = edge.get(f"/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        out[task_id] = r.json()
    return out


def test_kill_9_mid_run_loses_no_task_no_ledger_record_and_no_webhook(setup):
    edge, plane, receiver = setup
    receiver.answer_status = 503
    openai = edge.doubles["openai"]
    openai.cap(1000)  # counts the calls in flight
    hook = f"/hook/{edge.name}/durable"
    ids = []
    for i in range(TASKS):
        # Half are held at the provider (mid-run at the kill), half answer at once (their
        # webhooks are pending at the kill, refused by the receiver).
        hold = f" [[fault:hang,seconds={HOLD_S}]]" if i % 2 == 0 else ""
        r = edge.post("/v1/tasks", {
            "model": "gpt-4o-mini", "webhook": receiver.url(hook),
            "input": {"messages": [{"role": "user", "content": f"durable {i}{hold}"}]}})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])

    # Wait for the mix the kill should hit: calls held at the provider, and finished tasks
    # whose webhooks were refused.
    deadline = time.monotonic() + 20
    while True:
        held = sum(openai.limits()["in_flight"].values())
        seen = Counter(t["status"] for t in statuses(edge, ids).values())
        # A task whose call is in flight shows `running`.
        if held >= 1 and seen["running"] >= 1 and seen["succeeded"] >= 1 and receiver.refused:
            break
        assert time.monotonic() < deadline, (held, seen, receiver.refused)
        time.sleep(0.05)

    plane.kill()
    plane.start()  # same port, same store
    receiver.answer_status = 204

    deadline = time.monotonic() + 60
    while True:
        tasks = statuses(edge, ids)
        if all(t["status"] in FINAL for t in tasks.values()):
            break
        assert time.monotonic() < deadline, Counter(t["status"] for t in tasks.values())
        time.sleep(0.2)
    for task in tasks.values():
        # The provider double answers every held call after HOLD_S, so each task can succeed;
        # a failed one must at least say why.
        assert task["status"] == "succeeded" or task.get("error", {}).get("message"), task
    assert Counter(t["status"] for t in tasks.values())["succeeded"] == TASKS, tasks

    # Every task's webhook arrives and verifies (at-least-once: duplicates share a webhook-id).
    secret = edge.get("/v1/webhook-settings").json()["secret"]
    deadline = time.monotonic() + 60
    while True:
        delivered: dict[str, set[str]] = {}
        for d in receiver.deliveries_to(hook):
            payload = Webhook(secret).verify(d.body, d.headers)
            delivered.setdefault(payload["data"]["id"], set()).add(d.headers["webhook-id"])
        if set(delivered) == set(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(delivered) == set(ids), sorted(set(ids) - set(delivered))
    assert all(len(hook_ids) == 1 for hook_ids in delivered.values()), (
        "one message per task: a redelivery after the crash keeps its webhook-id", delivered)

    # The ledger has each task exactly once.
    deadline = time.monotonic() + 10
    while True:
        r = plane.admin("GET", "/admin/v1/requests?limit=200")
        assert r.status_code == 200, r.text
        counted = Counter(rec["request_id"] for rec in r.json()["requests"])
        if all(counted[i] >= 1 for i in ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {i: counted[i] for i in ids} == {i: 1 for i in ids}, counted
