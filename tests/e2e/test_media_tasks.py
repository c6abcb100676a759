"""The media endpoints as tasks (`Prefer: respond-async`, RFC 7240) on every host, with the
official `openai` SDK as the client: images.generate, images.edit, audio.speech.create and
audio.transcriptions.create answer 202 with a `Location` and a task object; the task plane
in the real `gpu-backend` runs the request through the core's plan against the OpenAI double
(tests/doubles/openai_media.py, deterministic) and its signed webhook, verified with the
reference Standard Webhooks implementation, carries the same output the synchronous call
gives (images inline or as the provider's URLs, speech as base64 audio with its content
type, a transcription's text; an edit's form reaches OpenAI byte for byte), metered per image
and per second. Oversize and malformed uploads are still refused at submit (413 / 400)."""

from __future__ import annotations

import base64
import hashlib
import io

import openai
import pytest
from standardwebhooks import Webhook

from doubles.openai_media import PNG_1X1, wav_bytes

# The task-plane fixtures (one gpu-backend per module, an edge per host) and their helpers.
from .test_tasks import edge, receiver, task_plane, wait_final, webhook_secret  # noqa: F401

ASYNC = {"prefer": "respond-async"}


def hooked(receiver, name: str) -> tuple[str, dict]:
    path = f"/hook/media/{name}"
    return path, {**ASYNC, "x-switchyard-webhook": receiver.url(path)}


def accepted(raw) -> dict:
    """The task a respond-async call answered with: 202, `Location`, a task object."""
    assert raw.status_code == 202, raw.http_response.text
    task = raw.http_response.json()
    assert task["object"] == "task" and task["status"] in ("queued", "running")
    assert raw.headers["location"] == f"/v1/tasks/{task['id']}"
    return task


def delivered(edge, receiver, path: str, task_id: str) -> dict:
    """The finished task, from its verified webhook (which must agree with GET)."""
    done = wait_final(edge, task_id)
    assert done["status"] == "succeeded", done
    delivery = receiver.wait_for(path)[0]
    payload = Webhook(webhook_secret(edge)).verify(delivery.body, delivery.headers)
    assert payload["type"] == "task.succeeded" and payload["data"]["id"] == task_id
    assert payload["data"]["outputs"] == done["outputs"]
    return payload["data"]


@pytest.mark.parametrize("fmt", ["b64_json", "url"])
def test_images_generate_as_a_task(edge, receiver, fmt):
    client = edge.openai()
    path, headers = hooked(receiver, f"{edge.name}/images/{fmt}")
    sync = client.images.generate(model="image-gen", prompt="a red lighthouse", n=2,
                                  response_format=fmt)
    raw = client.images.with_raw_response.generate(
        model="image-gen", prompt="a red lighthouse", n=2, response_format=fmt,
        extra_headers=headers)
    task = accepted(raw)
    assert task["operation"] == "images.generations" and task["model"] == "image-gen"
    done = delivered(edge, receiver, path, task["id"])
    # The endpoint's own answer is the result; each image is an output too.
    assert done["result"]["data"] == [d.model_dump(exclude_none=True) for d in sync.data]
    assert [o.get(fmt) for o in done["outputs"]] == [getattr(d, fmt) for d in sync.data]
    assert all(o["type"] == "image" for o in done["outputs"])
    assert edge.doubles["openai"].last()["body"]["model"] == "gpt-image-1"
    assert done["usage"]["images"] == 2
    assert done["cost_usd"] == pytest.approx(2 * 0.04, abs=1e-9)


def test_speech_as_a_task_carries_the_audio_base64(edge, receiver):
    client = edge.openai()
    text = f"Switchyard speaks later via {edge.name}."
    path, headers = hooked(receiver, f"{edge.name}/speech")
    with client.audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input=text, response_format="wav") as r:
        sync_audio = r.read()
    raw = client.audio.speech.with_raw_response.create(
        model="tts", voice="alloy", input=text, response_format="wav", extra_headers=headers)
    task = accepted(raw)
    assert task["operation"] == "audio.speech"
    done = delivered(edge, receiver, path, task["id"])
    [audio] = done["outputs"]
    assert audio["type"] == "audio" and audio["content_type"] == "audio/wav"
    assert base64.b64decode(audio["b64_json"]) == sync_audio
    assert done["result"] is None
    assert done["usage"]["seconds"] > 0
    assert done["cost_usd"] == pytest.approx(done["usage"]["seconds"] * 0.001, abs=1e-9)


def upload(seconds: float) -> bytes:
    # Not UTF-8, with a line that looks like a multipart delimiter: must survive base64.
    return wav_bytes(seconds, rate=8000) + b"\xff\xfe\x00\r\n--not-the-boundary\r\n\x80"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_transcription_as_a_task_sends_the_upload_intact(edge, receiver, fmt):
    client = edge.openai()
    audio = upload(1.5)
    path, headers = hooked(receiver, f"{edge.name}/stt/{fmt}")
    sync = client.audio.transcriptions.create(
        model="stt", file=("hello.wav", io.BytesIO(audio), "audio/wav"), response_format=fmt)
    sync_entry = edge.doubles["openai"].last()
    raw = client.audio.transcriptions.with_raw_response.create(
        model="stt", file=("hello.wav", io.BytesIO(audio), "audio/wav"), response_format=fmt,
        extra_headers=headers)
    task = accepted(raw)
    assert task["operation"] == "audio.transcriptions" and task["model"] == "stt"
    done = delivered(edge, receiver, path, task["id"])
    entry = edge.doubles["openai"].last()
    assert entry["path"] == "/v1/audio/transcriptions"
    assert entry["form"]["model"] == "whisper-1"
    # The task sent the same upload the synchronous call did, byte for byte.
    assert entry["file"] == sync_entry["file"]
    [out] = done["outputs"]
    assert out["type"] == "text"
    if fmt == "text":
        assert out["text"] == sync
    else:
        assert out["text"] == sync.text and done["result"]["text"] == sync.text


def test_bad_media_submits_are_refused_at_once(edge):
    client = edge.openai()
    # The e2e gateway takes bodies up to 64 KiB: the same 413 as the synchronous endpoint.
    with pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(
            model="stt", file=("long.wav", io.BytesIO(upload(8.0)), "audio/wav"),
            extra_headers=ASYNC)
    assert err.value.status_code == 413
    assert err.value.body["code"] == "request_too_large"
    r = edge.post("/v1/audio/transcriptions",
                  content=b"--xyz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nstt",
                  headers={**ASYNC, "content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400, r.text
    assert "multipart" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="image-gen", prompt="", extra_headers=ASYNC)
    assert err.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="claude-haiku", prompt="x", extra_headers=ASYNC)
    assert err.value.body["code"] == "unsupported_by_model"


def test_images_edit_as_a_task_sends_the_form_intact(edge, receiver):
    client = edge.openai()
    image = ("in.png", PNG_1X1 + b"\xff\x00\r\n--not-the-boundary\r\n" * 50, "image/png")
    path, headers = hooked(receiver, f"{edge.name}/edits")
    raw = client.images.with_raw_response.edit(model="image-gen", prompt="add a red hat", n=2,
                                               image=image, extra_headers=headers)
    task = accepted(raw)
    assert task["operation"] == "images.edits" and task["model"] == "image-gen"
    done = delivered(edge, receiver, path, task["id"])
    assert [base64.b64decode(o["b64_json"]) for o in done["outputs"]] == [PNG_1X1, PNG_1X1]
    assert len(done["result"]["data"]) == 2
    entry = edge.doubles["openai"].last()
    assert entry["path"] == "/v1/images/edits" and entry["form"]["model"] == "gpt-image-1"
    assert [f["sha256"] for f in entry["files"]] == [hashlib.sha256(image[1]).hexdigest()]
    assert done["usage"]["images"] == 2
    assert done["cost_usd"] == pytest.approx(2 * 0.04, abs=1e-9)
