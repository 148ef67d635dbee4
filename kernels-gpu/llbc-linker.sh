#!/usr/bin/env bash
# Bitcode linker for rustc's nvptx64-nvidia-cuda target (linker flavour
# `llbc`): rustc hands over LLVM bitcode "objects" and rlibs; this links them
# into one PTX module:
#   llvm-link  -> one bitcode module (core and compiler_builtins included)
#   opt        -> internalize everything but the exported kernels, drop the
#                 rest, optimise at O3 (so no `.extern .func` is left behind)
#   llc        -> PTX for one fixed sm
# The LLVM tools come from the pinned toolchain's `llvm-tools` component;
# scripts/build-kernels.sh passes their folder in FLASHCOMM_LLVM_BIN.
set -euo pipefail
bin="${FLASHCOMM_LLVM_BIN:-}"
tool() { if [ -n "$bin" ]; then echo "$bin/$1"; else echo "$1"; fi; }

exports=() inputs=() out="" cpu="sm_80" features=""
while [ $# -gt 0 ]; do
  case "$1" in
    --export-symbol) exports+=("$2"); shift 2 ;;
    --export-symbol=*) exports+=("${1#*=}"); shift ;;
    -o) out="$2"; shift 2 ;;
    --target-cpu) cpu="$2"; shift 2 ;;
    --target-cpu=*) cpu="${1#*=}"; shift ;;
    --target-feature) features="$2"; shift 2 ;;
    --target-feature=*) features="${1#*=}"; shift ;;
    --target|-L) shift 2 ;;
    --target=*|-L*|-O*|--debug|--fallback-arch*) shift ;;
    -*) echo "llbc-linker: ignoring unknown option $1" >&2; shift ;;
    *) inputs+=("$1"); shift ;;
  esac
done
[ -n "$out" ] || { echo "llbc-linker: no -o given" >&2; exit 2; }
[ ${#exports[@]} -gt 0 ] || { echo "llbc-linker: no --export-symbol given: no kernels to keep" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$(tool llvm-link)" --ignore-non-bitcode "${inputs[@]}" -o "$tmp/linked.bc"
api=$(IFS=,; echo "${exports[*]}")
"$(tool opt)" "$tmp/linked.bc" --internalize-public-api-list="$api" \
  -passes='internalize,globaldce,default<O3>,globaldce' -o "$tmp/opt.bc"
mattr=()
if [ -n "$features" ]; then mattr=("-mattr=$features"); fi
# No FP contraction: the GPU must round exactly like the host reference.
"$(tool llc)" -mtriple=nvptx64-nvidia-cuda -mcpu="$cpu" "${mattr[@]}" -O3 --fp-contract=off \
  "$tmp/opt.bc" -o "$out"
