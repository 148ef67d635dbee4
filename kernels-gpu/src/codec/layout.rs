//! The byte layout of a quantized shard, shared by the kernels, the host's
//! staging-buffer sizing and the CPU reference.
//!
//! A *shard* is a run of whole groups of the message. Its quantized form (a
//! "blob") has three regions, each starting on a 16-byte boundary so every
//! chunk can be moved with vector accesses:
//!
//! ```text
//! offset 0                  primary plane    groups*G*p/8 bytes, p = 8 (INT8) or 4 (INT4, INT6)
//! secondary_offset()        secondary plane  groups*G/4 bytes (INT6 only: top two bits per code)
//! params_offset()           parameters       groups * 8 bytes: per group [center: f32, half_step: f32]
//! spike_values_offset()     spike values     groups * k * 2 bytes: per group k element-type values (k spikes)
//! spike_positions_offset()  spike positions  groups * k bytes: per group k positions in the group
//! ```
//! Every group owns `G` code slots, also a short last group (its unused slots
//! hold code 0). Chunk `c` (elements `16c..16c+16` of the shard) sits at byte
//! `16c*p/8` of the primary plane and byte `4c` of the secondary plane (see
//! [`PackedChunk`](super::PackedChunk) for the bit order); group `g`'s
//! parameters sit at `params_offset() + 8g`, its spikes (see
//! [`spikes`](super::spikes)) at `spike_values_offset() + 2kg` and
//! `spike_positions_offset() + kg`. All numbers are little-endian.
//!
//! With [`Wire::Plain`] the blob is the shard's f16/bf16 elements (the
//! unquantized two-shot), no parameters, permuted per warp so that each
//! 16-byte store instruction of a warp covers one contiguous 512-byte run
//! (half-line writes are expensive over NVLink): chunk `c`'s elements 0..8
//! sit at element `(c & !31) * 16 + (c & 31) * 8` and its elements 8..16 at
//! that + 256 ([`plain_chunk_offsets`]); the slots are rounded up to 512.
//! A plain shard is cut in units of [`PLAIN_SHARD_UNIT`] elements instead of groups.
use super::wire::{Bits, Wire};

/// Elements per GPU thread and per packing unit.
pub const CHUNK: usize = 16;

/// Elements one warp's chunks cover (32 lanes x 16): the unit of the plain
/// permutation.
pub const PLAIN_WARP_ELEMS: usize = 32 * CHUNK;

/// The unit plain (unquantized) shards are cut in, where quantized shards
/// use the group: any multiple of [`CHUNK`] works; 256 keeps shard
/// boundaries aligned for every group size too.
pub const PLAIN_SHARD_UNIT: usize = 256;

/// Element offsets of chunk `c`'s two halves (elements 0..8 and 8..16) in a
/// plain blob (see the [module docs](self)).
#[inline(always)]
pub const fn plain_chunk_offsets(c: usize) -> (usize, usize) {
    let first = (c & !31) * CHUNK + (c & 31) * 8;
    (first, first + PLAIN_WARP_ELEMS / 2)
}

/// Bits per code in the primary and the secondary plane of a format (the
/// bit split of FlashCommunication V2: planes of hardware-friendly widths).
#[inline(always)]
pub const fn plane_bits(wire: Wire) -> (u32, u32) {
    match wire {
        Wire::Plain => (16, 0),
        Wire::Quantized(Bits::B8) => (8, 0),
        Wire::Quantized(Bits::B6) => (4, 2),
        Wire::Quantized(Bits::B4) => (4, 0),
    }
}

/// Layout of one shard blob; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Groups (units, for plain blobs) in the shard.
    pub groups: usize,
    /// Elements per group (per unit, for plain blobs).
    pub group_size: usize,
    /// The format.
    pub wire: Wire,
    /// Spikes per group (0 for plain blobs).
    pub spikes: usize,
}

#[inline(always)]
const fn round16(x: usize) -> usize {
    (x + 15) & !15
}

impl ShardLayout {
    /// Layout for `groups` groups of `group_size` elements in format `wire`.
    #[inline(always)]
    pub const fn new(groups: usize, group_size: usize, wire: Wire) -> Self {
        Self { groups, group_size, wire, spikes: 0 }
    }

    /// The same layout with `spikes` spikes per group (quantized formats).
    #[inline(always)]
    pub const fn with_spikes(self, spikes: usize) -> Self {
        Self { spikes, ..self }
    }

    /// Bits per element in the primary plane.
    #[inline(always)]
    pub const fn primary_bits(&self) -> usize {
        plane_bits(self.wire).0 as usize
    }

    /// Bytes of one chunk in the primary plane (32, 16 or 8).
    #[inline(always)]
    pub const fn primary_chunk_bytes(&self) -> usize {
        CHUNK * self.primary_bits() / 8
    }

    /// Element slots (`groups * group_size`).
    #[inline(always)]
    pub const fn slots(&self) -> usize {
        self.groups * self.group_size
    }

    /// Size of the primary plane.
    #[inline(always)]
    pub const fn primary_bytes(&self) -> usize {
        if !self.wire.is_quantized() {
            return self.slots().next_multiple_of(PLAIN_WARP_ELEMS) * 2;
        }
        round16(self.slots() * self.primary_bits() / 8)
    }

    /// Start of the secondary (2-bit) plane.
    #[inline(always)]
    pub const fn secondary_offset(&self) -> usize {
        self.primary_bytes()
    }

    /// Size of the secondary plane (0 for single-plane formats).
    #[inline(always)]
    pub const fn secondary_bytes(&self) -> usize {
        round16(self.slots() * plane_bits(self.wire).1 as usize / 8)
    }

    /// Start of the per-group parameters.
    #[inline(always)]
    pub const fn params_offset(&self) -> usize {
        self.secondary_offset() + self.secondary_bytes()
    }

    /// Size of the parameter region (0 for plain blobs).
    #[inline(always)]
    pub const fn params_bytes(&self) -> usize {
        if self.wire.is_quantized() {
            round16(self.groups * 8)
        } else {
            0
        }
    }

    /// Start of the spike values.
    #[inline(always)]
    pub const fn spike_values_offset(&self) -> usize {
        self.params_offset() + self.params_bytes()
    }

    /// Start of the spike positions.
    #[inline(always)]
    pub const fn spike_positions_offset(&self) -> usize {
        self.spike_values_offset() + round16(self.groups * self.spikes * 2)
    }

    /// Total bytes of the blob.
    #[inline(always)]
    pub const fn total_bytes(&self) -> usize {
        self.spike_positions_offset() + round16(self.groups * self.spikes)
    }

    /// Bytes per element, parameters and spikes included, for a full group
    /// (for sizing and for bandwidth accounting).
    pub fn bytes_per_element(wire: Wire, group_size: usize, spikes: usize) -> f64 {
        if wire.is_quantized() {
            wire.bits() as f64 / 8.0 + (8.0 + 3.0 * spikes as f64) / group_size as f64
        } else {
            2.0
        }
    }
}
