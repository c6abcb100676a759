#!/usr/bin/env python3
"""Envoy pass-through vs Envoy + filter.wasm (and host-runner with each), same upstream, same run.

Starts Envoys on loopback: an upstream that answers every request with a fixed answer
(`direct_response`, so the upstream is never the bottleneck; it reads the whole request first,
so connections to it stay open), a plain pass-through proxy in front of it, and a proxy running
filter.wasm (key check, parse, route, body rewrite, response usage metering), each proxy an
Envoy process of its own (its CPU and memory are the row's). `wrk` drives each at several
concurrencies and the script prints a Markdown table with requests/s, p50 and p99, and ratios
against pass-through.

    python3 tests/bench/envoy_bench.py [--envoy PATH] [--wasm PATH] [--duration 10] [--conns 1,64,512]
        [--host-runner target/release/host-runner --passthrough PASSTHROUGH.wasm]
        [--component [LABEL=]edge-worker/target/wasm32-wasip2/release/edge_worker.wasm ...]
        [--component-runner HOST_RUNNER ...] [--component-reuse N ...] [--components-only] [--filter LABEL=PATH ...]
        [--empty-filter] [--read-floor WASM_FLOOR] [--envoy-options] [--rounds N] [--routed-filter LABEL=PATH ...]
        [--translated] [--stream] [--ttfb-requests N] [--wrk-timeout S] [--backlog N] [--heap]

The upstream has four instant answers, each exactly as its API documents it: an OpenAI chat
completion, an OpenAI chunk stream (`text/event-stream`, with the usage chunk and `[DONE]`), an
Anthropic Messages `message`, and an Anthropic event stream (message_start ... message_stop).
The gateway config routes a model to each (`bench`, `bench-stream`, `bench-anthropic`,
`bench-anthropic-stream`). --translated adds, for the filter (and host-runner and component)
rows, a row whose request names `bench-anthropic`: OpenAI in, Anthropic out and back.
--stream adds streamed rows (`"stream": true`): Envoy pass-through to the chunk stream, the
filter's fast path, and with --translated the OpenAI -> Anthropic stream.

Time to first byte (wrk cannot measure it): after start-up, before the wrk cells, each row gets
--ttfb-requests requests (after 50 not counted) from the script's own client, one keep-alive
HTTP/1.1 connection over a blocking socket, sequential: the monotonic clock
(`time.perf_counter_ns`) is read before writing the request, when the first byte of the body
arrives (the first byte after the head's blank line; with chunked framing the first chunk's
size line) and when the body is complete. The table gives TTFB and total p50/p99 and each row's
TTFB p50 minus pass-through's (streamed rows: minus pass-through streamed). The instant
upstream sends a whole stream at once, so for streams TTFB is the gateway's time to its first
chunk, not a model's.

wrk runs with --timeout 30s (--wrk-timeout; wrk's own default, 2 s, made a row slowed by 5,000
queued connections show as timeout errors rather than as a long p99). The table's listen
overflows are the kernel's TcpExt ListenOverflows over the cell (machine-wide); --backlog sets
every Envoy listener's tcp_backlog_size (Envoy's default is net.core.somaxconn, which also caps
it). The instant upstream closes connections idle for --duration + 5 s, and after each cell
of 1,000 or more connections the script waits a second longer than that, so the proxies' kept-alive upstream connections of
earlier cells do not pile up on it (at 5,000 connections they reached its open files limit).
After the table, each process's resident memory when ready, at its peak and at the end,
and of that its wasm linear memories (from /proc/PID/smaps). With --heap, each proxy Envoy also
gets an admin listener whose allocator stats (`/memory`) are sampled through the run: what
Envoy and V8 had in use at the most, and what tcmalloc kept free then.

With --filter (repeatable), one more Envoy + filter row per build (an Envoy of its own, like
every row), to compare filter builds (before/after a change) in one run; --routed-filter the same with the
gateway's `edge.route_complete_answers` opt-in set for that row only, so the default and the
opt-in of each build are measured side by side. --empty-filter adds the floor: the
passthrough guest (every callback continues) loaded as a wasm filter the same way, the least
any wasm filter costs; --read-floor adds the `read` floor (shared/bench/wasm-floor in its `read`
mode: both bodies held, read and written back, no logic), the least a filter that reads the
request and the answer costs. --envoy-options adds filter.wasm rows with each per-request Envoy
default turned off (request-id generation; the router's dynamic stats), to price them.

Every row also reports the CPU time per request of the process serving it (the row's own
Envoy, host-runner, serve-component), from /proc: on a loaded machine it moves less than
req/s, which also counts time spent waiting for a core; the errors wrk saw (socket errors and
non-2xx answers; a row with more than 1% non-2xx stops the run); and that process's peak
resident memory so far (VmHWM, MB; the filter's fast, translated and streamed rows share one
process). The script raises its open-files limit so --conns can include 5000.

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
import socket
import subprocess
import sys
import tempfile
import threading
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
# An Anthropic Messages API `message` object (the documented non-streaming answer).
ANTHROPIC_MESSAGE = json.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "bench-upstream",
    "content": [{"type": "text", "text": "Hello from the bench upstream."}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 7},
})


def _openai_chunk(delta, finish_reason=None, usage=None):
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
             "model": "bench-upstream",
             "choices": [] if usage else [{"index": 0, "delta": delta,
                                           "finish_reason": finish_reason}]}
    if usage:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk)}\n\n"


# An OpenAI chat completion chunk stream (`text/event-stream`), as OpenAI sends it when asked
# with `stream_options.include_usage` (which the gateway sets): role, two content deltas, the
# finish reason, the usage chunk (empty `choices`), `[DONE]`.
OPENAI_STREAM = "".join([
    _openai_chunk({"role": "assistant", "content": ""}),
    _openai_chunk({"content": "Hello from"}),
    _openai_chunk({"content": " the bench upstream."}),
    _openai_chunk({}, "stop"),
    _openai_chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}),
    "data: [DONE]\n\n",
])


def _anthropic_event(name, data):
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


# An Anthropic Messages event stream, in the documented order: message_start, content_block_start,
# ping, two text deltas, content_block_stop, message_delta (usage), message_stop.
ANTHROPIC_STREAM = "".join([
    _anthropic_event("message_start", {"type": "message_start", "message": {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": "bench-upstream",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    _anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
    _anthropic_event("ping", {"type": "ping"}),
    _anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": "Hello from"}}),
    _anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta",
                                                       "text": " the bench upstream."}}),
    _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _anthropic_event("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": 7}}),
    _anthropic_event("message_stop", {"type": "message_stop"}),
])


def chat_request(model, stream=False):
    body = {
        "model": model,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Say hello in five words, please."}],
        "temperature": 0.2, "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body)


REQUEST = chat_request("bench")

# The request kinds a row can send: (the body, the cluster a passthrough guest must be told
# in `x-switchyard-cluster`). The gateway config routes each model to its own instant upstream:
# `bench` to the OpenAI one, `bench-anthropic` to the Anthropic one (OpenAI -> Anthropic
# translation both ways), the `-stream` models to the event-stream upstreams.
KINDS = {
    "complete": (REQUEST, "upstream"),
    "translated": (chat_request("bench-anthropic"), "anthropic"),
    "streamed": (chat_request("bench-stream", True), "upstream_sse"),
    "streamed translated": (chat_request("bench-anthropic-stream", True), "anthropic_sse"),
}


# Every listener's `tcp_backlog_size` (`--backlog`); None leaves Envoy's default, which on
# Linux is net.core.somaxconn (and the kernel caps any larger value at somaxconn).
BACKLOG = None


def listener(port, http_filters, route, hcm_extra=""):
    backlog = f"\n    tcp_backlog_size: {BACKLOG}" if BACKLOG else ""
    return f"""
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}{backlog}
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

# The upstream's filters read the whole request before its `direct_response` answers: a
# direct response sent while the request body is still arriving makes Envoy's HTTP/1 codec
# close the connection after the answer (`connection: close`), so without it every proxied
# request opened a new upstream connection, and the client's keep-alive to the upstream direct
# row was one request long.
BUFFER = """
          - name: envoy.filters.http.buffer
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: 1048576}"""

# Envoy options the shipped envoy.yaml leaves at their defaults, each turned off in a row of its
# own (--envoy-options): (label, HTTP connection manager lines, router).
ENVOY_OPTIONS = [
    ("generate_request_id: false", """
          generate_request_id: false""", ROUTER),
    ("router dynamic_stats: false", "", """
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, dynamic_stats: false}"""),
]


# The instant upstream closes a connection idle for this long (`upstream_idle`: the cell's
# duration + 5 s), and the bench waits a little longer after each cell of `IDLE_WAIT_CONNS`
# or more connections. Every proxy keeps its upstream connections alive (host-runner's pool
# up to 60 s, Envoy's indefinitely), all to the one upstream Envoy: after a few
# 5,000-connection cells it held 20,000 of them, its open files limit here, accepted nothing
# more, and the rows measured after that answered nothing (serve-component) or 502
# (host-runner) — the bench's upstream, not the row's proxy. The timeout is longer than a
# cell, so no connection made in a cell is closed under the cell's requests: with 5 s,
# host-runner's pool (whose idle connections wait longer) sent hundreds of requests per
# 5,000-connection cell on connections the upstream was closing that instant, and counted
# the resets as errors of the row.
UPSTREAM_IDLE_S = 0  # off (no option in the configs) until main sets it from --duration
UPSTREAM_IDLE = ""


def upstream_idle(seconds):
    """The upstream listeners' HCM options closing connections idle for `seconds`, at once.
    Envoy's defaults would first drain an idle HTTP/1 connection for `drain_timeout` (5 s)
    and then close it after `delayed_close_timeout` (1 s), reading nothing in that second: a
    request a proxy sent on it then was never answered (a 503 from the proxy). With two 10 s
    cells between a row's last use of its pooled connection and its own cell, the close came
    at idle + 5 s = 20 s, the first instant of that row's cell, so the filter's 64-connection
    cell counted one 503 in every run."""
    return f"""
          common_http_protocol_options: {{idle_timeout: {seconds}s}}
          drain_timeout: 0.001s
          delayed_close_timeout: 0s"""


IDLE_WAIT_CONNS = 1000


def cluster(name, port):
    # Envoy's default circuit breakers (1,024 connections, pending and active requests per
    # cluster) would answer 503 to most of a 5,000-connection cell: the bench measures the
    # proxy, not that default, so every row's cluster lifts the pending and active limits
    # alike. Connections to the upstream stay at 1,024 per proxy (requests beyond wait in
    # Envoy's pool): 5,000 new upstream connections at once overflow the instant upstream's
    # listen queue (net.core.somaxconn), the connects time out, and the proxy answers 503s
    # that measure the bench's upstream, not the proxy.
    return f"""
  - name: {name}
    type: STATIC
    circuit_breakers: {{thresholds: [{{max_connections: 1024, max_pending_requests: 100000, max_requests: 100000}}]}}
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


def gateway_config(upstreams, control_plane_port=None, limits=False, routed=False):
    """The gateway config of every filter row: one key, and a model per instant upstream
    (`upstreams`: cluster name -> port; see KINDS)."""
    key = {"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}
    if limits:
        key["limits"] = BENCH_LIMITS
    providers, models = {}, []
    for model, provider, kind, cluster_name in (
            ("bench", "up", "openai", "upstream"),
            ("bench-stream", "up-sse", "openai", "upstream_sse"),
            ("bench-anthropic", "anthropic", "anthropic", "anthropic"),
            ("bench-anthropic-stream", "anthropic-sse", "anthropic", "anthropic_sse")):
        providers[provider] = {"kind": kind, "cluster": cluster_name,
                               "base_url": f"http://127.0.0.1:{upstreams[cluster_name]}"}
        models.append({"name": model, "deployments": [{
            "provider": provider, "model": "bench-upstream", "price": {"input": 1.0, "output": 2.0}}]})
    config = {"keys": [key], "providers": providers, "models": models}
    if ROUTE_COMPLETE_ANSWERS or routed:
        # Only when set: builds from before the option (`--filter` of an older main) refuse it.
        config["edge"] = {"route_complete_answers": True}
    if control_plane_port:
        config["control_plane"] = {"base_url": f"http://127.0.0.1:{control_plane_port}",
                                   "cluster": "control_plane",
                                   "token_secret": "SWITCHYARD_EDGE_TOKEN"}
    return json.dumps(config)


def direct_response(body, content_type):
    return (f'direct_response: {{status: 200, body: {{inline_string: {json.dumps(body)}}}}}\n'
            f'                response_headers_to_add: [{{header: {{key: content-type, value: {content_type}}}}}]')


def write_configs(tmp, wasm, ports, upstreams, extra_filters=(), control_plane=None,
                  options_ports=(), limits=None, admin_base=None):
    """Envoy configs: the upstream (one listener per instant upstream in `upstreams`), and the
    proxies, one Envoy each so that each row's CPU and memory are its own: pass-through (with a
    second listener to the event-stream upstream), the filter, one more filter per `(label,
    path, port, routed, plugin_config)` in `extra_filters` (`plugin_config`, when not None,
    replaces the gateway config as that row's plugin configuration), with `control_plane`
    `(its port, listener port)` the filter synced to a control plane, and with `limits`
    `(listener port, listener port
    through the control plane)` the key limited; with `admin_base` each proxy gets an admin
    listener (port `admin_base` + its index) for `HeapSampler`. Returns the upstream config's
    path and a list of `(name, path, port, admin port or None)`, one per proxy Envoy."""
    passthrough, filtered, passthrough_sse = ports
    bodies = {"upstream": (COMPLETION, "application/json"),
              "upstream_sse": (OPENAI_STREAM, "text/event-stream"),
              "anthropic": (ANTHROPIC_MESSAGE, "application/json"),
              "anthropic_sse": (ANTHROPIC_STREAM, "text/event-stream")}
    upstream_listeners = "".join(listener(upstreams[name], BUFFER + ROUTER, direct_response(*body),
                                          UPSTREAM_IDLE)
                                 for name, body in bodies.items())
    upstream_yaml = f"""
static_resources:
  listeners:{upstream_listeners}
"""

    def wasm_filter(path, vm, cp_port=None, limited=False, routed=False, plugin_config=None):
        env = ("""
                  environment_variables: {host_env_keys: [SWITCHYARD_EDGE_TOKEN]}""" if cp_port else "")
        if plugin_config is None:
            plugin_config = gateway_config(upstreams, cp_port, limited, routed)
        return f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: switchyard
                allow_on_headers_stop_iteration: true
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {json.dumps(plugin_config)}
                vm_config:
                  vm_id: {vm}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {path}}}}}{env}"""
    route = "route: {cluster_header: x-switchyard-cluster, timeout: 0s}"
    proxies = [("envoy pass-through", passthrough,
                listener(passthrough, ROUTER, "route: {cluster: upstream, timeout: 0s}")
                + listener(passthrough_sse, ROUTER, "route: {cluster: upstream_sse, timeout: 0s}")),
               ("envoy + filter.wasm", filtered,
                listener(filtered, wasm_filter(wasm, "main") + ROUTER, route))]
    for i, (label, path, port, routed, plugin_config) in enumerate(extra_filters):
        proxies.append((f"envoy + {label}", port,
                        listener(port, wasm_filter(path, f"extra{i}", routed=routed,
                                                   plugin_config=plugin_config) + ROUTER, route)))
    for (label, hcm, router), port in zip(ENVOY_OPTIONS, options_ports):
        proxies.append((f"envoy + filter.wasm, {label}", port,
                        listener(port, wasm_filter(wasm, "main") + router, route, hcm)))
    clusters = "".join(cluster(name, port) for name, port in upstreams.items())
    # The `read` floor names its upstream `fake_upstream` (shared/bench/wasm-floor).
    clusters += cluster("fake_upstream", upstreams["upstream"])
    if control_plane:
        cp_port, port = control_plane
        proxies.append(("envoy + filter.wasm + control plane", port,
                        listener(port, wasm_filter(wasm, "synced", cp_port) + ROUTER, route)))
        clusters += cluster("control_plane", cp_port)
    if limits:
        local_port, cp_limits_port = limits
        proxies.append(("envoy + filter.wasm + limits", local_port,
                        listener(local_port, wasm_filter(wasm, "limits", None, True) + ROUTER, route)))
        if control_plane:
            proxies.append(("envoy + filter.wasm + limits via control plane", cp_limits_port,
                            listener(cp_limits_port,
                                     wasm_filter(wasm, "cplimits", control_plane[0], True) + ROUTER,
                                     route)))
    path = os.path.join(tmp, "upstream.yaml")
    with open(path, "w") as f:
        f.write(upstream_yaml)
    paths = []
    for i, (name, port, listeners) in enumerate(proxies):
        proxy_path = os.path.join(tmp, f"proxy{i}.yaml")
        admin_port = admin_base + i if admin_base else None
        admin = (f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}"""
                 if admin_port else "")
        with open(proxy_path, "w") as f:
            f.write(f"""{admin}
static_resources:
  listeners:{listeners}
  clusters:{clusters}
""")
        paths.append((name, proxy_path, port, admin_port))
    return path, paths


def wait_ready(port, kind="complete", deadline=300):
    body, cluster_name = KINDS[kind]
    end = time.time() + deadline
    while time.time() < end:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(),
                                         headers={"authorization": f"Bearer {KEY}", "content-type": "application/json",
                                                  "x-switchyard-cluster": cluster_name})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    resp.read()
                    return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"port {port} did not answer 200 to a {kind} request within {deadline}s")


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far (from /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid, field="VmHWM"):
    """Resident memory of process `pid` from /proc, MB: `VmHWM` the peak since it started,
    `VmRSS` now."""
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 1024


def wasm_memory_mb(pid):
    """(how many, resident MB of) the wasm linear memories in process `pid`: V8 (and wasmtime)
    reserve each 32-bit memory as one 8 GiB region and make its first pages accessible, which
    /proc/PID/smaps shows as a read-write mapping followed by the inaccessible rest; the
    read-write part's resident size is the guest's heap as the host holds it."""
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0]):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                maps.append([start, end, fields[1], 0])
            elif fields[0] == "Rss:":
                maps[-1][3] = int(fields[1])
    memories = [prev for prev, this in zip(maps, maps[1:])
                if prev[2].startswith("rw") and this[2] == "---p" and prev[1] == this[0]
                and (this[1] - prev[0]) >= (4 << 30)]
    return len(memories), sum(m[3] for m in memories) / 1024


class HeapSampler(threading.Thread):
    """Envoy's allocator, sampled through each proxy's admin `/memory` (`--heap`) every 0.2 s
    for the whole run, with the process's RSS read at the same instant: how much of a row's RSS
    Envoy and V8 had in use (tcmalloc's `allocated`) at the most, and what the allocator kept
    resident but free then (its page heap's free pages and its per-CPU and per-thread caches).
    The sample with the most allocated is kept; a sample after the cell would miss it: once
    wrk stops, Envoy frees the connections' memory within a second or two. (tcmalloc's own
    resident-size estimate is not used: it came out above the anonymous memory smaps showed.)"""

    FIELDS = ("allocated", "pageheap_free", "total_thread_cache")

    def __init__(self, admin_ports):
        super().__init__(daemon=True)
        self.admin_ports = admin_ports  # pid -> admin port
        self.first, self.at_peak, self.samples = {}, {}, {}
        self.stopped = threading.Event()

    def sample(self, pid, port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/memory", timeout=2) as resp:
            stats = json.load(resp)
        sample = {field: int(stats[field]) / 2**20 for field in self.FIELDS}
        sample["rss"] = memory_mb(pid, "VmRSS")
        return sample

    def run(self):
        while not self.stopped.wait(0.2):
            for pid, port in self.admin_ports.items():
                try:
                    stats = self.sample(pid, port)
                except (OSError, ValueError):
                    continue  # a busy Envoy's admin missed the timeout: the next sample counts
                self.first.setdefault(pid, stats)
                self.samples[pid] = self.samples.get(pid, 0) + 1
                if stats["allocated"] > self.at_peak.get(pid, {"allocated": -1})["allocated"]:
                    self.at_peak[pid] = stats


def listen_overflows():
    """The kernel's count of connections dropped because a listen queue was full
    (TcpExt ListenOverflows; machine-wide in this network namespace)."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["ListenOverflows"])


def run_wrk(port, conns, duration, lua, pid=None, timeout=30):
    """req/s, p50 ms, p99 ms, and with `pid` the CPU µs that process spent per request (its
    CPU time over the cell / requests answered: steadier than req/s on a loaded machine, as
    it does not count time spent waiting for a core), the errors wrk saw, the process's peak
    resident memory so far, and the listen-queue overflows during the cell."""
    threads = min(2, conns)
    cpu_before = cpu_seconds(pid) if pid else None
    overflows = listen_overflows()
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency",
                          "--timeout", f"{timeout}s", "-s", lua,
                          f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    overflows = listen_overflows() - overflows
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = ((cpu_seconds(pid) - cpu_before) * 1e6 / max(requests, 1)) if pid else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    if non_2xx * 100 > max(requests, 1):
        # A misconfigured row shows at once; at thousands of connections a proxy's own
        # refusals (overload, timeouts) are a result, counted in the table's errors.
        if conns < 1000:
            raise SystemExit(f"port {port}: {non_2xx} non-2xx responses\n{out}")
        print(f"port {port}, {conns} connections: {non_2xx} non-2xx responses", file=sys.stderr)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = non_2xx + (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0)
    return (rps, p50, p99, cpu_us, (errors, non_2xx), (memory_mb(pid) if pid else 0.0),
            overflows)


class TtfbClient:
    """The time-to-first-byte client (wrk cannot measure it): one keep-alive HTTP/1.1
    connection over a plain blocking socket, N requests one after another. For each it takes
    the monotonic clock (`time.perf_counter_ns`) just before writing the request and again when
    the first byte of the response body arrives (the first byte after the head's blank line:
    with chunked framing, the first chunk's size line), then reads the body to its end
    (`content-length`, or the chunked body's last chunk) for the total. The first `warmup`
    requests are not counted. The client's own cost per request (a few µs of Python between
    the clock and the socket calls) is in every row alike."""

    def __init__(self, port, kind):
        body, cluster_name = KINDS[kind]
        self.request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                        f"content-type: application/json\r\nauthorization: Bearer {KEY}\r\n"
                        f"x-switchyard-cluster: {cluster_name}\r\n"
                        f"content-length: {len(body)}\r\n\r\n{body}").encode()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed mid-answer")
        self.buf += data

    def _until(self, marker):
        while marker not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _exactly(self, n):
        while len(self.buf) < n:
            self._recv()
        self.buf = self.buf[n:]

    def one(self):
        """(TTFB, total) of one request, in ms."""
        start = time.perf_counter_ns()
        self.sock.sendall(self.request)
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        if not self.buf:
            self._recv()
        first = time.perf_counter_ns()
        status = head[0].split()[1]
        if status != "200":
            raise SystemExit(f"TTFB client: status {status}: {head}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        if "content-length" in headers:
            self._exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")  # no trailers: the last chunk's blank line
                    break
                self._exactly(size + 2)
        else:
            raise SystemExit(f"TTFB client: an answer with neither length nor chunks: {head}")
        end = time.perf_counter_ns()
        return (first - start) / 1e6, (end - start) / 1e6

    def run(self, n, warmup=50):
        samples = [self.one() for _ in range(warmup + n)][warmup:]
        self.sock.close()
        return samples


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", default=os.environ.get("SWITCHYARD_ENVOY", os.path.join(ROOT, ".venv/lib/python3.11/site-packages/envoy/_bin/envoy")))
    ap.add_argument("--wasm", default=os.path.join(ROOT, "target/wasm32-wasip1/release/switchyard_filter.wasm"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every setup this many times, interleaved, and report the median "
                         "(steadier on a busy machine)")
    ap.add_argument("--conns", default="1,64,512")
    # Below Linux's default ephemeral range (32768-60999): the 5,000-connection cells leave
    # tens of thousands of sockets in TIME_WAIT, and a listener port inside the range can then
    # be held by one of them when the next run starts.
    ap.add_argument("--base-port", type=int, default=24100)
    ap.add_argument("--host-runner", help="also measure host-runner (path to the binary)")
    ap.add_argument("--component", action="append", default=[],
                    help="also measure a Spin component (needs --host-runner); repeatable, "
                         "each PATH or LABEL=PATH")
    ap.add_argument("--component-runner", action="append", default=[],
                    help="the host-runner binary serving the n-th --component (default "
                         "--host-runner), to compare host-runner builds")
    ap.add_argument("--component-reuse", action="append", default=[], type=int,
                    help="serve-component's --max-instance-reuse-count for the n-th --component "
                         "(default 1: a fresh instance per request, Spin's default)")
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
    ap.add_argument("--read-floor", metavar="WASM_FLOOR",
                    help="also measure the `read` floor: shared/bench's wasm-floor filter in its "
                         "`read` mode (the request body and the complete answer held, read and "
                         "written back, an upstream named; no logic), loaded like filter.wasm")
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
    ap.add_argument("--translated", action="store_true",
                    help="also measure OpenAI -> Anthropic: the same filter (and host-runner, "
                         "component) with a request for the model routed to the instant Anthropic "
                         "upstream (`bench-anthropic`)")
    ap.add_argument("--stream", action="store_true",
                    help="also measure streamed requests (`\"stream\": true`) against the instant "
                         "event-stream upstreams: Envoy pass-through to the OpenAI chunk stream, the "
                         "filter (and host-runner, component) fast, and with --translated from "
                         "Anthropic's event stream")
    ap.add_argument("--ttfb-requests", type=int, default=1000,
                    help="requests per row for the time-to-first-byte table (0: no table)")
    ap.add_argument("--wrk-timeout", type=int, default=30,
                    help="wrk's --timeout in seconds (wrk's own default, 2, turns a slow row at "
                         "5,000 connections into timeout errors instead of a long p99)")
    ap.add_argument("--keep-tmp", action="store_true",
                    help="keep the configs and the hosts' logs (host-runner's stderr) after the run")
    ap.add_argument("--heap", action="store_true",
                    help="give each proxy Envoy an admin listener and sample its allocator "
                         "(`/memory`) through the run: a table gives what Envoy and V8 had in "
                         "use at the most, and what tcmalloc kept free then")
    ap.add_argument("--backlog", type=int,
                    help="every Envoy listener's tcp_backlog_size (default: Envoy's, which on "
                         "Linux is net.core.somaxconn)")
    args = ap.parse_args()
    global ROUTE_COMPLETE_ANSWERS, BACKLOG, UPSTREAM_IDLE_S, UPSTREAM_IDLE
    ROUTE_COMPLETE_ANSWERS = args.route_complete_answers
    BACKLOG = args.backlog
    UPSTREAM_IDLE_S = int(args.duration) + 5
    UPSTREAM_IDLE = upstream_idle(UPSTREAM_IDLE_S)
    # wrk, Envoy and the hosts inherit it: 5,000 connections need more than the usual 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="switchyard-bench-")
    base = args.base_port
    upstreams = {"upstream": base, "upstream_sse": base + 5, "anthropic": base + 6,
                 "anthropic_sse": base + 7}
    ports = (base + 1, base + 2, base + 8)
    extra_filters = []
    if args.empty_filter:
        args.filter.insert(0, f"empty filter (passthrough guest)={args.passthrough}")
    specs = [(spec, False, None) for spec in args.filter]
    if args.read_floor:
        specs.append((f"read floor (wasm-floor `read`)={args.read_floor}", False, "read"))
    specs += [(spec, True, None) for spec in args.routed_filter]
    for i, (spec, routed, plugin_config) in enumerate(specs):
        label, _, path = spec.rpartition("=")
        extra_filters.append((label or path, os.path.abspath(path), base + 60 + i, routed,
                              plugin_config))
    control_plane = (base + 40, base + 41) if args.control_plane else None
    options_ports = [base + 50 + i for i in range(len(ENVOY_OPTIONS))] if args.envoy_options else []
    limits = (base + 42, base + 43) if args.limits else None
    upstream_cfg, proxy_cfgs = write_configs(tmp, args.wasm, ports, upstreams, extra_filters,
                                             control_plane, options_ports, limits,
                                             base + 80 if args.heap else None)
    luas = {}
    for kind, (body, cluster_name) in KINDS.items():
        luas[kind] = os.path.join(tmp, f"{kind.replace(' ', '_')}.lua")
        with open(luas[kind], "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                    f'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
                    # Only the passthrough guests need it; the filter overwrites it, Envoy's
                    # pass-through route ignores it.
                    f'wrk.headers["x-switchyard-cluster"] = "{cluster_name}"\n')
    # The kinds each filter row sends beside its complete OpenAI request, with their labels.
    more_kinds = []
    if args.translated:
        more_kinds.append(("translated", "OpenAI → Anthropic"))
    if args.stream:
        more_kinds.append(("streamed", "streamed"))
        if args.translated:
            more_kinds.append(("streamed translated", "streamed OpenAI → Anthropic"))
    procs = []
    env = {**os.environ, "SWITCHYARD_EDGE_TOKEN": EDGE_TOKEN}
    try:
        if control_plane:
            procs.append(subprocess.Popen(
                [args.control_plane, "--no-models", "--listen", f"127.0.0.1:{control_plane[0]}",
                 "--data-dir", os.path.join(tmp, "control-plane"), "--edge-token-sha256",
                 hashlib.sha256(EDGE_TOKEN.encode()).hexdigest()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def envoy(cfg, base_id):
            procs.append(subprocess.Popen([args.envoy, "-c", cfg, "--concurrency", "1", "-l", "error",
                                           "--base-id", str(base_id)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            return procs[-1].pid
        # (name, port, the process whose CPU time and memory the row reports, request kind)
        upstream_pid = envoy(upstream_cfg, base + 100)
        admin_ports = {}
        setups = [("upstream direct", upstreams["upstream"], upstream_pid, "complete")]
        ttfb_only = ([("upstream direct, streamed", upstreams["upstream_sse"], upstream_pid, "streamed")]
                     if args.stream else [])
        if not args.components_only:
            for i, (name, cfg, port, admin_port) in enumerate(proxy_cfgs):
                pid = envoy(cfg, base + 101 + i)
                if admin_port:
                    admin_ports[pid] = admin_port
                setups.append((name, port, pid, "complete"))
                if name == "envoy pass-through" and args.stream:
                    setups.append(("envoy pass-through, streamed", ports[2], pid, "streamed"))
                if name == "envoy + filter.wasm":
                    setups += [(f"{name}, {label}", port, pid, kind) for kind, label in more_kinds]
        if args.host_runner and not args.components_only:
            gw_path = os.path.join(tmp, "gateway.json")
            with open(gw_path, "w") as f:
                f.write(gateway_config(upstreams))
            clusters = [arg for name, port in upstreams.items()
                        for arg in ("--cluster", f"{name}=127.0.0.1:{port}")]
            for name, port, wasm, extra in (
                    ("host-runner + passthrough", base + 3, args.passthrough, []),
                    ("host-runner + filter.wasm", base + 4, args.wasm, ["--plugin-config", gw_path])):
                procs.append(subprocess.Popen(
                    [args.host_runner, "serve", "--filter", wasm, "--listen", f"127.0.0.1:{port}",
                     "--no-admin", "--log-level", "warn"] + clusters + extra,
                    stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{port}.log"), "wb")))
                setups.append((name, port, procs[-1].pid, "complete"))
                if name == "host-runner + passthrough":
                    if args.stream:
                        setups.append((f"{name}, streamed", port, procs[-1].pid, "streamed"))
                else:
                    setups += [(f"{name}, {label}", port, procs[-1].pid, kind)
                               for kind, label in more_kinds]
        for i, spec in enumerate(args.component):
            label, _, path = spec.rpartition("=")
            runner = (args.component_runner[i] if i < len(args.component_runner)
                      else args.host_runner)
            if not runner:
                raise SystemExit("--component needs --host-runner or --component-runner")
            port = base + 20 + i  # clear of the proxies' ports
            reuse = args.component_reuse[i] if i < len(args.component_reuse) else 1
            # Only when asked: builds from before the flag refuse it.
            reuse_flag = ["--max-instance-reuse-count", str(reuse)] if reuse != 1 else []
            procs.append(subprocess.Popen(
                [runner, "serve-component", "--component", path,
                 "--listen", f"127.0.0.1:{port}", "--var", f"gateway_config={gateway_config(upstreams)}",
                 *reuse_flag],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            name = f"serve-component + {label or 'edge_worker.wasm'}"
            setups.append((name, port, procs[-1].pid, "complete"))
            setups += [(f"{name}, {label}", port, procs[-1].pid, kind) for kind, label in more_kinds]
        for _, port, _, kind in setups + ttfb_only:
            wait_ready(port, kind)
        started = {pid: (memory_mb(pid, "VmRSS"), wasm_memory_mb(pid)) for _, _, pid, _ in setups}
        heap = HeapSampler(admin_ports)
        if admin_ports:
            heap.start()
        ttfb = {}
        if args.ttfb_requests:
            for name, port, _, kind in ttfb_only + setups:
                try:
                    ttfb[name] = TtfbClient(port, kind).run(args.ttfb_requests)
                except (OSError, ValueError) as e:
                    raise SystemExit(f"TTFB client, {name} (port {port}): {e!r}")
        rows = []
        for conns in [int(c) for c in args.conns.split(",")]:
            samples = {name: [] for name, _, _, _ in setups}
            for _ in range(args.rounds):
                for name, port, pid, kind in setups:
                    samples[name].append(run_wrk(port, conns, args.duration, luas[kind], pid,
                                                 args.wrk_timeout))
                    if conns >= IDLE_WAIT_CONNS:
                        time.sleep(UPSTREAM_IDLE_S + 1)  # the upstream drops this cell's pools
            # The median round by req/s, per setup; CPU per request is its own median; errors
            # and listen overflows summed over the rounds; memory the process's peak so far.
            results = {}
            for name, runs in samples.items():
                rps, p50, p99 = sorted(runs)[len(runs) // 2][:3]
                cpus = sorted(r[3] or 0.0 for r in runs)
                results[name] = (rps, p50, p99, cpus[len(cpus) // 2],
                                 (sum(r[4][0] for r in runs), sum(r[4][1] for r in runs)),
                                 max(r[5] for r in runs), sum(r[6] for r in runs))
            rows.append((conns, results))
        heap.stopped.set()
        cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
        load = open("/proc/loadavg").read().split()[0]
        somaxconn = open("/proc/sys/net/core/somaxconn").read().strip()
        print(f"Machine: {cpu}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
              f"wrk {args.duration}s per cell (--timeout {args.wrk_timeout}s), median of {args.rounds} "
              f"interleaved round(s); Envoy --concurrency 1, one Envoy process per row (the upstream "
              f"its own); listener backlog {args.backlog or f'Envoy default (somaxconn {somaxconn})'}; "
              f"load average {load}\n")

        def baseline(name, table):
            streamed = "streamed" in name
            for candidate in (("envoy pass-through, streamed" if streamed else "envoy pass-through"),
                              "upstream direct"):
                if candidate in table:
                    return candidate
        print("Ratios: every row against Envoy pass-through in the same run (streamed rows against "
              "Envoy pass-through streamed); with --components-only, against the upstream direct.\n")
        print("Errors: wrk's socket errors and non-2xx answers (with how many were non-2xx).\n")
        print("CPU µs/req: CPU time of the process serving the row (its own Envoy, host-runner, or "
              "serve-component) over the cell, per request answered. RSS peak MB: that process's peak "
              "resident memory since it started (VmHWM; rows served by one process share it). "
              "Listen overflows: the kernel's count during the cell (machine-wide).\n")
        print("| conns | setup | req/s | p50 ms | p99 ms | CPU µs/req | errors | RSS peak MB "
              "| listen overflows | req/s vs pass-through | p99 vs pass-through | CPU vs pass-through |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for conns, results in rows:
            for name, (rps, p50, p99, cpu, (errors, non_2xx), rss, overflows) in results.items():
                base_rps, _, base_p99, base_cpu = results[baseline(name, results)][:4]

                def ratio(a, b):
                    return f"{a / b:.2f}" if b else "—"
                if not rps:
                    # No request answered within the cell: its latency and CPU per request
                    # would be wrk's zeros and the CPU time over 1.
                    print(f"| {conns} | {name} | 0 | — | — | — | {errors} | {rss:.0f} | "
                          f"{overflows} | — | — | — |")
                    continue
                print(f"| {conns} | {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} | "
                      f"{errors}{f' ({non_2xx} non-2xx)' if non_2xx else ''} | {rss:.0f} | {overflows} | {ratio(rps, base_rps)} | "
                      f"{ratio(p99, base_p99)} | {ratio(cpu, base_cpu)} |")
        print("\nResident memory of each process (MB): when ready, before any load; its peak; "
              "at the end; and of that, the wasm linear memories (how many, resident MB), when "
              "ready and at the end:\n")
        print("| process | RSS ready | RSS peak | RSS end | wasm memories ready | wasm memories end |")
        print("|---|---|---|---|---|---|")
        seen = set()
        for name, _, pid, _ in setups:
            if pid not in seen:
                seen.add(pid)
                (rss, (count, wasm)), (count_end, wasm_end) = started[pid], wasm_memory_mb(pid)
                print(f"| {name} | {rss:.0f} | {memory_mb(pid):.0f} | {memory_mb(pid, 'VmRSS'):.0f} "
                      f"| {count}, {wasm:.1f} | {count_end}, {wasm_end:.1f} |")
        print()
        if heap.at_peak:
            print("Envoy's allocator (`--heap`: admin `/memory` and the RSS sampled together every "
                  "0.2 s; MB): tcmalloc's `allocated` (in use by Envoy and V8) when ready, and at "
                  "the sample where it was largest: `allocated`, what tcmalloc kept resident but "
                  "free (page heap free + caches), and the process's RSS:\n")
            print("| process | samples | allocated ready | allocated peak | free in tcmalloc then "
                  "| RSS then |")
            print("|---|---|---|---|---|---|")
            seen = set()
            for name, _, pid, _ in setups:
                if pid in heap.at_peak and pid not in seen:
                    seen.add(pid)
                    peak = heap.at_peak[pid]
                    print(f"| {name} | {heap.samples[pid]} | {heap.first[pid]['allocated']:.0f} | "
                          f"{peak['allocated']:.0f} | "
                          f"{peak['pageheap_free'] + peak['total_thread_cache']:.0f} | "
                          f"{peak['rss']:.0f} |")
            print()
        if ttfb:
            print(f"Time to first byte, one connection, {args.ttfb_requests} sequential requests per "
                  "row after 50 not counted (the script's TtfbClient: monotonic clock from writing "
                  "the request to the first byte of the answer's body, and to its end):\n")
            print("| setup | TTFB p50 ms | TTFB p99 ms | total p50 ms | total p99 ms "
                  "| TTFB p50 − pass-through's, ms |")
            print("|---|---|---|---|---|---|")
            for name, samples in ttfb.items():
                first = [s[0] for s in samples]
                total = [s[1] for s in samples]
                base_name = baseline(name, ttfb)
                delta = percentile(first, 0.5) - percentile([s[0] for s in ttfb[base_name]], 0.5)
                print(f"| {name} | {percentile(first, 0.5):.3f} | {percentile(first, 0.99):.3f} | "
                      f"{percentile(total, 0.5):.3f} | {percentile(total, 0.99):.3f} | {delta:+.3f} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        if args.keep_tmp:
            print(f"configs and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
