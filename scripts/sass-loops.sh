#!/usr/bin/env bash
# Instruction counts of a kernel's loops in the SASS ptxas makes of the
# embedded PTX: the tool behind the "instructions per chunk" figures in
# docs/benchmarks.md. Optional (not part of set-up or CI); fetches
# cuobjdump and nvdisasm from PyPI into .tools/ on first use.
#
#   scripts/sass-loops.sh [KERNEL]      # default allreduce_twoshot_bf16_q4q4
#
# Prints every backward branch (a loop) with its span in instructions and
# the spill loads/stores inside it; the SASS itself is left in
# target/sass/KERNEL.sass.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kernel=${1:-allreduce_twoshot_bf16_q4q4}
ptxas=${PTXAS:-.tools/nvcc/nvidia/cuda_nvcc/bin/ptxas}
cuobjdump=$(ls .tools/cuobjdump/nvidia/*/bin/cuobjdump 2>/dev/null | head -1 || true)
if [ -z "$cuobjdump" ]; then
  python3 -m pip install --quiet --no-deps --target .tools/cuobjdump \
    "nvidia-cuda-cuobjdump==13.5.37" "nvidia-cuda-nvdisasm==13.5.37"
  cuobjdump=$(ls .tools/cuobjdump/nvidia/*/bin/cuobjdump | head -1)
fi
mkdir -p target/sass
cargo run --quiet --release --bin flashcomm -- ptx > target/sass/kernels.ptx
"$ptxas" -arch=sm_90 target/sass/kernels.ptx -o target/sass/kernels.cubin
# cuobjdump runs nvdisasm, installed beside it.
PATH="$(dirname "$cuobjdump"):$PATH" "$cuobjdump" -sass -fun "$kernel" target/sass/kernels.cubin > "target/sass/$kernel.sass"
python3 - "target/sass/$kernel.sass" <<'PY'
import re, sys
ins = []
for line in open(sys.argv[1]):
    m = re.search(r'/\*([0-9a-f]{4,5})\*/\s+(.*?);', line)
    if m:
        ins.append((int(m.group(1), 16), m.group(2).strip()))
print(f"{sys.argv[1]}: {len(ins)} instructions")
for a, t in ins:
    m = re.search(r'BRA\s+(?:\w+\s+)?(?:P\d,\s*)?(0x[0-9a-f]+)', t)
    if m and int(m.group(1), 16) < a:
        b = int(m.group(1), 16)
        spills = sum(1 for x, u in ins if b <= x <= a and ('LDL' in u or 'STL' in u))
        print(f"  loop {b:#7x}-{a:#7x}: {(a - b) // 16 + 1:5d} instructions, {spills} spill loads/stores")
PY
