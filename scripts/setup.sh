#!/usr/bin/env bash
# One-time set-up on a fresh x86-64 Linux machine with rustup, python3 (pip)
# and a C linker (cc). Installs:
#   - the stable toolchain of rust-toolchain.toml (the library, tests, bench
#     and tools; cargo would also install it on first use);
#   - for rebuilding the kernel image (scripts/build-kernels.sh; CI checks
#     kernel-image/ against a rebuild): the nightly pinned in
#     kernels-gpu/rust-toolchain.toml with rust-src and llvm-tools, and ptxas
#     (PyPI nvidia-cuda-nvcc-cu12) in .tools/;
#   - with --eval: the SmolLM2 model and the texts for the accuracy evaluation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v rustup >/dev/null; then
  echo "rustup is missing: install it first (https://rustup.rs):" >&2
  echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal" >&2
  exit 1
fi
stable=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain install "$stable" --profile minimal
nightly=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' kernels-gpu/rust-toolchain.toml)
rustup toolchain install "$nightly" --profile minimal --component rust-src --component llvm-tools
rustup run "$stable" rustc --version
rustup run "$nightly" rustc --version

ptxas=.tools/nvcc/nvidia/cuda_nvcc/bin/ptxas
if [ ! -x "$ptxas" ]; then
  python3 -m pip install --quiet --no-deps --target .tools/nvcc "nvidia-cuda-nvcc-cu12==12.9.86"
  chmod +x "$ptxas"
fi
"$ptxas" --version | tail -1

if [ "${1:-}" = "--eval" ]; then
  tools/perplexity/fetch-assets.sh
fi
echo "set-up done"
