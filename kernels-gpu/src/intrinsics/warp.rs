//! Warp shuffles through the LLVM intrinsics, which LLVM marks `convergent`
//! (an inline-`asm!` shuffle is not, and may be moved across branches).
//!
//! All shuffles here use the full mask: every lane of the warp must execute
//! them together. flashcomm only calls them in warp-uniform code (never inside
//! a divergent flag wait, docs/design.md H13).

#[allow(improper_ctypes)]
extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.bfly.f32"]
    fn shfl_sync_bfly_f32(mask: u32, val: f32, lane_mask: u32, clamp: u32) -> f32;
    #[link_name = "llvm.nvvm.shfl.sync.bfly.i32"]
    fn shfl_sync_bfly_i32(mask: u32, val: u32, lane_mask: u32, clamp: u32) -> u32;
}

const FULL_MASK: u32 = u32::MAX;
/// `c` operand of `shfl.sync`: segment width 32, clamp at lane 31.
const CLAMP_FULL_WARP: u32 = 0x1f;

/// `shfl.sync.bfly.b32` over the whole warp: the value held by lane `lane ^ lane_mask`.
///
/// # Safety
/// All 32 lanes of the warp must be active and execute this call together.
#[inline(always)]
pub unsafe fn shfl_xor_f32(val: f32, lane_mask: u32) -> f32 {
    // SAFETY: the caller guarantees a converged, complete warp.
    unsafe { shfl_sync_bfly_f32(FULL_MASK, val, lane_mask, CLAMP_FULL_WARP) }
}

/// `shfl.sync.bfly.b32` of a `u32` over the whole warp.
///
/// # Safety
/// All 32 lanes of the warp must be active and execute this call together.
#[inline(always)]
pub unsafe fn shfl_xor_u32(val: u32, lane_mask: u32) -> u32 {
    // SAFETY: the caller guarantees a converged, complete warp.
    unsafe { shfl_sync_bfly_i32(FULL_MASK, val, lane_mask, CLAMP_FULL_WARP) }
}
