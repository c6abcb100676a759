#!/usr/bin/env python3
"""Envoy's whole per-request cost in instructions, under callgrind: load-independent.

Each row's proxy Envoy (the configs `envoy_bench.py` writes, one Envoy per row: pass-through,
then one per filter build) runs in turn under `valgrind --tool=callgrind --smc-check=all` (V8
JITs the guests) with instrumentation off while it starts; an upstream Envoy
(`direct_response`) runs natively. The listener is warmed, then callgrind is switched on,
zeroed, and sent N1 and then N2 sequential requests on one keep-alive connection (a dump after
each): (Ir(N2) - Ir(N1)) / (N2 - N1) is what Envoy spent per request — every thread of the
process (codecs, router, the V8 boundary, host calls, the guest's JIT code), the fixed costs of
a window cancelled. They do not depend on the machine's load (wrk's req/s on a shared machine
swings by tens of percent); what is left is V8's own background work (tier-up, GC) landing in
a window: repeated runs agreed within about 4 % per row at 50/150 requests; more requests
narrow it.

    python3 tests/bench/envoy_callgrind.py [--filter LABEL=PATH ...] [--routed-filter LABEL=PATH ...]
        [--passthrough PASSTHROUGH.wasm] [--requests 50,150] [--base-port 27500] [--annotate]
        [--kind complete|translated|streamed|"streamed translated"]

--kind picks the bench's request every row is sent (`envoy_bench.KINDS`): the fast path's
complete chat (default), OpenAI -> Anthropic, or either streamed; the pass-through row is sent
the bench's pass-through answer for that kind (complete, or the OpenAI chunk stream).

--filter / --routed-filter as in envoy_bench.py (--routed-filter sets the gateway's
`edge.route_complete_answers` for that row); --passthrough adds the empty-filter floor.

--annotate attributes each row's per-request cost: the two dumps are parsed and subtracted
per function, and the script prints (and writes to `annotate.md` in the kept tmp dir) each
row's cost by object (the `envoy` binary; its tcmalloc, which valgrind does not place in the
binary; libc; the JIT code, whose object callgrind cannot name: the guest and V8's stubs),
then, for every filter row against the first row with a
filter (the empty floor when given), the functions whose per-request cost grew most: self
and inclusive instructions and calls per request. The `envoy` binary is stripped, so its
functions are named by address (the same across rows: valgrind loads it at a fixed base);
the calls column tells the per-request callbacks and host calls apart (Envoy's host-call
handlers are the functions the JIT code calls, see `called from JIT` in the table).
Needs valgrind (callgrind, callgrind_control). Loopback only.
"""
import argparse
import collections
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

JIT = "JIT (guest + V8 code)"
TCMALLOC = "envoy tcmalloc"


def parse_dump(path):
    """One callgrind dump as {(object, function): [self Ir, inclusive Ir, calls in,
    calls in from JIT code]}. Code callgrind places in no object (`???`) is either Envoy's
    tcmalloc (its own ELF section) or V8's JIT code: all of the latter is one entry, JIT."""
    funcs = collections.defaultdict(lambda: [0, 0, 0, 0])
    names = {"ob": {}, "fn": {}}
    ob = fn = cob = cfn = None
    pending_call = None

    def name(kind, text):
        m = re.match(r"\((\d+)\)(?: (.*))?$", text)
        if not m:
            return text
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), text)

    def key(obj, func):
        obj = os.path.basename(obj or "???")
        if obj != "???":
            return (obj, func)
        try:
            address = int((func or "").split("'")[0], 16)
        except ValueError:
            address = None
        # Code callgrind places in no object: below 4 GiB it is the envoy binary's own
        # `google_malloc` section (tcmalloc: outside the .text that valgrind maps to the
        # binary), above it V8's code space (the guest and V8's wasm stubs).
        if address is not None and address < 1 << 32:
            return (TCMALLOC, func)
        return (JIT, "")

    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                ir = int(line.split()[-1]) if len(line.split()) > 1 else 0
                me = key(ob, fn)
                if pending_call is not None:
                    count, callee = pending_call
                    funcs[me][1] += ir
                    funcs[callee][2] += count
                    if me[0] == JIT and callee[0] != JIT:
                        funcs[callee][3] += count
                    pending_call = None
                else:
                    funcs[me][0] += ir
                    funcs[me][1] += ir
                continue
            if line.startswith("ob="):
                ob = name("ob", line[3:].strip())
            elif line.startswith("fn="):
                fn = name("fn", line[3:].strip())
                cob = None
            elif line.startswith("cob="):
                cob = name("ob", line[4:].strip())
            elif line.startswith("cfn=") or line.startswith("cfl=") or line.startswith("cfi="):
                if line.startswith("cfn="):
                    cfn = name("fn", line[4:].strip())
            elif line.startswith("calls="):
                count = int(line[6:].split()[0])
                pending_call = (count, key(cob or ob, cfn))
                cob = None
    return funcs


def per_request(d1, d2, n):
    """Per-function cost of one request: (dump after N2 - dump after N1) / (N2 - N1)."""
    out = {}
    for k in set(d1) | set(d2):
        a, b = d1.get(k, [0, 0, 0, 0]), d2.get(k, [0, 0, 0, 0])
        out[k] = [(y - x) / n for x, y in zip(a, b)]
    return out


def table(title, columns, rows):
    """Markdown lines: `title`, then a table of `rows` (lists of cells) under `columns`."""
    return ([f"\n{title}\n", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def annotate(rows, base_label, top=25):
    """Markdown tables: each row's cost per object, and each filter row's growth by function
    against the row `base_label`."""
    lines = []
    objects = sorted({k[0] for _, f in rows for k in f})
    lines.append("Per request, by object (self instructions):\n")
    lines.append("| setup | " + " | ".join(objects) + " |")
    lines.append("|---|" + "---|" * len(objects))
    for label, f in rows:
        by = collections.Counter()
        for k, v in f.items():
            by[k[0]] += v[0]
        lines.append(f"| {label} | " + " | ".join(f"{by[o] / 1000:.1f}k" for o in objects) + " |")
    base = dict(rows)[base_label]
    for label, f in rows:
        if label == base_label or not label.startswith("envoy +"):
            continue
        zero = [0] * 4
        grow = sorted(((v[0] - base.get(k, zero)[0], k) for k, v in f.items()), reverse=True)
        lines += table(
            f"{label} − {base_label}, the {top} functions whose self cost per request grew most "
            "(calls: per request, this row / base):",
            ["function", "object", "self Δ", "self", "inclusive", "calls", "calls base",
             "called from JIT"],
            [[k[1] or "—", k[0], f"{delta:+.0f}", f"{f[k][0]:.0f}", f"{f[k][1]:.0f}",
              f"{f[k][2]:.1f}", f"{base.get(k, zero)[2]:.1f}", f"{f[k][3]:.1f}"]
             for delta, k in grow[:top]])
        hosts = sorted(((v[1], k) for k, v in f.items() if v[3] >= 0.5), reverse=True)
        lines += table(
            f"{label}: functions the JIT code calls (host calls, V8 runtime), by inclusive cost "
            "per request:",
            ["function", "object", "inclusive", "calls from JIT", "inclusive per call",
             "base inclusive", "base calls from JIT"],
            [[k[1], k[0], f"{incl:.0f}", f"{f[k][3]:.1f}", f"{incl / f[k][3]:.0f}",
              f"{base.get(k, zero)[1]:.0f}", f"{base.get(k, zero)[3]:.1f}"]
             for incl, k in hosts[:top]])
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", default=os.environ.get("SWITCHYARD_ENVOY", os.path.join(
        eb.ROOT, ".venv/lib/python3.11/site-packages/envoy/_bin/envoy")))
    ap.add_argument("--filter", action="append", default=[])
    ap.add_argument("--routed-filter", action="append", default=[])
    ap.add_argument("--passthrough", help="the empty-filter floor (host-runner's passthrough guest)")
    ap.add_argument("--requests", default="50,150", help="N1,N2 (default 50,150)")
    ap.add_argument("--kind", default="complete", choices=sorted(eb.KINDS),
                    help="which of the bench's requests every row is sent (default complete)")
    ap.add_argument("--annotate", action="store_true",
                    help="per-function cost per request, filter rows against the first filter row")
    # Below the kernel's ephemeral range: a busy machine's outgoing connections hold ports above.
    ap.add_argument("--base-port", type=int, default=27500)
    args = ap.parse_args()
    n1, n2 = (int(n) for n in args.requests.split(","))
    base = args.base_port
    upstreams = {"upstream": base, "upstream_sse": base + 5, "anthropic": base + 6,
                 "anthropic_sse": base + 7}
    ports = (base + 1, base + 2, base + 8)
    extra = []
    if args.passthrough:
        extra.append(("empty filter (passthrough guest)", os.path.abspath(args.passthrough), False))
    extra += [(*spec.split("=", 1), False) for spec in args.filter]
    extra += [(*spec.split("=", 1), True) for spec in args.routed_filter]
    extra = [(label, os.path.abspath(path), base + 60 + i, routed)
             for i, (label, path, routed) in enumerate(extra)]
    if not extra:
        raise SystemExit("nothing to measure: give --filter, --routed-filter or --passthrough")
    tmp = tempfile.mkdtemp(prefix="switchyard-callgrind-")
    print(f"dumps and logs in {tmp}", flush=True)
    # One keep-alive connection, idle while callgrind dumps: the upstream must not close it
    # (eb.UPSTREAM_IDLE stays off: only envoy_bench's main sets it).
    up_cfg, proxy_cfgs = eb.write_configs(tmp, extra[-1][1], ports, upstreams, extra)
    # Pass-through and the extra filters (the bench's own `envoy + filter.wasm` row is
    # whichever build was given last: measured as its own row already).
    rows = [(name, path, port) for name, path, port, _ in proxy_cfgs
            if name != "envoy + filter.wasm"]
    if args.kind.startswith("streamed"):
        # Pass-through's streamed answer is on its second listener (as in the bench).
        rows = [(name, path, ports[2] if name == "envoy pass-through" else port)
                for name, path, port in rows]
    upstream = subprocess.Popen([args.envoy, "-c", up_cfg, "--concurrency", "1", "-l", "error",
                                 "--base-id", str(base + 1)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request, cluster_name = eb.KINDS[args.kind]
    body = request.encode()
    headers = {"authorization": f"Bearer {eb.KEY}", "content-type": "application/json",
               "x-switchyard-cluster": cluster_name}

    def send(port, n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"port {port} answered {resp.status}")
        conn.close()

    print(f"Envoy instructions per request (callgrind, {n1} and {n2} sequential keep-alive "
          f"requests per row; the bench's ~{len(body)}-byte chat, {args.kind})\n")
    print("| setup | instructions per request | vs pass-through |")
    print("|---|---|---|")
    first = None
    annotated = []
    try:
        for i, (label, cfg, port) in enumerate(rows):
            out = os.path.join(tmp, f"callgrind.row{i}.out")
            log = os.path.join(tmp, f"valgrind.row{i}.log")
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--smc-check=all", "--instr-atstart=no",
                 f"--callgrind-out-file={out}", args.envoy, "-c", cfg, "--concurrency", "1",
                 "-l", "error", "--base-id", str(base + 2 + i)],
                stdout=subprocess.DEVNULL, stderr=open(log, "w"))

            def control(*flags):
                subprocess.run(["callgrind_control", *flags, str(proc.pid)],
                               capture_output=True, check=True)

            def window(n):
                control("-z")
                send(port, n)
                before = set(glob.glob(f"{out}.*"))
                control("-d")
                dump = (set(glob.glob(f"{out}.*")) - before).pop()
                with open(dump) as f:
                    total = int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M).group(1))
                return total, dump

            try:
                started = time.time()
                while True:
                    try:
                        send(port, 1)
                        break
                    except (OSError, http.client.HTTPException):
                        if proc.poll() is not None or time.time() - started > 900:
                            raise SystemExit(f"{label}: Envoy did not answer (see {log})")
                        time.sleep(2)
                send(port, 40)  # V8's tier-up and the connection pool, before any window
                with open(log) as f:
                    if "Failed to create new Wasm instance" in f.read():
                        raise SystemExit(f"a wasm VM failed to start under valgrind: {log}")
                control("-i", "on")  # it started off: Envoy's start-up is not instrumented
                send(port, 20)
                (t1, d1), (t2, d2) = window(n1), window(n2)
            finally:
                proc.terminate()
                proc.wait()
            per = (t2 - t1) / (n2 - n1)
            first = first or per
            print(f"| {label} | {per / 1000:.1f}k | {per / first:.2f} |", flush=True)
            if args.annotate:
                annotated.append((label, per_request(parse_dump(d1), parse_dump(d2), n2 - n1)))
    finally:
        upstream.terminate()
        upstream.wait()
    if annotated:
        filters = [label for label, _ in annotated if label.startswith("envoy +")]
        text = annotate(annotated, filters[0] if filters else annotated[0][0])
        with open(os.path.join(tmp, "annotate.md"), "w") as f:
            f.write(text + "\n")
        print("\n" + text)


if __name__ == "__main__":
    main()
