//! candle adapter of flashcomm: the all-reduce of a tensor-parallel layer
//! on candle CUDA tensors.
//!
//! ```ignore
//! // One communicator over the engine's devices (on their streams), then
//! // on each GPU's thread, after its row-parallel matmul:
//! let comm = Arc::new(flashcomm_candle::communicator(&devices, Config::default())?);
//! let all_reduce = flashcomm_candle::AllReduce::new(comm.clone(), rank, CallOptions::default());
//! let y = all_reduce.apply(&partial)?;   // the sum over every rank's `partial`
//! ```
//!
//! The op runs flashcomm's per-rank entry point
//! ([`Communicator::all_reduce_rank`]): every rank makes the same calls in
//! the same order, each rank from one thread at a time (flashcomm's call
//! order). It returns a new tensor; the input is not changed.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Layout, Shape, Tensor};
use flashcomm::{CallOptions, Communicator, Config, KERNELS};
use half::{bf16, f16};
use std::sync::Arc;

/// A communicator with one rank per candle device, in this order. It runs
/// on the devices' own streams ([`Communicator::from_streams`]) so that
/// calls are ordered with candle's kernels by the stream; when candle uses
/// the per-thread default stream (a different stream on every thread), it
/// runs on streams of its own and orders each call with candle's stream by
/// events ([`Communicator::new`]).
pub fn communicator(devices: &[CudaDevice], config: Config) -> flashcomm::Result<Communicator> {
    let streams: Vec<_> = devices.iter().map(|d| d.cuda_stream()).collect();
    // The driver's handle of the per-thread default stream (`CU_STREAM_PER_THREAD`).
    let per_thread = streams.iter().any(|s| s.cu_stream() as usize == 0x2);
    if per_thread {
        let ordinals: Vec<usize> = streams.iter().map(|s| s.context().ordinal()).collect();
        Communicator::new(&ordinals, config, &KERNELS)
    } else {
        Communicator::from_streams(&streams, config, &KERNELS)
    }
}

/// The all-reduce of rank `rank`'s tensor as a candle op (bf16 or f16,
/// contiguous, on the rank's GPU).
#[derive(Clone, Debug)]
pub struct AllReduce {
    comm: Arc<Communicator>,
    rank: usize,
    options: CallOptions,
}

impl AllReduce {
    /// The op of rank `rank` of `comm`, with per-call `options`
    /// (algorithm, quantization).
    pub fn new(comm: Arc<Communicator>, rank: usize, options: CallOptions) -> Self {
        Self { comm, rank, options }
    }

    /// The sum of `x` over every rank (each rank calls this with its own `x`).
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }

    fn reduce<T: flashcomm::HostElement + candle_core::cuda_backend::CudaDType>(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("flashcomm all-reduce: the tensor must be contiguous".into()))?;
        let device = storage.device().clone();
        let input = storage.as_cuda_slice::<T>()?.slice(start..end);
        // SAFETY: every element is written by the all-reduce before any read
        // (the output is ordered after the call on the device's stream).
        let mut output = unsafe { device.alloc::<T>(end - start) }?;
        self.comm.all_reduce_rank(self.rank, &input, &mut output, &self.options).map_err(candle_core::Error::wrap)?;
        Ok(CudaStorage::wrap_cuda_slice(output, device))
    }
}

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "flashcomm-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("flashcomm all-reduces CUDA tensors; this one is on the CPU")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let out = match storage.dtype() {
            DType::BF16 => self.reduce::<bf16>(storage, layout)?,
            DType::F16 => self.reduce::<f16>(storage, layout)?,
            other => candle_core::bail!("flashcomm all-reduces bf16 and f16 tensors, not {other:?}"),
        };
        Ok((out, layout.shape().clone()))
    }
}
