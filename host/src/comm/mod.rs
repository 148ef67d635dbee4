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
mod tuning;

use crate::config::{Algorithm, Config, Quantization, Thresholds, Transport};
use crate::device::{gpu_count, PeerBuffer};
use crate::element::HostElement;
use crate::error::{Error, Result};
use crate::kernels::{Kernel, KernelImage};
use crate::raw;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashcomm_kernels::abi::{sync_area, CollectiveArgs, ErrorWord, ShardGeometry, MAX_BLOCKS, MAX_WORLD, THREADS};
use flashcomm_kernels::codec::{Dtype, ShardLayout, CHUNK};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Group size the unquantized two-shot uses to cut shards (any multiple of
/// 16 works; 256 keeps shards aligned for every quantized group size too).
const RAW_SHARD_UNIT: usize = 256;
/// Largest one-shot launch (elements; a multiple of 512): its buffer holds
/// two slots of `world` raw copies of this many elements (16 MiB per GPU at
/// W = 2, 64 MiB at W = 8). Longer one-shot calls run in several launches;
/// `Auto` picks the one-shot only far below this.
const ONESHOT_MAX_ELEMS: usize = 2 << 20;
/// Blocks of every one-shot launch, whatever its size and element type: the
/// kernel's slot reuse without an exit barrier needs block `b` to cover the
/// same tiles in every call (kernel docs); capped by the residency of both
/// one-shot kernels (`Communicator::oneshot_grid`).
const ONESHOT_GRID: u32 = 128;

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

fn fnv1a(words: &[u64]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

impl Communicator {
    /// Creates a communicator over `devices` (one rank per device, rank
    /// order = list order; a device may repeat only with
    /// [`Config::shared_devices`]) with the kernels of `image`.
    ///
    /// Checks the devices, enables and *probes* peer access across every
    /// ordered pair (a real store and load by a kernel), loads the kernels,
    /// and allocates the staging and flag memory once.
    pub fn new(devices: &[usize], config: Config, image: &KernelImage) -> Result<Self> {
        config.validate()?;
        let world = devices.len();
        if !(2..=MAX_WORLD).contains(&world) {
            return Err(Error::WorldSize { world, min: 2, max: MAX_WORLD });
        }
        let repeated = devices.iter().enumerate().find(|&(i, d)| devices[..i].contains(d)).map(|(_, &d)| d);
        if let (Some(device), false) = (repeated, config.shared_devices) {
            return Err(Error::DuplicateDevice { device });
        }
        let shared = repeated.is_some();
        let count = gpu_count();
        if count == 0 {
            return Err(Error::NoGpu("no CUDA driver or no device".into()));
        }
        if let Some(&device) = devices.iter().find(|&&d| d >= count) {
            return Err(Error::NoSuchDevice { device, count });
        }

        // One context per GPU; ranks sharing a GPU (Config::shared_devices)
        // share its context and reach each other's buffers directly.
        let mut ctxs: Vec<Arc<CudaContext>> = Vec::with_capacity(world);
        for (i, &d) in devices.iter().enumerate() {
            let ctx = match devices[..i].iter().position(|&e| e == d) {
                Some(first) => ctxs[first].clone(),
                None => CudaContext::new(d)?,
            };
            ctxs.push(ctx);
        }
        // Peer access for every ordered pair of distinct GPUs (once per
        // pair: enabling twice is an error), before any allocation peers map.
        for (i, a) in ctxs.iter().enumerate() {
            for (j, b) in ctxs.iter().enumerate() {
                let repeat = devices[..i].contains(&devices[i]) || devices[..j].contains(&devices[j]);
                if devices[i] == devices[j] || repeat {
                    continue;
                }
                if !raw::peer::can_access(a.cu_device(), b.cu_device())? {
                    return Err(Error::PeerAccessUnavailable {
                        from: devices[i],
                        to: devices[j],
                        why: "cuDeviceCanAccessPeer reports no access".into(),
                    });
                }
                a.bind_to_thread()?;
                // SAFETY: `a` is bound to this thread; `b` is a live context of another device.
                unsafe { raw::peer::enable(b.cu_ctx())? };
            }
        }

        // Staging: the raw (2 bytes/element) shard blob of the largest piece
        // bounds every quantized blob (at most 1.25 bytes/element).
        let max_groups = config.max_piece_elems.div_ceil(RAW_SHARD_UNIT).div_ceil(world);
        let shard_stride = ShardLayout::new(max_groups, RAW_SHARD_UNIT, 16).total_bytes().next_multiple_of(256);
        let oneshot_stride = ShardLayout::new(Self::oneshot_elems(&config) / CHUNK, CHUNK, 16).total_bytes().next_multiple_of(256);

        // Load the module on every GPU in parallel (the driver JIT-compiles the PTX).
        let all_kernels = Kernel::all();
        let loaded: Vec<Result<(Arc<CudaModule>, HashMap<Kernel, CudaFunction>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = ctxs
                .iter()
                .map(|ctx| {
                    let all_kernels = &all_kernels;
                    s.spawn(move || -> Result<_> {
                        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(image.ptx))?;
                        let mut functions = HashMap::new();
                        for &k in all_kernels {
                            let f = module.load_function(&k.name()).map_err(|_| Error::MissingKernel { name: k.name() })?;
                            functions.insert(k, f);
                        }
                        Ok((module, functions))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("module loading thread panicked")).collect()
        });

        let mut ranks = Vec::with_capacity(world);
        for (rank, ((&device, ctx), loaded)) in devices.iter().zip(&ctxs).zip(loaded).enumerate() {
            let (module, functions) = loaded?;
            ranks.push(Rank {
                device,
                stream: ctx.new_stream()?,
                staging_in: PeerBuffer::zeroed(ctx, world * shard_stride)?,
                staging_out: PeerBuffer::zeroed(ctx, world * shard_stride)?,
                oneshot: PeerBuffer::zeroed(ctx, 2 * world * oneshot_stride)?,
                sync: PeerBuffer::zeroed(ctx, sync_area::BYTES)?,
                ctx: ctx.clone(),
                _module: module,
                functions,
                args: CollectiveArgs {
                    input: 0,
                    output: 0,
                    len: 0,
                    piece_len: 0,
                    staging_in: [0; MAX_WORLD],
                    staging_out: [0; MAX_WORLD],
                    sync: [0; MAX_WORLD],
                    shard_stride: shard_stride as u64,
                    timeout_ns: config.timeout.map_or(0, |t| t.as_nanos().min(u64::MAX as u128) as u64),
                    rank: rank as u32,
                    world: world as u32,
                    group_size: 0,
                    tag: 0,
                    transport: 0,
                    _pad: 0,
                },
                launch: Mutex::new(()),
            });
        }
        // Every rank's peer pointers, once: with peer access enabled a
        // cuMemAlloc address is valid on every GPU of the communicator.
        let (ins, outs, syncs): (Vec<u64>, Vec<u64>, Vec<u64>) =
            ranks.iter().map(|r| (r.staging_in.ptr(), r.staging_out.ptr(), r.sync.ptr())).fold(
                (vec![], vec![], vec![]),
                |(mut a, mut b, mut c), (x, y, z)| {
                    a.push(x);
                    b.push(y);
                    c.push(z);
                    (a, b, c)
                },
            );
        for r in &mut ranks {
            r.args.staging_in[..world].copy_from_slice(&ins);
            r.args.staging_out[..world].copy_from_slice(&outs);
            r.args.sync[..world].copy_from_slice(&syncs);
        }
        let mut oneshot_buffers = [0; MAX_WORLD];
        for (slot, r) in oneshot_buffers.iter_mut().zip(&ranks) {
            *slot = r.oneshot.ptr();
        }

        // Blocks of every rank's kernel must be resident together (they
        // wait on each other); ranks sharing a GPU split its capacity.
        let mut resident_blocks = HashMap::new();
        for &k in &all_kernels {
            let mut fewest = MAX_BLOCKS as u32;
            for rank in &ranks {
                let sharing = devices.iter().filter(|&&d| d == rank.device).count() as u32;
                let sms = rank.ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
                let per_sm = rank.functions[&k].occupancy_max_active_blocks_per_multiprocessor(THREADS, 0, None)?;
                fewest = fewest.min(sms * per_sm.max(0) as u32 / sharing);
            }
            if fewest == 0 {
                return Err(Error::InvalidConfig(format!("kernel {} cannot launch {THREADS} threads per block on these GPUs", k.name())));
            }
            resident_blocks.insert(k, fewest);
        }

        let oneshot_grid = [Dtype::Bf16, Dtype::F16].iter().fold(ONESHOT_GRID, |g, &d| g.min(resident_blocks[&Kernel::OneShot(d)]));
        let gpu_name = ranks[0].ctx.name()?;
        let thresholds = config.thresholds.unwrap_or_else(|| tuning::builtin(&gpu_name, world));
        #[cfg(feature = "nccl")]
        let nccl = if config.nccl_fallback && !shared && crate::nccl::available() {
            crate::nccl::NcclComms::new(ranks.iter().map(|r| r.stream.clone()).collect()).ok()
        } else {
            None
        };
        let comm = Self {
            ranks,
            config,
            thresholds,
            resident_blocks,
            oneshot_buffers,
            oneshot_stride,
            oneshot_grid,
            gpu_name,
            poisoned: Mutex::new(None),
            #[cfg(feature = "nccl")]
            nccl,
        };
        comm.probe_peers()?;
        Ok(comm)
    }

    /// One store and one load across every ordered pair, by a kernel.
    fn probe_peers(&self) -> Result<()> {
        let world = self.world_size();
        for i in 0..world {
            for j in 0..world {
                if i == j {
                    continue;
                }
                let (a, b) = (&self.ranks[i], &self.ranks[j]);
                let pattern = 0x5EED_0000 | (i as u32) << 8 | j as u32;
                b.sync.write_words(sync_area::PROBE, &[0, pattern])?;
                a.sync.write_words(sync_area::PROBE, &[0, 0])?;
                let token = 0xC0DE_0000 | (j as u32) << 8 | i as u32;
                a.ctx.bind_to_thread()?;
                let remote = b.sync.ptr() + 4 * sync_area::PROBE as u64;
                let local = a.sync.ptr() + 4 * sync_area::PROBE as u64;
                let (mut remote_arg, mut local_arg, mut token_arg) = (remote, local, token);
                let mut params = [
                    &mut remote_arg as *mut u64 as *mut std::ffi::c_void,
                    &mut local_arg as *mut u64 as *mut std::ffi::c_void,
                    &mut token_arg as *mut u32 as *mut std::ffi::c_void,
                ];
                // SAFETY: a's context is bound; peer_probe takes (u32*, u32*, u32);
                // `remote` is b's cuMemAlloc memory with peer access enabled,
                // `local` a's own; we synchronise before they can go away.
                unsafe {
                    raw::launch::launch_with_params(
                        a.functions[&Kernel::PeerProbe].cu_function(),
                        1,
                        32,
                        a.stream.cu_stream(),
                        &mut params,
                    )?
                };
                a.stream.synchronize()?;
                let (mut seen, mut written) = ([0u32; 1], [0u32; 1]);
                a.sync.read_words(sync_area::PROBE, &mut seen)?;
                b.sync.read_words(sync_area::PROBE, &mut written)?;
                if seen[0] != pattern || written[0] != token {
                    return Err(Error::PeerAccessUnavailable {
                        from: a.device,
                        to: b.device,
                        why: format!(
                            "probe read {:#x} (expected {pattern:#x}) and wrote {:#x} (expected {token:#x})",
                            seen[0], written[0]
                        ),
                    });
                }
            }
        }
        for r in &self.ranks {
            r.sync.zero()?;
        }
        Ok(())
    }

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

    /// Elements one launch of `plan` may cover (staging capacity).
    fn piece_elems(&self, plan: Plan) -> usize {
        match plan {
            Plan::OneShot => Self::oneshot_elems(&self.config),
            Plan::TwoShot(_) => self.config.max_piece_elems / 512 * 512,
            Plan::Nccl => usize::MAX,
        }
    }

    /// Elements of one one-shot launch; a multiple of 512, as raw blobs are
    /// padded to that (layout docs).
    fn oneshot_elems(config: &Config) -> usize {
        ONESHOT_MAX_ELEMS.min(config.max_piece_elems) / 512 * 512
    }

    /// Queues the kernels of one rank's part of a collective, piece by piece.
    #[allow(clippy::too_many_arguments)]
    fn launch_rank(&self, rank: usize, input: u64, output: u64, len: usize, dtype: Dtype, plan: Plan, opts: &CallOptions) -> Result<()> {
        let r = &self.ranks[rank];
        let world = self.world_size();
        if plan == Plan::Nccl {
            #[cfg(feature = "nccl")]
            if let Some(nccl) = &self.nccl {
                let _one_at_a_time = r.launch.lock().unwrap();
                // SAFETY: callers checked that input/output hold `len`
                // elements on this rank's GPU and ordered them on its stream.
                return unsafe { nccl.all_reduce_raw(rank, input, output, len, dtype) };
            }
            return Err(Error::Nccl("NCCL is not available to this communicator".into()));
        }
        let (kernel, group_size) = match plan {
            Plan::Nccl => unreachable!("handled above"),
            Plan::OneShot => (Kernel::OneShot(dtype), CHUNK),
            Plan::TwoShot(q @ Quantization::None) => (Kernel::twoshot(dtype, &q), RAW_SHARD_UNIT),
            Plan::TwoShot(q @ Quantization::Int { group_size, .. }) => (Kernel::twoshot(dtype, &q), group_size),
        };
        let func = r.functions.get(&kernel).ok_or_else(|| Error::MissingKernel { name: kernel.name() })?;
        let resident = self.resident_blocks[&kernel];
        let (rs, ag) = match kernel {
            Kernel::TwoShot(_, rs, ag) => (rs, ag),
            _ => (16, 16),
        };
        let transport = opts.transport.unwrap_or(self.config.transport).bits() | opts.diagnostic_skip;
        let mut args = CollectiveArgs { group_size: group_size as u32, transport, ..r.args };
        if plan == Plan::OneShot {
            // The one-shot kernel's buffers travel as its `staging_in`.
            args.staging_in = self.oneshot_buffers;
            args.shard_stride = self.oneshot_stride as u64;
        }
        let piece = self.piece_elems(plan);
        let _one_at_a_time = r.launch.lock().unwrap();
        r.ctx.bind_to_thread()?;
        // The two-shot kernel runs all pieces of the message in one launch
        // (pipelined, see the kernel docs); pieces are balanced so the last
        // one is not much shorter (every piece uses a full piece's geometry).
        // The one-shot runs one launch per piece.
        let (step, twoshot_piece) = match plan {
            Plan::TwoShot(_) => (len, Some(balanced_piece(len, piece))),
            _ => (piece, None),
        };
        let mut start = 0;
        while start < len {
            let n = step.min(len - start);
            let piece_len = twoshot_piece.unwrap_or(n);
            args.input = input + (start * dtype.size()) as u64;
            args.output = output + (start * dtype.size()) as u64;
            args.len = n as u64;
            args.piece_len = piece_len as u64;
            args.tag = fnv1a(&[n as u64, piece_len as u64, dtype as u64, plan.algorithm() as u64, rs as u64, ag as u64, group_size as u64, transport as u64]);
            let tiles = match plan {
                Plan::TwoShot(_) => ShardGeometry::new(piece_len.min(n), world, group_size).tiles,
                _ => n.div_ceil(CHUNK).div_ceil(THREADS as usize),
            };
            let blocks = match plan {
                Plan::OneShot => self.oneshot_grid,
                _ => (tiles.max(1) as u32).min(resident),
            };
            // SAFETY: the context is bound; the kernel takes one CollectiveArgs;
            // staging and sync buffers are owned by `self` and peer-mapped;
            // input/output hold `len` elements (checked by the callers) and
            // are ordered on this stream by the callers; `piece_len` is a
            // multiple of 512 within the staging capacity.
            unsafe { raw::launch::launch_with_args(func.cu_function(), blocks, THREADS, r.stream.cu_stream(), &mut args)? };
            start += n;
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

/// Messages of at least this many elements run in two pieces or more even
/// when one would fit: the kernel overlaps one piece's gather with the next
/// piece's stage (measured on 4x H200, W = 4, 64 MiB: two pieces 5% faster
/// than one; pieces below ~16M elements lose more to per-piece barriers
/// than they gain).
const PIPELINE_MIN_ELEMS: usize = 32 << 20;

/// The piece length for a two-shot call of `len` elements when at most
/// `max_piece` (a multiple of 512) fit the staging buffers: as few pieces as
/// possible (but two from [`PIPELINE_MIN_ELEMS`]), of equal length rounded up
/// to a multiple of 512.
fn balanced_piece(len: usize, max_piece: usize) -> usize {
    let pieces = len.div_ceil(max_piece).max(if len >= PIPELINE_MIN_ELEMS { 2 } else { 1 });
    len.div_ceil(pieces).next_multiple_of(512).min(max_piece)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_pieces_cover_the_message_within_capacity() {
        let max = 32 << 20;
        for len in [1usize, 511, 512, 513, 1 << 20, (32 << 20) - 1, 32 << 20, (32 << 20) + 1, 100_000_007, 128 << 20, (128 << 20) + 3] {
            let piece = balanced_piece(len, max);
            let pieces = len.div_ceil(piece);
            assert!(piece % 512 == 0 && piece <= max, "len {len}: piece {piece}");
            assert!(pieces * piece >= len && (pieces - 1) * piece < len, "len {len}: {pieces} x {piece}");
            let expected = len.div_ceil(max).max(if len >= PIPELINE_MIN_ELEMS { 2 } else { 1 });
            assert_eq!(pieces, expected, "len {len}");
        }
        // A small staging capacity: many pieces, the last barely shorter.
        let piece = balanced_piece(1_000_000, 1 << 16);
        assert_eq!(1_000_000usize.div_ceil(piece), 16);
        assert!(1_000_000 - 15 * piece > piece - 16 * 512);
    }
}
