//! The cross-GPU barrier between same-index blocks of every rank, with the
//! watchdog (shared rules 1-6).
//!
//! Protocol for block `b`, phase `k`, epoch `e` (the block's call count,
//! kept in device memory, hazard H6):
//! 1. `bar.sync`: the block's earlier writes are done;
//! 2. thread `t < world` signals peer `t`: at the entry barrier it first
//!    stores this call's tag into `tags[b][me]` of peer `t`, then
//!    `st.release.sys` of `e` into `flags[k][b][me]` of peer `t`. Each slot
//!    has exactly one writer (H1); phases have separate arrays (H3);
//! 3. thread `t < world` spins with `ld.acquire.sys` on its *local* slot
//!    `flags[k][b][t]` until it reads `e` (polling only local memory, H12),
//!    or until the watchdog fires;
//! 4. `bar.red.or`: the whole block learns whether any wait failed and leaves
//!    together, so no thread is left in a divergent wait (H13).
//!
//! Exact equality with `e` is safe: a peer cannot signal `e + 1` in a slot
//! before this block has passed barrier `e`, because its next call needs this
//! block's own signals first.
use super::chunk::pick;
use crate::abi::{sync_area, CollectiveArgs, ErrorWord, Phase};
use crate::intrinsics::mem::{ld_acquire_sys_u32, ld_relaxed_sys_u32, st_relaxed_sys_u32, st_release_sys_u32};
use crate::intrinsics::thread::{sync_threads, sync_threads_or, thread_idx};
use crate::intrinsics::timer::global_timer_ns;

/// Signal every rank and wait for every rank. Returns false (on every thread
/// of the block) if a peer did not arrive in time or entered with another tag;
/// the error is then recorded in this rank's sync area.
///
/// # Safety
/// Called by every thread of the block; `args.sync` holds valid, peer-mapped
/// sync areas of all `args.world` ranks.
#[inline(always)]
pub unsafe fn cross_rank_barrier(args: &CollectiveArgs, phase: Phase, block: usize, epoch: u32) -> bool {
    let t = thread_idx() as usize;
    let me = args.rank as usize;
    let world = args.world as usize;
    let slot = sync_area::FLAGS + phase as usize * sync_area::FLAGS_PER_PHASE + block * crate::abi::MAX_WORLD;
    let tag_slot = sync_area::TAGS + block * crate::abi::MAX_WORLD;
    // SAFETY: all threads reach this barrier (caller contract).
    unsafe { sync_threads() };
    let mut failed = false;
    if t < world {
        // SAFETY: sync areas are valid and peer-mapped; slot [b][me] of peer t
        // is written by this thread only.
        unsafe {
            let peer = pick(&args.sync, t) as *mut u32;
            if phase == Phase::Staged {
                st_relaxed_sys_u32(peer.add(tag_slot + me), args.tag);
            }
            st_release_sys_u32(peer.add(slot + me), epoch);
        }
        let local = pick(&args.sync, me) as *mut u32;
        let start = global_timer_ns();
        loop {
            // SAFETY: local slot [b][t] of this rank's sync area.
            if unsafe { ld_acquire_sys_u32(local.add(slot + t)) } == epoch {
                break;
            }
            if args.timeout_ns != 0 && global_timer_ns().wrapping_sub(start) > args.timeout_ns {
                failed = true;
                let err = ErrorWord::new(ErrorWord::KIND_TIMEOUT, phase as u32, t as u32, block as u32);
                // SAFETY: the error word of this rank's own sync area.
                unsafe { st_relaxed_sys_u32(local.add(sync_area::ERROR), err.0) };
                break;
            }
        }
        // The tag was stored before the flag's release, so after the acquire
        // it is the peer's tag for this very call.
        // SAFETY: local tag slot of this rank.
        if !failed && phase == Phase::Staged && unsafe { ld_relaxed_sys_u32(local.add(tag_slot + t)) } != args.tag {
            failed = true;
            let err = ErrorWord::new(ErrorWord::KIND_MISMATCH, phase as u32, t as u32, block as u32);
            // SAFETY: the error word of this rank's own sync area.
            unsafe { st_relaxed_sys_u32(local.add(sync_area::ERROR), err.0) };
        }
    }
    // SAFETY: all threads reach this barrier (caller contract).
    !unsafe { sync_threads_or(failed) }
}
