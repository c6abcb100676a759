"""Load balancing inside one deployment (Envoy only): two real gpu-backend instances serving
SmolLM2 in Envoy's `gpu_backend` cluster — the shipped cluster from envoy.yaml (priority 0 and
priority 1 localities, active /healthz health checks, outlier detection) with test ports and
shorter health-check intervals — behind the filter. A steady stream of chat requests runs
while the priority-0 backend is SIGKILLed; once the ejection window has passed, no request
fails: the priority-1 backend serves them all.

Only Envoy balances hosts within a cluster; host-runner clusters have one address each."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from . import hosts, paths
from .conftest import Gateway, secrets
from .fallback_config import free_port
from .gateway_config import gateway_config, upstreams

MODEL = "smollm2"
HEALTH_INTERVAL_S = 0.5
# Health checks need unhealthy_threshold failed probes (connection refused: immediate) at
# HEALTH_INTERVAL_S; outlier detection may eject even sooner. Generous for a loaded machine.
EJECTION_WINDOW_S = 4.0
BACKEND_READY_S = 90
RUN_LIMIT_S = 100  # the whole request loop, kill included
REQUEST_TIMEOUT_S = 60
CLIENTS = 2
BEFORE_KILL_OK, AFTER_WINDOW_OK = 2, 4

pytestmark = pytest.mark.skipif("envoy" not in paths.selected_hosts(),
                                reason="in-cluster load balancing is Envoy's (SWITCHYARD_HOSTS)")


class Backend:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.log = workdir / f"gpu-backend-{port}.log"
        out = open(self.log, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(paths.gpu_backend()), "--listen", f"127.0.0.1:{port}",
             "--models-dir", str(paths.models_dir()), "--pin", "smollm2-135m-instruct",
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=paths.REPO)
        out.close()
        self.ready_after_s: float | None = None

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gpu-backend on {self.port} exited ({self.proc.returncode}):\n"
                            + self.log.read_text(errors="replace")[-3000:], pytrace=False)
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    self.ready_after_s = time.monotonic() - self.started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"gpu-backend on {self.port} not healthy after {BACKEND_READY_S}s:\n"
                    + self.log.read_text(errors="replace")[-3000:], pytrace=False)

    def load_ms(self) -> str:
        m = re.search(r"loaded smollm2\S* in (\d+) ms", self.log.read_text(errors="replace"))
        return m.group(1) if m else "?"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def two_backend_cluster(primary_port: int, standby_port: int):
    """Envoy config tweak: the shipped gpu_backend cluster with both test ports, faster
    health checks and outlier detection."""

    def customize(cfg: dict) -> None:
        cluster = next(c for c in cfg["static_resources"]["clusters"]
                       if c["name"] == "gpu_backend")
        # The shipped localities (hosts.envoy_config keeps only the first for one backend).
        shipped = next(c for c in hosts.shipped_envoy_config()["static_resources"]["clusters"]
                       if c["name"] == "gpu_backend")
        endpoints = copy.deepcopy(shipped["load_assignment"]["endpoints"])
        assert len(endpoints) >= 2, "envoy.yaml's gpu_backend should list two localities"
        assert [e.get("priority", 0) for e in endpoints[:2]] == [0, 1], endpoints
        cluster["load_assignment"]["endpoints"] = endpoints[:2]
        for group, port in zip(endpoints, (primary_port, standby_port)):
            group["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = port
        assert cluster.get("health_checks"), "envoy.yaml's gpu_backend has no health checks"
        for hc in cluster["health_checks"]:
            hc["interval"] = f"{HEALTH_INTERVAL_S}s"
            hc["no_traffic_interval"] = f"{HEALTH_INTERVAL_S}s"
            hc["timeout"] = "2s"
        assert cluster.get("outlier_detection"), "envoy.yaml's gpu_backend has no outlier detection"
        cluster["outlier_detection"]["interval"] = "1s"

    return customize


def host_stats(envoy: hosts.Host) -> dict[str, dict[str, str]]:
    """Envoy's per-host view of gpu_backend: port -> {stat or flag: value}."""
    text = httpx.get(envoy.admin_url + "/clusters", timeout=5).text
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "gpu_backend":
            out.setdefault(parts[1].rsplit(":", 1)[-1], {})[parts[2]] = parts[3]
    return out


@pytest.fixture(scope="module")
def lb(doubles, tmp_path_factory):
    workdir = Path(tmp_path_factory.mktemp("envoy-backend-lb"))
    ports = free_port(), free_port()
    backends = [Backend(p, workdir) for p in ports]
    envoy = None
    try:
        deadline = time.monotonic() + BACKEND_READY_S
        for b in backends:
            b.wait_ready(deadline)
        config = gateway_config(doubles, local_backend=f"http://127.0.0.1:{ports[0]}")
        # CPU inference on a shared 2-core machine: allow slow answers (the suite's 10 s
        # attempt timeout is meant for the doubles).
        config["fallback"] = {**config["fallback"], "attempt_timeout_ms": REQUEST_TIMEOUT_S * 1000,
                              "total_timeout_ms": REQUEST_TIMEOUT_S * 1000}
        envoy = hosts.start_envoy(config, upstreams(doubles, ports[0]), secrets(doubles),
                                  workdir, customize=two_backend_cluster(*ports))
        yield Gateway(envoy, doubles), backends
    finally:
        if envoy:
            envoy.stop()
        for b in backends:
            b.stop()


def wait_both_healthy(envoy: hosts.Host, ports, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = host_stats(envoy)
        if all(stats.get(str(p), {}).get("health_flags") == "healthy" for p in ports):
            return
        time.sleep(0.2)
    pytest.fail(f"Envoy never saw both backends healthy: {host_stats(envoy)}", pytrace=False)


def test_killing_one_backend_fails_no_request_after_the_ejection_window(lb):
    gw, (primary, standby) = lb
    wait_both_healthy(gw.host, (primary.port, standby.port))
    client = gw.openai(timeout=REQUEST_TIMEOUT_S + 5)
    results: list[tuple[float, float, str]] = []  # (start, end, "ok" or the error)
    lock = threading.Lock()
    stop = threading.Event()
    killed_at: list[float] = []

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            start = time.monotonic()
            try:
                r = client.chat.completions.create(
                    model=MODEL, max_tokens=1,
                    messages=[{"role": "user", "content": f"Say hi ({n}.{i})"}])
                outcome = "ok" if r.choices and r.choices[0].message is not None else "empty"
            except openai.APIStatusError as e:
                outcome = f"HTTP {e.status_code}: {e.response.text[:160]}"
            except openai.APIError as e:
                outcome = f"{type(e).__name__}: {e}"
            with lock:
                results.append((start, time.monotonic(), outcome))
            if outcome != "ok":
                time.sleep(0.2)  # no hot loop of instant failures

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()

    def ok_count(after: float) -> int:
        with lock:
            return sum(1 for s, _, o in results if s >= after and o == "ok")

    # Phase 1: the priority-0 backend serves.
    while ok_count(t0) < BEFORE_KILL_OK and time.monotonic() - t0 < RUN_LIMIT_S / 3:
        time.sleep(0.1)
    before = host_stats(gw.host)
    killed_at.append(time.monotonic())
    primary.kill()
    settled = killed_at[0] + EJECTION_WINDOW_S
    # Phase 2: after the ejection window, every request must succeed (on the standby).
    while ok_count(settled) < AFTER_WINDOW_OK and time.monotonic() - t0 < RUN_LIMIT_S:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S + 10)
    after = host_stats(gw.host)

    with lock:
        done = list(results)
    summary = (f"backends ready after {primary.ready_after_s:.1f}s/{standby.ready_after_s:.1f}s "
               f"(model load {primary.load_ms()}/{standby.load_ms()} ms); "
               f"{len(done)} requests, latencies "
               f"{sorted(round(e - s, 1) for s, e, _ in done)}")
    before_kill = [o for s, e, o in done if e <= killed_at[0]]
    in_window = [o for s, e, o in done if e > killed_at[0] and s < settled]
    after_window = [o for s, e, o in done if s >= settled]
    assert before_kill and all(o == "ok" for o in before_kill), (before_kill, summary)
    assert int(before.get(str(primary.port), {}).get("rq_success", 0)) > 0, (
        f"the priority-0 backend should have served before the kill: {before}")
    assert len(after_window) >= AFTER_WINDOW_OK, (f"too few requests after the window: {after_window}; "
                                    + summary)
    failed = [o for o in after_window if o != "ok"]
    assert not failed, f"requests failed after the ejection window: {failed}; {summary}"
    assert int(after.get(str(standby.port), {}).get("rq_success", 0)) >= len(after_window), after
    print(f"\n{summary}; failures inside the {EJECTION_WINDOW_S}s window: "
          f"{[o for o in in_window if o != 'ok']}")
