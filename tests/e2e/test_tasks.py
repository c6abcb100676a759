"""The task API end to end, on every host: the edge checks the key and the model, forwards
`/v1/tasks…` (and `Prefer: respond-async` generation requests) to the task plane in the real
`gpu-backend` (SQLite store), which runs the task against the provider double and sends a
signed webhook to a receiver here; the receiver verifies it with the reference Standard
Webhooks implementation (`standardwebhooks`). Raw HTTP throughout, as the API is Switchyard's
own. Bad input: unknown task, another key's task (both 404, no existence leak), malformed
and forbidden webhook URLs (400), a wrong method, no key."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from doubles.common import expected_text

from . import paths
from .conftest import Gateway
from .gateway_config import KEY_ALL, KEY_LIMITED
from .task_plane import start_task_edge, start_task_plane
from .webhook_receiver import WebhookReceiver

LIMIT_S = 30


@pytest.fixture(scope="module")
def receiver():
    r = WebhookReceiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def task_plane(doubles, tmp_path_factory):
    """`gpu-backend` with the control plane and the task plane over one SQLite store, routing
    with the same gateway config as the edges; webhooks may reach loopback (the receiver)."""
    plane = start_task_plane(doubles, Path(tmp_path_factory.mktemp("task-plane")),
                             "--webhook-retry-base-ms", "200", "--task-lease-ms", "3000")
    yield plane
    plane.stop()


@pytest.fixture(scope="module", params=paths.selected_hosts())
def edge(request, task_plane, doubles, tmp_path_factory) -> Gateway:
    name = request.param
    host = start_task_edge(name, task_plane, doubles,
                           Path(tmp_path_factory.mktemp(f"{name}-tasks")))
    yield Gateway(host, doubles)
    host.stop()


def chat_input(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def wait_final(edge: Gateway, task_id: str, key: str = KEY_ALL) -> dict:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        r = edge.get(f"/v1/tasks/{task_id}", key=key)
        assert r.status_code == 200, r.text
        task = r.json()
        if task["status"] in ("succeeded", "failed", "canceled"):
            return task
        time.sleep(0.1)
    pytest.fail(f"task {task_id} did not finish within {LIMIT_S} s")


def webhook_secret(edge: Gateway, key: str = KEY_ALL) -> str:
    r = edge.get("/v1/webhook-settings", key=key)
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    assert secret.startswith("whsec_")
    return secret


def test_a_chat_task_runs_and_its_signed_webhook_verifies(edge, receiver):
    hook = f"/hook/{edge.name}/chat"
    text = f"hello tasks via {edge.name}"
    r = edge.post("/v1/tasks", {"model": "gpt-4o-mini", "input": chat_input(text),
                                "webhook": receiver.url(hook), "metadata": {"n": 1}})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["object"] == "task" and task["id"].startswith("task_")
    assert task["status"] in ("queued", "running")
    assert r.headers["location"] == f"/v1/tasks/{task['id']}"

    done = wait_final(edge, task["id"])
    assert done["status"] == "succeeded", done
    answer = expected_text("openai", "gpt-4o-mini-2024-07-18", text)
    assert done["result"]["choices"][0]["message"]["content"] == answer
    assert done["model"] == "gpt-4o-mini"
    assert done["usage"]["output_tokens"] > 0 and done["cost_usd"] > 0
    assert done["metadata"] == {"n": 1}

    delivery = receiver.wait_for(hook)[0]
    payload = Webhook(webhook_secret(edge)).verify(delivery.body, delivery.headers)
    assert payload["type"] == "task.succeeded"
    assert payload["data"]["id"] == task["id"]
    assert payload["data"]["result"] == done["result"]
    # Another secret does not verify it: the signature is really keyed.
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY").verify(
            delivery.body, delivery.headers)

    # The key's own list has it; the delivery record says it was delivered.
    listed = edge.get("/v1/tasks?limit=100").json()
    assert task["id"] in [t["id"] for t in listed["data"]]
    hooks = edge.get(f"/v1/tasks/{task['id']}/webhooks").json()
    assert hooks["data"][0]["id"] == delivery.headers["webhook-id"]
    assert hooks["data"][0]["status"] == "delivered"


def test_prefer_respond_async_turns_a_generation_request_into_a_task(edge):
    text = f"async chat via {edge.name}"
    r = edge.post("/v1/chat/completions",
                  {"model": "claude-haiku", "messages": [{"role": "user", "content": text}]},
                  headers={"prefer": "respond-async"})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["operation"] == "chat.completions"
    assert r.headers["location"] == f"/v1/tasks/{task['id']}"
    done = wait_final(edge, task["id"])
    assert done["status"] == "succeeded", done
    # An OpenAI-shaped result, translated from the Anthropic double's answer by the core.
    assert done["result"]["object"] == "chat.completion"
    assert done["result"]["choices"][0]["message"]["content"] == expected_text(
        "anthropic", "claude-3-5-haiku-20241022", text)

    # Without the preference the same request is answered synchronously, as always.
    sync = edge.post("/v1/chat/completions",
                     {"model": "claude-haiku", "messages": [{"role": "user", "content": text}]})
    assert sync.status_code == 200 and sync.json()["object"] == "chat.completion"


def test_an_idempotency_key_returns_the_same_task(edge):
    body = {"model": "gpt-4o-mini", "input": chat_input(f"once via {edge.name}")}
    idem = {"idempotency-key": f"idem-{edge.name}-{time.time_ns()}"}
    first = edge.post("/v1/tasks", body, headers=idem)
    again = edge.post("/v1/tasks", body, headers=idem)
    assert first.status_code == 202 and again.status_code == 202, (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    other = edge.post("/v1/tasks", {**body, "metadata": {"changed": True}}, headers=idem)
    assert other.status_code == 409, other.text


def test_cancel_ends_a_running_task(edge):
    r = edge.post("/v1/tasks", {"model": "gpt-4o-mini",
                                "input": chat_input("slow [[fault:hang,seconds=20]]")})
    assert r.status_code == 202, r.text
    task_id = r.json()["id"]
    canceled = edge.post(f"/v1/tasks/{task_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    done = wait_final(edge, task_id)
    assert done["status"] == "canceled", done
    again = edge.post(f"/v1/tasks/{task_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "task_already_finished"


def test_unknown_and_other_keys_tasks_are_404(edge):
    unknown = edge.get("/v1/tasks/task_doesnotexist0000")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"] == "task_not_found"

    mine = edge.post("/v1/tasks", {"model": "gpt-4o-mini", "input": chat_input("private")})
    assert mine.status_code == 202, mine.text
    task_id = mine.json()["id"]
    theirs = edge.get(f"/v1/tasks/{task_id}", key=KEY_LIMITED)
    assert theirs.status_code == 404, theirs.text
    # Exactly the unknown-id answer, apart from the id it names: nothing says it exists.
    assert theirs.json()["error"]["code"] == "task_not_found"
    assert edge.post(f"/v1/tasks/{task_id}/cancel", key=KEY_LIMITED).status_code == 404
    listed = edge.get("/v1/tasks?limit=100", key=KEY_LIMITED).json()
    assert task_id not in [t["id"] for t in listed["data"]]


@pytest.mark.parametrize("url,why", [
    ("not a url", "malformed"),
    ("ftp://example.com/hook", "scheme"),
    ("http://user:pw@example.com/hook", "credentials"),
    ("http://10.1.2.3/hook", "private range"),
    ("http://169.254.169.254/latest/meta-data", "link-local (cloud metadata)"),
])
def test_malformed_or_forbidden_webhook_urls_are_400(edge, url, why):
    r = edge.post("/v1/tasks", {"model": "gpt-4o-mini", "input": chat_input("x"),
                                "webhook": url})
    assert r.status_code == 400, (why, r.text)
    error = r.json()["error"]
    assert error["code"] == "invalid_webhook_url", (why, error)
    assert error["type"] == "invalid_request_error"


def test_the_edge_refuses_before_the_task_plane(edge):
    # No key: 401 in the caller's dialect.
    r = edge.post("/v1/tasks", {"model": "gpt-4o-mini", "input": chat_input("x")}, key=None)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    # A model the key may not use, and one that does not exist.
    r = edge.post("/v1/tasks", {"model": "claude-haiku", "input": chat_input("x")},
                  key=KEY_LIMITED)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    r = edge.post("/v1/tasks", {"model": "no-such-model", "input": chat_input("x")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # A method the path does not take; a body that is not JSON.
    r = httpx.delete(edge.base_url + "/v1/tasks/task_x",
                     headers={"authorization": f"Bearer {KEY_ALL}"}, timeout=10)
    assert r.status_code == 405, r.text
    r = edge.post("/v1/tasks", content=b"{not json")
    assert r.status_code == 400 and "error" in r.json()
