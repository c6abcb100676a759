#!/usr/bin/env python3
"""Envoy's whole per-request cost in instructions, under callgrind: load-independent.

One proxies Envoy (the same config `envoy_bench.py` writes: pass-through, and one listener per
filter build) runs under `valgrind --tool=callgrind --smc-check=all` (V8 JITs the guests)
with instrumentation off while it starts; an upstream Envoy (`direct_response`) runs natively.
Each listener is warmed, then callgrind is switched on, zeroed, and sent N1 and then N2
sequential requests on one keep-alive connection (a dump after each): (Ir(N2) - Ir(N1)) /
(N2 - N1) is what Envoy spent per request — every thread of the process (codecs, router,
the V8 boundary, host calls, the guest's JIT code), the fixed costs of a window cancelled.
They do not depend on the machine's load (wrk's req/s on a shared machine swings by tens of
percent); what is left is V8's own background work (tier-up, GC) landing in a window: repeated
runs agreed within about 4 % per row at 50/150 requests; more requests narrow it.

    python3 tests/bench/envoy_callgrind.py [--filter LABEL=PATH ...] [--routed-filter LABEL=PATH ...]
        [--passthrough PASSTHROUGH.wasm] [--requests 50,150] [--base-port 27500]

--filter / --routed-filter as in envoy_bench.py (--routed-filter sets the gateway's
`edge.route_complete_answers` for that listener); --passthrough adds the empty-filter floor.
At most three of them per run: under valgrind, four wasm VMs in one Envoy start (the
config's own filter listener is one of them) but six did not (each reserves a large address
range), and Envoy then lets requests past the filter — the script stops if Envoy logs such a
failure.
Needs valgrind (callgrind, callgrind_control). Loopback only.
"""
import argparse
import glob
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import envoy_bench as eb  # noqa: E402  (the configs and the request are the bench's own)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", default=os.environ.get("SWITCHYARD_ENVOY", os.path.join(
        eb.ROOT, ".venv/lib/python3.11/site-packages/envoy/_bin/envoy")))
    ap.add_argument("--filter", action="append", default=[])
    ap.add_argument("--routed-filter", action="append", default=[])
    ap.add_argument("--passthrough", help="the empty-filter floor (host-runner's passthrough guest)")
    ap.add_argument("--requests", default="50,150", help="N1,N2 (default 50,150)")
    # Below the kernel's ephemeral range: a busy machine's outgoing connections hold ports above.
    ap.add_argument("--base-port", type=int, default=27500)
    args = ap.parse_args()
    n1, n2 = (int(n) for n in args.requests.split(","))
    base = args.base_port
    ports = (base, base + 1, base + 2, base + 10)
    extra = []
    if args.passthrough:
        extra.append(("empty filter (passthrough guest)", os.path.abspath(args.passthrough), False))
    extra += [(*spec.split("=", 1), False) for spec in args.filter]
    extra += [(*spec.split("=", 1), True) for spec in args.routed_filter]
    extra = [(label, os.path.abspath(path), base + 60 + i, routed)
             for i, (label, path, routed) in enumerate(extra)]
    if not extra:
        raise SystemExit("nothing to measure: give --filter, --routed-filter or --passthrough")
    if len(extra) > 3:
        raise SystemExit("at most three filter listeners per run (see --help)")
    tmp = tempfile.mkdtemp(prefix="switchyard-callgrind-")
    up_cfg, px_cfg = eb.write_configs(tmp, extra[-1][1], ports, extra)
    out = os.path.join(tmp, "callgrind.out")
    procs = [subprocess.Popen([args.envoy, "-c", up_cfg, "--concurrency", "1", "-l", "error",
                               "--base-id", str(base + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(["valgrind", "--tool=callgrind", "--smc-check=all", "--instr-atstart=no",
                               f"--callgrind-out-file={out}.%p", args.envoy, "-c", px_cfg,
                               "--concurrency", "1", "-l", "error", "--base-id", str(base + 2)],
                              stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "valgrind.log"), "w"))]
    pid = procs[-1].pid
    body = eb.REQUEST.encode()
    headers = {"authorization": f"Bearer {eb.KEY}", "content-type": "application/json",
               "x-switchyard-cluster": "upstream"}

    def send(port, n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"port {port} answered {resp.status}")
        conn.close()

    def control(*flags):
        subprocess.run(["callgrind_control", *flags, str(pid)], capture_output=True, check=True)

    def window(port, n):
        control("-z")
        send(port, n)
        control("-d")
        dump = max(glob.glob(f"{out}.{pid}.*"), key=os.path.getmtime)
        with open(dump) as f:
            return int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M).group(1))

    rows = [("envoy pass-through", ports[1])] + [(label, port) for label, _, port, _ in extra]
    try:
        started = time.time()
        for _, port in rows:
            while True:
                try:
                    send(port, 1)
                    break
                except (OSError, http.client.HTTPException):
                    if time.time() - started > 900:
                        raise SystemExit(f"port {port} did not answer within 900 s")
                    time.sleep(2)
        for _, port in rows:
            send(port, 20)  # V8's tier-up and the connection pools, before any window
        with open(os.path.join(tmp, "valgrind.log")) as f:
            if "Failed to create new Wasm instance" in f.read():
                raise SystemExit(f"a wasm VM failed to start under valgrind: {tmp}/valgrind.log")
        control("-i", "on")  # it started off: Envoy's start-up is not instrumented
        print(f"Envoy instructions per request (callgrind, {n1} and {n2} sequential keep-alive "
              f"requests per listener; the bench's ~{len(body)}-byte chat)\n")
        print("| setup | instructions per request | vs pass-through |")
        print("|---|---|---|")
        first = None
        for label, port in rows:
            send(port, 20)
            per = (window(port, n2) - window(port, n1)) / (n2 - n1)
            first = first or per
            print(f"| {label} | {per / 1000:.1f}k | {per / first:.2f} |", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
