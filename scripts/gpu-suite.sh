#!/usr/bin/env bash
# The GPU suite in one command per side.
#
#   scripts/gpu-suite.sh stage            # here: build release test/bench/main binaries, packed into .gpu-stage/bins.tar.gz
#                                         #   (STAGE_EXTRA="f1 f2": variant binaries or wrappers named bench-<name>, packed too;
#                                         #   STAGE_ONLY="gpu-tests bench-allreduce": only these, see the size note below)
#   scripts/gpu-suite.sh remote [WHAT..]  # on the GPU host (repo root): run them; WHAT = tests | sanitize | tests-old | bench | bench-graphs | bench-procs | bench-procs-graphs | example-procs | bench-tp-layer | bench-tp-layer-graphs | bench-phases | bench-transports | bench-pieces | bench-variants | torch | main | startup | candle
#
# With the device tool: stage, then run
#   bash scripts/gpu-suite.sh remote tests bench     (carry: [".gpu-stage"])
# Logs and results go to $OUT (or .gpu-out/ without it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage="$root/.gpu-stage"
cmd="${1:-help}"
shift || true

case "$cmd" in
stage)
  cd "$root"
  rm -rf "$stage"
  mkdir -p "$stage"
  exes=$(cargo test --release --features nccl --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
  for e in $exes; do
    case "$(basename "$e")" in gpu-*) cp "$e" "$stage/gpu-tests" ;; esac
  done
  cargo build --release --bins --benches --examples --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | while read -r e; do
      case "$(basename "$e")" in
        flashcomm) cp "$e" "$stage/flashcomm" ;;
        allreduce-*) cp "$e" "$stage/bench-allreduce" ;;
        tp_layer-*) cp "$e" "$stage/bench-tp-layer" ;;
        one_process_per_gpu) cp "$e" "$stage/one-process-per-gpu" ;;
      esac
    done
  "$stage/flashcomm" ptx > "$stage/flashcomm_kernels.ptx"   # the embedded PTX, launch bounds included
  # The candle example (its own workspace; needs scripts/setup-candle.sh's
  # nvcc and CUDA libraries, so it is built only where they are).
  cuda13="$root/.tools/cuda13/nvidia/cu13"
  if [ -x "$cuda13/bin/nvcc" ]; then
    (cd "$root/candle" && CUDA_ROOT="$cuda13" PATH="$cuda13/bin:$PATH" CUDA_COMPUTE_CAP=90 \
      cargo build --release --example tp_mlp --quiet)
    cp "$root/candle/target/release/examples/tp_mlp" "$stage/candle-tp-mlp"
  else
    echo "no .tools/cuda13 (scripts/setup-candle.sh): the candle example is not staged"
  fi
  # The device tool carries at most 64 MiB (working tree included); the
  # binaries embed the PTX and compress ~6x. STAGE_EXTRA: more files to add
  # (variant binaries, wrapper scripts), packed the same way.
  # GPU_TESTS_OLD: a gpu-tests binary built from an older tree (the same
  # test sources), for "fails before the fix" runs (step tests-old).
  if [ -n "${GPU_TESTS_OLD:-}" ]; then cp "$GPU_TESTS_OLD" "$stage/gpu-tests-old"; fi
  for x in ${STAGE_EXTRA:-}; do cp "$x" "$stage/"; done
  # Every binary embeds the 35 MB kernel image (~6 MB packed), and the
  # tracked tree (the image included) is ~40 MB: all binaries together pass
  # the device tool's 64 MiB. STAGE_ONLY keeps the named ones.
  if [ -n "${STAGE_ONLY:-}" ]; then
    for f in "$stage"/*; do
      case " $STAGE_ONLY " in *" $(basename "$f") "*) ;; *) rm -f "$f" ;; esac
    done
  fi
  (cd "$stage" && tar czf bins.tar.gz --remove-files -- *)
  ls -la "$stage"
  ;;
remote)
  cd "$root"
  if [ -f "$stage/bins.tar.gz" ]; then
    # The device machine may keep an earlier call's files here: drop them,
    # so bench-variants runs only what this stage packed.
    find "$stage" -mindepth 1 ! -name bins.tar.gz -delete
    tar xzf "$stage/bins.tar.gz" -C "$stage" && rm "$stage/bins.tar.gz"
  fi
  out="${OUT:-$root/.gpu-out}"
  mkdir -p "$out"
  # NVLink multicast stays off (it can take shared GPUs out of service).
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  # cudarc loads libnccl.so; the hosts ship libnccl.so.2 inside Python's nvidia-nccl.
  if nccl_dir=$(python3 -c 'import nvidia.nccl,os;print(os.path.join(nvidia.nccl.__path__[0],"lib"))' 2>/dev/null); then
    mkdir -p /tmp/flashcomm-nccl && ln -sf "$nccl_dir/libnccl.so.2" /tmp/flashcomm-nccl/libnccl.so
    export LD_LIBRARY_PATH="/tmp/flashcomm-nccl:$nccl_dir:${LD_LIBRARY_PATH:-}"
  fi
  # cuBLAS (the TP layer benchmark) from Python's nvidia-cublas, under the
  # first name cudarc tries.
  if cublas_dir=$(python3 -c 'import nvidia.cublas,os;print(os.path.join(nvidia.cublas.__path__[0],"lib"))' 2>/dev/null); then
    cublas_so=$(ls "$cublas_dir"/libcublas.so.* 2>/dev/null | head -1)
    if [ -n "$cublas_so" ]; then
      mkdir -p /tmp/flashcomm-cublas && ln -sf "$cublas_so" /tmp/flashcomm-cublas/libcublas.so
      export LD_LIBRARY_PATH="/tmp/flashcomm-cublas:$cublas_dir:${LD_LIBRARY_PATH:-}"
    fi
  fi
  ngpu=$(nvidia-smi -L | wc -l)
  {
    date -u; hostname; nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.mem --format=csv
    nvidia-smi topo -m
  } > "$out/host.txt" 2>&1 || true
  cat "$out/host.txt"
  status=0
  for what in "${@:-tests}"; do
    case "$what" in
      tests)
        REQUIRE_GPU="$ngpu" timeout 900 "$stage/gpu-tests" --test-threads=1 ${GPU_TEST_FILTER:-} 2>&1 \
          | tee "$out/gpu-tests.log" || status=1 ;;
      tests-old)
        # The same tests built from the code before a fix: expected to fail.
        timeout 600 "$stage/gpu-tests-old" --test-threads=1 ${GPU_TEST_FILTER:-reliability::} 2>&1 \
          | tee "$out/gpu-tests-old.log" || true ;;
      sanitize)
        # compute-sanitizer over the whole suite, one test at a time, each
        # with its own time limit (SANITIZE_TEST_S, SANITIZE_LONG_S), the
        # exact-config watchdog off (the 10-100x slowdown would fire it),
        # fewer random cases and 30 instead of 300 back-to-back calls. Tests whose own short watchdog must fire keep it: their
        # healthy calls run under the sanitizer's slowdown too, so a spurious
        # timeout there shows as a test failure, never as a hidden error.
        # The NCCL tests run with --report-api-errors no: NCCL probes its own
        # kernel images with cudaFuncGetAttributes, expecting error 209 for
        # the architectures it was not built for. SANITIZE_TESTS (a regex)
        # picks tests; SANITIZE_TOOLS the extra tools run on one test.
        san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
        export FLASHCOMM_TIMEOUT_MS=0 FLASHCOMM_GPU_CASES=${SANITIZE_CASES:-24} FLASHCOMM_BACK_TO_BACK_CALLS=${SANITIZE_CALLS:-30}
        tests=$("$stage/gpu-tests" --list 2>/dev/null | sed -n 's/: test$//p' | grep -v '^gpu_is_available$' | grep -E "${SANITIZE_TESTS:-.}" || true)
        { for t in $tests; do
            api=()
            case "$t" in *nccl*) api=(--report-api-errors no) ;; esac
            limit=${SANITIZE_TEST_S:-240}
            case "$t" in *back_to_back*|*random_cases*|*shared_device_ranks*) limit=${SANITIZE_LONG_S:-420} ;; esac
            echo "=== memcheck $t"
            start=$SECONDS
            timeout "$limit" "$san" --tool memcheck --print-limit 20 "${api[@]}" "$stage/gpu-tests" --test-threads=1 --exact "$t" || echo "=== $t: exit $?"
            echo "=== $t: $((SECONDS - start)) s"
          done
          for tool in ${SANITIZE_TOOLS-racecheck synccheck initcheck}; do
            for t in allreduce::consecutive_calls_and_pieces reliability::late_rank_gets_an_error; do
              echo "=== $tool $t"
              timeout 240 "$san" --tool $tool --print-limit 20 "$stage/gpu-tests" --test-threads=1 --exact $t || echo "=== $t: exit $?"
            done
          done; } 2>&1 | tee "$out/sanitize.log" || status=1
        unset FLASHCOMM_TIMEOUT_MS FLASHCOMM_GPU_CASES FLASHCOMM_BACK_TO_BACK_CALLS
        grep -E "^=== |ERROR SUMMARY|RACECHECK SUMMARY|test result" "$out/sanitize.log" | tee "$out/sanitize-summary.txt" ;;
      bench)
        timeout 900 "$stage/bench-allreduce" --no-progress --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" || status=1 ;;
      bench-graphs)
        # Every contender under CUDA-graph replay (GRAPH_CALLS calls per graph).
        mkdir -p "$out/graphs"
        timeout 900 "$stage/bench-allreduce" --no-progress --graphs "${GRAPH_CALLS:-10}" --out "$out/graphs" ${BENCH_ARGS:-} 2>&1 \
          | tee "$out/graphs.log" || status=1 ;;
      bench-tp-layer)
        # A Llama-3-70B layer at TP = 2: cuBLAS GEMMs and the two all-reduces.
        timeout 900 "$stage/bench-tp-layer" --out "$out/tp-layer" ${TP_LAYER_ARGS:-} 2>&1 | tee "$out/tp-layer.log" || status=1 ;;
      bench-tp-layer-graphs)
        timeout 900 "$stage/bench-tp-layer" --graphs --out "$out/tp-layer-graphs" ${TP_LAYER_ARGS:-} 2>&1 | tee "$out/tp-layer-graphs.log" || status=1 ;;
      example-procs)
        # examples/one_process_per_gpu.rs: its own launcher, one process per GPU.
        timeout 300 "$stage/one-process-per-gpu" 2>&1 | tee "$out/example-procs.log" || status=1 ;;
      bench-procs)
        # One process per rank (Communicator::init_rank; NCCL by ncclCommInitRank).
        timeout 900 "$stage/bench-allreduce" --procs --no-progress --out "$out/procs" ${BENCH_ARGS:-} 2>&1 | tee "$out/procs.log" || status=1 ;;
      bench-procs-graphs)
        timeout 900 "$stage/bench-allreduce" --procs --no-progress --graphs "${GRAPH_CALLS:-10}" --out "$out/procs-graphs" ${BENCH_ARGS:-} 2>&1 \
          | tee "$out/procs-graphs.log" || status=1 ;;
      bench-phases)
        mkdir -p "$out/phases"
        timeout 900 "$stage/bench-allreduce" --no-progress --no-plot --phases --sizes 64M,256M \
          --out "$out/phases" 2>&1 | tee "$out/phases.log" || status=1 ;;
      bench-transports)
        mkdir -p "$out/transports"
        timeout 900 "$stage/bench-allreduce" --no-progress --no-plot --transports --sizes 1M,16M,64M,256M \
          --out "$out/transports" 2>&1 | tee "$out/transports.log" || status=1 ;;
      bench-pieces)
        # Piece-size sweep (FLASHCOMM_MAX_PIECE_ELEMS; PIECES overrides the list).
        for p in ${PIECES:-4194304 8388608 16777216 33554432}; do
          mkdir -p "$out/pieces-$p"
          FLASHCOMM_MAX_PIECE_ELEMS=$p timeout 900 "$stage/bench-allreduce" --no-progress --no-plot --worlds 4 \
            --sizes ${PIECE_SIZES:-16M,64M,256M} --out "$out/pieces-$p" 2>&1 | tee "$out/pieces-$p.log" || status=1
        done ;;
      bench-variants)
        # Kernel variants: every .gpu-stage/bench-<name> binary besides
        # bench-allreduce (built from other trees and copied in by hand), then
        # bench-allreduce itself, same arguments (VARIANT_ARGS), one after
        # another in this sitting.
        for b in "$stage"/bench-*; do
          name=${b##*/bench-}
          [ "$name" = allreduce ] && continue
          mkdir -p "$out/variant-$name"
          timeout 900 "$b" --no-progress --no-plot ${VARIANT_ARGS:---worlds 4 --sizes 16M,64M,256M} \
            --out "$out/variant-$name" 2>&1 | tee "$out/variant-$name.log" || status=1
        done
        mkdir -p "$out/variant-allreduce"
        timeout 900 "$stage/bench-allreduce" --no-progress --no-plot ${VARIANT_ARGS:---worlds 4 --sizes 16M,64M,256M} \
          --out "$out/variant-allreduce" 2>&1 | tee "$out/variant-allreduce.log" || status=1 ;;
      torch)
        mkdir -p "$out/torch"
        PYTHONUNBUFFERED=1 timeout 600 python3 scripts/torch_baseline.py --worlds 2,4 --out "$out/torch" 2>&1 \
          | tee "$out/torch.log" || status=1 ;;
      main)
        timeout 600 "$stage/flashcomm" 2>&1 | tee "$out/main.log" || status=1 ;;
      candle)
        # The candle example: a tensor-parallel MLP block on 2 GPUs (links the
        # host's CUDA 13 libraries: cuBLAS, cuRAND, NVRTC).
        LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}" timeout 600 "$stage/candle-tp-mlp" 2>&1 \
          | tee "$out/candle.log" || status=1 ;;
      startup)
        # Communicator::new over every GPU, each in a fresh process: SASS
        # and PTX, with an empty JIT cache, with the cache disabled, and warm.
        { for code in "" --ptx; do
            cache=$(mktemp -d)
            CUDA_CACHE_PATH=$cache timeout 300 "$stage/flashcomm" startup $code || status=1
            CUDA_CACHE_PATH=$cache timeout 300 "$stage/flashcomm" startup $code || status=1
            CUDA_CACHE_DISABLE=1 timeout 300 "$stage/flashcomm" startup $code || status=1
            rm -rf "$cache"
          done; } 2>&1 | tee "$out/startup.log" ;;
      *) echo "unknown step $what"; status=2 ;;
    esac
  done
  exit $status
  ;;
*)
  sed -n '2,10p' "$0"
  ;;
esac
