//! Kernel launches with a single by-value argument block.
use cudarc::driver::{result, result::DriverError, sys};

/// Launches `func` with `threads` threads per block and `blocks` blocks on
/// `stream`, passing `*args` as the kernel's one parameter.
///
/// # Safety
/// 1. The context owning `func` and `stream` is bound to this thread.
/// 2. `func`'s only parameter has exactly the layout of `A` (`#[repr(C)]`,
///    shared with the device crate).
/// 3. Every pointer inside `args` is valid for what the kernel does with it
///    until the kernel completes.
pub unsafe fn launch_with_args<A>(
    func: sys::CUfunction,
    blocks: u32,
    threads: u32,
    stream: sys::CUstream,
    args: &mut A,
) -> Result<(), DriverError> {
    let mut params = [args as *mut A as *mut std::ffi::c_void];
    // SAFETY: caller contract; the driver copies the parameter block before returning.
    unsafe { result::launch_kernel(func, (blocks, 1, 1), (threads, 1, 1), 0, stream, &mut params) }
}

/// [`launch_with_args`] for a kernel with a second by-value parameter `B`.
///
/// # Safety
/// As [`launch_with_args`], with `func`'s two parameters laid out as `A`, `B`.
pub unsafe fn launch_with_args_and<A, B>(
    func: sys::CUfunction,
    blocks: u32,
    threads: u32,
    stream: sys::CUstream,
    args: &mut A,
    second: &mut B,
) -> Result<(), DriverError> {
    let mut params = [args as *mut A as *mut std::ffi::c_void, second as *mut B as *mut std::ffi::c_void];
    // SAFETY: caller contract; the driver copies the parameters before returning.
    unsafe { result::launch_kernel(func, (blocks, 1, 1), (threads, 1, 1), 0, stream, &mut params) }
}

/// Launches `func` with a list of scalar/pointer parameters.
///
/// # Safety
/// As [`launch_with_args`], with `params` pointing to values whose types
/// match the kernel's parameters in order.
pub unsafe fn launch_with_params(
    func: sys::CUfunction,
    blocks: u32,
    threads: u32,
    stream: sys::CUstream,
    params: &mut [*mut std::ffi::c_void],
) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::launch_kernel(func, (blocks, 1, 1), (threads, 1, 1), 0, stream, params) }
}
