#!/usr/bin/env bash
# The dashboard's browser test: installs Chromium (Debian package) when missing and the
# npm dependencies (npm ci), builds gpu-backend (release) if needed, and runs the test.
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

if [[ -z "${SWITCHYARD_GPU_BACKEND:-}" ]]; then
    (cd "$repo" && cargo build --release -p gpu-backend)
    export SWITCHYARD_GPU_BACKEND="$repo/target/release/gpu-backend"
else
    export SWITCHYARD_GPU_BACKEND="$(realpath "$SWITCHYARD_GPU_BACKEND")"
fi

cd "$here"
CHROMIUM="$chromium" node --test dashboard.test.mjs
