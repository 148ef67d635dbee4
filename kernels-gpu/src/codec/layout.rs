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
//! ```
//! Every group owns `G` code slots, also a short last group (its unused slots
//! hold code 0). Chunk `c` (elements `16c..16c+16` of the shard) sits at byte
//! `16c*p/8` of the primary plane and byte `4c` of the secondary plane (see
//! [`PackedChunk`](super::PackedChunk) for the bit order); group `g`'s
//! parameters sit at `params_offset() + 8g`. All numbers are little-endian.
//!
//! With `bits == 16` the blob is the shard's raw f16/bf16 elements (the
//! unquantized algorithm), no parameters, permuted per warp so that each
//! 16-byte store instruction of a warp covers one contiguous 512-byte run
//! (half-line writes are expensive over NVLink): chunk `c`'s elements 0..8
//! sit at element `(c & !31) * 16 + (c & 31) * 8` and its elements 8..16 at
//! that + 256 ([`raw_chunk_offsets`]); the slots are rounded up to 512.

/// Elements per GPU thread and per packing unit.
pub const CHUNK: usize = 16;

/// Supported group sizes.
pub const GROUP_SIZES: [u32; 4] = [32, 64, 128, 256];

/// Code widths, and 16 for "raw elements, unquantized".
pub const BIT_WIDTHS: [u32; 3] = [4, 6, 8];

/// Elements one warp's chunks cover (32 lanes x 16): the unit of the raw
/// permutation.
pub const RAW_WARP_ELEMS: usize = 32 * CHUNK;

/// Element offsets of chunk `c`'s two halves (elements 0..8 and 8..16) in a
/// raw blob (see the [module docs](self)).
#[inline(always)]
pub const fn raw_chunk_offsets(c: usize) -> (usize, usize) {
    let first = (c & !31) * CHUNK + (c & 31) * 8;
    (first, first + RAW_WARP_ELEMS / 2)
}

/// Layout of one shard blob; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Groups in the shard.
    pub groups: usize,
    /// Elements per group.
    pub group_size: usize,
    /// 4, 6 or 8; or 16 for raw elements.
    pub bits: u32,
}

#[inline(always)]
const fn round16(x: usize) -> usize {
    (x + 15) & !15
}

impl ShardLayout {
    /// Layout for `groups` groups of `group_size` elements at `bits` bits.
    #[inline(always)]
    pub const fn new(groups: usize, group_size: usize, bits: u32) -> Self {
        Self { groups, group_size, bits }
    }

    /// Bits per element in the primary plane.
    #[inline(always)]
    pub const fn primary_bits(&self) -> usize {
        match self.bits {
            16 => 16,
            8 => 8,
            _ => 4,
        }
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
        if self.bits == 16 {
            return self.slots().next_multiple_of(RAW_WARP_ELEMS) * 2;
        }
        round16(self.slots() * self.primary_bits() / 8)
    }

    /// Start of the secondary (2-bit) plane.
    #[inline(always)]
    pub const fn secondary_offset(&self) -> usize {
        self.primary_bytes()
    }

    /// Size of the secondary plane (0 unless INT6).
    #[inline(always)]
    pub const fn secondary_bytes(&self) -> usize {
        if self.bits == 6 {
            round16(self.slots() / 4)
        } else {
            0
        }
    }

    /// Start of the per-group parameters.
    #[inline(always)]
    pub const fn params_offset(&self) -> usize {
        self.secondary_offset() + self.secondary_bytes()
    }

    /// Size of the parameter region (0 for raw elements).
    #[inline(always)]
    pub const fn params_bytes(&self) -> usize {
        if self.bits == 16 {
            0
        } else {
            round16(self.groups * 8)
        }
    }

    /// Total bytes of the blob.
    #[inline(always)]
    pub const fn total_bytes(&self) -> usize {
        self.params_offset() + self.params_bytes()
    }

    /// Bytes per element, parameters included, for a full group (for
    /// sizing and for bandwidth accounting).
    pub fn bytes_per_element(bits: u32, group_size: usize) -> f64 {
        if bits == 16 {
            2.0
        } else {
            bits as f64 / 8.0 + 8.0 / group_size as f64
        }
    }
}
