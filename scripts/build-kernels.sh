#!/usr/bin/env bash
# Rebuilds the kernel image that the library embeds (kernel-image/) from the
# device crate kernels-gpu:
#   1. rustc's nvptx64-nvidia-cuda target, with the nightly pinned in
#      kernels-gpu/rust-toolchain.toml (`rustup run`, never the caller's
#      toolchain), -Zbuild-std=core, linked by kernels-gpu/llbc-linker.sh
#      (llvm-link -> opt -> llc) into one sm_80 PTX module;
#   2. launch bounds added to every entry (.maxntid THREADS, .maxnreg), and
#      checks: no `.extern .func` left, every entry present;
#   3. SASS for sm_80 (A100; runs on sm_86/89) and sm_90 (H100/H200) by
#      ptxas (PyPI nvidia-cuda-nvcc-cu12, pinned in scripts/setup.sh), so the
#      driver loads machine code instead of JIT-compiling 10 MB of PTX.
#
#   scripts/build-kernels.sh            # write kernel-image/
#   scripts/build-kernels.sh --check    # rebuild into a temporary folder and
#                                       # fail if kernel-image/ differs by a byte
# Prints each kernel's registers and spills (sm_90).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-write}
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' kernels-gpu/rust-toolchain.toml)
ptxas=${PTXAS:-$root/.tools/nvcc/nvidia/cuda_nvcc/bin/ptxas}
[ -x "$ptxas" ] || { echo "ptxas not found at $ptxas: run scripts/setup.sh" >&2; exit 1; }
rustup run "$channel" rustc --version >/dev/null 2>&1 || { echo "toolchain $channel missing: run scripts/setup.sh" >&2; exit 1; }

# Threads per block (flashcomm_kernels::abi::THREADS; the test
# tests/kernel_image.rs checks they agree) and the register cap per thread:
# 65536 / (THREADS * 4), so four blocks (32 warps) share an SM: the
# collectives are latency-bound. A hard .maxnreg: ptxas treated
# .minnctapersm as a hint and used up to 168 registers. rustc has no
# __launch_bounds__.
THREADS=256
MAX_REGISTERS=64
# The spiky kernels (spike reserving) hold a chunk's selection keys beside
# its elements: at 64 registers they spilled 1.1 KB and ran 10% slower than
# at 128 (2 blocks per SM; docs/benchmarks.md, spike reserving).
MAX_REGISTERS_SPIKY=128
ARCHES="sm_80 sm_90"

out=$root/kernel-image
if [ "$mode" = --check ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi

sysroot=$(rustup run "$channel" rustc --print sysroot)
host=$(rustup run "$channel" rustc --print host-tuple)
flags=$(printf '%s\x1f' -Zunstable-options -Cpanic=immediate-abort -Clinker-flavor=llbc \
  "-Clinker=$root/kernels-gpu/llbc-linker.sh" -Ctarget-cpu=sm_80 -Copt-level=3)
# A clean environment: the caller's RUSTFLAGS, CARGO_* and toolchain
# settings must not leak into the device build.
env -i PATH="$PATH" HOME="$HOME" ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} ${CARGO_HOME:+CARGO_HOME="$CARGO_HOME"} \
  ${CARGO_NET_OFFLINE:+CARGO_NET_OFFLINE="$CARGO_NET_OFFLINE"} \
  CARGO_ENCODED_RUSTFLAGS="${flags%$'\x1f'}" FLASHCOMM_LLVM_BIN="$sysroot/lib/rustlib/$host/bin" \
  rustup run "$channel" cargo rustc --quiet --release --locked -p flashcomm-kernels --lib --crate-type cdylib \
    --target nvptx64-nvidia-cuda -Zbuild-std=core --target-dir "$root/target/nvptx-kernels"
raw=$root/target/nvptx-kernels/nvptx64-nvidia-cuda/release/flashcomm_kernels.ptx

mkdir -p "$out"
awk -v threads="$THREADS" -v regs="$MAX_REGISTERS" -v spiky_regs="$MAX_REGISTERS_SPIKY" '
  /^\.visible \.entry / { in_params = 1; cap = ($3 ~ /^spiky_/) ? spiky_regs : regs }
  { print }
  in_params && /^[ \t]*\)/ { printf ".maxntid %d, 1, 1\n.maxnreg %d\n", threads, cap; in_params = 0 }
' "$raw" > "$out/flashcomm_kernels.ptx"
if grep -n "\.extern \.func" "$out/flashcomm_kernels.ptx"; then
  echo "the PTX calls a function it does not define: a core routine was not inlined" >&2; exit 1
fi
entries=$(grep -c "^\.visible \.entry" "$out/flashcomm_kernels.ptx" || true)
bounded=$(grep -c "^\.maxntid $THREADS, 1, 1" "$out/flashcomm_kernels.ptx" || true)
[ "$entries" -gt 0 ] && [ "$entries" = "$bounded" ] || { echo "$entries entries, $bounded with launch bounds" >&2; exit 1; }

for arch in $ARCHES; do
  report=$("$ptxas" -arch="$arch" -v "$out/flashcomm_kernels.ptx" -o "$out/flashcomm_kernels.$arch.cubin" 2>&1) \
    || { echo "$report"; echo "ptxas rejected the PTX for $arch" >&2; exit 1; }
  if [ "$arch" = sm_90 ]; then
    echo "$report" | grep -E "Compiling entry|registers|spill" | paste - - - | \
      sed -E "s/ptxas info *: //g; s/Compiling entry function //; s/ for 'sm_90'//; s/Function properties for [a-z0-9_]+//" | tr -s ' \t' ' '
  fi
done
echo "$entries kernels; PTX and SASS for $ARCHES ($("$ptxas" --version | tail -1))"

if [ "$mode" = --check ]; then
  for f in "$out"/*; do
    name=$(basename "$f")
    if ! cmp -s "$f" "kernel-image/$name"; then
      echo "kernel-image/$name differs from a rebuild of kernels-gpu: run scripts/build-kernels.sh and commit kernel-image/" >&2
      exit 1
    fi
  done
  echo "kernel-image/ matches a rebuild of kernels-gpu byte for byte"
fi
