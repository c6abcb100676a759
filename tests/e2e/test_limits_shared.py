"""Limits across gateway instances: two Envoys (or two host-runners) share one control plane
on PostgreSQL, and a managed key's budget and requests-per-minute hold across both.

The bound (control-plane/src/limits.rs): with `B` a scope's budget per period and `N`
instances, the spend is at most `B` while the control plane answers every admission
(reservations of upper-bound estimates against the shared store), and at most `B + N × B`
when instances admit on their own counters during an outage. Requests per minute alike:
`rpm` (plus the bucket's refill) across instances, `rpm + N × rpm` in an outage."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import httpx
import openai
import pytest

from . import hosts, paths
from .conftest import secrets
from .control_plane import EDGE_TOKEN, EDGE_TOKEN_SECRET, ControlPlane, postgres_url
from .gateway_config import PRICES, upstreams
from .test_limits import MAX_OUTPUT, limits_config

INSTANCES = 2
BURST = 500
BUDGET_REQUESTS = 50
OUTAGE_BURST = 60
OUTAGE_BUDGET_REQUESTS = 10
RPM = 20
TPM_REQUESTS = 10
SHARED_HOSTS = [h for h in paths.selected_hosts() if h in ("envoy", "host-runner")]


def prompt(tag: str, i: int) -> str:
    # 150 one-letter words: the double reports ~150 tokens in and echoes them out, so a
    # request really costs about two thirds of the edge's estimate (its body's bytes in, the
    # model's 200 max_output_tokens out): admitting every request of a burst would spend
    # several budgets, and the ledger would show it. Admitted requests stay in flight for
    # three seconds, so their reservations overlap.
    return f"{tag} {i:04d} {'a ' * 150}[[fault:hang,seconds=3]]"


def estimate_usd(tag: str) -> float:
    """The edge's upper estimate for one request: its body's bytes as input tokens and the
    model's max_output_tokens as output, at the deployment's price (a few bytes of room for
    how the SDK serialises)."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt(tag, 0)}],
                       "model": "budgeted"}, separators=(",", ":"))
    price = PRICES["openai"]
    return ((len(body) + 8) * price["input"] + MAX_OUTPUT * price["output"]) / 1e6


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    plane = ControlPlane(Path(tmp_path_factory.mktemp("shared-cp")), database_url=postgres_url())
    yield plane
    plane.stop()


@pytest.fixture(scope="module", params=SHARED_HOSTS)
def pair(request, cp, doubles, tmp_path_factory) -> list[hosts.Host]:
    name = request.param
    config = limits_config(doubles)
    # Generous: the test asserts every admission was the control plane's.
    config["control_plane"] = {**cp.control_plane_config(), "call_timeout_ms": 30000}
    ups = upstreams(doubles)
    ups["control_plane"] = cp.port
    started = [hosts.start(name, config, ups, {**secrets(doubles), EDGE_TOKEN_SECRET: EDGE_TOKEN},
                           Path(tmp_path_factory.mktemp(f"{name}-shared-{i}")))
               for i in range(INSTANCES)]
    yield started
    for host in started:
        host.stop()


def managed_key(cp: ControlPlane, pair: list[hosts.Host], key_id: str, limits: dict) -> str:
    """A managed key with `limits`, live on every instance."""
    secret = cp.create_key(key_id, limits=limits)
    deadline = time.monotonic() + 10
    for host in pair:
        while httpx.get(host.base_url + "/v1/models", timeout=10,
                        headers={"Authorization": f"Bearer {secret}"}).status_code != 200:
            assert time.monotonic() < deadline, f"{key_id} not live on {host.name}"
            time.sleep(0.1)
    time.sleep(1.5)  # every worker of every instance has the key (one more sync interval)
    return secret


async def burst(pair: list[hosts.Host], secret: str, tag: str, n: int) -> list[str]:
    """`n` requests at once with the OpenAI SDK, spread over the instances."""
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=n + 10), timeout=120)
    clients = [openai.AsyncOpenAI(base_url=h.base_url + "/v1", api_key=secret, max_retries=0,
                                  http_client=http) for h in pair]

    async def one(i: int) -> str:
        try:
            await clients[i % len(clients)].chat.completions.create(
                model="budgeted", messages=[{"role": "user", "content": prompt(tag, i)}])
            return "ok"
        except openai.RateLimitError as e:
            return e.body["code"]

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await http.aclose()


def ledger(cp: ControlPlane, key_id: str, requests: int, limit_s: float = 30) -> dict:
    """The ledger's totals for `key_id` once all `requests` records are in."""
    deadline = time.monotonic() + limit_s
    while True:
        r = cp.admin("GET", f"/admin/v1/usage?key={key_id}")
        assert r.status_code == 200, r.text
        totals = r.json()["totals"]
        if totals["requests"] >= requests:
            return totals
        assert time.monotonic() < deadline, f"{totals['requests']} of {requests} records"
        time.sleep(0.2)


def fallbacks(pair: list[hosts.Host]) -> int:
    return sum(h.log.read_text(errors="replace").count("could not admit it") for h in pair)


def test_a_burst_over_two_instances_never_spends_past_the_budget(pair, cp):
    """500 concurrent requests over both instances against a budget of ~50: the spend in the
    ledger is within the budget (bound 0: the control plane admitted every request)."""
    key_id = f"shared-budget-{pair[0].name}-{int(time.time() * 1000)}"
    budget = round(estimate_usd("burst") * (BUDGET_REQUESTS + 0.5), 9)
    secret = managed_key(cp, pair, key_id, {"budget": {"usd": budget, "period": "day"}})
    before = fallbacks(pair)
    outcomes = asyncio.run(burst(pair, secret, "burst", BURST))
    served = outcomes.count("ok")
    assert set(outcomes) <= {"ok", "insufficient_quota"}, set(outcomes)
    assert fallbacks(pair) == before, "an instance admitted on its own counters"
    totals = ledger(cp, key_id, BURST)
    spent = totals["cost_nano_usd"] / 1e9
    assert totals["requests"] == BURST
    assert spent <= budget, (spent, budget, served)
    # The budget was what refused: about BUDGET_REQUESTS were served (a few more when early
    # ones settled below their estimate while the burst was still arriving).
    assert BUDGET_REQUESTS // 2 <= served <= BUDGET_REQUESTS * 3 // 2, served
    # Every reservation was settled by its record: what the spend left is admissible again.
    left = budget - spent
    more = asyncio.run(burst(pair, secret, "after", 4))
    assert more.count("ok") == min(4, int(left / estimate_usd("after"))), (more, left)


def test_requests_per_minute_hold_across_two_instances(pair, cp):
    key_id = f"shared-rpm-{pair[0].name}-{int(time.time() * 1000)}"
    secret = managed_key(cp, pair, key_id, {"rpm": RPM})
    started = time.monotonic()
    outcomes = asyncio.run(burst(pair, secret, "rpm", 3 * RPM))
    elapsed = time.monotonic() - started
    served = outcomes.count("ok")
    assert set(outcomes) <= {"ok", "rate_limit_exceeded"}, set(outcomes)
    # The bucket holds RPM and refills RPM per minute while the burst lasts.
    refill = math.ceil(elapsed * RPM / 60)
    assert RPM <= served <= RPM + refill, (served, elapsed)


def estimate_tokens(tag: str) -> int:
    """The edge's upper estimate of one request's tokens: its body's bytes as input (a few
    bytes of room for how the SDK serialises) and the model's max_output_tokens as output."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt(tag, 0)}],
                       "model": "budgeted"}, separators=(",", ":"))
    return len(body) + 8 + MAX_OUTPUT


def test_tokens_per_minute_hold_across_two_instances(pair, cp):
    """A burst over both instances against a tokens-per-minute limit worth ~TPM_REQUESTS
    estimates: the tokens the ledger records for the key stay within the limit plus the
    bucket's refill while the burst lasts (real usage never exceeds the reserved estimate)."""
    key_id = f"shared-tpm-{pair[0].name}-{int(time.time() * 1000)}"
    tpm = estimate_tokens("tpm") * TPM_REQUESTS + estimate_tokens("tpm") // 2
    secret = managed_key(cp, pair, key_id, {"tpm": tpm})
    before = fallbacks(pair)
    started = time.monotonic()
    outcomes = asyncio.run(burst(pair, secret, "tpm", 4 * TPM_REQUESTS))
    elapsed = time.monotonic() - started
    served = outcomes.count("ok")
    assert set(outcomes) <= {"ok", "rate_limit_exceeded"}, set(outcomes)
    assert fallbacks(pair) == before, "an instance admitted on its own counters"
    totals = ledger(cp, key_id, 4 * TPM_REQUESTS)
    used = totals["input_tokens"] + totals["output_tokens"]
    refill = math.ceil(elapsed * tpm / 60)
    assert 0 < used <= tpm + refill, (used, tpm, refill, served)
    # The limit is what refused: about TPM_REQUESTS were served (more only as settled
    # requests gave back what they reserved beyond their real usage, or the bucket refilled).
    assert TPM_REQUESTS <= served <= (tpm + refill) // (estimate_tokens("tpm") // 2), served


def test_an_outage_is_bounded_by_instances_times_the_local_allowance(pair, cp):
    """With the control plane down, each instance admits on its own counters: the spend may
    pass the budget, but by no more than N × B. When it is back, the records reach the ledger."""
    key_id = f"shared-outage-{pair[0].name}-{int(time.time() * 1000)}"
    budget = round(estimate_usd("outage") * (OUTAGE_BUDGET_REQUESTS + 0.5), 9)
    secret = managed_key(cp, pair, key_id, {"budget": {"usd": budget, "period": "day"}})
    cp.stop()
    try:
        outcomes = asyncio.run(burst(pair, secret, "outage", OUTAGE_BURST))
    finally:
        cp.start()
    served = outcomes.count("ok")
    assert set(outcomes) <= {"ok", "insufficient_quota"}, set(outcomes)
    totals = ledger(cp, key_id, OUTAGE_BURST, limit_s=60)
    spent = totals["cost_nano_usd"] / 1e9
    assert spent <= budget + INSTANCES * budget, (spent, budget, served)
    # Each instance held its own admissions to the budget (a few more where early ones
    # settled below their estimate during the burst).
    assert served <= INSTANCES * OUTAGE_BUDGET_REQUESTS * 3 // 2, served
    # The outage is what let more than one budget's worth through: both instances served.
    assert served > OUTAGE_BUDGET_REQUESTS + 1, served
