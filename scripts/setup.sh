#!/usr/bin/env bash
# One-time set-up on a fresh x86-64 Linux machine with rustup, python3 (pip)
# and a C linker (cc). Installs:
#   - the pinned nightly of rust-toolchain.toml with rust-src and llvm-tools
#     (the kernels are built from source for nvptx64 by build.rs);
#   - ptxas (PyPI nvidia-cuda-nvcc-cu12) into .tools/, for scripts/check-ptx.sh;
#   - with --eval: the SmolLM2 model and the texts for the accuracy evaluation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v rustup >/dev/null; then
  echo "rustup is missing: install it first (https://rustup.rs):" >&2
  echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal" >&2
  exit 1
fi
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain install "$channel" --profile minimal --component rust-src --component llvm-tools
rustc --version

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
