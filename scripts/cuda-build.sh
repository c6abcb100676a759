#!/usr/bin/env bash
# Builds gpu-backend with its `cuda` feature (candle's CUDA backend) on any x86_64 Linux box,
# with or without a GPU, in one command:
#
#   scripts/cuda-build.sh            # -> target/release/gpu-backend (CUDA build)
#   scripts/cuda-build.sh --env      # print the environment it builds with (to `eval`)
#
# What it needs from the machine: Rust (scripts/toolchain.sh), g++ (CUDA 13.0 takes GCC 6-15),
# python3 with pip, and PyPI. It brings the CUDA 13.0 compiler itself: NVIDIA's PyPI wheels
# (nvcc, its front end and NVVM, the runtime headers and libraries, CCCL for thrust) are
# installed with `pip --target` into .cache/cuda/<version>/ (no virtual environment touched,
# nothing system-wide), once; later runs reuse them.
#
# Why these choices:
# - CUDA 13.0, not the newest: the kernels are embedded as PTX and the driver compiles them at
#   load time; PTX from a newer nvcc than the driver's CUDA version does not load. Driver 580
#   speaks CUDA 13.0. Override with CUDA_WHEELS_VERSION/CUDA_RUNTIME_VERSION/CUDA_CCCL_VERSION
#   for another driver.
# - CUDA_COMPUTE_CAP (default 90, Hopper: H100/H200): candle-kernels would ask nvidia-smi,
#   which a build box without a GPU does not have. Set it to your GPU's (e.g. 80 for A100,
#   89 for L4/L40S).
# - cudart is linked statically (libcudart_static.a, found first through LIBRARY_PATH).
# - candle links cudarc with `dynamic-linking`: the binary names the driver (libcuda.so.1),
#   libnvrtc.so.13, libcurand.so.10, libcublas.so.13 and libcublasLt.so.13 as needed
#   libraries. Those come with the driver and with NVIDIA's `nvidia-cublas`, `nvidia-curand`
#   and `nvidia-cuda-nvrtc` wheels (PyTorch's CUDA 13 builds install them), not with the
#   compiler, and the libraries alone are ~1 GB: so the link runs against stubs made here
#   (.cache/cuda/*/link: every function cudarc declares, each returning an error code, under
#   the real libraries' sonames), and the real ones are found at run time through
#   LD_LIBRARY_PATH (e.g. the wheels' nvidia/cu13/lib and the driver's directory). Where
#   they are missing the dynamic loader refuses to start the binary and names the library;
#   with them and no GPU, `--cuda-device 0` exits with "no CUDA device 0: ...".
#
# The CUDA build is not part of ./switchyard test (CI has no GPU); BENCHMARKS.md has numbers.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CUDA_WHEELS_VERSION=${CUDA_WHEELS_VERSION:-13.0.88}
CUDA_RUNTIME_VERSION=${CUDA_RUNTIME_VERSION:-13.0.96}
CUDA_CCCL_VERSION=${CUDA_CCCL_VERSION:-13.0.85}
PREFIX="$ROOT/.cache/cuda/$CUDA_WHEELS_VERSION"
CUDA="$PREFIX/nvidia/cu13"

if [ ! -x "$CUDA/bin/nvcc" ] || [ ! -f "$CUDA/include/cccl/thrust/scan.h" ]; then
    echo "cuda-build: installing the CUDA $CUDA_WHEELS_VERSION compiler wheels into $PREFIX" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$PREFIX" \
        "nvidia-cuda-nvcc==$CUDA_WHEELS_VERSION" \
        "nvidia-cuda-crt==$CUDA_WHEELS_VERSION" \
        "nvidia-nvvm==$CUDA_WHEELS_VERSION" \
        "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" \
        "nvidia-cuda-cccl==$CUDA_CCCL_VERSION"
fi

# The linker looks here for -lcudart and finds the static archive, and for the libraries
# cudarc links and finds the stubs.
LINK="$PREFIX/link"
mkdir -p "$LINK"
ln -sf "$CUDA/lib/libcudart_static.a" "$LINK/libcudart.a"
if [ ! -f "$LINK/libcublasLt.so" ]; then
    cudarc=$(cargo metadata --format-version 1 --manifest-path gpu-backend/Cargo.toml \
        --features cuda | python3 -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(os.path.dirname(next(p["manifest_path"] for p in pkgs if p["name"] == "cudarc")))')
    # name in cudarc/src/<dir>/sys, soname, and the error code each stub returns
    # (CUDA_ERROR_NO_DEVICE, NVRTC_ERROR_INTERNAL_ERROR, CURAND_STATUS_INITIALIZATION_FAILED,
    # CUBLAS_STATUS_NOT_INITIALIZED).
    stub() {
        grep -oE '^\s+fn [A-Za-z0-9_]+\(' "$cudarc/src/$2/sys/mod.rs" | sort -u |
            sed -E "s/^\s+fn ([A-Za-z0-9_]+)\(/int \1(void) { return $4; }/" > "$LINK/$1-stub.c"
        gcc -shared -fPIC -o "$LINK/lib$1.so" -Wl,-soname,"$3" "$LINK/$1-stub.c"
        rm "$LINK/$1-stub.c"
        # Under the soname too: `LD_LIBRARY_PATH=.cache/cuda/*/link gpu-backend --cuda-device 0`
        # then behaves as on a machine with a driver and no GPU (a check of the error path).
        ln -sf "lib$1.so" "$LINK/$3"
    }
    stub cuda driver libcuda.so.1 100
    stub nvrtc nvrtc libnvrtc.so.13 11
    stub curand curand libcurand.so.10 203
    stub cublas cublas libcublas.so.13 1
    stub cublasLt cublaslt libcublasLt.so.13 1
fi

export PATH="$CUDA/bin:$PATH"
export CUDA_HOME="$CUDA"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH="$PREFIX/link${LIBRARY_PATH:+:$LIBRARY_PATH}"

if [ "${1:-}" = "--env" ]; then
    printf 'export PATH=%q CUDA_HOME=%q CUDA_COMPUTE_CAP=%q LIBRARY_PATH=%q\n' \
        "$PATH" "$CUDA_HOME" "$CUDA_COMPUTE_CAP" "$LIBRARY_PATH"
    exit 0
fi

nvcc --version | tail -2 >&2
exec cargo build --release -p gpu-backend --features cuda "$@"
