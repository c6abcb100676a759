"""Dynamic fallback, retries and load balancing: users never see a 502 (the fault matrix).

Driven by the official OpenAI and Anthropic SDKs through every host in SWITCHYARD_HOSTS, against
a host started for this module with its own gateway config (`fallback_config.py`): each
scenario has its own model whose chain is [primary double, secondary double] of *different*
provider kinds, so the fallback re-translates the request and the answer. Faults are queued
on the primary double only (`POST /_faults`, `times=1`), so the secondary answers normally.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest

from doubles.common import expected_text

from . import hosts, paths
from .checks import upstream_model
from .conftest import Gateway
from .gateway_config import KEY_ALL
from .fallback_config import (
    CHAINS, CHEAP_COOLDOWN_MS, CHEAP_DEPLOYMENTS, CHEAPEST, EJECT_AFTER, EJECT_COOLDOWN_MS,
    SOLO, SOLO_DEPLOYMENT, WEIGHTED, WEIGHTS, deployment, parse_attempts, start_fallback_host)

# Path substring of each double's chat endpoint, so a queued fault hits chat requests only.
CHAT_PATH = {"openai": "/chat/completions", "anthropic": "/v1/messages",
             "gemini": "generateContent", "dashscope": "/generation"}

@pytest.fixture(scope="module", params=paths.selected_hosts())
def fb(request, doubles, tmp_path_factory) -> Gateway:
    name = request.param
    host = start_fallback_host(name, doubles, Path(tmp_path_factory.mktemp(f"{name}-fallback")))
    yield Gateway(host, doubles)
    host.stop()


@pytest.fixture(autouse=True)
def _reset_doubles(doubles):
    doubles.reset()
    yield
    doubles.reset()


# --- calling the gateway with either SDK -----------------------------------------------------


class Answer:
    """What a client got: status, headers and the answer text (or the SDK error)."""

    def __init__(self, headers: httpx.Headers, text: str, status: int = 200) -> None:
        self.headers, self.text, self.status = headers, text, status

    @property
    def attempts(self) -> list[tuple[str, str, int]]:
        return parse_attempts(self.headers.get("x-switchyard-attempts"))


def ask(gw: Gateway, sdk: str, model: str, prompt: str, stream: bool = False,
        timeout: float = 30) -> Answer:
    return _ask(gw, sdk, model, prompt, stream, timeout)


def _ask(gw: Gateway, sdk: str, model: str, prompt: str, stream: bool = False,
         timeout: float = 30) -> Answer:
    """One chat request through `sdk`; asserts the answer is well-formed in that dialect
    (a stream ends with its finish/usage chunk or message_stop) and returns its text."""
    messages = [{"role": "user", "content": prompt}]
    if sdk == "openai":
        client = gw.openai(timeout=timeout)
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, stream=stream, **extra)
        parsed = raw.parse()
        if not stream:
            assert parsed.object == "chat.completion"
            assert parsed.choices[0].finish_reason == "stop"
            assert parsed.usage and parsed.usage.completion_tokens > 0
            return Answer(raw.headers, parsed.choices[0].message.content, raw.status_code)
        chunks = list(parsed)
        assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
        finishes = [c.choices[0].finish_reason for c in chunks
                    if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"], f"finish reasons {finishes}"
        assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return Answer(raw.headers, text, raw.status_code)
    client = gw.anthropic(timeout=timeout)
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=200, messages=messages, stream=stream)
    parsed = raw.parse()
    if not stream:
        assert parsed.type == "message" and parsed.stop_reason == "end_turn"
        assert parsed.usage.output_tokens > 0
        text = "".join(b.text for b in parsed.content if b.type == "text")
        return Answer(raw.headers, text, raw.status_code)
    events = list(parsed)
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "message_delta" in kinds
    text = "".join(e.delta.text for e in events
                   if e.type == "content_block_delta" and e.delta.type == "text_delta")
    return Answer(raw.headers, text, raw.status_code)


def ask_error(gw: Gateway, sdk: str, model: str, prompt: str, stream: bool = False):
    """A request that must fail with an HTTP error: returns the SDK's APIStatusError."""
    errors = openai.APIStatusError if sdk == "openai" else anthropic.APIStatusError
    with pytest.raises(errors) as info:
        _ask(gw, sdk, model, prompt, stream)
    return info.value


def assert_error_dialect(sdk: str, err, status: int) -> dict:
    assert err.status_code == status, f"status {err.status_code}, body {err.response.text}"
    body = err.response.json()
    if sdk == "openai":
        assert set(body) == {"error"}, body
        assert isinstance(body["error"].get("message"), str) and body["error"]["message"]
        assert "type" in body["error"]
    else:
        assert body.get("type") == "error", body
        assert isinstance(body["error"].get("message"), str) and body["error"]["message"]
        assert body["error"].get("type")
    return body


def chat_requests(gw: Gateway, provider: str, model: str | None = None) -> list[dict]:
    """Chat requests `provider`'s double received (optionally only those for `model`)."""
    return [r for r in gw.doubles[provider].requests()
            if CHAT_PATH[provider] in r["path"] and (model is None or upstream_model(r) == model)]


def inject(gw: Gateway, provider: str, times: int = 1, **fault) -> None:
    gw.doubles[provider].fault(path=CHAT_PATH[provider], times=times, **fault)


def assert_single_attempt(answer: Answer, dep: str) -> None:
    """Exactly one attempt, by `dep`, streamed or not."""
    assert [(a[0], a[1]) for a in answer.attempts] == [(dep, "200")], answer.attempts


def no_secret_in(gw: Gateway, *blobs: str) -> None:
    for d in gw.doubles.by_name.values():
        for blob in blobs:
            for secret in [d.api_key, *d.secrets.values()]:
                assert secret not in blob, f"{d.name}'s provider key leaked to the client"


# --- fallback on every fault kind -----------------------------------------------------------

# (SDK, model): OpenAI SDK -> OpenAI primary -> Anthropic secondary, and every other crossing.
COMBOS = [("openai", "fb-oa"), ("anthropic", "fb-an"), ("anthropic", "fb-oa"),
          ("openai", "fb-an")]

FAULTS = {
    "500": {"kind": "status", "status": 500},
    "503": {"kind": "status", "status": 503},
    "429-retry-after": {"kind": "status", "status": 429, "retry_after": 30},
    "hang": {"kind": "hang", "seconds": 6},
    "close-headers": {"kind": "close_headers"},
}
TIMEOUT_OUTCOMES = {"timeout", "504", "408"}
CONNECTION_OUTCOMES = {"502", "503", "connection-failed", "reset"}


def expected_outcomes(fault: dict) -> set[str]:
    if fault["kind"] == "status":
        return {str(fault["status"])}
    if fault["kind"] == "hang":
        return TIMEOUT_OUTCOMES
    return CONNECTION_OUTCOMES


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("fault_name", list(FAULTS))
@pytest.mark.parametrize("sdk,model", COMBOS, ids=[f"{s}-sdk-{m}" for s, m in COMBOS])
def test_primary_fault_falls_back_to_secondary(fb, sdk, model, fault_name, stream):
    fault = FAULTS[fault_name]
    (p_prov, p_model), (s_prov, s_model) = CHAINS[model]
    prompt = f"fallback {fault_name} {sdk} {model} {'stream' if stream else 'complete'}"
    inject(fb, p_prov, **fault)
    started = time.monotonic()
    answer = ask(fb, sdk, model, prompt, stream)
    elapsed = time.monotonic() - started

    assert answer.status == 200
    assert answer.text == expected_text(s_prov, s_model, prompt), "the secondary's answer"
    attempts = answer.attempts
    assert [a[0] for a in attempts] == [deployment(p_prov, p_model),
                                        deployment(s_prov, s_model)], attempts
    assert attempts[0][1] in expected_outcomes(fault), attempts
    assert attempts[1][1] == "200", attempts
    assert len(chat_requests(fb, p_prov, p_model)) == 1
    secondary = chat_requests(fb, s_prov, s_model)
    assert len(secondary) == 1, "the secondary is asked exactly once"
    # The secondary gets the request in its own schema and with its own credential.
    body = secondary[0]["body"]
    if s_prov == "anthropic":
        assert body["messages"][0]["content"] in (prompt, [{"type": "text", "text": prompt}])
        assert "max_tokens" in body
    else:
        assert body["messages"][-1]["content"] in (prompt, [{"type": "text", "text": prompt}])
    if fault_name == "429-retry-after":
        assert elapsed < 10, "fallback must not wait out the primary's Retry-After"
    if fault["kind"] == "hang":
        assert elapsed < 5.5, f"the hung primary should be abandoned after ~1.5 s ({elapsed:.1f}s)"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_primary_connection_refused_falls_back(fb, sdk, stream):
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-dead"]
    prompt = f"connection refused {sdk} {stream}"
    answer = ask(fb, sdk, "fb-dead", prompt, stream)
    assert answer.text == expected_text(s_prov, s_model, prompt)
    attempts = answer.attempts
    assert [a[0] for a in attempts] == [deployment(p_prov, p_model),
                                        deployment(s_prov, s_model)], attempts
    assert attempts[0][1] in CONNECTION_OUTCOMES, attempts
    assert len(chat_requests(fb, s_prov, s_model)) == 1


# --- final errors are not retried ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
@pytest.mark.parametrize("sdk,model", COMBOS, ids=[f"{s}-sdk-{m}" for s, m in COMBOS])
def test_non_retryable_4xx_is_returned_not_retried(fb, sdk, model, status, stream):
    (p_prov, p_model), (s_prov, s_model) = CHAINS[model]
    inject(fb, p_prov, kind="status", status=status)
    err = ask_error(fb, sdk, model, f"final {status} {sdk} {model}", stream)
    assert_error_dialect(sdk, err, status)
    no_secret_in(fb, err.response.text, json.dumps(dict(err.response.headers)))
    assert len(chat_requests(fb, p_prov, p_model)) == 1
    assert chat_requests(fb, s_prov) == [], "a final 4xx must not be retried on the secondary"
    attempts = parse_attempts(err.response.headers.get("x-switchyard-attempts"))
    assert [(a[0], a[1]) for a in attempts] == [
        (deployment(p_prov, p_model), str(status))], attempts


# --- failures after the first byte ------------------------------------------------------------

MID_STREAM = {"cut_stream": {"kind": "cut_stream", "after": 4},
              # Silent past the stall guard (ATTEMPT_TIMEOUT_MS on every host).
              "stall_stream": {"kind": "stall_stream", "after": 4, "seconds": 4},
              "malformed_sse": {"kind": "malformed_sse"}}


@pytest.mark.parametrize("fault_name", list(MID_STREAM))
@pytest.mark.parametrize("sdk,model", COMBOS, ids=[f"{s}-sdk-{m}" for s, m in COMBOS])
def test_mid_stream_failure_is_never_a_clean_end(fb, sdk, model, fault_name):
    """Bytes already reached the client, so there is no fallback: the stream must end with an
    error event in the caller's dialect (the SDK raises) — never as a silently truncated
    "successful" stream. The one exception is Envoy after an upstream *reset* or a stall past
    its `per_try_idle_timeout`: its router resets the client stream and gives filters no last
    word, so there the client sees a transport error (still never a clean end)."""
    (p_prov, p_model), (s_prov, _) = CHAINS[model]
    inject(fb, p_prov, **MID_STREAM[fault_name])
    prompt = f"mid stream {fault_name} {sdk} {model} with quite a few words to stream back"
    received: list = []
    sdk_module = openai if sdk == "openai" else anthropic
    # Both SDKs run on httpx2; a reset connection surfaces as its transport error, or as the
    # SDK's APIConnectionError.
    transport_errors = (httpx.TransportError, httpx2.TransportError,
                        sdk_module.APIConnectionError)
    # Envoy's router resets the client on an upstream reset and on its stall guard.
    envoy_reset = fb.name == "envoy" and fault_name in ("cut_stream", "stall_stream")
    if sdk == "openai":
        client = fb.openai()
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True,
            stream_options={"include_usage": True})
    else:
        client = fb.anthropic()
        stream = client.messages.create(model=model, max_tokens=200, stream=True,
                                        messages=[{"role": "user", "content": prompt}])
    with pytest.raises((sdk_module.APIError, *transport_errors)) as info:
        for item in stream:
            received.append(item)
    err = info.value
    if not (envoy_reset and isinstance(err, transport_errors)):
        # A well-formed error event; the SDK surfaced it while iterating.
        assert not isinstance(err, transport_errors), f"transport error, not an event: {err!r}"
        assert "upstream" in str(err), err
        no_secret_in(fb, str(err), json.dumps(getattr(err, "body", None) or {}))
    assert len(chat_requests(fb, p_prov, p_model)) == 1
    assert chat_requests(fb, s_prov) == [], "no fallback once bytes reached the client"
    if sdk == "openai":
        assert not any(c.choices and c.choices[0].finish_reason for c in received), (
            "a truncated stream must not carry a finish_reason")
    else:
        assert "message_stop" not in [e.type for e in received]


# --- every deployment fails ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_all_deployments_failing_is_one_clear_error(fb, sdk, stream):
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-all"]
    inject(fb, p_prov, kind="status", status=503)
    inject(fb, s_prov, kind="status", status=500)
    err = ask_error(fb, sdk, "fb-all", f"everything fails {sdk} {stream}", stream)
    body = assert_error_dialect(sdk, err, 502)
    message = body["error"]["message"]
    for dep, outcome in ((deployment(p_prov, p_model), "503"),
                         (deployment(s_prov, s_model), "500")):
        assert dep in message and outcome in message, message
    assert len(re.findall(r"\d+ ?ms", message)) >= 2, f"each attempt's duration: {message}"
    attempts = parse_attempts(err.response.headers.get("x-switchyard-attempts"))
    assert [(a[0], a[1]) for a in attempts] == [(deployment(p_prov, p_model), "503"),
                                                (deployment(s_prov, s_model), "500")]
    no_secret_in(fb, err.response.text, json.dumps(dict(err.response.headers)))
    assert len(chat_requests(fb, p_prov, p_model)) == 1
    assert len(chat_requests(fb, s_prov, s_model)) == 1


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_all_deployments_rate_limited_is_429_with_retry_after(fb, sdk):
    (p_prov, _), (s_prov, _) = CHAINS["fb-all"]
    inject(fb, p_prov, kind="status", status=429, retry_after=7)
    inject(fb, s_prov, kind="status", status=429, retry_after=7)
    err = ask_error(fb, sdk, "fb-all", f"everyone is rate limited {sdk}")
    body = assert_error_dialect(sdk, err, 429)
    assert err.response.headers.get("retry-after"), "a 429 tells the client when to retry"
    assert "429" in body["error"]["message"]


def test_all_deployments_timing_out_is_504(fb):
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-all"]
    inject(fb, p_prov, kind="hang", seconds=6)
    inject(fb, s_prov, kind="hang", seconds=6)
    started = time.monotonic()
    err = ask_error(fb, "openai", "fb-all", "everything hangs")
    assert time.monotonic() - started < 6
    body = assert_error_dialect("openai", err, 504)
    assert deployment(p_prov, p_model) in body["error"]["message"]
    assert deployment(s_prov, s_model) in body["error"]["message"]


# --- passive health: ejection and cooldown ---------------------------------------------------


def test_failing_primary_is_ejected_then_retried_after_cooldown(fb):
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-eject"]
    primary, secondary = deployment(p_prov, p_model), deployment(s_prov, s_model)
    inject(fb, p_prov, times=EJECT_AFTER, kind="status", status=503)
    for i in range(EJECT_AFTER):
        answer = ask(fb, "openai", "fb-eject", f"failing {i}")
        assert [(a[0], a[1]) for a in answer.attempts] == [(primary, "503"), (secondary, "200")]
    ejected_at = time.monotonic()
    assert len(chat_requests(fb, p_prov, p_model)) == EJECT_AFTER
    # Ejected: the primary is skipped, the secondary answers first time.
    for i in range(4):
        prompt = f"while ejected {i}"
        answer = ask(fb, "openai", "fb-eject", prompt, stream=bool(i % 2))
        assert answer.text == expected_text(s_prov, s_model, prompt)
        assert_single_attempt(answer, secondary)
    assert time.monotonic() - ejected_at < EJECT_COOLDOWN_MS / 1000, "test ran too slowly"
    assert len(chat_requests(fb, p_prov, p_model)) == EJECT_AFTER, (
        "an ejected deployment must get no requests during its cooldown")
    # After the cooldown it is tried again (and, healthy now, answers).
    time.sleep(max(0.0, EJECT_COOLDOWN_MS / 1000 + 0.3 - (time.monotonic() - ejected_at)))
    answer = ask(fb, "openai", "fb-eject", "after cooldown")
    assert answer.text == expected_text(p_prov, p_model, "after cooldown")
    assert [(a[0], a[1]) for a in answer.attempts] == [(primary, "200")]
    assert len(chat_requests(fb, p_prov, p_model)) == EJECT_AFTER + 1


def test_a_providers_retry_after_steers_every_request_to_the_secondary_until_it_is_over(fb):
    """One 429 with `Retry-After: 5` from the primary: that request falls back, and every
    request in the next 5 s goes straight to the secondary (the back-off is shared by the
    host's workers or instances); after it, the primary is asked again."""
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-throttled"]
    primary, secondary = deployment(p_prov, p_model), deployment(s_prov, s_model)
    back_off_s = 5
    inject(fb, p_prov, kind="status", status=429, retry_after=back_off_s)
    answer = ask(fb, "openai", "fb-throttled", "throttled")
    throttled_at = time.monotonic()
    assert [(a[0], a[1]) for a in answer.attempts] == [(primary, "429"), (secondary, "200")]
    for i in range(4):
        prompt = f"while backing off {i}"
        answer = ask(fb, "anthropic" if i % 2 else "openai", "fb-throttled", prompt,
                     stream=i >= 2)
        assert answer.text == expected_text(s_prov, s_model, prompt)
        assert_single_attempt(answer, secondary)
    assert time.monotonic() - throttled_at < back_off_s, "test ran too slowly"
    assert len(chat_requests(fb, p_prov, p_model)) == 1, "nobody asked the throttled primary"
    time.sleep(max(0.0, back_off_s + 0.3 - (time.monotonic() - throttled_at)))
    answer = ask(fb, "openai", "fb-throttled", "after the back-off")
    assert answer.text == expected_text(p_prov, p_model, "after the back-off")
    assert_single_attempt(answer, primary)


# --- bursts: half the primary's answers fail, the client sees none of it ---------------------


def test_burst_with_half_the_primary_failing_has_no_client_errors(fb):
    total, failing = 300, 150
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-burst"]
    inject(fb, p_prov, times=failing, kind="status", status=503)
    client = fb.openai(timeout=60)

    def one(i: int):
        prompt = f"burst request {i}"
        try:
            if i % 3 == 0:
                chunks = list(client.chat.completions.create(
                    model="fb-burst", stream=True, messages=[{"role": "user", "content": prompt}]))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                r = client.chat.completions.create(
                    model="fb-burst", messages=[{"role": "user", "content": prompt}])
                text = r.choices[0].message.content
        except openai.APIStatusError as e:
            return i, f"HTTP {e.status_code}: {e.response.text[:200]}"
        except openai.APIError as e:
            return i, f"{type(e).__name__}: {e}"
        if text == expected_text(p_prov, p_model, prompt):
            return i, "primary"
        if text == expected_text(s_prov, s_model, prompt):
            return i, "secondary"
        return i, f"wrong answer {text!r}"

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(total)))
    bad = [(i, r) for i, r in results if r not in ("primary", "secondary")]
    assert not bad, f"{len(bad)} of {total} requests failed, e.g. {bad[:5]}"
    by = {k: sum(1 for _, r in results if r == k) for k in ("primary", "secondary")}
    assert by["secondary"] == failing, by


# --- routing strategies through the real host ------------------------------------------------


def test_weighted_routing_follows_weights(fb):
    n = 400
    (heavy, w_heavy), (light, w_light) = WEIGHTS.items()
    p = w_heavy / (w_heavy + w_light)
    client = fb.openai()

    def one(i: int) -> str:
        r = client.chat.completions.create(
            model=WEIGHTED, messages=[{"role": "user", "content": f"weighted {i}"}])
        return r.choices[0].message.content.split(" echo ", 1)[0]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answered = list(pool.map(one, range(n)))
    counts = {who: answered.count(who) for who in set(answered)}
    assert set(counts) <= {f"{heavy[0]}/{heavy[1]}", f"{light[0]}/{light[1]}"}, counts
    share = counts.get(f"{heavy[0]}/{heavy[1]}", 0) / n
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(share - p) < 4 * sd, (
        f"weight {w_heavy}:{w_light} -> expected share {p:.2f} ± {4 * sd:.3f}, got {share:.3f}")


def test_cheapest_routing_picks_cheapest_healthy_deployment(fb):
    by_price = sorted(CHEAP_DEPLOYMENTS, key=lambda d: sum(d[2]))
    (c_prov, c_model, _), (m_prov, m_model, _) = by_price[0], by_price[1]
    cheapest, runner_up = deployment(c_prov, c_model), deployment(m_prov, m_model)
    for i in range(10):
        prompt = f"cheap {i}"
        answer = ask(fb, "anthropic" if i % 2 else "openai", CHEAPEST, prompt, stream=i % 3 == 0)
        assert answer.text == expected_text(c_prov, c_model, prompt)
        assert_single_attempt(answer, cheapest)
    # The cheapest fails once (eject_after_failures = 1): the next cheapest answers, and is
    # first until the cooldown ends.
    inject(fb, c_prov, kind="status", status=503)
    answer = ask(fb, "openai", CHEAPEST, "cheap fails")
    assert answer.text == expected_text(m_prov, m_model, "cheap fails")
    assert [(a[0], a[1]) for a in answer.attempts] == [(cheapest, "503"), (runner_up, "200")]
    failed_at = time.monotonic()
    answer = ask(fb, "openai", CHEAPEST, "cheap cooling")
    assert answer.text == expected_text(m_prov, m_model, "cheap cooling")
    assert_single_attempt(answer, runner_up)
    assert time.monotonic() - failed_at < CHEAP_COOLDOWN_MS / 1000
    time.sleep(max(0.0, CHEAP_COOLDOWN_MS / 1000 + 0.3 - (time.monotonic() - failed_at)))
    answer = ask(fb, "openai", CHEAPEST, "cheap again")
    assert answer.text == expected_text(c_prov, c_model, "cheap again")
    assert_single_attempt(answer, cheapest)
    never = [d for d in CHEAP_DEPLOYMENTS if d not in by_price[:2]]
    for prov, model, _ in never:
        assert chat_requests(fb, prov, model) == [], "the priciest was never needed"


# --- usage: attempts and the answering deployment are metered --------------------------------

METRIC_LINE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def metric_value(text: str, suffix: str, **labels: str) -> float:
    """Sum of the samples whose name ends with `suffix` and that carry `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or not m["name"].endswith(suffix):
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m["value"])
    return total


def usage_records(host_log: Path, model: str) -> list[dict]:
    out = []
    for line in host_log.read_text(errors="replace").splitlines():
        if "switchyard usage " not in line:
            continue
        raw = line.split("switchyard usage ", 1)[1].strip()
        try:
            record = json.loads(raw[raw.index("{"):raw.rindex("}") + 1])
        except ValueError:
            continue
        if record.get("model") == model:
            out.append(record)
    return out


def test_usage_and_metrics_show_attempts_and_answering_deployment(fb):
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-metered"]
    inject(fb, p_prov, times=2, kind="status", status=500)
    ask(fb, "openai", "fb-metered", "metered fallback one")
    ask(fb, "anthropic", "fb-metered", "metered fallback two", stream=True)
    ask(fb, "openai", "fb-metered", "metered straight")

    deadline = time.monotonic() + 5
    while len(records := usage_records(fb.host.log, "fb-metered")) < 3:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)  # on_log runs after the answer went out
    assert len(records) == 3, records
    by_attempts = sorted((r.get("attempts"), r.get("deployment"), r.get("status"))
                         for r in records)
    assert by_attempts == [(1, deployment(p_prov, p_model), 200),
                           (2, deployment(s_prov, s_model), 200),
                           (2, deployment(s_prov, s_model), 200)], records

    deadline = time.monotonic() + 10
    while True:
        text = fb.host.metrics_text()
        fallbacks = metric_value(text, "switchyard_fallbacks_total", model="fb-metered",
                                 provider=s_prov)
        ok_secondary = metric_value(text, "switchyard_requests_total", model="fb-metered",
                                    provider=s_prov, status="200")
        ok_primary = metric_value(text, "switchyard_requests_total", model="fb-metered",
                                  provider=p_prov, status="200")
        if (fallbacks, ok_secondary, ok_primary) == (2, 2, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.3)  # Envoy flushes wasm counters to /stats periodically
    lines = [line for line in text.splitlines() if "fb-metered" in line or "fb_metered" in line]
    assert (fallbacks, ok_secondary, ok_primary) == (2, 2, 1), "\n".join(lines)

@pytest.mark.parametrize("model", ["fb-oa", "fb-an"])
def test_client_hanging_up_after_the_terminal_event_is_metered_as_success(fb, model):
    """SDKs stop reading at the terminal event (openai-python closes at `[DONE]`). When the
    upstream is slow to end its body after that event, the client is gone before the host
    sees the end: the client still had the whole answer, so the request is a success."""
    (p_prov, p_model), _ = CHAINS[model]
    before = len(usage_records(fb.host.log, model))
    # Shorter than the stall guard (ATTEMPT_TIMEOUT_MS), so the upstream ends normally.
    linger_s = 1.2
    inject(fb, p_prov, kind="linger_end", seconds=linger_s)
    openai_dialect = p_prov == "openai"  # each on its pass-through fast path
    path, terminal, headers = (
        ("/v1/chat/completions", "data: [DONE]", {"authorization": f"Bearer {KEY_ALL}"})
        if openai_dialect else
        ("/v1/messages", "event: message_stop",
         {"x-api-key": KEY_ALL, "anthropic-version": "2023-06-01"}))
    body = {"model": model, "stream": True, "max_tokens": 100,
            "messages": [{"role": "user", "content": "hang up after the terminal event"}]}
    seen = []
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", fb.base_url + path, json=body, headers=headers) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                seen.append(line)
                if line.startswith(terminal):
                    break  # hang up here, as the SDK does
    hung_up = time.monotonic()
    assert any(line.startswith(terminal) for line in seen), seen
    assert hung_up - started < linger_s, "the terminal event waited for the upstream's end"
    deadline = time.monotonic() + 10
    while len(records := usage_records(fb.host.log, model)) <= before:
        assert time.monotonic() < deadline, "no usage record"
        time.sleep(0.05)
    if not hosts.is_component(fb.name):
        # Envoy and host-runner log the request when the client hangs up, before the upstream
        # ends its body: this record comes from that path. (The component only notices the
        # hang-up if it has bytes left to write, and here it has none.)
        assert time.monotonic() - hung_up < linger_s - 0.2, "metered only after the upstream end"
    record = records[-1]
    assert record["status"] == 200, record
    assert record["deployment"] == deployment(p_prov, p_model), record
    assert record["output_tokens"] > 0, record


@pytest.mark.parametrize("fault_name", [
    "cut_stream",
    "stall_stream",
    "malformed_sse"])
def test_stream_failing_after_first_byte_is_metered_as_failed(fb, fault_name):
    (p_prov, _), _ = CHAINS["fb-cut"]
    before = len(usage_records(fb.host.log, "fb-cut"))
    inject(fb, p_prov, **MID_STREAM[fault_name])
    with pytest.raises((httpx.TransportError, httpx2.TransportError, openai.APIError)):
        for _ in fb.openai().chat.completions.create(
                model="fb-cut", stream=True,
                messages=[{"role": "user", "content": "metered cut stream with several words"}]):
            pass
    deadline = time.monotonic() + 5
    while len(records := usage_records(fb.host.log, "fb-cut")) <= before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(records) == before + 1, records
    assert records[-1]["status"] >= 500, records[-1]

@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_streamed_answer_lists_its_attempt(fb, sdk):
    (p_prov, p_model), _ = CHAINS["fb-oa"]
    answer = ask(fb, sdk, "fb-oa", f"streamed single attempt {sdk}", stream=True)
    assert [(a[0], a[1]) for a in answer.attempts] == [(deployment(p_prov, p_model), "200")]


def test_many_sequential_fallbacks_never_leak_the_primary_error(fb):
    """100 fallbacks in a row, each on a fresh connection: every one answers 200 with the
    secondary's answer (a held primary error must never be released instead, and the
    fallback's reply must never be lost: host-runner once dropped it ~1 in 200 times when a
    cancelled select! branch had already taken it from the VM)."""
    (p_prov, _), (s_prov, s_model) = CHAINS["fb-oa"]
    leaked = []
    for i in range(100):
        inject(fb, p_prov, kind="status", status=(503, 500, 429)[i % 3])
        prompt = f"sequential fallback {i}"
        r = fb.post("/v1/chat/completions",
                    {"model": "fb-oa", "messages": [{"role": "user", "content": prompt}]})
        if r.status_code != 200:
            leaked.append((i, r.status_code, r.headers.get("server"), r.text[:120]))
            continue
        assert r.json()["choices"][0]["message"]["content"] == expected_text(s_prov, s_model,
                                                                             prompt)
    assert not leaked, f"{len(leaked)} of 100 fallbacks answered an error: {leaked[:3]}"


# --- the endings the hosts once disagreed on (one lifecycle in the core now) ----------------


def wait_for_record(fb: Gateway, model: str, before: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while len(records := usage_records(fb.host.log, model)) <= before:
        assert time.monotonic() < deadline, f"no usage record for {model}"
        time.sleep(0.05)
    assert len(records) == before + 1, records
    return records[-1]


@pytest.mark.parametrize("sdk,model", COMBOS, ids=[f"{s}-sdk-{m}" for s, m in COMBOS])
def test_complete_answer_cut_mid_body_falls_back(fb, sdk, model):
    """A provider that sends a complete answer's head (full Content-Length), half its body,
    then resets: nothing reached the client yet, so every host falls back and meters 200."""
    (p_prov, p_model), (s_prov, s_model) = CHAINS[model]
    before = len(usage_records(fb.host.log, model))
    inject(fb, p_prov, kind="cut_body")
    prompt = f"cut body {sdk} {model}"
    answer = ask(fb, sdk, model, prompt)
    assert answer.text == expected_text(s_prov, s_model, prompt)
    attempts = answer.attempts
    assert [(a[0], a[1]) for a in attempts] == [(deployment(p_prov, p_model), "reset"),
                                                (deployment(s_prov, s_model), "200")], attempts
    record = wait_for_record(fb, model, before)
    assert (record["status"], record["attempts"]) == (200, 2), record


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_complete_answer_cut_mid_body_everywhere_is_a_dialect_502(fb, sdk):
    """With nowhere left to go, the cut answer is one 502 in the caller's dialect (never a
    closed connection or the proxy's own text), and it is metered as the 502 it is."""
    (p_prov, p_model), (s_prov, s_model) = CHAINS["fb-all"]
    before = len(usage_records(fb.host.log, "fb-all"))
    inject(fb, p_prov, kind="cut_body")
    inject(fb, s_prov, kind="cut_body")
    err = ask_error(fb, sdk, "fb-all", f"cut everywhere {sdk}")
    body = assert_error_dialect(sdk, err, 502)
    assert "reset" in body["error"]["message"], body
    no_secret_in(fb, err.response.text)
    record = wait_for_record(fb, "fb-all", before)
    assert record["status"] == 502, record


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_single_deployment_answer_cut_mid_body_is_a_dialect_502(fb, sdk):
    """A model with one deployment: its only attempt is the chain's last, and by default a
    complete answer cut mid-body still gets the 502 in the caller's dialect on every host
    (the filter's call sees the reset; `edge.route_complete_answers` is off)."""
    provider, model = SOLO_DEPLOYMENT
    before = len(usage_records(fb.host.log, SOLO))
    inject(fb, provider, kind="cut_body")
    err = ask_error(fb, sdk, SOLO, f"cut solo {sdk}")
    body = assert_error_dialect(sdk, err, 502)
    assert "reset" in body["error"]["message"], body
    assert [(a[0], a[1]) for a in parse_attempts(err.response.headers.get(
        "x-switchyard-attempts"))] == [(deployment(provider, model), "reset")]
    no_secret_in(fb, err.response.text)
    record = wait_for_record(fb, SOLO, before)
    assert record["status"] == 502, record


@pytest.fixture(scope="module", params=paths.selected_hosts())
def fb_routed(request, doubles, tmp_path_factory) -> Gateway:
    """A host like `fb` whose gateway opts in to `edge.route_complete_answers`."""
    name = request.param
    host = start_fallback_host(name, doubles, Path(tmp_path_factory.mktemp(f"{name}-routed")),
                               route_complete_answers=True)
    yield Gateway(host, doubles)
    host.stop()


def test_opted_in_single_deployment_answer_is_relayed_and_metered(fb_routed):
    """With `edge.route_complete_answers: true` the only attempt's same-format answer is
    relayed: its bytes pass to the client as they arrive (proxy-wasm: the body is not held;
    the Spin component: each chunk written on) and its usage is found on the way, metered
    exactly as the answer held whole would be."""
    gw = fb_routed
    provider, model = SOLO_DEPLOYMENT
    prompt = "routed solo"
    before = len(usage_records(gw.host.log, SOLO))
    answer = ask(gw, "openai", SOLO, prompt)
    assert answer.text == expected_text(provider, model, prompt)
    assert_single_attempt(answer, deployment(provider, model))
    # That answer's record is written after the client has it: count it in before the next.
    wait_for_record(gw, SOLO, before)
    before += 1

    request = {"model": SOLO, "messages": [{"role": "user", "content": "relayed usage"}]}
    response = gw.post("/v1/chat/completions", request)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage
    record = wait_for_record(gw, SOLO, before)
    assert record["status"] == 200, record
    assert (record["input_tokens"], record["output_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"]), (record, usage)


def test_opted_in_single_deployment_answer_cut_mid_body_reaches_the_client_cut(fb_routed):
    """The documented cost of `edge.route_complete_answers: true`: the only attempt's answer
    is relayed as it arrives, so once its head went out nothing can replace a body cut
    mid-way with the dialect's 502. On every host the client gets the head and a body
    shorter than its `Content-Length` (the connection closes: a transport error for the
    client, never a complete-looking answer), and the request is metered 502."""
    gw = fb_routed
    provider, _ = SOLO_DEPLOYMENT
    before = len(usage_records(gw.host.log, SOLO))
    inject(gw, provider, kind="cut_body")
    request = {"model": SOLO, "messages": [{"role": "user", "content": "cut routed solo"}]}
    with pytest.raises(httpx.TransportError):
        gw.post("/v1/chat/completions", request)
    record = wait_for_record(gw, SOLO, before)
    assert record["status"] == 502, record


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_client_hanging_up_mid_stream_is_metered_499(fb, sdk):
    """A client that leaves mid-stream (before the terminal event) is metered 499 — "client
    closed request" — on every host, not as an upstream failure and not as a success."""
    (p_prov, p_model), _ = CHAINS["fb-cut"]
    before = len(usage_records(fb.host.log, "fb-cut"))
    # The upstream pauses after a few events (within the stall guard), so the client's
    # hang-up happens with the stream open.
    inject(fb, p_prov, kind="stall_stream", after=3, seconds=1)
    prompt = "hang up mid stream with a good number of words to stream back to the client"
    with httpx.Client(base_url=fb.base_url, timeout=10) as client:
        if sdk == "openai":
            path, body = "/v1/chat/completions", {
                "model": "fb-cut", "stream": True,
                "messages": [{"role": "user", "content": prompt}]}
            headers = {"Authorization": f"Bearer {KEY_ALL}"}
        else:
            path, body = "/v1/messages", {
                "model": "fb-cut", "stream": True, "max_tokens": 100,
                "messages": [{"role": "user", "content": prompt}]}
            headers = {"x-api-key": KEY_ALL, "anthropic-version": "2023-06-01"}
        with client.stream("POST", path, json=body, headers=headers) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # the first event arrived: hang up with the stream open
    record = wait_for_record(fb, "fb-cut", before)
    assert record["status"] == 499, record
    assert record["deployment"] == deployment(p_prov, p_model), record
