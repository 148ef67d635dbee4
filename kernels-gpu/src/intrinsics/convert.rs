//! Floating-point conversions by the hardware (`cvt`). The codec wraps these
//! so NaN results are canonical on the GPU and on the host alike.
use core::arch::asm;

/// `cvt.f32.f16`: exact widening of an IEEE half.
#[inline(always)]
pub fn cvt_f32_f16(bits: u16) -> f32 {
    let out: f32;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.f32.f16 {0}, {1};", out(reg32) out, in(reg16) bits, options(pure, nomem, nostack)) };
    out
}

/// `cvt.rn.f16.f32`: round to nearest even; overflow gives +-inf (sm_53+).
#[inline(always)]
pub fn cvt_rn_f16_f32(x: f32) -> u16 {
    let out: u16;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.rn.f16.f32 {0}, {1};", out(reg16) out, in(reg32) x, options(pure, nomem, nostack)) };
    out
}

/// `cvt.rn.bf16.f32`: round to nearest even (sm_80+, PTX 7.0).
#[inline(always)]
pub fn cvt_rn_bf16_f32(x: f32) -> u16 {
    let out: u16;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.rn.bf16.f32 {0}, {1};", out(reg16) out, in(reg32) x, options(pure, nomem, nostack)) };
    out
}

/// `cvt.rn.bf16x2.f32`: `hi` and `lo` rounded to nearest even, packed with
/// `hi` in the upper half (sm_80+).
#[inline(always)]
pub fn cvt_rn_bf16x2_f32(hi: f32, lo: f32) -> u32 {
    let out: u32;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.rn.bf16x2.f32 {0}, {1}, {2};", out(reg32) out, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack)) };
    out
}

/// `cvt.rn.f16x2.f32`: as [`cvt_rn_bf16x2_f32`] for IEEE halves.
#[inline(always)]
pub fn cvt_rn_f16x2_f32(hi: f32, lo: f32) -> u32 {
    let out: u32;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.rn.f16x2.f32 {0}, {1}, {2};", out(reg32) out, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack)) };
    out
}
