//! A small GGUF (v2/v3) reader: metadata, tensor directory, and dequantization
//! of the tensor types that SmolLM2-135M-Instruct.Q4_1.gguf and
//! gemma-3-270m-q4_k_m.gguf contain (F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K,
//! Q6_K; anything else is reported as unsupported).
//!
//! Block layouts and dequantization formulas: ggml's `ggml-common.h` (the
//! `block_*` structs) and `ggml-quants.c` (`dequantize_row_*`), transcribed
//! type by type below. Format reference: ggml's `docs/gguf.md`. All integers are little-endian.
//! Layout: magic "GGUF", u32 version, u64 tensor_count, u64 kv_count, the kv
//! pairs, the tensor infos, padding to `general.alignment` (default 32), then
//! the tensor data; each tensor's offset is relative to the start of the data.

use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Value::F32(v) => v as f64,
            Value::F64(v) => v,
            _ => return self.as_u64().map(|v| v as f64),
        })
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// ggml tensor types (the numbering of `enum ggml_type`; ggml's spelling).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4_K,
    Q6_K,
    Other(u32),
}

impl GgmlType {
    fn from_u32(v: u32) -> GgmlType {
        match v {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            14 => GgmlType::Q6_K,
            x => GgmlType::Other(x),
        }
    }
    /// (elements per block, bytes per block)
    fn block(&self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_K => (QK_K, 144),
            GgmlType::Q6_K => (QK_K, 210),
            GgmlType::Other(_) => return None,
        })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Other(x) => write!(f, "ggml_type({x})"),
            t => write!(f, "{t:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the contiguous (innermost) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

pub struct Gguf {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: Vec<u8>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.pos + n > self.buf.len() {
            return Err(format!("GGUF truncated at byte {}", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|e| format!("GGUF string not UTF-8: {e}"))
    }
    fn value(&mut self, ty: u32) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let ety = self.u32()?;
                let n = self.u64()? as usize;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(format!("unknown GGUF value type {t}")),
        })
    }
}

impl Gguf {
    pub fn open(path: &std::path::Path) -> Result<Gguf, String> {
        let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Gguf, String> {
        let mut c = Cursor { buf: &data, pos: 0 };
        if c.take(4)? != b"GGUF" {
            return Err("not a GGUF file (bad magic)".into());
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version}"));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.u64()?);
            }
            let ty = GgmlType::from_u32(c.u32()?);
            let offset = c.u64()? as usize;
            tensors.push(TensorInfo { name, dims, ty, offset });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(|v| v.as_u64())
            .unwrap_or(32) as usize;
        let data_start = c.pos.div_ceil(align) * align;
        for t in &mut tensors {
            t.offset += data_start;
            if let Some((be, bb)) = t.ty.block() {
                let n = t.n_elements();
                if n % be != 0 {
                    return Err(format!("tensor {}: {n} elements not a multiple of block {be}", t.name));
                }
                if t.offset + n / be * bb > data.len() {
                    return Err(format!("tensor {} runs past the end of the file", t.name));
                }
            }
        }
        Ok(Gguf { version, metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Result<&Value, String> {
        self.metadata.get(key).ok_or_else(|| format!("GGUF metadata key {key} missing"))
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, String> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("GGUF tensor {name} missing"))
    }

    /// Dequantize a whole tensor to f32, in ggml element order (dims[0] fastest).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, String> {
        let t = self.tensor(name)?;
        let n = t.n_elements();
        let (be, bb) = t
            .ty
            .block()
            .ok_or_else(|| format!("tensor {name}: type {} not supported", t.ty))?;
        let raw = &self.data[t.offset..t.offset + n / be * bb];
        let mut out = vec![0f32; n];
        dequantize_into(t.ty, raw, &mut out);
        Ok(out)
    }
}

fn f16le(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Elements per super-block of the K-quants (`QK_K`).
const QK_K: usize = 256;

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8)
/// from the 12 packed bytes of a Q4_K/Q5_K block. Sub-blocks 0..3 keep theirs
/// in the low 6 bits of bytes j (scale) and j+4 (min); sub-blocks 4..7 keep
/// the low 4 bits in the nibbles of byte j+4 and the high 2 bits in the top
/// bits of bytes j-4 (scale) and j (min).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Dequantize `raw` (whole blocks) of type `ty` into `out`.
pub fn dequantize_into(ty: GgmlType, raw: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = f16le(b);
            }
        }
        // block_q4_0 { f16 d; u8 qs[16]; }: x[j] = (lo(qs[j]) - 8) * d, x[j+16] = (hi(qs[j]) - 8) * d
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(18)) {
                let d = f16le(&b[0..2]);
                for j in 0..16 {
                    o[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        // block_q4_1 { f16 d; f16 m; u8 qs[16]; }: x[j] = lo(qs[j]) * d + m, x[j+16] = hi(qs[j]) * d + m
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(20)) {
                let d = f16le(&b[0..2]);
                let m = f16le(&b[2..4]);
                for j in 0..16 {
                    o[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                    o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        // block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }: 5-bit q = nibble | (bit of qh) << 4,
        // x[j] = (lo(qs[j]) | qh bit j << 4) - 16) * d, x[j+16] = (hi(qs[j]) | qh bit j+16 << 4) - 16) * d
        GgmlType::Q5_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(22)) {
                let d = f16le(&b[0..2]);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..16 {
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    o[j] = (((qs[j] & 0x0f) | h0) as i32 - 16) as f32 * d;
                    o[j + 16] = (((qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        // block_q8_0 { f16 d; i8 qs[32]; }: x[j] = qs[j] * d
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(34)) {
                let d = f16le(&b[0..2]);
                for j in 0..32 {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        // block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }: 8 sub-blocks of
        // 32 with 6-bit scale sc and min m (`scale_min_k4`); the 256 elements come in
        // 4 runs of 64: run r uses qs[32r..32r+32], low nibbles for sub-block 2r, high
        // nibbles for sub-block 2r+1; x = d*sc * q - dmin*m.
        GgmlType::Q4_K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(raw.chunks_exact(144)) {
                let d = f16le(&b[0..2]);
                let dmin = f16le(&b[2..4]);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for r in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * r, scales);
                    let (sc2, m2) = scale_min_k4(2 * r + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * r..32 * r + 32];
                    let y = &mut o[64 * r..64 * r + 64];
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        // block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }: 16 sub-blocks of 16
        // with an 8-bit signed scale; 6-bit q = 4 low bits from ql, 2 high bits from qh,
        // minus 32. Two halves of 128: half h uses ql[64h..], qh[32h..], scales[8h..];
        // for l < 32 its elements l, l+32, l+64, l+96 are (ql[l] lo, qh[l] bits 0-1),
        // (ql[l+32] lo, bits 2-3), (ql[l] hi, bits 4-5), (ql[l+32] hi, bits 6-7), with
        // scales[l/16 + 0, 2, 4, 6]; x = d * scale * q.
        GgmlType::Q6_K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(raw.chunks_exact(210)) {
                let d = f16le(&b[208..210]);
                for h in 0..2 {
                    let ql = &b[64 * h..64 * h + 64];
                    let qh = &b[128 + 32 * h..128 + 32 * h + 32];
                    let sc = &b[192 + 8 * h..192 + 8 * h + 8];
                    let y = &mut o[128 * h..128 * h + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        GgmlType::Other(_) => unreachable!(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block() {
        // d = 0.5, m = -1.0, nibbles lo = j % 16, hi = 15 - j % 16
        let mut b = Vec::new();
        b.extend_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b.extend_from_slice(&half::f16::from_f32(-1.0).to_bits().to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut out = [0f32; 32];
        dequantize_into(GgmlType::Q4_1, &b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.5 - 1.0);
            assert_eq!(out[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q8_0_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
        for j in 0..32i32 {
            b.push((j - 16) as i8 as u8);
        }
        let mut out = [0f32; 32];
        dequantize_into(GgmlType::Q8_0, &b, &mut out);
        for (j, &o) in out.iter().enumerate() {
            assert_eq!(o, (j as f32 - 16.0) * 0.25);
        }
    }

    fn f16b(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    // Blocks below are packed the way ggml's quantize_row_*_ref writes them
    // (ggml-quants.c), from chosen integer codes, so the decoder is checked
    // against the encoder's layout rather than against itself.

    #[test]
    fn q5_0_block() {
        // 5-bit codes covering 0..31 in both halves, d = 0.5
        let q: Vec<u8> = (0..32).map(|j| ((j * 7 + 3) % 32) as u8).collect();
        let mut qh = 0u32;
        let mut qs = [0u8; 16];
        for j in 0..16 {
            qs[j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
            qh |= ((q[j] as u32 & 0x10) >> 4) << j;
            qh |= ((q[j + 16] as u32 & 0x10) >> 4) << (j + 16);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&f16b(0.5));
        b.extend_from_slice(&qh.to_le_bytes());
        b.extend_from_slice(&qs);
        assert_eq!(b.len(), 22);
        let mut out = [0f32; 32];
        dequantize_into(GgmlType::Q5_0, &b, &mut out);
        for j in 0..32 {
            assert_eq!(out[j], (q[j] as f32 - 16.0) * 0.5, "element {j}");
        }
        // the extremes of the code range
        assert!(out.contains(&-8.0) && out.contains(&7.5));
    }

    #[test]
    fn q4_k_block() {
        // 8 sub-blocks: 6-bit scales and mins (some >= 16, so the packed high
        // bits of sub-blocks 4..7 matter), 4-bit codes 0..15
        let sc: [u8; 8] = [1, 63, 7, 20, 33, 2, 63, 17];
        let mn: [u8; 8] = [0, 5, 63, 16, 1, 48, 31, 62];
        let l: Vec<u8> = (0..256).map(|i| ((i * 5 + i / 32) % 16) as u8).collect();
        let mut scales = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                scales[j] = sc[j];
                scales[j + 4] = mn[j];
            } else {
                scales[j + 4] = (sc[j] & 0x0f) | ((mn[j] & 0x0f) << 4);
                scales[j - 4] |= (sc[j] >> 4) << 6;
                scales[j] |= (mn[j] >> 4) << 6;
            }
        }
        let mut qs = [0u8; 128];
        for (r, j) in (0..256).step_by(64).enumerate() {
            for k in 0..32 {
                qs[32 * r + k] = l[j + k] | (l[j + k + 32] << 4);
            }
        }
        let (d, dmin) = (0.5f32, 0.25f32);
        let mut b = Vec::new();
        b.extend_from_slice(&f16b(d));
        b.extend_from_slice(&f16b(dmin));
        b.extend_from_slice(&scales);
        b.extend_from_slice(&qs);
        assert_eq!(b.len(), 144);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &scales), (sc[j], mn[j]), "sub-block {j}");
        }
        // two blocks: the second with d negated checks the block stride
        let mut two = b.clone();
        two.extend_from_slice(&b);
        two[144..146].copy_from_slice(&f16b(-d));
        let mut out = vec![0f32; 512];
        dequantize_into(GgmlType::Q4_K, &two, &mut out);
        for i in 0..256 {
            let s = i / 32;
            let want = d * sc[s] as f32 * l[i] as f32 - dmin * mn[s] as f32;
            assert_eq!(out[i], want, "element {i}");
            let want2 = -d * sc[s] as f32 * l[i] as f32 - dmin * mn[s] as f32;
            assert_eq!(out[256 + i], want2, "block 2 element {i}");
        }
    }

    #[test]
    fn q6_k_block() {
        // 16 signed 8-bit scales, 6-bit codes 0..63 (value = code - 32)
        let sc: [i8; 16] = [1, -1, 127, -128, 3, 5, -7, 9, 11, -13, 2, 4, 6, -8, 10, 12];
        let l: Vec<u8> = (0..256).map(|i| ((i * 11 + i / 16) % 64) as u8).collect();
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for (h, j) in (0..256).step_by(128).enumerate() {
            for k in 0..32 {
                let q1 = l[j + k] & 0x0f;
                let q2 = l[j + k + 32] & 0x0f;
                let q3 = l[j + k + 64] & 0x0f;
                let q4 = l[j + k + 96] & 0x0f;
                ql[64 * h + k] = q1 | (q3 << 4);
                ql[64 * h + k + 32] = q2 | (q4 << 4);
                qh[32 * h + k] =
                    (l[j + k] >> 4) | ((l[j + k + 32] >> 4) << 2) | ((l[j + k + 64] >> 4) << 4) | ((l[j + k + 96] >> 4) << 6);
            }
        }
        let d = 0.125f32;
        let mut b = Vec::new();
        b.extend_from_slice(&ql);
        b.extend_from_slice(&qh);
        b.extend(sc.iter().map(|&v| v as u8));
        b.extend_from_slice(&f16b(d));
        assert_eq!(b.len(), 210);
        let mut out = [0f32; 256];
        dequantize_into(GgmlType::Q6_K, &b, &mut out);
        for i in 0..256 {
            let want = d * sc[i / 16] as f32 * (l[i] as f32 - 32.0);
            assert_eq!(out[i], want, "element {i}");
        }
    }

    #[test]
    fn k_quant_block_sizes() {
        assert_eq!(GgmlType::from_u32(12).block(), Some((256, 144)));
        assert_eq!(GgmlType::from_u32(14).block(), Some((256, 210)));
        assert_eq!(GgmlType::from_u32(6).block(), Some((32, 22)));
        assert_eq!(GgmlType::from_u32(13).block(), None); // Q5_K: not implemented
    }

    /// The models directory (`FLASHCOMM_MODELS`, else `<repo>/models`).
    fn models_dir() -> std::path::PathBuf {
        std::env::var("FLASHCOMM_MODELS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
    }

    /// Dequantization of the real Gemma-3-270M tensors against gguf-py 0.19.0
    /// (`gguf.quants.dequantize`, ggml's own numpy implementation): f64 sum
    /// and sum of squares of each tensor and a few elements, one tensor of
    /// each type it holds (Q8_0, Q4_K, Q5_0, Q6_K). Skipped (with a message)
    /// when the model is not installed (tools/perplexity/fetch-assets.sh).
    #[test]
    fn gemma3_tensors_match_gguf_py() {
        let path = models_dir().join("gemma3/gemma-3-270m-q4_k_m.gguf");
        if !path.exists() {
            eprintln!("skipped: {} not installed (tools/perplexity/fetch-assets.sh)", path.display());
            return;
        }
        type Expect = (&'static str, GgmlType, f64, f64, &'static [(usize, f32)]);
        // (gguf-py's values as it printed them)
        #[rustfmt::skip]
        #[allow(clippy::excessive_precision)]
        let want: &[Expect] = &[
            ("token_embd.weight", GgmlType::Q8_0, -27668.36862385273, 278708.59100772557, &[(0, -0.007244110107421875), (1, 0.042860984802246094), (2, -0.034409523010253906), (3, -0.02112865447998047), (83886087, -0.021432876586914062), (167772159, -0.017424583435058594)]),
            ("blk.0.attn_output.weight", GgmlType::Q4_K, -1.8330761790275574, 930.2992641774874, &[(0, -0.015705108642578125), (1, 0.04966926574707031), (2, -0.03749656677246094), (3, 0.06056499481201172), (327687, -0.03889036178588867), (655359, -0.011407613754272461)]),
            ("blk.0.attn_q.weight", GgmlType::Q5_0, -51.693368911743164, 1025.197383899027, &[(0, -0.0037841796875), (1, 0.007568359375), (2, -0.01513671875), (3, -0.00567626953125), (327687, 0.017547607421875), (655359, 0.01312255859375)]),
            ("blk.0.attn_v.weight", GgmlType::Q8_0, 1.5544872283935547, 256.0193953019168, &[(0, 0.0060882568359375), (1, -0.03957366943359375), (2, -0.03145599365234375), (3, -0.05682373046875), (81927, -0.012920379638671875), (163839, -0.05296611785888672)]),
            ("blk.0.ffn_down.weight", GgmlType::Q6_K, 6.480193614959717, 610.7072775584979, &[(0, 0.0052117109298706055), (1, 0.02171546220779419), (2, -0.02518993616104126), (3, 0.013897895812988281), (655367, -0.0234832763671875), (1310719, -0.00941401720046997)]),
            ("blk.5.attn_v.weight", GgmlType::Q5_0, -7.6671905517578125, 256.22875473531894, &[(0, -0.08056640625), (1, -0.0067138671875), (2, -0.013427734375), (3, 0.067138671875), (81927, 0.005584716796875), (163839, 0.00653076171875)]),
            ("blk.5.ffn_down.weight", GgmlType::Q4_K, -17.400326013565063, 620.5550868067502, &[(0, 0.0033077001571655273), (1, 0.030995845794677734), (2, -0.02438044548034668), (3, -0.0077675580978393555), (655367, -0.0012273788452148438), (1310719, 0.00647735595703125)]),
        ];
        let g = Gguf::open(&path).unwrap();
        for &(name, ty, sum, sumsq, elems) in want {
            assert_eq!(g.tensor(name).unwrap().ty, ty, "{name}");
            let x = g.dequantize(name).unwrap();
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            let s2: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            assert!((s - sum).abs() <= 1e-9 * sumsq.sqrt() * (x.len() as f64).sqrt(), "{name}: sum {s} vs {sum}");
            assert!((s2 / sumsq - 1.0).abs() < 1e-9, "{name}: sum of squares {s2} vs {sumsq}");
            for &(i, v) in elems {
                assert_eq!(x[i], v, "{name}[{i}]");
            }
        }
    }
}
