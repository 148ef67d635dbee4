//! The one-shot kernel (`allreduce_oneshot_<dtype>`), for small messages:
//! push my whole input, plain, into every rank's one-shot buffer (two
//! slots of `world` regions, `region_stride` bytes apart), one barrier, then every rank sums the `world` regions of its own
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

use super::barrier::{cross_rank_barrier, entry_check};
use super::chunk::{encode_chunk, load_elements, pick, store_chunk, store_elements, sum_over_ranks, ChunkPos};
use crate::abi::{sync_area, OneShotArgs, Phase, THREADS};
use crate::codec::wire::kind::Plain;
use crate::codec::{Bf16, Element, ShardLayout, Wire, CHUNK, F16};
use crate::intrinsics::mem::{ld_global_u32, st_global_u32};
use crate::intrinsics::thread::{block_idx, grid_dim, thread_idx};

/// The one-shot kernel body (module docs).
///
/// # Safety
/// `a` describes valid, peer-mapped buffers sized for this call; every
/// thread of the block runs this.
#[inline(always)]
unsafe fn oneshot<E: Element>(a: &OneShotArgs) {
    let tid = thread_idx() as usize;
    let block = block_idx() as usize;
    let blocks = grid_dim() as usize;
    let world = a.barrier.world as usize;
    let me = a.barrier.rank as usize;
    let len = a.len as usize;
    let slots = len.div_ceil(CHUNK) * CHUNK;
    let tiles = slots.div_ceil(THREADS as usize * CHUNK);
    let layout = ShardLayout::new(slots / CHUNK, CHUNK, Wire::Plain);
    let my_sync = pick(&a.barrier.sync, me) as *mut u32;
    // SAFETY: this rank's sync area; the new epoch is stored after the
    // barrier, when every thread has read the old one.
    let epoch = unsafe { ld_global_u32(my_sync.add(sync_area::EPOCHS + block)) }.wrapping_add(1);
    // The slot of this call: the other one may still be read by a peer's
    // previous call (module docs).
    let slot_base = (epoch & 1) as usize * world * a.region_stride as usize;
    let input = a.input as *const u16;
    let output = a.output as *mut u16;
    // A rank that failed, or learnt of a failure, runs nothing more until
    // `recover()` (barrier docs).
    // SAFETY: every thread of the block makes this call.
    if !unsafe { entry_check(&a.barrier, block) } {
        return;
    }

    let mut t = block;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + tid, len, slots);
        // SAFETY: `valid` input elements; the chunk's raw slot lies in my
        // region of every rank's one-shot buffer, in this call's slot.
        unsafe {
            let wire = encode_chunk::<E, Plain>(&load_elements::<E>(input.add(pos.index * CHUNK), pos.valid), pos, 4);
            if pos.in_slots {
                // Rank-rotated destinations, mine first (no incast).
                for i in 0..world {
                    let d = if me + i >= world { me + i - world } else { me + i };
                    store_chunk::<Plain, false>((pick(&a.buffers, d) as *mut u8).add(slot_base + me * a.region_stride as usize), &layout, pos, &wire, 4);
                }
            }
        }
        t += blocks;
    }
    // SAFETY: every thread of the block reaches the barrier.
    if !unsafe { cross_rank_barrier(&a.barrier, Phase::Staged, block, epoch) } {
        return;
    }
    let mine = pick(&a.buffers, me) as *const u8;
    let mut t = block;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + tid, len, slots);
        if pos.valid > 0 {
            // SAFETY: every rank pushed its chunk into my buffer before the
            // barrier; all loads are local.
            let acc = unsafe { sum_over_ranks::<E, Plain, false>(|r| mine.add(slot_base + r * a.region_stride as usize), world, pos.index, &layout, 4) };
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

/// One-shot bf16 all-reduce (see the module docs).
///
/// # Safety
/// `args` must describe valid, peer-mapped buffers sized for this call.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn allreduce_oneshot_bf16(args: OneShotArgs) {
    // SAFETY: forwarded caller contract.
    unsafe { oneshot::<Bf16>(&args) }
}

/// One-shot f16 all-reduce (see the module docs).
///
/// # Safety
/// `args` must describe valid, peer-mapped buffers sized for this call.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn allreduce_oneshot_f16(args: OneShotArgs) {
    // SAFETY: forwarded caller contract.
    unsafe { oneshot::<F16>(&args) }
}
