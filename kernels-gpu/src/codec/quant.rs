//! Per-group asymmetric quantization: parameters, encoding, decoding.
//! The formulas are documented in the [module above](super).

/// Highest code for `bits` bits: `2^bits - 1`.
#[inline(always)]
pub const fn levels(bits: u32) -> u32 {
    (1 << bits) - 1
}

/// The two f32 numbers stored per group: the midpoint of `[min, max]` and
/// half the distance between adjacent codes. NaN in both marks a group that
/// held a non-finite value.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct GroupParams {
    /// `(0.5*min + 0.5*max) + 0.0` (the `+ 0.0` turns -0 into +0).
    pub center: f32,
    /// `(0.5*max - 0.5*min) / (2^bits - 1)`; 0 for a constant group.
    pub half_step: f32,
}

const _: () = assert!(core::mem::size_of::<GroupParams>() == 8);

impl GroupParams {
    /// Parameters of a group that held NaN or +-inf: it decodes to NaN.
    pub const NON_FINITE: Self = Self { center: f32::NAN, half_step: f32::NAN };
    /// Parameters of a group with no element left to quantize (every valid
    /// element is a spike): every slot decodes to 0.
    pub const ZERO: Self = Self { center: 0.0, half_step: 0.0 };

    /// Parameters for a group whose NaN-propagating min and max are `mn`, `mx`.
    /// An empty group (`mn = +inf`, `mx = -inf`) also yields [`Self::NON_FINITE`];
    /// callers never store one.
    #[inline(always)]
    pub fn from_min_max(mn: f32, mx: f32, bits: u32) -> Self {
        if !(mn.is_finite() && mx.is_finite()) {
            return Self::NON_FINITE;
        }
        let center = (0.5 * mn + 0.5 * mx) + 0.0;
        let half_range = 0.5 * mx - 0.5 * mn;
        let half_step = half_range / levels(bits) as f32;
        Self { center, half_step }
    }

    /// Whether the group held only finite values.
    #[inline(always)]
    pub fn is_finite(&self) -> bool {
        // Only NaN compares unequal to itself.
        #[allow(clippy::eq_op)]
        let finite = self.half_step == self.half_step;
        finite
    }

    /// The value of code `q` (`q <= 2^bits - 1`).
    #[inline(always)]
    pub fn decode(&self, q: u32, bits: u32) -> f32 {
        // k = 2q - L as an f32, exactly: `2^23 + q` has q in its mantissa
        // (bit operations and two exact float operations instead of an
        // integer-to-float conversion, a quarter-rate instruction on GPUs).
        let q_f = f32::from_bits(ROUND_MAGIC_BITS | q) - ROUND_MAGIC;
        let k = q_f * 2.0 - levels(bits) as f32;
        self.center + k * self.half_step
    }
}

/// The NaN-propagating minimum used for group statistics (`min.NaN.f32` on
/// the GPU): NaN if either operand is NaN, else the smaller. Whether a +0/-0
/// pair gives +0 or -0 does not matter: the parameters come out the same
/// either way.
#[inline(always)]
pub fn nan_min(a: f32, b: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::intrinsics::math::min_nan_f32(a, b)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else if b < a {
            b
        } else {
            a
        }
    }
}

/// The NaN-propagating maximum used for group statistics (see [`nan_min`]).
#[inline(always)]
pub fn nan_max(a: f32, b: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::intrinsics::math::max_nan_f32(a, b)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else if b > a {
            b
        } else {
            a
        }
    }
}

/// Encodes the elements of one group (precomputes the reciprocal step).
///
/// `code = rne(clamp(((x - center) * pre) * inv + L/2, 0, L))` with
/// `inv = 1 / (step * pre)`, where `pre` is 1, or 2^64 when the step is so
/// small (< 2^-100, subnormal spread) that its reciprocal would overflow.
/// Multiplying by a power of two is exact, so for ordinary groups this is
/// `(x - center) * (1 / step)`; no element ever needs a division (a per-element
/// branch to a division was if-converted by LLVM into a division for every
/// element, measured as the stage's main cost). Constant and non-finite
/// groups get `inv = 0` and `L/2 = 0`, so every element lands on 0 without a
/// per-element select (a NaN clamps to 0).
#[derive(Clone, Copy, Debug)]
pub struct Encoder {
    center: f32,
    pre: f32,
    inv: f32,
    half_levels: f32,
    top: f32,
}

/// Adding 2^23 to an f32 in [0, 2^23) rounds it to an integer, ties to
/// even, and leaves that integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 8_388_608.0;
/// The bits of [`ROUND_MAGIC`] (its mantissa is zero).
const ROUND_MAGIC_BITS: u32 = 0x4B00_0000;
/// Steps below this get the pre-scale (their reciprocal would overflow).
const TINY_STEP: f32 = 7.888_609e-31; // 2^-100
/// 2^64: exact scaling that brings any positive subnormal step to a normal one.
const PRE_SCALE: f32 = 18_446_744_073_709_551_616.0;

impl Encoder {
    /// An encoder for a group with parameters `p` and `bits` bits.
    #[inline(always)]
    pub fn new(p: GroupParams, bits: u32) -> Self {
        let step = p.half_step + p.half_step;
        let pre = if step < TINY_STEP { PRE_SCALE } else { 1.0 };
        // False for a zero step and for NaN parameters.
        let live = step > 0.0;
        Self {
            center: p.center,
            pre,
            inv: if live { 1.0 / (step * pre) } else { 0.0 },
            half_levels: if live { levels(bits) as f32 * 0.5 } else { 0.0 },
            top: levels(bits) as f32,
        }
    }

    /// The code of `x`, an element of the group (`min <= x <= max`).
    /// Constant and non-finite groups encode everything as 0.
    #[inline(always)]
    pub fn encode(&self, x: f32) -> u32 {
        let scaled = ((x - self.center) * self.pre) * self.inv;
        // `max` returns the non-NaN operand: NaN (non-finite group) -> 0.
        let v = (scaled + self.half_levels).max(0.0).min(self.top);
        // v + 2^23 is exact up to the rounding of v itself, so its low
        // mantissa bits are rne(v) (no float-to-integer conversion).
        (v + ROUND_MAGIC).to_bits() - ROUND_MAGIC_BITS
    }
}
