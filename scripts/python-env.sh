#!/usr/bin/env bash
# Create <repo>/.venv (idempotent) and install the e2e suite's pinned Python dependencies.
#
#   scripts/python-env.sh          # then: .venv/bin/pytest -c tests/pytest.ini tests
#   PYTHON=python3.12 scripts/python-env.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
python_bin="${PYTHON:-python3}"
requirements="$repo_root/tests/requirements.txt"

if [[ -x "$venv/bin/python" ]]; then
    echo "[python-env] reusing $venv"
else
    echo "[python-env] creating $venv with $("$python_bin" --version 2>&1)"
    "$python_bin" -m venv "$venv"
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "[python-env] requirements already installed ($requirements unchanged)"
else
    echo "[python-env] installing $requirements"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
fi
echo "[python-env] ready: $venv/bin/python ($("$venv/bin/python" --version 2>&1))"
