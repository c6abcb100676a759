#!/usr/bin/env python3
"""Envoy pass-through vs Envoy + filter.wasm (and host-runner with each), same upstream, same run.

Starts three Envoys on loopback: an upstream that answers every request with a fixed OpenAI
chat completion (`direct_response`, so the upstream is never the bottleneck), a plain
pass-through proxy in front of it, and a proxy running filter.wasm (key check, parse, route,
body rewrite, response usage metering). `wrk` drives each at several concurrencies and the
script prints a Markdown table with requests/s, p50 and p99, and ratios against pass-through.

    python3 tests/bench/envoy_bench.py [--envoy PATH] [--wasm PATH] [--duration 10] [--conns 1,64,512]
        [--host-runner target/release/host-runner --passthrough PASSTHROUGH.wasm]
        [--component [LABEL=]edge-worker/target/wasm32-wasip2/release/edge_worker.wasm ...]
        [--component-runner HOST_RUNNER ...] [--components-only] [--filter LABEL=PATH ...]

With --filter (repeatable), one more Envoy + filter row per build, in the same Envoy, to
compare filter builds (before/after a change) in one run.

With --host-runner, two more rows: host-runner running the passthrough guest (every callback
continues; the request carries `x-switchyard-cluster` itself) and host-runner running
filter.wasm, both in front of the same upstream. With --component as well, one more row: the
Spin component (edge-worker) under `host-runner serve-component`, compared with the upstream
direct (a component has no pass-through twin). --component repeats (with labels, and with
--component-runner a host-runner build each) to compare component or host builds in one run;
--components-only leaves out the Envoy and host-runner proxy rows.

Needs `wrk` (Debian package `wrk`). Loopback only; every run is bounded by --duration.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
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


def listener(port, http_filters, route):
    return f"""
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: p{port}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                {route}
          http_filters:{http_filters}
"""


ROUTER = """
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"""


def cluster(name, port):
    return f"""
  - name: {name}
    type: STATIC
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"""


EDGE_TOKEN = "bench-edge-token"


def gateway_config(upstream_port, control_plane_port=None):
    config = {
        "keys": [{"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "providers": {"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}", "cluster": "upstream"}},
        "models": [{"name": "bench", "deployments": [{"provider": "up", "model": "bench-upstream",
                                                       "price": {"input": 1.0, "output": 2.0}}]}],
    }
    if control_plane_port:
        config["control_plane"] = {"base_url": f"http://127.0.0.1:{control_plane_port}",
                                   "cluster": "control_plane",
                                   "token_secret": "SWITCHYARD_EDGE_TOKEN"}
    return json.dumps(config)


def write_configs(tmp, wasm, ports, extra_filters=(), control_plane=None):
    """Envoy configs: the upstream, and the proxies (pass-through, the filter, one more
    filter listener per `(label, path, port)` in `extra_filters`, and with `control_plane`
    `(its port, listener port)` the filter synced to a control plane)."""
    up, passthrough, filtered, admin = ports
    direct = (f'direct_response: {{status: 200, body: {{inline_string: {json.dumps(COMPLETION)}}}}}\n'
              '                response_headers_to_add: [{header: {key: content-type, value: application/json}}]')
    upstream_yaml = f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{listener(up, ROUTER, direct)}
"""

    def wasm_filter(path, vm, cp_port=None):
        env = ('''
                  environment_variables: {host_env_keys: [SWITCHYARD_EDGE_TOKEN]}''' if cp_port else "")
        return f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: switchyard
                allow_on_headers_stop_iteration: true
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {json.dumps(gateway_config(up, cp_port))}
                vm_config:
                  vm_id: {vm}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {path}}}}}{env}"""
    route = "route: {cluster_header: x-switchyard-cluster, timeout: 0s}"
    filters = listener(filtered, wasm_filter(wasm, "main") + ROUTER, route)
    for i, (_, path, port) in enumerate(extra_filters):
        filters += listener(port, wasm_filter(path, f"extra{i}") + ROUTER, route)
    clusters = cluster("upstream", up)
    if control_plane:
        cp_port, port = control_plane
        filters += listener(port, wasm_filter(wasm, "synced", cp_port) + ROUTER, route)
        clusters += cluster("control_plane", cp_port)
    proxies_yaml = f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin + 1}}}}}}}
static_resources:
  listeners:{listener(passthrough, ROUTER, "route: {cluster: upstream, timeout: 0s}")}{filters}
  clusters:{clusters}
"""
    paths = []
    for name, text in (("upstream.yaml", upstream_yaml), ("proxies.yaml", proxies_yaml)):
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return paths


def wait_ready(port, deadline=120):
    end = time.time() + deadline
    while time.time() < end:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=REQUEST.encode(),
                                         headers={"authorization": f"Bearer {KEY}", "content-type": "application/json",
                                                  "x-switchyard-cluster": "upstream"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"port {port} did not answer 200 within {deadline}s")


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port, conns, duration, lua):
    threads = min(2, conns)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", lua,
                          f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"port {port}: {errors.group(1)} non-2xx responses\n{out}")
    return rps, p50, p99


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", default=os.environ.get("SWITCHYARD_ENVOY", os.path.join(ROOT, ".venv/lib/python3.11/site-packages/envoy/_bin/envoy")))
    ap.add_argument("--wasm", default=os.path.join(ROOT, "target/wasm32-wasip1/release/switchyard_filter.wasm"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every setup this many times, interleaved, and report the median "
                         "(steadier on a busy machine)")
    ap.add_argument("--conns", default="1,64,512")
    ap.add_argument("--base-port", type=int, default=39100)
    ap.add_argument("--host-runner", help="also measure host-runner (path to the binary)")
    ap.add_argument("--component", action="append", default=[],
                    help="also measure a Spin component (needs --host-runner); repeatable, "
                         "each PATH or LABEL=PATH")
    ap.add_argument("--component-runner", action="append", default=[],
                    help="the host-runner binary serving the n-th --component (default "
                         "--host-runner), to compare host-runner builds")
    ap.add_argument("--filter", action="append", default=[],
                    help="LABEL=PATH of another filter.wasm build to measure in the same Envoy")
    ap.add_argument("--control-plane", metavar="GPU_BACKEND",
                    help="also measure the filter synced to a control plane (key sync and usage "
                         "shipping), run as `GPU_BACKEND --no-models`")
    ap.add_argument("--components-only", action="store_true",
                    help="measure only the upstream direct and the components")
    ap.add_argument("--passthrough", default=os.path.join(
        ROOT, "host-runner/test-guests/target/wasm32-wasip1/release/passthrough.wasm"))
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="switchyard-bench-")
    base = args.base_port
    ports = (base, base + 1, base + 2, base + 10)
    extra_filters = []
    for i, spec in enumerate(args.filter):
        label, _, path = spec.rpartition("=")
        extra_filters.append((label or path, os.path.abspath(path), base + 30 + i))
    control_plane = (base + 40, base + 41) if args.control_plane else None
    upstream_cfg, proxies_cfg = write_configs(tmp, args.wasm, ports, extra_filters,
                                              control_plane)
    lua = os.path.join(tmp, "post.lua")
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(REQUEST)}\n'
                f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer {KEY}"\n'
                # Only the passthrough guest needs it; the filter overwrites it, Envoy's
                # pass-through route ignores it.
                'wrk.headers["x-switchyard-cluster"] = "upstream"\n')
    procs = []
    try:
        if control_plane:
            procs.append(subprocess.Popen(
                [args.control_plane, "--no-models", "--listen", f"127.0.0.1:{control_plane[0]}",
                 "--data-dir", os.path.join(tmp, "control-plane"), "--edge-token-sha256",
                 hashlib.sha256(EDGE_TOKEN.encode()).hexdigest()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for cfg, base_id in ((upstream_cfg, 1), (proxies_cfg, 2)):
            procs.append(subprocess.Popen([args.envoy, "-c", cfg, "--concurrency", "1", "-l", "error",
                                           "--base-id", str(base + base_id)],
                                          env={**os.environ, "SWITCHYARD_EDGE_TOKEN": EDGE_TOKEN},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        setups = [("upstream direct", ports[0])]
        if not args.components_only:
            setups += [("envoy pass-through", ports[1]), ("envoy + filter.wasm", ports[2])]
            setups += [(f"envoy + {label}", port) for label, _, port in extra_filters]
            if control_plane:
                setups.append(("envoy + filter.wasm + control plane", control_plane[1]))
        if args.host_runner and not args.components_only:
            gw_path = os.path.join(tmp, "gateway.json")
            with open(gw_path, "w") as f:
                f.write(gateway_config(ports[0]))
            for name, port, wasm, extra in (
                    ("host-runner + passthrough", base + 3, args.passthrough, []),
                    ("host-runner + filter.wasm", base + 4, args.wasm, ["--plugin-config", gw_path])):
                procs.append(subprocess.Popen(
                    [args.host_runner, "serve", "--filter", wasm, "--listen", f"127.0.0.1:{port}",
                     "--no-admin", "--cluster", f"upstream=127.0.0.1:{ports[0]}", "--log-level", "warn"] + extra,
                    stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{port}.log"), "wb")))
                setups.append((name, port))
        for i, spec in enumerate(args.component):
            label, _, path = spec.rpartition("=")
            runner = (args.component_runner[i] if i < len(args.component_runner)
                      else args.host_runner)
            if not runner:
                raise SystemExit("--component needs --host-runner or --component-runner")
            port = base + 20 + i  # clear of the proxies' ports and Envoy's admin ports
            procs.append(subprocess.Popen(
                [runner, "serve-component", "--component", path,
                 "--listen", f"127.0.0.1:{port}", "--var", f"gateway_config={gateway_config(ports[0])}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            setups.append((f"serve-component + {label or 'edge_worker.wasm'}", port))
        for _, port in setups:
            wait_ready(port)
        rows = []
        for conns in [int(c) for c in args.conns.split(",")]:
            samples = {name: [] for name, _ in setups}
            for _ in range(args.rounds):
                for name, port in setups:
                    samples[name].append(run_wrk(port, conns, args.duration, lua))
            # The median round by req/s, per setup.
            results = {name: sorted(runs)[len(runs) // 2] for name, runs in samples.items()}
            rows.append((conns, results))
        cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
        load = open("/proc/loadavg").read().split()[0]
        print(f"Machine: {cpu}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}; "
              f"wrk {args.duration}s per cell, median of {args.rounds} interleaved round(s); "
              f"Envoy --concurrency 1 for each of upstream and proxies; load average {load}\n")
        print("Ratios (the baseline column): each Envoy row against Envoy pass-through; each "
              "host-runner row against host-runner + passthrough; the component against the "
              "upstream direct.\n")
        print("| conns | setup | req/s | p50 ms | p99 ms | req/s vs pass-through | p99 vs pass-through |")
        print("|---|---|---|---|---|---|---|")
        for conns, results in rows:
            for name, (rps, p50, p99) in results.items():
                baseline = ("host-runner + passthrough" if name.startswith("host-runner")
                            else "envoy pass-through" if name.startswith("envoy")
                            else "upstream direct")
                base_rps, _, base_p99 = results[baseline]
                print(f"| {conns} | {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {rps / base_rps:.2f} | {p99 / base_p99:.2f} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
