#!/usr/bin/env bash
# Assembles the embedded PTX with ptxas for sm_90 (H100/H200), so PTX the
# driver would reject fails here, without a GPU. Prints each kernel's
# registers, stack and spills. Needs scripts/setup.sh's ptxas (or PTXAS=...).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ptxas=${PTXAS:-.tools/nvcc/nvidia/cuda_nvcc/bin/ptxas}
ptx=$(mktemp --suffix .ptx)
cubin=$(mktemp --suffix .cubin)
trap 'rm -f "$ptx" "$cubin"' EXIT
cargo run --quiet --bin flashcomm -- ptx > "$ptx"
report=$("$ptxas" -arch=sm_90 -v "$ptx" -o "$cubin" 2>&1) || { echo "$report"; echo "ptxas rejected the PTX" >&2; exit 1; }
echo "$report" | grep -E "Compiling entry|registers|spill" | paste - - - | \
  sed -E "s/ptxas info *: //g; s/Compiling entry function //; s/ for 'sm_90'//; s/Function properties for [a-z0-9_]+//" | tr -s ' \t' ' '
entries=$(grep -c "^.visible .entry" "$ptx")
echo "ptxas -arch=sm_90: $entries kernels assembled"
