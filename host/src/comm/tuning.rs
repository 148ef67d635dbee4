//! Measured thresholds for [`Algorithm::Auto`](crate::Algorithm::Auto), per
//! GPU model and world size. Every number is a crossover read off the
//! benchmark harness (eager, one host thread, NCCL in the same run): the
//! "Suggested Auto thresholds" lines of runs `docs/bench/run-2026-11-28-pipelined`
//! (W = 2, 4) and `docs/bench/run-2026-11-28-w3` (W = 3); see docs/benchmarks.md. Override with `Config::thresholds` or the
//! `FLASHCOMM_*_BYTES` variables.
use crate::config::Thresholds;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Thresholds for `gpu_name` (as the driver reports it) and `world` ranks.
pub fn builtin(gpu_name: &str, world: usize) -> Thresholds {
    let h200 = gpu_name.contains("H200");
    match (h200, world) {
        // 2x H200: the one-shot up to 2 MiB (19.6 vs 20.1 us for the
        // two-shot there, equal at 4 MiB); Flash INT8 beats NCCL and the
        // unquantized kernels from 4 MiB; the unquantized two-shot beat NCCL
        // at every size up to 256 MiB (774.8 vs 894.9 us there), so no NCCL.
        (true, 2) => Thresholds { oneshot_max_bytes: 2 * MIB, flash_min_bytes: 4 * MIB, nccl_min_bytes: usize::MAX },
        // 3 of 4x H200 (run `docs/bench/run-2026-11-28-w3`): the one-shot up
        // to 16 KiB; Flash INT8 from 2 MiB (22.8 us, equal to the two-shot;
        // 28.8 vs 33.2 us at 4 MiB); the two-shot beat NCCL at every size
        // (1036.9 vs 1094.8 us at 256 MiB), so no NCCL.
        (true, 3) => Thresholds { oneshot_max_bytes: 16 * KIB, flash_min_bytes: 2 * MIB, nccl_min_bytes: usize::MAX },
        // 4x H200 (NV18 all to all): the one-shot up to 32 KiB, then the
        // two-shot; Flash INT8 from 4 MiB; the pipelined two-shot beat NCCL
        // at every size up to 256 MiB (1168.5 vs 1190.3 us there), so no NCCL.
        // Larger worlds (not measured) use these.
        (true, _) => Thresholds { oneshot_max_bytes: 32 * KIB, flash_min_bytes: 4 * MIB, nccl_min_bytes: usize::MAX },
        // Unmeasured GPUs: conservative guesses.
        _ => Thresholds { oneshot_max_bytes: 64 * KIB, flash_min_bytes: 8 * MIB, nccl_min_bytes: 8 * MIB },
    }
}
