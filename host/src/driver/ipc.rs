//! Sharing `cuMemAlloc` memory with other processes: legacy CUDA IPC
//! (`cuIpcGetMemHandle` / `cuIpcOpenMemHandle` / `cuIpcCloseMemHandle`).
//!
//! Legacy IPC rather than `cuMemCreate` + file descriptors: the 64-byte
//! handles travel inside the bootstrap's messages (no descriptor passing,
//! no Unix-socket namespace), the buffers are the communicator's own,
//! allocated once, and both mechanisms move data at the same speed
//! (docs/multi-process.md).
use cudarc::driver::{result::DriverError, sys};

/// Bytes of an IPC memory handle.
pub const HANDLE_BYTES: usize = 64;

/// The handle another process opens to map the allocation whose base is
/// `ptr` (a handle covers the whole allocation).
///
/// # Safety
/// `ptr` is the base of a live `cuMemAlloc` allocation of the context bound
/// to this thread.
pub unsafe fn export(ptr: sys::CUdeviceptr) -> Result<[u8; HANDLE_BYTES], DriverError> {
    let mut handle = sys::CUipcMemHandle_st { reserved: [0; HANDLE_BYTES] };
    // SAFETY: caller contract; `handle` is a valid out-pointer.
    unsafe { sys::cuIpcGetMemHandle(&mut handle, ptr) }.result()?;
    Ok(handle.reserved.map(|c| c as u8))
}

/// Maps another process's allocation into the context bound to this
/// thread (peer access enabled lazily, as the driver needs it); returns its
/// base address here.
///
/// # Safety
/// A context is bound to this thread; `handle` came from [`export`] in
/// another process; the mapping is closed with [`close`] once, after the
/// last use, on this context. A handle is opened at most once per process.
pub unsafe fn open(handle: &[u8; HANDLE_BYTES]) -> Result<sys::CUdeviceptr, DriverError> {
    let handle = sys::CUipcMemHandle_st { reserved: handle.map(|b| b as core::ffi::c_char) };
    let mut ptr = 0;
    let lazy = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
    // SAFETY: caller contract; `ptr` is a valid out-pointer.
    unsafe { sys::cuIpcOpenMemHandle_v2(&mut ptr, handle, lazy) }.result()?;
    Ok(ptr)
}

/// Unmaps an allocation mapped by [`open`].
///
/// # Safety
/// `ptr` came from [`open`] on the context bound to this thread, is closed
/// once, and no queued work still uses it.
pub unsafe fn close(ptr: sys::CUdeviceptr) -> Result<(), DriverError> {
    // SAFETY: caller contract.
    unsafe { sys::cuIpcCloseMemHandle(ptr) }.result()
}

/// Bytes of the allocation `ptr` lies in (from its base): how big a mapping
/// another process handed over really is.
///
/// # Safety
/// A context is bound to this thread; `ptr` is one of its device addresses.
pub unsafe fn allocation_bytes(ptr: sys::CUdeviceptr) -> Result<usize, DriverError> {
    let (mut base, mut bytes) = (0, 0);
    // SAFETY: caller contract; valid out-pointers.
    unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut bytes, ptr) }.result()?;
    Ok(bytes - (ptr - base) as usize)
}
