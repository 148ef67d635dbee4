//! Measured thresholds for [`Algorithm::Auto`](crate::Algorithm::Auto), per
//! GPU model and world size: crossovers read off the benchmark harness (NCCL
//! in the same run), chosen so that `Auto` is at least as fast as NCCL at
//! every size from 16 KiB to 256 MiB in eager mode and under CUDA-graph
//! replay. Where each number comes from: docs/benchmarks.md, "Auto
//! thresholds". Override with `Config::thresholds` or the
//! `FLASHCOMM_*_BYTES` variables.
use crate::config::Thresholds;

const MIB: usize = 1 << 20;

/// Thresholds for `gpu_name` (as the driver reports it) and `world` ranks.
pub fn builtin(gpu_name: &str, world: usize) -> Thresholds {
    let h200 = gpu_name.contains("H200");
    match (h200, world) {
        // The unquantized two-shot beat NCCL at every size up to 256 MiB on
        // the H200 at every measured world size, so never NCCL there.
        // The LL one-shot beat the one-shot up to 128 KiB under graph
        // replay (16 KiB: 5.0 against 5.8 us), not at 256 KiB.
        (true, 2) => Thresholds { ll_max_bytes: 128 << 10, oneshot_max_bytes: 4 * MIB, flash_min_bytes: 4 * MIB, nccl_min_bytes: usize::MAX },
        // W = 3 and 4 measured (not yet with the LL one-shot); larger worlds
        // (not measured) use these.
        (true, _) => Thresholds { ll_max_bytes: 0, oneshot_max_bytes: MIB, flash_min_bytes: 2 * MIB, nccl_min_bytes: usize::MAX },
        // Unmeasured GPUs: conservative guesses. NCCL is used only where
        // `Config::nccl_fallback` allows it.
        _ => Thresholds { ll_max_bytes: 0, oneshot_max_bytes: 64 << 10, flash_min_bytes: 8 * MIB, nccl_min_bytes: 8 * MIB },
    }
}
