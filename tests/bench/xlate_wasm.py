#!/usr/bin/env python3
"""Translation speed inside the wasm hosts (#17): the same cases as the criterion bench
(`filter/core/benches/translate_cases`), timed in Envoy's V8 and in host-runner's wasmtime.

Loads the bench guest (`filter/xlate-bench`, a proxy-wasm filter built like filter.wasm: same
workspace profile, wasm32-wasip1) into one Envoy listener (runtime `envoy.wasm.runtime.v8`)
and into `host-runner serve`, then asks each for every case several times (the guest runs a
case N times per request, after one untimed iteration, and answers the nanoseconds per
iteration from the host's clock). Prints a Markdown table: per host, the median of the
rounds, and the ratio to the fast path measured in the same host.

    cargo build --release -p switchyard-xlate-bench --target wasm32-wasip1
    cargo build --release -p host-runner
    python3 tests/bench/xlate_wasm.py [--envoy PATH] [--host-runner PATH] [--n 1000] [--rounds 5]

Loopback only, ephemeral ports; both hosts are stopped at the end.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from envoy_bench import ROOT, ROUTER, listener  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_yaml(port, admin, wasm):
    bench = f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: xlate_bench
                vm_config:
                  vm_id: xlate_bench
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}"""
    route = "direct_response: {status: 404}"
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{listener(port, bench + ROUTER, route)}
"""


def ask(port, n, deadline=120):
    """One run of every case: {name: ns per iteration}."""
    end = time.time() + deadline
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"x-bench-n": str(n)})
            with urllib.request.urlopen(req, timeout=300) as resp:
                lines = resp.read().decode().split("\n")
                return {name: int(ns) for name, ns in (line.split() for line in lines if line)}
        except (ConnectionError, urllib.error.URLError):
            if time.time() > end:
                raise
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", default=os.environ.get(
        "SWITCHYARD_ENVOY", os.path.join(ROOT, ".venv/lib/python3.11/site-packages/envoy/_bin/envoy")))
    ap.add_argument("--host-runner", default=os.path.join(ROOT, "target/release/host-runner"))
    ap.add_argument("--wasm", default=os.path.join(
        ROOT, "target/wasm32-wasip1/release/switchyard_xlate_bench.wasm"))
    ap.add_argument("--n", type=int, default=1000, help="iterations per case per request")
    ap.add_argument("--rounds", type=int, default=5, help="requests per host (the median is reported)")
    args = ap.parse_args()
    procs = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            envoy_port, admin, runner_port = free_port(), free_port(), free_port()
            config = os.path.join(tmp, "envoy.yaml")
            with open(config, "w") as f:
                f.write(envoy_yaml(envoy_port, admin, args.wasm))
            procs.append(subprocess.Popen(
                [args.envoy, "-c", config, "--concurrency", "1", "-l", "warn",
                 "--base-id", str(os.getpid() % 60000)],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "envoy.log"), "wb")))
            procs.append(subprocess.Popen(
                [args.host_runner, "serve", "--filter", args.wasm, "--listen",
                 f"127.0.0.1:{runner_port}", "--no-admin", "--log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "runner.log"), "wb")))
            for host, port in (("Envoy (V8)", envoy_port), ("host-runner (wasmtime)", runner_port)):
                rounds = [ask(port, args.n) for _ in range(args.rounds)]
                results[host] = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    hosts = list(results)
    print(f"| case | " + " | ".join(f"{h}: µs per iteration (ratio to fast path)" for h in hosts) + " |")
    print("|---|" + "---|" * len(hosts))
    for name in results[hosts[0]]:
        cells = []
        for h in hosts:
            ns = results[h][name]
            base = results[h].get("fast_path_openai_patch") or ns
            cells.append(f"{ns / 1000:.2f} ({ns / base:.1f}×)")
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print(f"\n{args.rounds} rounds of {args.n} iterations per case per host, median.")


if __name__ == "__main__":
    main()
