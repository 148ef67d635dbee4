//! [`PeerBuffer`]: checked RAII device memory over the [`driver`] layer.
use crate::driver;
use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaStream};
use std::sync::Arc;

/// Device memory from `cuMemAlloc` that peer GPUs can map once peer access
/// is enabled: the communicator's staging and flag buffers.
#[derive(Debug)]
pub struct PeerBuffer {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl PeerBuffer {
    /// Allocates `bytes` (at least 256) on `ctx`'s device, zeroed on `stream`
    /// (which is waited for).
    pub fn zeroed(ctx: &Arc<CudaContext>, bytes: usize, stream: &CudaStream) -> Result<Self> {
        let bytes = bytes.max(256);
        ctx.bind_to_thread()?;
        // SAFETY: the context is bound; freed in Drop on the same context.
        let ptr = unsafe { driver::memory::alloc(bytes)? };
        let buf = Self { ctx: ctx.clone(), ptr, bytes };
        buf.zero(stream)?;
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

    /// Sets every byte to 0: queued on `stream` (a stream of this buffer's
    /// context), after its earlier work, and waited for.
    pub fn zero(&self, stream: &CudaStream) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // SAFETY: our own allocation; `stream` belongs to its context (checked
        // by the driver); waited for below.
        unsafe { driver::memory::memset_async(self.ptr, 0, self.bytes, stream.cu_stream())? };
        stream.synchronize()?;
        Ok(())
    }

    fn check_words(&self, offset: usize, words: usize) -> Result<()> {
        let end = offset.checked_add(words).and_then(|e| e.checked_mul(4)).ok_or(Error::Overflow { what: "a word range" })?;
        if end > self.bytes {
            return Err(Error::BufferTooSmall { what: "peer buffer", bytes: self.bytes, needed: end });
        }
        Ok(())
    }

    /// Reads `out.len()` words starting at word `offset`, on `stream` after
    /// its earlier work, and waits for them.
    pub fn read_words(&self, stream: &CudaStream, offset: usize, out: &mut [u32]) -> Result<()> {
        self.check_words(offset, out.len())?;
        self.ctx.bind_to_thread()?;
        // SAFETY: in bounds (checked above) of our own allocation; `out`
        // outlives the copy (waited for below).
        unsafe { driver::memory::read_words_async(out, self.ptr + 4 * offset as u64, stream.cu_stream())? };
        stream.synchronize()?;
        Ok(())
    }

    /// Writes `words` starting at word `offset`, on `stream` after its
    /// earlier work, and waits for them.
    pub fn write_words(&self, stream: &CudaStream, offset: usize, words: &[u32]) -> Result<()> {
        self.check_words(offset, words.len())?;
        self.ctx.bind_to_thread()?;
        // SAFETY: in bounds (checked above) of our own allocation; `words`
        // outlives the copy (waited for below).
        unsafe { driver::memory::write_words_async(self.ptr + 4 * offset as u64, words, stream.cu_stream())? };
        stream.synchronize()?;
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
            unsafe { driver::memory::free(self.ptr) }
        });
        self.ctx.record_err(freed);
    }
}
