//! The all-reduce kernels.
//!
//! **Two-shot** (`allreduce_twoshot_<dtype>_<rs><ag>`): Flash All-Reduce. The
//! message is cut into `world` shards of whole groups; shard `s` is owned by
//! rank `s`. Block `b` of every rank handles tiles `t ≡ b (mod grid)` of every
//! shard in every phase, so it only ever waits for block `b` of its peers.
//! 1. *stage*: quantize every shard of my input (RS bits) into staging
//!    (pull: my own `staging_in`; push: straight into each owner's);
//! 2. entry barrier; *reduce-scatter*: for my shard, read every rank's blob
//!    (pull: peer loads; push: local loads), dequantize, sum in f32 in rank
//!    order 0..world, re-quantize (AG bits) into staging (pull: my own
//!    `staging_out`; push: every rank's);
//! 3. barrier; *all-gather*: read every owner's re-quantized blob (mine
//!    included: all ranks decode the same bytes, hazard H15) and write my
//!    output. [`Transport`] has the buffer roles of both transports.
//! No exit barrier is needed: a rank overwrites `staging_in` / `staging_out`
//! only in a later call, after that call's entry barrier, which peers pass only
//! once their previous kernel (and all its reads) has completed (rule 5).
//! With RS = AG = 16 the same kernel is the unquantized two-shot: raw
//! elements staged, f32 sums rounded once to the element type.
//!
//! **One-shot** (`allreduce_oneshot_<dtype>`), for small messages: stage my
//! whole input raw, entry barrier, every rank reads every rank's staging and
//! sums in rank order, exit barrier (peers may still read my staging until
//! they pass it, and the next call overwrites it before any barrier).
use super::barrier::cross_rank_barrier;
use super::chunk::{decode_chunk, encode_chunk, fetch_chunk, load_elements, pick, store_chunk, store_elements, sum_over_ranks, unroll, ChunkPos};
use crate::abi::{sync_area, CollectiveArgs, Phase, ShardGeometry, Transport, THREADS};
use crate::codec::{Bf16, Element, ShardLayout, CHUNK, F16};
use crate::intrinsics::mem::{ld_global_u32, st_global_u32};
use crate::intrinsics::thread::{block_idx, grid_dim, thread_idx};

#[inline(always)]
unsafe fn twoshot<E: Element, const RS: u32, const AG: u32>(a: &CollectiveArgs) {
    let tid = thread_idx() as usize;
    let block = block_idx() as usize;
    let blocks = grid_dim() as usize;
    let world = a.world as usize;
    let me = a.rank as usize;
    let len = a.len as usize;
    let group_shift = a.group_size.trailing_zeros();
    let geo = ShardGeometry::new(len, world, a.group_size as usize);
    let rs_layout = ShardLayout::new(geo.shard_groups, a.group_size as usize, RS);
    let ag_layout = ShardLayout::new(geo.shard_groups, a.group_size as usize, AG);
    let stride = a.shard_stride as usize;
    let my_sync = pick(&a.sync, me) as *mut u32;
    // SAFETY: this rank's sync area; the store of the new epoch happens after
    // the last barrier, when every thread has read the old one.
    let epoch = unsafe { ld_global_u32(my_sync.add(sync_area::EPOCHS + block)) }.wrapping_add(1);
    let input = a.input as *const u16;
    let output = a.output as *mut u16;
    let push_rs = a.transport & Transport::PUSH_REDUCE_SCATTER != 0;
    let push_ag = a.transport & Transport::PUSH_ALL_GATHER != 0;
    // Benchmark diagnostics: an empty loop range skips a phase's data work.
    let tiles = |skip: u32| if a.transport & skip != 0 { 0 } else { geo.tiles };

    // 1. Stage (quantize) every shard of my input. Tiles outside, shards
    // inside in an order rotated by rank (mine first): at any moment the
    // ranks write to *different* owners instead of all to owner 0 (an incast
    // that capped the links at 1/(W-1) of their bandwidth, measured), and
    // local and remote stores interleave.
    let mut t = block;
    while t < tiles(Transport::DIAG_SKIP_STAGE) {
        for i in 0..world {
            let s = (me + i) % world;
            let shard_len = geo.shard_len(len, s);
            let pos = ChunkPos::new(t * THREADS as usize + tid, shard_len, geo.shard_slots);
            // SAFETY: `valid` elements of shard s are inside the input; the
            // warp is converged; the chunk's slot in the staging buffer the
            // transport chooses is this thread's to write.
            unsafe {
                let blob = if push_rs {
                    (pick(&a.staging_in, s) as *mut u8).add(me * stride)
                } else {
                    (pick(&a.staging_in, me) as *mut u8).add(s * stride)
                };
                let x = load_elements::<E>(input.add(s * geo.shard_slots + pos.index * CHUNK), pos.valid);
                let wire = encode_chunk::<E, RS>(&x, pos, group_shift);
                if pos.in_slots {
                    store_chunk::<RS>(blob, &rs_layout, pos, &wire, group_shift);
                }
            }
        }
        t += blocks;
    }
    // SAFETY: every thread of the block reaches the barrier.
    if !unsafe { cross_rank_barrier(a, Phase::Staged, block, epoch) } {
        return;
    }

    // 2. Reduce my shard: peers' blobs, rank order, f32; re-quantize.
    {
        let shard_len = geo.shard_len(len, me);
        let mut t = block;
        while t < tiles(Transport::DIAG_SKIP_REDUCE) {
            let pos = ChunkPos::new(t * THREADS as usize + tid, shard_len, geo.shard_slots);
            let mut acc = [0.0f32; CHUNK];
            if pos.in_slots {
                // SAFETY: every rank published its blob of my shard at the entry barrier.
                acc = unsafe {
                    sum_over_ranks::<E, RS>(
                        |r| {
                            if push_rs {
                                (pick(&a.staging_in, me) as *const u8).add(r * stride)
                            } else {
                                (pick(&a.staging_in, r) as *const u8).add(me * stride)
                            }
                        },
                        world,
                        pos.index,
                        &rs_layout,
                        group_shift,
                    )
                };
            }
            // SAFETY: the warp is converged.
            let wire = unsafe { encode_chunk::<E, AG>(&acc, pos, group_shift) };
            if pos.in_slots {
                if push_ag {
                    unroll!(d in 8 => {
                        if d < world {
                            // SAFETY: slot `me` of rank d's staging_out is written by me only.
                            unsafe { store_chunk::<AG>((pick(&a.staging_out, d) as *mut u8).add(me * stride), &ag_layout, pos, &wire, group_shift) };
                        }
                    });
                } else {
                    // SAFETY: slot `me` of my own staging_out.
                    unsafe { store_chunk::<AG>((pick(&a.staging_out, me) as *mut u8).add(me * stride), &ag_layout, pos, &wire, group_shift) };
                }
            }
            t += blocks;
        }
    }
    // SAFETY: every thread of the block reaches the barrier.
    if !unsafe { cross_rank_barrier(a, Phase::Reduced, block, epoch) } {
        return;
    }

    // 3. Gather: decode every owner's re-quantized blob into my output
    // (tiles outside, owners inside in rank-rotated order, as in step 1).
    let mut t = block;
    while t < tiles(Transport::DIAG_SKIP_GATHER) {
        for i in 0..world {
            let s = (me + i) % world;
            let shard_len = geo.shard_len(len, s);
            let pos = ChunkPos::new(t * THREADS as usize + tid, shard_len, geo.shard_slots);
            if pos.valid > 0 {
                // SAFETY: owner s published this chunk (slot s of the
                // staging_out the transport chooses) at the second barrier;
                // the `valid` output elements belong to this thread.
                unsafe {
                    let blob = (pick(&a.staging_out, if push_ag { me } else { s }) as *const u8).add(s * stride);
                    let x = decode_chunk::<E, AG>(&fetch_chunk::<AG>(blob, pos.index, &ag_layout, group_shift));
                    store_elements::<E>(output.add(s * geo.shard_slots + pos.index * CHUNK), pos.valid, &x);
                }
            }
        }
        t += blocks;
    }
    if tid == 0 {
        // SAFETY: this rank's own epoch slot for this block.
        unsafe { st_global_u32(my_sync.add(sync_area::EPOCHS + block), epoch) };
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
    let input = a.input as *const u16;
    let output = a.output as *mut u16;
    let staging = pick(&a.staging_in, me) as *mut u8;

    let mut t = block;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + tid, len, slots);
        // SAFETY: `valid` input elements; the chunk's raw slot is in my staging.
        unsafe {
            let x = load_elements::<E>(input.add(pos.index * CHUNK), pos.valid);
            if pos.in_slots {
                store_chunk::<16>(staging, &layout, pos, &encode_chunk::<E, 16>(&x, pos, 4), 4);
            }
        }
        t += blocks;
    }
    // SAFETY: every thread of the block reaches the barrier.
    if !unsafe { cross_rank_barrier(a, Phase::Staged, block, epoch) } {
        return;
    }
    let mut t = block;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + tid, len, slots);
        if pos.valid > 0 {
            // SAFETY: every rank published its staging at the entry barrier.
            let acc = unsafe {
                sum_over_ranks::<E, 16>(|r| pick(&a.staging_in, r) as *const u8, world, pos.index, &layout, 4)
            };
            // SAFETY: `valid` output elements belong to this thread.
            unsafe { store_elements::<E>(output.add(pos.index * CHUNK), pos.valid, &acc) };
        }
        t += blocks;
    }
    // Exit barrier: peers are done reading my staging before I may leave.
    // SAFETY: every thread of the block reaches the barrier.
    if !unsafe { cross_rank_barrier(a, Phase::Reduced, block, epoch) } {
        return;
    }
    if tid == 0 {
        // SAFETY: this rank's own epoch slot for this block.
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
