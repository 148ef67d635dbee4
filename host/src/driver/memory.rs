//! Device memory that peers can map: `cuMemAlloc`, not the stream-ordered
//! pool cudarc's `CudaSlice` uses (pool memory is invisible to peers until
//! `cuMemPoolSetAccess`; a peer kernel reading it faults).
//!
//! Copies and memsets are queued on a given stream: the synchronous driver
//! calls run on the legacy stream, which does not order with the
//! communicator's non-blocking streams (a reset could race the next kernel).
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

/// `cuMemsetD8Async` of `bytes` bytes at `ptr` to `value`, queued on `stream`.
///
/// # Safety
/// `[ptr, ptr + bytes)` is device memory of the context bound to this
/// thread, `stream` a live stream of it.
pub unsafe fn memset_async(ptr: sys::CUdeviceptr, value: u8, bytes: usize, stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::memset_d8_async(ptr, value, bytes, stream) }
}

/// `cuMemcpyDtoHAsync` of `dst.len()` words from device address `src`,
/// queued on `stream`.
///
/// # Safety
/// `src` points to `dst.len()` readable `u32` of the context bound to this
/// thread; `dst` stays valid until `stream` has finished the copy.
pub unsafe fn read_words_async(dst: &mut [u32], src: sys::CUdeviceptr, stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::memcpy_dtoh_async(dst, src, stream) }
}

/// `cuMemcpyHtoDAsync` of `src` to device address `dst`, queued on `stream`.
///
/// # Safety
/// `dst` points to `src.len()` writable `u32` of the context bound to this
/// thread; `src` stays valid until `stream` has finished the copy.
pub unsafe fn write_words_async(dst: sys::CUdeviceptr, src: &[u32], stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { result::memcpy_htod_async(dst, src, stream) }
}
