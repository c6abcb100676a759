"""Task submits are admitted exactly as synchronous requests are, on every host: `POST /v1/tasks`
and `Prefer: respond-async` generation requests count against the key's request limit and stop
at a spent budget, with the synchronous path's 429 in the caller's dialect (checked with the
official OpenAI and Anthropic SDKs). With a control plane (the task plane's own `gpu-backend`,
as in production) two edge instances share one counter: submits spread over both are limited
together, every admission answered by the control plane."""

from __future__ import annotations

import math
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from . import paths
from .conftest import Gateway
from .gateway_config import gateway_config, sha
from .task_plane import start_task_edge, start_task_plane
from .test_limits_shared import fallbacks, managed_key

KEY_TASK_RPM = "sk-e2e-task-rpm-61c2"
KEY_TASK_SPENT = "sk-e2e-task-spent-93d4"
RPM = 3
SHARED_RPM = 4
INSTANCES = 2


def task_limits_config(doubles) -> dict:
    config = gateway_config(doubles)
    config["keys"] += [
        {"id": "e2e-task-rpm", "sha256": sha(KEY_TASK_RPM), "limits": {"rpm": RPM}},
        # Nothing of it left: every request, a submit estimated at nothing included, is refused.
        {"id": "e2e-task-spent", "sha256": sha(KEY_TASK_SPENT),
         "limits": {"budget": {"usd": 0, "period": "total"}}},
    ]
    return config


@pytest.fixture(scope="module")
def plane(doubles, tmp_path_factory):
    """`gpu-backend`: the task plane and the control plane over one SQLite store."""
    p = start_task_plane(doubles, Path(tmp_path_factory.mktemp("task-limits-plane")),
                         config=task_limits_config(doubles))
    yield p
    p.stop()


@pytest.fixture(scope="module", params=paths.selected_hosts())
def edge(request, plane, doubles, tmp_path_factory) -> Gateway:
    """One instance admitting on its own counters (no control plane in its config)."""
    name = request.param
    host = start_task_edge(name, plane, doubles,
                           Path(tmp_path_factory.mktemp(f"{name}-task-limits")),
                           config=task_limits_config(doubles))
    yield Gateway(host, doubles)
    host.stop()


@pytest.fixture(scope="module", params=paths.selected_hosts())
def pair(request, plane, doubles, tmp_path_factory) -> list[Gateway]:
    """Two instances of one host admitting through the control plane."""
    name = request.param
    config = task_limits_config(doubles)
    # Generous: the tests assert every admission was the control plane's.
    config["control_plane"] = {**plane.control_plane_config(), "call_timeout_ms": 30000}
    started = [Gateway(start_task_edge(name, plane, doubles,
                                       Path(tmp_path_factory.mktemp(f"{name}-task-cp-{i}")),
                                       config=config), doubles)
               for i in range(INSTANCES)]
    yield started
    for gw in started:
        gw.host.stop()


def submit(gw: Gateway, key: str, way: str, text: str) -> httpx.Response:
    """One submit the `way` says: `tasks` (POST /v1/tasks), `chat` (OpenAI Chat with
    `Prefer: respond-async`) or `messages` (Anthropic Messages with it, Anthropic's headers)."""
    messages = [{"role": "user", "content": text}]
    if way == "tasks":
        return gw.post("/v1/tasks", {"model": "gpt-4o-mini", "input": {"messages": messages}},
                       key=key)
    if way == "chat":
        return gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": messages},
                       key=key, headers={"prefer": "respond-async"})
    return gw.post("/v1/messages",
                   {"model": "claude-haiku", "max_tokens": 16, "messages": messages}, key=None,
                   headers={"x-api-key": key, "anthropic-version": "2023-06-01",
                            "prefer": "respond-async"})


def refused_in_every_dialect(gw: Gateway, key: str, code: str) -> None:
    """POST /v1/tasks, and respond-async through the OpenAI and the Anthropic SDK, are each
    refused with a 429 in the caller's shape carrying `code` (OpenAI's error code)."""
    r = submit(gw, key, "tasks", f"refused via {gw.name}")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == code, r.text
    async_header = {"Prefer": "respond-async"}
    with pytest.raises(openai.RateLimitError) as info:
        gw.openai(key=key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "refused"}],
            extra_headers=async_header)
    assert info.value.body["code"] == code, info.value.body
    with pytest.raises(anthropic.RateLimitError) as info:
        gw.anthropic(key=key).messages.create(
            model="claude-haiku", max_tokens=16, messages=[{"role": "user", "content": "x"}],
            extra_headers=async_header)
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error", body


def test_submits_over_the_request_limit_get_429_in_the_callers_dialect(edge):
    # A task API submit and respond-async in both dialects each take one of the RPM requests.
    for i, way in enumerate(("tasks", "chat", "messages")):
        r = submit(edge, KEY_TASK_RPM, way, f"rpm {i} via {edge.name}")
        assert r.status_code == 202, r.text
        assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert r.headers["x-ratelimit-remaining-requests"] == str(RPM - 1 - i)
    r = submit(edge, KEY_TASK_RPM, "tasks", "one too many")
    assert r.status_code == 429, r.text
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(r.headers["retry-after"]) >= 1
    refused_in_every_dialect(edge, KEY_TASK_RPM, "rate_limit_exceeded")
    # A synchronous request is refused by the same counter.
    with pytest.raises(openai.RateLimitError):
        edge.openai(key=KEY_TASK_RPM).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "sync"}])


def test_a_spent_budget_refuses_submits_with_the_budget_error(edge):
    refused_in_every_dialect(edge, KEY_TASK_SPENT, "insufficient_quota")
    r = submit(edge, KEY_TASK_SPENT, "tasks", "spent")
    assert "is spent" in r.json()["error"]["message"], r.text
    # Reading tasks is not a submission: the task API still answers the key.
    assert edge.get("/v1/tasks", key=KEY_TASK_SPENT).status_code == 200


def test_two_instances_share_the_control_planes_request_limit(pair, plane):
    """3 × SHARED_RPM submits alternating over both instances (and over the task API and
    respond-async): SHARED_RPM are accepted in all, not SHARED_RPM per instance."""
    name = pair[0].name
    key_id = f"task-rpm-{name}-{int(time.time() * 1000)}"
    secret = managed_key(plane, [gw.host for gw in pair], key_id, {"rpm": SHARED_RPM})
    before = fallbacks([gw.host for gw in pair])
    started = time.monotonic()
    statuses, refused_by = [], set()
    for i in range(3 * SHARED_RPM):
        gw = pair[i % INSTANCES]
        r = submit(gw, secret, ("tasks", "chat")[i // INSTANCES % 2], f"shared {i}")
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded", r.text
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert int(r.headers["retry-after"]) >= 1
            refused_by.add(i % INSTANCES)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {202, 429}, statuses
    refill = math.ceil(elapsed * SHARED_RPM / 60)
    assert SHARED_RPM <= statuses.count(202) <= SHARED_RPM + refill, (statuses, elapsed)
    assert refused_by == set(range(INSTANCES)), "each instance refused once the shared limit bit"
    assert fallbacks([gw.host for gw in pair]) == before, "an instance admitted on its own"


def test_a_spent_budget_is_refused_by_the_control_plane_on_both_instances(pair, plane):
    name = pair[0].name
    key_id = f"task-spent-{name}-{int(time.time() * 1000)}"
    secret = managed_key(plane, [gw.host for gw in pair], key_id,
                         {"budget": {"usd": 0, "period": "total"}})
    before = fallbacks([gw.host for gw in pair])
    for gw in pair:
        refused_in_every_dialect(gw, secret, "insufficient_quota")
    assert fallbacks([gw.host for gw in pair]) == before, "an instance admitted on its own"
