//! Spike reserving (FlashCommunication V2): per group, the `k` elements of
//! largest magnitude cross the link exactly, as element-type values with
//! their positions, and the other elements are quantized over the range of
//! what is left. A few huge activations per group (attention-sink tokens,
//! outlier channels) otherwise set the range and leave 4-bit codes
//! useless for everything else (docs/accuracy.md).
//!
//! # Definition
//! For a group of a step with `k` spikes ([`Spikes`]), every valid element at
//! group position `p` (0..G) has the key of [`spike_key`]: its value rounded
//! to the element type (`e`, 16 bits), ordered by magnitude, ties to the
//! lower position. Keys are distinct; the spikes are the `k` largest keys, in
//! decreasing order (slot 0 holds the largest). Missing elements of a short
//! group have key 0; a slot whose key is 0 is *empty* and holds value bits 0
//! at position 255 (a position no valid element of such a group has).
//!
//! The group's parameters come from the NaN-propagating min and max of the
//! valid elements that are not spikes, as without spikes (in f32, before
//! any rounding); if none is left they are [`GroupParams::ZERO`](super::GroupParams::ZERO). Every slot
//! is encoded with them (spikes too: their codes are clamped and unused).
//! Decoding a slot at a spike's position gives the spike's value instead.
//!
//! **Non-finite rule with spikes:** a group is non-finite if the largest key
//! is non-finite (an element NaN or +-inf *after rounding to the element
//! type*) or the parameters are; its parameters are then NaN and every spike
//! slot holds the element type's canonical NaN at position 255 (so no NaN
//! payload reaches the wire), and the whole group decodes to NaN, as
//! without spikes. (For f16, an f32 sum that rounds to +-inf, |sum| >= 65520,
//! therefore marks its group non-finite where the group without spikes
//! would decode to +-inf at that element only.)
//!
//! # Wire layout
//! Two regions after the parameters (see [`layout`](super::layout)): the
//! *spike values*, `k` little-endian `u16` per group (group `g` at byte
//! `2kg`), and the *spike positions*, `k` bytes per group (at byte `kg`).
use super::float::Element;

/// Spikes per group: 0 (none), 1, 2, 4 or 8. Only these can be constructed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Spikes(u8);

impl Spikes {
    /// No spikes: plain per-group quantization.
    pub const NONE: Self = Self(0);
    /// The most spikes per group.
    pub const MAX: Self = Self(8);
    /// Every supported count, smallest first.
    pub const ALL: [Self; 5] = [Self(0), Self(1), Self(2), Self(4), Self(8)];

    /// The count `k`, if supported.
    pub const fn new(k: usize) -> Option<Self> {
        match k {
            0 | 1 | 2 | 4 | 8 => Some(Self(k as u8)),
            _ => None,
        }
    }

    /// Spikes per group.
    #[inline(always)]
    pub const fn get(self) -> usize {
        self.0 as usize
    }
}

/// Marks a valid element's key (bit 24): every valid key is nonzero.
const KEY_VALID: u32 = 1 << 24;

/// The selection key of an element with element-type bits `e` at group
/// position `p` (< 256): `1 << 24 | (e & 0x7FFF) << 9 | (255 - p) << 1 | e >> 15`.
/// Larger magnitude wins; equal magnitudes go to the lower position. The key
/// holds the whole value, so a selected spike needs no second lookup.
#[inline(always)]
pub const fn spike_key(e: u16, p: u32) -> u32 {
    KEY_VALID | ((e as u32 & 0x7FFF) << 9) | ((255 - p) << 1) | (e as u32 >> 15)
}

/// The element bits of a key (0 for an empty slot's key 0).
#[inline(always)]
pub const fn key_value(key: u32) -> u16 {
    (((key >> 9) & 0x7FFF) | ((key & 1) << 15)) as u16
}

/// The group position of a key (255 for an empty slot's key 0).
#[inline(always)]
pub const fn key_position(key: u32) -> u32 {
    255 - ((key >> 1) & 0xFF)
}

/// Whether a key's value is NaN or +-inf in the element type `E`.
#[inline(always)]
pub fn key_is_non_finite<E: Element>(key: u32) -> bool {
    (key_value(key) & 0x7FFF) >= E::INFINITY_MAGNITUDE
}

/// The largest key below `bound` among `keys` (0 if none): one selection
/// round over one thread's keys. `(bound - 1) - key` wraps around for keys at
/// or above `bound`, so a minimum of differences replaces a compare and a
/// select per key.
#[inline(always)]
pub fn largest_key_below(keys: &[u32], bound: u32) -> u32 {
    let top = bound.wrapping_sub(1);
    let mut least = u32::MAX;
    for &k in keys {
        least = least.min(top.wrapping_sub(k));
    }
    top.wrapping_sub(least)
}

/// Above every key (the bound of the first selection round).
pub const KEY_BOUND: u32 = 1 << 25;
