"""Usage metering: after a few requests the host's Prometheus endpoint (Envoy:
/stats/prometheus, host-runner: /metrics on its admin port) shows the switchyard counters with
key/model/provider labels, equal to the usage the provider reported."""

from __future__ import annotations

import re

from .gateway_config import PRICES

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+([0-9.eE+-]+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def counters(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            out[(m.group(1), frozenset(LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def value(metrics: dict, name: str, **labels) -> float:
    want = {(k, v) for k, v in labels.items()}
    hits = [v for (n, ls), v in metrics.items() if n == name and want <= ls]
    return sum(hits)


def find_or_explain(text: str, name: str, **labels) -> None:
    metrics = counters(text)
    if not any(n == name and {(k, v) for k, v in labels.items()} <= ls for (n, ls) in metrics):
        related = [l for l in text.splitlines() if "switchyard" in l and not l.startswith("#")]
        raise AssertionError(f"no {name}{labels} sample; switchyard lines were:\n"
                             + "\n".join(related[:30]))


def test_token_and_cost_counters(gw):
    labels = {"key": "e2e-all", "model": "metered", "provider": "openai"}
    before = counters(gw.host.metrics_text())
    client = gw.openai()
    client.chat.completions.create(model="metered", messages=[
        {"role": "user", "content": "count the tokens of this request"}])
    list(client.chat.completions.create(model="metered", stream=True, messages=[
        {"role": "user", "content": "and of this streamed one [cache]"}]))
    gw.anthropic().messages.create(model="metered", max_tokens=20, messages=[
        {"role": "user", "content": "and this one through the Anthropic dialect"}])
    usages = [e["response"]["usage"] for e in gw.doubles["openai"].requests()]
    assert len(usages) == 3
    text = gw.host.metrics_text()
    for name in ("switchyard_input_tokens_total", "switchyard_output_tokens_total",
                 "switchyard_cost_micro_usd_total", "switchyard_requests_total"):
        find_or_explain(text, name, **labels)
    after = counters(text)

    def delta(name, **extra):
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("switchyard_input_tokens_total") == sum(u["input"] for u in usages)
    assert delta("switchyard_output_tokens_total") == sum(u["output"] for u in usages)
    cached = sum(u["cached"] for u in usages)
    assert cached > 0
    assert delta("switchyard_cached_input_tokens_total") == cached
    assert delta("switchyard_requests_total", status="200") == 3
    price = PRICES["openai"]
    exact = sum((u["input"] - u["cached"]) * price["input"] + u["cached"] * price["cached_input"]
                + u["output"] * price["output"] for u in usages)
    assert abs(delta("switchyard_cost_micro_usd_total") - exact) <= len(usages), exact


def test_failed_requests_are_counted_by_status(gw):
    before = counters(gw.host.metrics_text())
    r = gw.post("/v1/chat/completions", {"model": "metered", "messages": [
        {"role": "user", "content": "x [[fault:status,status=429]]"}]})
    assert r.status_code == 429
    text = gw.host.metrics_text()
    labels = {"key": "e2e-all", "model": "metered", "provider": "openai", "status": "429"}
    find_or_explain(text, "switchyard_requests_total", **labels)
    after = counters(text)
    assert (value(after, "switchyard_requests_total", **labels)
            - value(before, "switchyard_requests_total", **labels)) == 1
