"""Models served by asynchronous providers, end to end on every host: a client submits
`POST /v1/tasks` through the edge, the task plane in the real `gpu-backend` submits to the
provider's double (WaveSpeed, Replicate, fal, DashScope, Veo — each speaking its documented
wire format and signing its own webhooks), follows the provider's task by the provider's
webhook (to `/v1/provider-webhooks/…` on the task plane, verified with the provider's scheme)
and by polling, and delivers a Standard Webhooks message to the client's receiver here.

Covered (the PostgreSQL store too): success via the provider's webhook (one poll only: the one the webhook triggers),
via polling only (DashScope, Veo: no webhooks), a provider failing the task → fallback to the
next deployment → success, a never-finishing task → failed with the reason, forged and stale
provider webhooks → 401 and counted, never changing the task, the client's own webhook
verified with the reference implementation, and each task metered exactly once.

The synchronous facade: the official `openai` SDK's images.generate naming these models gets
OpenAI's answer (the provider's URLs) with the task in `x-switchyard-task-id`, each provider
given the request in its own vocabulary; a failed provider falls back once; a task that
does not finish within the model's `fallback.total_timeout_ms` is a 504 naming the task; a
provider's failure is the error in OpenAI's dialect; what these providers cannot answer
(speech, `b64_json`, a video model) is a 400 naming the model."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
from standardwebhooks import Webhook

from doubles import replicate_double, wavespeed_double
from doubles.server import ASYNC_PROVIDERS

from . import paths
from .conftest import Gateway
from .control_plane import free_port, postgres_url
from .gateway_config import KEY_ALL, KEY_LIMITED, gateway_config
from .task_plane import start_task_edge, start_task_plane
from .test_tasks import receiver, wait_final  # noqa: F401 (receiver: a fixture)

LIMIT_S = 30
WEBHOOK_SECRETS = {"WAVESPEED_WEBHOOK_SECRET": wavespeed_double.WEBHOOK_SECRET,
                   "REPLICATE_WEBHOOK_SECRET": replicate_double.WEBHOOK_SECRET}
# How long one provider may take before the task moves on (the never-finishing test).
ATTEMPT_TIMEOUT_MS = 3000
# How long a synchronous request for `flux-stuck` waits (shorter than the attempt's timeout).
STUCK_WAIT_MS = 1500


def async_config(doubles) -> dict:
    """The e2e gateway config plus one provider per asynchronous double and models on them."""
    config = gateway_config(doubles)
    base = {name: doubles[name].base_url for name in ASYNC_PROVIDERS}
    key = {name: doubles[name].secret_env for name in ASYNC_PROVIDERS}
    config["providers"].update({
        "ws": {"kind": "wavespeed", "base_url": base["wavespeed"],
               "api_key_secret": key["wavespeed"],
               "webhook_secret_secret": "WAVESPEED_WEBHOOK_SECRET"},
        "rep": {"kind": "replicate", "base_url": base["replicate"],
                "api_key_secret": key["replicate"],
                "webhook_secret_secret": "REPLICATE_WEBHOOK_SECRET"},
        "fal": {"kind": "fal", "base_url": base["fal"], "api_key_secret": key["fal"],
                "webhook_jwks_url": base["fal"] + "/.well-known/jwks.json"},
        "ds": {"kind": "dashscope_tasks", "base_url": base["dashscope_tasks"],
               "api_key_secret": key["dashscope_tasks"]},
        "veo": {"kind": "veo", "base_url": base["veo"], "api_key_secret": key["veo"]},
    })
    config["models"] += [
        {"name": "flux-ws", "deployments": [
            {"provider": "ws", "model": "wavespeed-ai/flux-dev", "price": {"image": 0.02}}]},
        {"name": "flux-replicate", "deployments": [
            {"provider": "rep", "model": "black-forest-labs/flux-schnell",
             "price": {"image": 0.003}}]},
        {"name": "flux-fal", "deployments": [
            {"provider": "fal", "model": "fal-ai/flux/dev", "price": {"image": 0.025}}]},
        {"name": "wanx", "deployments": [
            {"provider": "ds", "model": "wanx2.1-t2i-turbo",
             "price": {"image": 0.03, "task": 0.01}}]},
        {"name": "veo-3", "deployments": [
            {"provider": "veo", "model": "veo-3.0-generate-001", "price": {"second": 0.4}}]},
        # Image-to-image models (the edits endpoint, images carried as data URLs).
        {"name": "kontext-ws", "deployments": [
            {"provider": "ws", "model": "wavespeed-ai/flux-kontext-dev",
             "price": {"image": 0.025}}]},
        {"name": "kontext-replicate", "deployments": [
            {"provider": "rep", "model": "black-forest-labs/flux-kontext-pro",
             "price": {"image": 0.04}}]},
        {"name": "kontext-fal", "deployments": [
            {"provider": "fal", "model": "fal-ai/flux-pro/kontext", "price": {"image": 0.04}}]},
        # The facade waits 1.5 s for this one (its never-finishing test).
        {"name": "flux-stuck", "fallback": {"total_timeout_ms": STUCK_WAIT_MS}, "deployments": [
            {"provider": "ws", "model": "wavespeed-ai/flux-dev", "price": {"image": 0.02}}]},
        # WaveSpeed first, fal when WaveSpeed fails or never finishes.
        {"name": "flux-fallback", "deployments": [
            {"provider": "ws", "model": "wavespeed-ai/flux-dev", "price": {"image": 0.02}},
            {"provider": "fal", "model": "fal-ai/flux/dev", "price": {"image": 0.025}}]},
    ]
    return config


@pytest.fixture(scope="module")
def task_plane(doubles, tmp_path_factory):
    """The task plane, reachable by the doubles at its own URL (`--task-public-url`), polling
    from 200 ms on."""
    port = free_port()
    plane = start_task_plane(
        doubles, Path(tmp_path_factory.mktemp("async-providers")),
        "--task-public-url", f"http://127.0.0.1:{port}", "--provider-poll-ms", "200",
        "--provider-poll-max-ms", "400",
        "--provider-attempt-timeout-ms", str(ATTEMPT_TIMEOUT_MS),
        config=async_config(doubles), env=WEBHOOK_SECRETS, port=port)
    yield plane
    plane.stop()


@pytest.fixture(scope="module", params=paths.selected_hosts())
def edge(request, task_plane, doubles, tmp_path_factory) -> Gateway:
    name = request.param
    host = start_task_edge(name, task_plane, doubles,
                           Path(tmp_path_factory.mktemp(f"{name}-async")),
                           config=async_config(doubles))
    yield Gateway(host, doubles)
    host.stop()


def submit(edge: Gateway, model: str, prompt: str, **extra) -> dict:
    r = edge.post("/v1/tasks", {"model": model, "input": {"prompt": prompt, **extra.pop(
        "input", {})}, **extra})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["status"] in ("queued", "running") and task["operation"] == "generation"
    return task


def provider_webhooks(doubles, provider: str, task_id: str) -> list[dict]:
    """The webhooks `provider`'s double sent about our task (its URL names the task)."""
    r = httpx.get(doubles[provider].base_url + "/_webhooks", timeout=10)
    return [d for d in r.json() if task_id in d["url"]]


def polls(doubles, provider: str, job_id: str) -> int:
    """Status polls of a provider's job (fal's result fetch after `COMPLETED` is not one)."""
    return sum(1 for r in doubles[provider].requests()
               if r["method"] == "GET" and job_id in r["path"]
               and (provider != "fal" or r["path"].endswith("/status")))


def ledger_records(plane, task_id: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        r = plane.admin("GET", "/admin/v1/requests?limit=200")
        assert r.status_code == 200, r.text
        records = [rec for rec in r.json()["requests"] if rec["request_id"] == task_id]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def metric(plane, line_start: str) -> float:
    text = httpx.get(plane.base_url + "/task-plane/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def test_the_models_list_names_task_and_media_models_with_their_mode(edge):
    """The official SDK's `models.list()` and `models.retrieve()`: asynchronous providers'
    models (served through /v1/tasks) and media models are listed beside the chat models, each
    with its mode; a key's globs hold for them too; an unknown id is the SDK's NotFoundError."""
    client = edge.openai()
    listed = {m.id: m.to_dict() for m in client.models.list()}
    expected = {"gpt-4o-mini": ("chat", False), "text-embed": ("embedding", False),
                "image-gen": ("image", False), "tts": ("speech", False),
                "stt": ("transcription", False), "flux-ws": ("image", True),
                "wanx": ("image", True), "flux-fallback": ("image", True),
                "veo-3": ("video", True)}
    for name, (mode, tasks_only) in expected.items():
        assert name in listed, f"{name} missing from /v1/models: {sorted(listed)}"
        assert (listed[name]["mode"], listed[name]["tasks_only"]) == (mode, tasks_only), name
        assert listed[name]["object"] == "model"
    veo = client.models.retrieve("veo-3")
    assert (veo.id, veo.to_dict()["mode"]) == ("veo-3", "video")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    # KEY_LIMITED may use gpt-* only: no task model for it.
    limited = [m.id for m in edge.openai(key=KEY_LIMITED).models.list()]
    assert limited and all(i.startswith("gpt-") for i in limited), limited


@pytest.mark.parametrize("model,provider,price", [
    ("flux-ws", "wavespeed", 0.02), ("flux-replicate", "replicate", 0.003),
    ("flux-fal", "fal", 0.025)])
def test_a_task_finishes_by_the_providers_webhook(edge, task_plane, doubles, receiver,
                                                   model, provider, price):
    hook = f"/hook/{edge.name}/{provider}"
    task = submit(edge, model, f"a lighthouse via {edge.name}", webhook=receiver.url(hook),
                  input={"num_images": 2, "num_outputs": 2})
    done = wait_final(edge, task["id"])
    assert done["status"] == "succeeded", done
    assert len(done["outputs"]) == 2
    assert all(o["type"] == "image" and o["url"].startswith(doubles[provider].base_url)
               for o in done["outputs"])
    assert httpx.get(done["outputs"][0]["url"], timeout=10).content.startswith(b"\x89PNG")
    assert done["usage"]["images"] == 2
    assert done["cost_usd"] == pytest.approx(2 * price)

    # The provider called back, the task plane took the webhook (202: the task was due
    # now), and that one poll is all it took: a job without a webhook needs two.
    sent = provider_webhooks(doubles, provider, task["id"])
    assert [d["status"] for d in sent] == [202], sent
    assert polls(doubles, provider, sent[0]["job"]) == 1

    # The client's own webhook, verified with the reference implementation.
    r = edge.get("/v1/webhook-settings")
    delivery = receiver.wait_for(hook)[0]
    payload = Webhook(r.json()["secret"]).verify(delivery.body, delivery.headers)
    assert payload["type"] == "task.succeeded"
    assert payload["data"]["outputs"] == done["outputs"]

    records = ledger_records(task_plane, task["id"])
    assert len(records) == 1, records
    assert records[0]["images"] == 2 and records[0]["status"] == 200
    assert records[0]["cost"] == pytest.approx(2 * price)


def test_providers_without_webhooks_are_polled(edge, task_plane, doubles):
    image = submit(edge, "wanx", f"a harbour via {edge.name}", input={"parameters": {"n": 2}})
    video = submit(edge, "veo-3", f"waves via {edge.name}",
                   input={"parameters": {"durationSeconds": 8}})
    done = wait_final(edge, image["id"])
    assert done["status"] == "succeeded", done
    assert [o["type"] for o in done["outputs"]] == ["image", "image"]
    assert done["usage"]["images"] == 2
    assert done["cost_usd"] == pytest.approx(2 * 0.03 + 0.01)

    done = wait_final(edge, video["id"])
    assert done["status"] == "succeeded", done
    assert [o["type"] for o in done["outputs"]] == ["video"]
    assert done["outputs"][0]["url"].endswith(".mp4")
    assert done["usage"]["seconds"] == 8
    assert done["cost_usd"] == pytest.approx(8 * 0.4)
    for task_id in (image["id"], video["id"]):
        assert len(ledger_records(task_plane, task_id)) == 1


def test_a_failed_provider_task_falls_back_to_the_next_deployment(edge, task_plane, doubles):
    task = submit(edge, "flux-fallback", f"[[async:fail:wavespeed]] a storm via {edge.name}")
    done = wait_final(edge, task["id"])
    assert done["status"] == "succeeded", done
    assert [a["deployment"] for a in done["attempts"]] == [
        "ws/wavespeed-ai/flux-dev", "fal/fal-ai/flux/dev"]
    assert done["attempts"][0]["outcome"].startswith("failed")
    assert done["outputs"][0]["url"].startswith(doubles["fal"].base_url)
    # Billed once, by the deployment that served it.
    records = ledger_records(task_plane, task["id"])
    assert len(records) == 1 and records[0]["deployment"] == "fal/fal-ai/flux/dev", records
    assert records[0]["cost"] == pytest.approx(0.025)


def test_a_task_that_never_finishes_fails_with_the_reason(edge, task_plane):
    task = submit(edge, "flux-ws", f"[[async:never]] a still sea via {edge.name}")
    done = wait_final(edge, task["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "task_timeout"
    assert done["error"]["status"] == 504
    assert f"within {ATTEMPT_TIMEOUT_MS} ms" in done["error"]["message"]
    assert done["outputs"] == []
    records = ledger_records(task_plane, task["id"])
    assert len(records) == 1 and records[0]["status"] == 504 and records[0]["cost"] == 0


def test_forged_and_stale_provider_webhooks_are_refused_and_counted(edge, task_plane,
                                                                   doubles):
    task = submit(edge, "flux-ws", f"[[async:never]] a calm via {edge.name}")
    # The provider's task id: what the polls after our submit ask about (nothing else runs
    # on WaveSpeed meanwhile).
    deadline = time.monotonic() + LIMIT_S
    job_id = None
    while job_id is None and time.monotonic() < deadline:
        seen = doubles["wavespeed"].requests()
        submitted = [i for i, r in enumerate(seen)
                     if r["method"] == "POST" and task["id"] in r["query"].get("webhook", "")]
        polled = [r["path"] for r in seen[submitted[0]:] if r["method"] == "GET"] \
            if submitted else []
        if polled:
            job_id = polled[0].split("/predictions/")[1].split("/")[0]
        time.sleep(0.1)
    assert job_id is not None
    body = json.dumps({"id": job_id, "model": "wavespeed-ai/flux-dev", "status": "completed",
                       "outputs": ["https://attacker.example/x.png"], "error": ""}).encode()
    url = f"{task_plane.base_url}/v1/provider-webhooks/ws/{task['id']}"
    before = metric(task_plane,
                    'switchyard_provider_webhooks_total{provider="wavespeed",outcome="rejected"}')

    now = int(time.time())
    forged = {"webhook-id": "msg_forged", "webhook-timestamp": str(now),
              "webhook-signature": wavespeed_double.sign("whsec_not-the-secret", "msg_forged",
                                                       now, body)}
    stale_ts = now - 3600
    stale = {"webhook-id": "msg_stale", "webhook-timestamp": str(stale_ts),
             "webhook-signature": wavespeed_double.sign(wavespeed_double.WEBHOOK_SECRET,
                                                      "msg_stale", stale_ts, body)}
    for headers in (forged, stale, {}):
        r = httpx.post(url, content=body, headers={"content-type": "application/json",
                                                   **headers}, timeout=10)
        assert r.status_code == 401, r.text
        assert "error" in r.json()
    after = metric(task_plane,
                   'switchyard_provider_webhooks_total{provider="wavespeed",outcome="rejected"}')
    assert after - before == 3

    # A genuine signature about another provider task is refused too.
    other = json.dumps({"id": "another-job", "status": "completed", "outputs": []}).encode()
    genuine = {"webhook-id": "msg_other", "webhook-timestamp": str(now),
               "webhook-signature": wavespeed_double.sign(wavespeed_double.WEBHOOK_SECRET,
                                                        "msg_other", now, other)}
    r = httpx.post(url, content=other, headers=genuine, timeout=10)
    assert r.status_code == 400, r.text
    # Unknown tasks are 404, as for clients.
    r = httpx.post(f"{task_plane.base_url}/v1/provider-webhooks/ws/task_000000000000000000000000",
                   content=body, headers=forged, timeout=10)
    assert r.status_code == 404, r.text

    # None of it changed the task: it is still running (until its attempt times out).
    current = edge.get(f"/v1/tasks/{task['id']}").json()
    assert current["outputs"] == [] and current["status"] in ("running", "failed")
    done = wait_final(edge, task["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "task_timeout", done


def test_bad_submissions_are_refused_at_the_edge(edge):
    r = edge.post("/v1/tasks", {"model": "flux-ws", "input": {"prompt": "x"}}, key=KEY_LIMITED)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "model_not_allowed"
    r = edge.post("/v1/tasks", {"model": "flux-nope", "input": {"prompt": "x"}})
    assert r.status_code == 404, r.text


def test_each_task_lands_in_the_ledger_once(task_plane):
    r = task_plane.admin("GET", "/admin/v1/requests?limit=200")
    assert r.status_code == 200, r.text
    counted = Counter(rec["request_id"] for rec in r.json()["requests"])
    assert counted and all(n == 1 for n in counted.values()), counted



def test_provider_tasks_run_on_postgresql_too(doubles, tmp_path_factory):
    """The same steps over PostgreSQL (the submit's records, the webhook's nudge, the
    fallback), submitted to the task plane directly with a gateway key."""
    port = free_port()
    plane = start_task_plane(
        doubles, Path(tmp_path_factory.mktemp("async-providers-pg")),
        "--task-public-url", f"http://127.0.0.1:{port}", "--provider-poll-ms", "200",
        "--provider-poll-max-ms", "400", config=async_config(doubles), env=WEBHOOK_SECRETS,
        port=port, database_url=postgres_url())
    try:
        def run(model: str, prompt: str) -> dict:
            r = httpx.post(plane.base_url + "/v1/tasks", timeout=10,
                           headers={"authorization": f"Bearer {KEY_ALL}"},
                           json={"model": model, "input": {"prompt": prompt}})
            assert r.status_code == 202, r.text
            task_id = r.json()["id"]
            deadline = time.monotonic() + LIMIT_S
            while time.monotonic() < deadline:
                task = httpx.get(f"{plane.base_url}/v1/tasks/{task_id}", timeout=10,
                                 headers={"authorization": f"Bearer {KEY_ALL}"}).json()
                if task["status"] in ("succeeded", "failed", "canceled"):
                    return task
                time.sleep(0.1)
            pytest.fail(f"task {task_id} did not finish within {LIMIT_S} s")

        done = run("flux-ws", "a lighthouse on postgres")
        assert done["status"] == "succeeded", done
        assert [d["status"] for d in provider_webhooks(doubles, "wavespeed", done["id"])] \
            == [202]
        done = run("flux-fallback", "[[async:fail:wavespeed]] a storm on postgres")
        assert done["status"] == "succeeded", done
        assert len(done["attempts"]) == 2
        assert len(ledger_records(plane, done["id"])) == 1
    finally:
        plane.stop()


def test_cancel_reaches_the_providers_cancel(edge, doubles):
    task = submit(edge, "wanx", f"[[async:never]] a quiet bay via {edge.name}")
    # Running at the provider: its task was submitted and polled at least once.
    deadline = time.monotonic() + LIMIT_S
    job_id = None
    while job_id is None and time.monotonic() < deadline:
        seen = doubles["dashscope_tasks"].requests()
        submitted = [i for i, r in enumerate(seen) if r["method"] == "POST"
                     and task["id"] not in r["path"] and "a quiet bay via " + edge.name
                     in json.dumps(r["body"])]
        polled = [r["path"] for r in seen[submitted[-1]:] if r["method"] == "GET"] \
            if submitted else []
        if polled:
            job_id = polled[0].rsplit("/", 1)[1]
        time.sleep(0.1)
    assert job_id is not None
    r = edge.post(f"/v1/tasks/{task['id']}/cancel", {})
    assert r.status_code in (200, 202), r.text
    done = wait_final(edge, task["id"])
    assert done["status"] == "canceled", done
    assert any(r["method"] == "POST" and r["path"] == f"/api/v1/tasks/{job_id}/cancel"
               for r in doubles["dashscope_tasks"].requests())


# The synchronous facade (OpenAI's images endpoint over these models).

FACADE = [("flux-ws", "wavespeed", 0.02, {"num_images": 2, "size": "1024*768"}),
          ("flux-replicate", "replicate", 0.003, {"num_outputs": 2, "aspect_ratio": "4:3"}),
          ("flux-fal", "fal", 0.025, {"num_images": 2,
                                      "image_size": {"width": 1024, "height": 768}}),
          ("wanx", "dashscope_tasks", 0.03, {"parameters": {"n": 2, "size": "1024*768"}})]


# An image to edit: a PNG header, then bytes that are not text.
EDIT_IMAGE = ("in.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png")
EDIT_DATA_URL = "data:image/png;base64," + base64.b64encode(EDIT_IMAGE[1]).decode()


def submitted_input(doubles, provider: str, prompt: str) -> dict:
    """The input the provider's double was given for the submit carrying `prompt`."""
    bodies = [r["body"] for r in doubles[provider].requests()
              if r["method"] == "POST" and prompt in json.dumps(r["body"])]
    assert len(bodies) == 1, bodies
    body = bodies[0]
    if provider == "replicate":
        return body["input"]
    if provider == "dashscope_tasks":
        return {**body["input"], "parameters": body["parameters"]}
    return body


@pytest.mark.parametrize("model,provider,price,native", FACADE)
def test_images_generate_waits_for_the_providers_task(edge, task_plane, doubles, model,
                                                      provider, price, native):
    prompt = f"a harbour at dusk via {edge.name} on {model}"
    raw = edge.openai().images.with_raw_response.generate(
        model=model, prompt=prompt, n=2, size="1024x768")
    answer = raw.parse()
    assert raw.status_code == 200
    assert len(answer.data) == 2
    assert all(d.url.startswith(doubles[provider].base_url) and d.b64_json is None
               for d in answer.data)
    assert httpx.get(answer.data[0].url, timeout=10).content.startswith(b"\x89PNG")
    # The provider got OpenAI's request in its own vocabulary.
    assert submitted_input(doubles, provider, prompt) == {"prompt": prompt, **native}

    task_id = raw.headers["x-switchyard-task-id"]
    task = edge.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "succeeded" and task["operation"] == "images.generations"
    assert [o["url"] for o in task["outputs"]] == [d.url for d in answer.data]
    records = ledger_records(task_plane, task_id)
    assert len(records) == 1, records
    assert records[0]["images"] == 2 and records[0]["status"] == 200
    extra = 0.01 if model == "wanx" else 0
    assert records[0]["cost"] == pytest.approx(2 * price + extra)


def test_a_failed_provider_falls_back_behind_the_facade(edge, doubles):
    raw = edge.openai().images.with_raw_response.generate(
        model="flux-fallback", prompt=f"[[async:fail:wavespeed]] a gale via {edge.name}")
    assert raw.parse().data[0].url.startswith(doubles["fal"].base_url)
    task = edge.get(f"/v1/tasks/{raw.headers['x-switchyard-task-id']}").json()
    assert [a["deployment"] for a in task["attempts"]] == [
        "ws/wavespeed-ai/flux-dev", "fal/fal-ai/flux/dev"]


def test_a_provider_failure_is_the_error_in_openais_dialect(edge):
    with pytest.raises(openai.APIStatusError) as caught:
        edge.openai().images.generate(model="flux-ws",
                                      prompt=f"[[async:fail]] a flood via {edge.name}")
    err = caught.value
    assert err.status_code == 502, err.response.text
    assert err.body["code"] == "upstream_error" and "wavespeed" in err.body["message"]
    task_id = err.response.headers["x-switchyard-task-id"]
    assert edge.get(f"/v1/tasks/{task_id}").json()["status"] == "failed"


def test_a_task_not_done_in_time_is_a_504_naming_it(edge, task_plane):
    with pytest.raises(openai.APIStatusError) as caught:
        edge.openai().images.generate(model="flux-stuck",
                                      prompt=f"[[async:never]] a still pond via {edge.name}")
    err = caught.value
    assert err.status_code == 504, err.response.text
    task_id = err.response.headers["x-switchyard-task-id"]
    assert err.body["code"] == "task_timeout"
    assert f"within {STUCK_WAIT_MS} ms" in err.body["message"] and task_id in err.body["message"]
    # The task goes on (until its attempt times out), and is metered once when it ends.
    done = wait_final(edge, task_id)
    assert done["status"] == "failed" and done["error"]["code"] == "task_timeout", done
    assert len(ledger_records(task_plane, task_id)) == 1


def test_what_these_providers_cannot_answer_is_a_400_naming_the_model(edge):
    client = edge.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="flux-ws", voice="alloy", input="hello")
    assert "`flux-ws`" in caught.value.body["message"]
    assert "/v1/audio/speech" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="flux-ws", prompt="x", response_format="b64_json")
    assert caught.value.body["param"] == "response_format"
    assert "`flux-ws`" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="veo-3", prompt="x")
    assert "makes video" in caught.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError):
        edge.openai(key=KEY_LIMITED).images.generate(model="flux-ws", prompt="x")
    # Video and DashScope models take no input image here; these providers take no mask.
    for model in ("veo-3", "wanx"):
        for headers in ({}, {"prefer": "respond-async"}):
            with pytest.raises(openai.BadRequestError) as caught:
                client.images.edit(model=model, prompt="add a hat", image=EDIT_IMAGE,
                                   extra_headers=headers)
            assert f"`{model}` cannot edit images" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(model="kontext-ws", prompt="add a hat", image=EDIT_IMAGE,
                           mask=EDIT_IMAGE)
    assert caught.value.body["param"] == "mask"


@pytest.mark.parametrize("operation", ["images.generations", "images.edits"])
def test_respond_async_on_the_images_endpoints_runs_on_the_provider(edge, doubles, operation):
    images = edge.openai().images.with_raw_response
    later = {"prompt": f"a meadow later via {edge.name}",
             "extra_headers": {"prefer": "respond-async"}}
    raw = (images.generate(model="flux-fal", n=1, **later) if operation == "images.generations"
           else images.edit(model="kontext-fal", image=EDIT_IMAGE, **later))
    assert raw.status_code == 202, raw.http_response.text
    task = raw.http_response.json()
    assert task["operation"] == operation
    done = wait_final(edge, task["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["data"][0]["url"] == done["outputs"][0]["url"]
    assert done["outputs"][0]["url"].startswith(doubles["fal"].base_url)


@pytest.mark.parametrize("model,provider,price,native", [
    ("kontext-ws", "wavespeed", 0.025, {"num_images": 1, "image": EDIT_DATA_URL}),
    ("kontext-replicate", "replicate", 0.04, {"input_image": EDIT_DATA_URL}),
    ("kontext-fal", "fal", 0.04, {"num_images": 1, "image_url": EDIT_DATA_URL})])
def test_images_edit_runs_on_image_to_image_models(edge, task_plane, doubles, model, provider,
                                                   price, native):
    prompt = f"add a red hat via {edge.name} on {model}"
    raw = edge.openai().images.with_raw_response.edit(model=model, prompt=prompt,
                                                      image=EDIT_IMAGE)
    answer = raw.parse()
    assert [d.url.startswith(doubles[provider].base_url) for d in answer.data] == [True]
    # The image reached the provider whole, as a data URL where its API takes a URL.
    assert submitted_input(doubles, provider, prompt) == {"prompt": prompt, **native}
    task_id = raw.headers["x-switchyard-task-id"]
    records = ledger_records(task_plane, task_id)
    assert len(records) == 1 and records[0]["images"] == 1, records
    assert records[0]["cost"] == pytest.approx(price)

