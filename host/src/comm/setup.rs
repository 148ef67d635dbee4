//! Creating a [`Communicator`], in named steps: the device list, contexts,
//! peer access (enabled, then probed for real), kernels, the per-rank
//! staging, one-shot and sync buffers, and how many blocks every rank can
//! keep resident.
use super::launch::{oneshot_elems, ONESHOT_GRID};
use super::{tuning, Communicator, DeviceState, PeerPointers, Rank, RankErrors, RankMemory};
use crate::config::Config;
use crate::driver;
use crate::error::{Error, Result};
use crate::kernels::{KernelImage, LoadedKernels};
use crate::peer_buffer::PeerBuffer;
use cudarc::driver::{sys, CudaContext, CudaStream};
use flashcomm_kernels::abi::{sync_area, BarrierArgs, LL_LINE_BYTES, MAX_BLOCKS, MAX_WORLD, THREADS};
use flashcomm_kernels::codec::layout::PLAIN_SHARD_UNIT;
use flashcomm_kernels::codec::{Bits, Dtype, GroupSize, ShardLayout, Spikes, Wire, CHUNK};
use flashcomm_kernels::entry::KernelId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

/// Bytes between consecutive shard blobs in a staging buffer, and between
/// consecutive rank regions in a one-shot slot.
pub(super) struct Strides {
    pub(super) shard: usize,
    pub(super) oneshot: usize,
    /// A line per thread of the largest one-shot grid.
    pub(super) ll: usize,
}

impl Strides {
    pub(super) fn new(config: &Config, world: usize) -> Self {
        // The largest shard blob of the largest piece, over every format:
        // plain (2 bytes/element) and every quantized one (up to 2 bytes
        // per element with 8 spikes in groups of 32).
        let max_units = config.max_piece_elems.div_ceil(PLAIN_SHARD_UNIT).div_ceil(world);
        let plain = ShardLayout::new(max_units, PLAIN_SHARD_UNIT, Wire::Plain).total_bytes();
        let quantized = GroupSize::ALL.iter().flat_map(|g| {
            let groups = config.max_piece_elems.div_ceil(g.get()).div_ceil(world);
            Bits::ALL.iter().map(move |&b| ShardLayout::new(groups, g.get(), Wire::Quantized(b)).with_spikes(Spikes::MAX.get()).total_bytes())
        });
        let shard = quantized.fold(plain, usize::max).next_multiple_of(256);
        let oneshot = ShardLayout::new(oneshot_elems(config) / CHUNK, CHUNK, Wire::Plain).total_bytes().next_multiple_of(256);
        Self { shard, oneshot, ll: ONESHOT_GRID as usize * THREADS as usize * LL_LINE_BYTES }
    }
}

impl Communicator {
    /// Creates a communicator over `devices` (one rank per device, rank
    /// order = list order; a device may repeat only with
    /// [`Config::shared_devices`]) with the kernels of `image`, on streams of
    /// its own (one per rank).
    ///
    /// Checks the devices, enables and *probes* peer access across every
    /// ordered pair (a real store and load by a kernel), loads the kernels,
    /// and allocates the staging and flag memory once.
    ///
    /// ```no_run
    /// use flashcomm::{Communicator, Config, KERNELS};
    /// # fn main() -> flashcomm::Result<()> {
    /// let comm = Communicator::new(&[0, 1], Config::default(), &KERNELS)?;
    /// assert_eq!(comm.world_size(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(devices: &[usize], config: Config, image: &KernelImage) -> Result<Self> {
        config.validate()?;
        check_device_list(devices, &config)?;
        let ctxs = open_contexts(devices)?;
        let streams = ctxs.iter().map(|ctx| ctx.new_stream()).collect::<std::result::Result<Vec<_>, _>>()?;
        Self::on_streams(&streams, config, image)
    }

    /// Creates a communicator whose rank `r` runs on `streams[r]`: the
    /// engine's own streams (for example each candle device's stream), so
    /// that collectives are ordered with the engine's kernels by the stream
    /// itself, whatever cudarc's event tracking does. Rank order = list
    /// order; the device of each rank is its stream's. Nothing else about
    /// the engine's contexts changes (the communicator creates no
    /// `CudaStream` through them, so they stay out of cudarc's multi-stream
    /// mode if they were).
    ///
    /// Creation zeroes buffers and probes peers on these streams and waits
    /// for them (so for the engine's work queued there); dropping the
    /// communicator waits for them too.
    ///
    /// ```no_run
    /// use flashcomm::cudarc::driver::CudaContext;
    /// use flashcomm::{Communicator, Config, KERNELS};
    /// # fn main() -> flashcomm::Result<()> {
    /// // The engine's streams, one per GPU (here: each context's default stream).
    /// let streams = [CudaContext::new(0)?.default_stream(), CudaContext::new(1)?.default_stream()];
    /// let comm = Communicator::from_streams(&streams, Config::default(), &KERNELS)?;
    /// assert!(std::sync::Arc::ptr_eq(comm.stream(1)?, &streams[1]));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_streams(streams: &[Arc<CudaStream>], config: Config, image: &KernelImage) -> Result<Self> {
        config.validate()?;
        let devices: Vec<usize> = streams.iter().map(|s| s.context().ordinal()).collect();
        check_device_list(&devices, &config)?;
        check_engine_streams(streams)?;
        Self::on_streams(streams, config, image)
    }

    /// Everything after the device list checks: peer access, kernels,
    /// ranks, memory, residency, NCCL, the peer probe.
    fn on_streams(streams: &[Arc<CudaStream>], config: Config, image: &KernelImage) -> Result<Self> {
        crate::driver::graph::drop_released();
        let devices: Vec<usize> = streams.iter().map(|s| s.context().ordinal()).collect();
        let shared = (1..devices.len()).any(|i| devices[..i].contains(&devices[i]));
        let ctxs: Vec<Arc<CudaContext>> = streams.iter().map(|s| s.context().clone()).collect();
        enable_peer_access(&devices, &ctxs)?;
        let kernels = load_kernels_everywhere(&ctxs, image)?;
        let strides = Strides::new(&config, devices.len());
        let ranks = open_ranks(&devices, streams, &config)?;
        #[allow(unused_mut)]
        let mut memory = allocate_memory(&ranks, kernels, &strides, devices.len())?;
        let (peers, ranks) = link_peers(ranks, &memory, &strides);
        let resident_blocks = resident_blocks(&ranks, &memory, &devices)?;
        let oneshot_grid = oneshot_grid(&resident_blocks);
        let gpu_name = ranks[0].ctx.name()?;
        let thresholds = config.thresholds.unwrap_or_else(|| tuning::builtin(&gpu_name, devices.len()));
        #[cfg(feature = "nccl")]
        if config.nccl_fallback && !shared && crate::nccl::available() {
            memory.nccl = crate::nccl::NcclComms::new(ranks.iter().map(|r| r.stream.clone()).collect()).ok();
        }
        let _ = shared;
        let comm = Self {
            errors: Mutex::new(vec![RankErrors::default(); ranks.len()]),
            world: ranks.len(),
            group: None,
            ranks,
            memory: Arc::new(memory),
            peers,
            config,
            thresholds,
            resident_blocks,
            oneshot_grid,
            gpu_name,
            poisoned: Arc::new(Mutex::new(None)),
            recovering: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
            issue_all: Mutex::new(()),
        };
        comm.probe_peers()?;
        Ok(comm)
    }

    /// One store and one load across every ordered pair, by a kernel
    /// (docs/design.md R12: a copy-engine memcpy would not prove the SM's path).
    fn probe_peers(&self) -> Result<()> {
        let world = self.world_size();
        for i in 0..world {
            for j in (0..world).filter(|&j| j != i) {
                let (a, b) = (&self.ranks[i], &self.ranks[j]);
                let (a_sync, b_sync) = (&self.memory.ranks[i].sync, &self.memory.ranks[j].sync);
                let pattern = 0x5EED_0000 | (i as u32) << 8 | j as u32;
                let token = 0xC0DE_0000 | (j as u32) << 8 | i as u32;
                b_sync.write_words(&b.stream, sync_area::PROBE, &[0, pattern])?;
                a_sync.write_words(&a.stream, sync_area::PROBE, &[0, 0])?;
                // SAFETY: `remote` is b's sync area (peer access enabled),
                // `local` a's own; the reads below wait for the kernel.
                unsafe { launch_probe(a, &self.memory.ranks[i], b_sync.ptr() + 4 * sync_area::PROBE as u64, a_sync.ptr() + 4 * sync_area::PROBE as u64, token)? };
                let (mut seen, mut written) = ([0u32; 1], [0u32; 1]);
                a_sync.read_words(&a.stream, sync_area::PROBE, &mut seen)?;
                b_sync.read_words(&b.stream, sync_area::PROBE, &mut written)?;
                if seen[0] != pattern || written[0] != token {
                    let why = format!("probe read {:#x} (expected {pattern:#x}) and wrote {:#x} (expected {token:#x})", seen[0], written[0]);
                    return Err(Error::PeerAccessUnavailable { from: a.device, to: b.device, why });
                }
            }
        }
        for (r, memory) in self.ranks.iter().zip(&self.memory.ranks) {
            memory.sync.zero(&r.stream)?;
        }
        Ok(())
    }
}

/// Launches the peer probe on `rank`'s stream (`peer_probe(remote, local,
/// token)`: stores `token` at `remote[0]`, copies `remote[1]` to
/// `local[0]`).
///
/// # Safety
/// `remote` points to two words of a peer's memory mapped in `rank`'s
/// context, `local` to one word of its own; the caller waits for the
/// kernel before reading `local` or freeing either.
pub(super) unsafe fn launch_probe(rank: &Rank, memory: &RankMemory, remote: u64, local: u64, token: u32) -> Result<()> {
    let probe = memory.kernels.get(KernelId::PeerProbe)?;
    rank.ctx.bind_to_thread()?;
    let (mut remote, mut local, mut token) = (remote, local, token);
    let mut params = [
        &mut remote as *mut u64 as *mut std::ffi::c_void,
        &mut local as *mut u64 as *mut std::ffi::c_void,
        &mut token as *mut u32 as *mut std::ffi::c_void,
    ];
    // SAFETY: the context is bound; peer_probe takes (u32*, u32*, u32);
    // caller contract for the pointers.
    unsafe { driver::launch::launch_with_params(probe.handle(), 1, 32, rank.stream.cu_stream(), &mut params)? };
    Ok(())
}

/// Checks the device list before any GPU is touched.
fn check_device_list(devices: &[usize], config: &Config) -> Result<()> {
    let world = devices.len();
    if !(2..=MAX_WORLD).contains(&world) {
        return Err(Error::WorldSize { world, min: 2, max: MAX_WORLD });
    }
    let repeated = devices.iter().enumerate().find(|&(i, d)| devices[..i].contains(d)).map(|(_, &d)| d);
    if let (Some(device), false) = (repeated, config.shared_devices) {
        return Err(Error::DuplicateDevice { device });
    }
    check_devices_exist(devices)
}

/// Every device of `devices` is a CUDA device of this process.
pub(super) fn check_devices_exist(devices: &[usize]) -> Result<()> {
    let count = crate::gpu_count();
    if count == 0 {
        return Err(Error::NoGpu("no CUDA driver or no device".into()));
    }
    if let Some(&device) = devices.iter().find(|&&d| d >= count) {
        return Err(Error::NoSuchDevice { device, count });
    }
    Ok(())
}

/// The driver's handle of the per-thread default stream (`cuda.h`'s
/// `CU_STREAM_PER_THREAD`, what cudarc's `per_thread_stream` wraps).
const CU_STREAM_PER_THREAD: sys::CUstream = 0x2 as sys::CUstream;

/// Streams a communicator can own the order of: not the per-thread default
/// stream (its handle names another stream on every host thread, so
/// creation, calls, `synchronize_rank` and drop would each use a different
/// one), and not one stream for two ranks (their kernels wait for each
/// other: one queued behind the other never starts).
pub(super) fn check_engine_streams(streams: &[Arc<CudaStream>]) -> Result<()> {
    for (rank, s) in streams.iter().enumerate() {
        if s.cu_stream() == CU_STREAM_PER_THREAD {
            return Err(Error::InvalidConfig(format!(
                "rank {rank}: the per-thread default stream is a different stream on every thread; pass a stream \
                 (CudaContext::new_stream / default_stream), or use Communicator::new: calls on buffers of \
                 per-thread streams are ordered with them by events"
            )));
        }
        let same = |t: &Arc<CudaStream>| t.cu_stream() == s.cu_stream() && t.context().ordinal() == s.context().ordinal();
        if let Some(other) = streams[..rank].iter().position(same) {
            return Err(Error::InvalidConfig(format!("ranks {other} and {rank} were given the same stream; each rank needs its own")));
        }
    }
    Ok(())
}

/// One context per GPU (the primary context, as cudarc and candle use);
/// ranks sharing a GPU share its context and reach each other's buffers directly.
fn open_contexts(devices: &[usize]) -> Result<Vec<Arc<CudaContext>>> {
    let mut ctxs: Vec<Arc<CudaContext>> = Vec::with_capacity(devices.len());
    for (i, &d) in devices.iter().enumerate() {
        let ctx = match devices[..i].iter().position(|&e| e == d) {
            Some(first) => ctxs[first].clone(),
            None => CudaContext::new(d)?,
        };
        ctxs.push(ctx);
    }
    Ok(ctxs)
}

/// Peer access for every ordered pair of distinct GPUs (once per pair:
/// enabling twice is an error), before any allocation peers map.
fn enable_peer_access(devices: &[usize], ctxs: &[Arc<CudaContext>]) -> Result<()> {
    let first_of = |i: usize| !devices[..i].contains(&devices[i]);
    for (i, a) in ctxs.iter().enumerate().filter(|&(i, _)| first_of(i)) {
        for (j, b) in ctxs.iter().enumerate().filter(|&(j, _)| first_of(j) && devices[j] != devices[i]) {
            if !driver::peer::can_access(a.cu_device(), b.cu_device())? {
                let why = "cuDeviceCanAccessPeer reports no access".into();
                return Err(Error::PeerAccessUnavailable { from: devices[i], to: devices[j], why });
            }
            a.bind_to_thread()?;
            // SAFETY: `a` is bound to this thread; `b` is a live context of another device.
            unsafe { driver::peer::enable(b.cu_ctx())? };
        }
    }
    Ok(())
}

/// Loads the kernels on every context in parallel (the driver JIT-compiles
/// the PTX for each GPU); ranks sharing a context get their own handles.
fn load_kernels_everywhere(ctxs: &[Arc<CudaContext>], image: &KernelImage) -> Result<Vec<LoadedKernels>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ctxs.iter().map(|ctx| s.spawn(move || LoadedKernels::load(ctx, image))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::NoGpu("kernel loading thread panicked".into())))).collect()
    })
}

/// Every rank's streams and barrier template (peer pointers are filled in
/// by [`link_peers`]).
fn open_ranks(devices: &[usize], streams: &[Arc<CudaStream>], config: &Config) -> Result<Vec<Rank>> {
    let world = devices.len();
    devices.iter().zip(streams).enumerate().map(|(rank, (&device, stream))| open_rank(rank, world, device, stream, config)).collect()
}

/// Rank `index` of `world` on `stream` (of `device`), its peers' sync
/// areas still unknown.
pub(super) fn open_rank(index: usize, world: usize, device: usize, stream: &Arc<CudaStream>, config: &Config) -> Result<Rank> {
    Ok(Rank {
        index,
        device,
        ctx: stream.context().clone(),
        stream: stream.clone(),
        abort_stream: driver::stream::OwnedStream::new(stream.context())?,
        barrier: BarrierArgs {
            sync: [0; MAX_WORLD],
            timeout_ns: config.timeout.map_or(0, |t| t.as_nanos() as u64),
            rank: index as u32,
            world: world as u32,
            tag: 0,
            _pad: 0,
        },
        launch: Mutex::new(()),
    })
}

/// Every rank's buffers, allocated once and zeroed on its stream.
pub(super) fn allocate_memory(ranks: &[Rank], kernels: Vec<LoadedKernels>, strides: &Strides, world: usize) -> Result<DeviceState> {
    let memory = ranks
        .iter()
        .zip(kernels)
        .map(|(r, kernels)| {
            Ok(RankMemory {
                kernels,
                staging_in: PeerBuffer::zeroed(&r.ctx, world * strides.shard, &r.stream)?,
                staging_out: PeerBuffer::zeroed(&r.ctx, world * strides.shard, &r.stream)?,
                oneshot: PeerBuffer::zeroed(&r.ctx, 2 * world * strides.oneshot, &r.stream)?,
                ll: PeerBuffer::zeroed(&r.ctx, 2 * world * strides.ll, &r.stream)?,
                sync: PeerBuffer::zeroed(&r.ctx, sync_area::BYTES, &r.stream)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(DeviceState {
        ranks: memory,
        imported: Vec::new(),
        #[cfg(feature = "nccl")]
        nccl: None,
    })
}

/// Every rank's peer pointers, once: with peer access enabled a `cuMemAlloc`
/// address is valid on every GPU of the communicator.
fn link_peers(mut ranks: Vec<Rank>, memory: &DeviceState, strides: &Strides) -> (PeerPointers, Vec<Rank>) {
    let column = |f: fn(&RankMemory) -> u64| {
        let mut out = [0u64; MAX_WORLD];
        for (o, m) in out.iter_mut().zip(&memory.ranks) {
            *o = f(m);
        }
        out
    };
    let syncs = column(|m| m.sync.ptr());
    for r in ranks.iter_mut() {
        r.barrier.sync = syncs;
    }
    let peers = PeerPointers {
        staging_in: column(|m| m.staging_in.ptr()),
        staging_out: column(|m| m.staging_out.ptr()),
        oneshot: column(|m| m.oneshot.ptr()),
        ll: column(|m| m.ll.ptr()),
        shard_stride: strides.shard,
        oneshot_stride: strides.oneshot,
        ll_stride: strides.ll,
    };
    (peers, ranks)
}

/// The grid of every one-shot and LL one-shot launch: [`ONESHOT_GRID`]
/// capped by the residency of all four kernels (they share per-block epochs,
/// so one grid for all).
pub(super) fn oneshot_grid(resident: &HashMap<KernelId, u32>) -> u32 {
    Dtype::ALL.iter().fold(ONESHOT_GRID, |g, &d| g.min(resident[&KernelId::OneShot(d)]).min(resident[&KernelId::OneShotLl(d)]))
}

/// Blocks of every rank's kernel must be resident together (they wait on
/// each other, docs/design.md R5); ranks sharing a GPU split its capacity.
/// Per kernel, the minimum over ranks, so every rank launches the same grid.
fn resident_blocks(ranks: &[Rank], memory: &DeviceState, devices: &[usize]) -> Result<HashMap<KernelId, u32>> {
    let mut fewest: HashMap<KernelId, u32> = HashMap::new();
    for (rank, memory) in ranks.iter().zip(&memory.ranks) {
        let sharing = devices.iter().filter(|&&d| d == rank.device).count() as u32;
        let sms = rank.ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        for (k, f) in memory.kernels.iter() {
            let per_sm = f.resident_blocks_per_sm(&rank.ctx, THREADS)?;
            let blocks = (sms * per_sm / sharing).min(MAX_BLOCKS as u32);
            let entry = fewest.entry(k).or_insert(blocks);
            *entry = (*entry).min(blocks);
        }
    }
    if let Some((k, _)) = fewest.iter().find(|&(_, &b)| b == 0) {
        return Err(Error::InvalidConfig(format!("kernel {} cannot launch {THREADS} threads per block on these GPUs", k.name().unwrap_or("?"))));
    }
    Ok(fewest)
}
