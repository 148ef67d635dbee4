//! The wire format: what crosses the link per element in one step of the
//! two-step all-reduce, and the quantization group size.
//!
//! Every fact about a format is stated here once:
//! - the list of code widths (name, bits), in `quantized_wires!`;
//! - [`Bits`], a code width, and [`Wire`], a step's format as a value
//!   (plain or quantized with some [`Bits`]: host code, layouts, kernel
//!   keys), and [`kind`], the same formats as types implementing
//!   [`WireKind`], which the kernels are generic over (each kernel is
//!   compiled for its formats);
//! - the set of two-step kernels, generated from that list
//!   (`twostep_wire_pairs!`): the plain pair and every pair of quantized
//!   formats.
//!
//! Adding a width (say 5 bits) is one line in `quantized_wires!` plus its
//! packing in the codec ([`pack`](super::pack) and the plane sizes in
//! [`layout`](super::layout)); the kernels, the host's kernel keys, the
//! configuration parser and the tests follow from the list.

/// Calls `$callback! { $arg (Variant name bits) ... }` with every quantized
/// wire format, widest first. The one list of quantized formats.
#[macro_export]
#[doc(hidden)]
macro_rules! quantized_wires {
    // An identifier callback also works in expression position.
    ($callback:ident, $arg:tt) => {
        $callback! { $arg (B8 int8 8) (B6 int6 6) (B4 int4 4) }
    };
    ($callback:path, $arg:tt) => {
        $callback! { $arg (B8 int8 8) (B6 int6 6) (B4 int4 4) }
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

macro_rules! define_wire {
    ([] $(($variant:ident $name:ident $bits:literal))*) => {
        /// The code width of a quantized step.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Bits {
            $(
                #[doc = concat!(stringify!($bits), "-bit codes.")]
                $variant,
            )*
        }

        impl Bits {
            /// Every width, widest first.
            pub const ALL: &'static [Bits] = &[$(Bits::$variant),*];

            /// The number of bits.
            #[inline(always)]
            pub const fn bits(self) -> u32 {
                match self {
                    $(Bits::$variant => $bits,)*
                }
            }

            /// The width's name in settings and kernel names: `int8`, ...
            pub const fn name(self) -> &'static str {
                match self {
                    $(Bits::$variant => stringify!($name),)*
                }
            }

            /// The width of `bits` bits, if it is supported.
            pub const fn from_bits(bits: u32) -> Option<Bits> {
                match bits {
                    $($bits => Some(Bits::$variant),)*
                    _ => None,
                }
            }
        }

        /// The wire formats as types, for the kernels' monomorphisation.
        pub mod kind {
            use super::{Bits, Wire, WireKind};
            /// [`Wire::Plain`] as a type.
            #[derive(Clone, Copy, Debug)]
            pub struct Plain;
            impl WireKind for Plain {
                const WIRE: Wire = Wire::Plain;
            }
            $(
                #[doc = concat!("[`Wire::Quantized`]`(`[`Bits::", stringify!($variant), "`]`)` as a type.")]
                #[derive(Clone, Copy, Debug)]
                pub struct $variant;
                impl WireKind for $variant {
                    const WIRE: Wire = Wire::Quantized(Bits::$variant);
                }
            )*
        }
    };
}
quantized_wires! { define_wire, [] }

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

    /// The format's name in kernel names: `plain`, `int8`, ...
    pub const fn name(self) -> &'static str {
        match self {
            Wire::Plain => "plain",
            Wire::Quantized(b) => b.name(),
        }
    }
}

/// A wire format as a type (see [`kind`]).
pub trait WireKind: Copy + 'static {
    /// The format.
    const WIRE: Wire;
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
