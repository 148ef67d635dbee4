#!/usr/bin/env bash
# Set-up for building the candle example (candle/), which CI does not build:
# candle's CUDA kernels need nvcc, and its cudarc links CUDA at build time.
# Installs into .tools/cuda13/nvidia/cu13 (a toolkit-shaped folder, PyPI
# wheels of CUDA 13.0, the toolkit the GPU hosts carry in /usr/local/cuda):
# nvcc, nvvm, crt, runtime headers, cccl, nvrtc, cuRAND, cuBLAS; and a link
# stub of libcuda (the driver is on the GPU host, not here) generated from
# the CUDA driver symbols cudarc declares. Prints the environment to build
# with (scripts/gpu-suite.sh stage uses it when the folder exists).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=.tools/cuda13
cuda=$dir/nvidia/cu13
if [ ! -x "$cuda/bin/nvcc" ]; then
  python3 -m pip install --quiet --target "$dir" --no-deps \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88" \
    "nvidia-curand==10.4.5.25" "nvidia-cublas==13.0.2.14"
fi
# Unversioned names for the linker.
for lib in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
  ln -sf "lib$lib" "$cuda/lib/lib${lib%.so.*}.so"
done
# libcuda: a stub with every driver symbol cudarc declares, soname
# libcuda.so.1, so the binary loads the real driver on the GPU host.
sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19*/src/driver/sys/mod.rs' | sort | tail -1)
[ -n "$sys" ] || { echo "cudarc 0.19 sources not found: run cargo fetch first" >&2; exit 1; }
mkdir -p "$cuda/lib/stubs"
grep -ohE "fn (cu[A-Za-z0-9_]+)\(" "$sys" | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u > "$dir/libcuda-stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$dir/libcuda-stub.c"
"$cuda/bin/nvcc" --version | tail -1
echo "build the candle example with:"
echo "  CUDA_ROOT=$root/$cuda PATH=$root/$cuda/bin:\$PATH CUDA_COMPUTE_CAP=90 cargo build --release --manifest-path candle/Cargo.toml --example tp_mlp"
