"""Rate limits, budgets and deployment limits on every host, with the official SDKs.

The counters live in each host's shared store: Envoy's and host-runner's shared data
(compare-and-swap across workers: exact), Spin's key-value store (no compare-and-swap: a burst
may pass a limit by one request per instance racing in the same moment — the bound the
assertions allow for the component)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from . import hosts, paths
from .conftest import Gateway, secrets
from .gateway_config import PRICES, gateway_config, sha, upstreams
from .test_fallback_matrix import usage_records

KEY_RPM = "sk-e2e-rpm-1a2b"
KEY_BUDGET = "sk-e2e-budget-3c4d"
KEY_TEAM = "sk-e2e-team-5e6f"
RPM = 3
# Each budget request (no max_tokens) is estimated at its body's bytes of input and the
# model's max_output_tokens of output at the double's prices; the budget covers ~10 of those.
MAX_OUTPUT = 200
BUDGET_REQUESTS = 10
BURST = 40


def request_estimate_usd(body_bytes: int) -> float:
    price = PRICES["openai"]
    return (body_bytes * price["input"] + MAX_OUTPUT * price["output"]) / 1e6


def burst_prompt(i: int) -> str:
    # Every burst request is in flight for a second, so their reservations overlap.
    return f"budget burst {i:02d} [[fault:hang,seconds=1]]"


def limits_config(doubles) -> dict:
    config = gateway_config(doubles)
    body_bytes = len(json.dumps({"model": "budgeted", "messages": [
        {"role": "user", "content": burst_prompt(0)}]}, separators=(",", ":")).encode())
    # Room for BUDGET_REQUESTS reservations, and a little less than one more.
    budget = round(request_estimate_usd(body_bytes + 16) * (BUDGET_REQUESTS + 0.5), 9)
    config["keys"] += [
        {"id": "e2e-rpm", "sha256": sha(KEY_RPM), "limits": {"rpm": RPM}},
        {"id": "e2e-budget", "sha256": sha(KEY_BUDGET),
         "limits": {"budget": {"usd": budget, "period": "day"}}},
        {"id": "e2e-team", "sha256": sha(KEY_TEAM), "team": "slow-team"},
    ]
    config["limits"]["teams"] = {"slow-team": {"concurrent": 1}}
    config["models"] += [
        {"name": "budgeted", "max_output_tokens": MAX_OUTPUT, "deployments": [
            {"provider": "openai", "model": "gpt-budgeted", "price": PRICES["openai"]}]},
        # Two deployments, one request at a time each; no queue (test_queue.py has it).
        {"name": "narrow", "queue": {"max_wait_ms": 0}, "deployments": [
            {"provider": "openai", "model": "gpt-narrow", "price": PRICES["openai"],
             "limits": {"concurrent": 1}},
            {"provider": "anthropic", "model": "claude-narrow", "price": PRICES["anthropic"],
             "limits": {"concurrent": 1}}]},
    ]
    return config


@pytest.fixture(scope="module", params=paths.selected_hosts())
def lim(request, doubles, tmp_path_factory) -> Gateway:
    name = request.param
    host = hosts.start(name, limits_config(doubles), upstreams(doubles), secrets(doubles),
                       Path(tmp_path_factory.mktemp(f"{name}-limits")))
    yield Gateway(host, doubles)
    host.stop()


def test_requests_per_minute_refuse_with_openai_headers_on_every_answer(lim):
    client = lim.openai(key=KEY_RPM)
    for i in range(RPM):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"rpm {i}"}])
        assert raw.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert raw.headers["x-ratelimit-remaining-requests"] == str(RPM - 1 - i)
        assert raw.headers["x-ratelimit-reset-requests"]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "one too many"}])
    err = info.value
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.body["code"] == "rate_limit_exceeded"
    # The Anthropic SDK gets the same refusal in its own dialect.
    with pytest.raises(Exception) as info:
        lim.anthropic(key=KEY_RPM).messages.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert getattr(info.value, "status_code", None) == 429
    assert info.value.body["type"] == "error"
    # So do the Responses API and google-genai clients.
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="gpt-4o-mini", input="responses, one too many")
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    gemini = genai.Client(api_key=KEY_RPM, http_options=types.HttpOptions(
        base_url=lim.base_url, timeout=15_000))
    with pytest.raises(genai_errors.APIError) as info:
        gemini.models.generate_content(model="gpt-4o-mini", contents="gemini, one too many")
    assert (info.value.code, info.value.status) == (429, "RESOURCE_EXHAUSTED")


def test_a_burst_never_spends_past_the_budget(lim):
    """BURST concurrent requests against a key whose budget covers ~BUDGET_REQUESTS of them:
    the reservations admit no more than the budget can pay for, and the spend recorded in the
    usage records stays within it."""
    client = lim.openai(key=KEY_BUDGET, timeout=30)

    def one(i: int) -> str:
        try:
            client.chat.completions.create(
                model="budgeted", messages=[{"role": "user", "content": burst_prompt(i)}])
            return "ok"
        except openai.RateLimitError as e:
            assert e.body["code"] == "insufficient_quota", e.body
            return "refused"

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        outcomes = list(pool.map(one, range(BURST)))
    served = outcomes.count("ok")
    assert outcomes.count("refused") > 0, "the budget never bit"
    assert served >= 1
    deadline = time.monotonic() + 10
    while len(records := [r for r in usage_records(lim.host.log, "budgeted")]) < BURST:
        assert time.monotonic() < deadline, f"{len(records)} usage records of {BURST}"
        time.sleep(0.1)
    spent = sum(r["cost"] for r in records)
    config = limits_config(lim.doubles)
    budget = next(k for k in config["keys"] if k["id"] == "e2e-budget")["limits"]["budget"]["usd"]
    # Reservations are upper bounds, so a store with compare-and-swap cannot overshoot; Spin's
    # key-value store can let one more reservation per racing instance through.
    slack = 0.0 if not hosts.is_component(lim.name) else request_estimate_usd(100) * BURST
    assert spent <= budget + slack, (spent, budget, served)
    if not hosts.is_component(lim.name):
        # All in flight at once: no more than the budget's reservations were admitted.
        assert served <= BUDGET_REQUESTS, (served, outcomes)


def test_a_deployment_at_its_limit_is_skipped_then_all_full_is_a_429(lim):
    """`narrow` has two deployments of one slot each: two slow requests at once use both, a
    third finds both full and gets a 429 with Retry-After — no provider is asked past its
    quota."""
    client = lim.openai(timeout=30)

    def slow(i: int):
        raw = client.chat.completions.with_raw_response.create(
            model="narrow", messages=[{"role": "user", "content": f"narrow {i} [[fault:hang,seconds=2]]"}])
        return raw.headers["x-switchyard-attempts"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(slow, 1)
        time.sleep(0.3)
        second = pool.submit(slow, 2)
        time.sleep(0.3)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="narrow", messages=[{"role": "user", "content": "narrow 3"}])
        attempts = sorted([first.result(), second.result()])
    assert info.value.body["code"] == "deployments_saturated"
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert any("saturated" in a for a in attempts), attempts
    assert {a.split(";")[0].split("/")[0] for a in attempts} >= {"openai"}
    # Both free again afterwards.
    assert client.chat.completions.create(
        model="narrow", messages=[{"role": "user", "content": "narrow after"}]).choices


def test_a_teams_concurrency_limit_covers_its_keys(lim):
    client = lim.openai(key=KEY_TEAM, timeout=30)
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(lambda: client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "team slow [[fault:hang,seconds=2]]"}]))
        time.sleep(0.5)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "team second"}])
        assert held.result().choices
    assert info.value.body["code"] == "concurrency_limit_exceeded"
