//! The LL one-shot (`allreduce_oneshot_ll_<dtype>`), for small messages:
//! the one-shot with its data carried in LL lines (NCCL's LL: each 8-byte
//! half of a 16-byte line holds a 32-bit payload word and a flag word, and
//! arrives whole), so the data is its own flag: no fence, no barrier wait.
//!
//! Per call, block `b` (the same grid on every rank, as the one-shot):
//! 1. it signals the call's barrier slot at `epoch` with the call's tag, as
//!    the one-shot's entry barrier does (`signal_peers`), but does not wait
//!    for it: the signal is what a peer in a barrier kernel (another call)
//!    checks, and finds a `CollectiveMismatch`;
//! 2. each thread pushes its line (4 elements of my input, flag = the call's
//!    tag) into my region of every peer's LL buffer, slot `epoch & 1`;
//! 3. each thread polls its line in every peer's region of my buffer until
//!    both flag words are set: equal to my tag, the peer's data of this call;
//!    another nonzero value, a peer in another LL call (a mismatch); it also
//!    watches the poison words, the watchdog, and the peers' barrier slots (a
//!    peer in a barrier kernel at this epoch with another tag: a mismatch);
//! 4. it zeroes each line it consumed, sums the ranks' values in f32 in
//!    rank order (from rank 0's value, as every reducer here), rounds and
//!    stores.
//!
//! Why a set flag means this call: a line is nonzero only between the
//! peer's write and my zeroing, and a peer writes slot `epoch & 1` of call
//! `e + 2` only after its call `e + 1`, which needed my part of `e + 1`
//! (lines or signal), sent by a later kernel than the one that zeroed call
//! `e`'s lines (the one-shot's argument, `oneshot.rs`, per block). A call
//! that fails leaves lines behind: `recover()` zeroes the LL buffers with
//! the sync areas. Flags are never 0 (a tag of 0 is sent as 1).

use super::barrier::{entry_check, fail, flag_slot, poisoned_kind, signal_peers, tag_slot};
use super::chunk::pick;
use crate::abi::{sync_area, ErrorWord, OneShotArgs, Phase, LL_LINE_BYTES, LL_LINE_ELEMS, THREADS};
use crate::codec::{Bf16, Element, F16};
use crate::intrinsics::mem::{
    ld_acquire_sys_u32, ld_global_u16, ld_global_u32, ld_global_v2, ld_relaxed_sys_u32, ld_relaxed_sys_v4, st_global_u16, st_global_u32, st_global_v2, st_global_v4,
    st_relaxed_sys_v4,
};
use crate::intrinsics::thread::{block_idx, sync_threads_or, thread_idx};
use crate::intrinsics::timer::global_timer_ns;

/// My line `line` of the input as two payload words (elements past `len`
/// are zero and never stored).
///
/// # Safety
/// `input` holds `len` elements, 16-byte aligned.
#[inline(always)]
unsafe fn load_line(input: *const u16, line: usize, len: usize) -> [u32; 2] {
    let first = line * LL_LINE_ELEMS;
    if first + LL_LINE_ELEMS <= len {
        // SAFETY: four elements in bounds, 8-byte aligned (line * 8 bytes
        // from a 16-byte aligned base).
        return unsafe { ld_global_v2(input.add(first) as *const [u32; 2]) };
    }
    let mut e = [0u32; LL_LINE_ELEMS];
    for (k, v) in e.iter_mut().enumerate() {
        if first + k < len {
            // SAFETY: element in bounds.
            *v = unsafe { ld_global_u16(input.add(first + k)) } as u32;
        }
    }
    [e[0] | e[1] << 16, e[2] | e[3] << 16]
}

/// The LL one-shot body (module docs).
///
/// # Safety
/// `a` describes this call: `buffers` the LL buffers of every rank (two
/// slots of `world` regions, `region_stride` bytes apart, each holding a
/// line per thread of the grid), peer-mapped; input and output hold `len`
/// elements, at most four per thread of the grid; every thread of the block
/// runs this.
#[inline(always)]
unsafe fn oneshot_ll<E: Element>(a: &OneShotArgs) {
    let tid = thread_idx() as usize;
    let block = block_idx() as usize;
    let world = a.barrier.world as usize;
    let me = a.barrier.rank as usize;
    let len = a.len as usize;
    let stride = a.region_stride as usize;
    let line = block * THREADS as usize + tid;
    let has_line = line * LL_LINE_ELEMS < len;
    let my_sync = pick(&a.barrier.sync, me) as *mut u32;
    // SAFETY: this rank's sync area; the new epoch is stored at the end,
    // after every thread has read the old one.
    let epoch = unsafe { ld_global_u32(my_sync.add(sync_area::EPOCHS + block)) }.wrapping_add(1);
    let slot = (epoch & 1) as usize * world * stride;
    let flag = if a.barrier.tag == 0 { 1 } else { a.barrier.tag };
    let input = a.input as *const u16;
    let output = a.output as *mut u16;
    // SAFETY: every thread of the block makes these calls.
    if !unsafe { entry_check(&a.barrier, block) } {
        return;
    }
    // SAFETY: as above.
    unsafe { signal_peers(&a.barrier, Phase::Staged, block, epoch) };
    let mut failed = false;
    if has_line {
        // SAFETY: the line lies in the input (has_line).
        let mine = unsafe { load_line(input, line, len) };
        let wire = [mine[0], flag, mine[1], flag];
        // Rank-rotated destinations (no incast); my own value stays here.
        for i in 1..world {
            let d = if me + i >= world { me + i - world } else { me + i };
            // SAFETY: my region of peer d's LL buffer in this call's slot,
            // line `line` < the grid's threads (caller contract).
            unsafe { st_relaxed_sys_v4((pick(&a.buffers, d) as *mut u8).add(slot + me * stride + line * LL_LINE_BYTES) as *mut [u32; 4], wire) };
        }
        let here = pick(&a.buffers, me) as *mut u8;
        // Summed as the lines arrive, in rank order from rank 0's value (not
        // 0.0 + value: -0 stays -0); no per-rank array (it would live in
        // local memory).
        let mut acc = [0.0f32; LL_LINE_ELEMS];
        let add = |acc: &mut [f32; LL_LINE_ELEMS], r: usize, w: [u32; 2]| {
            for (k, v) in acc.iter_mut().enumerate() {
                let x = E::to_f32((w[k / 2] >> (16 * (k % 2))) as u16);
                *v = if r == 0 { x } else { *v + x };
            }
        };
        let start = global_timer_ns();
        let mut r = 0;
        while r < world {
            if r == me {
                add(&mut acc, r, mine);
                r += 1;
                continue;
            }
            let at = here.wrapping_add(slot + r * stride + line * LL_LINE_BYTES) as *mut [u32; 4];
            // SAFETY: peer r's region of my LL buffer in this call's slot.
            let seen = unsafe { ld_relaxed_sys_v4(at) };
            if seen[1] == flag && seen[3] == flag {
                add(&mut acc, r, [seen[0], seen[2]]);
                // Consumed: zero until the peer's call two later (module docs).
                // SAFETY: as above; no peer writes this line again before
                // this kernel has ended.
                unsafe { st_global_v4(at, [0; 4]) };
                r += 1;
                continue;
            }
            // A peer in another call: another LL call's line, or a barrier
            // kernel's signal at this epoch with another tag.
            let other_line = (seen[1] != 0 && seen[1] != flag) || (seen[3] != 0 && seen[3] != flag);
            // SAFETY: this rank's sync area: peer r's barrier slot, poison slot.
            let (signalled, poison) = unsafe { (ld_relaxed_sys_u32(my_sync.add(flag_slot(Phase::Staged, block) + r)), ld_relaxed_sys_u32(my_sync.add(sync_area::POISON + r))) };
            let other_call = other_line
                || (signalled == epoch && {
                    // SAFETY: as above; the tag was stored before the flag's release.
                    let theirs = unsafe {
                        ld_acquire_sys_u32(my_sync.add(flag_slot(Phase::Staged, block) + r));
                        ld_relaxed_sys_u32(my_sync.add(tag_slot(epoch, block) + r))
                    };
                    theirs != a.barrier.tag
                });
            let kind = if other_call {
                ErrorWord::KIND_MISMATCH
            } else if poison != 0 {
                poisoned_kind(poison)
            } else if a.barrier.timeout_ns != 0 && global_timer_ns().wrapping_sub(start) > a.barrier.timeout_ns {
                ErrorWord::KIND_TIMEOUT
            } else {
                0
            };
            if kind != 0 {
                failed = true;
                // SAFETY: `args.sync` is valid and peer-mapped (caller contract).
                unsafe { fail(&a.barrier, ErrorWord::new(kind, Phase::Staged as u32, r as u32, block as u32)) };
                break;
            }
        }
        if !failed {
            let out = [E::from_f32(acc[0]) as u32 | (E::from_f32(acc[1]) as u32) << 16, E::from_f32(acc[2]) as u32 | (E::from_f32(acc[3]) as u32) << 16];
            let first = line * LL_LINE_ELEMS;
            if first + LL_LINE_ELEMS <= len {
                // SAFETY: four output elements of this thread, 8-byte aligned.
                unsafe { st_global_v2(output.add(first) as *mut [u32; 2], out) };
            } else {
                for k in 0..LL_LINE_ELEMS {
                    if first + k < len {
                        // SAFETY: element in bounds, written by this thread only.
                        unsafe { st_global_u16(output.add(first + k), (out[k / 2] >> (16 * (k % 2))) as u16) };
                    }
                }
            }
        }
    }
    // SAFETY: every thread of the block reaches it.
    if !unsafe { sync_threads_or(failed) } && tid == 0 {
        // SAFETY: this rank's own epoch slot for this block.
        unsafe { st_global_u32(my_sync.add(sync_area::EPOCHS + block), epoch) };
    }
}

/// LL one-shot bf16 all-reduce (see the module docs).
///
/// # Safety
/// `args` must describe valid, peer-mapped LL buffers sized for this call.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn allreduce_oneshot_ll_bf16(args: OneShotArgs) {
    // SAFETY: forwarded caller contract.
    unsafe { oneshot_ll::<Bf16>(&args) }
}

/// LL one-shot f16 all-reduce (see the module docs).
///
/// # Safety
/// `args` must describe valid, peer-mapped LL buffers sized for this call.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn allreduce_oneshot_ll_f16(args: OneShotArgs) {
    // SAFETY: forwarded caller contract.
    unsafe { oneshot_ll::<F16>(&args) }
}
