//! Bit packing of one *chunk*: the [`CHUNK`] = 16 consecutive
//! elements a GPU thread owns.
//!
//! | bits | primary plane (per chunk) | 2-bit plane (per chunk) | 1-bit plane (per chunk) |
//! |------|---------------------------|-------------------------|-------------------------|
//! | 8    | 16 bytes: byte i = code i | none | none |
//! | 7    | 8 bytes: low nibble of code i, as INT4 | 4 bytes: bits 2i..2i+2 = (code i >> 4) & 3 | 2 bytes: bit i = code i >> 6 |
//! | 6    | as 7 | as 7 | none |
//! | 5    | as 7 | none | 2 bytes: bit i = code i >> 4 |
//! | 4    | 8 bytes: bits 4i..4i+4 of the little-endian 64-bit word = code i | none | none |
//!
//! Widths 5 to 7 are "bit split" (FlashCommunication V2): a 4-bit plane and
//! a 2-bit and/or a 1-bit plane, all naturally aligned, instead of codes
//! straddling bytes. Their bits above the nibble go to the 2-bit plane
//! first, then the top one to the 1-bit plane.
use super::layout::{plane_bits, CHUNK};
use super::wire::Wire;

/// The packed codes of one chunk. Unused words are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PackedChunk {
    /// Primary plane: 4 words for INT8, 2 for the others.
    pub primary: [u32; 4],
    /// The 2-bit plane (widths 6 and 7): bits 4-5 of each code.
    pub secondary: u32,
    /// The 1-bit plane (widths 5 and 7), in the low 16 bits: each code's top bit.
    pub tertiary: u32,
}

impl PackedChunk {
    /// Packs 16 codes of a quantized format (codes must fit its width).
    #[inline(always)]
    pub fn pack(codes: &[u32; CHUNK], wire: Wire) -> Self {
        let mut out = Self::default();
        let (primary, two, one) = plane_bits(wire);
        if primary == 8 {
            for w in 0..4 {
                out.primary[w] = codes[4 * w] | codes[4 * w + 1] << 8 | codes[4 * w + 2] << 16 | codes[4 * w + 3] << 24;
            }
            return out;
        }
        for w in 0..2 {
            let mut word = 0;
            for i in 0..8 {
                word |= (codes[8 * w + i] & 0xF) << (4 * i);
            }
            out.primary[w] = word;
        }
        if two == 2 {
            let mut word = 0;
            for (i, &c) in codes.iter().enumerate() {
                word |= ((c >> 4) & 3) << (2 * i);
            }
            out.secondary = word;
        }
        if one == 1 {
            let mut word = 0;
            for (i, &c) in codes.iter().enumerate() {
                word |= ((c >> (4 + two)) & 1) << i;
            }
            out.tertiary = word;
        }
        out
    }

    /// Clears the codes of elements `valid..16` (unused slots hold code 0),
    /// as if only the first `valid` codes had been packed.
    #[inline(always)]
    pub fn keep_first(&mut self, valid: usize, wire: Wire) {
        // Codes `first..first + per_word` of a word, each `width` bits wide.
        let mask = |first: usize, per_word: usize, width: usize| -> u32 {
            if valid >= first + per_word {
                u32::MAX
            } else if valid <= first {
                0
            } else {
                (1u32 << ((valid - first) * width)) - 1
            }
        };
        let (primary, two, one) = plane_bits(wire);
        if primary == 8 {
            for w in 0..4 {
                self.primary[w] &= mask(4 * w, 4, 8);
            }
            return;
        }
        for w in 0..2 {
            self.primary[w] &= mask(8 * w, 8, 4);
        }
        if two == 2 {
            self.secondary &= mask(0, 16, 2);
        }
        if one == 1 {
            self.tertiary &= mask(0, 16, 1) & 0xFFFF;
        }
    }

    /// The 16 codes packed in `self` in format `wire`.
    #[inline(always)]
    pub fn unpack(&self, wire: Wire) -> [u32; CHUNK] {
        let mut codes = [0u32; CHUNK];
        let (primary, two, one) = plane_bits(wire);
        if primary == 8 {
            for (i, c) in codes.iter_mut().enumerate() {
                *c = (self.primary[i / 4] >> (8 * (i % 4))) & 0xFF;
            }
            return codes;
        }
        for (i, c) in codes.iter_mut().enumerate() {
            *c = (self.primary[i / 8] >> (4 * (i % 8))) & 0xF;
        }
        if two == 2 {
            for (i, c) in codes.iter_mut().enumerate() {
                *c |= ((self.secondary >> (2 * i)) & 0x3) << 4;
            }
        }
        if one == 1 {
            for (i, c) in codes.iter_mut().enumerate() {
                *c |= ((self.tertiary >> i) & 1) << (4 + two);
            }
        }
        codes
    }
}
