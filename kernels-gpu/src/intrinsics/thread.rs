//! Thread, block and grid indices, and block-wide barriers.
use core::arch::nvptx;

/// `%tid.x`: index of this thread in its block.
#[inline(always)]
pub fn thread_idx() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// `%ctaid.x`: index of this block in the grid.
#[inline(always)]
pub fn block_idx() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_block_idx_x() as u32 }
}

/// `%ntid.x`: threads per block.
#[inline(always)]
pub fn block_dim() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_block_dim_x() as u32 }
}

/// `%nctaid.x`: blocks in the grid.
#[inline(always)]
pub fn grid_dim() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_grid_dim_x() as u32 }
}

/// `%laneid`: index of this thread in its warp (0..32).
#[inline(always)]
pub fn lane_id() -> u32 {
    let lane: u32;
    // SAFETY: reading a special register has no preconditions.
    unsafe { core::arch::asm!("mov.u32 {0}, %laneid;", out(reg32) lane, options(nomem, nostack, pure)) };
    lane
}

#[allow(improper_ctypes)]
extern "C" {
    #[link_name = "llvm.nvvm.barrier0.or"]
    fn barrier0_or(pred: i32) -> i32;
}

/// `bar.sync 0`: block-wide barrier that also orders shared and global memory
/// accesses of the block's threads (CTA scope).
///
/// # Safety
/// Every thread of the block must reach the same call (no divergent barrier).
#[inline(always)]
pub unsafe fn sync_threads() {
    // SAFETY: the caller guarantees block-uniform control flow.
    unsafe { nvptx::_syncthreads() }
}

/// `bar.red.or.pred`: block-wide barrier that returns true on every thread if
/// `pred` was true on any thread. The watchdog uses it to turn one thread's
/// timeout into a block-uniform early exit without shared memory.
///
/// # Safety
/// Every thread of the block must reach the same call (no divergent barrier).
#[inline(always)]
pub unsafe fn sync_threads_or(pred: bool) -> bool {
    // SAFETY: the caller guarantees block-uniform control flow; the intrinsic
    // is convergent, so LLVM does not move it across branches.
    unsafe { barrier0_or(pred as i32) != 0 }
}

/// `setp.eq.u32` + `selp.b64`: `if i == k { if_equal } else { otherwise }`,
/// opaque to LLVM. Picking one of a kernel parameter array's entries with a
/// chain of these keeps the array in parameter space; an ordinary select
/// chain is folded back into an indexed load, which copies the whole
/// argument block to local memory (seen in the PTX).
#[inline(always)]
pub fn select_eq_u64(i: u32, k: u32, if_equal: u64, otherwise: u64) -> u64 {
    let out: u64;
    // SAFETY: register-only instructions.
    unsafe {
        core::arch::asm!(
            "{{ .reg .pred p; setp.eq.u32 p, {i}, {k}; selp.b64 {out}, {a}, {b}, p; }}",
            i = in(reg32) i, k = in(reg32) k, a = in(reg64) if_equal, b = in(reg64) otherwise, out = out(reg64) out,
            options(pure, nomem, nostack)
        )
    };
    out
}
