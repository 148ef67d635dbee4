//! f16 / bf16 <-> f32 conversions with one result on GPU and host.
//!
//! Widening is exact. Narrowing rounds to nearest even, overflows to +-inf and
//! keeps subnormals (IEEE 754 `convertFormat`), and maps every NaN to the
//! type's canonical quiet NaN, so outputs compare bit for bit.
//! On nvptx64 the hardware `cvt` does the arithmetic; on the host a software
//! implementation does (tested against the `half` crate).

/// Element types of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Dtype {
    /// IEEE 754 binary16.
    F16 = 0,
    /// bfloat16 (the top half of an f32).
    Bf16 = 1,
}

impl Dtype {
    /// Every element type.
    pub const ALL: [Dtype; 2] = [Dtype::Bf16, Dtype::F16];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        2
    }

    /// The type's name in kernel names: `bf16`, `f16`.
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
}

/// A 16-bit floating-point element type, handled as raw bits.
pub trait Element: Copy + 'static {
    /// The runtime tag of this type.
    const DTYPE: Dtype;
    /// Canonical NaN produced by [`Element::from_f32`].
    const CANONICAL_NAN: u16;
    /// The bits of +inf: magnitudes (bits without the sign) at or above it
    /// are +-inf or NaN.
    const INFINITY_MAGNITUDE: u16;
    /// Exact widening.
    fn to_f32(bits: u16) -> f32;
    /// Round to nearest even; NaN becomes [`Element::CANONICAL_NAN`].
    fn from_f32(x: f32) -> u16;
    /// `from_f32(lo) | from_f32(hi) << 16`, except that a NaN's payload is
    /// unspecified (one packed conversion on the GPU).
    #[inline(always)]
    fn from_f32_pair(lo: f32, hi: f32) -> u32 {
        Self::from_f32(lo) as u32 | (Self::from_f32(hi) as u32) << 16
    }
}

/// Marker type for IEEE binary16.
#[derive(Clone, Copy, Debug)]
pub struct F16;
/// Marker type for bfloat16.
#[derive(Clone, Copy, Debug)]
pub struct Bf16;

impl Element for Bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    const CANONICAL_NAN: u16 = 0x7FC0;
    const INFINITY_MAGNITUDE: u16 = 0x7F80;
    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn from_f32_pair(lo: f32, hi: f32) -> u32 {
        crate::intrinsics::convert::cvt_rn_bf16x2_f32(hi, lo)
    }
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> u16 {
        // `x != x`: NaN, without a call LLVM might not inline on the GPU.
        #[allow(clippy::eq_op)]
        if x != x {
            return Self::CANONICAL_NAN;
        }
        #[cfg(target_arch = "nvptx64")]
        {
            crate::intrinsics::convert::cvt_rn_bf16_f32(x)
        }
        #[cfg(not(target_arch = "nvptx64"))]
        {
            f32_to_bf16_rne(x)
        }
    }
}

impl Element for F16 {
    const DTYPE: Dtype = Dtype::F16;
    const CANONICAL_NAN: u16 = 0x7E00;
    const INFINITY_MAGNITUDE: u16 = 0x7C00;
    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn from_f32_pair(lo: f32, hi: f32) -> u32 {
        crate::intrinsics::convert::cvt_rn_f16x2_f32(hi, lo)
    }
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        #[cfg(target_arch = "nvptx64")]
        {
            crate::intrinsics::convert::cvt_f32_f16(bits)
        }
        #[cfg(not(target_arch = "nvptx64"))]
        {
            f16_to_f32(bits)
        }
    }
    #[inline(always)]
    fn from_f32(x: f32) -> u16 {
        // `x != x`: NaN, without a call LLVM might not inline on the GPU.
        #[allow(clippy::eq_op)]
        if x != x {
            return Self::CANONICAL_NAN;
        }
        #[cfg(target_arch = "nvptx64")]
        {
            crate::intrinsics::convert::cvt_rn_f16_f32(x)
        }
        #[cfg(not(target_arch = "nvptx64"))]
        {
            f32_to_f16_rne(x)
        }
    }
}

/// Software f32 -> bf16, round to nearest even (NaN handled by the caller).
#[inline]
pub fn f32_to_bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    let round = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// Software f32 -> f16, round to nearest even, overflow to inf, subnormals
/// kept (NaN handled by the caller).
#[inline]
pub fn f32_to_f16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let a = b & 0x7FFF_FFFF;
    if a >= 0x4780_0000 {
        // |x| >= 65536 (or inf): beyond the rounding boundary 65520.
        return sign | 0x7C00;
    }
    if a >= 0x3880_0000 {
        // Normal f16 range (|x| >= 2^-14): rebias the exponent (127 -> 15),
        // round 23 mantissa bits to 10. A carry moves into the exponent,
        // which is right (and gives inf from 65520 upwards).
        let m = a - 0x3800_0000;
        let r = m + 0x0FFF + ((m >> 13) & 1);
        return sign | (r >> 13) as u16;
    }
    if a <= 0x3300_0000 {
        // |x| <= 2^-25: rounds to zero (2^-25 itself ties to the even 0).
        return sign;
    }
    // f16 subnormal: q = round(|x| / 2^-24).
    let e = a >> 23;
    let mant = (a & 0x7F_FFFF) | 0x80_0000;
    let shift = 126 - e; // 14..=24
    let q = mant >> shift;
    let rem = mant & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let q = if rem > half || (rem == half && (q & 1) == 1) { q + 1 } else { q };
    sign | q as u16
}

/// Software f16 -> f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let mant = (h & 0x3FF) as u32;
    if exp == 0x1F {
        return f32::from_bits(sign | 0x7F80_0000 | (mant << 13));
    }
    if exp == 0 {
        // Zero or subnormal: mant * 2^-24, exact in f32.
        let mag = mant as f32 * (1.0 / 16_777_216.0);
        return if sign != 0 { -mag } else { mag };
    }
    f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13))
}
