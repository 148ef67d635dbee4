//! CUDA driver calls that cudarc does not wrap: the one layer above
//! `cudarc::driver::sys` that this crate adds.
//!
//! Every function is a thin shell around one `cudarc::driver::sys` call that
//! turns the status into a `Result`. The `unsafe` ones say under `# Safety`
//! what the caller must guarantee; nothing above this module calls `sys`.
pub mod graph;
pub mod ipc;
pub mod launch;
pub mod memory;
pub mod module;
pub mod peer;
pub mod stream;

use cudarc::driver::result;

/// Whether a CUDA driver library can be loaded at all (never panics; cudarc
/// panics on first use when it loads CUDA at run time and cannot).
pub fn driver_present() -> bool {
    library_present("cuda") || library_present("nvcuda")
}

/// Whether the shared library `name` opens under one of the names cudarc
/// tries when it loads libraries at run time (`libcuda.so`, `libcuda.so.1`,
/// ...). Our own check rather than cudarc's `is_culib_present`, which
/// exists only when cudarc loads CUDA at run time; an application that links
/// CUDA at build time (cudarc's `dynamic-linking`, as candle does) has the
/// library loaded already, and the check passes.
pub(crate) fn library_present(name: &str) -> bool {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let plain = format!("{DLL_PREFIX}{name}{DLL_SUFFIX}");
    let versioned = ["1", "9", "10", "11", "12", "13"].map(|v| format!("{plain}.{v}"));
    std::iter::once(plain.clone()).chain(versioned).any(|candidate| {
        // SAFETY: opening a system library runs its initialisers; these are
        // the libraries cudarc itself would open.
        unsafe { libloading::Library::new(&candidate) }.is_ok()
    })
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
