"""OpenAI's media endpoints for the OpenAI double (and Azure's deployment-scoped ones):
image generation, text to speech, speech to text.

Wire formats (OpenAI API reference):
- Images: https://platform.openai.com/docs/api-reference/images/create — JSON in
  (`model`, `prompt`, `n`, `size`, `response_format` `url | b64_json`); answer
  `{"created", "data": [{"b64_json" | "url", "revised_prompt"?}], "usage"?}` (gpt-image-1
  reports `usage` with `input_tokens`, `output_tokens`, `total_tokens`,
  `input_tokens_details`).
- Image edits: https://platform.openai.com/docs/api-reference/images/createEdit —
  `multipart/form-data` in: `image` (one file) or `image[]` (several, GPT image models: up to
  16), each a PNG, WEBP or JPEG; `prompt` (required); `mask` (PNG, optional); `model`
  (`dall-e-2` when absent); `n` (1-10); `size`; `response_format` (`url | b64_json`,
  dall-e-2 only: GPT image models always answer `b64_json`). dall-e-2 takes exactly one
  image. The answer has the generation's shape.
- Speech: https://platform.openai.com/docs/api-reference/audio/createSpeech — JSON in
  (`model`, `input`, `voice`, `response_format` `mp3|opus|aac|flac|wav|pcm`, `speed`); the
  answer is the audio file's bytes. This double renders `wav` (RIFF PCM, 24 kHz mono 16-bit,
  as OpenAI's) and `pcm` (the same samples, no header) and refuses the compressed formats
  with OpenAI's 400 shape rather than send bytes that are not what they claim.
- Transcriptions: https://platform.openai.com/docs/api-reference/audio/createTranscription —
  `multipart/form-data` in (`file`, `model`, `language`, `prompt`, `response_format`
  `json|text|srt|verbose_json|vtt`, `temperature`); answers `{"text", "usage"?}` (json),
  the bare text (text), `{"task", "language", "duration", "text", "segments"}`
  (verbose_json).

A double cannot hear: its transcript names the file and its length, which is what the e2e
tests check reached the provider intact (the audio's SHA-256 is recorded too).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import json
import math
import struct
import time

from aiohttp import web

from . import common

# A real 1x1 PNG (one opaque white pixel).
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==")
SPEECH_RATE = 24_000
SECONDS_PER_CHAR = 0.02


def invalid(message: str, param: str | None = None) -> web.Response:
    return common.json_response({"error": {"message": message, "type": "invalid_request_error",
                                           "param": param, "code": None}}, 400)


def wav_bytes(seconds: float, rate: int = SPEECH_RATE) -> bytes:
    """A PCM WAV file: a 440 Hz tone of `seconds`."""
    n = max(1, int(seconds * rate))
    samples = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                       for i in range(n))
    header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", len(samples)) + samples


def wav_duration(data: bytes) -> float:
    """Seconds of a PCM WAV file (0 when it is not one)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0.0
    at, byte_rate = 12, 0
    while at + 8 <= len(data):
        cid, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        if cid == b"fmt ":
            byte_rate = struct.unpack("<I", data[at + 16:at + 20])[0]
        elif cid == b"data":
            return min(size, len(data) - at - 8) / byte_rate if byte_rate else 0.0
        at += 8 + size + (size & 1)
    return 0.0


def form_parts(content_type: str, raw: bytes) -> list[tuple[str, object]] | None:
    """Every part of a multipart/form-data body in order (repeated names kept, as `image[]`
    is): text values, and files as `{"filename", "content_type", "data"}`; None when it is
    not well-formed multipart."""
    if not content_type.lower().startswith("multipart/form-data") or b"--" not in raw[:2]:
        return None
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    if not msg.is_multipart() or msg.defects:
        return None
    parts = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            return None
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        parts.append((name, {"filename": filename, "content_type": part.get_content_type(),
                             "data": data} if filename else data.decode("utf-8", "replace")))
    return parts


def image_kind(data: bytes) -> str | None:
    """`png`, `jpeg` or `webp` by the file's magic bytes (what the edits endpoint takes)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class MediaRoutes:
    """Adds the media endpoints to an OpenAI-shaped double (`double`: its auth, recorder)."""

    def __init__(self, double) -> None:
        self.double = double

    def routes(self, app: web.Application, prefix: str = "/v1") -> None:
        app.router.add_post(prefix + "/images/generations", self.images)
        app.router.add_post(prefix + "/images/edits", self.edits)
        app.router.add_post(prefix + "/audio/speech", self.speech)
        app.router.add_post(prefix + "/audio/transcriptions", self.transcriptions)

    async def images(self, request: web.Request) -> web.Response:
        entry, body, early = await self.double.begin(request)
        if early:
            return early
        prompt, n = body.get("prompt"), body.get("n", 1)
        if not isinstance(prompt, str) or not prompt:
            return invalid("Missing required parameter: 'prompt'.", "prompt")
        if not isinstance(n, int) or not 1 <= n <= 10:
            return invalid(f"Invalid value for 'n': {n}.", "n")
        fmt = body.get("response_format", "url")
        if fmt == "b64_json":
            data = [{"b64_json": base64.b64encode(PNG_1X1).decode(), "revised_prompt": prompt}
                    for _ in range(n)]
        else:
            data = [{"url": f"https://images.double.test/{i}.png", "revised_prompt": prompt}
                    for i in range(n)]
        input_tokens = len(prompt.split())
        answer = {"created": int(time.time()), "data": data,
                  "usage": {"input_tokens": input_tokens, "output_tokens": 272 * n,
                            "total_tokens": input_tokens + 272 * n,
                            "input_tokens_details": {"text_tokens": input_tokens,
                                                     "image_tokens": 0}}}
        entry["response"] = {"images": n}
        return web.json_response(answer)

    async def begin_form(self, request: web.Request):
        """Records a multipart request and checks its key: (entry, parts, early answer)."""
        raw = await request.read()
        entry = self.double.state.record(request, raw)
        entry["body"] = None
        denied = self.double.check_auth(request)
        if denied:
            return entry, None, denied
        parts = form_parts(request.headers.get("Content-Type", ""), raw)
        if parts is None:
            return entry, None, invalid("Could not parse multipart form")
        return entry, parts, None

    async def edits(self, request: web.Request) -> web.Response:
        entry, parts, early = await self.begin_form(request)
        if early:
            return early
        fields = {k: v for k, v in parts if isinstance(v, str)}
        images = [v for k, v in parts if k in ("image", "image[]")]
        masks = [v for k, v in parts if k == "mask"]
        model = fields.get("model", "dall-e-2")
        gpt_image = model.startswith("gpt-image")
        if not gpt_image and model != "dall-e-2":
            return invalid(f"Invalid value: '{model}'. Supported values are: 'dall-e-2' and "
                           "'gpt-image-1'.", "model")
        if not images or not all(isinstance(i, dict) for i in images):
            return invalid("Missing required parameter: 'image'.", "image")
        if len(images) > (16 if gpt_image else 1):
            return invalid(f"Too many images: {len(images)}.", "image")
        for image in images:
            if image_kind(image["data"]) is None or (not gpt_image and
                                                    image_kind(image["data"]) != "png"):
                return invalid(f"Invalid image file: '{image['filename']}'. Supported "
                               "formats are 'png', 'webp' and 'jpeg'.", "image")
        if masks and (not isinstance(masks[0], dict)
                      or image_kind(masks[0]["data"]) != "png"):
            return invalid("Invalid mask: it must be a PNG file.", "mask")
        prompt = fields.get("prompt", "")
        if not prompt:
            return invalid("Missing required parameter: 'prompt'.", "prompt")
        try:
            n = int(fields.get("n", "1"))
        except ValueError:
            n = 0
        if not 1 <= n <= 10:
            return invalid(f"Invalid value for 'n': {fields.get('n')}.", "n")
        sizes = (("1024x1024", "1536x1024", "1024x1536", "auto") if gpt_image
                 else ("256x256", "512x512", "1024x1024"))
        if "size" in fields and fields["size"] not in sizes:
            return invalid(f"Invalid value: '{fields['size']}'. Supported values are: "
                           f"{', '.join(sizes)}.", "size")
        if gpt_image and "response_format" in fields:
            return invalid("Unknown parameter: 'response_format'. GPT image models always "
                           "return base64-encoded images.", "response_format")
        fmt = fields.get("response_format", "b64_json" if gpt_image else "url")
        if fmt not in ("url", "b64_json"):
            return invalid(f"Invalid value: '{fmt}'.", "response_format")
        entry["form"] = fields
        entry["files"] = [{"name": k, "filename": v["filename"], "bytes": len(v["data"]),
                           "sha256": hashlib.sha256(v["data"]).hexdigest()}
                          for k, v in parts if isinstance(v, dict)]
        if fmt == "b64_json":
            data = [{"b64_json": base64.b64encode(PNG_1X1).decode()} for _ in range(n)]
        else:
            data = [{"url": f"https://images.double.test/edit-{i}.png"} for i in range(n)]
        answer = {"created": int(time.time()), "data": data}
        if gpt_image:
            input_tokens = len(prompt.split()) + 65 * len(images)
            answer["usage"] = {"input_tokens": input_tokens, "output_tokens": 272 * n,
                               "total_tokens": input_tokens + 272 * n,
                               "input_tokens_details": {"text_tokens": len(prompt.split()),
                                                        "image_tokens": 65 * len(images)}}
        entry["response"] = {"images": n}
        return web.json_response(answer)

    async def speech(self, request: web.Request) -> web.Response:
        entry, body, early = await self.double.begin(request)
        if early:
            return early
        text, voice = body.get("input"), body.get("voice")
        if not isinstance(text, str) or not text:
            return invalid("Missing required parameter: 'input'.", "input")
        if not voice:
            return invalid("Missing required parameter: 'voice'.", "voice")
        fmt = body.get("response_format", "mp3")
        seconds = len(text) * SECONDS_PER_CHAR
        audio = wav_bytes(seconds)
        if fmt == "wav":
            content_type = "audio/wav"
        elif fmt == "pcm":
            audio, content_type = audio[44:], "audio/pcm"
        else:
            return invalid(f"The OpenAI double renders wav and pcm only, not '{fmt}'.",
                           "response_format")
        entry["response"] = {"seconds": seconds, "bytes": len(audio)}
        return web.Response(body=audio, content_type=content_type)

    async def transcriptions(self, request: web.Request) -> web.Response:
        entry, parts, early = await self.begin_form(request)
        if early:
            return early
        fields = dict(parts)
        file = fields.get("file")
        if not isinstance(file, dict):
            return invalid("Missing required parameter: 'file'.", "file")
        if not fields.get("model"):
            return invalid("Missing required parameter: 'model'.", "model")
        data = file["data"]
        duration = round(wav_duration(data), 3)
        entry["form"] = {k: v for k, v in fields.items() if k != "file"}
        entry["file"] = {"filename": file["filename"], "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}
        text = f"Transcript of {file['filename']}: {len(data)} bytes, {duration} seconds."
        fmt = fields.get("response_format", "json")
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt == "verbose_json":
            return web.json_response({
                "task": "transcribe", "language": fields.get("language", "english"),
                "duration": duration, "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text,
                              "tokens": [50364], "temperature": 0.0, "avg_logprob": -0.2,
                              "compression_ratio": 1.0, "no_speech_prob": 0.01}],
                "usage": {"type": "duration", "seconds": math.ceil(duration)}})
        if fmt == "json":
            return web.json_response({"text": text,
                                      "usage": {"type": "duration",
                                                "seconds": math.ceil(duration)}})
        return invalid(f"The OpenAI double answers json, text and verbose_json, not '{fmt}'.",
                       "response_format")
