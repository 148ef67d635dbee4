//! The cross-GPU barrier between same-index blocks of every rank, with the
//! watchdog (docs/design.md R1-R6), in two halves so a block can do independent
//! work between announcing its arrival and waiting for its peers.
//!
//! Protocol for block `b`, phase `k`, epoch `e` (kept in device memory,
//! docs/design.md H6; the two-step kernel uses one epoch per piece):
//! 1. [`signal_peers`]: `bar.sync` (the block's earlier writes are done),
//!    then thread `t < world` signals peer `t`: at `Staged` it first stores
//!    this call's tag into `tags[e & 1][b][me]` of peer `t`, then
//!    `st.release.sys` of `e` into `flags[k][b][me]` of peer `t`. Each slot
//!    has exactly one writer (H1); phases have separate arrays (H3). The
//!    other warps go on at once.
//! 2. [`wait_for_peers`]: thread `t < world` spins with `ld.relaxed.sys` on
//!    its *local* slot `flags[k][b][t]` until it holds `e` or later (polling
//!    only local memory, H12), then reads it once more with `ld.acquire.sys`
//!    (the synchronizing read), or until the watchdog fires; then
//!    `bar.red.or`: the whole block learns whether any wait failed and
//!    leaves together, so no thread is left in a divergent wait (H13).
//!
//! "Or later" (wrapping comparison): a peer may signal `e + 1` before this
//! block has seen `e`: the one-shot crosses one barrier per call, so a peer
//! that passed it can finish the call and signal the next one's `Staged`
//! while this block still polls (the two-step's alternating phases would
//! allow equality). It cannot signal `e + 2`, which needs this block's
//! signal of `e + 1`; hence two tag slots by epoch parity. Epochs only grow
//! until `Communicator::recover` zeroes them.
use super::chunk::pick;
use crate::abi::{sync_area, CollectiveArgs, ErrorWord, Phase};
use crate::intrinsics::mem::{ld_acquire_sys_u32, ld_relaxed_sys_u32, st_relaxed_sys_u32, st_release_sys_u32};
use crate::intrinsics::thread::{sync_threads, sync_threads_or, thread_idx};
use crate::intrinsics::timer::global_timer_ns;

/// Word offset of `flags[phase][block][0]` in a sync area.
#[inline(always)]
fn flag_slot(phase: Phase, block: usize) -> usize {
    sync_area::FLAGS + phase as usize * sync_area::FLAGS_PER_PHASE + block * crate::abi::MAX_WORLD
}

/// Word offset of `tags[epoch & 1][block][0]` in a sync area.
#[inline(always)]
fn tag_slot(epoch: u32, block: usize) -> usize {
    sync_area::TAGS + (epoch & 1) as usize * sync_area::TAGS_PER_PARITY + block * crate::abi::MAX_WORLD
}

/// Announce to every rank that this block reached `phase` at `epoch`, with
/// all its earlier writes (peer stores included) visible to them.
///
/// # Safety
/// Called by every thread of the block; `args.sync` holds valid, peer-mapped
/// sync areas of all `args.world` ranks.
#[inline(always)]
pub unsafe fn signal_peers(args: &CollectiveArgs, phase: Phase, block: usize, epoch: u32) {
    let t = thread_idx() as usize;
    let me = args.rank as usize;
    // SAFETY: all threads reach this point (caller contract).
    unsafe { sync_threads() };
    if t < args.world as usize {
        // SAFETY: sync areas are valid and peer-mapped; slot [b][me] of peer t
        // is written by this thread only.
        unsafe {
            let peer = pick(&args.sync, t) as *mut u32;
            if phase == Phase::Staged {
                st_relaxed_sys_u32(peer.add(tag_slot(epoch, block) + me), args.tag);
            }
            st_release_sys_u32(peer.add(flag_slot(phase, block) + me), epoch);
        }
    }
}

/// Wait until every rank's block `block` signalled `phase` at `epoch` (or
/// later). Returns false (on every thread of the block) if a peer did not
/// arrive in time or entered with another tag; the error is then recorded
/// in this rank's sync area.
///
/// # Safety
/// As [`signal_peers`].
#[inline(always)]
pub unsafe fn wait_for_peers(args: &CollectiveArgs, phase: Phase, block: usize, epoch: u32) -> bool {
    let t = thread_idx() as usize;
    let me = args.rank as usize;
    let mut failed = false;
    if t < args.world as usize {
        let local = pick(&args.sync, me) as *mut u32;
        let slot = flag_slot(phase, block) + t;
        let start = global_timer_ns();
        loop {
            // Spin with relaxed loads; acquire once, when the epoch is there.
            // (An acquire load is followed by an invalidation of the whole
            // L1 of the SM, `CCTL.IVALL` in the SASS: in the spin that hits
            // every block on the SM at every poll.) The acquire re-read
            // returns this value or a later one (coherence), both written by
            // release stores that follow the peer's data writes of `epoch`.
            // SAFETY: local slot [b][t] of this rank's sync area.
            let seen = unsafe { ld_relaxed_sys_u32(local.add(slot)) };
            if seen.wrapping_sub(epoch) as i32 >= 0 {
                // SAFETY: as above.
                unsafe { ld_acquire_sys_u32(local.add(slot)) };
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
        // it is the peer's tag for this epoch: the peer may already have
        // signalled the next epoch (the one-shot has one barrier per call, so
        // a peer can leave the call before this block reads), but that tag
        // went to the other parity slot, and the one after needs this
        // block's own next signal.
        // SAFETY: local tag slot of this rank.
        if !failed && phase == Phase::Staged && unsafe { ld_relaxed_sys_u32(local.add(tag_slot(epoch, block) + t)) } != args.tag {
            failed = true;
            let err = ErrorWord::new(ErrorWord::KIND_MISMATCH, phase as u32, t as u32, block as u32);
            // SAFETY: the error word of this rank's own sync area.
            unsafe { st_relaxed_sys_u32(local.add(sync_area::ERROR), err.0) };
        }
    }
    // SAFETY: all threads reach this barrier (caller contract).
    !unsafe { sync_threads_or(failed) }
}

/// Signal every rank and wait for every rank ([`signal_peers`] then
/// [`wait_for_peers`]).
///
/// # Safety
/// As [`signal_peers`].
#[inline(always)]
pub unsafe fn cross_rank_barrier(args: &CollectiveArgs, phase: Phase, block: usize, epoch: u32) -> bool {
    // SAFETY: forwarded caller contract.
    unsafe {
        signal_peers(args, phase, block, epoch);
        wait_for_peers(args, phase, block, epoch)
    }
}
