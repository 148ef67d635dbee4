//! A stream the communicator owns without touching the caller's
//! `CudaContext` object: `CudaContext::new_stream` would switch a context
//! an engine handed over (`Communicator::from_streams`) into cudarc's
//! multi-stream mode, which changes how its `CudaSlice`s synchronise.
use cudarc::driver::{result, result::DriverError, CudaContext, CudaStream};
use std::sync::Arc;

/// A non-blocking stream, destroyed on drop.
#[derive(Debug)]
pub struct OwnedStream {
    stream: Arc<CudaStream>,
}

impl OwnedStream {
    /// Creates a non-blocking stream on `ctx`.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, DriverError> {
        ctx.bind_to_thread()?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)?;
        // SAFETY: `raw` is a live stream of `ctx`, destroyed only in Drop,
        // after the wrapper (which this type never hands out by value) is
        // gone; work on it is ordered by its users.
        let stream = unsafe { ctx.wrap_borrowed_stream(raw) };
        Ok(Self { stream })
    }

    /// The stream.
    pub fn stream(&self) -> &CudaStream {
        &self.stream
    }
}

impl Drop for OwnedStream {
    fn drop(&mut self) {
        let ctx = self.stream.context().clone();
        let raw = self.stream.cu_stream();
        let destroyed = ctx.bind_to_thread().and_then(|_| {
            // SAFETY: created by `new`, destroyed once; the driver releases
            // it once its queued work is done.
            unsafe { result::stream::destroy(raw) }
        });
        ctx.record_err(destroyed);
    }
}
