//! Measured thresholds for [`Algorithm::Auto`](crate::Algorithm::Auto), per
//! GPU model and world size. Every number is a crossover read off the
//! benchmark harness (eager, one host thread, NCCL in the same run): the
//! "Suggested Auto thresholds" lines of run `docs/bench/run-2026-11-28-interior`
//! (W = 3, 4; where a suggestion sat inside run-to-run noise the earlier
//! value was kept, noted below) and, for W = 2 since the push one-shot, of
//! `docs/bench/variants-2026-11-29/oneshot-grid` (eager and CUDA-graph
//! replay); see docs/benchmarks.md. Override with
//! `Config::thresholds` or the `FLASHCOMM_*_BYTES` variables.
use crate::config::Thresholds;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Thresholds for `gpu_name` (as the driver reports it) and `world` ranks.
pub fn builtin(gpu_name: &str, world: usize) -> Thresholds {
    let h200 = gpu_name.contains("H200");
    match (h200, world) {
        // 2x H200, push one-shot (run `variants-2026-11-29/oneshot-grid`,
        // eager and CUDA-graph replay): the one-shot beat the two-shot at
        // every size up to 4 MiB under graph replay (19.9 vs 22.5 us at
        // 4 MiB; eager 23.9 vs 26.4), within launch noise of it eager below
        // 1 MiB; Flash INT8 from 4 MiB (19.2 graph / 23.1 eager there; the
        // one-shot wins the tie at exactly 4 MiB, 0.7 us slower); the
        // unquantized two-shot beat NCCL at every size up to 256 MiB
        // (`run-2026-11-28-interior`: 769.7 vs 892.0 us there), so no NCCL.
        (true, 2) => Thresholds { oneshot_max_bytes: 4 * MIB, flash_min_bytes: 4 * MIB, nccl_min_bytes: usize::MAX },
        // W = 3 and 4: measured with the earlier one-shot (pull, exit
        // barrier), which the push one-shot beat at every size at W = 2; not
        // re-measured (no 4-GPU machine since), so these stay conservative.
        // 3 of 4x H200: the one-shot up to 16 KiB (15.6 vs 15.5 us, a tie;
        // the run suggested 0, run `run-2026-11-28-w3` 16 KiB); Flash INT8
        // from 2 MiB (21.4 vs 23.4 us); the two-shot beat NCCL at every size
        // (1034.0 vs 1091.6 us at 256 MiB), so no NCCL.
        (true, 3) => Thresholds { oneshot_max_bytes: 16 * KIB, flash_min_bytes: 2 * MIB, nccl_min_bytes: usize::MAX },
        // 4x H200 (NV18 all to all): the one-shot up to 32 KiB, then the
        // two-shot; Flash INT8 from 2 MiB (23.6 vs 26.3 us); the two-shot
        // beat NCCL at every size up to 256 MiB (1177.7 vs 1189.4 us there),
        // so no NCCL. Larger worlds (not measured) use these.
        (true, _) => Thresholds { oneshot_max_bytes: 32 * KIB, flash_min_bytes: 2 * MIB, nccl_min_bytes: usize::MAX },
        // Unmeasured GPUs: conservative guesses.
        _ => Thresholds { oneshot_max_bytes: 64 * KIB, flash_min_bytes: 8 * MIB, nccl_min_bytes: 8 * MIB },
    }
}
