//! Device memory that peers can map: `cuMemAlloc`, not the stream-ordered
//! pool cudarc's `CudaSlice` uses (pool memory is invisible to peers until
//! `cuMemPoolSetAccess`; a peer kernel reading it faults).
use cudarc::driver::{result, result::DriverError, sys};

/// `cuMemAlloc` of `bytes` on the context bound to this thread.
///
/// # Safety
/// A context must be bound to this thread; the memory must be freed with
/// [`free`] on the same context.
pub unsafe fn alloc(bytes: usize) -> Result<sys::CUdeviceptr, DriverError> {
    // SAFETY: caller contract.
    unsafe { result::malloc_sync(bytes) }
}

/// `cuMemFree`.
///
/// # Safety
/// `ptr` came from [`alloc`] on the context bound to this thread, is freed
/// once, and no queued work still uses it.
pub unsafe fn free(ptr: sys::CUdeviceptr) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::free_sync(ptr) }
}

/// Synchronous `cuMemsetD8` of `bytes` bytes at `ptr` to `value`.
///
/// # Safety
/// `[ptr, ptr + bytes)` is device memory of the context bound to this thread
/// and no kernel uses it concurrently.
pub unsafe fn memset(ptr: sys::CUdeviceptr, value: u8, bytes: usize) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::memset_d8_sync(ptr, value, bytes) }
}

/// Synchronous copy of `dst.len()` words from device address `src`.
///
/// # Safety
/// `src` points to `dst.len()` readable `u32` of the context bound to this thread.
pub unsafe fn read_words(dst: &mut [u32], src: sys::CUdeviceptr) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::memcpy_dtoh_sync(dst, src) }
}

/// Synchronous copy of `src` to device address `dst`.
///
/// # Safety
/// `dst` points to `src.len()` writable `u32` of the context bound to this thread.
pub unsafe fn write_words(dst: sys::CUdeviceptr, src: &[u32]) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::memcpy_htod_sync(dst, src) }
}
