//! The CPU reference reducer: what Flash All-Reduce must output, bit for bit.
//!
//! Plain, obvious Rust over the same codec the kernels run
//! (`flashcomm_kernels::codec`). For per-rank inputs `x_r` (r = 0..W) it
//! computes, group by group (groups of `G` elements from the start of the
//! flattened message, the last one possibly short):
//! 1. each rank's group is quantized with the reduce-scatter width (and its
//!    spikes, `codec::spikes`) and decoded again;
//! 2. the decoded values are summed in f32 **in rank order 0..W-1** (the sum
//!    starts from rank 0's value);
//! 3. the summed group is re-quantized with the all-gather width (and
//!    spikes) and decoded;
//! 4. the result is rounded to the element type (nearest even, canonical NaN).
//!
//! Shard and piece boundaries do not appear: they fall on group boundaries
//! and change nothing. The GPU kernels compute exactly this on every rank,
//! which is why accuracy measured with this function is the GPU's accuracy.
//! With [`Quantization::None`] the result is the rank-ordered f32 sum rounded
//! once to the element type.
use crate::config::Quantization;
use crate::element::HostElement;
use crate::error::{Error, Result};
use flashcomm_kernels::abi::MAX_WORLD;
use flashcomm_kernels::codec::layout::plane_bits;
use flashcomm_kernels::codec::quant::{nan_max, nan_min};
use flashcomm_kernels::codec::spikes::{key_is_non_finite, key_position, key_value, spike_key};
use flashcomm_kernels::codec::{Bits, Element, Encoder, GroupParams, GroupSize, PackedChunk, ShardLayout, Spikes, Wire, CHUNK};
use std::ops::Range;

fn check_inputs<T>(inputs: &[&[T]]) -> Result<usize> {
    if inputs.is_empty() || inputs.len() > MAX_WORLD {
        return Err(Error::WorldSize { world: inputs.len(), min: 1, max: MAX_WORLD });
    }
    let n = inputs[0].len();
    for (rank, x) in inputs.iter().enumerate() {
        if x.len() != n {
            return Err(Error::LengthMismatch { rank, len: x.len(), expected: n });
        }
    }
    Ok(n)
}

/// Parameters of one group of f32 values (NaN-propagating min/max), without spikes.
pub fn group_params(values: &[f32], bits: Bits) -> GroupParams {
    let (mn, mx) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(mn, mx), &v| (nan_min(mn, v), nan_max(mx, v)));
    GroupParams::from_min_max(mn, mx, bits.bits())
}

/// One group of one step as the kernels encode it (`codec::spikes` has the
/// definition): the parameters and the spike keys, largest first (key 0:
/// an empty slot).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncodedGroup {
    /// The group's parameters.
    pub params: GroupParams,
    /// The keys of the spikes (`spikes.get()` of them are used).
    pub keys: [u32; Spikes::MAX.get()],
    /// Spikes per group.
    pub spikes: Spikes,
}

impl EncodedGroup {
    /// Encodes `values` (one group, its valid elements) with `bits` and
    /// `spikes`, elements of type `E`.
    pub fn new<E: Element>(values: &[f32], bits: Bits, spikes: Spikes) -> Self {
        let k = spikes.get();
        let mut keys = [0u32; Spikes::MAX.get()];
        if k == 0 {
            return Self { params: group_params(values, bits), keys, spikes };
        }
        let mut all: Vec<u32> = values.iter().enumerate().map(|(p, &v)| spike_key(E::from_f32(v), p as u32)).collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        for (slot, &key) in keys.iter_mut().zip(&all).take(k) {
            *slot = key;
        }
        let is_spike = |p: usize| keys[..k].iter().any(|&key| key != 0 && key_position(key) as usize == p);
        let (mn, mx) = values
            .iter()
            .enumerate()
            .filter(|&(p, _)| !is_spike(p))
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(mn, mx), (_, &v)| (nan_min(mn, v), nan_max(mx, v)));
        let params = if key_is_non_finite::<E>(keys[0]) {
            GroupParams::NON_FINITE
        } else if values.len() <= k {
            GroupParams::ZERO
        } else {
            GroupParams::from_min_max(mn, mx, bits.bits())
        };
        Self { params, keys, spikes }
    }

    /// The value bits stored for spike slot `j` (the canonical NaN in a
    /// non-finite group).
    pub fn spike_value<E: Element>(&self, j: usize) -> u16 {
        if self.params.is_finite() {
            key_value(self.keys[j])
        } else {
            E::CANONICAL_NAN
        }
    }

    /// The position stored for spike slot `j` (255 in a non-finite group).
    pub fn spike_position(&self, j: usize) -> u32 {
        if self.params.is_finite() {
            key_position(self.keys[j])
        } else {
            255
        }
    }

    /// The decoded value of group position `p` whose code is `q`.
    pub fn decode<E: Element>(&self, p: usize, q: u32, bits: Bits) -> f32 {
        let mut v = self.params.decode(q, bits.bits());
        for j in 0..self.spikes.get() {
            if self.spike_position(j) as usize == p {
                v = E::to_f32(self.spike_value::<E>(j));
            }
        }
        v
    }
}

/// Quantizes and decodes one group in place (one codec round trip of one
/// step), elements of type `E`.
pub fn round_trip_group<E: Element>(values: &mut [f32], bits: Bits, spikes: Spikes) {
    let group = EncodedGroup::new::<E>(values, bits, spikes);
    let encoder = Encoder::new(group.params, bits.bits());
    for (p, v) in values.iter_mut().enumerate() {
        *v = group.decode::<E>(p, encoder.encode(*v), bits);
    }
}

/// What the GPU all-reduce returns, bit for bit, for these per-rank inputs.
///
/// # Errors
/// [`Error::WorldSize`] for no inputs or more than 8, [`Error::LengthMismatch`]
/// if the inputs differ in length.
pub fn reference_all_reduce<T: HostElement>(inputs: &[&[T]], quant: &Quantization) -> Result<Vec<T>> {
    let n = check_inputs(inputs)?;
    let mut out = Vec::with_capacity(n);
    match *quant {
        Quantization::None => {
            for i in 0..n {
                let mut acc = inputs[0][i].to_f32();
                for x in &inputs[1..] {
                    acc += x[i].to_f32();
                }
                out.push(T::from_f32(acc));
            }
        }
        Quantization::Int(q) => {
            let (rs_bits, ag_bits, group_size) = (q.rs_bits, q.ag_bits, q.group_size.get());
            type E<T> = <T as HostElement>::Device;
            let mut acc = vec![0.0f32; group_size];
            let mut part = vec![0.0f32; group_size];
            for start in (0..n).step_by(group_size) {
                let m = group_size.min(n - start);
                for (r, x) in inputs.iter().enumerate() {
                    for (p, v) in part[..m].iter_mut().zip(&x[start..start + m]) {
                        *p = v.to_f32();
                    }
                    round_trip_group::<E<T>>(&mut part[..m], rs_bits, q.rs_spikes);
                    for (a, &p) in acc[..m].iter_mut().zip(&part[..m]) {
                        *a = if r == 0 { p } else { *a + p };
                    }
                }
                round_trip_group::<E<T>>(&mut acc[..m], ag_bits, q.ag_spikes);
                out.extend(acc[..m].iter().map(|&v| T::from_f32(v)));
            }
        }
    }
    Ok(out)
}

/// The exact sum in f64, rank order (exact for these inputs up to f64 rounding).
pub fn exact_sum_f64<T: HostElement>(inputs: &[&[T]]) -> Vec<f64> {
    let n = inputs.first().map_or(0, |x| x.len());
    (0..n).map(|i| inputs.iter().map(|x| x[i].to_f32() as f64).sum()).collect()
}

/// Per-element analytic bound on `|reference_all_reduce(..) - exact_sum_f64(..)|`,
/// derived from the inputs alone:
/// - each rank's quantization: half a step `(max - min) / (2 (2^b - 1))` of its
///   group, plus f32 rounding of the parameters (`2^-20 (|min| + |max|)`);
/// - the f32 sum: `W * 2^-24 * sum |x_r|` (plus the rank errors);
/// - the re-quantization: half a step of the summed group, whose range is at
///   most the exact sum's range plus twice the errors so far;
/// - rounding to the element type: half an ulp (relative `2^-8` for bf16,
///   `2^-11` for f16) plus half the smallest subnormal.
///
/// `inf` where the bound itself overflows (values near the type's limits).
pub fn error_bound<T: HostElement>(inputs: &[&[T]], quant: &Quantization) -> Result<Vec<f64>> {
    let n = check_inputs(inputs)?;
    let w = inputs.len() as f64;
    let (rel_out, abs_out) = match T::DTYPE {
        flashcomm_kernels::codec::Dtype::Bf16 => (2f64.powi(-8), 2f64.powi(-134)),
        flashcomm_kernels::codec::Dtype::F16 => (2f64.powi(-11), 2f64.powi(-25)),
    };
    let exact = exact_sum_f64(inputs);
    let abs_sum: Vec<f64> = (0..n).map(|i| inputs.iter().map(|x| (x[i].to_f32() as f64).abs()).sum()).collect();
    let quant_error = |lo: f64, hi: f64, bits: Bits| {
        let levels = ((1u32 << bits.bits()) - 1) as f64;
        (hi - lo) / (2.0 * levels) * (1.0 + 2f64.powi(-10)) + 2f64.powi(-20) * (lo.abs() + hi.abs()) + 2f64.powi(-140)
    };
    let mut bound = vec![0.0; n];
    let group = match *quant {
        Quantization::None => n.max(1),
        Quantization::Int(q) => q.group_size.get(),
    };
    for start in (0..n).step_by(group) {
        let range = start..(start + group).min(n);
        let (rank_err, ag_err) = match *quant {
            Quantization::None => (0.0, 0.0),
            Quantization::Int(q) => {
                let (rs_bits, ag_bits) = (q.rs_bits, q.ag_bits);
                let rank_err: f64 = inputs
                    .iter()
                    .map(|x| {
                        let (lo, hi) = min_max(x[range.clone()].iter().map(|v| v.to_f32() as f64));
                        quant_error(lo, hi, rs_bits)
                    })
                    .sum();
                let sum_err_max = range.clone().map(|i| w * 2f64.powi(-24) * (abs_sum[i] + rank_err)).fold(0.0, f64::max);
                let slack = rank_err + sum_err_max;
                let (lo, hi) = min_max(exact[range.clone()].iter().copied());
                (rank_err, quant_error(lo - slack, hi + slack, ag_bits))
            }
        };
        for i in range {
            let sum_err = w * 2f64.powi(-24) * (abs_sum[i] + rank_err);
            let before_rounding = rank_err + sum_err + ag_err;
            bound[i] = before_rounding + rel_out * (exact[i].abs() + before_rounding) + abs_out;
        }
    }
    Ok(bound)
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Layout of the blob the single-GPU codec kernels write for `len` elements.
pub fn blob_layout(len: usize, bits: Bits, group_size: GroupSize, spikes: Spikes) -> ShardLayout {
    ShardLayout::new(len.div_ceil(group_size.get()), group_size.get(), Wire::Quantized(bits)).with_spikes(spikes.get())
}

/// The byte ranges of a blob that hold data (codes of every group slot, the
/// parameters and the spikes); padding between regions is left out.
pub fn blob_data_ranges(layout: &ShardLayout) -> [Range<usize>; 5] {
    let primary = 0..layout.slots() * layout.primary_bits() / 8;
    let secondary = layout.secondary_offset()..layout.secondary_offset() + layout.slots() * plane_bits(layout.wire).1 as usize / 8;
    let params = layout.params_offset()..layout.params_offset() + layout.groups * 8;
    let spike_values = layout.spike_values_offset()..layout.spike_values_offset() + layout.groups * layout.spikes * 2;
    let spike_positions = layout.spike_positions_offset()..layout.spike_positions_offset() + layout.groups * layout.spikes;
    [primary, secondary, params, spike_values, spike_positions]
}

/// Host twin of the `codec_quantize_*` kernels: `input` as one shard, groups
/// from element 0, encoded into a blob of [`blob_layout`] (padding zeroed).
pub fn quantize_blob<T: HostElement>(input: &[T], bits: Bits, group_size: GroupSize, spikes: Spikes) -> Vec<u8> {
    let layout = blob_layout(input.len(), bits, group_size, spikes);
    let mut blob = vec![0u8; layout.total_bytes()];
    let (b, wire, group_size, k) = (bits.bits(), Wire::Quantized(bits), group_size.get(), spikes.get());
    let mut values = vec![0.0f32; group_size];
    for (g, group) in input.chunks(group_size).enumerate() {
        for (v, x) in values.iter_mut().zip(group) {
            *v = x.to_f32();
        }
        let encoded = EncodedGroup::new::<T::Device>(&values[..group.len()], bits, spikes);
        let params = encoded.params;
        let encoder = Encoder::new(params, b);
        let p = layout.params_offset() + 8 * g;
        blob[p..p + 4].copy_from_slice(&params.center.to_bits().to_le_bytes());
        blob[p + 4..p + 8].copy_from_slice(&params.half_step.to_bits().to_le_bytes());
        for j in 0..k {
            let v = layout.spike_values_offset() + 2 * (k * g + j);
            blob[v..v + 2].copy_from_slice(&encoded.spike_value::<T::Device>(j).to_le_bytes());
            blob[layout.spike_positions_offset() + k * g + j] = encoded.spike_position(j) as u8;
        }
        for c in 0..group_size / CHUNK {
            let mut codes = [0u32; CHUNK];
            for (i, code) in codes.iter_mut().enumerate() {
                if let Some(&v) = values[..group.len()].get(c * CHUNK + i) {
                    *code = encoder.encode(v);
                }
            }
            write_chunk(&mut blob, &layout, g * group_size / CHUNK + c, &PackedChunk::pack(&codes, wire));
        }
    }
    blob
}

/// Host twin of the `codec_dequantize_*` kernels.
pub fn dequantize_blob<T: HostElement>(blob: &[u8], len: usize, bits: Bits, group_size: GroupSize, spikes: Spikes) -> Result<Vec<T>> {
    let layout = blob_layout(len, bits, group_size, spikes);
    if blob.len() < layout.total_bytes() {
        return Err(Error::BufferTooSmall { what: "blob", bytes: blob.len(), needed: layout.total_bytes() });
    }
    let (b, wire, group_size, k) = (bits.bits(), Wire::Quantized(bits), group_size.get(), spikes.get());
    let word = |at: usize| u32::from_le_bytes(blob[at..at + 4].try_into().unwrap());
    let mut out = Vec::with_capacity(len);
    for c in 0..len.div_ceil(CHUNK) {
        let g = c * CHUNK / group_size;
        let p = layout.params_offset() + 8 * g;
        let params = GroupParams { center: f32::from_bits(word(p)), half_step: f32::from_bits(word(p + 4)) };
        let codes = read_chunk(&layout, c, &word).unpack(wire);
        for (i, &q) in codes.iter().enumerate().take(len - c * CHUNK) {
            let at = (c * CHUNK + i) % group_size;
            let mut v = params.decode(q, b);
            for j in 0..k {
                let vo = layout.spike_values_offset() + 2 * (k * g + j);
                if blob[layout.spike_positions_offset() + k * g + j] as usize == at {
                    v = T::Device::to_f32(u16::from_le_bytes([blob[vo], blob[vo + 1]]));
                }
            }
            out.push(T::from_f32(v));
        }
    }
    Ok(out)
}

fn write_chunk(blob: &mut [u8], layout: &ShardLayout, c: usize, packed: &PackedChunk) {
    let words = layout.primary_chunk_bytes() / 4;
    let base = c * layout.primary_chunk_bytes();
    for (w, word) in packed.primary[..words].iter().enumerate() {
        blob[base + 4 * w..base + 4 * w + 4].copy_from_slice(&word.to_le_bytes());
    }
    if plane_bits(layout.wire).1 == 2 {
        let at = layout.secondary_offset() + 4 * c;
        blob[at..at + 4].copy_from_slice(&packed.secondary.to_le_bytes());
    }
}

fn read_chunk(layout: &ShardLayout, c: usize, word: &impl Fn(usize) -> u32) -> PackedChunk {
    let mut packed = PackedChunk::default();
    let base = c * layout.primary_chunk_bytes();
    for w in 0..layout.primary_chunk_bytes() / 4 {
        packed.primary[w] = word(base + 4 * w);
    }
    if plane_bits(layout.wire).1 == 2 {
        packed.secondary = word(layout.secondary_offset() + 4 * c);
    }
    packed
}
