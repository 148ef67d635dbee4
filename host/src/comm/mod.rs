//! The [`Communicator`]: one rank per GPU of this process, peer-mapped
//! staging and flag memory, one stream per rank, and the all-reduce entry
//! points (layer 6).
//!
//! # Ordering contract (as NCCL's)
//! Every rank must issue the same sequence of collectives (same lengths,
//! same configuration). Ranks that disagree are caught by the entry barrier's
//! tag check ([`Error::CollectiveMismatch`]) or by the watchdog
//! ([`Error::PeerTimeout`]); kernels report both through a device error word
//! that [`Communicator::synchronize`] turns into a typed error.
//!
//! # Streams
//! Collectives run on the communicator's stream of each rank, so two
//! collectives of one communicator never run concurrently (hazard H9). The
//! `CudaSlice` entry points order themselves after earlier work on the
//! buffers through cudarc's events; the raw entry point orders itself after
//! the caller's stream and makes the caller's stream wait for it.
//!
//! # Files
//! This file: the types, the entry points and error handling; `setup.rs`:
//! creation (contexts, peer access, buffers, residency); `launch.rs`: the
//! kernel launches of one rank's call (arguments, pieces, grid);
//! `tuning.rs`: the measured `Auto` thresholds.
mod launch;
mod setup;
mod tuning;

use crate::config::{Algorithm, Config, Quantization, Thresholds, Transport};
use crate::device::PeerBuffer;
use crate::element::HostElement;
use crate::error::{Error, Result};
use crate::kernels::Kernel;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashcomm_kernels::abi::{sync_area, CollectiveArgs, ErrorWord, MAX_WORLD};
use flashcomm_kernels::codec::Dtype;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Group size the unquantized two-shot uses to cut shards (any multiple of
/// 16 works; 256 keeps shards aligned for every quantized group size too).
const RAW_SHARD_UNIT: usize = 256;
/// Per-call overrides of the communicator's [`Config`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CallOptions {
    /// Algorithm for this call.
    pub algorithm: Option<Algorithm>,
    /// Quantization for this call.
    pub quantization: Option<Quantization>,
    /// Link direction of the two-shot phases for this call.
    pub transport: Option<Transport>,
    /// Benchmark diagnostics only: `flashcomm_kernels::abi::Transport::DIAG_*`
    /// bits that skip a phase's data work (the result is then wrong).
    #[doc(hidden)]
    pub diagnostic_skip: u32,
}

/// What one call runs, resolved from config, options and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Unquantized one-shot.
    OneShot,
    /// Two-shot with this quantization (`None` = unquantized two-shot).
    TwoShot(Quantization),
    /// NCCL's all-reduce (the fallback).
    Nccl,
}

impl Plan {
    /// The algorithm this plan runs.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Plan::OneShot => Algorithm::OneShot,
            Plan::TwoShot(Quantization::None) => Algorithm::TwoShot,
            Plan::TwoShot(_) => Algorithm::Flash,
            Plan::Nccl => Algorithm::Nccl,
        }
    }
}

struct Rank {
    device: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<Kernel, CudaFunction>,
    /// This rank's kernel arguments with every per-communicator field filled
    /// in (peer pointers, rank, world, stride); a call sets the rest.
    args: CollectiveArgs,
    staging_in: PeerBuffer,
    staging_out: PeerBuffer,
    /// The one-shot kernel's buffer (two slots of `world` regions,
    /// `oneshot_stride` bytes apart), written by every rank.
    oneshot: PeerBuffer,
    sync: PeerBuffer,
    /// Serialises launches on this rank (one host thread at a time).
    launch: Mutex<()>,
}

/// A group of GPUs of this process that all-reduce together; see the
/// [module docs](self).
pub struct Communicator {
    ranks: Vec<Rank>,
    config: Config,
    thresholds: Thresholds,
    /// Blocks every rank can keep resident at once, per kernel (the minimum
    /// over ranks, so every rank launches the same grid).
    resident_blocks: HashMap<Kernel, u32>,
    /// Every rank's one-shot buffer, in rank order, and the bytes between
    /// its regions.
    oneshot_buffers: [u64; MAX_WORLD],
    oneshot_stride: usize,
    /// The grid of every one-shot launch, bf16 and f16 alike.
    oneshot_grid: u32,
    gpu_name: String,
    poisoned: Mutex<Option<String>>,
    #[cfg(feature = "nccl")]
    nccl: Option<crate::nccl::NcclComms>,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("devices", &self.devices())
            .field("gpu", &self.gpu_name)
            .field("config", &self.config)
            .finish()
    }
}

impl Communicator {
    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    /// Device ordinals in rank order.
    pub fn devices(&self) -> Vec<usize> {
        self.ranks.iter().map(|r| r.device).collect()
    }

    /// The GPU model (as the driver names rank 0's device).
    pub fn gpu_name(&self) -> &str {
        &self.gpu_name
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The `Auto` thresholds in use.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Rank `rank`'s context (allocate its buffers there).
    pub fn context(&self, rank: usize) -> Result<&Arc<CudaContext>> {
        Ok(&self.rank(rank)?.ctx)
    }

    /// Rank `rank`'s stream, on which its collectives run.
    pub fn stream(&self, rank: usize) -> Result<&Arc<CudaStream>> {
        Ok(&self.rank(rank)?.stream)
    }

    /// Whether NCCL communicators exist for the fallback.
    pub fn has_nccl(&self) -> bool {
        #[cfg(feature = "nccl")]
        {
            self.nccl.is_some()
        }
        #[cfg(not(feature = "nccl"))]
        {
            false
        }
    }

    fn rank(&self, rank: usize) -> Result<&Rank> {
        self.ranks.get(rank).ok_or(Error::NoSuchRank { rank, world: self.ranks.len() })
    }

    /// The plan a call with `len` elements of `dtype` would run.
    pub fn plan(&self, len: usize, dtype: Dtype, opts: &CallOptions) -> Result<Plan> {
        let quant = opts.quantization.unwrap_or(self.config.quantization);
        quant.validate()?;
        let bytes = len * dtype.size();
        Ok(match opts.algorithm.unwrap_or(self.config.algorithm) {
            Algorithm::OneShot => Plan::OneShot,
            Algorithm::TwoShot => Plan::TwoShot(Quantization::None),
            Algorithm::Flash => {
                if quant == Quantization::None {
                    return Err(Error::InvalidConfig("Algorithm::Flash needs a Quantization::Int setting".into()));
                }
                Plan::TwoShot(quant)
            }
            Algorithm::Nccl => {
                if !self.has_nccl() {
                    return Err(Error::Nccl("NCCL is not available to this communicator (feature `nccl`, libnccl.so, Config::nccl_fallback)".into()));
                }
                Plan::Nccl
            }
            Algorithm::Auto => {
                let t = &self.thresholds;
                if bytes <= t.oneshot_max_bytes {
                    Plan::OneShot
                } else if quant != Quantization::None && bytes >= t.flash_min_bytes {
                    Plan::TwoShot(quant)
                } else if bytes >= t.nccl_min_bytes && self.has_nccl() {
                    Plan::Nccl
                } else {
                    Plan::TwoShot(Quantization::None)
                }
            }
        })
    }

    fn check_usable(&self) -> Result<()> {
        match &*self.poisoned.lock().unwrap() {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// All-reduce `inputs[r]` into `outputs[r]` for every rank, from one call.
    /// Asynchronous: [`Communicator::synchronize`] waits and reports watchdog errors.
    pub fn all_reduce<T: HostElement>(&self, inputs: &[CudaSlice<T>], outputs: &mut [CudaSlice<T>]) -> Result<()> {
        self.all_reduce_with(inputs, outputs, &CallOptions::default())
    }

    /// [`Communicator::all_reduce`] with per-call options.
    pub fn all_reduce_with<T: HostElement>(
        &self,
        inputs: &[CudaSlice<T>],
        outputs: &mut [CudaSlice<T>],
        opts: &CallOptions,
    ) -> Result<()> {
        self.check_usable()?;
        let world = self.world_size();
        for got in [inputs.len(), outputs.len()] {
            if got != world {
                return Err(Error::BufferCount { world, got });
            }
        }
        let len = inputs[0].len();
        for r in 0..world {
            self.check_buffer(r, &inputs[r], len)?;
            if outputs[r].len() != inputs[r].len() {
                return Err(Error::OutputLength { rank: r, input: inputs[r].len(), output: outputs[r].len() });
            }
            self.check_buffer(r, &outputs[r], len)?;
        }
        let plan = self.plan(len, T::DTYPE, opts)?;
        if len == 0 {
            return Ok(());
        }
        self.one_thread_issues_all(plan, || {
            for (r, (input, output)) in inputs.iter().zip(outputs.iter_mut()).enumerate() {
                let stream = &self.ranks[r].stream;
                let (src, _read) = input.device_ptr(stream);
                let (dst, _write) = output.device_ptr_mut(stream);
                self.launch_rank(r, src, dst, len, T::DTYPE, plan, opts)?;
            }
            Ok(())
        })
    }

    /// In-place all-reduce of `buffers[r]` for every rank, from one call.
    pub fn all_reduce_in_place<T: HostElement>(&self, buffers: &mut [CudaSlice<T>]) -> Result<()> {
        self.all_reduce_in_place_with(buffers, &CallOptions::default())
    }

    /// [`Communicator::all_reduce_in_place`] with per-call options.
    pub fn all_reduce_in_place_with<T: HostElement>(&self, buffers: &mut [CudaSlice<T>], opts: &CallOptions) -> Result<()> {
        self.check_usable()?;
        let world = self.world_size();
        if buffers.len() != world {
            return Err(Error::BufferCount { world, got: buffers.len() });
        }
        let len = buffers[0].len();
        for (r, b) in buffers.iter().enumerate() {
            self.check_buffer(r, b, len)?;
        }
        let plan = self.plan(len, T::DTYPE, opts)?;
        if len == 0 {
            return Ok(());
        }
        self.one_thread_issues_all(plan, || {
            for (r, buf) in buffers.iter_mut().enumerate() {
                let (ptr, _write) = buf.device_ptr_mut(&self.ranks[r].stream);
                self.launch_rank(r, ptr, ptr, len, T::DTYPE, plan, opts)?;
            }
            Ok(())
        })
    }

    /// One rank's part of an all-reduce, for engines that drive each GPU from
    /// its own thread. Every rank must make the matching call.
    ///
    /// When the call may go to NCCL (`Algorithm::Nccl`, or `Auto` with
    /// `Config::nccl_fallback` at sizes from `Thresholds::nccl_min_bytes`),
    /// each rank's call must come from its own thread: NCCL blocks a thread
    /// that issues several ranks' calls outside a group. From one thread, use
    /// [`Communicator::all_reduce`] / [`Communicator::all_reduce_in_place`].
    pub fn all_reduce_rank<T: HostElement>(
        &self,
        rank: usize,
        input: &CudaSlice<T>,
        output: &mut CudaSlice<T>,
        opts: &CallOptions,
    ) -> Result<()> {
        self.check_usable()?;
        let r = self.rank(rank)?;
        self.check_buffer(rank, input, input.len())?;
        if output.len() != input.len() {
            return Err(Error::OutputLength { rank, input: input.len(), output: output.len() });
        }
        self.check_buffer(rank, output, input.len())?;
        let plan = self.plan(input.len(), T::DTYPE, opts)?;
        if input.is_empty() {
            return Ok(());
        }
        let (src, _read) = input.device_ptr(&r.stream);
        let (dst, _write) = output.device_ptr_mut(&r.stream);
        self.launch_rank(rank, src, dst, input.len(), T::DTYPE, plan, opts)
    }

    /// In-place variant of [`Communicator::all_reduce_rank`].
    pub fn all_reduce_rank_in_place<T: HostElement>(&self, rank: usize, buffer: &mut CudaSlice<T>, opts: &CallOptions) -> Result<()> {
        self.check_usable()?;
        let r = self.rank(rank)?;
        self.check_buffer(rank, buffer, buffer.len())?;
        let plan = self.plan(buffer.len(), T::DTYPE, opts)?;
        if buffer.is_empty() {
            return Ok(());
        }
        let len = buffer.len();
        let (ptr, _write) = buffer.device_ptr_mut(&r.stream);
        self.launch_rank(rank, ptr, ptr, len, T::DTYPE, plan, opts)
    }

    /// Raw entry point for engines that manage their own memory: all-reduce
    /// `len` elements of `dtype` from `input` to `output` (may be equal) for
    /// rank `rank`, ordered after the work already queued on `stream`; `stream`
    /// then waits for the collective.
    ///
    /// # Safety
    /// 1. `input` and `output` are device addresses on rank `rank`'s GPU with
    ///    `len` elements each, 16-byte aligned (checked), either identical or
    ///    non-overlapping (checked).
    /// 2. `stream` is a live stream of that GPU's primary context.
    /// 3. The buffers stay allocated until the collective completes.
    pub unsafe fn all_reduce_raw(
        &self,
        rank: usize,
        input: u64,
        output: u64,
        len: usize,
        dtype: Dtype,
        stream: sys::CUstream,
        opts: &CallOptions,
    ) -> Result<()> {
        self.check_usable()?;
        let r = self.rank(rank)?;
        for (what, ptr) in [("input", input), ("output", output)] {
            if ptr % 16 != 0 {
                return Err(Error::Misaligned { rank, what, ptr, align: 16 });
            }
        }
        let bytes = (len * dtype.size()) as u64;
        if input != output && input < output + bytes && output < input + bytes {
            return Err(Error::InvalidConfig(format!(
                "rank {rank}: input and output overlap without being identical"
            )));
        }
        let plan = self.plan(len, dtype, opts)?;
        if len == 0 {
            return Ok(());
        }
        r.ctx.bind_to_thread()?;
        // SAFETY: caller contract 2 (a live stream of this context).
        let user = unsafe { r.ctx.wrap_borrowed_stream(stream) };
        r.stream.join(&user)?;
        self.launch_rank(rank, input, output, len, dtype, plan, opts)?;
        user.join(&r.stream)?;
        Ok(())
    }

    /// Runs `f`, which issues every rank's call from this thread; NCCL needs
    /// a group around such calls.
    fn one_thread_issues_all(&self, plan: Plan, f: impl FnOnce() -> Result<()>) -> Result<()> {
        #[cfg(feature = "nccl")]
        if plan == Plan::Nccl {
            return crate::nccl::NcclComms::group(f);
        }
        let _ = plan;
        f()
    }

    fn check_buffer<T>(&self, rank: usize, buf: &CudaSlice<T>, len: usize) -> Result<()> {
        let expected = self.ranks[rank].device;
        if buf.ordinal() != expected {
            return Err(Error::WrongDevice { rank, found: buf.ordinal(), expected });
        }
        if buf.len() != len {
            return Err(Error::LengthMismatch { rank, len: buf.len(), expected: len });
        }
        Ok(())
    }

    /// Waits for every rank's queued collectives and reports the first
    /// watchdog or mismatch error (which then poisons the communicator until
    /// [`Communicator::recover`]).
    pub fn synchronize(&self) -> Result<()> {
        let mut first = None;
        for rank in 0..self.world_size() {
            if let Err(e) = self.synchronize_rank(rank) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits for one rank's queued collectives; see [`Communicator::synchronize`].
    pub fn synchronize_rank(&self, rank: usize) -> Result<()> {
        let r = self.rank(rank)?;
        r.stream.synchronize()?;
        let mut word = [0u32];
        r.sync.read_words(sync_area::ERROR, &mut word)?;
        let err = ErrorWord(word[0]);
        let error = match err.kind() {
            0 => return Ok(()),
            ErrorWord::KIND_MISMATCH => {
                Error::CollectiveMismatch { rank, peer: err.peer() as usize, block: err.block() as usize }
            }
            _ => Error::PeerTimeout {
                rank,
                peer: err.peer() as usize,
                phase: if err.phase() == 0 { "entry" } else { "second" },
                block: err.block() as usize,
            },
        };
        self.poisoned.lock().unwrap().get_or_insert_with(|| error.to_string());
        Err(error)
    }

    /// Makes the communicator usable again after a watchdog or mismatch
    /// error: waits for every rank's stream, then resets every rank's flags,
    /// tags, epochs and error word (no kernel runs then, so no peer can race
    /// the reset; every rank's launch lock is held throughout, so no other
    /// thread queues one meanwhile). Calls captured in CUDA graphs must not
    /// be replayed concurrently.
    pub fn recover(&self) -> Result<()> {
        let _no_launches: Vec<_> = self.ranks.iter().map(|r| r.launch.lock().unwrap()).collect();
        for r in &self.ranks {
            r.stream.synchronize()?;
        }
        for r in &self.ranks {
            r.sync.zero()?;
        }
        *self.poisoned.lock().unwrap() = None;
        Ok(())
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // Buffers must outlive queued kernels; errors are recorded by cudarc.
        for r in &self.ranks {
            let synced = r.stream.synchronize();
            r.ctx.record_err(synced);
        }
    }
}

