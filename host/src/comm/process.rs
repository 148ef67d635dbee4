//! Ranks in separate processes, one per GPU ([`Communicator::init_rank`]):
//! the same kernels as in one process, on buffers shared through CUDA IPC
//! (docs/design.md R21).
//!
//! Creation, after the bootstrap's rendezvous (`bootstrap.rs`), in rounds
//! every rank takes part in (each with a deadline; a rank that fails a step
//! tells the others, which fail with [`Error::PeerProcess`] naming it):
//! 1. each rank allocates and zeroes its buffers, loads its kernels and
//!    sends a card: its identity, GPU, IPC handles, buffer sizes, how many
//!    blocks its GPU holds at once, whether it can run NCCL;
//! 2. every rank checks every card (they are another process's words:
//!    sizes, lengths and identity must equal its own) and opens the other
//!    ranks' handles, checking each mapping's size;
//! 3. a real store and load by a kernel across every ordered pair (R12);
//! 4. every rank zeroes its flags, and no rank launches before all have
//!    (a peer's first flag must not be wiped);
//! 5. NCCL (`Config::nccl_fallback`), when every rank can run it.
//!
//! Afterwards a thread watches the other processes' connections: a peer
//! whose process ends (`kill -9` included) is seen within milliseconds, its
//! poison word is written into every live rank's sync area (kernels that
//! wait for it stop, `synchronize` reports [`Error::PeerFailed`] naming it)
//! and calls are refused. `recover()` and drop are collective: each
//! process's waits for the others' at a barrier with a deadline.
use super::setup::{allocate_memory, check_devices_exist, check_engine_streams, launch_probe, open_rank, Strides};
use super::{lock, tuning, Communicator, DeviceState, PeerPointers, Rank, RankErrors};
use crate::bootstrap::{peer_ended, Bootstrap, BootstrapError, Identity};
use crate::config::Config;
use crate::driver;
use crate::error::{Error, Result};
use crate::kernels::{KernelImage, LoadedKernels};
use crate::peer_buffer::ImportedBuffer;
use cudarc::driver::{sys, CudaContext, CudaStream};
use flashcomm_kernels::abi::{sync_area, ErrorWord, MAX_BLOCKS, MAX_WORLD, THREADS};
use flashcomm_kernels::entry::KernelId;
use serde::{Deserialize, Serialize};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deadline of each round of creation (a rank whose GPU JIT-compiles the
/// PTX needs about 30 s before it can send its card).
const SETUP_TIME: Duration = Duration::from_secs(120);
/// Deadline of the barriers of `recover()` and drop: how long a process
/// waits for the others to get there.
const CLOSE_TIME: Duration = Duration::from_secs(10);
/// How often the watcher looks at the other processes' connections.
const WATCH_PERIOD: Duration = Duration::from_millis(2);
/// Where in a sync area the probe at creation works: `[2 * writer]` is
/// written by rank `writer`, `[2 * writer + 1]` is read by it. The flags
/// live there; they are zeroed after the probe, before any collective.
const PROBE_SLOTS: usize = sync_area::FLAGS;
/// The buffers a rank shares, in card order.
const SHARED_BUFFERS: usize = 5;

/// What a rank tells every other rank at creation. Decoded from another
/// process: every field is checked before use (`check_cards`).
#[derive(Serialize, Deserialize)]
struct RankCard {
    identity: Identity,
    gpu_uuid: [u8; 16],
    gpu_name: String,
    /// staging in, staging out, one-shot, sync, LL: (IPC handle, bytes).
    buffers: Vec<(Vec<u8>, u64)>,
    shard_stride: u64,
    oneshot_stride: u64,
    ll_stride: u64,
    /// Blocks of each kernel (`KernelId::all` order) its GPU holds at once.
    capacity: Vec<u32>,
    /// It can load NCCL and its configuration asks for the fallback.
    nccl: bool,
}

/// The other processes of a per-process communicator: the bootstrap's
/// connections (for the collective `recover()` and drop) and the thread
/// that watches them.
pub(super) struct ProcessGroup {
    bootstrap: Mutex<Bootstrap>,
    /// Set before the closing barrier: the peers' connections end on purpose.
    closing: Arc<AtomicBool>,
    /// The first peer whose process the watcher saw end (`u64::MAX`: none).
    ended: Arc<AtomicU64>,
    /// A round with the other processes failed: they may be anywhere, so
    /// the communicator is unusable for good.
    broken: AtomicBool,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl ProcessGroup {
    /// Every process has reached the round `tag` (before `timeout`); fails
    /// at once when a peer's process has ended, and on a peer at another
    /// round. A failure tells the peers and leaves the group unusable.
    fn barrier(&self, tag: &str, timeout: Duration) -> Result<()> {
        self.exchange(tag, &[], timeout).map(|_| ())
    }

    /// Every rank's `data` at round `tag` ([`Self::barrier`]'s rules).
    fn exchange(&self, tag: &str, data: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let mut boot = lock(&self.bootstrap);
        let exchanged = self.check_alive().and_then(|_| round(&mut boot, tag, data, timeout));
        if let Err(e) = &exchanged {
            self.broken.store(true, Ordering::SeqCst);
            boot.abort(&e.to_string());
        }
        exchanged
    }

    /// Fails when the watcher saw a peer's process end, or a round failed.
    pub(super) fn check_alive(&self) -> Result<()> {
        match self.ended.load(Ordering::SeqCst) {
            u64::MAX if self.broken.load(Ordering::SeqCst) => Err(Error::Poisoned("a round with the other processes failed earlier; make a new communicator".into())),
            u64::MAX => Ok(()),
            rank => Err(Error::PeerProcess { rank: rank as usize, why: "its process ended (its connection closed)".into() }),
        }
    }

    /// Waits (bounded) for every process to close, then ends the
    /// connections and the watcher.
    fn close(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.barrier("close", CLOSE_TIME);
        lock(&self.bootstrap).shutdown();
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

/// One all-gather round of the rounds ranks in separate processes take
/// part in, named by `tag`: every part must carry the same tag (a peer at
/// another round is out of step: an error naming it, never a wrong pairing).
fn round(boot: &mut Bootstrap, tag: &str, data: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>> {
    let prefix = [tag.as_bytes(), &[0]].concat();
    let parts = boot.all_gather(&[&prefix[..], data].concat(), timeout)?;
    parts
        .into_iter()
        .enumerate()
        .map(|(rank, part)| match part.strip_prefix(&prefix[..]) {
            Some(rest) => Ok(rest.to_vec()),
            None => {
                let theirs = String::from_utf8_lossy(part.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
                Err(Error::PeerProcess { rank, why: format!("out of step: at round {theirs:?} while this rank is at {tag:?}") })
            }
        })
        .collect()
}

impl Communicator {
    /// Creates this process's rank of a communicator whose ranks run in
    /// separate processes, one per GPU, on a stream of its own on `device`.
    /// `bootstrap` (rank and world size included) comes from
    /// [`Bootstrap::root`] in rank 0's process and [`Bootstrap::join`] in
    /// the others; the communicator keeps it, to watch the other processes.
    /// Every rank's process must call this (or
    /// [`Communicator::init_rank_on_stream`]) with the same `config` and
    /// kernel image (checked).
    ///
    /// The communicator runs the same kernels as [`Communicator::new`] and
    /// has the same entry points; the all-rank ones take one buffer (this
    /// process's rank). `recover()` and drop wait for every process.
    ///
    /// ```no_run
    /// use flashcomm::bootstrap::{Bootstrap, Identity, Listener, UniqueId};
    /// use flashcomm::{Communicator, Config, KERNELS};
    /// use std::time::Duration;
    /// # fn main() -> flashcomm::Result<()> {
    /// // Set by the launcher: this process's rank, the world size, and (for
    /// // ranks other than 0) the id rank 0 printed.
    /// let (rank, world): (usize, usize) = (std::env::var("RANK").unwrap().parse().unwrap(), 2);
    /// let config = Config::default();
    /// let identity = Identity::current(&config, &KERNELS);
    /// let bootstrap = if rank == 0 {
    ///     let listener = Listener::loopback()?;
    ///     println!("{}", listener.id()); // hand this to the other ranks
    ///     Bootstrap::root(listener, world, &identity, &[], Duration::from_secs(60))?.0
    /// } else {
    ///     let id: UniqueId = std::env::var("FLASHCOMM_ID").unwrap().parse()?;
    ///     Bootstrap::join(&id, rank, world, &identity, &[], Duration::from_secs(60))?.0
    /// };
    /// let comm = Communicator::init_rank(bootstrap, rank, config, &KERNELS)?;
    /// let mut x = comm.stream(rank)?.clone_htod(&vec![half::bf16::ONE; 1 << 20])?;
    /// comm.all_reduce_rank_in_place(rank, &mut x, &Default::default())?;
    /// comm.synchronize()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn init_rank(bootstrap: Bootstrap, device: usize, config: Config, image: &KernelImage) -> Result<Self> {
        let stream = config.validate().and_then(|_| {
            check_devices_exist(&[device])?;
            Ok(CudaContext::new(device)?.new_stream()?)
        });
        match stream {
            Ok(stream) => Self::rank_on_stream(bootstrap, stream, config, image),
            Err(e) => Err(tell_peers(bootstrap, e)),
        }
    }

    /// [`Communicator::init_rank`] on the engine's stream (as
    /// [`Communicator::from_streams`] for one rank).
    pub fn init_rank_on_stream(bootstrap: Bootstrap, stream: Arc<CudaStream>, config: Config, image: &KernelImage) -> Result<Self> {
        match config.validate().and_then(|_| check_engine_streams(std::slice::from_ref(&stream))) {
            Ok(()) => Self::rank_on_stream(bootstrap, stream, config, image),
            Err(e) => Err(tell_peers(bootstrap, e)),
        }
    }

    fn rank_on_stream(mut boot: Bootstrap, stream: Arc<CudaStream>, config: Config, image: &KernelImage) -> Result<Self> {
        crate::driver::graph::drop_released();
        let (index, world) = (boot.rank(), boot.world());
        let strides = Strides::new(&config, world);
        // 1. This rank's own part, and its card.
        let local = (|| {
            let rank = open_rank(index, world, stream.context().ordinal(), &stream, &config)?;
            let kernels = LoadedKernels::load(&rank.ctx, image)?;
            let memory = allocate_memory(std::slice::from_ref(&rank), vec![kernels], &strides, world)?;
            let card = card(&rank, &memory.ranks[0], &strides, &config, image)?;
            Ok::<_, Error>((rank, memory, card))
        })();
        let (mut rank, mut memory, card) = match local {
            Ok(local) => local,
            Err(e) => return Err(tell_peers(boot, e)),
        };
        let encoded = postcard::to_allocvec(&card).map_err(|e| Error::InvalidConfig(format!("encoding this rank's card: {e}")))?;
        // 2. Every card, checked; the peers' buffers mapped here.
        let cards = decode_cards(&round(&mut boot, "cards", &encoded, SETUP_TIME)?)?;
        check_cards(&cards, &card, index, &config)?;
        let imported = open_peer_buffers(&rank, &cards, index);
        let imported = agree(&mut boot, "mapped", imported)?;
        let own = &memory.ranks[0];
        let own_ptrs = [own.staging_in.ptr(), own.staging_out.ptr(), own.oneshot.ptr(), own.sync.ptr(), own.ll.ptr()];
        let column = |b: usize| {
            let mut out = [0u64; MAX_WORLD];
            for (p, o) in out.iter_mut().enumerate().take(world) {
                *o = if p == index { own_ptrs[b] } else { imported[p - (p > index) as usize][b].ptr() };
            }
            out
        };
        let peers = PeerPointers {
            staging_in: column(0),
            staging_out: column(1),
            oneshot: column(2),
            ll: column(4),
            shard_stride: strides.shard,
            oneshot_stride: strides.oneshot,
            ll_stride: strides.ll,
        };
        rank.barrier.sync = column(3);
        memory.imported = imported.into_iter().flatten().collect();
        // 3. The probe, 4. zeroed flags everywhere before any launch.
        probe_peers(&mut boot, &rank, &memory.ranks[0])?;
        let zeroed = memory.ranks[0].sync.zero(&rank.stream);
        agree(&mut boot, "zeroed", zeroed)?;
        // 5. NCCL when every rank can.
        #[cfg(feature = "nccl")]
        if cards.iter().all(|c| c.nccl) {
            memory.nccl = init_nccl(&mut boot, &rank.stream, index, world)?;
        }
        let resident_blocks = resident_blocks(&cards)?;
        let oneshot_grid = super::setup::oneshot_grid(&resident_blocks);
        let gpu_name = cards[0].gpu_name.clone();
        let thresholds = config.thresholds.unwrap_or_else(|| tuning::builtin(&gpu_name, world));
        let memory = Arc::new(memory);
        let poisoned = Arc::new(Mutex::new(None));
        let closing = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicU64::new(u64::MAX));
        let watch = Watch {
            links: boot.watch_handles()?,
            closing: closing.clone(),
            ended: ended.clone(),
            poisoned: poisoned.clone(),
            syncs: rank.barrier.sync,
            world,
            stream: driver::stream::OwnedStream::new(&rank.ctx)?,
            memory: memory.clone(),
        };
        let watcher = std::thread::Builder::new()
            .name(format!("flashcomm-watch-{index}"))
            .spawn(move || watch.run())
            .map_err(|e| Error::InvalidConfig(format!("starting the thread that watches the other processes: {e}")))?;
        Ok(Self {
            errors: Mutex::new(vec![RankErrors::default()]),
            ranks: vec![rank],
            world,
            group: Some(ProcessGroup { bootstrap: Mutex::new(boot), closing, ended, broken: AtomicBool::new(false), watcher: Some(watcher) }),
            memory,
            peers,
            config,
            thresholds,
            resident_blocks,
            oneshot_grid,
            gpu_name,
            poisoned,
            recovering: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
            issue_all: Mutex::new(()),
        })
    }

    /// Every rank's `data`, in rank order, exchanged between the processes
    /// of a per-process communicator over its bootstrap connections (host
    /// bytes for the engine's own metadata or a benchmark's timings; not
    /// ordered with the GPU). Every rank's process must call it; it fails
    /// after `timeout`, when a peer's process has ended, or on a
    /// communicator of one process ([`Communicator::new`]).
    pub fn all_gather_host(&self, data: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let group = self.group.as_ref().ok_or_else(|| Error::InvalidConfig("all_gather_host needs ranks in separate processes (Communicator::init_rank)".into()))?;
        group.exchange("host", data, timeout)
    }

    /// `recover()`'s part across processes, once this process's kernels
    /// have stopped: every process's have (before any zeroes its flags).
    pub(super) fn all_processes_stopped(&self) -> Result<()> {
        self.group.as_ref().map_or(Ok(()), |g| g.barrier("recover: kernels stopped", CLOSE_TIME))
    }

    /// Every process has zeroed its flags (before any launches again).
    pub(super) fn all_processes_zeroed(&self) -> Result<()> {
        self.group.as_ref().map_or(Ok(()), |g| g.barrier("recover: flags zeroed", CLOSE_TIME))
    }

    /// With one process per rank, `abort_kernels`'s part for the others:
    /// this rank's poison slot in every peer's sync area (through the
    /// mappings) says it aborted, so a peer's kernel that waits for this
    /// rank stops too (as a kernel that fails tells every rank), whether or
    /// not a kernel of this rank is running to pass it on.
    pub(super) fn abort_peer_processes(&self) -> Result<()> {
        let Some(_) = &self.group else { return Ok(()) };
        let r = &self.ranks[0];
        let word = [ErrorWord::new(ErrorWord::KIND_ABORTED, 0, r.index as u32, 0).0];
        let stream = r.abort_stream.stream();
        r.ctx.bind_to_thread()?;
        for peer in (0..self.world).filter(|&p| p != r.index) {
            // SAFETY: one word inside the peer's sync area (POISON + index <
            // sync_area::WORDS), mapped in this context and kept mapped by
            // `self.memory`; `word` outlives the copy (waited for below).
            unsafe { driver::memory::write_words_async(r.barrier.sync[peer] + 4 * (sync_area::POISON + r.index) as u64, &word, stream.cu_stream())? };
        }
        stream.synchronize()?;
        Ok(())
    }

    /// Whether calls may go ahead as far as the other processes go: none
    /// has ended, and no round with them failed.
    pub(super) fn processes_usable(&self) -> Result<()> {
        self.group.as_ref().map_or(Ok(()), |g| g.check_alive())
    }

    /// Drop's part across processes (after this process's streams are idle).
    pub(super) fn close_group(&mut self) {
        if let Some(group) = &mut self.group {
            group.close();
        }
    }
}

/// Ends the bootstrap with this rank's error (the other ranks' next round
/// fails with it), and returns it.
fn tell_peers(mut boot: Bootstrap, e: Error) -> Error {
    boot.abort(&e.to_string());
    e
}

/// This rank's card.
fn card(rank: &Rank, memory: &super::RankMemory, strides: &Strides, config: &Config, image: &KernelImage) -> Result<RankCard> {
    let buffers = [&memory.staging_in, &memory.staging_out, &memory.oneshot, &memory.sync, &memory.ll];
    let buffers = buffers.iter().map(|b| Ok((b.export()?.to_vec(), b.bytes() as u64))).collect::<Result<Vec<_>>>()?;
    let sms = rank.ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
    let capacity = KernelId::all()
        .map(|(k, _)| Ok(sms * memory.kernels.get(k)?.resident_blocks_per_sm(&rank.ctx, THREADS)?))
        .collect::<Result<Vec<_>>>()?;
    #[cfg(feature = "nccl")]
    let nccl = config.nccl_fallback && crate::nccl::available();
    #[cfg(not(feature = "nccl"))]
    let nccl = false;
    Ok(RankCard {
        identity: Identity::current(config, image),
        gpu_uuid: rank.ctx.uuid()?.bytes.map(|c| c as u8),
        gpu_name: rank.ctx.name()?,
        buffers,
        shard_stride: strides.shard as u64,
        oneshot_stride: strides.oneshot as u64,
        ll_stride: strides.ll as u64,
        capacity,
        nccl,
    })
}

fn decode_cards(raw: &[Vec<u8>]) -> Result<Vec<RankCard>> {
    raw.iter()
        .enumerate()
        .map(|(r, bytes)| {
            postcard::from_bytes(bytes).map_err(|e| BootstrapError::Malformed { from: format!("rank {r}"), why: format!("its card: {e}") }.into())
        })
        .collect()
}

/// Every card against this rank's own (the layouts the kernels compute
/// must agree, and every handle must be one): the same checks on every
/// rank, so all fail together, naming the same rank.
fn check_cards(cards: &[RankCard], mine: &RankCard, index: usize, config: &Config) -> Result<()> {
    for (r, c) in cards.iter().enumerate().filter(|&(r, _)| r != index) {
        let mismatch = |what: String| Error::from(BootstrapError::Mismatch { rank: r, what });
        if let Some(what) = mine.identity.difference(&c.identity) {
            return Err(mismatch(what));
        }
        if (c.shard_stride, c.oneshot_stride, c.ll_stride) != (mine.shard_stride, mine.oneshot_stride, mine.ll_stride) {
            let strides = |c: &RankCard| format!("{}/{}/{}", c.shard_stride, c.oneshot_stride, c.ll_stride);
            return Err(mismatch(format!("buffer strides {} against {}", strides(c), strides(mine))));
        }
        let sizes = |card: &RankCard| card.buffers.iter().map(|b| b.1).collect::<Vec<_>>();
        if sizes(c) != sizes(mine) || c.buffers.iter().any(|b| b.0.len() != driver::ipc::HANDLE_BYTES) {
            return Err(mismatch(format!("shared buffers {:?} against {:?} (or a handle of the wrong length)", sizes(c), sizes(mine))));
        }
        if c.capacity.len() != mine.capacity.len() {
            return Err(mismatch(format!("{} kernels against {}", c.capacity.len(), mine.capacity.len())));
        }
    }
    // Every handle once: each is opened once, and closed once by its mapping.
    let mut handles: Vec<&[u8]> = cards.iter().flat_map(|c| c.buffers.iter().map(|b| b.0.as_slice())).collect();
    handles.sort();
    if handles.windows(2).any(|w| w[0] == w[1]) {
        let rank = cards.iter().position(|c| c.buffers.iter().any(|b| cards.iter().flat_map(|d| &d.buffers).filter(|e| e.0 == b.0).count() > 1)).unwrap_or(0);
        return Err(BootstrapError::Mismatch { rank, what: "an IPC handle that another buffer also has".into() }.into());
    }
    if !config.shared_devices {
        for (r, c) in cards.iter().enumerate() {
            if let Some(first) = cards[..r].iter().position(|d| d.gpu_uuid == c.gpu_uuid) {
                let what = format!("it runs on the same GPU as rank {first} (Config::shared_devices allows that, for tests)");
                return Err(BootstrapError::Mismatch { rank: r, what }.into());
            }
        }
    }
    Ok(())
}

/// Maps every other rank's shared buffers here (card order), each checked
/// to be as big as the layout needs.
fn open_peer_buffers(rank: &Rank, cards: &[RankCard], index: usize) -> Result<Vec<Vec<ImportedBuffer>>> {
    let mut all = Vec::with_capacity(cards.len() - 1);
    for (r, c) in cards.iter().enumerate().filter(|&(r, _)| r != index) {
        let mut buffers = Vec::with_capacity(SHARED_BUFFERS);
        for (handle, bytes) in &c.buffers {
            let handle: &[u8; driver::ipc::HANDLE_BYTES] = handle.as_slice().try_into().map_err(|_| Error::PeerProcess { rank: r, why: "an IPC handle of the wrong length".into() })?;
            // SAFETY: the handle is rank r's export (another process: its
            // card's identity matched and ranks are distinct processes), and
            // each is opened once, here.
            let buffer = unsafe { ImportedBuffer::open(&rank.ctx, handle, *bytes as usize) }
                .map_err(|e| Error::PeerProcess { rank: r, why: format!("its buffer could not be mapped here: {e}") })?;
            buffers.push(buffer);
        }
        all.push(buffers);
    }
    Ok(all)
}

/// One real store and load by a kernel from this rank into every other
/// rank's sync area (docs/design.md R12), and a check of what every other
/// rank stored here: three rounds every rank takes part in, whatever
/// failed, so all agree on the outcome.
fn probe_peers(boot: &mut Bootstrap, rank: &Rank, memory: &super::RankMemory) -> Result<()> {
    let (me, world) = (rank.index, boot.world());
    let pattern = |owner: usize, reader: usize| 0x5EED_0000 | (owner as u32) << 8 | reader as u32;
    let token = |writer: usize, owner: usize| 0xC0DE_0000 | (writer as u32) << 8 | owner as u32;
    let written = (0..world).filter(|&r| r != me).try_for_each(|reader| memory.sync.write_words(&rank.stream, PROBE_SLOTS + 2 * reader, &[0, pattern(me, reader)]));
    agree(boot, "probe: patterns written", written)?;
    let probed = probe_loads(rank, memory, world, pattern, token);
    agree(boot, "probe: loads and stores done", probed)?;
    let mut stored = Ok(());
    for writer in (0..world).filter(|&r| r != me) {
        let mut written = [0u32];
        stored = stored.and_then(|_| memory.sync.read_words(&rank.stream, PROBE_SLOTS + 2 * writer, &mut written));
        if stored.is_ok() && written[0] != token(writer, me) {
            stored = Err(Error::PeerProcess { rank: writer, why: format!("its probe stored {:#x} here, expected {:#x}", written[0], token(writer, me)) });
        }
    }
    agree(boot, "probe: stores checked", stored)
}

/// The probe kernel of this rank against every other rank's sync area.
fn probe_loads(rank: &Rank, memory: &super::RankMemory, world: usize, pattern: impl Fn(usize, usize) -> u32, token: impl Fn(usize, usize) -> u32) -> Result<()> {
    let me = rank.index;
    for owner in (0..world).filter(|&r| r != me) {
        memory.sync.write_words(&rank.stream, sync_area::PROBE, &[0])?;
        let (remote, local) = (rank.barrier.sync[owner] + 4 * (PROBE_SLOTS + 2 * me) as u64, memory.sync.ptr() + 4 * sync_area::PROBE as u64);
        // SAFETY: `remote` is two words of the owner's sync area mapped
        // here (its size checked at mapping), `local` one of ours; the read
        // below waits for the kernel.
        unsafe { launch_probe(rank, memory, remote, local, token(me, owner))? };
        let mut seen = [0u32];
        memory.sync.read_words(&rank.stream, sync_area::PROBE, &mut seen)?;
        if seen[0] != pattern(owner, me) {
            return Err(Error::PeerProcess { rank: owner, why: format!("the probe read {:#x} from its memory, expected {:#x}", seen[0], pattern(owner, me)) });
        }
    }
    Ok(())
}

/// Every rank learns whether every rank's step `tag` succeeded: this
/// rank's error, or the first other rank's, as [`Error::PeerProcess`].
fn agree<T>(boot: &mut Bootstrap, tag: &str, mine: Result<T>) -> Result<T> {
    let said = match &mine {
        Ok(_) => vec![0u8],
        Err(e) => [&[1u8][..], e.to_string().as_bytes()].concat(),
    };
    let all = round(boot, tag, &said, SETUP_TIME)?;
    let mine = mine?;
    match all.iter().enumerate().find(|(_, s)| s.first() != Some(&0)) {
        Some((rank, s)) => Err(Error::PeerProcess { rank, why: String::from_utf8_lossy(s.get(1..).unwrap_or_default()).into() }),
        None => Ok(mine),
    }
}

/// Blocks per kernel every rank launches: the fewest any GPU holds at once,
/// divided among the ranks whose processes share that GPU.
fn resident_blocks(cards: &[RankCard]) -> Result<std::collections::HashMap<KernelId, u32>> {
    let sharing = |c: &RankCard| cards.iter().filter(|d| d.gpu_uuid == c.gpu_uuid).count() as u32;
    let mut out = std::collections::HashMap::new();
    for (i, (k, name)) in KernelId::all().enumerate() {
        let blocks = cards.iter().map(|c| c.capacity[i] / sharing(c)).min().unwrap_or(0).min(MAX_BLOCKS as u32);
        if blocks == 0 {
            return Err(Error::InvalidConfig(format!("kernel {name} cannot launch {THREADS} threads per block on every rank's GPU")));
        }
        out.insert(k, blocks);
    }
    Ok(out)
}

/// NCCL across the processes: rank 0's id to every rank, then
/// `ncclCommInitRank` on each; kept only when it worked on every rank
/// (ranks must agree on whether `Auto` can fall back to it).
#[cfg(feature = "nccl")]
fn init_nccl(boot: &mut Bootstrap, stream: &Arc<CudaStream>, index: usize, world: usize) -> Result<Option<crate::nccl::NcclComms>> {
    let id = if index == 0 { crate::nccl::NcclComms::unique_id().unwrap_or_default() } else { Vec::new() };
    let ids = round(boot, "nccl id", &id, SETUP_TIME)?;
    if ids[0].is_empty() {
        return Ok(None);
    }
    let comms = crate::nccl::NcclComms::init_rank(stream.clone(), index, world, &ids[0]);
    let all = round(boot, "nccl ready", &[comms.is_ok() as u8], SETUP_TIME)?;
    Ok(if all.iter().all(|ok| ok == &[1]) { comms.ok() } else { None })
}

/// The thread that watches the other processes (module docs).
struct Watch {
    links: Vec<(usize, TcpStream)>,
    closing: Arc<AtomicBool>,
    ended: Arc<AtomicU64>,
    poisoned: Arc<Mutex<Option<String>>>,
    /// Every rank's sync area, as mapped in this process.
    syncs: [u64; MAX_WORLD],
    world: usize,
    stream: driver::stream::OwnedStream,
    /// Keeps the sync areas mapped while the thread runs.
    memory: Arc<DeviceState>,
}

impl Watch {
    fn run(self) {
        let mut seen = vec![false; self.links.len()];
        while !self.closing.load(Ordering::SeqCst) {
            for (i, (peer, link)) in self.links.iter().enumerate() {
                if !seen[i] && peer_ended(link) {
                    seen[i] = true;
                    if !self.closing.load(Ordering::SeqCst) {
                        self.peer_ended(*peer);
                    }
                }
            }
            std::thread::sleep(WATCH_PERIOD);
        }
    }

    /// `peer`'s process has ended: refuse calls, and write its poison word
    /// into every live rank's sync area (ours and, through the mappings,
    /// the other processes'), so that every kernel waiting for it stops.
    fn peer_ended(&self, peer: usize) {
        let _ = self.ended.compare_exchange(u64::MAX, peer as u64, Ordering::SeqCst, Ordering::SeqCst);
        lock(&self.poisoned).get_or_insert_with(|| format!("rank {peer}'s process ended (its connection closed)"));
        let word = [ErrorWord::new(ErrorWord::KIND_PEER_FAILED, 0, peer as u32, 0).0];
        let stream = self.stream.stream();
        if stream.context().bind_to_thread().is_err() {
            return;
        }
        for r in (0..self.world).filter(|&r| r != peer) {
            // SAFETY: one word inside rank r's sync area (`POISON + peer` <
            // `sync_area::WORDS`), our own or mapped here and kept mapped by
            // `self.memory`; the context is bound; `word` outlives the copy
            // (waited for below).
            let _ = unsafe { driver::memory::write_words_async(self.syncs[r] + 4 * (sync_area::POISON + peer) as u64, &word, stream.cu_stream()) };
        }
        let _ = stream.synchronize();
        let _ = &self.memory;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's slots lie inside the flags (zeroed after the probe), and
    /// the watcher's poison words inside the sync area.
    #[test]
    fn probe_slots_fit_the_flags() {
        assert!(PROBE_SLOTS + 2 * MAX_WORLD <= sync_area::FLAGS + 2 * sync_area::FLAGS_PER_PHASE);
        assert!(sync_area::POISON + MAX_WORLD <= sync_area::WORDS);
    }
}
