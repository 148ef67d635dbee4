//! Single-GPU codec kernels: quantize a buffer into one blob, and decode a
//! blob back. They run the same chunk code as the all-reduce and are tested
//! bit for bit against the host codec (the foundation's GPU test).
use super::chunk::{decode_chunk, encode_chunk, encode_spiky_chunk, fetch_chunk, load_words, offset_in_group, store_chunk, store_elements, unpack_words, ChunkPos};
use crate::abi::THREADS;
use crate::codec::wire::kind;
use crate::codec::{Bf16, Element, ShardLayout, WireKind, CHUNK, F16};
use crate::intrinsics::thread::{block_idx, grid_dim, thread_idx};

#[inline(always)]
unsafe fn quantize<E: Element, W: WireKind, const SPIKY: bool>(input: *const u16, len: usize, group_size: u32, spikes: u32, blob: *mut u8) {
    let layout = ShardLayout::new(len.div_ceil(group_size as usize), group_size as usize, W::WIRE).with_spikes(spikes as usize);
    let tiles = layout.slots().div_ceil(THREADS as usize * CHUNK);
    let mut t = block_idx() as usize;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + thread_idx() as usize, len, layout.slots());
        // SAFETY: caller contract: `len` input elements, a blob of `layout`.
        unsafe {
            let words = load_words(input.add(pos.index * CHUNK), pos.valid);
            let wire = if SPIKY {
                encode_spiky_chunk::<E, W>(&words, || unpack_words::<E>(&words), pos, group_size.trailing_zeros(), layout.spikes)
            } else {
                encode_chunk::<E, W>(&unpack_words::<E>(&words), pos, group_size.trailing_zeros())
            };
            if pos.in_slots {
                store_chunk::<W, SPIKY>(blob, &layout, pos, &wire, group_size.trailing_zeros());
            }
        }
        t += grid_dim() as usize;
    }
}

#[inline(always)]
unsafe fn dequantize<E: Element, W: WireKind, const SPIKY: bool>(blob: *const u8, len: usize, group_size: u32, spikes: u32, output: *mut u16) {
    let layout = ShardLayout::new(len.div_ceil(group_size as usize), group_size as usize, W::WIRE).with_spikes(spikes as usize);
    let tiles = layout.slots().div_ceil(THREADS as usize * CHUNK);
    let mut t = block_idx() as usize;
    while t < tiles {
        let pos = ChunkPos::new(t * THREADS as usize + thread_idx() as usize, len, layout.slots());
        if pos.valid > 0 {
            // SAFETY: caller contract: a blob of `layout`, `len` output elements.
            unsafe {
                let shift = group_size.trailing_zeros();
                let wire = fetch_chunk::<W, SPIKY>(blob, pos.index, &layout, shift);
                let x = decode_chunk::<E, W, SPIKY>(&wire, offset_in_group(pos.index, shift), layout.spikes);
                store_elements::<E>(output.add(pos.index * CHUNK), pos.valid, &x);
            }
        }
        t += grid_dim() as usize;
    }
}

/// Calls `$body` with `W` bound to the quantized wire format of `$bits`
/// bits (nothing for any other value; the host passes only those).
macro_rules! with_wire {
    ([@match $bits:expr, $w:ident, $body:expr] $(($variant:ident $name:ident $b:literal))*) => {
        match $bits {
            $($b => {
                type $w = kind::$variant;
                $body
            })*
            _ => {}
        }
    };
    ($bits:expr, $w:ident => $body:expr) => {
        crate::quantized_wires! { with_wire, [@match $bits, $w, $body] }
    };
}

macro_rules! codec_kernels {
    ($($quantize:ident, $dequantize:ident => $elem:ty;)*) => {$(
        /// Quantizes `len` elements into a blob of the quantized wire format
        /// of `bits` bits and groups of `group_size`.
        ///
        /// # Safety
        /// `input` holds `len` elements, 16-byte aligned; `blob` has room for
        /// `ShardLayout::new(ceil(len / group_size), group_size, wire).with_spikes(spikes)`,
        /// 16-byte aligned.
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $quantize(input: *const u16, len: u64, group_size: u32, bits: u32, spikes: u32, blob: *mut u8) {
            // SAFETY: forwarded caller contract.
            with_wire!(bits, W => unsafe {
                if spikes == 0 {
                    quantize::<$elem, W, false>(input, len as usize, group_size, spikes, blob)
                } else {
                    quantize::<$elem, W, true>(input, len as usize, group_size, spikes, blob)
                }
            })
        }

        /// Decodes a blob written by the matching quantize kernel.
        ///
        /// # Safety
        /// As the quantize kernel, with `output` holding `len` elements.
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $dequantize(blob: *const u8, len: u64, group_size: u32, bits: u32, spikes: u32, output: *mut u16) {
            // SAFETY: forwarded caller contract.
            with_wire!(bits, W => unsafe {
                if spikes == 0 {
                    dequantize::<$elem, W, false>(blob, len as usize, group_size, spikes, output)
                } else {
                    dequantize::<$elem, W, true>(blob, len as usize, group_size, spikes, output)
                }
            })
        }
    )*};
}

codec_kernels! {
    codec_quantize_bf16, codec_dequantize_bf16 => Bf16;
    codec_quantize_f16, codec_dequantize_f16 => F16;
}
