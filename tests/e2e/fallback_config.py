"""A host dedicated to the fallback / load-balancing tests, with its own gateway config.

Each scenario gets its own model, and each model its own upstream model names, so the shared
passive health (ejection) of one scenario never leaks into another. Per-attempt timeouts are
short so a hanging primary costs ~1.5 s, on both hosts:

* Envoy: the filter sets `x-envoy-upstream-rq-timeout-ms` from `attempt_timeout_ms` for
  complete answers and `x-envoy-upstream-rq-per-try-timeout-ms` for streams (time to first
  byte); the route's `per_try_idle_timeout` stall guard is shortened to `ATTEMPT_TIMEOUT_MS`.
* host-runner: every cluster gets `request_timeout_ms = ATTEMPT_TIMEOUT_MS` (time to response
  headers) and the same `idle_timeout_ms` (the stall guard, like Envoy's
  `per_try_idle_timeout`) through `--cluster-config`.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from doubles.server import Doubles

from . import hosts
from .gateway_config import PRICES, cluster_name, gateway_config, upstreams

ATTEMPT_TIMEOUT_MS = 1500
TOTAL_TIMEOUT_MS = 9000
NEVER_EJECT = 1_000_000

# Primary / secondary of the fault-injection models: (provider double, upstream model).
CHAINS = {
    # OpenAI primary, Anthropic secondary.
    "fb-oa": [("openai", "gpt-fb-primary"), ("anthropic", "claude-fb-secondary")],
    # Anthropic primary, OpenAI secondary.
    "fb-an": [("anthropic", "claude-fb-primary"), ("openai", "gpt-fb-secondary")],
    # A primary nobody listens on (connection refused), Anthropic secondary.
    "fb-dead": [("dead", "gpt-fb-dead"), ("anthropic", "claude-fb-after-dead")],
    # Every deployment fails (faults on both).
    "fb-all": [("openai", "gpt-fb-all"), ("anthropic", "claude-fb-all")],
    # Ejection after 2 failures, 2 s cooldown.
    "fb-eject": [("openai", "gpt-fb-eject"), ("anthropic", "claude-fb-eject")],
    # No ejection by failures; a provider's 429 with `Retry-After` holds back every request.
    "fb-throttled": [("openai", "gpt-fb-throttled"), ("anthropic", "claude-fb-throttled")],
    # Many concurrent requests, half of them failing on the primary.
    "fb-burst": [("openai", "gpt-fb-burst"), ("anthropic", "claude-fb-burst")],
    # Dedicated to the usage / metrics test.
    "fb-metered": [("openai", "gpt-fb-metered"), ("anthropic", "claude-fb-metered")],
    # Dedicated to metering of streams that fail after the first byte.
    "fb-cut": [("openai", "gpt-fb-cut"), ("anthropic", "claude-fb-cut")],
}
# A single-deployment model (no fallback chain): its only attempt is the chain's last.
SOLO = "fb-solo"
SOLO_DEPLOYMENT = ("openai", "gpt-fb-solo")
EJECT_AFTER = 2
# Long enough that the requests made "while ejected" fit inside it on a loaded 2-core CI box.
EJECT_COOLDOWN_MS = 5000

WEIGHTED = "fb-weighted"  # openai/gpt-fb-w3 (weight 3) vs gemini/gemini-fb-w1 (weight 1)
WEIGHTS = {("openai", "gpt-fb-w3"): 3, ("gemini", "gemini-fb-w1"): 1}

CHEAPEST = "fb-cheapest"  # listed priciest first; cheapest must be tried first
CHEAP_DEPLOYMENTS = [  # (provider, upstream model, price input/output per 1M)
    ("openai", "gpt-fb-pricey", (5.0, 15.0)),
    ("anthropic", "claude-fb-cheap", (0.1, 0.2)),
    ("gemini", "gemini-fb-mid", (1.0, 2.0)),
]
CHEAP_COOLDOWN_MS = 4000  # likewise

DEAD_CLUSTER = "dead_upstream"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def policy(eject_after: int = NEVER_EJECT, cooldown_ms: int = 1000,
           share_retry_after: bool | None = None) -> dict:
    # Without ejection, a provider's 429 with `Retry-After` holds back only its own request
    # (unless asked): every scenario starts with a primary nobody holds back.
    if share_retry_after is None:
        share_retry_after = eject_after != NEVER_EJECT
    return {"retry_on": [408, 429, 500, 502, 503, 504, 529],
            "attempt_timeout_ms": ATTEMPT_TIMEOUT_MS, "total_timeout_ms": TOTAL_TIMEOUT_MS,
            "eject_after_failures": eject_after, "cooldown_ms": cooldown_ms,
            "share_retry_after": share_retry_after}


def _price(provider: str) -> dict:
    return PRICES.get(provider, PRICES["openai"])


def fallback_gateway_config(doubles: Doubles, dead_port: int,
                            route_complete_answers: bool = False) -> dict:
    """The suite's keys and providers (every double), a `dead` provider, and the models above;
    `route_complete_answers` sets the gateway's `edge.route_complete_answers` opt-in."""
    base = gateway_config(doubles)
    providers = dict(base["providers"])
    providers["dead"] = {"kind": "openai", "base_url": f"http://127.0.0.1:{dead_port}",
                         "cluster": DEAD_CLUSTER,
                         "api_key_secret": doubles["openai"].secret_env}
    models = []
    for name, chain in CHAINS.items():
        eject = EJECT_AFTER if name == "fb-eject" else NEVER_EJECT
        models.append({
            "name": name, "strategy": "priority",
            "deployments": [{"provider": p, "model": m, "price": _price(p)} for p, m in chain],
            "fallback": policy(eject, EJECT_COOLDOWN_MS,
                               share_retry_after=True if name == "fb-throttled" else None)})
    models.append({
        "name": WEIGHTED, "strategy": "weighted",
        "deployments": [{"provider": p, "model": m, "weight": w, "price": _price(p)}
                        for (p, m), w in WEIGHTS.items()],
        "fallback": policy()})
    models.append({
        "name": CHEAPEST, "strategy": "cheapest",
        "deployments": [{"provider": p, "model": m, "price": {"input": i, "output": o}}
                        for p, m, (i, o) in CHEAP_DEPLOYMENTS],
        "fallback": policy(eject_after=1, cooldown_ms=CHEAP_COOLDOWN_MS)})
    solo_provider, solo_model = SOLO_DEPLOYMENT
    models.append({
        "name": SOLO,
        "deployments": [{"provider": solo_provider, "model": solo_model,
                         "price": _price(solo_provider)}],
        "fallback": policy()})
    return {"keys": base["keys"], "providers": providers, "models": models,
            "limits": base["limits"], "fallback": policy(),
            "edge": {"route_complete_answers": route_complete_answers}}


def fallback_upstreams(doubles: Doubles, dead_port: int) -> dict[str, int]:
    out = upstreams(doubles)
    out[DEAD_CLUSTER] = dead_port
    return out


def _shorten_route_idle_timeout(envoy_cfg: dict) -> None:
    hcm = envoy_cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for vhost in hcm["typed_config"]["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if "route" in route:
                route["route"]["idle_timeout"] = f"{ATTEMPT_TIMEOUT_MS / 1000}s"


def start_fallback_host(name: str, doubles: Doubles, workdir: Path,
                        route_complete_answers: bool = False) -> hosts.Host:
    dead_port = free_port()
    config = fallback_gateway_config(doubles, dead_port, route_complete_answers)
    ups = fallback_upstreams(doubles, dead_port)
    secrets = {k: v for d in doubles.by_name.values() for k, v in d.secrets.items()}
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "envoy":
        return hosts.start_envoy(config, ups, secrets, workdir,
                                 customize=_shorten_route_idle_timeout)
    if name == "host-runner":
        clusters = [{"name": c, "address": f"127.0.0.1:{port}", "connect_timeout_ms": 1000,
                     "request_timeout_ms": ATTEMPT_TIMEOUT_MS,
                     "idle_timeout_ms": ATTEMPT_TIMEOUT_MS} for c, port in ups.items()]
        cluster_file = workdir / "clusters.json"
        cluster_file.write_text(json.dumps({"clusters": clusters}, indent=2))
        return hosts.start_host_runner(config, {}, secrets, workdir,
                                       extra_args=["--cluster-config", str(cluster_file)])
    return hosts.start(name, config, ups, secrets, workdir)


# --- reading what the gateway answered -------------------------------------------------------

ATTEMPT_RE = re.compile(r"^\s*(?P<deployment>[^;,]+);(?P<outcome>[^;,]+);(?P<ms>\d+)ms\s*$")


def parse_attempts(value: str | None) -> list[tuple[str, str, int]]:
    """`x-switchyard-attempts` (`deployment;outcome;Nms, ...`) as (deployment, outcome, ms)."""
    out = []
    for part in (value or "").split(","):
        if not part.strip():
            continue
        m = ATTEMPT_RE.match(part)
        assert m, f"malformed x-switchyard-attempts entry {part!r} in {value!r}"
        out.append((m["deployment"], m["outcome"], int(m["ms"])))
    return out


def deployment(provider: str, model: str) -> str:
    return f"{provider}/{model}"


__all__ = ["CHAINS", "cluster_name", "parse_attempts", "start_fallback_host"]
