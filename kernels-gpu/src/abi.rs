//! Argument blocks and memory maps shared by host launches and kernels.
//!
//! Kernels take one `#[repr(C)]` struct by value (a `.param` aggregate); the
//! host builds the same struct from the same definition, so the layouts
//! cannot drift apart. Each collective has its own argument block
//! ([`TwoStepArgs`], [`OneShotArgs`]); both embed the [`BarrierArgs`] the
//! cross-rank barrier needs.

/// Largest world size the kernels and flag arrays support.
pub const MAX_WORLD: usize = 8;
/// Largest grid of the collective kernels (flag slots per phase).
pub const MAX_BLOCKS: usize = 1024;
/// Threads per block of every kernel.
pub const THREADS: u32 = 256;
/// Elements one block covers per tile (`THREADS * CHUNK`).
pub const TILE_ELEMS: usize = THREADS as usize * crate::codec::CHUNK;

/// Phases of a collective that wait on peers; each has its own flag array
/// (docs/design.md H3: a fast peer at barrier 2 must not overwrite a slot
/// still being waited on at barrier 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    /// After each rank has staged its contribution (entry barrier).
    Staged = 0,
    /// After each owner has staged its reduced shard (two-step).
    Reduced = 1,
}

/// LL lines (`kernels/oneshot_ll.rs`): 16 bytes each, `{payload0, flag,
/// payload1, flag}`, carrying [`LL_LINE_ELEMS`] 16-bit elements.
pub const LL_LINE_BYTES: usize = 16;
/// Elements of one LL line (two 32-bit payload words).
pub const LL_LINE_ELEMS: usize = 4;

/// Word offsets inside a rank's *sync area*: one peer-mapped `cuMemAlloc`
/// block per rank. Peers write only their own slot `[block][peer_rank]` of the
/// flag and tag arrays and their own `poison[peer_rank]` word (one writing
/// rank per slot, docs/design.md H1); epochs and the error word are written
/// by the owning rank's kernels only.
pub mod sync_area {
    use super::{MAX_BLOCKS, MAX_WORLD};
    /// `flags[phase][block][peer]`: epoch a peer signalled.
    pub const FLAGS: usize = 0;
    /// Words per phase in [`FLAGS`].
    pub const FLAGS_PER_PHASE: usize = MAX_BLOCKS * MAX_WORLD;
    /// `tags[epoch & 1][block][peer]`: the call tag a peer signalled with at
    /// a `Staged` barrier of that epoch. Two slots: a peer can run at most
    /// one epoch ahead of a block that has not yet read its tag.
    pub const TAGS: usize = FLAGS + 2 * FLAGS_PER_PHASE;
    /// Words per epoch parity in [`TAGS`].
    pub const TAGS_PER_PARITY: usize = MAX_BLOCKS * MAX_WORLD;
    /// `epochs[block]`: calls completed by this block index on this rank.
    pub const EPOCHS: usize = TAGS + 2 * TAGS_PER_PARITY;
    /// One error word (see [`ErrorWord`](super::ErrorWord)); 0 = no error.
    /// The first error a kernel of this rank saw since the last reset.
    pub const ERROR: usize = EPOCHS + MAX_BLOCKS;
    /// `poison[peer]`: nonzero once rank `peer` has failed a collective (its
    /// [`ErrorWord`](super::ErrorWord)); every kernel checks these at entry
    /// and while it waits, and stops (docs/design.md R6).
    pub const POISON: usize = ERROR + 1;
    /// Scratch for the peer probe at creation: `[written by a peer, read by a peer]`.
    pub const PROBE: usize = POISON + MAX_WORLD;
    /// Total words (rounded up to a 256-byte multiple).
    pub const WORDS: usize = (PROBE + 2 + 63) & !63;
    /// Total bytes.
    pub const BYTES: usize = WORDS * 4;
}

/// The error a kernel leaves in its rank's sync area, packed in one `u32` so a
/// single store publishes it whole: `kind | phase << 4 | peer << 8 | block << 16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorWord(pub u32);

impl ErrorWord {
    /// A peer's flag did not arrive within the timeout.
    pub const KIND_TIMEOUT: u32 = 1;
    /// A peer entered the same collective with a different length or config.
    pub const KIND_MISMATCH: u32 = 2;
    /// A peer (in [`Self::peer`]) failed a collective and poisoned this rank.
    pub const KIND_PEER_FAILED: u32 = 3;
    /// A peer signalled an epoch two or more ahead: its sequence of calls
    /// differs from this rank's (it cannot happen when the ranks agree).
    pub const KIND_EPOCH_SKEW: u32 = 4;
    /// The host aborted every rank's collectives (`Communicator::recover`,
    /// or a call that could not be queued on every rank).
    pub const KIND_ABORTED: u32 = 5;

    /// Packs an error.
    #[inline(always)]
    pub const fn new(kind: u32, phase: u32, peer: u32, block: u32) -> Self {
        Self(kind | (phase & 0xF) << 4 | (peer & 0xFF) << 8 | (block & 0xFFFF) << 16)
    }
    /// The error kind (0 = none).
    pub const fn kind(self) -> u32 {
        self.0 & 0xF
    }
    /// The barrier phase that failed.
    pub const fn phase(self) -> u32 {
        (self.0 >> 4) & 0xF
    }
    /// The peer rank that was waited for.
    pub const fn peer(self) -> u32 {
        (self.0 >> 8) & 0xFF
    }
    /// The block that saw it.
    pub const fn block(self) -> u32 {
        self.0 >> 16
    }
}

/// What the cross-rank barrier needs; part of every collective's arguments.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BarrierArgs {
    /// Sync area of each rank (see [`sync_area`]), in rank order, mapped
    /// into this GPU's address space by peer access; unused entries are 0.
    pub sync: [u64; MAX_WORLD],
    /// Watchdog: give up waiting for a peer after this many ns (0 = never).
    pub timeout_ns: u64,
    /// This rank.
    pub rank: u32,
    /// Number of ranks (2..=MAX_WORLD).
    pub world: u32,
    /// Identifies the call (its whole length, this launch's place in it,
    /// element type, algorithm, wires, shard unit, transport); ranks compare
    /// tags at the entry barrier.
    pub tag: u32,
    /// Explicit padding (keeps the layout obvious on both sides).
    pub _pad: u32,
}

/// Arguments of the two-step kernels (`allreduce_twostep_*`).
///
/// Pointers are device addresses (`CUdeviceptr`); `staging_in` and
/// `staging_out` hold every rank's buffer, in rank order, mapped into this
/// GPU's address space by peer access; unused entries are 0.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TwoStepArgs {
    /// This rank's input, `len` elements, 16-byte aligned.
    pub input: u64,
    /// This rank's output, `len` elements, 16-byte aligned (may equal `input`).
    pub output: u64,
    /// Elements in this call.
    pub len: u64,
    /// Elements per piece (a multiple of 512; the staging buffers hold one
    /// piece). The kernel runs `ceil(len / piece_len)` pieces back to back,
    /// every piece with the geometry of a full one.
    pub piece_len: u64,
    /// Phase-1 staging of each rank: `world` shard blobs, `shard_stride` apart.
    pub staging_in: [u64; MAX_WORLD],
    /// Phase-2 staging of each rank: the blob of the shard it owns.
    pub staging_out: [u64; MAX_WORLD],
    /// Bytes between consecutive shard blobs in a staging buffer.
    pub shard_stride: u64,
    /// Elements per shard unit; shards are whole units. Quantized wires: the
    /// group size; plain: [`PLAIN_SHARD_UNIT`](crate::codec::layout::PLAIN_SHARD_UNIT).
    pub shard_unit: u32,
    /// How each phase crosses the links: [`Transport::word`].
    pub transport: u32,
    /// Spikes per group of the reduce-scatter wire
    /// ([`Spikes`](crate::codec::Spikes); 0 for plain wires).
    pub rs_spikes: u32,
    /// Spikes per group of the all-gather wire.
    pub ag_spikes: u32,
    /// The barrier's part.
    pub barrier: BarrierArgs,
}

/// Arguments of the one-shot kernels (`allreduce_oneshot_*`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct OneShotArgs {
    /// This rank's input, `len` elements, 16-byte aligned.
    pub input: u64,
    /// This rank's output, `len` elements, 16-byte aligned (may equal `input`).
    pub output: u64,
    /// Elements in this launch (0: a barrier only).
    pub len: u64,
    /// Each rank's one-shot buffer: two slots of `world` plain regions,
    /// `region_stride` bytes apart.
    pub buffers: [u64; MAX_WORLD],
    /// Bytes between consecutive regions of a one-shot buffer.
    pub region_stride: u64,
    /// The barrier's part.
    pub barrier: BarrierArgs,
}

const _: () = assert!(core::mem::size_of::<BarrierArgs>() == 8 * MAX_WORLD + 8 + 16);
const _: () = assert!(core::mem::size_of::<TwoStepArgs>() == 8 * 4 + 8 * MAX_WORLD * 2 + 8 + 8 + 8 + core::mem::size_of::<BarrierArgs>());
const _: () = assert!(core::mem::size_of::<OneShotArgs>() == 8 * 3 + 8 * MAX_WORLD + 8 + core::mem::size_of::<BarrierArgs>());

/// How one phase of the two-step kernel crosses the links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// Peer loads: a rank writes only its own staging; the reader loads
    /// across the link after the barrier.
    Pull,
    /// Peer stores: the writer stores straight into the reader's staging;
    /// every load is local.
    Push,
}

/// The [`Link`] of each two-step phase. Buffer roles (slots are
/// `shard_stride` bytes):
///
/// | phase | pull | push |
/// |---|---|---|
/// | reduce-scatter | rank r writes shard s to its own `staging_in[slot s]`; owner s loads `staging_in(r)[slot s]` | rank r stores shard s into owner s's `staging_in[slot r]`; owner loads its own slots |
/// | all-gather | owner s writes its own `staging_out[slot s]`; rank r loads `staging_out(s)[slot s]` | owner s stores into every rank's `staging_out[slot s]`; rank r loads its own slots |
///
/// Quantized kernels: the owner also decodes its own shard of the output
/// straight from registers, so no rank loads its own slot, and under push
/// the owner does not store into its own `staging_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transport {
    /// The reduce-scatter step.
    pub reduce_scatter: Link,
    /// The all-gather step.
    pub all_gather: Link,
}

impl Transport {
    /// Both phases push (peer stores): measured faster on NVLink.
    pub const PUSH: Self = Self { reduce_scatter: Link::Push, all_gather: Link::Push };
    /// Both phases pull (peer loads).
    pub const PULL: Self = Self { reduce_scatter: Link::Pull, all_gather: Link::Pull };
    /// Every combination, reduce-scatter first: push, pull, push-pull, pull-push.
    pub const ALL: [Self; 4] = [
        Self::PUSH,
        Self::PULL,
        Self { reduce_scatter: Link::Push, all_gather: Link::Pull },
        Self { reduce_scatter: Link::Pull, all_gather: Link::Push },
    ];
    const PUSH_REDUCE_SCATTER: u32 = 1;
    const PUSH_ALL_GATHER: u32 = 2;

    /// The encoding in [`TwoStepArgs::transport`].
    #[inline(always)]
    pub const fn word(self) -> u32 {
        (if matches!(self.reduce_scatter, Link::Push) { Self::PUSH_REDUCE_SCATTER } else { 0 })
            | (if matches!(self.all_gather, Link::Push) { Self::PUSH_ALL_GATHER } else { 0 })
    }

    /// Whether the reduce-scatter of the transport encoded in `word` pushes.
    #[inline(always)]
    pub const fn pushes_reduce_scatter(word: u32) -> bool {
        word & Self::PUSH_REDUCE_SCATTER != 0
    }

    /// Whether the all-gather of the transport encoded in `word` pushes.
    #[inline(always)]
    pub const fn pushes_all_gather(word: u32) -> bool {
        word & Self::PUSH_ALL_GATHER != 0
    }

    /// The setting's name: `push`, `pull`, `push-pull`, `pull-push`
    /// (reduce-scatter first).
    pub const fn name(self) -> &'static str {
        match (self.reduce_scatter, self.all_gather) {
            (Link::Push, Link::Push) => "push",
            (Link::Pull, Link::Pull) => "pull",
            (Link::Push, Link::Pull) => "push-pull",
            (Link::Pull, Link::Push) => "pull-push",
        }
    }

    /// The transport named `name` (see [`Self::name`]; ASCII case ignored).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Benchmark diagnostics: which phases' data work a diagnostic two-step
/// kernel (`diag_allreduce_twostep_*`, never used for results) skips, so
/// timing the rest shows where a call's time goes. Barriers always run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct PhaseSkip(pub u32);

impl PhaseSkip {
    /// Skip nothing (the production kernels are compiled with this).
    pub const NONE: Self = Self(0);
    /// Skip quantizing and staging the input.
    pub const STAGE: Self = Self(1);
    /// Skip the reduction of the owned shard.
    pub const REDUCE: Self = Self(2);
    /// Skip decoding the gathered shards into the output.
    pub const GATHER: Self = Self(4);
    /// Skip every phase's data work (barriers only).
    pub const ALL: Self = Self(7);

    /// Whether every phase of `other` is skipped.
    #[inline(always)]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

}

/// Shard geometry of one call, derived identically on every rank from
/// `(len, world, shard_unit)` only, so all ranks launch the same grid and
/// pair the same blocks (docs/design.md R5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardGeometry {
    /// Units (groups) in the whole message (the last may be short).
    pub total_groups: usize,
    /// Units per shard (the last shards may hold fewer, or none).
    pub shard_groups: usize,
    /// Element slots per shard (`shard_groups * unit`).
    pub shard_slots: usize,
    /// Tiles per shard.
    pub tiles: usize,
}

impl ShardGeometry {
    /// Geometry for `len` elements over `world` ranks in shard units of `unit`.
    #[inline(always)]
    pub const fn new(len: usize, world: usize, unit: usize) -> Self {
        let total_groups = len.div_ceil(unit);
        let shard_groups = total_groups.div_ceil(world);
        let shard_slots = shard_groups * unit;
        let tiles = shard_slots.div_ceil(TILE_ELEMS);
        Self { total_groups, shard_groups, shard_slots, tiles }
    }

    /// Valid elements of shard `s` (0 for an empty trailing shard).
    #[inline(always)]
    pub const fn shard_len(&self, len: usize, s: usize) -> usize {
        let start = s * self.shard_slots;
        if start >= len {
            0
        } else if len - start < self.shard_slots {
            len - start
        } else {
            self.shard_slots
        }
    }
}
