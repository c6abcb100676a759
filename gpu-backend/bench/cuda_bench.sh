#!/usr/bin/env bash
# gpu-backend's `cuda` build on a GPU machine: single-stream and aggregate tok/s at
# 1/4/16/64 streams, TTFT, and each prompt's greedy completion (to compare with the CPU's).
#
#   gpu-backend/bench/cuda_bench.sh BINARY GGUF OUT_DIR [extra compare_llamacpp.py args]
#
# BINARY is a gpu-backend built by scripts/cuda-build.sh (it can be built elsewhere: only
# the driver and CUDA 13's cuBLAS/cuBLASLt/cuRAND are needed here), GGUF the SmolLM2-135M
# Q4_1 file. The CUDA libraries are taken from the `nvidia-*` pip packages of the python3 on
# PATH (PyTorch's CUDA 13 wheels bring them) unless LD_LIBRARY_PATH already has them.
# Needs python3 (stdlib only), no network, no cargo.
set -euo pipefail
BINARY=$(realpath "$1")
GGUF=$(realpath "$2")
OUT_DIR=$(realpath -m "$3")
shift 3
cd "$(dirname "$0")/../.."
mkdir -p "$OUT_DIR"

libs=$(python3 - <<'EOF' || true
import glob, os
import nvidia
dirs = set()
for base in nvidia.__path__:
    for name in ("libcublas.so.*", "libcublasLt.so.*", "libcurand.so.*", "libnvrtc.so.*"):
        dirs.update(os.path.dirname(p) for p in glob.glob(os.path.join(base, "**", name), recursive=True))
print(":".join(sorted(dirs)))
EOF
)
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
    if [ -e "$d/libcuda.so.1" ]; then libs="$libs${libs:+:}$d"; fi
done
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true

ldd "$BINARY" | grep -E "cuda|cublas|curand|nvrtc" || true
PYTHONUNBUFFERED=1 python3 gpu-backend/bench/compare_llamacpp.py --no-llamacpp --no-build \
    --formats q4_1 --gguf "$GGUF" --cuda-device 0 \
    --gpu-backend "cuda=$BINARY" --texts "$OUT_DIR/texts-cuda.json" --log-dir "$OUT_DIR" "$@"
