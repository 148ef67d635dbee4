//! CUDA driver calls that cudarc does not wrap: the one layer above
//! `cudarc::driver::sys` that this crate adds.
//!
//! Every function is a thin shell around one `cudarc::driver::sys` call that
//! turns the status into a `Result`. The `unsafe` ones say under `# Safety`
//! what the caller must guarantee; nothing above this module calls `sys`.
pub mod graph;
pub mod launch;
pub mod memory;
pub mod peer;

use cudarc::driver::{result, sys};

/// Whether a CUDA driver library can be loaded at all (never panics; cudarc
/// panics on first use when it cannot).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { sys::is_culib_present() }
}

/// Number of visible CUDA devices; 0 when no driver is present or `cuInit` fails.
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    if result::init().is_err() {
        return 0;
    }
    result::device::get_count().map(|n| n.max(0) as usize).unwrap_or(0)
}
