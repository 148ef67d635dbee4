//! The wire format: what crosses the link per element in one step of the
//! two-step all-reduce, and the quantization group size.
//!
//! Every fact about a format is stated here once:
//! - [`Bits`], a code width (8, 7, 6, 5 or 4 bits), and [`Wire`], a step's
//!   format as a value (plain or quantized with some [`Bits`]: host code,
//!   layouts, kernel keys);
//! - the *kernel kinds*, in `quantized_wires!`: the types the kernels are
//!   generic over ([`kind`], implementing [`WireKind`]). INT8 and INT4 are
//!   kinds of their own, compiled for their one width; the *split* widths
//!   (7, 6, 5: a 4-bit plane plus a 2-bit and/or a 1-bit plane, the bit
//!   split of FlashCommunication V2) share one kind whose width is a kernel
//!   argument, so each pair of kinds is one kernel, not each pair of widths;
//! - the set of two-step kernels, generated from the kinds
//!   (`twostep_wire_pairs!`): the plain pair and every pair of quantized
//!   kinds.
//!
//! A width whose planes already exist (a split width) is a line in
//! [`Bits`] and its plane sizes in [`layout`](super::layout); a width with a
//! new plane also needs its packing in [`pack`](super::pack) and its load
//! and store in the kernels' chunk code.

/// Calls `$callback! { $arg (Kind name width) ... }` with every quantized
/// kernel kind, widest first: `name` goes into kernel names, `width` is the
/// kind's one width, or `split` for the kind whose width is an argument.
/// The one list of kinds.
#[macro_export]
#[doc(hidden)]
macro_rules! quantized_wires {
    // An identifier callback also works in expression position.
    ($callback:ident, $arg:tt) => {
        $callback! { $arg (B8 int8 B8) (Split split split) (B4 int4 B4) }
    };
    ($callback:path, $arg:tt) => {
        $callback! { $arg (B8 int8 B8) (Split split split) (B4 int4 B4) }
    };
}

/// Calls `$callback! { ((rs) (ag)) ... }` with the wire pairs of the two-step
/// kernels, each side as `(Variant name bits)`: the plain pair first, then
/// every (reduce-scatter, all-gather) pair of quantized formats
/// (`twostep_wire_pairs!(quantized callback)`: those only).
#[macro_export]
#[doc(hidden)]
macro_rules! twostep_wire_pairs {
    // Only the pairs of quantized formats (the spiky kernels).
    (quantized $callback:path) => {
        $crate::quantized_wires! { $crate::twostep_wire_pairs, [@quantized $callback] }
    };
    ($callback:path) => {
        $crate::quantized_wires! { $crate::twostep_wire_pairs, [@start $callback] }
    };
    ([@start $cb:path] $($w:tt)*) => {
        $crate::twostep_wire_pairs! { @rows $cb; [$($w)*]; [$($w)*]; [((Plain plain 16) (Plain plain 16))] }
    };
    ([@quantized $cb:path] $($w:tt)*) => {
        $crate::twostep_wire_pairs! { @rows $cb; [$($w)*]; [$($w)*]; [] }
    };
    (@rows $cb:path; []; $all:tt; [$($acc:tt)*]) => {
        $cb! { $($acc)* }
    };
    (@rows $cb:path; [$rs:tt $($rest:tt)*]; $all:tt; $acc:tt) => {
        $crate::twostep_wire_pairs! { @row $cb; $rs; $all; [$($rest)*]; $all; $acc }
    };
    (@row $cb:path; $rs:tt; []; $rest:tt; $all:tt; $acc:tt) => {
        $crate::twostep_wire_pairs! { @rows $cb; $rest; $all; $acc }
    };
    (@row $cb:path; $rs:tt; [$ag:tt $($ags:tt)*]; $rest:tt; $all:tt; [$($acc:tt)*]) => {
        $crate::twostep_wire_pairs! { @row $cb; $rs; [$($ags)*]; $rest; $all; [$($acc)* ($rs $ag)] }
    };
}

/// The code width of a quantized step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 8-bit codes (one byte plane).
    B8,
    /// 7-bit codes (split: 4 + 2 + 1-bit planes).
    B7,
    /// 6-bit codes (split: 4 + 2-bit planes).
    B6,
    /// 5-bit codes (split: 4 + 1-bit planes).
    B5,
    /// 4-bit codes (one nibble plane).
    B4,
}

impl Bits {
    /// Every width, widest first.
    pub const ALL: &'static [Bits] = &[Bits::B8, Bits::B7, Bits::B6, Bits::B5, Bits::B4];

    /// The number of bits.
    #[inline(always)]
    pub const fn bits(self) -> u32 {
        match self {
            Bits::B8 => 8,
            Bits::B7 => 7,
            Bits::B6 => 6,
            Bits::B5 => 5,
            Bits::B4 => 4,
        }
    }

    /// The width's name in settings: `int8`, ...
    pub const fn name(self) -> &'static str {
        match self {
            Bits::B8 => "int8",
            Bits::B7 => "int7",
            Bits::B6 => "int6",
            Bits::B5 => "int5",
            Bits::B4 => "int4",
        }
    }

    /// The width of `bits` bits, if it is supported.
    #[inline(always)]
    pub const fn from_bits(bits: u32) -> Option<Bits> {
        match bits {
            8 => Some(Bits::B8),
            7 => Some(Bits::B7),
            6 => Some(Bits::B6),
            5 => Some(Bits::B5),
            4 => Some(Bits::B4),
            _ => None,
        }
    }

    /// Whether the width is a split one (served by the `split` kernel kind).
    #[inline(always)]
    pub const fn is_split(self) -> bool {
        matches!(self, Bits::B7 | Bits::B6 | Bits::B5)
    }
}

macro_rules! define_kinds {
    (@wire B8) => { Wire::Quantized(Bits::B8) };
    (@wire B4) => { Wire::Quantized(Bits::B4) };
    // The split kind's key in kernel tables; its width is an argument.
    (@wire split) => { Wire::Quantized(Bits::B6) };
    (@resolve B8, $runtime:ident) => { Self::WIRE };
    (@resolve B4, $runtime:ident) => { Self::WIRE };
    (@resolve split, $runtime:ident) => { $runtime };
    ([] $(($kind:ident $name:ident $width:ident))*) => {
        /// The kernel kinds as types, for the kernels' monomorphisation.
        pub mod kind {
            use super::{Bits, Wire, WireKind};
            /// [`Wire::Plain`] as a type.
            #[derive(Clone, Copy, Debug)]
            pub struct Plain;
            impl WireKind for Plain {
                const WIRE: Wire = Wire::Plain;
            }
            $(
                #[doc = concat!("The `", stringify!($name), "` kernel kind as a type.")]
                #[derive(Clone, Copy, Debug)]
                pub struct $kind;
                impl WireKind for $kind {
                    const WIRE: Wire = define_kinds!(@wire $width);
                    #[inline(always)]
                    #[allow(unused_variables)]
                    fn resolve(runtime: Wire) -> Wire {
                        define_kinds!(@resolve $width, runtime)
                    }
                }
            )*
        }
    };
}
quantized_wires! { define_kinds, [] }

/// The wire format of one step: the plain elements, or per-group quantized
/// codes (see the [codec](super) docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    /// The elements themselves (16-bit f16/bf16): the unquantized two-shot.
    Plain,
    /// Codes of this width with per-group parameters (Flash).
    Quantized(Bits),
}

impl Wire {
    /// Whether the format carries codes and group parameters.
    #[inline(always)]
    pub const fn is_quantized(self) -> bool {
        matches!(self, Wire::Quantized(_))
    }

    /// Bits per element on the wire, group parameters excluded (16 for plain).
    #[inline(always)]
    pub const fn bits(self) -> u32 {
        match self {
            Wire::Plain => 16,
            Wire::Quantized(b) => b.bits(),
        }
    }

    /// The format's name: `plain`, `int8`, ...
    pub const fn name(self) -> &'static str {
        match self {
            Wire::Plain => "plain",
            Wire::Quantized(b) => b.name(),
        }
    }

    /// The key of the kernel kind that serves this format (the split widths
    /// share one: [`WireKind::WIRE`] of the split kind).
    #[inline(always)]
    pub const fn kernel_key(self) -> Wire {
        match self {
            Wire::Quantized(b) if b.is_split() => Wire::Quantized(Bits::B6),
            w => w,
        }
    }
}

/// A kernel kind as a type (see [`kind`]).
pub trait WireKind: Copy + 'static {
    /// The format (the split kind: its key in kernel tables).
    const WIRE: Wire;
    /// The format of a call whose argument says `runtime`: [`Self::WIRE`]
    /// (a constant the compiler folds) for a kind of one width, `runtime`
    /// for the split kind.
    #[inline(always)]
    fn resolve(runtime: Wire) -> Wire {
        let _ = runtime;
        Self::WIRE
    }
}

/// Elements per quantization group: 32, 64, 128 or 256 (a power of two
/// from two lanes' chunks to one warp's half). Only valid sizes can be
/// constructed, so code past the parser never re-checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupSize(u32);

impl GroupSize {
    /// 32 elements.
    pub const G32: Self = Self(32);
    /// 64 elements.
    pub const G64: Self = Self(64);
    /// 128 elements (the paper's default).
    pub const G128: Self = Self(128);
    /// 256 elements.
    pub const G256: Self = Self(256);
    /// Every supported size, smallest first.
    pub const ALL: [Self; 4] = [Self::G32, Self::G64, Self::G128, Self::G256];

    /// The group size of `elements`, if it is supported.
    pub const fn new(elements: usize) -> Option<Self> {
        match elements {
            32 | 64 | 128 | 256 => Some(Self(elements as u32)),
            _ => None,
        }
    }

    /// Elements per group.
    #[inline(always)]
    pub const fn get(self) -> usize {
        self.0 as usize
    }

    /// `log2` of the size.
    #[inline(always)]
    pub const fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }
}
