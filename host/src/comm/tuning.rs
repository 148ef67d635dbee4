//! Measured thresholds for [`Algorithm::Auto`](crate::Algorithm::Auto), per
//! GPU model and world size. Every number is a crossover read off the
//! benchmark harness (eager, one host thread, NCCL in the same run): the
//! "Suggested Auto thresholds" lines of run `docs/bench/run-2026-11-28-final`
//! (see docs/benchmarks.md). Override with `Config::thresholds` or the
//! `FLASHCOMM_*_BYTES` variables.
use crate::config::Thresholds;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Thresholds for `gpu_name` (as the driver reports it) and `world` ranks.
pub fn builtin(gpu_name: &str, world: usize) -> Thresholds {
    let h200 = gpu_name.contains("H200");
    match (h200, world) {
        // 2x H200: the one-shot up to 16 KiB; Flash INT8 beats NCCL and the
        // unquantized kernels from 4 MiB; the unquantized two-shot beat NCCL
        // at every size up to 256 MiB (883.8 vs 893.4 us there), so no NCCL.
        (true, 2) => Thresholds { oneshot_max_bytes: 16 * KIB, flash_min_bytes: 4 * MIB, nccl_min_bytes: usize::MAX },
        // 4x H200 (NV18 all to all): the two-shot matched or beat the one-shot
        // at every size (within noise below 64 KiB); Flash INT8 from 4 MiB;
        // NCCL beats the unquantized two-shot from 128 MiB (623.6 vs 642.3 us).
        // W = 3 (not measured) uses these.
        (true, _) => Thresholds { oneshot_max_bytes: 0, flash_min_bytes: 4 * MIB, nccl_min_bytes: 128 * MIB },
        // Unmeasured GPUs: conservative guesses.
        _ => Thresholds { oneshot_max_bytes: 64 * KIB, flash_min_bytes: 8 * MIB, nccl_min_bytes: 8 * MIB },
    }
}
