#!/usr/bin/env python3
"""The viral spike (#14): thousands of concurrent streaming requests against a model with two
deployments whose providers each allow only a small number of concurrent requests.

The gateway's deployment limits match the providers' caps, so every request beyond them waits
in the gateway's queue (paused in the filter, woken from the root tick) instead of reaching a
provider that would answer 429. The run checks, and prints as Markdown:

* every request got exactly one answer: a complete stream (its `[DONE]` and the double's
  deterministic text) or a 429 in the OpenAI dialect, and exactly one usage record carries
  its `x-request-id`;
* zero provider 429s: the doubles' own counters (`GET /_limits`: `refused`, `peak`) show no
  request past their cap, so none could reach a client;
* how long requests waited (`x-switchyard-queued-ms`), and the host's RSS (Envoy's, or
  host-runner's) before, at peak and after.

    .venv/bin/python tests/bench/spike.py [--host envoy] [--requests 5000] [--cap 100]
        [--hold 1.0] [--max-wait-ms 300000]

The doubles run in their own process (`python -m doubles.server`), the load from this one
(asyncio + aiohttp, one connection per request). Not part of `./switchyard test`; a smaller run
is `tests/e2e/test_spike.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import aiohttp  # noqa: E402

from doubles.common import expected_text  # noqa: E402
from doubles.server import PROVIDERS, Double  # noqa: E402
from e2e import hosts  # noqa: E402
from e2e.gateway_config import KEY_ALL, PRICES, gateway_config, upstreams  # noqa: E402

MODEL = "spike"
UPSTREAM = ("gpt-spike-a", "gpt-spike-b")


class DoublesProcess:
    """The provider doubles in a child process (the load generator needs this one's CPU)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "doubles.server"], cwd=TESTS, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.by_name: dict[str, Double] = {}
        assert self.proc.stdout is not None
        names = {*PROVIDERS, "bedrock"}  # what `doubles.server` starts and prints
        while len(self.by_name) < len(names):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the doubles exited before printing their ports")
            m = re.match(r"(\w+): http://127\.0\.0\.1:(\d+)  \(expects (.*)\)", line)
            if m and m.group(1) in names:
                secrets = dict(pair.split("=", 1) for pair in m.group(3).split())
                env, key = next(iter(secrets.items()))
                self.by_name[m.group(1)] = Double(m.group(1), int(m.group(2)), env, key,
                                                  secrets)

    def __getitem__(self, name: str) -> Double:
        return self.by_name[name]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def spike_config(doubles, cap: int, max_wait_ms: int, depth: int) -> dict:
    config = gateway_config(doubles)
    config["models"].append({
        "name": MODEL, "queue": {"max_wait_ms": max_wait_ms, "max_depth": depth},
        "deployments": [{"provider": "openai", "model": m, "price": PRICES["openai"],
                         "limits": {"concurrent": cap}} for m in UPSTREAM]})
    return config


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Outcome:
    request_id: str
    status: int = 0
    complete: bool = False
    code: str = ""
    queued_ms: int = 0
    error: str = ""


@dataclass
class Result:
    requests: int
    seconds: float
    outcomes: list[Outcome]
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    double_limits: dict
    records: dict[str, int] = field(default_factory=dict)

    def count(self, pred) -> int:
        return sum(1 for o in self.outcomes if pred(o))

    @property
    def served(self) -> int:
        return self.count(lambda o: o.status == 200 and o.complete)

    @property
    def queue_429(self) -> int:
        return self.count(lambda o: o.status == 429 and o.code == "deployments_saturated")

    @property
    def other(self) -> list[Outcome]:
        return [o for o in self.outcomes if not ((o.status == 200 and o.complete) or
                                                 (o.status == 429 and o.code == "deployments_saturated"))]

    @property
    def provider_429(self) -> int:
        return sum(self.double_limits.get("refused", {}).values())

    def answered_once(self) -> bool:
        return all(self.records.get(o.request_id) == 1 for o in self.outcomes)


async def one(session: aiohttp.ClientSession, url: str, i: int, hold: float) -> Outcome:
    out = Outcome(request_id=f"spike-{i:05d}-{uuid.uuid4().hex[:8]}")
    text = f"spike {i} [[fault:hang,seconds={hold}]]"
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
    headers = {"authorization": f"Bearer {KEY_ALL}", "x-request-id": out.request_id}
    try:
        async with session.post(url, json=body, headers=headers) as r:
            out.status = r.status
            out.queued_ms = int(r.headers.get("x-switchyard-queued-ms", "0"))
            raw = await r.read()
        if out.status == 200:
            sse = raw.decode()
            want = expected_text("openai", "", text).split(" echo ")[1]
            content = "".join(
                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in sse.splitlines()
                if line.startswith("data: {") and json.loads(line[6:]).get("choices"))
            out.complete = sse.rstrip().endswith("data: [DONE]") and content.endswith(want)
        else:
            try:
                out.code = json.loads(raw).get("error", {}).get("code") or ""
            except ValueError:
                out.error = f"not JSON: {raw[:120]!r}"  # a host's own answer, not the gateway's
    except Exception as e:  # noqa: BLE001 — every failure is counted, not raised
        out.error = f"{type(e).__name__}: {e}"
    return out


async def drive(base_url: str, n: int, hold: float, timeout_s: float) -> list[Outcome]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = base_url + "/v1/chat/completions"
        return await asyncio.gather(*(one(session, url, i, hold) for i in range(n)))


def usage_records(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        _, found, record = line.partition("switchyard usage ")
        if not found:
            continue
        try:  # host-runner's log lines may end in terminal colour codes
            rid = json.loads(record[record.index("{"):record.rindex("}") + 1])["request_id"]
        except (ValueError, KeyError):
            continue
        counts[rid] = counts.get(rid, 0) + 1
    return counts


def run(host_name: str, n: int, cap: int, hold: float, max_wait_ms: int, workdir: Path,
        doubles=None) -> Result:
    """Start the host against the doubles, send `n` concurrent streams, collect the result."""
    # Usage records are info lines; wasm:debug would log every request's progress.
    saved_log_level = os.environ.get("SWITCHYARD_ENVOY_LOG")
    os.environ["SWITCHYARD_ENVOY_LOG"] = "wasm:info"
    own = doubles is None
    doubles = doubles or DoublesProcess()
    host = None
    try:
        doubles["openai"].reset()
        doubles["openai"].cap(cap)
        secrets = {k: v for d in doubles.by_name.values() for k, v in d.secrets.items()}
        host = hosts.start(host_name, spike_config(doubles, cap, max_wait_ms, n),
                           upstreams(doubles), secrets, workdir)
        pid = host.proc.pid
        before = rss_kib(pid)
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], rss_kib(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        outcomes = asyncio.run(drive(host.base_url, n, hold, max_wait_ms / 1000 + 120))
        seconds = time.monotonic() - started
        stop.set()
        sampler.join()
        after = rss_kib(pid)
        limits = doubles["openai"].limits()
        deadline = time.monotonic() + 30
        while True:  # the last records are written as the last streams end
            records = usage_records(host.log)
            if sum(records.get(o.request_id, 0) for o in outcomes) >= n:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return Result(n, seconds, list(outcomes), before, peak[0], after, limits, records)
    finally:
        if saved_log_level is None:
            os.environ.pop("SWITCHYARD_ENVOY_LOG", None)
        else:
            os.environ["SWITCHYARD_ENVOY_LOG"] = saved_log_level
        if host:
            host.stop()
        if own:
            doubles.stop()


def markdown(host_name: str, r: Result, cap: int, hold: float, max_wait_ms: int) -> str:
    waits = sorted(o.queued_ms for o in r.outcomes)
    pct = lambda p: waits[min(len(waits) - 1, int(p * len(waits)))] if waits else 0  # noqa: E731
    rows = [
        ("host", host_name),
        ("requests (concurrent, streamed)", r.requests),
        ("deployments × provider cap", f"2 × {cap} (gateway limit = cap)"),
        ("provider hold per request", f"{hold} s"),
        ("queue max_wait_ms", max_wait_ms),
        ("wall time", f"{r.seconds:.1f} s"),
        ("served 200, complete stream", r.served),
        ("429 from the queue (deployments_saturated)", r.queue_429),
        ("other (errors, incomplete)", len(r.other)),
        ("provider 429s (double's refused)", r.provider_429),
        ("provider peak in flight per model", json.dumps(r.double_limits.get("peak", {}))),
        ("exactly one usage record per request", r.answered_once()),
        ("queued ms p50 / p99 / max", f"{pct(0.5)} / {pct(0.99)} / {waits[-1] if waits else 0}"),
        ("RSS before / peak / after", f"{r.rss_before_kib // 1024} / {r.rss_peak_kib // 1024}"
                                      f" / {r.rss_after_kib // 1024} MiB"),
    ]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="envoy", choices=["envoy", "host-runner"])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--cap", type=int, default=100)
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--max-wait-ms", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spike-") as tmp:
        r = run(args.host, args.requests, args.cap, args.hold, args.max_wait_ms, Path(tmp))
        print(markdown(args.host, r, args.cap, args.hold, args.max_wait_ms))
        for o in r.other[:5]:
            print(f"  e.g. {o}", file=sys.stderr)
        ok = (r.served + r.queue_429 == r.requests and r.provider_429 == 0
              and r.answered_once())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
