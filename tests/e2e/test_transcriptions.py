"""Speech to text on the real gpu-backend: Whisper tiny.en (converted from CTranslate2 by
scripts/fetch-models.sh) transcribes a sentence spoken by espeak-ng, called with the official
openai SDK's audio.transcriptions.create directly against the backend."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import httpx
import openai
import pytest

from . import paths
from .test_gpu_backend import WORDS, running_backend, speech, words

MODEL = "whisper-tiny-en"
MAX_AUDIO_BYTES = 1_000_000


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    models = paths.models_dir()
    if not (models / MODEL / "model.safetensors").is_file():
        pytest.fail(f"{models / MODEL} is missing: run scripts/fetch-models.sh", pytrace=False)
    with running_backend(Path(tmp_path_factory.mktemp("gpu-backend-whisper")),
                         "--pin", MODEL, "--no-control-plane",
                         "--max-audio-bytes", str(MAX_AUDIO_BYTES),
                         "--max-audio-seconds", "60") as (url, _port):
        yield url


@pytest.fixture(scope="module")
def client(backend) -> openai.OpenAI:
    return openai.OpenAI(base_url=backend + "/v1", api_key="unused", max_retries=0, timeout=100)


def test_transcribes_the_spoken_sentence(client, speech):
    result = client.audio.transcriptions.create(model=MODEL, file=("sentence.wav", speech))
    heard = words(result.text)
    missing = [w for w in WORDS if w not in heard]
    assert not missing, f"{missing} not in {result.text!r}"


def test_text_and_verbose_json_formats(client, speech):
    text = client.audio.transcriptions.create(
        model=MODEL, file=("sentence.wav", speech), response_format="text", language="en")
    assert isinstance(text, str) and "lazy" in words(text)
    verbose = client.audio.transcriptions.create(
        model=MODEL, file=("sentence.wav", speech), response_format="verbose_json")
    assert verbose.language == "english"
    assert 1.5 < verbose.duration < 10
    assert len(verbose.segments) == 1
    segment = verbose.segments[0]
    assert segment.start == 0 and segment.end == pytest.approx(verbose.duration)
    assert words(segment.text) == words(verbose.text) and segment.tokens
    assert segment.no_speech_prob < 0.5


def test_stereo_44k_upload_is_downmixed_and_resampled(client, speech):
    # The same speech as 44.1 kHz stereo (sox-free: espeak's 22.05 kHz mono, each sample
    # doubled in time and copied to both channels).
    with wave.open(io.BytesIO(speech)) as w:
        assert w.getframerate() == 22050 and w.getnchannels() == 1 and w.getsampwidth() == 2
        mono = struct.unpack(f"<{w.getnframes()}h", w.readframes(w.getnframes()))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(struct.pack(f"<{len(mono) * 4}h", *(s for s in mono for _ in range(4))))
    result = client.audio.transcriptions.create(model=MODEL, file=("stereo.wav", out.getvalue()))
    assert {"quick", "fox", "lazy", "dog"} <= set(words(result.text)), result.text


def test_bad_input_gets_openai_errors(client, speech):
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model=MODEL, file=("notes.txt", b"not audio at all"))
    assert e.value.body["param"] == "file" and "WAV" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model=MODEL, file=("a.mp3", b"ID3\x04\0\0\0\0\0\0rest"))
    assert "'mp3' is not supported" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="whisper-nope", file=("s.wav", speech))
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model=MODEL, file=("s.wav", speech), language="fr")
    assert e.value.body["param"] == "language"
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.transcriptions.create(
            model=MODEL, file=("big.wav", speech + b"\0" * MAX_AUDIO_BYTES))
    assert e.value.status_code == 413


def test_missing_file_and_long_audio_are_refused(backend, speech):
    r = httpx.post(backend + "/v1/audio/transcriptions", data={"model": MODEL}, files={"x": b"1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    # 70 s of silence at 8 kHz 8-bit fits the byte limit but not --max-audio-seconds 60.
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 8000 * 70)
    r = httpx.post(backend + "/v1/audio/transcriptions", data={"model": MODEL},
                   files={"file": ("long.wav", buf.getvalue())})
    assert r.status_code == 400 and "at most 60" in r.json()["error"]["message"], r.text
