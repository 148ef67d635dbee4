//! Checked RAII device memory over the [`driver`] layer: [`PeerBuffer`]
//! (this process's, mapped by peers) and [`ImportedBuffer`] (another
//! process's, mapped here through CUDA IPC).
use crate::driver;
use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaStream};
use std::sync::Arc;

/// Device memory from `cuMemAlloc` that peer GPUs can map once peer access
/// is enabled, and other processes through CUDA IPC: the communicator's
/// staging and flag buffers.
#[derive(Debug)]
pub struct PeerBuffer {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl PeerBuffer {
    /// Allocates `bytes` rounded up to [`IPC_GRANULE`] on `ctx`'s device,
    /// zeroed on `stream` (which is waited for).
    pub fn zeroed(ctx: &Arc<CudaContext>, bytes: usize, stream: &CudaStream) -> Result<Self> {
        let bytes = bytes.max(1).checked_next_multiple_of(IPC_GRANULE).ok_or(Error::Overflow { what: "a buffer size" })?;
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

    /// The IPC handle another process opens with [`ImportedBuffer::open`].
    pub fn export(&self) -> Result<[u8; driver::ipc::HANDLE_BYTES]> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the base of our own live allocation, its context bound.
        Ok(unsafe { driver::ipc::export(self.ptr)? })
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

/// Allocation sizes are multiples of this: an IPC handle shares the whole
/// allocation the driver placed a buffer in, so a buffer that filled only
/// part of a 2 MiB page could expose its neighbours, or map twice
/// (docs/multi-process.md, exports).
pub const IPC_GRANULE: usize = 2 << 20;

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

/// Another process's [`PeerBuffer`], mapped into this process through CUDA
/// IPC; unmapped on drop.
#[derive(Debug)]
pub struct ImportedBuffer {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
}

impl ImportedBuffer {
    /// Maps the buffer of `handle` into `ctx` and checks that it holds at
    /// least `bytes` (the handle is another process's word: a mapping
    /// smaller than the layout both sides computed is refused, not used).
    ///
    /// # Safety
    /// `handle` was made by [`PeerBuffer::export`] in another process, and
    /// this process opens it once.
    pub unsafe fn open(ctx: &Arc<CudaContext>, handle: &[u8; driver::ipc::HANDLE_BYTES], bytes: usize) -> Result<Self> {
        ctx.bind_to_thread()?;
        // SAFETY: the context is bound; caller contract for the handle;
        // closed in Drop.
        let ptr = unsafe { driver::ipc::open(handle)? };
        let buf = Self { ctx: ctx.clone(), ptr };
        // SAFETY: the context is bound; `ptr` was just mapped into it.
        let mapped = unsafe { driver::ipc::allocation_bytes(ptr)? };
        if mapped < bytes {
            return Err(Error::BufferTooSmall { what: "peer process's buffer", bytes: mapped, needed: bytes });
        }
        Ok(buf)
    }

    /// Its address in this process.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for ImportedBuffer {
    fn drop(&mut self) {
        let closed = self.ctx.bind_to_thread().and_then(|_| {
            // SAFETY: mapped by `open` on this context, closed once; the
            // communicator synchronises its streams before dropping mappings.
            unsafe { driver::ipc::close(self.ptr) }
        });
        self.ctx.record_err(closed);
    }
}
