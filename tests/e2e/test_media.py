"""OpenAI's media endpoints through the gateway on every host, with the official SDK:
images.generate, images.edit, audio.speech.create and audio.transcriptions.create against the OpenAI
double (tests/doubles/openai_media.py); binary bodies (a WAV upload in multipart, WAV bytes
back) cross each host intact; bad input is refused in OpenAI's error shape; each answer is
metered (images, seconds of audio) in the host's usage records."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from pathlib import Path

import httpx
import openai
import pytest

from doubles.openai_media import PNG_1X1, SECONDS_PER_CHAR, wav_bytes, wav_duration

from . import hosts, paths
from .conftest import Gateway, secrets
from .gateway_config import KEY_ALL, gateway_config, upstreams
from .test_fallback_matrix import usage_records


def records(gw, model: str, count: int) -> list[dict]:
    """The host's usage records for `model`, once at least `count` are logged."""
    deadline = time.monotonic() + 10
    while len(found := usage_records(gw.host.log, model)) < count:
        assert time.monotonic() < deadline, f"{len(found)} usage records for {model}"
        time.sleep(0.05)
    return found


def test_images_generate_b64_and_url(gw):
    client = gw.openai()
    before = len(usage_records(gw.host.log, "image-gen"))
    r = client.images.generate(model="image-gen", prompt="a red lighthouse", n=2,
                               response_format="b64_json")
    assert [base64.b64decode(d.b64_json) for d in r.data] == [PNG_1X1, PNG_1X1]
    entry = gw.doubles["openai"].last()
    assert entry["path"] == "/v1/images/generations"
    assert entry["body"]["model"] == "gpt-image-1" and entry["body"]["n"] == 2
    r = client.images.generate(model="image-gen", prompt="a blue boat")
    assert r.data[0].url.startswith("https://images.double.test/")
    found = records(gw, "image-gen", before + 2)[before:]
    assert [rec["images"] for rec in found] == [2, 1]
    assert found[0]["cost"] == pytest.approx(2 * 0.04 + 0, abs=1e-9)
    assert found[0]["deployment"] == "openai/gpt-image-1" and found[0]["status"] == 200


def edit_images() -> list[tuple[str, bytes, str]]:
    """Two PNGs for an edit, each with binary bytes after its header (38 kB: several body
    chunks on every host, within the e2e config's 64 KiB limit), one with a line that looks
    like a multipart delimiter."""
    return [("a.png", PNG_1X1 + bytes(range(256)) * 150, "image/png"),
            ("b.png", PNG_1X1 + b"\r\n--not-the-boundary\r\n\xff\x00", "image/png")]


def test_images_edit_forwards_the_form_intact(gw):
    images = edit_images()
    mask = ("mask.png", PNG_1X1, "image/png")
    before = len(usage_records(gw.host.log, "image-gen"))
    r = gw.openai().images.edit(model="image-gen", prompt="add a red hat", n=2,
                                image=images, mask=mask, size="1024x1024")
    assert [base64.b64decode(d.b64_json) for d in r.data] == [PNG_1X1, PNG_1X1]
    entry = gw.doubles["openai"].last()
    assert entry["path"] == "/v1/images/edits"
    assert entry["form"]["model"] == "gpt-image-1" and entry["form"]["prompt"] == "add a red hat"
    # Every file reached OpenAI byte for byte, in order, under the SDK's own names.
    assert [(f["name"], f["filename"], f["sha256"]) for f in entry["files"]] == [
        ("image[]", name, hashlib.sha256(data).hexdigest()) for name, data, _ in images] + [
        ("mask", "mask.png", hashlib.sha256(PNG_1X1).hexdigest())]
    found = records(gw, "image-gen", before + 1)[before:]
    assert found[0]["images"] == 2 and found[0]["status"] == 200
    assert found[0]["cost"] == pytest.approx(2 * 0.04, abs=1e-9)


def test_bad_image_edits_are_400s_in_openai_shape(gw):
    client = gw.openai()
    # OpenAI's own refusal (the double validates as OpenAI does) passes through.
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(model="image-gen", prompt="x", image=("a.txt", b"plain text"))
    assert "Invalid image file" in caught.value.body["message"], caught.value.body
    # No prompt: refused at the gateway, nothing sent.
    sent = len(gw.doubles["openai"].requests())
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(model="image-gen", prompt="", image=edit_images()[0])
    assert caught.value.body["param"] == "prompt"
    # A model whose providers cannot edit (Anthropic only): a 400 naming it.
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(model="claude-haiku", prompt="x", image=edit_images()[0])
    assert "claude-haiku" in caught.value.body["message"]
    assert len(gw.doubles["openai"].requests()) == sent
    assert all("images" not in e["path"] for e in gw.doubles["anthropic"].requests())


def test_speech_returns_the_audio_bytes(gw):
    text = "Switchyard speaks."
    before = len(usage_records(gw.host.log, "tts"))
    with gw.openai().audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input=text, response_format="wav") as r:
        assert r.headers["content-type"] == "audio/wav"
        audio = r.read()
    assert audio == wav_bytes(len(text) * SECONDS_PER_CHAR), "the WAV crossed the host intact"
    assert gw.doubles["openai"].last()["body"]["model"] == "gpt-4o-mini-tts"
    rec = records(gw, "tts", before + 1)[before]
    assert rec["media_seconds"] == pytest.approx(wav_duration(audio), abs=1e-6)
    assert rec["cost"] == pytest.approx(rec["media_seconds"] * 0.001, abs=1e-9)


def upload(seconds: float) -> bytes:
    audio = wav_bytes(seconds, rate=8000)
    # Bytes that are not UTF-8, and a line that looks like a multipart delimiter.
    return audio + b"\xff\xfe\x00\r\n--not-the-boundary\r\n\x80"


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json"])
def test_transcriptions_forward_the_upload_intact(gw, fmt):
    audio = upload(1.5)
    before = len(usage_records(gw.host.log, "stt"))
    r = gw.openai().audio.transcriptions.create(
        model="stt", file=("hello.wav", io.BytesIO(audio), "audio/wav"), response_format=fmt)
    entry = gw.doubles["openai"].last()
    assert entry["path"] == "/v1/audio/transcriptions"
    assert entry["form"]["model"] == "whisper-1"
    assert entry["file"] == {"filename": "hello.wav", "bytes": len(audio),
                             "sha256": hashlib.sha256(audio).hexdigest()}
    assert entry["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    expected = f"Transcript of hello.wav: {len(audio)} bytes, 1.5 seconds."
    if fmt == "text":
        assert r.strip() == expected
    else:
        assert r.text == expected
    if fmt == "verbose_json":
        assert r.duration == pytest.approx(1.5)
        # Metered as the provider bills: its `usage` (whole seconds), not the audio's length.
        rec = records(gw, "stt", before + 1)[before]
        assert rec["media_seconds"] == 2.0
        assert rec["cost"] == pytest.approx(2.0 * 0.0001, abs=1e-12)


def test_oversize_audio_is_a_413_in_openai_shape(gw):
    # The e2e gateway takes bodies up to 64 KiB.
    with pytest.raises(openai.APIStatusError) as err:
        gw.openai().audio.transcriptions.create(
            model="stt", file=("long.wav", io.BytesIO(upload(8.0)), "audio/wav"))
    assert err.value.status_code == 413
    assert err.value.body["code"] == "request_too_large"


def test_malformed_multipart_is_a_400(gw):
    r = httpx.post(gw.base_url + "/v1/audio/transcriptions",
                   headers={"authorization": f"Bearer {KEY_ALL}",
                            "content-type": "multipart/form-data; boundary=xyz"},
                   content=b"--xyz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nstt",
                   timeout=15)
    assert r.status_code == 400, r.text
    assert "multipart" in r.json()["error"]["message"]


def test_unknown_and_chat_only_models_are_refused(gw):
    client = gw.openai()
    with pytest.raises(openai.NotFoundError) as err:
        client.images.generate(model="no-such-image-model", prompt="x")
    assert err.value.body["code"] == "model_not_found"
    # claude-haiku is served by Anthropic only, which has no image endpoint.
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="claude-haiku", prompt="x")
    assert err.value.body["code"] == "unsupported_by_model"
    assert "claude-haiku" in err.value.body["message"]
    assert all("images" not in e["path"] for e in gw.doubles["anthropic"].requests())


BIG_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module", params=paths.selected_hosts())
def big(request, doubles, tmp_path_factory):
    """A host whose gateway takes bodies up to 8 MiB (OpenAI takes 25 MB audio files)."""
    config = gateway_config(doubles)
    config["limits"]["max_request_bytes"] = BIG_LIMIT
    host = hosts.start(request.param, config, upstreams(doubles), secrets(doubles),
                       Path(tmp_path_factory.mktemp(f"{request.param}-big-media")))
    yield Gateway(host, doubles)
    host.stop()


def test_megabytes_of_audio_cross_the_host_both_ways(big):
    """A 3 MB upload (over Envoy's default 1 MiB buffer) and a 3 MB speech answer pass
    intact; a body over the gateway's own limit is its 413, in OpenAI's shape."""
    audio = upload(190.0)  # 8 kHz 16-bit: about 3 MB
    assert len(audio) > 3_000_000
    r = big.openai(timeout=60).audio.transcriptions.create(
        model="stt", file=("long.wav", io.BytesIO(audio), "audio/wav"))
    assert r.text.startswith(f"Transcript of long.wav: {len(audio)} bytes")
    assert big.doubles["openai"].last()["file"]["sha256"] == hashlib.sha256(audio).hexdigest()
    text = "x" * 3200  # 64 s of 24 kHz 16-bit speech: about 3 MB
    speech = big.openai(timeout=60).audio.speech.create(
        model="tts", voice="alloy", input=text, response_format="wav")
    assert speech.content == wav_bytes(len(text) * SECONDS_PER_CHAR)
    with pytest.raises(openai.APIStatusError) as err:
        big.openai(timeout=60).audio.transcriptions.create(
            model="stt", file=("huge.wav", io.BytesIO(b"\0" * (BIG_LIMIT + 1)), "audio/wav"))
    assert err.value.status_code == 413
    assert err.value.body["code"] == "request_too_large"
