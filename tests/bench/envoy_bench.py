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
        [--empty-filter] [--envoy-options] [--rounds N] [--routed-filter LABEL=PATH ...]

With --filter (repeatable), one more Envoy + filter row per build, in the same Envoy, to
compare filter builds (before/after a change) in one run; --routed-filter the same with the
gateway's `edge.route_complete_answers` opt-in set for that row only, so the default and the
opt-in of each build are measured side by side. --empty-filter adds the floor: the
passthrough guest (every callback continues) loaded as a wasm filter the same way, the least
any wasm filter costs. --envoy-options adds filter.wasm rows with each per-request Envoy
default turned off (request-id generation; the router's dynamic stats), to price them.

Every row also reports the CPU time per request of the process serving it (the proxies'
Envoy, host-runner, serve-component), from /proc: on a loaded machine it moves less than
req/s, which also counts time spent waiting for a core; the errors wrk saw (socket errors and
non-2xx answers; a row with more than 1% non-2xx stops the run); and that process's resident
memory after the cell (the largest of the rounds, MB). The script raises its open-files limit
so --conns can include 5000.

With --limits, one more Envoy + filter row whose key has every limit (requests and tokens per
minute, concurrency, a budget; all far above what the run uses), enforced on Envoy's shared
data; with --control-plane as well, one more where the same key is admitted by the control
plane (POST /edge/v1/admit per request, settled by the usage records).

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
import resource
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


def listener(port, http_filters, route, hcm_extra=""):
    return f"""
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: p{port}{hcm_extra}
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

# Envoy options the shipped envoy.yaml leaves at their defaults, each turned off in a row of its
# own (--envoy-options): (label, HTTP connection manager lines, router).
ENVOY_OPTIONS = [
    ("generate_request_id: false", """
          generate_request_id: false""", ROUTER),
    ("router dynamic_stats: false", "", """
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, dynamic_stats: false}"""),
]


def cluster(name, port):
    # Envoy's default circuit breakers (1,024 connections, pending and active requests per
    # cluster) would answer 503 to most of a 5,000-connection cell: the bench measures the
    # proxy, not that default, so every row's cluster lifts them alike.
    return f"""
  - name: {name}
    type: STATIC
    circuit_breakers: {{thresholds: [{{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}}]}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"""


EDGE_TOKEN = "bench-edge-token"


# Every limit, far above what a run uses: the cost of enforcing them, never a refusal.
BENCH_LIMITS = {"rpm": 10**8, "tpm": 10**10, "concurrent": 10**6,
                "budget": {"usd": 10**6, "period": "month"}}


# The gateway's `edge.route_complete_answers` opt-in for every filter this run measures
# (`--route-complete-answers`; off by default, as in the gateway).
ROUTE_COMPLETE_ANSWERS = False


def gateway_config(upstream_port, control_plane_port=None, limits=False, routed=False):
    key = {"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}
    if limits:
        key["limits"] = BENCH_LIMITS
    config = {
        "keys": [key],
        "providers": {"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}", "cluster": "upstream"}},
        "models": [{"name": "bench", "deployments": [{"provider": "up", "model": "bench-upstream",
                                                       "price": {"input": 1.0, "output": 2.0}}]}],
    }
    if ROUTE_COMPLETE_ANSWERS or routed:
        # Only when set: builds from before the option (`--filter` of an older main) refuse it.
        config["edge"] = {"route_complete_answers": True}
    if control_plane_port:
        config["control_plane"] = {"base_url": f"http://127.0.0.1:{control_plane_port}",
                                   "cluster": "control_plane",
                                   "token_secret": "SWITCHYARD_EDGE_TOKEN"}
    return json.dumps(config)


def write_configs(tmp, wasm, ports, extra_filters=(), control_plane=None, options_ports=(),
                  limits=None):
    """Envoy configs: the upstream, and the proxies (pass-through, the filter, one more
    filter listener per `(label, path, port)` in `extra_filters`, with `control_plane`
    `(its port, listener port)` the filter synced to a control plane, and with `limits`
    `(listener port, listener port through the control plane)` the key limited)."""
    up, passthrough, filtered, admin = ports
    direct = (f'direct_response: {{status: 200, body: {{inline_string: {json.dumps(COMPLETION)}}}}}\n'
              '                response_headers_to_add: [{header: {key: content-type, value: application/json}}]')
    upstream_yaml = f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{listener(up, ROUTER, direct)}
"""

    def wasm_filter(path, vm, cp_port=None, limited=False, routed=False):
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
                  value: {json.dumps(gateway_config(up, cp_port, limited, routed))}
                vm_config:
                  vm_id: {vm}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {path}}}}}{env}"""
    route = "route: {cluster_header: x-switchyard-cluster, timeout: 0s}"
    filters = listener(filtered, wasm_filter(wasm, "main") + ROUTER, route)
    for i, (_, path, port, routed) in enumerate(extra_filters):
        filters += listener(port, wasm_filter(path, f"extra{i}", routed=routed) + ROUTER, route)
    for (_, hcm, router), port in zip(ENVOY_OPTIONS, options_ports):
        filters += listener(port, wasm_filter(wasm, "main") + router, route, hcm)
    clusters = cluster("upstream", up)
    if control_plane:
        cp_port, port = control_plane
        filters += listener(port, wasm_filter(wasm, "synced", cp_port) + ROUTER, route)
        clusters += cluster("control_plane", cp_port)
    if limits:
        local_port, cp_limits_port = limits
        filters += listener(local_port, wasm_filter(wasm, "limits", None, True) + ROUTER, route)
        if control_plane:
            filters += listener(cp_limits_port,
                                wasm_filter(wasm, "cplimits", control_plane[0], True) + ROUTER,
                                route)
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


def wait_ready(port, deadline=300):
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


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far (from /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    """Resident memory of process `pid` now, MB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def run_wrk(port, conns, duration, lua, pid=None):
    """req/s, p50 ms, p99 ms, and with `pid` the CPU µs that process spent per request (its
    CPU time over the cell / requests answered: steadier than req/s on a loaded machine, as
    it does not count time spent waiting for a core), the errors wrk saw, and the process's
    resident memory after the cell."""
    threads = min(2, conns)
    cpu_before = cpu_seconds(pid) if pid else None
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", lua,
                          f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = ((cpu_seconds(pid) - cpu_before) * 1e6 / max(requests, 1)) if pid else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    if non_2xx * 100 > max(requests, 1):
        raise SystemExit(f"port {port}: {non_2xx} non-2xx responses\n{out}")
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = non_2xx + (sum(int(g) for g in socket.groups()) if socket else 0)
    return rps, p50, p99, cpu_us, errors, (rss_mb(pid) if pid else 0.0)


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
    ap.add_argument("--routed-filter", action="append", default=[],
                    help="LABEL=PATH of a filter.wasm build measured with the gateway's "
                         "edge.route_complete_answers opt-in set for that row only")
    ap.add_argument("--control-plane", metavar="GPU_BACKEND",
                    help="also measure the filter synced to a control plane (key sync and usage "
                         "shipping), run as `GPU_BACKEND --no-models`")
    ap.add_argument("--empty-filter", action="store_true",
                    help="also measure the floor: the passthrough guest (every callback continues) "
                         "as an Envoy wasm filter, loaded like filter.wasm")
    ap.add_argument("--envoy-options", action="store_true",
                    help="also measure filter.wasm with each Envoy default that costs per request "
                         "turned off (request-id generation, the router's dynamic stats)")
    ap.add_argument("--limits", action="store_true",
                    help="also measure the filter with every limit on the key (and, with "
                         "--control-plane, admitted by the control plane)")
    ap.add_argument("--route-complete-answers", action="store_true",
                    help="set the gateway's edge.route_complete_answers opt-in (the bench's "
                         "complete answers then go through the proxy's router, not a call)")
    ap.add_argument("--components-only", action="store_true",
                    help="measure only the upstream direct and the components")
    ap.add_argument("--passthrough", default=os.path.join(
        ROOT, "host-runner/test-guests/target/wasm32-wasip1/release/passthrough.wasm"))
    args = ap.parse_args()
    global ROUTE_COMPLETE_ANSWERS
    ROUTE_COMPLETE_ANSWERS = args.route_complete_answers
    # wrk, Envoy and the hosts inherit it: 5,000 connections need more than the usual 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="switchyard-bench-")
    base = args.base_port
    ports = (base, base + 1, base + 2, base + 10)
    extra_filters = []
    if args.empty_filter:
        args.filter.insert(0, f"empty filter (passthrough guest)={args.passthrough}")
    specs = [(spec, False) for spec in args.filter] + [(spec, True) for spec in args.routed_filter]
    for i, (spec, routed) in enumerate(specs):
        label, _, path = spec.rpartition("=")
        extra_filters.append((label or path, os.path.abspath(path), base + 60 + i, routed))
    control_plane = (base + 40, base + 41) if args.control_plane else None
    options_ports = [base + 50 + i for i in range(len(ENVOY_OPTIONS))] if args.envoy_options else []
    limits = (base + 42, base + 43) if args.limits else None
    upstream_cfg, proxies_cfg = write_configs(tmp, args.wasm, ports, extra_filters,
                                              control_plane, options_ports, limits)
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
        # (name, port, the process whose CPU time the row reports)
        upstream_pid, proxies_pid = procs[-2].pid, procs[-1].pid
        setups = [("upstream direct", ports[0], upstream_pid)]
        if not args.components_only:
            setups += [("envoy pass-through", ports[1], proxies_pid),
                       ("envoy + filter.wasm", ports[2], proxies_pid)]
            setups += [(f"envoy + {label}", port, proxies_pid) for label, _, port, _ in extra_filters]
            if control_plane:
                setups.append(("envoy + filter.wasm + control plane", control_plane[1], proxies_pid))
            if limits:
                setups.append(("envoy + filter.wasm + limits", limits[0], proxies_pid))
                if control_plane:
                    setups.append(("envoy + filter.wasm + limits via control plane", limits[1],
                                   proxies_pid))
            setups += [(f"envoy + filter.wasm, {label}", port, proxies_pid)
                       for (label, _, _), port in zip(ENVOY_OPTIONS, options_ports)]
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
                setups.append((name, port, procs[-1].pid))
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
            setups.append((f"serve-component + {label or 'edge_worker.wasm'}", port, procs[-1].pid))
        for _, port, _ in setups:
            wait_ready(port)
        rows = []
        for conns in [int(c) for c in args.conns.split(",")]:
            samples = {name: [] for name, _, _ in setups}
            for _ in range(args.rounds):
                for name, port, pid in setups:
                    samples[name].append(run_wrk(port, conns, args.duration, lua, pid))
            # The median round by req/s, per setup; CPU per request is its own median; errors
            # summed over the rounds; memory the largest after any round.
            results = {}
            for name, runs in samples.items():
                rps, p50, p99 = sorted(runs)[len(runs) // 2][:3]
                cpus = sorted(r[3] or 0.0 for r in runs)
                results[name] = (rps, p50, p99, cpus[len(cpus) // 2], sum(r[4] for r in runs),
                                 max(r[5] for r in runs))
            rows.append((conns, results))
        cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
        load = open("/proc/loadavg").read().split()[0]
        print(f"Machine: {cpu}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}; "
              f"wrk {args.duration}s per cell, median of {args.rounds} interleaved round(s); "
              f"Envoy --concurrency 1 for each of upstream and proxies; load average {load}\n")
        print("Ratios (the baseline column): each Envoy row against Envoy pass-through; each "
              "host-runner row against host-runner + passthrough; the component against the "
              "upstream direct.\n")
        print("CPU µs/req: CPU time of the process serving the row (the proxies' Envoy, host-runner, "
              "or serve-component) over the cell, per request answered.\n")
        print("| conns | setup | req/s | p50 ms | p99 ms | CPU µs/req | errors | RSS MB "
              "| req/s vs pass-through | p99 vs pass-through | CPU vs pass-through |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for conns, results in rows:
            for name, (rps, p50, p99, cpu, errors, rss) in results.items():
                baseline = ("host-runner + passthrough" if name.startswith("host-runner")
                            else "envoy pass-through" if name.startswith("envoy")
                            else "upstream direct")
                base_rps, _, base_p99, base_cpu = results[baseline][:4]

                def ratio(a, b):
                    return f"{a / b:.2f}" if b else "—"
                print(f"| {conns} | {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} | "
                      f"{errors} | {rss:.0f} | {ratio(rps, base_rps)} | {ratio(p99, base_p99)} | "
                      f"{ratio(cpu, base_cpu)} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
