//! Measured thresholds for [`Algorithm::Auto`](crate::Algorithm::Auto), per
//! GPU model and world size. Every number is a crossover read off the
//! benchmark harness (eager, one host thread, NCCL in the same run): the
//! "Suggested Auto thresholds" lines of run `docs/bench/run-2026-11-28-interior`
//! (W = 2, 3, 4; where a suggestion sat inside run-to-run noise the earlier
//! value was kept, noted below); see docs/benchmarks.md. Override with
//! `Config::thresholds` or the `FLASHCOMM_*_BYTES` variables.
use crate::config::Thresholds;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Thresholds for `gpu_name` (as the driver reports it) and `world` ranks.
pub fn builtin(gpu_name: &str, world: usize) -> Thresholds {
    let h200 = gpu_name.contains("H200");
    match (h200, world) {
        // 2x H200: the one-shot up to 2 MiB (18.9 vs 19.6 us for the
        // two-shot there, equal at 4 MiB); Flash INT8 from 2 MiB (18.6 us,
        // INT4 17.2; 23.5 vs 26.9 at 4 MiB); the unquantized two-shot beat
        // NCCL at every size up to 256 MiB (769.7 vs 892.0 us there), so no NCCL.
        (true, 2) => Thresholds { oneshot_max_bytes: 2 * MIB, flash_min_bytes: 2 * MIB, nccl_min_bytes: usize::MAX },
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
