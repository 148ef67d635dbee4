//! The codec on one GPU: the `codec_quantize_*` / `codec_dequantize_*`
//! kernels, for the bit-exactness tests against [`reference`](crate::reference).
use crate::driver;
use crate::element::HostElement;
use crate::error::{Error, Result};
use crate::kernels::{KernelImage, LoadedKernels};
use crate::reference::blob_layout;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashcomm_kernels::abi::{THREADS, TILE_ELEMS};
use flashcomm_kernels::codec::{Bits, GroupSize, Spikes};
use flashcomm_kernels::entry::KernelId;
use std::sync::Arc;

/// The codec kernels loaded on one GPU.
pub struct GpuCodec {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: LoadedKernels,
}

impl GpuCodec {
    /// Loads the codec kernels of `image` on `device`.
    pub fn new(device: usize, image: &KernelImage) -> Result<Self> {
        if device >= crate::gpu_count() {
            return Err(Error::NoSuchDevice { device, count: crate::gpu_count() });
        }
        let ctx = CudaContext::new(device)?;
        let stream = ctx.new_stream()?;
        let kernels = LoadedKernels::load(&ctx, image)?;
        Ok(Self { ctx, stream, kernels })
    }

    /// The context (allocate buffers here).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream the kernels run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bytes of the blob for `len` elements.
    pub fn blob_bytes(len: usize, bits: Bits, group_size: GroupSize, spikes: Spikes) -> usize {
        blob_layout(len, bits, group_size, spikes).total_bytes()
    }

    fn launch(&self, kernel: KernelId, a: u64, len: usize, (bits, group_size, spikes): (Bits, GroupSize, Spikes), b: u64) -> Result<()> {
        let tiles = blob_layout(len, bits, group_size, spikes).slots().div_ceil(TILE_ELEMS);
        let blocks = tiles.clamp(1, 4096) as u32;
        let (mut a, mut n, mut g, mut bits, mut k, mut b) = (a, len as u64, group_size.get() as u32, bits.bits(), spikes.get() as u32, b);
        let mut params = [
            &mut a as *mut u64 as *mut std::ffi::c_void,
            &mut n as *mut u64 as *mut std::ffi::c_void,
            &mut g as *mut u32 as *mut std::ffi::c_void,
            &mut bits as *mut u32 as *mut std::ffi::c_void,
            &mut k as *mut u32 as *mut std::ffi::c_void,
            &mut b as *mut u64 as *mut std::ffi::c_void,
        ];
        self.ctx.bind_to_thread()?;
        // SAFETY: the context is bound; the codec kernels take
        // (ptr, u64, u32, u32, u32, ptr); the callers pass buffers sized for `len`
        // elements and the blob layout, ordered on this stream.
        unsafe { driver::launch::launch_with_params(self.kernels.get(kernel)?.handle(), blocks, THREADS, self.stream.cu_stream(), &mut params)? };
        Ok(())
    }

    /// Quantizes `input` into `blob` (one shard, groups from element 0).
    pub fn quantize<T: HostElement>(&self, input: &CudaSlice<T>, step: (Bits, GroupSize, Spikes), blob: &mut CudaSlice<u8>) -> Result<()> {
        let needed = Self::blob_bytes(input.len(), step.0, step.1, step.2);
        if blob.len() < needed {
            return Err(Error::BufferTooSmall { what: "blob", bytes: blob.len(), needed });
        }
        let (src, _r) = input.device_ptr(&self.stream);
        let (dst, _w) = blob.device_ptr_mut(&self.stream);
        self.launch(KernelId::CodecQuantize(T::DTYPE), src, input.len(), step, dst)
    }

    /// Decodes `blob` into `output`.
    pub fn dequantize<T: HostElement>(&self, blob: &CudaSlice<u8>, step: (Bits, GroupSize, Spikes), output: &mut CudaSlice<T>) -> Result<()> {
        let needed = Self::blob_bytes(output.len(), step.0, step.1, step.2);
        if blob.len() < needed {
            return Err(Error::BufferTooSmall { what: "blob", bytes: blob.len(), needed });
        }
        let len = output.len();
        let (src, _r) = blob.device_ptr(&self.stream);
        let (dst, _w) = output.device_ptr_mut(&self.stream);
        self.launch(KernelId::CodecDequantize(T::DTYPE), src, len, step, dst)
    }
}
