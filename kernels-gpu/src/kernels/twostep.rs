//! The two-step kernel (`allreduce_twostep_<dtype>_<rs>_<ag>`): reduce-scatter
//! then all-gather, each step in one hop. With plain wires it is the
//! unquantized two-shot (elements staged, f32 sums rounded once to the
//! element type); with quantized wires it is Flash All-Reduce. The
//! message runs in pieces of `piece_len` elements (the staging buffers hold
//! one piece); each piece is cut into `world` shards of whole units (the
//! quantization group, or `PLAIN_SHARD_UNIT`), shard
//! `s` owned by rank `s`. Block `b` of every rank handles tiles
//! `t ≡ b (mod grid)` of every shard in every phase, so it only ever waits for
//! block `b` of its peers. Per piece `k`:
//! 1. *stage*: encode every shard of my input (RS wire) into staging
//!    (pull: my own `staging_in`; push: straight into each owner's);
//! 2. barrier `Staged`; *reduce-scatter*: for my shard, read every rank's
//!    blob (pull: peer loads; push: local loads), dequantize, sum in f32 in
//!    rank order 0..world, re-encode (AG wire) into staging (pull: my own
//!    `staging_out`; push: every rank's); quantized kernels also decode the
//!    re-quantized chunk into my shard of the output here (the bytes every
//!    rank decodes, docs/design.md H15) and skip my own staging copy under push;
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
//! (Double-buffered slots with split barriers measured slower: more live
//! state, spills at 64 registers; docs/benchmarks.md.)
//! Across calls the next call's piece 0 plays piece `k + 1`: a rank starts
//! the next kernel only after this one completed (stream order), so no exit
//! barrier is needed (docs/design.md R9). Piece `k` uses epoch `e0 + 1 + k`
//! at both barriers, where `e0` is the block's stored epoch; the block
//! stores `e0 + pieces` at the end.
use super::barrier::{cross_rank_barrier, entry_check};
use super::chunk::{decode_chunk, element_bits, encode_chunk, encode_spiky_chunk, fetch_chunk, load_words, offset_in_group, pick, store_chunk, store_elements, sum_over_ranks, unpack_words, unroll, ChunkPos};
use crate::abi::{sync_area, Phase, PhaseSkip, ShardGeometry, Transport, TwoStepArgs, THREADS, TILE_ELEMS};
use crate::codec::wire::kind;
use crate::codec::{Bf16, Element, ShardLayout, WireKind, CHUNK, F16};
use crate::intrinsics::mem::{ld_global_u32, st_global_u32};
use crate::intrinsics::thread::{block_idx, grid_dim, thread_idx};

/// Whether the reduce writes the owner's shard of the output itself,
/// decoded from the re-quantized chunk in registers, so the all-gather skips
/// it (no local staging write and read-back). Quantized wires only: the
/// unquantized two-shot keeps the plain gather (its measured speed, which
/// `Auto` relies on, stays as it was).
#[inline(always)]
const fn owner_decodes<AG: WireKind>() -> bool {
    AG::WIRE.is_quantized()
}

/// What every phase of one two-step call needs; uniform across the block.
struct TwoStepCall<'a> {
    a: &'a TwoStepArgs,
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

impl TwoStepCall<'_> {
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
    /// Quantized wires only: the unquantized two-shot keeps the general
    /// path, because with the interior path it measured slower, for a
    /// reason not found (docs/benchmarks.md).
    #[inline(always)]
    fn tile_is_interior(&self, k: usize, t: usize) -> bool {
        (t + 1) * TILE_ELEMS <= self.geo.shard_len(self.piece_valid(k), self.world - 1)
    }

    /// Runs `phase(interior)` for tile `t` of piece `k`, with `interior` a
    /// constant in each of the two calls, so each kind of tile compiles to
    /// its own straight-line code. `W` is the phase's wire: plain wires
    /// always take the general path (see [`Self::tile_is_interior`]), and
    /// so do `SPIKY` kernels (one copy of their longer code keeps the kernel
    /// image small).
    #[inline(always)]
    fn by_tile_kind<W: WireKind, const SPIKY: bool>(&self, k: usize, t: usize, phase: impl Fn(bool)) {
        if W::WIRE.is_quantized() && !SPIKY && self.tile_is_interior(k, t) {
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
    unsafe fn stage_tile<E: Element, RS: WireKind, const SPIKY: bool>(&self, k: usize, t: usize) {
        // SAFETY: forwarded caller contract; `interior` as by_tile_kind found it.
        self.by_tile_kind::<RS, SPIKY>(k, t, #[inline(always)] |interior| unsafe { self.stage_chunks::<E, RS, SPIKY>(k, t, interior) });
    }

    /// [`Self::stage_tile`] for a tile of the given kind (see [`Self::by_tile_kind`]).
    ///
    /// # Safety
    /// As [`Self::stage_tile`]; `interior` only if [`Self::tile_is_interior`].
    #[inline(always)]
    unsafe fn stage_chunks<E: Element, RS: WireKind, const SPIKY: bool>(&self, k: usize, t: usize, interior: bool) {
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
                let wire = if SPIKY {
                    // The keys come from the input's own bits.
                    encode_spiky_chunk::<E, RS>(&words, || unpack_words::<E>(&words), pos_here, self.group_shift, self.rs_layout.spikes)
                } else {
                    encode_chunk::<E, RS>(&unpack_words::<E>(&words), pos_here, self.group_shift)
                };
                if pos_here.in_slots {
                    store_chunk::<RS, SPIKY>(blob, &self.rs_layout, pos_here, &wire, self.group_shift);
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
    unsafe fn reduce_tile<E: Element, RS: WireKind, AG: WireKind, const SPIKY: bool>(&self, k: usize, t: usize) {
        // SAFETY: forwarded caller contract; `interior` as by_tile_kind found it.
        self.by_tile_kind::<RS, SPIKY>(k, t, #[inline(always)] |interior| unsafe { self.reduce_chunk::<E, RS, AG, SPIKY>(k, t, interior) });
    }

    /// [`Self::reduce_tile`] for a tile of the given kind (see [`Self::by_tile_kind`]).
    ///
    /// # Safety
    /// As [`Self::reduce_tile`]; `interior` only if [`Self::tile_is_interior`].
    #[inline(always)]
    unsafe fn reduce_chunk<E: Element, RS: WireKind, AG: WireKind, const SPIKY: bool>(
        &self,
        k: usize,
        t: usize,
        interior: bool,
    ) {
        let a = self.a;
        let me = self.me;
        let stride = self.stride;
        // My shard is visited first (i = 0).
        let (_, pos) = self.tile_chunk(self.piece_valid(k), t, 0, interior);
        let mut acc = [0.0f32; CHUNK];
        if pos.in_slots {
            // SAFETY: every rank published its blob of my shard at the barrier.
            acc = unsafe {
                sum_over_ranks::<E, RS, SPIKY>(
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
        let wire = unsafe {
            if SPIKY && self.ag_layout.spikes > 0 {
                encode_spiky_chunk::<E, AG>(&element_bits::<E>(&acc), || acc, pos, self.group_shift, self.ag_layout.spikes)
            } else {
                encode_chunk::<E, AG>(&acc, pos, self.group_shift)
            }
        };
        if pos.in_slots {
            if self.push_ag {
                unroll!(d in 8 => {
                    if d < self.world && (d != me || !owner_decodes::<AG>()) {
                        // SAFETY: slot `me` of rank d's staging_out is written by me only.
                        unsafe { store_chunk::<AG, SPIKY>((pick(&a.staging_out, d) as *mut u8).add(me * stride), &self.ag_layout, pos, &wire, self.group_shift) };
                    }
                });
            } else {
                // SAFETY: slot `me` of my own staging_out.
                unsafe { store_chunk::<AG, SPIKY>((pick(&a.staging_out, me) as *mut u8).add(me * stride), &self.ag_layout, pos, &wire, self.group_shift) };
            }
        }
        // My shard of the output, decoded from the very wire chunk every
        // peer decodes (docs/design.md H15: no rank uses its unquantized sum), here
        // instead of in the gather (`owner_decodes`): this phase is
        // link-bound with HBM to spare, the gather is HBM-bound, and my own
        // blob need not be written to staging and read back. In place this
        // overwrites input this block's stage of piece `k` has already read
        // (same tile).
        if owner_decodes::<AG>() && pos.valid > 0 {
            // SAFETY: the `valid` output elements of my shard's chunk belong to this thread.
            let offset = offset_in_group(pos.index, self.group_shift);
            unsafe { self.store_output::<E>(k, me, pos, &decode_chunk::<E, AG, SPIKY>(&wire, offset, self.ag_layout.spikes)) };
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
    unsafe fn gather_tile<E: Element, AG: WireKind, const SPIKY: bool>(&self, k: usize, t: usize) {
        // SAFETY: forwarded caller contract; `interior` as by_tile_kind found it.
        self.by_tile_kind::<AG, SPIKY>(k, t, #[inline(always)] |interior| unsafe { self.gather_chunks::<E, AG, SPIKY>(k, t, interior) });
    }

    /// [`Self::gather_tile`] for a tile of the given kind (see [`Self::by_tile_kind`]).
    ///
    /// # Safety
    /// As [`Self::gather_tile`]; `interior` only if [`Self::tile_is_interior`].
    #[inline(always)]
    unsafe fn gather_chunks<E: Element, AG: WireKind, const SPIKY: bool>(&self, k: usize, t: usize, interior: bool) {
        let a = self.a;
        let n = self.piece_valid(k);
        // i = 0 is my own shard, which the reduce may have written.
        for i in (if owner_decodes::<AG>() { 1 } else { 0 })..self.world {
            let (s, pos) = self.tile_chunk(n, t, i, interior);
            if pos.valid > 0 {
                // SAFETY: owner s published this chunk (slot s of the
                // staging_out the transport chooses) at the `Reduced`
                // barrier; the `valid` output elements belong to this thread.
                unsafe {
                    let blob = (pick(&a.staging_out, if self.push_ag { self.me } else { s }) as *const u8).add(s * self.stride);
                    let wire = fetch_chunk::<AG, SPIKY>(blob, pos.index, &self.ag_layout, self.group_shift);
                    let offset = offset_in_group(pos.index, self.group_shift);
                    self.store_output::<E>(k, s, pos, &decode_chunk::<E, AG, SPIKY>(&wire, offset, self.ag_layout.spikes));
                }
            }
        }
    }
}

/// The two-step kernel body (module docs). Diagnostic kernels pass the
/// phases to skip; production kernels pass [`PhaseSkip::NONE`], a constant,
/// so the checks compile away.
///
/// # Safety
/// `a` describes valid, peer-mapped buffers sized for this call; every
/// thread of the block runs this.
#[inline(always)]
unsafe fn twostep<E: Element, RS: WireKind, AG: WireKind, const SPIKY: bool>(a: &TwoStepArgs, skip: PhaseSkip) {
    let block = block_idx() as usize;
    let blocks = grid_dim() as usize;
    let world = a.barrier.world as usize;
    let len = a.len as usize;
    let piece_len = a.piece_len as usize;
    let pieces = len.div_ceil(piece_len);
    let geo = ShardGeometry::new(if len < piece_len { len } else { piece_len }, world, a.shard_unit as usize);
    let c = TwoStepCall {
        a,
        tid: thread_idx() as usize,
        world,
        me: a.barrier.rank as usize,
        geo,
        rs_layout: ShardLayout::new(geo.shard_groups, a.shard_unit as usize, RS::WIRE).with_spikes(a.rs_spikes as usize),
        ag_layout: ShardLayout::new(geo.shard_groups, a.shard_unit as usize, AG::WIRE).with_spikes(a.ag_spikes as usize),
        group_shift: a.shard_unit.trailing_zeros(),
        stride: a.shard_stride as usize,
        push_rs: Transport::pushes_reduce_scatter(a.transport),
        push_ag: Transport::pushes_all_gather(a.transport),
    };
    let my_sync = pick(&a.barrier.sync, c.me) as *mut u32;
    // SAFETY: this rank's sync area; the store of the new epoch happens after
    // the last barrier, when every thread has read the old one.
    let epoch0 = unsafe { ld_global_u32(my_sync.add(sync_area::EPOCHS + block)) };
    // Benchmark diagnostics: skip a phase's data work (barriers still run).
    let stage = !skip.contains(PhaseSkip::STAGE);
    let reduce = !skip.contains(PhaseSkip::REDUCE);
    let gather = !skip.contains(PhaseSkip::GATHER);

    // A rank that failed, or learnt of a failure, runs nothing more until
    // `recover()` (barrier docs: no call can pair with another one).
    // SAFETY: every thread of the block makes this call.
    if !unsafe { entry_check(&a.barrier, block) } {
        return;
    }
    // The schedule of the module docs. Every phase call runs on converged
    // warps and writes only buffers that are free at that point.
    let mut t = block;
    while stage && t < geo.tiles {
        // SAFETY: staging_in is free (previous call completed on every rank).
        unsafe { c.stage_tile::<E, RS, SPIKY>(0, t) };
        t += blocks;
    }
    for k in 0..pieces {
        let epoch = epoch0.wrapping_add(1 + k as u32);
        // SAFETY: every thread of the block reaches the barrier.
        if !unsafe { cross_rank_barrier(&a.barrier, Phase::Staged, block, epoch) } {
            return;
        }
        let mut t = block;
        while reduce && t < geo.tiles {
            // SAFETY: after the Staged barrier of piece k.
            unsafe { c.reduce_tile::<E, RS, AG, SPIKY>(k, t) };
            t += blocks;
        }
        // SAFETY: every thread of the block reaches the barrier.
        if !unsafe { cross_rank_barrier(&a.barrier, Phase::Reduced, block, epoch) } {
            return;
        }
        let next = k + 1 < pieces;
        let mut t = block;
        while t < geo.tiles {
            if stage && next {
                // SAFETY: staging_in is free (module docs).
                unsafe { c.stage_tile::<E, RS, SPIKY>(k + 1, t) };
            }
            if gather {
                // SAFETY: after the Reduced barrier of piece k.
                unsafe { c.gather_tile::<E, AG, SPIKY>(k, t) };
            }
            t += blocks;
        }
    }
    if c.tid == 0 {
        // SAFETY: this rank's own epoch slot for this block.
        unsafe { st_global_u32(my_sync.add(sync_area::EPOCHS + block), epoch0.wrapping_add(pieces as u32)) };
    }
}

macro_rules! twostep_entry_points {
    ($((($rv:ident $rn:ident $rb:literal) ($av:ident $an:ident $ab:literal)))*) => {
        $(
            const _: () = {
                /// Two-step all-reduce entry point, bf16 (see the module docs).
                ///
                /// # Safety
                /// `args` must describe valid, peer-mapped buffers sized for this call.
                #[export_name = crate::twostep_kernel_name!("", bf16, $rn, $an)]
                unsafe extern "ptx-kernel" fn entry(args: TwoStepArgs) {
                    // SAFETY: forwarded caller contract.
                    unsafe { twostep::<Bf16, kind::$rv, kind::$av, false>(&args, PhaseSkip::NONE) }
                }
            };
        )*
        $(
            const _: () = {
                /// Two-step all-reduce entry point, f16 (see the module docs).
                ///
                /// # Safety
                /// `args` must describe valid, peer-mapped buffers sized for this call.
                #[export_name = crate::twostep_kernel_name!("", f16, $rn, $an)]
                unsafe extern "ptx-kernel" fn entry(args: TwoStepArgs) {
                    // SAFETY: forwarded caller contract.
                    unsafe { twostep::<F16, kind::$rv, kind::$av, false>(&args, PhaseSkip::NONE) }
                }
            };
        )*
    };
}
crate::twostep_wire_pairs! { twostep_entry_points }

macro_rules! spiky_entry_points {
    ($((($rv:ident $rn:ident $rb:literal) ($av:ident $an:ident $ab:literal)))*) => {
        $(
            const _: () = {
                /// Two-step all-reduce entry point with spike reserving
                /// (`TwoStepArgs::rs_spikes` / `ag_spikes`), bf16.
                ///
                /// # Safety
                /// `args` must describe valid, peer-mapped buffers sized for this call.
                #[export_name = crate::twostep_kernel_name!("spiky_", bf16, $rn, $an)]
                unsafe extern "ptx-kernel" fn entry(args: TwoStepArgs) {
                    // SAFETY: forwarded caller contract.
                    unsafe { twostep::<Bf16, kind::$rv, kind::$av, true>(&args, PhaseSkip::NONE) }
                }
            };
            const _: () = {
                /// Two-step all-reduce entry point with spike reserving, f16.
                ///
                /// # Safety
                /// `args` must describe valid, peer-mapped buffers sized for this call.
                #[export_name = crate::twostep_kernel_name!("spiky_", f16, $rn, $an)]
                unsafe extern "ptx-kernel" fn entry(args: TwoStepArgs) {
                    // SAFETY: forwarded caller contract.
                    unsafe { twostep::<F16, kind::$rv, kind::$av, true>(&args, PhaseSkip::NONE) }
                }
            };
        )*
    };
}
crate::twostep_wire_pairs! { quantized spiky_entry_points }

macro_rules! diagnostic_entry_points {
    ($(($dtype:ident $elem:ident (($rv:ident $rn:ident $rb:literal) ($av:ident $an:ident $ab:literal))))*) => {
        $(
            const _: () = {
                /// Diagnostic two-step entry point: skips the data work of the
                /// phases in `skip` (its results are wrong; for the benchmark).
                ///
                /// # Safety
                /// As the production kernel of the same name without `diag_`.
                #[export_name = crate::twostep_kernel_name!("diag_", $dtype, $rn, $an)]
                unsafe extern "ptx-kernel" fn entry(args: TwoStepArgs, skip: PhaseSkip) {
                    // SAFETY: forwarded caller contract.
                    unsafe { twostep::<$elem, kind::$rv, kind::$av, false>(&args, skip) }
                }
            };
        )*
    };
}
crate::diagnostic_kernels! { diagnostic_entry_points }
