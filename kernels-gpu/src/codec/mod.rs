//! The quantization codec, shared bit for bit by the kernels and the host.
//!
//! Everything here is plain `no_std` Rust with no `unsafe`: the same source is
//! compiled by rustc's nvptx64 backend into the kernels and by the host
//! compiler into `flashcomm-host`'s reference reducer and the CPU tests.
//! Formulas are written so both compilers produce identical results: Rust
//! never contracts `a * b + c` into an FMA, LLVM's NVPTX backend emits `.rn`
//! arithmetic (which `ptxas` may not fuse) when contraction is off, divisions
//! are IEEE on both sides, and no flush-to-zero is used anywhere.
//!
//! # Numerics
//! A *group* is `G` consecutive elements ([`GroupSize`]: 32, 64, 128 or 256)
//! of the flattened message; the last group may be short. Per group, with a
//! [`Wire`] format of `b` bits and `L = 2^b - 1` levels:
//! - `mn`, `mx` = NaN-propagating min / max of the group (in f32);
//! - `center = (0.5*mn + 0.5*mx) + 0.0` and `half_step = (0.5*mx - 0.5*mn) / L`.
//!   Halving before adding keeps every intermediate finite for any finite
//!   input, bf16's +-3.39e38 included (no scale overflow);
//! - code `q = clamp(rne((x - center) * inv_step + L/2), 0, L)` with
//!   `inv_step = 1 / (2 * half_step)` (a true division is used instead when
//!   that reciprocal overflows, for groups of subnormal spread);
//! - decoded value `center + (2q - L) * half_step`: the grid has `L + 1`
//!   points spaced `2 * half_step` apart, spanning `[mn, mx]`, so every element
//!   decodes within half a step (`half_step`) of its value, up to f32 rounding.
//!
//! A constant group (`mx == mn`) has `half_step == 0` and decodes exactly to
//! `center`. **Non-finite rule:** if any element of a group is NaN or +-inf,
//! the group's parameters are NaN and the whole group decodes to NaN; other
//! groups are untouched. In the all-reduce this means: a non-finite input
//! element, or an f32 sum that overflows to inf, turns exactly that group
//! into NaN on every rank's output. NaN outputs are the canonical NaN of the
//! output type (`0x7FC0` for bf16, `0x7E00` for f16).
//!
//! **Spike reserving** ([`spikes`]): a step may keep its `k` largest-magnitude
//! elements per group exactly (value and position); `mn`, `mx` are then
//! those of the other elements. The module has the definition, its
//! non-finite rule and its wire layout.
pub mod float;
pub mod layout;
pub mod pack;
pub mod quant;
pub mod spikes;
pub mod wire;

pub use float::{Bf16, Dtype, Element, F16};
pub use layout::{ShardLayout, CHUNK};
pub use pack::PackedChunk;
pub use quant::{levels, Encoder, GroupParams};
pub use spikes::Spikes;
pub use wire::{Bits, GroupSize, Wire, WireKind};
