"""What a host writes where others read it, under load and under broken input.

* Usage lines: the Spin component logs one `switchyard usage {json}` line per request on its
  stderr (the filter logs the same record through the proxy-wasm log). Hundreds of concurrent
  requests, streamed and not, through every provider double and both dialects, must leave
  exactly one whole line per request in the host's log, matched by the `x-request-id` the
  client got — none torn into another, none lost, none doubled.
* Broken request bodies: a client whose body breaks off (a short `Content-Length` body, a
  chunked body cut mid-chunk; then a half-close or a reset) gets at most the fixed dialect
  error `the request body could not be read` (400). No answer ever carries host error text
  (wasmtime errors, `Error { .. }` debug output, backtraces); the detail goes to the log.

Each host gets its own instance here, so its log holds this module's requests only.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from doubles.common import expected_text

from . import hosts, paths
from .conftest import Gateway, secrets
from .gateway_config import CHAT_MODELS, KEY_ALL, gateway_config, upstreams


@pytest.fixture(scope="module", params=paths.selected_hosts())
def host(request, doubles, tmp_path_factory) -> Gateway:
    name = request.param
    workdir = Path(tmp_path_factory.mktemp(f"{name}-output"))
    started = hosts.start(name, gateway_config(doubles), upstreams(doubles), secrets(doubles),
                          workdir)
    yield Gateway(started, doubles)
    started.stop()


# --- one whole usage line per request, under concurrency -------------------------------------

USAGE_MARKER = "switchyard usage "
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What may follow the record on its line: host-runner's tracing adds the proxy-wasm context
# id as a field (`context=7`); the component and Envoy add nothing.
TRAILER = re.compile(r"\s*(context=\d+)?\s*")

COMBOS = [(model, sdk, stream) for model in CHAT_MODELS for sdk in ("openai", "anthropic")
          for stream in (False, True)]
PER_COMBO = 15  # 16 combinations (4 provider doubles x 2 dialects x streamed or not) -> 240
TOTAL = len(COMBOS) * PER_COMBO
# Each double holds its answer this long, so every request is in flight at the same time.
HOLD_S = 3


def usage_lines(log: str) -> list[tuple[str, dict]]:
    """Every usage line of a host log with its record; fails on a line that is not exactly
    one whole record (a torn or merged line)."""
    out = []
    decoder = json.JSONDecoder()
    for line in log.splitlines():
        line = ANSI.sub("", line)
        if USAGE_MARKER not in line:
            assert '"request_id"' not in line, f"a torn piece of a usage record: {line!r}"
            continue
        assert line.count(USAGE_MARKER) == 1, f"usage lines merged into one: {line!r}"
        text = line.split(USAGE_MARKER, 1)[1]
        try:
            record, end = decoder.raw_decode(text)
        except ValueError as e:
            raise AssertionError(f"usage line is not whole JSON ({e}): {line!r}") from None
        assert isinstance(record, dict) and TRAILER.fullmatch(text[end:]), (
            f"usage line with something else after the record: {line!r}")
        out.append((line, record))
    return out


def ask(client, model: str, stream: bool, prompt: str) -> tuple[str, str]:
    """One chat request through an OpenAI or Anthropic SDK client; returns the
    `x-request-id` the client got and the answer text (asserting the answer is complete in
    its dialect)."""
    messages = [{"role": "user", "content": prompt}]
    if isinstance(client, openai.OpenAI):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, stream=stream)
        parsed = raw.parse()
        if stream:
            chunks = list(parsed)
            finishes = [c.choices[0].finish_reason for c in chunks
                        if c.choices and c.choices[0].finish_reason]
            assert finishes == ["stop"], finishes
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = parsed.choices[0].message.content
    else:
        raw = client.messages.with_raw_response.create(
            model=model, max_tokens=200, messages=messages, stream=stream)
        parsed = raw.parse()
        if stream:
            events = list(parsed)
            assert events[-1].type == "message_stop", [e.type for e in events]
            text = "".join(e.delta.text for e in events
                           if e.type == "content_block_delta" and e.delta.type == "text_delta")
        else:
            text = "".join(b.text for b in parsed.content if b.type == "text")
    return raw.headers["x-request-id"], text


def max_overlap(records: list[dict]) -> int:
    """The most requests the host had in flight at once, from the records' own start times
    and latencies."""
    edges = sorted([(r["timestamp_ms"], 1) for r in records]
                   + [(r["timestamp_ms"] + r["latency_ms"], -1) for r in records],
                   key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def test_concurrent_requests_leave_one_whole_usage_line_each(host):
    log = host.host.log
    # Records already there (the start-up probe's, say) are not this test's.
    earlier = {r["request_id"] for _, r in usage_lines(log.read_text(errors="replace"))}
    jobs = [(COMBOS[i % len(COMBOS)], i) for i in range(TOTAL)]
    start = threading.Barrier(TOTAL, timeout=60)

    def one(job):
        (model, sdk, stream), i = job
        prompt = f"concurrent usage line {i} [[fault:hang,seconds={HOLD_S}]]"
        client = host.openai(timeout=60) if sdk == "openai" else host.anthropic(timeout=60)
        start.wait()  # every request leaves at once
        with client:
            request_id, text = ask(client, model, stream, prompt)
        provider, upstream = CHAT_MODELS[model]
        assert text == expected_text(provider, upstream, prompt), (i, model, sdk, stream)
        return request_id, (model, provider, stream)

    with ThreadPoolExecutor(max_workers=TOTAL) as pool:
        answers = dict(pool.map(one, jobs))
    assert len(answers) == TOTAL, "x-request-id values repeat across requests"

    deadline = time.monotonic() + 20
    while True:  # the record follows the answer (on_log / after the last byte)
        records = [r for _, r in usage_lines(log.read_text(errors="replace"))
                   if r["request_id"] not in earlier]
        if len(records) >= TOTAL or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)), "a request has more than one usage line"
    missing = set(answers) - set(ids)
    assert not missing, f"{len(missing)} of {TOTAL} requests have no usage line"
    unknown = set(ids) - set(answers)
    assert not unknown, f"usage lines for requests never sent: {unknown}"
    for r in records:
        model, provider, stream = answers[r["request_id"]]
        assert (r["model"], r["provider"], r["stream"], r["status"], r["attempts"]) == (
            model, provider, stream, 200, 1), r
        assert r["latency_ms"] >= HOLD_S * 1000, r
    assert max_overlap(records) >= 200, (
        f"only {max_overlap(records)} requests were in flight at once on the host")


# --- a request body that breaks off --------------------------------------------------------

FIXED_MESSAGE = "the request body could not be read"
# Host error text that must never reach a client.
DEBUG_TEXT = ("wasmtime", "Error {", "backtrace", "panicked", "ErrorCode", "Caused by",
              "stack backtrace")
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [
    {"role": "user", "content": "a body that breaks off " + "x" * 400}]}).encode()
SENT = 300  # bytes of BODY that get through


def broken_request(host_url: str, framing: str, ending: str, request_id: str) -> bytes:
    """Send a chat request whose body breaks off after `SENT` bytes, end the connection
    (`fin`: half-close and keep reading; `reset`: abortive close), and return what came back."""
    addr = host_url.removeprefix("http://")
    hostname, port = addr.rsplit(":", 1)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n"
            f"Authorization: Bearer {KEY_ALL}\r\nContent-Type: application/json\r\n"
            f"x-request-id: {request_id}\r\n")
    if framing == "content-length":
        wire = (head + f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY[:SENT]
    else:  # one whole chunk, then a chunk that announces more than arrives
        first, second = BODY[:100], BODY[100:]
        wire = ((head + "Transfer-Encoding: chunked\r\n\r\n").encode()
                + b"%x\r\n" % len(first) + first + b"\r\n"
                + b"%x\r\n" % len(second) + second[:SENT - 100])
    with socket.create_connection((hostname, int(port)), timeout=10) as sock:
        sock.sendall(wire)
        time.sleep(0.3)  # let the host start on the body before it breaks
        if ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""  # closing with linger 0 sends RST: nothing can come back
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and (de-chunked) body of one raw HTTP/1.1 response."""

    class Wire:
        def makefile(self, *_args, **_kwargs):
            return io.BytesIO(raw)

    response = http.client.HTTPResponse(Wire())  # type: ignore[arg-type]
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def detail_line(log: Path, request_id: str, timeout: float = 10) -> str | None:
    pattern = f"switchyard: request {request_id}: cannot read the request body: "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if pattern in line:
                return line.split(pattern, 1)[1]
        time.sleep(0.1)
    return None


@pytest.mark.parametrize("ending", ["fin", "reset"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_breaks_off_never_answers_with_host_error_text(host, framing, ending):
    request_id = f"broken-body-{framing}-{ending}-{uuid.uuid4().hex[:8]}"
    answer = broken_request(host.base_url, framing, ending, request_id)
    text = answer.decode("utf-8", "replace")
    for needle in DEBUG_TEXT:
        assert needle.lower() not in text.lower(), f"host error text in the answer: {text!r}"

    if hosts.is_component(host.name):
        # The component reads the body itself, so it sees the break and says so: the detail
        # to the log, the fixed message to the client (when the connection still takes it).
        detail = detail_line(host.host.log, request_id)
        assert detail, f"no log line for {request_id}:\n{host.host.log_tail()}"
        assert detail not in text, f"the log detail reached the client: {text!r}"
        if ending == "fin":
            status, headers, body = parse_response(answer)
            assert status == 400, text
            assert headers.get("x-request-id") == request_id, text
            error = json.loads(body)["error"]
            assert error["message"] == FIXED_MESSAGE, error
            assert error["type"] == "invalid_request_error", error
    else:
        # A proxy-wasm filter never sees a body error: host-runner and Envoy reset the stream
        # (there is nothing for the filter to answer), so nothing comes back at all.
        assert text == "", f"{host.name} answered a broken body: {text!r}"

    # The host is unharmed: the next request on a new connection is answered normally.
    r = host.post("/v1/chat/completions", {"model": "gpt-4o-mini",
                                           "messages": [{"role": "user", "content": "still up?"}]})
    assert r.status_code == 200, r.text

