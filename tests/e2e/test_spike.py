"""The spike, small (#14): 500 concurrent streaming requests through the proxy-wasm hosts
(Envoy + filter.wasm, host-runner + filter.wasm) against a model with two deployments whose
providers each allow 50 concurrent requests. The excess waits in the gateway's queue: every
request is answered once with a complete stream, no provider ever sees more than its cap (so
no provider 429 can reach a client), and exactly one usage record carries each request id.
The 5,000-request run and its numbers are `tests/bench/spike.py` and BENCHMARKS.md.

The Spin component is left out here: its counters live in a key-value store without
compare-and-swap (see test_limits.py for that bound), so a provider's cap can be passed by
racing instances; its queue behaviour is covered by test_queue.py."""

from __future__ import annotations

import pytest

from bench import spike

from . import paths

PROXY_WASM_HOSTS = [h for h in paths.selected_hosts() if h in ("envoy", "host-runner")]
REQUESTS = 500
CAP = 50


@pytest.mark.parametrize("host", PROXY_WASM_HOSTS)
def test_a_spike_of_streams_is_absorbed_by_the_queue(host, doubles, tmp_path):
    r = spike.run(host, REQUESTS, CAP, hold=1.0, max_wait_ms=120_000, workdir=tmp_path,
                  doubles=doubles)
    assert r.served == REQUESTS, (r.queue_429, r.other[:5])
    assert r.provider_429 == 0, r.double_limits
    assert all(0 < p <= CAP for p in r.double_limits["peak"].values()), r.double_limits
    assert set(r.double_limits["peak"]) == set(spike.UPSTREAM)
    assert r.answered_once(), "a request without exactly one usage record"
    assert sum(1 for o in r.outcomes if o.queued_ms > 0) >= REQUESTS // 2, "few waited"
    assert r.rss_peak_kib > 0
