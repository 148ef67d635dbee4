//! Bit packing of one *chunk*: the [`CHUNK`] = 16 consecutive
//! elements a GPU thread owns.
//!
//! | bits | primary plane (per chunk)          | secondary plane (per chunk)   |
//! |------|------------------------------------|-------------------------------|
//! | 8    | 16 bytes: byte i = code i          | none                          |
//! | 4    | 8 bytes: bits 4i..4i+4 of the little-endian 64-bit word = code i | none |
//! | 6    | 8 bytes: low nibble of code i, as INT4 | 4 bytes: bits 2i..2i+2 = code i >> 4 |
//!
//! 6-bit codes are "bit split" (FlashCommunication V2): a 4-bit plane and a 2-bit plane,
//! both naturally aligned, instead of codes straddling bytes.
use super::layout::CHUNK;
use super::wire::{Bits, Wire};

/// The packed codes of one chunk. Unused words are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PackedChunk {
    /// Primary plane: 4 words for INT8, 2 for INT4 and INT6.
    pub primary: [u32; 4],
    /// Secondary plane (INT6 only): the top two bits of each code.
    pub secondary: u32,
}

impl PackedChunk {
    /// Packs 16 codes of a quantized format (codes must fit its width).
    #[inline(always)]
    pub fn pack(codes: &[u32; CHUNK], wire: Wire) -> Self {
        let mut out = Self::default();
        if matches!(wire, Wire::Quantized(Bits::B8)) {
            for w in 0..4 {
                out.primary[w] = codes[4 * w]
                    | codes[4 * w + 1] << 8
                    | codes[4 * w + 2] << 16
                    | codes[4 * w + 3] << 24;
            }
        } else {
            for w in 0..2 {
                let mut word = 0;
                for i in 0..8 {
                    word |= (codes[8 * w + i] & 0xF) << (4 * i);
                }
                out.primary[w] = word;
            }
            if matches!(wire, Wire::Quantized(Bits::B6)) {
                let mut word = 0;
                for (i, &c) in codes.iter().enumerate() {
                    word |= (c >> 4) << (2 * i);
                }
                out.secondary = word;
            }
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
        if matches!(wire, Wire::Quantized(Bits::B8)) {
            for w in 0..4 {
                self.primary[w] &= mask(4 * w, 4, 8);
            }
        } else {
            for w in 0..2 {
                self.primary[w] &= mask(8 * w, 8, 4);
            }
            if matches!(wire, Wire::Quantized(Bits::B6)) {
                self.secondary &= mask(0, 16, 2);
            }
        }
    }

    /// The 16 codes packed in `self` in format `wire`.
    #[inline(always)]
    pub fn unpack(&self, wire: Wire) -> [u32; CHUNK] {
        let mut codes = [0u32; CHUNK];
        if matches!(wire, Wire::Quantized(Bits::B8)) {
            for (i, c) in codes.iter_mut().enumerate() {
                *c = (self.primary[i / 4] >> (8 * (i % 4))) & 0xFF;
            }
        } else {
            for (i, c) in codes.iter_mut().enumerate() {
                *c = (self.primary[i / 8] >> (4 * (i % 8))) & 0xF;
            }
            if matches!(wire, Wire::Quantized(Bits::B6)) {
                for (i, c) in codes.iter_mut().enumerate() {
                    *c |= ((self.secondary >> (2 * i)) & 0x3) << 4;
                }
            }
        }
        codes
    }
}
