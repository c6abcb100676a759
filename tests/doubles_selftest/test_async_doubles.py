"""The asynchronous media doubles (WaveSpeed, Replicate, fal, DashScope tasks, Veo) driven
over raw HTTP as each provider documents it, their webhooks received on loopback and verified
with each provider's reference algorithm: Standard Webhooks' own library for Replicate, the
documented v3 hex HMAC for WaveSpeed, Ed25519 under the published JWKS for fal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook

from doubles import replicate_double, wavespeed_double
from doubles.server import Doubles

PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def doubles():
    d = Doubles().start()
    yield d
    d.stop()


class Receiver:
    """Collects webhook deliveries (headers lower-cased, raw body)."""

    def __init__(self) -> None:
        received: queue.Queue = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_):
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?task=t_1"

    def next(self) -> tuple[dict, bytes]:
        return self.received.get(timeout=15)


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def client(d, scheme="Bearer", header="Authorization") -> httpx.Client:
    value = d.api_key if header != "Authorization" else f"{scheme} {d.api_key}"
    return httpx.Client(base_url=d.base_url, headers={header: value}, timeout=10)


def test_wavespeed_envelope_poll_failure_and_signed_webhook(doubles, receiver):
    d = doubles["wavespeed"]
    c = client(d)
    r = c.post("/api/v3/wavespeed-ai/flux-dev", json={"prompt": "a lighthouse", "num_images": 2})
    assert r.status_code == 200
    data = r.json()["data"]
    assert (r.json()["code"], data["status"]) == (200, "created")
    polls = [c.get(f"/api/v3/predictions/{data['id']}/result").json()["data"]["status"]
             for _ in range(2)]
    assert polls == ["processing", "completed"]
    done = c.get(f"/api/v3/predictions/{data['id']}/result").json()["data"]
    assert len(done["outputs"]) == 2
    assert httpx.get(done["outputs"][0]).content.startswith(PNG_MAGIC)

    failed = c.post("/api/v3/wavespeed-ai/flux-dev", json={"prompt": "x [[async:fail]]"})
    tid = failed.json()["data"]["id"]
    for _ in range(2):
        answer = c.get(f"/api/v3/predictions/{tid}/result")
    assert answer.status_code == 200, "a failed task is still HTTP 200"
    assert answer.json()["data"]["status"] == "failed" and answer.json()["data"]["error"]

    bad = httpx.post(d.base_url + "/api/v3/wavespeed-ai/flux-dev", json={"prompt": "x"},
                     headers={"Authorization": "Bearer wrong"})
    assert (bad.status_code, bad.json()["code"]) == (401, 401)

    hooked = c.post("/api/v3/wavespeed-ai/flux-dev",
                    params={"webhook": receiver.url}, json={"prompt": "a lighthouse"})
    headers, body = receiver.next()
    assert json.loads(body)["id"] == hooked.json()["data"]["id"]
    assert json.loads(body)["status"] == "completed"
    # The documented check: hex HMAC-SHA256 keyed with the secret minus `whsec_`.
    key = wavespeed_double.WEBHOOK_SECRET.removeprefix("whsec_").encode()
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = hmac.new(key, content, hashlib.sha256).hexdigest()
    assert headers["webhook-signature"] == f"v3,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300


def test_replicate_lifecycle_cancel_and_standard_webhook(doubles, receiver):
    d = doubles["replicate"]
    c = client(d)
    r = c.post("/v1/models/black-forest-labs/flux-schnell/predictions",
               json={"input": {"prompt": "a lighthouse", "num_outputs": 2}})
    assert r.status_code == 201 and r.json()["status"] == "starting"
    pid = r.json()["id"]
    assert [c.get(f"/v1/predictions/{pid}").json()["status"] for _ in range(2)] == \
        ["processing", "succeeded"]
    assert len(c.get(f"/v1/predictions/{pid}").json()["output"]) == 2

    pending = c.post("/v1/predictions", json={"version": "5c7d5dc6", "input": {
        "prompt": "never [[async:never]]"}}).json()
    assert c.post(f"/v1/predictions/{pending['id']}/cancel").json()["status"] == "canceled"
    assert c.post("/v1/predictions", json={"input": {"prompt": "x"}}).status_code == 422
    bad = httpx.get(d.base_url + f"/v1/predictions/{pid}",
                    headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and "authentication token" in bad.json()["detail"]

    secret = c.get("/v1/webhooks/default/secret").json()["key"]
    assert secret == replicate_double.WEBHOOK_SECRET
    c.post("/v1/models/black-forest-labs/flux-schnell/predictions",
           json={"input": {"prompt": "x [[async:fail]]"}, "webhook": receiver.url,
                 "webhook_events_filter": ["completed"]})
    headers, body = receiver.next()
    # The reference implementation raises on a bad or stale signature.
    payload = Webhook(secret).verify(body.decode(), headers)
    assert payload["status"] == "failed" and payload["error"]


def test_fal_queue_202_result_and_ed25519_webhook(doubles, receiver):
    d = doubles["fal"]
    c = client(d, scheme="Key")
    r = c.post("/fal-ai/flux/dev", json={"prompt": "a lighthouse"})
    rid = r.json()["request_id"]
    assert r.json()["status_url"].endswith(f"/fal-ai/flux/requests/{rid}/status")
    first = c.get(f"/fal-ai/flux/requests/{rid}/status")
    assert (first.status_code, first.json()["status"]) == (202, "IN_PROGRESS")
    assert c.get(f"/fal-ai/flux/requests/{rid}").status_code == 400
    done = c.get(f"/fal-ai/flux/requests/{rid}/status")
    assert (done.status_code, done.json()["status"]) == (200, "COMPLETED")
    result = c.get(f"/fal-ai/flux/requests/{rid}").json()
    assert httpx.get(result["images"][0]["url"]).content.startswith(PNG_MAGIC)
    assert c.put(f"/fal-ai/flux/requests/{rid}/cancel").status_code == 400

    failed = c.post("/fal-ai/flux/dev", json={"prompt": "x [[async:fail]]"}).json()
    for _ in range(2):
        c.get(f"/fal-ai/flux/requests/{failed['request_id']}/status")
    assert c.get(f"/fal-ai/flux/requests/{failed['request_id']}").status_code == 422
    assert httpx.post(d.base_url + "/fal-ai/flux/dev", json={"prompt": "x"},
                      headers={"Authorization": "Key wrong"}).status_code == 401

    c.post("/fal-ai/flux/dev", params={"fal_webhook": receiver.url},
           json={"prompt": "a lighthouse"})
    headers, body = receiver.next()
    assert json.loads(body)["status"] == "OK"
    keys = httpx.get(d.base_url + "/.well-known/jwks.json").json()["keys"]
    public = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode(keys[0]["x"] + "=" * (-len(keys[0]["x"]) % 4)))
    message = "\n".join([headers["x-fal-webhook-request-id"], headers["x-fal-webhook-user-id"],
                         headers["x-fal-webhook-timestamp"],
                         hashlib.sha256(body).hexdigest()]).encode()
    signature = bytes.fromhex(headers["x-fal-webhook-signature"])
    public.verify(signature, message)
    with pytest.raises(InvalidSignature):
        public.verify(signature, message + b"x")


def test_dashscope_tasks_async_header_states_and_usage(doubles):
    d = doubles["dashscope_tasks"]
    c = client(d)
    path = "/api/v1/services/aigc/text2image/image-synthesis"
    body = {"model": "wan2.2-t2i-flash", "input": {"prompt": "a lighthouse"},
            "parameters": {"n": 2}}
    assert c.post(path, json=body).json()["code"] == "AccessDenied"
    c.headers["X-DashScope-Async"] = "enable"
    submitted = c.post(path, json=body).json()["output"]
    assert submitted["task_status"] == "PENDING"
    tid = submitted["task_id"]
    states = [c.get(f"/api/v1/tasks/{tid}").json() for _ in range(2)]
    assert [s["output"]["task_status"] for s in states] == ["RUNNING", "SUCCEEDED"]
    assert states[1]["usage"] == {"image_count": 2}
    assert len(states[1]["output"]["results"]) == 2

    video = c.post("/api/v1/services/aigc/video-generation/video-synthesis",
                   json={"model": "wan2.5-t2v-preview", "input": {"prompt": "a kitten"},
                         "parameters": {"duration": 10}}).json()["output"]["task_id"]
    final = [c.get(f"/api/v1/tasks/{video}").json() for _ in range(2)][-1]
    assert final["usage"]["video_duration"] == 10 and final["output"]["video_url"]
    assert c.get("/api/v1/tasks/not-a-task").json()["output"]["task_status"] == "UNKNOWN"
    pending = c.post(path, json=dict(body, input={"prompt": "x [[async:never]]"})).json()
    assert c.post(f"/api/v1/tasks/{pending['output']['task_id']}/cancel").status_code == 200
    failed = c.post(path, json=dict(body, input={"prompt": "x [[async:fail]]"})).json()
    last = [c.get(f"/api/v1/tasks/{failed['output']['task_id']}").json() for _ in range(2)][-1]
    assert last["output"]["task_status"] == "FAILED" and last["output"]["code"]


def test_veo_long_running_operation(doubles):
    d = doubles["veo"]
    c = client(d, header="x-goog-api-key")
    op = c.post("/v1beta/models/veo-3.0-generate-001:predictLongRunning",
                json={"instances": [{"prompt": "a lighthouse"}],
                      "parameters": {"durationSeconds": 6}}).json()
    assert op["name"].startswith("models/veo-3.0-generate-001/operations/")
    first, done = [c.get(f"/v1beta/{op['name']}").json() for _ in range(2)]
    assert first["done"] is False and done["done"] is True
    uri = done["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    assert httpx.get(uri).status_code == 200
    blocked = c.post("/v1beta/models/veo-3.0-generate-001:predictLongRunning",
                     json={"instances": [{"prompt": "x [[async:fail]]"}]}).json()
    final = [c.get(f"/v1beta/{blocked['name']}").json() for _ in range(2)][-1]
    assert final["response"]["generateVideoResponse"]["raiMediaFilteredCount"] == 1
    wrong = httpx.get(d.base_url + f"/v1beta/{op['name']}", headers={"x-goog-api-key": "no"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
