//! The [`Communicator`]: ranks on GPUs, all in this process
//! ([`Communicator::new`]) or one per process ([`Communicator::init_rank`]),
//! peer-mapped staging and flag memory, one stream per rank, and the
//! all-reduce entry points. Everything below acts on this process's ranks
//! ([`Communicator::local_ranks`]); with one process per rank the others
//! are reached through their mapped memory and the bootstrap's connections.
//!
//! # Ordering contract (as NCCL's)
//! Every rank must issue the same sequence of collectives (same lengths,
//! same configuration), each rank's calls in one order: from one thread at
//! a time per rank (two threads issuing calls for one rank at once get
//! [`Error::ConcurrentCall`]). The all-rank entry points issue every rank's
//! launch as one unit, so any number of threads may call them. Ranks that
//! disagree are caught by the entry barrier's tag check
//! ([`Error::CollectiveMismatch`]) or by the watchdog ([`Error::PeerTimeout`]);
//! kernels report both through a device error word that
//! [`Communicator::synchronize`] turns into a typed error.
//!
//! # Failures
//! When a rank's kernel times out (a peer never came) or sees a peer enter
//! with another call, it records the error and poisons every rank; every
//! kernel checks for poison before it touches a peer and while it waits, and
//! stops. From then on, on every rank, [`Communicator::synchronize_rank`]
//! returns a typed error ([`Error::PeerTimeout`], [`Error::CollectiveMismatch`]
//! or, on a rank that learnt of another's failure, [`Error::PeerFailed`]) and
//! new calls are refused ([`Error::Poisoned`]) until [`Communicator::recover`].
//! A call that did not end in an error on its rank is bit-exact; the outputs
//! of calls queued on a rank since its last successful `synchronize_rank`
//! are undefined (not written, or written in part) when it returns an error.
//!
//! # Streams
//! Collectives run on the communicator's stream of each rank, so two
//! collectives of one rank never run concurrently (docs/design.md H9): its
//! own streams ([`Communicator::new`]) or the engine's
//! ([`Communicator::from_streams`]). A call whose buffers belong to another
//! stream (`CudaSlice::stream`), or whose raw entry point names another
//! stream, is ordered after the work queued there so far, and that stream
//! waits for the call, through explicit events: correct whether or not the
//! context is in cudarc's multi-stream mode (candle's is not). On the
//! rank's own stream no event is needed, and none is recorded. Limits:
//! - A buffer on the per-thread default stream is ordered with the
//!   per-thread stream of the thread that makes the call: make the call
//!   from the thread that wrote the buffer.
//! - The all-rank entry points order every rank first and launch after, so
//!   ranks sharing a GPU (tests) may share a buffer stream; the per-rank
//!   entry points cannot (the second rank's call would wait on a stream
//!   that waits for the first rank's kernel).
//! - While the caller captures the communicator's stream itself, buffer
//!   streams outside that capture are not joined (a capture cannot wait on
//!   work outside it): the graph's launches must follow their writers.
//!
//! # Residency
//! A call's blocks wait for the same blocks of every peer, so on every GPU
//! they must all get to run: a kernel on another stream that fills a GPU
//! delays that rank's blocks and makes its peers wait (up to the watchdog,
//! then [`Error::PeerTimeout`] on every rank, never a hang). Do not make the
//! collective wait for work that itself waits for the collective (for
//! example a spin kernel on another stream polling its output).
//!
//! # CUDA graphs
//! A call captured into a graph holds the communicator's device memory
//! (buffers and kernels) for as long as the graph exists, so replays stay
//! valid even after the communicator is dropped; the memory is freed the
//! next time a communicator is created, recovered or dropped after the
//! graph is destroyed.
//!
//! # Files
//! This file: the types, the entry points and error handling; `setup.rs`:
//! creation in one process (contexts, peer access, buffers, residency);
//! `process.rs`: creation with one process per rank (CUDA IPC, the watcher
//! of the other processes, collective `recover()` and drop); `launch.rs`: the
//! kernel launches of one rank's call (plan, arguments, pieces, grid);
//! `tuning.rs`: the measured `Auto` thresholds.
mod launch;
mod process;
mod setup;
mod tuning;

pub use launch::Plan;
use launch::Call;

use crate::config::{Algorithm, Config, Quantization, Thresholds};
use crate::element::HostElement;
use crate::error::{Error, Result};
use crate::kernels::LoadedKernels;
use crate::peer_buffer::PeerBuffer;
use cudarc::driver::{sys, CudaContext, CudaStream, DevicePtr, DevicePtrMut};
use flashcomm_kernels::abi::{sync_area, BarrierArgs, ErrorWord, Transport, MAX_WORLD};
use flashcomm_kernels::codec::Dtype;
use flashcomm_kernels::entry::KernelId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// Per-call overrides of the communicator's [`Config`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CallOptions {
    /// Algorithm for this call.
    pub algorithm: Option<Algorithm>,
    /// Quantization for this call.
    pub quantization: Option<Quantization>,
    /// Link direction of the two-step phases for this call.
    pub transport: Option<Transport>,
}

struct Rank {
    /// Its rank in the communicator (its index among this process's ranks
    /// is its place in `Communicator::ranks`).
    index: usize,
    device: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Where the host writes the abort into the sync area while kernels may
    /// still run on `stream` (`Communicator::abort_kernels`).
    abort_stream: crate::driver::stream::OwnedStream,
    /// This rank's barrier arguments with every field but the tag filled in.
    barrier: BarrierArgs,
    /// Serialises this rank's launches: one call at a time, in one order.
    launch: Mutex<()>,
}

/// Every rank's kernels and peer-mapped buffers: what a queued or captured
/// kernel refers to. Held by the communicator and by every CUDA graph that
/// captured a call, so it outlives both (`driver::graph::retain_in_graph`).
struct DeviceState {
    /// This process's ranks' buffers and kernels.
    ranks: Vec<RankMemory>,
    /// Other processes' buffers mapped here (ranks in other processes).
    imported: Vec<crate::peer_buffer::ImportedBuffer>,
    #[cfg(feature = "nccl")]
    nccl: Option<crate::nccl::NcclComms>,
}

struct RankMemory {
    kernels: LoadedKernels,
    staging_in: PeerBuffer,
    staging_out: PeerBuffer,
    /// The one-shot kernel's buffer (two slots of `world` regions,
    /// `oneshot_stride` bytes apart), written by every rank.
    oneshot: PeerBuffer,
    /// The LL one-shot's buffer (two slots of `world` regions of a line per
    /// thread of its grid, `ll_stride` bytes apart), written by every rank;
    /// zeroed with the sync area (its flags are epochs, which restart).
    ll: PeerBuffer,
    sync: PeerBuffer,
}

/// Every rank's buffers, in rank order, as the kernels address them.
#[derive(Clone, Copy, Debug)]
struct PeerPointers {
    staging_in: [u64; MAX_WORLD],
    staging_out: [u64; MAX_WORLD],
    oneshot: [u64; MAX_WORLD],
    ll: [u64; MAX_WORLD],
    /// Bytes between consecutive shard blobs in a staging buffer.
    shard_stride: usize,
    /// Bytes between consecutive regions of a one-shot buffer.
    oneshot_stride: usize,
    /// Bytes between consecutive regions of an LL buffer.
    ll_stride: usize,
}

/// A group of GPUs that all-reduce together, driven from this process
/// (every rank) or from one process per rank; see the [module docs](self).
///
/// ```no_run
/// use flashcomm::{Communicator, Config, Quantization, KERNELS};
/// use half::bf16;
/// # fn main() -> flashcomm::Result<()> {
/// // Two GPUs; INT8 allowed, so Auto picks Flash from its size threshold up.
/// let comm = Communicator::new(&[0, 1], Config { quantization: Quantization::INT8, ..Config::default() }, &KERNELS)?;
/// let mut hidden = (0..2)
///     .map(|r| Ok(comm.stream(r)?.clone_htod(&vec![bf16::from_f32(0.5); 8 << 20])?))
///     .collect::<flashcomm::Result<Vec<_>>>()?;
/// comm.all_reduce_in_place(&mut hidden)?; // queued on every rank
/// match comm.synchronize() {
///     Ok(()) => {}                                  // every rank's result is ready
///     Err(e) => { eprintln!("{e}"); comm.recover()?; } // typed, on every rank; then start over
/// }
/// # Ok(())
/// # }
/// ```
pub struct Communicator {
    /// This process's ranks: every rank of a [`Communicator::new`], one of
    /// a [`Communicator::init_rank`].
    ranks: Vec<Rank>,
    /// Ranks of the whole communicator, in every process.
    world: usize,
    /// The other processes, for a communicator of [`Communicator::init_rank`].
    group: Option<process::ProcessGroup>,
    memory: Arc<DeviceState>,
    peers: PeerPointers,
    config: Config,
    thresholds: Thresholds,
    /// Blocks every rank can keep resident at once, per kernel (the minimum
    /// over ranks, so every rank launches the same grid).
    resident_blocks: HashMap<KernelId, u32>,
    /// The grid of every one-shot launch, bf16 and f16 alike.
    oneshot_grid: u32,
    gpu_name: String,
    /// Why calls are refused until `recover()`; shared with the thread that
    /// watches the other processes.
    poisoned: Arc<Mutex<Option<String>>>,
    /// Per rank: the error word `recover()` found that the rank's host has
    /// not been told yet (0: none), and the last one it was told. A rank
    /// with a pending error refuses calls until `synchronize_rank` reports it.
    errors: Mutex<Vec<RankErrors>>,
    /// Set while `recover()` runs: launches wait for it instead of failing
    /// with `ConcurrentCall`.
    recovering: AtomicBool,
    /// Completed `recover()`s: `synchronize_rank` reads its words again
    /// when one ran while it read them.
    recoveries: AtomicU64,
    /// Held while an all-rank entry point issues every rank's launch, so two
    /// threads' calls cannot interleave ranks.
    issue_all: Mutex<()>,
}

/// What one rank's host has been told about its device errors.
#[derive(Clone, Copy, Debug, Default)]
struct RankErrors {
    pending: u32,
    reported: u32,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("world", &self.world)
            .field("local_ranks", &self.local_ranks())
            .field("devices", &self.devices())
            .field("gpu", &self.gpu_name)
            .field("config", &self.config)
            .finish()
    }
}

/// A locked mutex whether or not an earlier holder panicked: the guarded
/// data is `()` or an `Option<String>`, always valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Communicator {
    /// Number of ranks, in every process.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// The ranks this process drives, in order: every rank of a
    /// [`Communicator::new`], the one of a [`Communicator::init_rank`]. The
    /// all-rank entry points take one buffer for each of these.
    pub fn local_ranks(&self) -> Vec<usize> {
        self.ranks.iter().map(|r| r.index).collect()
    }

    /// Device ordinals of this process's ranks, in rank order.
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

    /// Which code of the kernel image rank `rank`'s GPU runs (SASS loads in
    /// milliseconds; PTX is JIT-compiled by the driver at creation).
    pub fn kernel_code(&self, rank: usize) -> Result<crate::KernelCode> {
        Ok(self.memory.ranks[self.local(rank)?].kernels.code())
    }

    /// Whether NCCL communicators exist for the fallback.
    pub fn has_nccl(&self) -> bool {
        #[cfg(feature = "nccl")]
        {
            self.memory.nccl.is_some()
        }
        #[cfg(not(feature = "nccl"))]
        {
            false
        }
    }

    fn rank(&self, rank: usize) -> Result<&Rank> {
        Ok(&self.ranks[self.local(rank)?])
    }

    /// Where rank `rank` is among this process's ranks.
    fn local(&self, rank: usize) -> Result<usize> {
        if rank >= self.world {
            return Err(Error::NoSuchRank { rank, world: self.world });
        }
        self.ranks.iter().position(|r| r.index == rank).ok_or(Error::RemoteRank { rank })
    }

    fn check_usable(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => self.processes_usable().map_err(|e| Error::Poisoned(e.to_string())),
        }
    }

    /// All-reduce `inputs[r]` into `outputs[r]` for every rank, from one call.
    /// Asynchronous: [`Communicator::synchronize`] waits and reports watchdog errors.
    ///
    /// Buffers are `CudaSlice`s or views of them (`CudaView`, `CudaViewMut`),
    /// on each rank's GPU, on any stream (module docs: Streams).
    ///
    /// ```no_run
    /// use flashcomm::{Communicator, Config, KERNELS};
    /// use half::bf16;
    /// # fn main() -> flashcomm::Result<()> {
    /// let comm = Communicator::new(&[0, 1], Config::default(), &KERNELS)?;
    /// let mut inputs = Vec::new();
    /// let mut outputs = Vec::new();
    /// for r in 0..comm.world_size() {
    ///     let stream = comm.stream(r)?;
    ///     inputs.push(stream.clone_htod(&vec![bf16::from_f32(1.0 + r as f32); 1 << 20])?);
    ///     outputs.push(stream.alloc_zeros::<bf16>(1 << 20)?);
    /// }
    /// comm.all_reduce(&inputs, &mut outputs)?;
    /// comm.synchronize()?;
    /// assert_eq!(comm.stream(0)?.clone_dtoh(&outputs[0])?[0], bf16::from_f32(3.0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn all_reduce<T: HostElement>(&self, inputs: &[impl DevicePtr<T>], outputs: &mut [impl DevicePtrMut<T>]) -> Result<()> {
        self.all_reduce_with(inputs, outputs, &CallOptions::default())
    }

    /// [`Communicator::all_reduce`] with per-call options.
    pub fn all_reduce_with<T: HostElement>(
        &self,
        inputs: &[impl DevicePtr<T>],
        outputs: &mut [impl DevicePtrMut<T>],
        opts: &CallOptions,
    ) -> Result<()> {
        self.check_usable()?;
        let locals = self.ranks.len();
        for got in [inputs.len(), outputs.len()] {
            if got != locals {
                return Err(Error::BufferCount { world: locals, got });
            }
        }
        let len = inputs[0].len();
        for r in 0..locals {
            let rank = self.ranks[r].index;
            self.check_buffer(r, inputs[r].stream(), inputs[r].len(), len)?;
            if outputs[r].len() != inputs[r].len() {
                return Err(Error::OutputLength { rank, input: inputs[r].len(), output: outputs[r].len() });
            }
            self.check_buffer(r, outputs[r].stream(), outputs[r].len(), len)?;
            let (input, output) = (buffer_address(&inputs[r]), buffer_address_mut(&mut outputs[r]));
            check_addresses(rank, input, output, len, T::DTYPE)?;
        }
        let plan = self.plan(len, T::DTYPE, opts)?;
        let foreign = (0..locals).map(|r| self.foreign_streams(r, &[inputs[r].stream(), outputs[r].stream()])).collect::<Result<Vec<_>>>()?;
        self.issue_ordered(plan, &foreign, |r| {
            let stream = &self.ranks[r].stream;
            let (src, _read) = inputs[r].device_ptr(stream);
            let (dst, _write) = outputs[r].device_ptr_mut(stream);
            self.launch(Call { local: r, input: src, output: dst, len, dtype: T::DTYPE, plan }, opts, None)
        })
    }

    /// In-place all-reduce of `buffers[r]` for every rank, from one call.
    pub fn all_reduce_in_place<T: HostElement>(&self, buffers: &mut [impl DevicePtrMut<T>]) -> Result<()> {
        self.all_reduce_in_place_with(buffers, &CallOptions::default())
    }

    /// [`Communicator::all_reduce_in_place`] with per-call options.
    ///
    /// With views, part of a bigger buffer (16-byte aligned, checked):
    ///
    /// ```no_run
    /// use flashcomm::{Algorithm, CallOptions, Communicator, Config, Quantization, KERNELS};
    /// use half::f16;
    /// # fn main() -> flashcomm::Result<()> {
    /// let comm = Communicator::new(&[0, 1], Config::default(), &KERNELS)?;
    /// let mut hidden = (0..2)
    ///     .map(|r| Ok(comm.stream(r)?.alloc_zeros::<f16>(3 * 4096)?))
    ///     .collect::<flashcomm::Result<Vec<_>>>()?;
    /// // Reduce only the second of three rows, with INT8 Flash whatever its size.
    /// let mut rows: Vec<_> = hidden.iter_mut().map(|h| h.slice_mut(4096..2 * 4096)).collect();
    /// let opts = CallOptions { algorithm: Some(Algorithm::Flash), quantization: Some(Quantization::INT8), ..Default::default() };
    /// comm.all_reduce_in_place_with(&mut rows, &opts)?;
    /// comm.synchronize()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn all_reduce_in_place_with<T: HostElement>(&self, buffers: &mut [impl DevicePtrMut<T>], opts: &CallOptions) -> Result<()> {
        self.check_usable()?;
        let locals = self.ranks.len();
        if buffers.len() != locals {
            return Err(Error::BufferCount { world: locals, got: buffers.len() });
        }
        let len = buffers[0].len();
        for (r, b) in buffers.iter_mut().enumerate() {
            self.check_buffer(r, b.stream(), b.len(), len)?;
            let ptr = buffer_address_mut(b);
            check_addresses(self.ranks[r].index, ptr, ptr, len, T::DTYPE)?;
        }
        let plan = self.plan(len, T::DTYPE, opts)?;
        let foreign = (0..locals).map(|r| self.foreign_streams(r, &[buffers[r].stream()])).collect::<Result<Vec<_>>>()?;
        self.issue_ordered(plan, &foreign, |r| {
            let (ptr, _write) = buffers[r].device_ptr_mut(&self.ranks[r].stream);
            self.launch(Call { local: r, input: ptr, output: ptr, len, dtype: T::DTYPE, plan }, opts, None)
        })
    }

    /// One rank's part of an all-reduce, for engines that drive each GPU from
    /// its own thread. Every rank must make the matching call, and each
    /// rank's calls must come from one thread at a time (module docs).
    ///
    /// When the call may go to NCCL (`Algorithm::Nccl`, or `Auto` with
    /// `Config::nccl_fallback` at sizes from `Thresholds::nccl_min_bytes`),
    /// each rank's call must come from its own thread: NCCL blocks a thread
    /// that issues several ranks' calls outside a group. From one thread, use
    /// [`Communicator::all_reduce`] / [`Communicator::all_reduce_in_place`].
    ///
    /// ```no_run
    /// use flashcomm::{CallOptions, Communicator, Config, KERNELS};
    /// use half::bf16;
    /// # fn main() -> flashcomm::Result<()> {
    /// let comm = Communicator::new(&[0, 1], Config::default(), &KERNELS)?;
    /// std::thread::scope(|s| {
    ///     for rank in 0..comm.world_size() {
    ///         let comm = &comm;
    ///         s.spawn(move || -> flashcomm::Result<()> {
    ///             let stream = comm.stream(rank)?;
    ///             let input = stream.clone_htod(&vec![bf16::ONE; 8192])?;
    ///             let mut output = stream.alloc_zeros::<bf16>(8192)?;
    ///             comm.all_reduce_rank(rank, &input, &mut output, &CallOptions::default())?;
    ///             comm.synchronize_rank(rank) // this rank's error, if any
    ///         });
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn all_reduce_rank<T: HostElement>(
        &self,
        rank: usize,
        input: &impl DevicePtr<T>,
        output: &mut impl DevicePtrMut<T>,
        opts: &CallOptions,
    ) -> Result<()> {
        self.check_usable()?;
        let local = self.local(rank)?;
        let r = &self.ranks[local];
        self.check_buffer(local, input.stream(), input.len(), input.len())?;
        if output.len() != input.len() {
            return Err(Error::OutputLength { rank, input: input.len(), output: output.len() });
        }
        self.check_buffer(local, output.stream(), output.len(), input.len())?;
        check_addresses(rank, buffer_address(input), buffer_address_mut(output), input.len(), T::DTYPE)?;
        let plan = self.plan(input.len(), T::DTYPE, opts)?;
        let _one_call_order = self.launch_lock(local)?;
        let foreign = self.foreign_streams(local, &[input.stream(), output.stream()])?;
        self.join_before(local, &foreign)?;
        let launched = {
            let (src, _read) = input.device_ptr(&r.stream);
            let (dst, _write) = output.device_ptr_mut(&r.stream);
            self.launch(Call { local, input: src, output: dst, len: input.len(), dtype: T::DTYPE, plan }, opts, None)
        };
        let joined = self.join_after(local, &foreign);
        launched.and(joined)
    }

    /// In-place variant of [`Communicator::all_reduce_rank`].
    pub fn all_reduce_rank_in_place<T: HostElement>(&self, rank: usize, buffer: &mut impl DevicePtrMut<T>, opts: &CallOptions) -> Result<()> {
        self.check_usable()?;
        let local = self.local(rank)?;
        let r = &self.ranks[local];
        let len = buffer.len();
        self.check_buffer(local, buffer.stream(), len, len)?;
        let ptr = buffer_address_mut(buffer);
        check_addresses(rank, ptr, ptr, len, T::DTYPE)?;
        let plan = self.plan(len, T::DTYPE, opts)?;
        let _one_call_order = self.launch_lock(local)?;
        let foreign = self.foreign_streams(local, &[buffer.stream()])?;
        self.join_before(local, &foreign)?;
        let launched = {
            let (ptr, _write) = buffer.device_ptr_mut(&r.stream);
            self.launch(Call { local, input: ptr, output: ptr, len, dtype: T::DTYPE, plan }, opts, None)
        };
        let joined = self.join_after(local, &foreign);
        launched.and(joined)
    }

    /// Raw entry point for engines that manage their own memory: all-reduce
    /// `len` elements of `dtype` from `input` to `output` (may be equal) for
    /// rank `rank`, ordered after the work already queued on `stream`; `stream`
    /// then waits for the collective.
    ///
    /// A call on a stream being captured into a CUDA graph is captured (each
    /// rank's graph holds its kernels); every replay is a new call of every
    /// rank, in each rank's one order. The graph holds the communicator's
    /// device memory it refers to ([module docs](self)).
    ///
    /// ```no_run
    /// use flashcomm::cudarc::driver::{DevicePtr, DevicePtrMut};
    /// use flashcomm::{CallOptions, Communicator, Config, Dtype, KERNELS};
    /// # fn main() -> flashcomm::Result<()> {
    /// let comm = Communicator::new(&[0, 1], Config::default(), &KERNELS)?;
    /// // The engine's own streams and memory (bf16 as raw 16-bit words).
    /// let streams = (0..2).map(|r| Ok(comm.context(r)?.new_stream()?)).collect::<flashcomm::Result<Vec<_>>>()?;
    /// let mut xs = streams.iter().map(|s| s.alloc_zeros::<u16>(4096)).collect::<Result<Vec<_>, _>>()?;
    /// for (rank, (x, stream)) in xs.iter_mut().zip(&streams).enumerate() {
    ///     let (ptr, _guard) = x.device_ptr_mut(stream);
    ///     // SAFETY: `x` holds 4096 16-bit elements on this rank's GPU and
    ///     // lives until the synchronize below has waited for the call.
    ///     unsafe { comm.all_reduce_raw(rank, ptr, ptr, 4096, Dtype::Bf16, stream.cu_stream(), &CallOptions::default())? };
    /// }
    /// comm.synchronize()?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Safety
    /// 1. `input` and `output` are device addresses on rank `rank`'s GPU with
    ///    `len` elements each, 16-byte aligned (checked), either identical or
    ///    non-overlapping (checked).
    /// 2. `stream` is a live stream of that GPU's primary context.
    /// 3. The buffers stay allocated until the collective completes (every
    ///    replay, for a captured call).
    #[allow(clippy::too_many_arguments)]
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
        let local = self.local(rank)?;
        let r = &self.ranks[local];
        check_addresses(rank, input, output, len, dtype)?;
        let plan = self.plan(len, dtype, opts)?;
        let _one_call_order = self.launch_lock(local)?;
        r.ctx.bind_to_thread()?;
        // SAFETY: caller contract 2 (a live stream of this context).
        let user = unsafe { r.ctx.wrap_borrowed_stream(stream) };
        let foreign = self.foreign_streams(local, &[&user])?;
        self.join_before(local, &foreign)?;
        let launched = self.launch(Call { local, input, output, len, dtype, plan }, opts, None);
        let joined = self.join_after(local, &foreign);
        launched.and(joined)
    }

    /// The streams rank `rank`'s call must be ordered with: those of its
    /// buffers (or the caller's stream) other than the rank's own, once
    /// each. Explicit events, not cudarc's per-buffer ones: those exist only
    /// while a context is in cudarc's multi-stream mode, which an engine's
    /// context (candle's) may never enter. A buffer on the rank's own stream
    /// needs nothing (`Communicator::from_streams`).
    ///
    /// A stream not being captured while the rank's stream is (the caller
    /// captures the communicator's stream itself) cannot be joined into the
    /// capture: it is left out, and the graph's launch must follow that
    /// stream's writes (module docs, CUDA graphs).
    fn foreign_streams(&self, local: usize, streams: &[&Arc<CudaStream>]) -> Result<Vec<Arc<CudaStream>>> {
        let own = &self.ranks[local].stream;
        let mut foreign: Vec<Arc<CudaStream>> = Vec::with_capacity(streams.len());
        for &s in streams {
            if s.cu_stream() != own.cu_stream() && !foreign.iter().any(|f| f.cu_stream() == s.cu_stream()) {
                foreign.push(s.clone());
            }
        }
        if !foreign.is_empty() && self.capturing(own)? {
            let mut kept = Vec::with_capacity(foreign.len());
            for s in foreign {
                if self.capturing(&s)? {
                    kept.push(s);
                }
            }
            foreign = kept;
        }
        Ok(foreign)
    }

    fn capturing(&self, stream: &CudaStream) -> Result<bool> {
        stream.context().bind_to_thread()?;
        // SAFETY: a live stream of the context just bound.
        Ok(unsafe { crate::driver::graph::capturing_graph(stream.cu_stream())? }.is_some())
    }

    /// Rank `rank`'s stream waits for the work queued so far on `foreign`.
    fn join_before(&self, local: usize, foreign: &[Arc<CudaStream>]) -> Result<()> {
        foreign.iter().try_for_each(|s| Ok(self.ranks[local].stream.join(s)?))
    }

    /// Every stream of `foreign` waits for rank `rank`'s call. Runs whether
    /// or not the launch succeeded (part of a call may be queued). When a
    /// stream cannot be made to wait, its buffers could be read or freed
    /// while the call runs: the rank's collectives are aborted and waited
    /// for before the error returns, and the communicator is poisoned.
    fn join_after(&self, local: usize, foreign: &[Arc<CudaStream>]) -> Result<()> {
        let (own, rank) = (&self.ranks[local].stream, self.ranks[local].index);
        let joined = foreign.iter().try_for_each(|s| s.join(own));
        if let Err(e) = joined {
            let _ = self.abort_kernels();
            let _ = own.synchronize();
            lock(&self.poisoned).get_or_insert_with(|| format!("rank {rank}: a buffer's stream could not be ordered after a call: {e:?}"));
            return Err(e.into());
        }
        Ok(())
    }

    /// [`Communicator::issue_every_rank`] ordered with the streams of the
    /// call's buffers, in three phases: every rank's stream waits for its
    /// buffers' streams, then every rank's launch (in one NCCL group when
    /// the plan is NCCL, whose kernels are queued only at the group's end),
    /// then every buffer stream waits for its rank's call, whatever the
    /// launches returned. Joining rank by rank instead would make a stream
    /// shared by two ranks of one GPU wait for the first rank's kernel,
    /// which waits for the second rank's, never queued.
    fn issue_ordered(&self, plan: Plan, foreign: &[Vec<Arc<CudaStream>>], launch: impl FnMut(usize) -> Result<()>) -> Result<()> {
        (0..self.ranks.len()).try_for_each(|r| self.join_before(r, &foreign[r]))?;
        let issued = self.issue_every_rank(plan, launch);
        let mut joined = Ok(());
        for (r, streams) in foreign.iter().enumerate() {
            if let Err(e) = self.join_after(r, streams) {
                joined = joined.and(Err(e));
            }
        }
        issued.and(joined)
    }

    /// Issues `launch(rank)` for every rank, in rank order, as one unit:
    /// under the all-rank lock (two threads' calls cannot interleave ranks),
    /// with every rank's launch lock taken before the first launch (a rank
    /// busy with another thread's call fails the call before anything is
    /// queued); inside an NCCL group when the plan is NCCL. A launch that
    /// fails after others were queued aborts every rank's collectives: the
    /// ranks no longer agree on the calls made.
    fn issue_every_rank(&self, plan: Plan, mut launch: impl FnMut(usize) -> Result<()>) -> Result<()> {
        let _one_call_at_a_time = lock(&self.issue_all);
        let _every_rank = (0..self.ranks.len()).map(|r| self.launch_lock(r)).collect::<Result<Vec<_>>>()?;
        let mut all = || (0..self.ranks.len()).try_for_each(&mut launch);
        #[cfg(feature = "nccl")]
        let issued = if plan == Plan::Nccl { crate::nccl::NcclComms::group(all) } else { all() };
        #[cfg(not(feature = "nccl"))]
        let issued = {
            let _ = plan;
            all()
        };
        if let Err(e) = &issued {
            self.abort_kernels()?;
            lock(&self.poisoned).get_or_insert_with(|| format!("a call could not be queued on every rank: {e}"));
        }
        issued
    }

    /// Checks a buffer of this process's rank `local` (its place in `ranks`).
    fn check_buffer(&self, local: usize, stream: &CudaStream, len: usize, expected_len: usize) -> Result<()> {
        let (rank, expected) = (self.ranks[local].index, self.ranks[local].device);
        let found = stream.context().ordinal();
        if found != expected {
            return Err(Error::WrongDevice { rank, found, expected });
        }
        if len != expected_len {
            return Err(Error::LengthMismatch { rank, len, expected: expected_len });
        }
        Ok(())
    }

    /// Waits for every rank's queued collectives and reports the first
    /// error (which then poisons the communicator until
    /// [`Communicator::recover`]).
    pub fn synchronize(&self) -> Result<()> {
        let mut first = None;
        for rank in self.local_ranks() {
            if let Err(e) = self.synchronize_rank(rank) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits for one rank's queued collectives (on the communicator's
    /// stream of that rank) and reports its error: one its kernels recorded,
    /// a peer's failure that reached it, or one `recover()` found for it.
    pub fn synchronize_rank(&self, rank: usize) -> Result<()> {
        let local = self.local(rank)?;
        let r = &self.ranks[local];
        loop {
            let generation = self.recoveries.load(Ordering::SeqCst);
            let pending = std::mem::take(&mut lock(&self.errors)[local].pending);
            let words = if pending != 0 {
                [pending; 1 + MAX_WORLD]
            } else {
                r.stream.synchronize()?;
                let mut words = [0u32; 1 + MAX_WORLD];
                self.memory.ranks[local].sync.read_words(&r.stream, sync_area::ERROR, &mut words)?;
                words
            };
            let mut errors = lock(&self.errors);
            // A recover() in between may have found (and kept) these words
            // or zeroed them: read again.
            if pending == 0 && self.recoveries.load(Ordering::SeqCst) != generation {
                continue;
            }
            let Some(error) = device_error(rank, &words[..1 + self.world]) else { return Ok(()) };
            errors[local].reported = words[0];
            drop(errors);
            // An error from before recover() needs no new recover().
            if pending == 0 {
                lock(&self.poisoned).get_or_insert_with(|| error.to_string());
            }
            return Err(error);
        }
    }

    /// Makes the communicator usable again after an error. In order: aborts
    /// every rank's collectives still running (their ranks get
    /// [`Error::Aborted`]); takes every lock (no thread queues a call
    /// meanwhile: per-rank calls wait); waits for all work on every GPU of
    /// the communicator (graph replays included); keeps each rank's error
    /// that its host was not told yet, to be reported by its next
    /// [`Communicator::synchronize_rank`] (that rank refuses calls until
    /// then); zeroes every rank's flags, tags, epochs, poison and error
    /// words on the rank's own stream and waits for it.
    ///
    /// Afterwards every rank must restart from a common point: calls queued
    /// before `recover()` did not complete on every rank (report their
    /// errors with `synchronize`), and all ranks continue with the same
    /// next call.
    ///
    /// With one process per rank ([`Communicator::init_rank`]) `recover()`
    /// is collective: every rank's process must call it; each waits (up to
    /// 10 s) until every process has stopped its kernels, and again until
    /// every process has reset its flags. It fails when a peer's process
    /// has ended: then the communicator stays unusable (make a new one).
    pub fn recover(&self) -> Result<()> {
        self.recovering.store(true, Ordering::SeqCst);
        let recovered = self.recover_locked();
        self.recovering.store(false, Ordering::SeqCst);
        recovered
    }

    fn recover_locked(&self) -> Result<()> {
        self.abort_kernels()?;
        let _no_all_rank_calls = lock(&self.issue_all);
        let _no_launches: Vec<_> = self.ranks.iter().map(|r| lock(&r.launch)).collect();
        for (i, r) in self.ranks.iter().enumerate() {
            if !self.ranks[..i].iter().any(|q| Arc::ptr_eq(&q.ctx, &r.ctx)) {
                r.ctx.synchronize()?;
            }
        }
        // Ranks in other processes: every one has stopped its kernels
        // before any zeroes flags that those kernels could still write. A
        // failed round leaves the communicator unusable for good.
        if let Err(e) = self.all_processes_stopped() {
            lock(&self.poisoned).get_or_insert_with(|| format!("recover() failed across processes: {e}"));
            return Err(e);
        }
        for (rank, (r, memory)) in self.ranks.iter().zip(&self.memory.ranks).enumerate() {
            let mut word = [0u32];
            memory.sync.read_words(&r.stream, sync_area::ERROR, &mut word)?;
            let mut errors = lock(&self.errors);
            if word[0] != 0 && word[0] != errors[rank].reported {
                errors[rank].pending = word[0];
            }
            errors[rank].reported = 0;
        }
        for (r, memory) in self.ranks.iter().zip(&self.memory.ranks) {
            memory.sync.zero(&r.stream)?;
            memory.ll.zero(&r.stream)?;
        }
        if let Err(e) = self.all_processes_zeroed() {
            lock(&self.poisoned).get_or_insert_with(|| format!("recover() failed across processes: {e}"));
            return Err(e);
        }
        let _errors = lock(&self.errors);
        self.recoveries.fetch_add(1, Ordering::SeqCst);
        *lock(&self.poisoned) = None;
        // A peer's process that ended meanwhile keeps it unusable.
        self.processes_usable()?;
        crate::driver::graph::drop_released();
        Ok(())
    }

    /// Stops every rank's collectives that are running or queued: the host
    /// writes an abort word into every poison slot of every rank of this
    /// process (on a stream of its own, so it lands while kernels spin),
    /// which kernels check at entry and while they wait (docs/design.md R6);
    /// with one process per rank, also into this rank's slot of every peer.
    fn abort_kernels(&self) -> Result<()> {
        let abort = [ErrorWord::new(ErrorWord::KIND_ABORTED, 0, 0, 0).0; MAX_WORLD];
        for (r, memory) in self.ranks.iter().zip(&self.memory.ranks) {
            memory.sync.write_words(r.abort_stream.stream(), sync_area::POISON, &abort[..self.world_size()])?;
        }
        self.abort_peer_processes()
    }

    /// This rank's launch lock; another thread holding it is a second call
    /// order for one rank, refused (module docs), unless `recover()` holds
    /// it: then wait. A rank with an error its host was not told refuses
    /// calls.
    fn launch_lock(&self, local: usize) -> Result<MutexGuard<'_, ()>> {
        let rank = self.ranks[local].index;
        let guard = match self.ranks[local].launch.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) if self.recovering.load(Ordering::SeqCst) => lock(&self.ranks[local].launch),
            Err(TryLockError::WouldBlock) => return Err(Error::ConcurrentCall { rank }),
        };
        if lock(&self.errors)[local].pending != 0 {
            return Err(Error::Poisoned(format!("rank {rank} has an error from before recover() that synchronize_rank({rank}) has not reported yet")));
        }
        Ok(guard)
    }
}

/// The error a rank's error word and poison words (`words[0]`, then one per
/// rank) report, if any. An abort poison alone (no kernel of the rank ran
/// into it) is not an error of this rank.
fn device_error(rank: usize, words: &[u32]) -> Option<Error> {
    let err = ErrorWord(words[0]);
    let (peer, block) = (err.peer() as usize, err.block() as usize);
    Some(match err.kind() {
        0 => {
            let peer = words[1..].iter().position(|&w| w != 0 && ErrorWord(w).kind() != ErrorWord::KIND_ABORTED)?;
            Error::PeerFailed { rank, peer }
        }
        ErrorWord::KIND_MISMATCH | ErrorWord::KIND_EPOCH_SKEW => Error::CollectiveMismatch { rank, peer, block },
        ErrorWord::KIND_PEER_FAILED => Error::PeerFailed { rank, peer },
        ErrorWord::KIND_ABORTED => Error::Aborted { rank },
        _ => Error::PeerTimeout { rank, peer, phase: if err.phase() == 0 { "entry" } else { "second" }, block },
    })
}

/// A buffer's device address, for the checks before a call: taken on the
/// buffer's own stream, so cudarc's event bookkeeping (in multi-stream mode)
/// touches no other stream, and no capture of another stream pulls in the
/// rank's stream before the call is known to go ahead.
fn buffer_address<T>(b: &impl DevicePtr<T>) -> u64 {
    let stream = b.stream().clone();
    let (ptr, _record) = b.device_ptr(&stream);
    ptr
}

/// [`buffer_address`] of an output.
fn buffer_address_mut<T>(b: &mut impl DevicePtrMut<T>) -> u64 {
    let stream = b.stream().clone();
    let (ptr, _record) = b.device_ptr_mut(&stream);
    ptr
}

/// Checks of a rank's input and output addresses (raw pointers, or views
/// that may start anywhere in a buffer): alignment, address arithmetic,
/// overlap.
fn check_addresses(rank: usize, input: u64, output: u64, len: usize, dtype: Dtype) -> Result<()> {
    for (what, ptr) in [("input", input), ("output", output)] {
        if ptr % 16 != 0 {
            return Err(Error::Misaligned { rank, what, ptr, align: 16 });
        }
    }
    let bytes = len.checked_mul(dtype.size()).ok_or(Error::Overflow { what: "the message size in bytes" })? as u64;
    let input_end = input.checked_add(bytes).ok_or(Error::Overflow { what: "the input's address range" })?;
    let output_end = output.checked_add(bytes).ok_or(Error::Overflow { what: "the output's address range" })?;
    if input != output && input < output_end && output < input_end {
        return Err(Error::Overlap { rank });
    }
    Ok(())
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // Buffers must outlive queued kernels; errors are recorded by cudarc.
        // Graphs that captured calls keep their own reference to them.
        for r in &self.ranks {
            let synced = r.stream.synchronize();
            r.ctx.record_err(synced);
        }
        // Ranks in other processes map this one's buffers: free them only
        // once every process has stopped its kernels (docs/design.md R21).
        self.close_group();
        crate::driver::graph::drop_released();
    }
}
