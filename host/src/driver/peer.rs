//! Peer access between GPUs (`cuDeviceCanAccessPeer`, `cuCtxEnablePeerAccess`).
use cudarc::driver::{result::DriverError, sys};

/// Whether `dev` can map memory of `peer` (as the driver reports it; the
/// communicator then probes it for real).
pub fn can_access(dev: sys::CUdevice, peer: sys::CUdevice) -> Result<bool, DriverError> {
    let mut can = 0;
    // SAFETY: `can` is a valid out-pointer; devices come from cuDeviceGet.
    unsafe { sys::cuDeviceCanAccessPeer(&mut can, dev, peer) }.result()?;
    Ok(can != 0)
}

/// Lets the context bound to this thread access `peer_ctx`'s allocations.
/// Idempotent: an already enabled pair is not an error.
///
/// # Safety
/// The caller's context must be bound to this thread and `peer_ctx` must be a
/// live context of another device.
pub unsafe fn enable(peer_ctx: sys::CUcontext) -> Result<(), DriverError> {
    // SAFETY: caller contract; flags must be 0.
    match unsafe { sys::cuCtxEnablePeerAccess(peer_ctx, 0) } {
        sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => Ok(()),
        status => status.result(),
    }
}
