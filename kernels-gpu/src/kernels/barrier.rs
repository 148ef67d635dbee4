//! The cross-GPU barrier between same-index blocks of every rank, with the
//! watchdog and failure propagation (docs/design.md R1-R6).
//!
//! Protocol for block `b`, phase `k`, epoch `e` (kept in device memory,
//! docs/design.md H6; the two-step kernel uses one epoch per piece):
//! 1. [`signal_peers`]: `bar.sync` (the block's earlier writes are done),
//!    then thread `t < world` signals peer `t`: at `Staged` it first stores
//!    this call's tag into `tags[e & 1][b][me]` of peer `t`, then
//!    `st.release.sys` of `e` into `flags[k][b][me]` of peer `t`. Each slot
//!    has exactly one writer (H1); phases have separate arrays (H3).
//! 2. [`wait_for_peers`]: thread `t < world` spins with `ld.relaxed.sys` on
//!    its *local* slot `flags[k][b][t]` until it holds `e` or `e + 1` (polling
//!    only local memory, H12), then reads it once more with `ld.acquire.sys`
//!    (the synchronizing read); or until the watchdog fires, or until its
//!    local `poison[t]` says rank `t` failed. Then `bar.red.or`: the whole
//!    block learns whether any wait failed and leaves together, so no thread
//!    is left in a divergent wait (H13).
//!
//! "Or `e + 1`" (wrapping comparison): a peer may signal `e + 1` before this
//! block has seen `e`: the one-shot crosses one barrier per call, so a peer
//! that passed it can finish the call and signal the next one's `Staged`
//! while this block still polls (the two-step's alternating phases would
//! allow equality). It cannot signal `e + 2`, which needs this block's
//! signal of `e + 1`; hence two tag slots by epoch parity, and a flag two
//! or more ahead is an error (the ranks' call sequences differ). Epochs only
//! grow until `Communicator::recover` zeroes them.
//!
//! # Failure (docs/design.md R6)
//! A block that times out, sees a mismatched tag or an epoch too far ahead,
//! or finds a poison word set, records the error as its rank's first error
//! (a local compare-and-swap) and writes it into `poison[me]` of *every*
//! rank. Every kernel checks the poison words at entry ([`entry_check`],
//! before it touches any peer's memory) and while it waits, and stops
//! without signalling or advancing its epoch. So a failure spreads to every
//! rank, also through ranks that only learnt of it (a rank waiting for one
//! that stopped sees that one's poison), and after it no kernel of any rank
//! can pair with a call other than its own: a block that failed did not
//! advance its epoch, and the next call that would reuse that epoch never
//! gets past its entry check. Each rank's host then reads a typed error
//! (`PeerTimeout`, `CollectiveMismatch` or `PeerFailed`) until `recover()`.
use super::chunk::pick;
use crate::abi::{sync_area, BarrierArgs, ErrorWord, Phase, MAX_WORLD};
use crate::intrinsics::mem::{atom_cas_relaxed_gpu_u32, ld_acquire_sys_u32, ld_relaxed_sys_u32, st_relaxed_sys_u32, st_release_sys_u32};
use crate::intrinsics::thread::{sync_threads, sync_threads_or, thread_idx};
use crate::intrinsics::timer::global_timer_ns;

/// Word offset of `flags[phase][block][0]` in a sync area.
#[inline(always)]
pub(super) fn flag_slot(phase: Phase, block: usize) -> usize {
    sync_area::FLAGS + phase as usize * sync_area::FLAGS_PER_PHASE + block * MAX_WORLD
}

/// Word offset of `tags[epoch & 1][block][0]` in a sync area.
#[inline(always)]
pub(super) fn tag_slot(epoch: u32, block: usize) -> usize {
    sync_area::TAGS + (epoch & 1) as usize * sync_area::TAGS_PER_PARITY + block * MAX_WORLD
}

/// Records `err` as this rank's first error (unless there is one) and
/// poisons every rank with it. Called by a thread that saw the failure
/// (several may: the first error word stays, the poison words carry one of
/// theirs).
///
/// # Safety
/// `args.sync` holds valid, peer-mapped sync areas of all `args.world` ranks.
#[inline(always)]
pub(super) unsafe fn fail(args: &BarrierArgs, err: ErrorWord) {
    let me = args.rank as usize;
    let local = pick(&args.sync, me) as *mut u32;
    // SAFETY: this rank's own error word (a local atomic); peers' poison
    // slots [me] are written by this rank only.
    unsafe {
        atom_cas_relaxed_gpu_u32(local.add(sync_area::ERROR), 0, err.0);
        let mut r = 0;
        while r < args.world as usize {
            st_release_sys_u32((pick(&args.sync, r) as *mut u32).add(sync_area::POISON + me), err.0);
            r += 1;
        }
    }
}

/// The error kind a block records when it finds `poison` in a poison word:
/// the host's abort, or a peer's failure.
#[inline(always)]
pub(super) fn poisoned_kind(poison: u32) -> u32 {
    if ErrorWord(poison).kind() == ErrorWord::KIND_ABORTED {
        ErrorWord::KIND_ABORTED
    } else {
        ErrorWord::KIND_PEER_FAILED
    }
}

/// Whether this block may run: no rank has poisoned this one. Returns the
/// same answer on every thread of the block. A kernel calls it before it
/// touches any peer's memory and returns at once when it fails.
///
/// # Safety
/// Called by every thread of the block; `args.sync` holds valid,
/// peer-mapped sync areas of all `args.world` ranks.
#[inline(always)]
pub unsafe fn entry_check(args: &BarrierArgs, block: usize) -> bool {
    let t = thread_idx() as usize;
    let local = pick(&args.sync, args.rank as usize) as *mut u32;
    let mut failed = false;
    // SAFETY: t < world indexes a poison slot of this rank's sync area.
    let poison = if t < args.world as usize { unsafe { ld_relaxed_sys_u32(local.add(sync_area::POISON + t)) } } else { 0 };
    if poison != 0 {
        failed = true;
        // SAFETY: as `fail` requires (caller contract).
        unsafe { fail(args, ErrorWord::new(poisoned_kind(poison), Phase::Staged as u32, t as u32, block as u32)) };
    }
    // SAFETY: every thread of the block reaches this barrier (caller contract).
    !unsafe { sync_threads_or(failed) }
}

/// Announce to every rank that this block reached `phase` at `epoch`, with
/// all its earlier writes (peer stores included) visible to them.
///
/// # Safety
/// Called by every thread of the block; `args.sync` holds valid, peer-mapped
/// sync areas of all `args.world` ranks.
#[inline(always)]
pub unsafe fn signal_peers(args: &BarrierArgs, phase: Phase, block: usize, epoch: u32) {
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
/// `epoch + 1`). Returns false (on every thread of the block) if a peer did
/// not arrive in time, entered with another tag, is two epochs ahead, or
/// failed; the error is then recorded in this rank's sync area and
/// propagated to every rank.
///
/// # Safety
/// As [`signal_peers`].
#[inline(always)]
pub unsafe fn wait_for_peers(args: &BarrierArgs, phase: Phase, block: usize, epoch: u32) -> bool {
    let t = thread_idx() as usize;
    let mut failed = false;
    if t < args.world as usize {
        let local = pick(&args.sync, args.rank as usize) as *mut u32;
        let slot = flag_slot(phase, block) + t;
        let start = global_timer_ns();
        loop {
            // Spin with relaxed loads; acquire once, when the epoch is there.
            // (An acquire load is followed by an invalidation of the whole
            // L1 of the SM, `CCTL.IVALL` in the SASS: in the spin that hits
            // every block on the SM at every poll.) The acquire re-read
            // returns this value or a later one (coherence), both written by
            // release stores that follow the peer's data writes of `epoch`.
            // Both loads are issued before either is used: one poll costs
            // one round trip.
            // SAFETY: local slots [b][t] and poison[t] of this rank's sync area.
            let (seen, poison) = unsafe { (ld_relaxed_sys_u32(local.add(slot)), ld_relaxed_sys_u32(local.add(sync_area::POISON + t))) };
            let ahead = seen.wrapping_sub(epoch) as i32;
            if ahead == 0 || ahead == 1 {
                // SAFETY: as above.
                unsafe { ld_acquire_sys_u32(local.add(slot)) };
                break;
            }
            let kind = if ahead > 1 {
                ErrorWord::KIND_EPOCH_SKEW
            } else if poison != 0 {
                poisoned_kind(poison)
            } else {
                0
            };
            if kind != 0 {
                failed = true;
                // SAFETY: as `fail` requires (caller contract).
                unsafe { fail(args, ErrorWord::new(kind, phase as u32, t as u32, block as u32)) };
                break;
            }
            if args.timeout_ns != 0 && global_timer_ns().wrapping_sub(start) > args.timeout_ns {
                failed = true;
                // SAFETY: as `fail` requires (caller contract).
                unsafe { fail(args, ErrorWord::new(ErrorWord::KIND_TIMEOUT, phase as u32, t as u32, block as u32)) };
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
            // SAFETY: as `fail` requires (caller contract).
            unsafe { fail(args, ErrorWord::new(ErrorWord::KIND_MISMATCH, phase as u32, t as u32, block as u32)) };
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
pub unsafe fn cross_rank_barrier(args: &BarrierArgs, phase: Phase, block: usize, epoch: u32) -> bool {
    // SAFETY: forwarded caller contract.
    unsafe {
        signal_peers(args, phase, block, epoch);
        wait_for_peers(args, phase, block, epoch)
    }
}
