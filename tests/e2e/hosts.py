"""Start and stop the real hosts (host-runner, Envoy) around the real filter.wasm.

Every host listens on an ephemeral loopback port; `Host` carries its URLs and log."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from . import paths

START_TIMEOUT_S = 90


class Host:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log
        self.base_url = ""
        self.admin_url = ""
        self.metrics_path = "/metrics"

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def fail(self, why: str) -> None:
        self.stop()
        pytest.fail(f"{self.name}: {why}\n--- last lines of {self.log} ---\n{self.log_tail()}",
                    pytrace=False)

    def metrics_text(self) -> str:
        if self.name == "edge-worker":
            return usage_log_as_prometheus(self.log.read_text(errors="replace"))
        r = httpx.get(self.admin_url + self.metrics_path, timeout=10)
        r.raise_for_status()
        return r.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.name == "envoy" else signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def usage_log_as_prometheus(log: str) -> str:
    """A Spin component has no metrics endpoint: it logs one `switchyard usage {json}` record
    per request. Sum those records into the counters the other hosts expose, so the same
    metering assertions apply to every host."""
    sums: dict[str, float] = {}
    for line in log.splitlines():
        _, found, record = line.partition("switchyard usage ")
        if not found:
            continue
        try:
            u = json.loads(record)
        except ValueError:
            continue
        tags = f'key="{u["key_id"]}",model="{u["model"]}",provider="{u["provider"]}"'
        for name, v in (("switchyard_input_tokens_total", u.get("input_tokens", 0)),
                        ("switchyard_output_tokens_total", u.get("output_tokens", 0)),
                        ("switchyard_cached_input_tokens_total", u.get("cached_input_tokens", 0)),
                        ("switchyard_cost_micro_usd_total", round(u.get("cost", 0) * 1e6))):
            sums[f"{name}{{{tags}}}"] = sums.get(f"{name}{{{tags}}}", 0) + v
        req = f'switchyard_requests_total{{{tags},status="{u["status"]}"}}'
        sums[req] = sums.get(req, 0) + 1
        if u.get("attempts", 1) > 1:  # as the filter counts fallbacks
            fb = f"switchyard_fallbacks_total{{{tags}}}"
            sums[fb] = sums.get(fb, 0) + u["attempts"] - 1
    return "".join(f"{k} {v}\n" for k, v in sums.items())


def _spawn(name: str, cmd: list[str], workdir: Path, env: dict[str, str]) -> Host:
    log = workdir / f"{name}.log"
    out = open(log, "wb")
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full_env.update(env)
    (workdir / f"{name}.cmd").write_text(" ".join(cmd) + "\n")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=paths.REPO,
                            env=full_env, stdin=subprocess.DEVNULL)
    out.close()
    return Host(name, proc, log)


def _wait(host: Host, probe, what: str, timeout: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.proc.poll() is not None:
            host.fail(f"exited with status {host.proc.returncode} while waiting for {what}")
        try:
            result = probe()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    host.fail(f"not ready after {timeout}s (waiting for {what})")


def start_host_runner(config: dict, upstreams: dict[str, int], secrets: dict[str, str],
                      workdir: Path, extra_args: list[str] | None = None) -> Host:
    binary = paths.host_runner()
    wasm = paths.filter_wasm()
    help_text = subprocess.run([str(binary), "serve", "--help"], capture_output=True,
                               text=True, timeout=30).stdout
    for flag in ("--filter", "--plugin-config", "--listen", "--admin", "--cluster", "--env"):
        if flag not in help_text:
            pytest.fail(f"`host-runner serve --help` does not list {flag}; the e2e suite "
                        f"expects it:\n{help_text}", pytrace=False)
    cfg = workdir / "gateway.json"
    cfg.write_text(json.dumps(config, indent=2))
    cmd = [str(binary), "serve", "--filter", str(wasm), "--plugin-config", str(cfg),
           "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--workers", "2"]
    # Upstream timeouts generous enough for CPU inference; the filter's own attempt timeouts
    # (gateway config `fallback`) are what the tests exercise.
    if "--cluster-config" in (extra_args or []):
        for name, port in upstreams.items():
            cmd += ["--cluster", f"{name}=127.0.0.1:{port}"]
    else:
        clusters = workdir / "clusters.json"
        clusters.write_text(json.dumps({"clusters": [
            {"name": name, "address": f"127.0.0.1:{port}", "connect_timeout_ms": 2000,
             "request_timeout_ms": 180000} for name, port in upstreams.items()]}))
        cmd += ["--cluster-config", str(clusters)]
    for name, value in secrets.items():
        cmd += ["--env", f"{name}={value}"]
    cmd += list(extra_args or [])  # e.g. --cluster-config with custom timeouts
    host = _spawn("host-runner", cmd, workdir, {})
    pattern = re.compile(r"on (http://[0-9.]+:\d+) \(admin: (http://[0-9.]+:\d+)")

    def banner():
        m = pattern.search(host.log.read_text(errors="replace"))
        return m and m.groups()

    host.base_url, host.admin_url = _wait(host, banner, "its `serving ... on` banner")
    _wait(host, lambda: httpx.get(host.admin_url + "/ready", timeout=2).status_code == 200,
          "GET /ready on the admin port")
    return host


def shipped_envoy_config() -> dict:
    return yaml.safe_load((paths.REPO / "envoy.yaml").read_text())


def envoy_config(config: dict, upstreams: dict[str, int], wasm: Path) -> dict:
    """The shipped envoy.yaml with test ports, the test gateway config inline, the filter path
    under test, and one plain-HTTP loopback cluster per upstream. Listener, route, filter chain,
    stats tags and secret mechanism (host_env_keys) are the shipped ones."""
    shipped = shipped_envoy_config()
    cfg = copy.deepcopy(shipped)
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = 0
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm_filter = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    plugin = wasm_filter["typed_config"]["config"]
    plugin["vm_config"]["code"]["local"]["filename"] = str(wasm)
    plugin["configuration"]["value"] = json.dumps(config)
    keys = plugin["vm_config"]["environment_variables"]["host_env_keys"]
    named = [config.get("control_plane", {}).get("token_secret"),
             (config.get("tasks") or {}).get("token_secret")]
    for provider in config["providers"].values():
        aws = provider.get("aws") or {}
        named += [provider.get("api_key_secret"), aws.get("access_key_id_secret"),
                  aws.get("secret_access_key_secret"), aws.get("session_token_secret")]
    for secret in named:
        if secret and secret not in keys:
            keys.append(secret)
    # As envoy.yaml says: the route's per-try idle timeout is a stall guard (the filter bounds
    # each attempt's time to first byte by its model's own attempt_timeout_ms).
    # Here it is the global value: no test model streams with a longer one.
    attempt_ms = config.get("fallback", {}).get("attempt_timeout_ms", 30000)
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            policy = route.get("route", {}).get("retry_policy")
            if policy is not None:
                policy["per_try_idle_timeout"] = f"{attempt_ms / 1000}s"
    shipped_clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    clusters = []
    for name, port in upstreams.items():
        if name in shipped_clusters and name == "gpu_backend":
            c = copy.deepcopy(shipped_clusters[name])  # keep its health checks
            # One backend here: keep the first locality only, pointed at the test's backend.
            c["load_assignment"]["endpoints"] = c["load_assignment"]["endpoints"][:1]
        else:
            c = {"name": name, "type": "STATIC", "connect_timeout": "2s",
                 "load_assignment": {"cluster_name": name, "endpoints": [
                     {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                         "address": "127.0.0.1", "port_value": 0}}}}]}]}}
        if name in shipped_clusters and "circuit_breakers" in shipped_clusters[name]:
            # e.g. task_plane's raised limits: a burst test must meet the shipped ones.
            c["circuit_breakers"] = copy.deepcopy(shipped_clusters[name]["circuit_breakers"])
        sa = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        sa["socket_address"]["port_value"] = port
        clusters.append(c)
    cfg["static_resources"]["clusters"] = clusters
    return cfg


def start_envoy(config: dict, upstreams: dict[str, int], secrets: dict[str, str],
                workdir: Path, customize=None) -> Host:
    binary = paths.envoy()
    wasm = paths.filter_wasm()
    cfg_path = workdir / "envoy.json"
    envoy_cfg = envoy_config(config, upstreams, wasm)
    if customize:  # a test's own tweaks (e.g. shorter route timeouts), applied in place
        customize(envoy_cfg)
    cfg_path.write_text(json.dumps(envoy_cfg, indent=2))
    admin_file = workdir / "envoy-admin-address"
    admin_file.unlink(missing_ok=True)
    cmd = [str(binary), "-c", str(cfg_path), "--concurrency", "2", "--disable-hot-restart",
           "--admin-address-path", str(admin_file), "--log-level", "info",
           "--component-log-level", os.environ.get("SWITCHYARD_ENVOY_LOG", "wasm:debug")]
    host = _spawn("envoy", cmd, workdir, secrets)
    host.metrics_path = "/stats/prometheus"
    admin = _wait(host, lambda: admin_file.is_file() and admin_file.read_text().strip(),
                  "the admin address file")
    host.admin_url = f"http://{admin}"
    _wait(host, lambda: httpx.get(host.admin_url + "/ready", timeout=2).status_code == 200,
          "GET /ready on the admin port")

    def listener():
        info = httpx.get(host.admin_url + "/listeners?format=json", timeout=2).json()
        sa = info["listener_statuses"][0]["local_address"]["socket_address"]
        return sa["port_value"] and f"http://127.0.0.1:{sa['port_value']}"

    host.base_url = _wait(host, listener, "the listener's bound port")
    return host


def is_component(name: str) -> bool:
    """Whether host `name` is the Spin component (`edge-worker`, or `edge-worker-reused`)."""
    return name.startswith("edge-worker")


def start_edge_worker(config: dict, upstreams: dict[str, int], secrets: dict[str, str],
                      workdir: Path, reuse: int = 1) -> Host:
    """The Spin component under `host-runner serve-component` (Spin's wasi-http world): the
    gateway config and the provider secrets are Spin variables (lower-case names). `reuse`
    above 1: each instance serves up to that many requests in turn
    (`--max-instance-reuse-count`) instead of one."""
    binary = paths.host_runner()
    component = paths.edge_worker()
    help_text = subprocess.run([str(binary), "serve-component", "--help"], capture_output=True,
                               text=True, timeout=30).stdout
    for flag in ("--component", "--listen", "--var", "--allow-outbound"):
        if flag not in help_text:
            pytest.fail(f"`host-runner serve-component --help` does not list {flag}:\n"
                        f"{help_text}", pytrace=False)
    (workdir / "gateway.json").write_text(json.dumps(config, indent=2))
    cmd = [str(binary), "serve-component", "--component", str(component),
           "--listen", "127.0.0.1:0", "--var", f"gateway_config={json.dumps(config)}",
           "--allow-outbound", "http://127.0.0.1:*"]
    if reuse != 1:
        cmd += ["--max-instance-reuse-count", str(reuse)]
    for name, value in secrets.items():
        cmd += ["--var", f"{name.lower()}={value}"]
    host = _spawn("edge-worker", cmd, workdir, {})
    pattern = re.compile(r"on (http://[0-9.]+:\d+)")

    def banner():
        m = pattern.search(host.log.read_text(errors="replace"))
        return m and m.group(1)

    host.base_url = _wait(host, banner, "its `serving ... on` banner")
    host.admin_url = ""
    _wait(host, lambda: httpx.get(host.base_url + "/v1/models", timeout=2).status_code
          in (200, 401), "GET /v1/models")
    return host


def start_edge_worker_reused(config: dict, upstreams: dict[str, int], secrets: dict[str, str],
                             workdir: Path) -> Host:
    """The Spin component with instances reused for up to 1000 requests each: what a
    reused instance keeps (its parsed config, its managed-key gateway, its key-value handles)
    must change no answer."""
    return start_edge_worker(config, upstreams, secrets, workdir, reuse=1000)


STARTERS = {"host-runner": start_host_runner, "envoy": start_envoy,
            "edge-worker": start_edge_worker, "edge-worker-reused": start_edge_worker_reused}


def start(name: str, config: dict, upstreams: dict[str, int], secrets: dict[str, str],
          workdir: Path) -> Host:
    if name not in STARTERS:
        pytest.fail(f"host {name!r} is listed in SWITCHYARD_HOSTS but the suite cannot run it "
                    "yet", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    return STARTERS[name](config, upstreams, secrets, workdir)
