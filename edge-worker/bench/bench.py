#!/usr/bin/env python3
"""The Spin component under `host-runner serve-component` vs the upstream directly, same run.

Starts an Envoy that answers every request with a fixed OpenAI chat completion
(`direct_response`, so the upstream is never the bottleneck) and `host-runner serve-component`
running edge_worker.wasm in front of it (one fresh instance per request, as Spin does: key
check, parse, route, outbound HTTP, response validation, usage log line). `wrk` drives both at
several concurrencies; the script prints a Markdown table with requests/s, p50 and p99, and
ratios against the upstream direct.

    python3 edge-worker/bench/bench.py [--host-runner PATH] [--component PATH] [--envoy PATH]
                                       [--duration 10] [--conns 1,16,64]

Needs `wrk`, Envoy (`scripts/install-envoy.sh`), a release host-runner
(`cargo build --release -p host-runner`) and the component
(`cargo build --release --target wasm32-wasip2` in edge-worker/). Loopback only.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "sk-bench"
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-upstream",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
})
REQUEST = json.dumps({
    "model": "bench",
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "Say hello in five words, please."}],
    "temperature": 0.2, "max_tokens": 32,
})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream_yaml(port, admin):
    direct = (f'direct_response: {{status: 200, body: {{inline_string: {json.dumps(COMPLETION)}}}}}\n'
              '                response_headers_to_add: [{header: {key: content-type, value: application/json}}]')
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: up
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                {direct}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


def gateway_config(upstream_port):
    return json.dumps({
        "keys": [{"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "providers": {"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}"}},
        "models": [{"name": "bench", "deployments": [{"provider": "up", "model": "bench-upstream",
                                                       "price": {"input": 1.0, "output": 2.0}}]}],
    })


def wait_ready(url, deadline=120):
    end = time.time() + deadline
    while time.time() < end:
        try:
            req = urllib.request.Request(url + "/v1/chat/completions", data=REQUEST.encode(),
                                         headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {deadline}s")


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url, conns, duration, lua):
    threads = min(2, conns)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", lua,
                          url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    return rps, p50, p99


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host-runner", default=os.environ.get("SWITCHYARD_HOST_RUNNER", os.path.join(ROOT, "target/release/host-runner")))
    ap.add_argument("--component", default=os.path.join(ROOT, "edge-worker/target/wasm32-wasip2/release/edge_worker.wasm"))
    ap.add_argument("--envoy", default=os.environ.get("SWITCHYARD_ENVOY", os.path.join(ROOT, ".venv/bin/envoy")))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", default="1,16,64")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="switchyard-edge-bench-")
    up_port, admin_port = free_port(), free_port()
    cfg = os.path.join(tmp, "upstream.yaml")
    with open(cfg, "w") as f:
        f.write(upstream_yaml(up_port, admin_port))
    lua = os.path.join(tmp, "post.lua")
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(REQUEST)}\n'
                f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer {KEY}"\n')
    log = open(os.path.join(tmp, "host-runner.log"), "w+")
    procs = []
    try:
        procs.append(subprocess.Popen([args.envoy, "-c", cfg, "--concurrency", "1", "-l", "error",
                                       "--base-id", str(up_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # The usage log line goes to stderr, one per request; discard it so the disk is not
        # part of the measurement.
        hr = subprocess.Popen([args.host_runner, "serve-component", "--component", args.component,
                               "--listen", "127.0.0.1:0", "--var", f"gateway_config={gateway_config(up_port)}"],
                              stdout=log, stderr=subprocess.DEVNULL)
        procs.append(hr)
        upstream = f"http://127.0.0.1:{up_port}"
        wait_ready(upstream)
        end = time.time() + 60
        component = None
        while component is None and time.time() < end:
            log.seek(0)
            m = re.search(r"on (http://[0-9.]+:\d+)", log.read())
            component = m and m.group(1)
            if hr.poll() is not None:
                raise SystemExit("host-runner serve-component exited")
            time.sleep(0.2)
        if not component:
            raise SystemExit("host-runner serve-component printed no banner")
        wait_ready(component)
        rows = []
        for conns in [int(c) for c in args.conns.split(",")]:
            results = {name: run_wrk(url, conns, args.duration, lua)
                       for name, url in (("upstream direct", upstream),
                                         ("serve-component + edge_worker.wasm", component))}
            rows.append((conns, results))
        cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
        load = os.getloadavg()[0]
        print(f"Machine: {cpu}, {os.cpu_count()} cores (load average {load:.1f} at the end); "
              f"date {time.strftime('%Y-%m-%d')}; wrk {args.duration}s per cell; upstream: Envoy "
              f"direct_response, --concurrency 1\n")
        print("| conns | setup | req/s | p50 ms | p99 ms | req/s vs direct | p50 vs direct |")
        print("|---|---|---|---|---|---|---|")
        for conns, results in rows:
            base_rps, base_p50, _ = results["upstream direct"]
            for name, (rps, p50, p99) in results.items():
                print(f"| {conns} | {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {rps / base_rps:.2f} | {p50 / base_p50:.2f} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
