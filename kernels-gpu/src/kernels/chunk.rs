//! Chunk-level device building blocks: one thread moves and transforms the
//! `CHUNK` = 16 consecutive elements it owns. Shared by every kernel.
//!
//! Per-element loops are unrolled by [`unroll!`] rather than left to LLVM: a
//! loop like `for i in 0..16 { if i < valid { x[i] = .. } }` is otherwise
//! rewritten into a loop of `valid` iterations, whose run-time index sends
//! the whole chunk array to local memory (seen in the PTX).
use crate::abi::MAX_WORLD;
use crate::codec::quant::{nan_max, nan_min};
use crate::codec::spikes::{key_is_non_finite, key_position, key_value, largest_key_below, spike_key, KEY_BOUND};
use crate::codec::layout::{plain_chunk_offsets, plane_bits};
use crate::codec::{Element, Encoder, GroupParams, PackedChunk, ShardLayout, WireKind, CHUNK};
use crate::intrinsics::mem::*;
use crate::intrinsics::thread::{lane_id, select_eq_u64};
use crate::intrinsics::warp::{shfl_xor_f32, shfl_xor_u32};

/// Repeats a block with `$i` bound to each literal index, so every array
/// access inside has a compile-time index and stays in registers.
macro_rules! unroll {
    ($i:ident in 16 => $body:block) => { unroll!(@ $i $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15) };
    ($i:ident in 8 => $body:block) => { unroll!(@ $i $body; 0 1 2 3 4 5 6 7) };
    ($i:ident in 4 => $body:block) => { unroll!(@ $i $body; 0 1 2 3) };
    ($i:ident in 2 => $body:block) => { unroll!(@ $i $body; 0 1) };
    (@ $i:ident $body:block; $($n:literal)*) => { $( { let $i: usize = $n; $body } )* };
}
pub(crate) use unroll;

const _: () = assert!(CHUNK == 16 && MAX_WORLD == 8, "unroll! counts must match");

/// `array[i]` for a run-time `i`, as a chain of opaque selects: indexing a
/// kernel parameter array directly would copy the whole argument block to
/// local memory. Constant `i` (unrolled loops) folds to one parameter load.
#[inline(always)]
pub fn pick(array: &[u64; MAX_WORLD], i: usize) -> u64 {
    let mut v = 0;
    unroll!(k in 8 => {
        v = select_eq_u64(i as u32, k as u32, array[k], v);
    });
    v
}

/// Where a thread's chunk sits relative to the shard it belongs to.
#[derive(Clone, Copy)]
pub struct ChunkPos {
    /// Chunk index in the shard (element `16 * index`).
    pub index: usize,
    /// Elements of the chunk that hold data (0..=16).
    pub valid: usize,
    /// Whether the chunk lies in the shard's group slots (it must store codes).
    pub in_slots: bool,
}

impl ChunkPos {
    /// Position of chunk `index` in a shard of `len` valid elements and `slots` slots.
    #[inline(always)]
    pub fn new(index: usize, len: usize, slots: usize) -> Self {
        let e0 = index * CHUNK;
        let valid = if e0 >= len { 0 } else if len - e0 < CHUNK { len - e0 } else { CHUNK };
        Self { index, valid, in_slots: e0 < slots }
    }

    /// Chunk `index` of a shard whose valid elements extend past it.
    #[inline(always)]
    pub fn full(index: usize) -> Self {
        Self { index, valid: CHUNK, in_slots: true }
    }
}

#[inline(always)]
fn unpack_pairs<E: Element>(words: &[u32], x: &mut [f32; CHUNK]) {
    unroll!(i in 8 => {
        x[2 * i] = E::to_f32(words[i] as u16);
        x[2 * i + 1] = E::to_f32((words[i] >> 16) as u16);
    });
}

/// Loads `valid` elements at `src` as raw element bits, two per word
/// (16-byte vectors when the chunk is full; missing elements are 0).
/// Eight registers instead of sixteen, so a caller can hold the next chunk
/// in flight while it works on this one.
///
/// # Safety
/// `src` must be 16-byte aligned with `valid` readable elements.
#[inline(always)]
pub unsafe fn load_words(src: *const u16, valid: usize) -> [u32; 8] {
    if valid == CHUNK {
        // SAFETY: a full chunk is 32 readable, 16-byte aligned bytes.
        let (a, b) = unsafe { (ld_global_v4(src as *const [u32; 4]), ld_global_v4(src.add(8) as *const [u32; 4])) };
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
    } else {
        let mut w = [0u32; 8];
        unroll!(i in 16 => {
            if i < valid {
                // SAFETY: element i < valid is readable.
                w[i / 2] |= (unsafe { ld_global_u16(src.add(i)) } as u32) << (16 * (i % 2));
            }
        });
        w
    }
}

/// The elements of [`load_words`]'s words as f32.
#[inline(always)]
pub fn unpack_words<E: Element>(words: &[u32; 8]) -> [f32; CHUNK] {
    let mut x = [0.0f32; CHUNK];
    unpack_pairs::<E>(words, &mut x);
    x
}

/// Loads `valid` elements at `src` as f32 (missing elements are 0).
///
/// # Safety
/// As [`load_words`].
#[inline(always)]
pub unsafe fn load_elements<E: Element>(src: *const u16, valid: usize) -> [f32; CHUNK] {
    // SAFETY: forwarded caller contract.
    unpack_words::<E>(&unsafe { load_words(src, valid) })
}

/// Rounds `x` to `E` and stores `valid` elements at `dst`.
///
/// # Safety
/// `dst` must be 16-byte aligned with `valid` writable elements owned by this thread.
#[inline(always)]
pub unsafe fn store_elements<E: Element>(dst: *mut u16, valid: usize, x: &[f32; CHUNK]) {
    if valid == CHUNK {
        let mut w = [0u32; 8];
        unroll!(i in 8 => {
            w[i] = E::from_f32(x[2 * i]) as u32 | (E::from_f32(x[2 * i + 1]) as u32) << 16;
        });
        // SAFETY: a full chunk is 32 writable, 16-byte aligned bytes.
        unsafe {
            st_global_v4(dst as *mut [u32; 4], [w[0], w[1], w[2], w[3]]);
            st_global_v4(dst.add(8) as *mut [u32; 4], [w[4], w[5], w[6], w[7]]);
        }
    } else {
        unroll!(i in 16 => {
            if i < valid {
                // SAFETY: element i < valid is writable.
                unsafe { st_global_u16(dst.add(i), E::from_f32(x[i])) };
            }
        });
    }
}

/// This thread's min and max over the chunk's `valid` elements (+inf and
/// -inf when there are none).
///
/// A full chunk (every chunk but a shard's last) takes a branch-free pairwise
/// tree: no per-element liveness selects, and a dependency chain of 4
/// operations instead of 16. The stage encodes every element of the message,
/// and per-element bookkeeping was most of its instruction count (SASS).
#[inline(always)]
fn chunk_min_max(x: &[f32; CHUNK], valid: usize) -> (f32, f32) {
    if valid == CHUNK {
        let mut mn = [0.0f32; CHUNK / 2];
        let mut mx = [0.0f32; CHUNK / 2];
        unroll!(i in 8 => {
            mn[i] = nan_min(x[2 * i], x[2 * i + 1]);
            mx[i] = nan_max(x[2 * i], x[2 * i + 1]);
        });
        unroll!(i in 4 => {
            mn[i] = nan_min(mn[i], mn[i + 4]);
            mx[i] = nan_max(mx[i], mx[i + 4]);
        });
        unroll!(i in 2 => {
            mn[i] = nan_min(mn[i], mn[i + 2]);
            mx[i] = nan_max(mx[i], mx[i + 2]);
        });
        return (nan_min(mn[0], mn[1]), nan_max(mx[0], mx[1]));
    }
    let mut mn = f32::INFINITY;
    let mut mx = f32::NEG_INFINITY;
    let valid = valid as u32;
    unroll!(i in 16 => {
        let live = (i as u32) < valid;
        mn = nan_min(mn, if live { x[i] } else { f32::INFINITY });
        mx = nan_max(mx, if live { x[i] } else { f32::NEG_INFINITY });
    });
    (mn, mx)
}

/// Group statistics across the `lanes_per_group` lanes sharing a group: an
/// xor butterfly of warp shuffles (groups are aligned runs of lanes).
///
/// # Safety
/// All 32 lanes must call this together with the same `lanes_per_group`.
#[inline(always)]
unsafe fn group_min_max(x: &[f32; CHUNK], valid: usize, lanes_per_group: u32) -> (f32, f32) {
    let (mut mn, mut mx) = chunk_min_max(x, valid);
    let mut offset = 1;
    while offset < lanes_per_group {
        // SAFETY: the caller guarantees a converged warp.
        unsafe {
            mn = nan_min(mn, shfl_xor_f32(mn, offset));
            mx = nan_max(mx, shfl_xor_f32(mx, offset));
        }
        offset <<= 1;
    }
    (mn, mx)
}

/// The bytes of one chunk of a blob: what crosses the link. Produced by
/// [`encode_chunk`] or [`fetch_chunk`], consumed by [`store_chunk`] or
/// [`decode_chunk`].
#[derive(Clone, Copy, Default)]
pub struct WireChunk {
    /// Plain elements (8 words) or the primary code plane (4 or 2 words).
    words: [u32; 8],
    /// The secondary code plane (two-plane formats).
    secondary: u32,
    /// The group's `[center, half_step]` bits.
    params: [u32; 2],
    /// Whether this thread stores the group's parameters (and spikes).
    leader: bool,
    /// The group's spike values, four element-type values per word, slot 0
    /// in the low bits of word 0 (spiky formats); the wire order.
    spike_values: [u64; 2],
    /// The group's spike positions, one byte per slot, slot 0 lowest.
    spike_positions: u64,
}

/// Encodes one chunk in format `W`: quantized (parameters from the group's
/// min/max over valid elements), or the plain elements.
///
/// # Safety
/// All 32 lanes of the warp call this together (shuffles inside).
#[inline(always)]
pub unsafe fn encode_chunk<E: Element, W: WireKind>(x: &[f32; CHUNK], pos: ChunkPos, group_shift: u32) -> WireChunk {
    let mut w = WireChunk::default();
    if !W::WIRE.is_quantized() {
        unroll!(i in 8 => {
            w.words[i] = E::from_f32(x[2 * i]) as u32 | (E::from_f32(x[2 * i + 1]) as u32) << 16;
        });
        return w;
    }
    let lanes_per_group = 1u32 << (group_shift - 4);
    // SAFETY: the caller guarantees a converged warp.
    let (mn, mx) = unsafe { group_min_max(x, pos.valid, lanes_per_group) };
    let params = GroupParams::from_min_max(mn, mx, W::WIRE.bits());
    quantize_into::<W>(&mut w, x, pos, params, lanes_per_group);
    w
}

/// Codes and parameters of a chunk whose group parameters are known.
#[inline(always)]
fn quantize_into<W: WireKind>(w: &mut WireChunk, x: &[f32; CHUNK], pos: ChunkPos, params: GroupParams, lanes_per_group: u32) {
    let encoder = Encoder::new(params, W::WIRE.bits());
    // Every element is encoded, whatever the missing ones hold (the encoder
    // is plain arithmetic and clamps), then the codes past `valid` are
    // cleared in the packed words: per-chunk masking instead of a branch
    // per element.
    let mut codes = [0u32; CHUNK];
    unroll!(i in 16 => {
        codes[i] = encoder.encode(x[i]);
    });
    let mut packed = PackedChunk::pack(&codes, W::WIRE);
    if pos.valid < CHUNK {
        packed.keep_first(pos.valid, W::WIRE);
    }
    w.words[..4].copy_from_slice(&packed.primary);
    w.secondary = packed.secondary;
    w.params = [params.center.to_bits(), params.half_step.to_bits()];
    w.leader = lane_id() & (lanes_per_group - 1) == 0;
}

/// The chunk's elements rounded to the element type, two per word (low
/// half first): where spike keys come from (`codec::spikes`). A NaN's
/// payload is unspecified (a group holding one stores no key of it).
#[inline(always)]
pub fn element_bits<E: Element>(x: &[f32; CHUNK]) -> [u32; 8] {
    let mut w = [0u32; 8];
    unroll!(i in 8 => {
        w[i] = E::from_f32_pair(x[2 * i], x[2 * i + 1]);
    });
    w
}

/// Encodes one chunk in quantized format `W` with `spikes` spikes per group
/// (`codec::spikes`; 0: as [`encode_chunk`]). `bits` holds the chunk's
/// elements rounded to the element type, two per word (the keys come from
/// them); `values()` gives the f32 elements, called once the spikes are
/// chosen so that the keys and the values are not all live together.
///
/// # Safety
/// All 32 lanes of the warp call this together (shuffles inside).
#[inline(always)]
pub unsafe fn encode_spiky_chunk<E: Element, W: WireKind>(
    bits: &[u32; 8],
    values: impl Fn() -> [f32; CHUNK],
    pos: ChunkPos,
    group_shift: u32,
    spikes: usize,
) -> WireChunk {
    if spikes == 0 {
        // SAFETY: forwarded caller contract.
        return unsafe { encode_chunk::<E, W>(&values(), pos, group_shift) };
    }
    let mut w = WireChunk::default();
    let lanes_per_group = 1u32 << (group_shift - 4);
    let offset = offset_in_group(pos.index, group_shift) as u32;
    let mut keys = [0u32; CHUNK];
    unroll!(i in 16 => {
        if i < pos.valid {
            keys[i] = spike_key((bits[i / 2] >> (16 * (i % 2))) as u16, offset + i as u32);
        }
    });
    // One round per spike: the largest key below the last one, over the
    // group's lanes. A run-time loop: one round's code serves every count.
    let mut bound = KEY_BOUND;
    let mut first = 0;
    let mut j = 0;
    while j < spikes {
        let mut best = largest_key_below(&keys, bound);
        let mut lanes = 1;
        while lanes < lanes_per_group {
            // SAFETY: the caller guarantees a converged warp.
            best = best.max(unsafe { shfl_xor_u32(best, lanes) });
            lanes <<= 1;
        }
        if j == 0 {
            first = best;
        }
        w.set_spike(j, key_value(best), key_position(best));
        // An empty slot (key 0) leaves nothing below; bound 1 says so.
        bound = if best == 0 { 1 } else { best };
        j += 1;
    }
    // The rest: valid keys below the last spike's (0 < key < bound).
    let mut rest = 0u32;
    unroll!(i in 16 => {
        rest |= ((keys[i].wrapping_sub(1) < bound - 1) as u32) << i;
    });
    let x = values();
    let mut mn = f32::INFINITY;
    let mut mx = f32::NEG_INFINITY;
    unroll!(i in 16 => {
        let kept = rest & (1 << i) != 0;
        mn = nan_min(mn, if kept { x[i] } else { f32::INFINITY });
        mx = nan_max(mx, if kept { x[i] } else { f32::NEG_INFINITY });
    });
    let mut lanes = 1;
    while lanes < lanes_per_group {
        // SAFETY: the caller guarantees a converged warp.
        unsafe {
            mn = nan_min(mn, shfl_xor_f32(mn, lanes));
            mx = nan_max(mx, shfl_xor_f32(mx, lanes));
        }
        lanes <<= 1;
    }
    let params = if key_is_non_finite::<E>(first) {
        w.poison_spikes::<E>();
        GroupParams::NON_FINITE
    } else if mn > mx {
        // Nothing left: every valid element is a spike.
        GroupParams::ZERO
    } else {
        GroupParams::from_min_max(mn, mx, W::WIRE.bits())
    };
    quantize_into::<W>(&mut w, &x, pos, params, lanes_per_group);
    w
}

impl WireChunk {
    /// Records spike slot `j`'s value bits and position.
    #[inline(always)]
    fn set_spike(&mut self, j: usize, value: u16, position: u32) {
        let shift = 16 * (j as u64 & 3);
        if j < 4 {
            self.spike_values[0] |= (value as u64) << shift;
        } else {
            self.spike_values[1] |= (value as u64) << shift;
        }
        self.spike_positions |= (position as u64) << (8 * j);
    }

    /// Spike slot `j`: value bits and position.
    #[inline(always)]
    fn spike(&self, j: usize) -> (u16, u32) {
        let values = if j < 4 { self.spike_values[0] } else { self.spike_values[1] };
        ((values >> (16 * (j & 3))) as u16, (self.spike_positions >> (8 * j)) as u32 & 0xFF)
    }

    /// A non-finite group's spikes: the canonical NaN at position 255 in
    /// every slot (slots past the count are never stored or read).
    #[inline(always)]
    fn poison_spikes<E: Element>(&mut self) {
        let nan = E::CANONICAL_NAN as u64 * 0x0001_0001_0001_0001;
        self.spike_values = [nan, nan];
        self.spike_positions = u64::MAX;
    }
}

/// Stores an encoded chunk at its place in a blob (local or a peer's).
///
/// # Safety
/// `blob` is a blob of `layout` whose chunk `pos.index` (and group
/// parameters, for the leader) this thread may write; `pos.in_slots` holds.
#[inline(always)]
pub unsafe fn store_chunk<W: WireKind, const SPIKY: bool>(blob: *mut u8, layout: &ShardLayout, pos: ChunkPos, w: &WireChunk, group_shift: u32) {
    // SAFETY: the caller guarantees the chunk lies in the blob's slots.
    unsafe {
        if !W::WIRE.is_quantized() {
            let (first, second) = plain_chunk_offsets(pos.index);
            st_global_v4(blob.add(2 * first) as *mut [u32; 4], [w.words[0], w.words[1], w.words[2], w.words[3]]);
            st_global_v4(blob.add(2 * second) as *mut [u32; 4], [w.words[4], w.words[5], w.words[6], w.words[7]]);
            return;
        }
        let primary = blob.add(pos.index * layout.primary_chunk_bytes());
        if plane_bits(W::WIRE).0 == 8 {
            st_global_v4(primary as *mut [u32; 4], [w.words[0], w.words[1], w.words[2], w.words[3]]);
        } else {
            st_global_v2(primary as *mut [u32; 2], [w.words[0], w.words[1]]);
            if plane_bits(W::WIRE).1 == 2 {
                st_global_u32(blob.add(layout.secondary_offset() + pos.index * 4) as *mut u32, w.secondary);
            }
        }
        if w.leader {
            let group = (pos.index * CHUNK) >> group_shift;
            st_global_v2(blob.add(layout.params_offset() + group * 8) as *mut [u32; 2], w.params);
            if SPIKY {
                let k = layout.spikes;
                let values = blob.add(layout.spike_values_offset() + group * k * 2);
                let positions = blob.add(layout.spike_positions_offset() + group * k);
                let words = |x: u64| [x as u32, (x >> 32) as u32];
                let ([v0, v1], [v2, v3], [p0, p1]) = (words(w.spike_values[0]), words(w.spike_values[1]), words(w.spike_positions));
                match k {
                    0 => {}
                    1 => {
                        st_global_u16(values as *mut u16, v0 as u16);
                        st_global_u8(positions, p0);
                    }
                    2 => {
                        st_global_u32(values as *mut u32, v0);
                        st_global_u16(positions as *mut u16, p0 as u16);
                    }
                    4 => {
                        st_global_v2(values as *mut [u32; 2], [v0, v1]);
                        st_global_u32(positions as *mut u32, p0);
                    }
                    _ => {
                        st_global_v4(values as *mut [u32; 4], [v0, v1, v2, v3]);
                        st_global_v2(positions as *mut [u32; 2], [p0, p1]);
                    }
                }
            }
        }
    }
}

/// Issues the loads of one chunk of a blob (possibly a peer's), with `.cg`.
/// Split from [`decode_chunk`] so the loads of all ranks are in flight together.
///
/// # Safety
/// `blob` is a blob of `layout` whose chunk `index` was written and published
/// (release/acquire) before this call, and `index` is inside its slots.
#[inline(always)]
pub unsafe fn fetch_chunk<W: WireKind, const SPIKY: bool>(blob: *const u8, index: usize, layout: &ShardLayout, group_shift: u32) -> WireChunk {
    let mut f = WireChunk::default();
    // SAFETY: the caller guarantees the blob holds chunk `index`.
    unsafe {
        if !W::WIRE.is_quantized() {
            let (first, second) = plain_chunk_offsets(index);
            let a = ld_global_cg_v4(blob.add(2 * first) as *const [u32; 4]);
            let b = ld_global_cg_v4(blob.add(2 * second) as *const [u32; 4]);
            f.words = [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]];
            return f;
        }
        let primary = blob.add(index * layout.primary_chunk_bytes());
        let group = (index * CHUNK) >> group_shift;
        f.params = ld_global_cg_v2(blob.add(layout.params_offset() + group * 8) as *const [u32; 2]);
        if SPIKY {
            let k = layout.spikes;
            let values = blob.add(layout.spike_values_offset() + group * k * 2);
            let positions = blob.add(layout.spike_positions_offset() + group * k);
            let word = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
            match k {
                0 => {}
                1 => {
                    f.spike_values[0] = ld_global_cg_u16(values as *const u16) as u64;
                    f.spike_positions = ld_global_cg_u8(positions) as u64;
                }
                2 => {
                    f.spike_values[0] = ld_global_cg_u32(values as *const u32) as u64;
                    f.spike_positions = ld_global_cg_u16(positions as *const u16) as u64;
                }
                4 => {
                    let v = ld_global_cg_v2(values as *const [u32; 2]);
                    f.spike_values[0] = word(v[0], v[1]);
                    f.spike_positions = ld_global_cg_u32(positions as *const u32) as u64;
                }
                _ => {
                    let v = ld_global_cg_v4(values as *const [u32; 4]);
                    let p = ld_global_cg_v2(positions as *const [u32; 2]);
                    f.spike_values = [word(v[0], v[1]), word(v[2], v[3])];
                    f.spike_positions = word(p[0], p[1]);
                }
            }
        }
        if plane_bits(W::WIRE).0 == 8 {
            let w = ld_global_cg_v4(primary as *const [u32; 4]);
            f.words[..4].copy_from_slice(&w);
        } else {
            let w = ld_global_cg_v2(primary as *const [u32; 2]);
            f.words[0] = w[0];
            f.words[1] = w[1];
            if plane_bits(W::WIRE).1 == 2 {
                f.secondary = ld_global_cg_u32(blob.add(layout.secondary_offset() + index * 4) as *const u32);
            }
        }
    }
    f
}

/// Decodes a wire chunk to f32; in `SPIKY` formats the elements at the
/// group's `spikes` spike positions get the spikes' values (`offset`: the
/// chunk's first position in its group).
#[inline(always)]
pub fn decode_chunk<E: Element, W: WireKind, const SPIKY: bool>(f: &WireChunk, offset: usize, spikes: usize) -> [f32; CHUNK] {
    let mut x = [0.0f32; CHUNK];
    if !W::WIRE.is_quantized() {
        unpack_pairs::<E>(&f.words, &mut x);
        return x;
    }
    let params = GroupParams { center: f32::from_bits(f.params[0]), half_step: f32::from_bits(f.params[1]) };
    let packed = PackedChunk { primary: [f.words[0], f.words[1], f.words[2], f.words[3]], secondary: f.secondary };
    let codes = packed.unpack(W::WIRE);
    unroll!(i in 16 => {
        x[i] = params.decode(codes[i], W::WIRE.bits());
    });
    if SPIKY {
        let mut j = 0;
        while j < spikes {
            let (value, position) = f.spike(j);
            // Wraps around for positions before the chunk: never < 16.
            let at = position.wrapping_sub(offset as u32);
            let value = E::to_f32(value);
            unroll!(i in 16 => {
                x[i] = if at == i as u32 { value } else { x[i] };
            });
            j += 1;
        }
    }
    x
}

/// The first position of chunk `index` in its group.
#[inline(always)]
pub fn offset_in_group(index: usize, group_shift: u32) -> usize {
    (index * CHUNK) & ((1 << group_shift) - 1)
}

/// Fetches chunk `index` of `blob_of(r)` for every rank `r < world`, then
/// sums the decoded values in rank order 0, 1, .., world-1 (f32).
///
/// Ranks are fetched four at a time (all four loads in flight together,
/// then decoded and added in order): enough memory-level parallelism without
/// holding eight wire chunks in registers.
///
/// # Safety
/// As [`fetch_chunk`] for every rank's blob.
#[inline(always)]
pub unsafe fn sum_over_ranks<E: Element, W: WireKind, const SPIKY: bool>(
    blob_of: impl Fn(usize) -> *const u8,
    world: usize,
    index: usize,
    layout: &ShardLayout,
    group_shift: u32,
) -> [f32; CHUNK] {
    let offset = offset_in_group(index, group_shift);
    let mut acc = [0.0f32; CHUNK];
    if SPIKY && layout.spikes > 0 {
        // Spiky wire chunks are larger: ranks two at a time.
        unroll!(group in 4 => {
            let base = 2 * group;
            let mut fetched = [WireChunk::default(); 2];
            unroll!(k in 2 => {
                if base + k < world {
                    // SAFETY: forwarded caller contract.
                    fetched[k] = unsafe { fetch_chunk::<W, true>(blob_of(base + k), index, layout, group_shift) };
                }
            });
            unroll!(k in 2 => {
                if base + k < world {
                    let part = decode_chunk::<E, W, true>(&fetched[k], offset, layout.spikes);
                    if base + k == 0 {
                        acc = part;
                    } else {
                        unroll!(i in 16 => {
                            acc[i] += part[i];
                        });
                    }
                }
            });
        });
        return acc;
    }
    // Two fixed groups (unrolled, so every rank index is a constant and the
    // argument block stays in parameter space).
    unroll!(group in 2 => {
        let base = 4 * group;
        let mut fetched = [WireChunk::default(); 4];
        unroll!(k in 4 => {
            if base + k < world {
                // SAFETY: forwarded caller contract.
                fetched[k] = unsafe { fetch_chunk::<W, false>(blob_of(base + k), index, layout, group_shift) };
            }
        });
        unroll!(k in 4 => {
            if base + k < world {
                let part = decode_chunk::<E, W, false>(&fetched[k], offset, layout.spikes);
                // The sum starts from rank 0's value (not 0.0 + value: -0 stays -0).
                if base + k == 0 {
                    acc = part;
                } else {
                    unroll!(i in 16 => {
                        acc[i] += part[i];
                    });
                }
            }
        });
    });
    acc
}
