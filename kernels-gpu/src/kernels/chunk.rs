//! Chunk-level device building blocks: one thread moves and transforms the
//! `CHUNK` = 16 consecutive elements it owns. Shared by every kernel.
//!
//! Per-element loops are unrolled by [`unroll!`] rather than left to LLVM: a
//! loop like `for i in 0..16 { if i < valid { x[i] = .. } }` is otherwise
//! rewritten into a loop of `valid` iterations, whose run-time index sends
//! the whole chunk array to local memory (seen in the PTX).
use crate::abi::MAX_WORLD;
use crate::codec::quant::{nan_max, nan_min};
use crate::codec::layout::{plain_chunk_offsets, plane_bits};
use crate::codec::{Element, Encoder, GroupParams, PackedChunk, ShardLayout, WireKind, CHUNK};
use crate::intrinsics::mem::*;
use crate::intrinsics::thread::{lane_id, select_eq_u64};
use crate::intrinsics::warp::shfl_xor_f32;

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
    /// Whether this thread stores the group's parameters.
    leader: bool,
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
    w
}

/// Stores an encoded chunk at its place in a blob (local or a peer's).
///
/// # Safety
/// `blob` is a blob of `layout` whose chunk `pos.index` (and group
/// parameters, for the leader) this thread may write; `pos.in_slots` holds.
#[inline(always)]
pub unsafe fn store_chunk<W: WireKind>(blob: *mut u8, layout: &ShardLayout, pos: ChunkPos, w: &WireChunk, group_shift: u32) {
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
pub unsafe fn fetch_chunk<W: WireKind>(blob: *const u8, index: usize, layout: &ShardLayout, group_shift: u32) -> WireChunk {
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

/// Decodes a wire chunk to f32.
#[inline(always)]
pub fn decode_chunk<E: Element, W: WireKind>(f: &WireChunk) -> [f32; CHUNK] {
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
    x
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
pub unsafe fn sum_over_ranks<E: Element, W: WireKind>(
    blob_of: impl Fn(usize) -> *const u8,
    world: usize,
    index: usize,
    layout: &ShardLayout,
    group_shift: u32,
) -> [f32; CHUNK] {
    let mut acc = [0.0f32; CHUNK];
    // Two fixed groups (unrolled, so every rank index is a constant and the
    // argument block stays in parameter space).
    unroll!(group in 2 => {
        let base = 4 * group;
        let mut fetched = [WireChunk::default(); 4];
        unroll!(k in 4 => {
            if base + k < world {
                // SAFETY: forwarded caller contract.
                fetched[k] = unsafe { fetch_chunk::<W>(blob_of(base + k), index, layout, group_shift) };
            }
        });
        unroll!(k in 4 => {
            if base + k < world {
                let part = decode_chunk::<E, W>(&fetched[k]);
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
