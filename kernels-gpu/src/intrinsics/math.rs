//! Floating-point operations LLVM does not lower to the instruction we want.

/// `min.NaN.f32` (sm_80+): the minimum, NaN if either operand is NaN.
/// (`f32::minimum` is expanded by LLVM into a compare/select chain.)
#[inline(always)]
pub fn min_nan_f32(a: f32, b: f32) -> f32 {
    let out: f32;
    // SAFETY: register-only instruction.
    unsafe { core::arch::asm!("min.NaN.f32 {0}, {1}, {2};", out(reg32) out, in(reg32) a, in(reg32) b, options(pure, nomem, nostack)) };
    out
}

/// `max.NaN.f32` (sm_80+): the maximum, NaN if either operand is NaN.
#[inline(always)]
pub fn max_nan_f32(a: f32, b: f32) -> f32 {
    let out: f32;
    // SAFETY: register-only instruction.
    unsafe { core::arch::asm!("max.NaN.f32 {0}, {1}, {2};", out(reg32) out, in(reg32) a, in(reg32) b, options(pure, nomem, nostack)) };
    out
}
