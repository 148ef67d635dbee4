//! The all-reduce kernels.
//!
//! **Two-shot** (`allreduce_twoshot_<dtype>_<rs><ag>`): Flash All-Reduce. The
//! message runs in pieces of `piece_len` elements (the staging buffers hold
//! one piece); each piece is cut into `world` shards of whole groups, shard
//! `s` owned by rank `s`. Block `b` of every rank handles tiles
//! `t ≡ b (mod grid)` of every shard in every phase, so it only ever waits for
//! block `b` of its peers. Per piece `k`:
//! 1. *stage*: quantize every shard of my input (RS bits) into staging
//!    (pull: my own `staging_in`; push: straight into each owner's);
//! 2. barrier `Staged`; *reduce-scatter*: for my shard, read every rank's
//!    blob (pull: peer loads; push: local loads), dequantize, sum in f32 in
//!    rank order 0..world, re-quantize (AG bits) into staging (pull: my own
//!    `staging_out`; push: every rank's); quantized kernels also decode the
//!    re-quantized chunk into my shard of the output here (the bytes every
//!    rank decodes, hazard H15) and skip my own staging copy under push;
//! 3. barrier `Reduced`; *all-gather*: read every owner's re-quantized blob
//!    (quantized kernels: every other owner's) and write my output.
//!    [`Transport`] has the buffer roles of both transports.
//!
//! Pipelining: the gather of piece `k` (HBM-bound: local loads, output
//! stores) runs in the same tile loop as the stage of piece `k + 1`
//! (link-bound: posted peer stores), so each warp keeps both busy and the
//! two overlap instead of adding up. Per block:
//!
//! ```text
//! stage(0)
//! for k in 0..pieces:
//!     barrier Staged(k); reduce(k); barrier Reduced(k)
//!     for each tile: stage(k+1) tile; gather(k) tile
//! ```
//! One set of staging buffers is enough:
//! - stage(k+1) overwrites `staging_in`, last read by reduce(k), which every
//!   rank finished before signalling `Reduced(k)`, which this block passed;
//! - reduce(k+1) overwrites `staging_out`, last read by gather(k), which every
//!   rank finished before signalling `Staged(k+1)`, which this block passed.
//!
//! (Measured alternatives, slower on 4x H200: double-buffered slots with
//! split barriers whose round trips overlap work, with the stage and gather
//! in separate loops or in one; more live state, spills at 64 registers, and
//! 2-4% slower at 256 MiB. `docs/benchmarks.md` has the numbers.)
//! Across calls the next call's piece 0 plays piece `k + 1`: a rank starts
//! the next kernel only after this one completed (stream order), so no exit
//! barrier is needed (rule 5). Piece `k` uses epoch `e0 + 1 + k` at both
//! barriers, where `e0` is the block's stored epoch; the block stores
//! `e0 + pieces` at the end.
//! With RS = AG = 16 the same kernel is the unquantized two-shot: raw
//! elements staged, f32 sums rounded once to the element type.
//!
//! **One-shot** (`allreduce_oneshot_<dtype>`), for small messages: push my
//! whole input raw into every rank's one-shot buffer (`staging_in` of the
//! one-shot launch: two slots of `world` regions, `shard_stride` bytes
//! apart), one barrier, then every rank sums the `world` regions of its own
//! buffer in rank order (local loads only). No exit barrier: call `e` uses
//! slot `e & 1` (per-block epoch), and a peer may still be reading only the
//! slot of its previous call. Why that holds: the host launches every
//! one-shot, bf16 and f16 alike, with the same grid, so block `b` always
//! covers the same tiles; my previous kernel completed, so each of its
//! blocks passed a barrier that the same block of every peer signalled, so
//! every peer's calls before its previous one are complete; if that
//! previous call was a one-shot, block `b` took part in it (same grid) and
//! used the other slot. (This needs each rank's calls in one order: eager
//! calls and graph replays of a rank never run concurrently.) With one
//! barrier per call a peer can signal my next epoch before this block reads
//! the peer's tag, hence the tags by epoch parity (`barrier.rs`).
use super::barrier::cross_rank_barrier;
use super::chunk::{decode_chunk, encode_chunk, fetch_chunk, load_elements, load_words, pick, store_chunk, store_elements, sum_over_ranks, unpack_words, unroll, ChunkPos};
use crate::abi::{sync_area, CollectiveArgs, Phase, ShardGeometry, Transport, THREADS, TILE_ELEMS};
use crate::codec::{Bf16, Element, ShardLayout, CHUNK, F16};
use crate::intrinsics::mem::{ld_global_u32, st_global_u32};
use crate::intrinsics::thread::{block_idx, grid_dim, thread_idx};

/// Whether the reduce writes the owner's shard of the output itself,
/// decoded from the re-quantized chunk in registers, so the all-gather skips
/// it (no local staging write and read-back). Quantized kernels only: the
/// unquantized two-shot keeps the plain gather (its measured speed, which
/// `Auto` relies on, stays as it was).
#[inline(always)]
const fn owner_decodes(ag_bits: u32) -> bool {
    ag_bits != 16
}

/// What every phase of one two-shot call needs; uniform across the block.
struct TwoShot<'a> {
    a: &'a CollectiveArgs,
    tid: usize,
    world: usize,
    me: usize,
    /// Geometry of a full piece (every piece uses it; a short last piece
    /// just has fewer valid elements).
    geo: ShardGeometry,
    rs_layout: ShardLayout,
    ag_layout: ShardLayout,
    group_shift: u32,
    /// Bytes between shard blobs in a staging slot.
    stride: usize,
    push_rs: bool,
    push_ag: bool,
}

impl TwoShot<'_> {
    /// The shard visited `i`-th (`i < world`) in rank-rotated order: mine
    /// first. A compare instead of `%`, which is a long integer-division
    /// sequence on the GPU, in the innermost loops.
    #[inline(always)]
    fn rotated(&self, i: usize) -> usize {
        let s = self.me + i;
        if s >= self.world {
            s - self.world
        } else {
            s
        }
    }

    /// Valid elements of piece `k`.
    #[inline(always)]
    fn piece_valid(&self, k: usize) -> usize {
        let start = k * self.a.piece_len as usize;
        let left = self.a.len as usize - start;
        if left < self.a.piece_len as usize {
            left
        } else {
            self.a.piece_len as usize
        }
    }

    /// Whether tile `t` of piece `k` lies wholly inside every shard's valid
    /// elements (every tile but the last of a piece): its chunks are all
    /// full, so the phases skip the per-shard position arithmetic and the
    /// per-element masks (most of the stage's instructions were such
    /// bookkeeping, counted in the SASS). The last shard is the shortest.
    ///
    /// Quantized kernels only: the unquantized two-shot (`RS`/`AG` = 16)
    /// keeps the general path, because with the interior path it measured
    /// slower (4x H200, 16 MiB: 103 vs 92 us; 64 MiB: 318 vs 308 us), for a
    /// reason not found (`docs/bench/variants-2026-11-28/interior-4`).
    #[inline(always)]
    fn tile_is_interior(&self, k: usize, t: usize) -> bool {
        (t + 1) * TILE_ELEMS <= self.geo.shard_len(self.piece_valid(k), self.world - 1)
    }

    /// Runs `phase(interior)` for tile `t` of piece `k`, with `interior` a
    /// constant in each of the two calls, so each kind of tile compiles to
    /// its own straight-line code. `BITS` is the phase's code width: the
    /// unquantized kernels (16) always take the general path (see
    /// [`Self::tile_is_interior`]).
    #[inline(always)]
    fn by_tile_kind<const BITS: u32>(&self, k: usize, t: usize, phase: impl Fn(bool)) {
        if BITS != 16 && self.tile_is_interior(k, t) {
            phase(true)
        } else {
            phase(false)
        }
    }

    /// Where this thread's chunk of tile `t` sits in the shard visited
    /// `i`-th: the shard and the position in it. In an interior tile
    /// every chunk is full and in the slots.
    #[inline(always)]
    fn tile_chunk(&self, n: usize, t: usize, i: usize, interior: bool) -> (usize, ChunkPos) {
        let s = self.rotated(i);
        let index = t * THREADS as usize + self.tid;
        let pos = if interior { ChunkPos::full(index) } else { ChunkPos::new(index, self.geo.shard_len(n, s), self.geo.shard_slots) };
        (s, pos)
    }

    /// Writes decoded chunk `x` (position `pos` in shard `s` of piece `k`)
    /// to the output: the reduce writes the owner's own shard, the gather
    /// every other one.
    ///
    /// # Safety
    /// The `pos.valid` output elements at that position belong to this thread.
    #[inline(always)]
    unsafe fn store_output<E: Element>(&self, k: usize, s: usize, pos: ChunkPos, x: &[f32; CHUNK]) {
        // Piece base (wrapping_add: plain arithmetic; the store is in bounds).
        let output = (self.a.output as *mut u16).wrapping_add(k * self.a.piece_len as usize);
        // SAFETY: forwarded caller contract.
        unsafe { store_elements::<E>(output.add(s * self.geo.shard_slots + pos.index * CHUNK), pos.valid, x) };
    }

    /// Stage (quantize) tile `t` of every shard of piece `k` of my input.
    /// Shards in an order rotated by rank (mine first): at any moment the
    /// ranks write to *different* owners instead of all to owner 0 (an
    /// incast that capped the links at 1/(W-1) of their bandwidth, measured).
    ///
    /// # Safety
    /// The whole warp calls this together; `staging_in` may be overwritten
    /// (see the module docs).
    #[inline(always)]
    unsafe fn stage_tile<E: Element, const RS: u32>(&self, k: usize, t: usize) {
        // SAFETY: forwarded caller contract; `interior` as by_tile_kind found it.
        self.by_tile_kind::<RS>(k, t, |interior| unsafe { self.stage_chunks::<E, RS>(k, t, interior) });
    }

    /// [`Self::stage_tile`] for a tile of the given kind (see [`Self::by_tile_kind`]).
    ///
    /// # Safety
    /// As [`Self::stage_tile`]; `interior` only if [`Self::tile_is_interior`].
    #[inline(always)]
    unsafe fn stage_chunks<E: Element, const RS: u32>(&self, k: usize, t: usize, interior: bool) {
        let a = self.a;
        let n = self.piece_valid(k);
        // Piece base (wrapping_add: plain arithmetic; accesses are checked below).
        let input = (a.input as *const u16).wrapping_add(k * a.piece_len as usize);
        // The next shard's chunk is loaded before this one is encoded, so
        // each thread always has an HBM load in flight (latency-bound
        // otherwise: the encode waits on every load).
        let (mut s, mut pos) = self.tile_chunk(n, t, 0, interior);
        // SAFETY: `valid` elements of shard s are inside the input.
        let mut next = unsafe { load_words(input.add(s * self.geo.shard_slots + pos.index * CHUNK), pos.valid) };
        for i in 0..self.world {
            let words = next;
            let (s_here, pos_here) = (s, pos);
            if i + 1 < self.world {
                (s, pos) = self.tile_chunk(n, t, i + 1, interior);
                // SAFETY: `valid` elements of shard s are inside the input.
                next = unsafe { load_words(input.add(s * self.geo.shard_slots + pos.index * CHUNK), pos.valid) };
            }
            // SAFETY: the warp is converged; the chunk's slot in the staging
            // buffer the transport chooses is this thread's to write.
            unsafe {
                let blob = if self.push_rs {
                    (pick(&a.staging_in, s_here) as *mut u8).add(self.me * self.stride)
                } else {
                    (pick(&a.staging_in, self.me) as *mut u8).add(s_here * self.stride)
                };
                let wire = encode_chunk::<E, RS>(&unpack_words::<E>(&words), pos_here, self.group_shift);
                if pos_here.in_slots {
                    store_chunk::<RS>(blob, &self.rs_layout, pos_here, &wire, self.group_shift);
                }
            }
        }
    }

    /// Reduce tile `t` of my shard of piece `k`: every rank's blob, rank
    /// order, f32; re-quantize and publish.
    ///
    /// # Safety
    /// The whole warp calls this together, after the `Staged` barrier of piece `k`.
    #[inline(always)]
    unsafe fn reduce_tile<E: Element, const RS: u32, const AG: u32>(&self, k: usize, t: usize) {
        // SAFETY: forwarded caller contract; `interior` as by_tile_kind found it.
        self.by_tile_kind::<RS>(k, t, |interior| unsafe { self.reduce_chunk::<E, RS, AG>(k, t, interior) });
    }

    /// [`Self::reduce_tile`] for a tile of the given kind (see [`Self::by_tile_kind`]).
    ///
    /// # Safety
    /// As [`Self::reduce_tile`]; `interior` only if [`Self::tile_is_interior`].
    #[inline(always)]
    unsafe fn reduce_chunk<E: Element, const RS: u32, const AG: u32>(&self, k: usize, t: usize, interior: bool) {
        let a = self.a;
        let me = self.me;
        let stride = self.stride;
        // My shard is visited first (i = 0).
        let (_, pos) = self.tile_chunk(self.piece_valid(k), t, 0, interior);
        let mut acc = [0.0f32; CHUNK];
        if pos.in_slots {
            // SAFETY: every rank published its blob of my shard at the barrier.
            acc = unsafe {
                sum_over_ranks::<E, RS>(
                    |r| {
                        if self.push_rs {
                            (pick(&a.staging_in, me) as *const u8).add(r * stride)
                        } else {
                            (pick(&a.staging_in, r) as *const u8).add(me * stride)
                        }
                    },
                    self.world,
                    pos.index,
                    &self.rs_layout,
                    self.group_shift,
                )
            };
        }
        // SAFETY: the warp is converged.
        let wire = unsafe { encode_chunk::<E, AG>(&acc, pos, self.group_shift) };
        if pos.in_slots {
            if self.push_ag {
                unroll!(d in 8 => {
                    if d < self.world && (d != me || !owner_decodes(AG)) {
                        // SAFETY: slot `me` of rank d's staging_out is written by me only.
                        unsafe { store_chunk::<AG>((pick(&a.staging_out, d) as *mut u8).add(me * stride), &self.ag_layout, pos, &wire, self.group_shift) };
                    }
                });
            } else {
                // SAFETY: slot `me` of my own staging_out.
                unsafe { store_chunk::<AG>((pick(&a.staging_out, me) as *mut u8).add(me * stride), &self.ag_layout, pos, &wire, self.group_shift) };
            }
        }
        // My shard of the output, decoded from the very wire chunk every
        // peer decodes (hazard H15: no rank uses its unquantized sum), here
        // instead of in the gather (`owner_decodes`): this phase is
        // link-bound with HBM to spare, the gather is HBM-bound, and my own
        // blob need not be written to staging and read back. In place this
        // overwrites input this block's stage of piece `k` has already read
        // (same tile).
        if owner_decodes(AG) && pos.valid > 0 {
            // SAFETY: the `valid` output elements of my shard's chunk belong to this thread.
            unsafe { self.store_output::<E>(k, me, pos, &decode_chunk::<E, AG>(&wire)) };
        }
    }

    /// Gather tile `t` of piece `k`: decode the owners' re-quantized blobs
    /// into my output (owners in rank-rotated order, as in the stage; my own
    /// shard is skipped where the reduce wrote it, see [`owner_decodes`]).
    ///
    /// # Safety
    /// After the `Reduced` barrier of piece `k` and before this block signals
    /// the next `Staged`.
    #[inline(always)]
    unsafe fn gather_tile<E: Element, const AG: u32>(&self, k: usize, t: usize) {
        // SAFETY: forwarded caller contract; `interior` as by_tile_kind found it.
        self.by_tile_kind::<AG>(k, t, |interior| unsafe { self.gather_chunks::<E, AG>(k, t, interior) });
    }

    /// [`Self::gather_tile`] for a tile of the given kind (see [`Self::by_tile_kind`]).
    ///
    /// # Safety
    /// As [`Self::gather_tile`]; `interior` only if [`Self::tile_is_interior`].
    #[inline(always)]
    unsafe fn gather_chunks<E: Element, const AG: u32>(&self, k: usize, t: usize, interior: bool) {
        let a = self.a;
        let n = self.piece_valid(k);
        // i = 0 is my own shard, which the reduce may have written.
        for i in (if owner_decodes(AG) { 1 } else { 0 })..self.world {
            let (s, pos) = self.tile_chunk(n, t, i, interior);
            if pos.valid > 0 {
                // SAFETY: owner s published this chunk (slot s of the
                // staging_out the transport chooses) at the `Reduced`
                // barrier; the `valid` output elements belong to this thread.
                unsafe {
                    let blob = (pick(&a.staging_out, if self.push_ag { self.me } else { s }) as *const u8).add(s * self.stride);
                    self.store_output::<E>(k, s, pos, &decode_chunk::<E, AG>(&fetch_chunk::<AG>(blob, pos.index, &self.ag_layout, self.group_shift)));
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn twoshot<E: Element, const RS: u32, const AG: u32>(a: &CollectiveArgs) {
    let block = block_idx() as usize;
    let blocks = grid_dim() as usize;
    let world = a.world as usize;
    let len = a.len as usize;
    let piece_len = a.piece_len as usize;
    let pieces = len.div_ceil(piece_len);
    let geo = ShardGeometry::new(if len < piece_len { len } else { piece_len }, world, a.group_size as usize);
    let c = TwoShot {
        a,
        tid: thread_idx() as usize,
        world,
        me: a.rank as usize,
        geo,
        rs_layout: ShardLayout::new(geo.shard_groups, a.group_size as usize, RS),
        ag_layout: ShardLayout::new(geo.shard_groups, a.group_size as usize, AG),
        group_shift: a.group_size.trailing_zeros(),
        stride: a.shard_stride as usize,
        push_rs: a.transport & Transport::PUSH_REDUCE_SCATTER != 0,
        push_ag: a.transport & Transport::PUSH_ALL_GATHER != 0,
    };
    let my_sync = pick(&a.sync, c.me) as *mut u32;
    // SAFETY: this rank's sync area; the store of the new epoch happens after
    // the last barrier, when every thread has read the old one.
    let epoch0 = unsafe { ld_global_u32(my_sync.add(sync_area::EPOCHS + block)) };
    // Benchmark diagnostics: skip a phase's data work (barriers still run).
    let stage = a.transport & Transport::DIAG_SKIP_STAGE == 0;
    let reduce = a.transport & Transport::DIAG_SKIP_REDUCE == 0;
    let gather = a.transport & Transport::DIAG_SKIP_GATHER == 0;

    // The schedule of the module docs. Every phase call runs on converged
    // warps and writes only buffers that are free at that point.
    let mut t = block;
    while stage && t < geo.tiles {
        // SAFETY: staging_in is free (previous call completed on every rank).
        unsafe { c.stage_tile::<E, RS>(0, t) };
        t += blocks;
    }
    for k in 0..pieces {
        let epoch = epoch0.wrapping_add(1 + k as u32);
        // SAFETY: every thread of the block reaches the barrier.
        if !unsafe { cross_rank_barrier(a, Phase::Staged, block, epoch) } {
            return;
        }
        let mut t = block;
        while reduce && t < geo.tiles {
            // SAFETY: after the Staged barrier of piece k.
            unsafe { c.reduce_tile::<E, RS, AG>(k, t) };
            t += blocks;
        }
        // SAFETY: every thread of the block reaches the barrier.
        if !unsafe { cross_rank_barrier(a, Phase::Reduced, block, epoch) } {
            return;
        }
        let next = k + 1 < pieces;
        let mut t = block;
        while t < geo.tiles {
            if stage && next {
                // SAFETY: staging_in is free (module docs).
                unsafe { c.stage_tile::<E, RS>(k + 1, t) };
            }
            if gather {
                // SAFETY: after the Reduced barrier of piece k.
                unsafe { c.gather_tile::<E, AG>(k, t) };
            }
            t += blocks;
        }
    }
    if c.tid == 0 {
        // SAFETY: this rank's own epoch slot for this block.
        unsafe { st_global_u32(my_sync.add(sync_area::EPOCHS + block), epoch0.wrapping_add(pieces as u32)) };
    }
}

#[inline(always)]
unsafe fn oneshot<E: Element>(a: &CollectiveArgs) {
    let tid = thread_idx() as usize;
    let block = block_idx() as usize;
    let blocks = grid_dim() as usize;
    let world = a.world as usize;
    let me = a.rank as usize;
    let len = a.len as usize;
    let slots = len.div_ceil(CHUNK) * CHUNK;
    let tiles = slots.div_ceil(THREADS as usize * CHUNK);
    let layout = ShardLayout::new(slots / CHUNK, CHUNK, 16);
    let my_sync = pick(&a.sync, me) as *mut u32;
    // SAFETY: as in `twoshot`.
    let epoch = unsafe { ld_global_u32(my_sync.add(sync_area::EPOCHS + block)) }.wrapping_add(1);
    // The slot of this call: the other one may still be read by a peer's
    // previous call (module docs).
    let slot_base = (epoch & 1) as usize * world * a.shard_stride as usize;
    let input = a.input as *const u16;
    let output = a.output as *mut u16;

    let mut t = block;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + tid, len, slots);
        // SAFETY: `valid` input elements; the chunk's raw slot lies in my
        // region of every rank's one-shot buffer, in this call's slot.
        unsafe {
            let wire = encode_chunk::<E, 16>(&load_elements::<E>(input.add(pos.index * CHUNK), pos.valid), pos, 4);
            if pos.in_slots {
                // Rank-rotated destinations, mine first (no incast).
                for i in 0..world {
                    let d = if me + i >= world { me + i - world } else { me + i };
                    store_chunk::<16>((pick(&a.staging_in, d) as *mut u8).add(slot_base + me * a.shard_stride as usize), &layout, pos, &wire, 4);
                }
            }
        }
        t += blocks;
    }
    // SAFETY: every thread of the block reaches the barrier.
    if !unsafe { cross_rank_barrier(a, Phase::Staged, block, epoch) } {
        return;
    }
    let mine = pick(&a.staging_in, me) as *const u8;
    let mut t = block;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + tid, len, slots);
        if pos.valid > 0 {
            // SAFETY: every rank pushed its chunk into my buffer before the
            // barrier; all loads are local.
            let acc = unsafe { sum_over_ranks::<E, 16>(|r| mine.add(slot_base + r * a.shard_stride as usize), world, pos.index, &layout, 4) };
            // SAFETY: `valid` output elements belong to this thread.
            unsafe { store_elements::<E>(output.add(pos.index * CHUNK), pos.valid, &acc) };
        }
        t += blocks;
    }
    if tid == 0 {
        // SAFETY: this rank's own epoch slot for this block; every thread
        // read the old value before the barrier.
        unsafe { st_global_u32(my_sync.add(sync_area::EPOCHS + block), epoch) };
    }
}

macro_rules! twoshot_kernels {
    ($($name:ident => $elem:ty, $rs:literal, $ag:literal;)*) => {$(
        /// Two-shot all-reduce entry point (see the module docs).
        ///
        /// # Safety
        /// `args` must describe valid, peer-mapped buffers sized for this call.
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(args: CollectiveArgs) {
            // SAFETY: forwarded caller contract.
            unsafe { twoshot::<$elem, $rs, $ag>(&args) }
        }
    )*};
}

twoshot_kernels! {
    allreduce_twoshot_bf16_raw => Bf16, 16, 16;
    allreduce_twoshot_bf16_q8q8 => Bf16, 8, 8;
    allreduce_twoshot_bf16_q8q6 => Bf16, 8, 6;
    allreduce_twoshot_bf16_q8q4 => Bf16, 8, 4;
    allreduce_twoshot_bf16_q6q8 => Bf16, 6, 8;
    allreduce_twoshot_bf16_q6q6 => Bf16, 6, 6;
    allreduce_twoshot_bf16_q6q4 => Bf16, 6, 4;
    allreduce_twoshot_bf16_q4q8 => Bf16, 4, 8;
    allreduce_twoshot_bf16_q4q6 => Bf16, 4, 6;
    allreduce_twoshot_bf16_q4q4 => Bf16, 4, 4;
    allreduce_twoshot_f16_raw => F16, 16, 16;
    allreduce_twoshot_f16_q8q8 => F16, 8, 8;
    allreduce_twoshot_f16_q8q6 => F16, 8, 6;
    allreduce_twoshot_f16_q8q4 => F16, 8, 4;
    allreduce_twoshot_f16_q6q8 => F16, 6, 8;
    allreduce_twoshot_f16_q6q6 => F16, 6, 6;
    allreduce_twoshot_f16_q6q4 => F16, 6, 4;
    allreduce_twoshot_f16_q4q8 => F16, 4, 8;
    allreduce_twoshot_f16_q4q6 => F16, 4, 6;
    allreduce_twoshot_f16_q4q4 => F16, 4, 4;
}

/// One-shot bf16 all-reduce (see the module docs).
///
/// # Safety
/// `args` must describe valid, peer-mapped buffers sized for this call.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn allreduce_oneshot_bf16(args: CollectiveArgs) {
    // SAFETY: forwarded caller contract.
    unsafe { oneshot::<Bf16>(&args) }
}

/// One-shot f16 all-reduce (see the module docs).
///
/// # Safety
/// `args` must describe valid, peer-mapped buffers sized for this call.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn allreduce_oneshot_f16(args: CollectiveArgs) {
    // SAFETY: forwarded caller contract.
    unsafe { oneshot::<F16>(&args) }
}
