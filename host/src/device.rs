//! Checked RAII wrappers over [`raw`](crate::raw) (layer 5).
use crate::error::Result;
use crate::raw;
use cudarc::driver::{sys, CudaContext};
use std::sync::Arc;

/// Number of CUDA GPUs visible to this process; 0 without a driver. Never panics.
pub fn gpu_count() -> usize {
    raw::device_count()
}

/// Device memory from `cuMemAlloc` that peer GPUs can map once peer access
/// is enabled: the communicator's staging and flag buffers.
#[derive(Debug)]
pub struct PeerBuffer {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl PeerBuffer {
    /// Allocates `bytes` (at least 1) on `ctx`'s device, zeroed.
    pub fn zeroed(ctx: &Arc<CudaContext>, bytes: usize) -> Result<Self> {
        let bytes = bytes.max(256);
        ctx.bind_to_thread()?;
        // SAFETY: the context is bound; freed in Drop on the same context.
        let ptr = unsafe { raw::memory::alloc(bytes)? };
        let buf = Self { ctx: ctx.clone(), ptr, bytes };
        buf.zero()?;
        Ok(buf)
    }

    /// The device address (valid on peers with access enabled).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sets every byte to 0 (synchronously).
    pub fn zero(&self) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // SAFETY: our own allocation; callers zero only when no kernel runs.
        unsafe { raw::memory::memset(self.ptr, 0, self.bytes)? };
        Ok(())
    }

    /// Reads `out.len()` words starting at word `offset`.
    pub fn read_words(&self, offset: usize, out: &mut [u32]) -> Result<()> {
        assert!((offset + out.len()) * 4 <= self.bytes, "read past the end of a PeerBuffer");
        self.ctx.bind_to_thread()?;
        // SAFETY: in bounds (checked above) of our own allocation.
        unsafe { raw::memory::read_words(out, self.ptr + 4 * offset as u64)? };
        Ok(())
    }

    /// Writes `words` starting at word `offset`.
    pub fn write_words(&self, offset: usize, words: &[u32]) -> Result<()> {
        assert!((offset + words.len()) * 4 <= self.bytes, "write past the end of a PeerBuffer");
        self.ctx.bind_to_thread()?;
        // SAFETY: in bounds (checked above) of our own allocation.
        unsafe { raw::memory::write_words(self.ptr + 4 * offset as u64, words)? };
        Ok(())
    }
}

impl Drop for PeerBuffer {
    fn drop(&mut self) {
        // Errors cannot propagate from Drop: cudarc keeps them on the context
        // (`check_err`), as it does for its own frees.
        let freed = self.ctx.bind_to_thread().and_then(|_| {
            // SAFETY: allocated by `zeroed` on this context, freed once; the
            // communicator synchronises its streams before dropping buffers.
            unsafe { raw::memory::free(self.ptr) }
        });
        self.ctx.record_err(freed);
    }
}
