#!/usr/bin/env bash
# The dashboard's browser test: installs Chromium (Debian package) when missing and the
# npm dependencies (npm ci), builds gpu-backend, host-runner and filter.wasm (release) and
# fetches the model weights if needed, and runs the test.
#
#   tests/ui/run.sh
#
# Screenshots land in tests/ui/output (or $UI_TEST_OUTPUT).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
    echo "[ui] installing the Debian chromium package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
fi

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

# The control plane is fed by real gateway traffic: gpu-backend (SmolLM2 + control plane)
# behind host-runner running filter.wasm. Build and fetch what the caller did not provide.
cd "$repo"
if [[ -z "${SWITCHYARD_GPU_BACKEND:-}" ]]; then
    cargo build --release -p gpu-backend
    export SWITCHYARD_GPU_BACKEND="$repo/target/release/gpu-backend"
fi
if [[ -z "${SWITCHYARD_HOST_RUNNER:-}" ]]; then
    cargo build --release -p host-runner
    export SWITCHYARD_HOST_RUNNER="$repo/target/release/host-runner"
fi
if [[ -z "${SWITCHYARD_FILTER_WASM:-}" ]]; then
    cargo build --release -p switchyard-filter --target wasm32-wasip1
    export SWITCHYARD_FILTER_WASM="$repo/target/wasm32-wasip1/release/switchyard_filter.wasm"
fi
export SWITCHYARD_MODELS_DIR="${SWITCHYARD_MODELS_DIR:-$repo/.cache/models}"
scripts/fetch-models.sh >&2
for var in SWITCHYARD_GPU_BACKEND SWITCHYARD_HOST_RUNNER SWITCHYARD_FILTER_WASM; do
    export "$var=$(realpath "${!var}")"
done

cd "$here"
CHROMIUM="$chromium" node --test dashboard.test.mjs
