//! Llama-architecture forward pass (f32) with simulated tensor parallelism of
//! the two row-parallel projections per layer (attention output, ffn_down).
//!
//! Each row-parallel projection `y = h · Wᵀ` (h: [T x in], W: [576 x in]) is
//! computed as W_tp partial products over disjoint contiguous slices of the
//! input dimension, `y_r = h[:, s_r] · W[:, s_r]ᵀ`, and the partials are handed
//! to a [`Combine`] implementation (exact sum or the library's reducer) which
//! writes the combined [T x 576] result. Everything else (norms, q/k/v,
//! gate/up, attention, LM head) is computed whole: in a real TP engine those
//! are column-parallel and need no communication, so they are bit-for-bit
//! irrelevant to the all-reduce.

use crate::gguf::Gguf;
use crate::matmul::{matmul_ab, matmul_xwt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// attention output projection (`blk.N.attn_output`)
    Attn = 0,
    /// MLP down projection (`blk.N.ffn_down`)
    Mlp = 1,
}

pub struct Layer {
    attn_norm: Vec<f32>,
    /// q, k, v stacked: [(n_head + 2 n_head_kv) * head_dim x n_embd]
    wqkv: Vec<f32>,
    /// [n_embd x n_head*head_dim]
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// gate, up stacked: [2 n_ff x n_embd]
    wgu: Vec<f32>,
    /// [n_embd x n_ff]
    wdown: Vec<f32>,
}

pub struct Model {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
    tok_embd: Vec<f32>,
    /// LM head; `None` = tied to `tok_embd`.
    output: Option<Vec<f32>>,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
}

fn meta_u(g: &Gguf, k: &str) -> Result<usize, String> {
    g.get(k)?.as_u64().map(|v| v as usize).ok_or_else(|| format!("{k} not an integer"))
}

fn check_dims(g: &Gguf, name: &str, dims: &[usize]) -> Result<(), String> {
    let t = g.tensor(name)?;
    let have: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if have != dims {
        return Err(format!("tensor {name}: dims {have:?}, expected {dims:?}"));
    }
    Ok(())
}

impl Model {
    pub fn load(g: &Gguf) -> Result<Model, String> {
        let arch = g.get("general.architecture")?.as_str().unwrap_or("");
        if arch != "llama" {
            return Err(format!("architecture {arch:?}: only llama is implemented"));
        }
        let n_layer = meta_u(g, "llama.block_count")?;
        let n_embd = meta_u(g, "llama.embedding_length")?;
        let n_head = meta_u(g, "llama.attention.head_count")?;
        let n_head_kv = meta_u(g, "llama.attention.head_count_kv")?;
        let n_ff = meta_u(g, "llama.feed_forward_length")?;
        let head_dim = n_embd / n_head;
        if let Ok(v) = g.get("llama.rope.dimension_count") {
            if v.as_u64() != Some(head_dim as u64) {
                return Err("partial rotary embedding not implemented".into());
            }
        }
        let eps = g.get("llama.attention.layer_norm_rms_epsilon")?.as_f64().ok_or("eps")? as f32;
        let rope_base = g
            .metadata
            .get("llama.rope.freq_base")
            .and_then(|v| v.as_f64())
            .unwrap_or(10000.0) as f32;
        if g.metadata.contains_key("llama.rope.scaling.type") {
            let t = g.get("llama.rope.scaling.type")?.as_str().unwrap_or("");
            if t != "none" {
                return Err(format!("rope scaling {t:?} not implemented"));
            }
        }
        let tok = g.tensor("token_embd.weight")?;
        let n_vocab = tok.dims[1] as usize;
        check_dims(g, "token_embd.weight", &[n_embd, n_vocab])?;
        let tok_embd = g.dequantize("token_embd.weight")?;
        let output = if g.tensor("output.weight").is_ok() {
            check_dims(g, "output.weight", &[n_embd, n_vocab])?;
            Some(g.dequantize("output.weight")?)
        } else {
            None
        };
        let out_norm = g.dequantize("output_norm.weight")?;
        let kvd = n_head_kv * head_dim;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            check_dims(g, &p("attn_q"), &[n_embd, n_head * head_dim])?;
            check_dims(g, &p("attn_k"), &[n_embd, kvd])?;
            check_dims(g, &p("attn_v"), &[n_embd, kvd])?;
            check_dims(g, &p("attn_output"), &[n_head * head_dim, n_embd])?;
            check_dims(g, &p("ffn_gate"), &[n_embd, n_ff])?;
            check_dims(g, &p("ffn_up"), &[n_embd, n_ff])?;
            check_dims(g, &p("ffn_down"), &[n_ff, n_embd])?;
            let mut wqkv = g.dequantize(&p("attn_q"))?;
            wqkv.extend(g.dequantize(&p("attn_k"))?);
            wqkv.extend(g.dequantize(&p("attn_v"))?);
            let mut wgu = g.dequantize(&p("ffn_gate"))?;
            wgu.extend(g.dequantize(&p("ffn_up"))?);
            layers.push(Layer {
                attn_norm: g.dequantize(&p("attn_norm"))?,
                wqkv,
                wo: g.dequantize(&p("attn_output"))?,
                ffn_norm: g.dequantize(&p("ffn_norm"))?,
                wgu,
                wdown: g.dequantize(&p("ffn_down"))?,
            });
        }
        Ok(Model {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            eps,
            rope_base,
            tok_embd,
            output,
            out_norm,
            layers,
        })
    }

    /// Input-dimension slices (start, len) of the attention output projection
    /// for `world` ranks: on head boundaries, as equal as possible, the first
    /// `n_head % world` ranks taking one head more (9 heads, W=4 -> 3,2,2,2).
    /// With `world > n_head` the last ranks get an empty slice (not used here).
    pub fn attn_slices(&self, world: usize) -> Vec<(usize, usize)> {
        split_even(self.n_head, world)
            .into_iter()
            .map(|(s, l)| (s * self.head_dim, l * self.head_dim))
            .collect()
    }

    /// Input-dimension slices of ffn_down: contiguous, as equal as possible
    /// (1536 divides by 2, 4 and 8).
    pub fn mlp_slices(&self, world: usize) -> Vec<(usize, usize)> {
        split_even(self.n_ff, world)
    }
}

/// Split `n` items into `parts` contiguous ranges as equal as possible,
/// larger ones first.
pub fn split_even(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let (q, r) = (n / parts, n % parts);
    let mut out = Vec::with_capacity(parts);
    let mut s = 0;
    for i in 0..parts {
        let l = q + usize::from(i < r);
        out.push((s, l));
        s += l;
    }
    out
}

/// How the W partial sums of a row-parallel projection are combined.
pub trait Combine {
    /// `partials[r]` is rank r's `[tokens x n_embd]` partial product; write the
    /// combined result into `out` (`[tokens x n_embd]`).
    fn combine(&mut self, layer: usize, kind: Kind, partials: &[Vec<f32>], out: &mut [f32]);
}

/// Result of one window.
pub struct WindowResult {
    /// Sum of -ln p(token[t+1] | token[..=t]) over the predicted positions.
    pub nll: f64,
    pub count: usize,
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let scale = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

impl Model {
    /// Run `tokens` (one context window, positions 0..T) through the model,
    /// combining each row-parallel projection's `world` partials with
    /// `comb`, and return the next-token NLL for predictions of positions
    /// `score_from..T` (each predicted from all earlier positions).
    pub fn forward_window(&self, tokens: &[u32], world: usize, comb: &mut dyn Combine, score_from: usize) -> WindowResult {
        let t_len = tokens.len();
        let d = self.n_embd;
        let hd = self.head_dim;
        let qd = self.n_head * hd;
        let kvd = self.n_head_kv * hd;
        let qkv_d = qd + 2 * kvd;
        let group = self.n_head / self.n_head_kv;
        let attn_slices = self.attn_slices(world);
        let mlp_slices = self.mlp_slices(world);

        // RoPE tables (ggml "NORM" mode: rotate adjacent pairs (2i, 2i+1); the
        // GGUF converter permuted the HF q/k weights for this).
        let half = hd / 2;
        let mut cos = vec![0f32; t_len * half];
        let mut sin = vec![0f32; t_len * half];
        for p in 0..t_len {
            for i in 0..half {
                let theta = self.rope_base.powf(-2.0 * i as f32 / hd as f32);
                let a = p as f32 * theta;
                cos[p * half + i] = a.cos();
                sin[p * half + i] = a.sin();
            }
        }

        let mut x = vec![0f32; t_len * d];
        for (t, &id) in tokens.iter().enumerate() {
            x[t * d..(t + 1) * d].copy_from_slice(&self.tok_embd[id as usize * d..(id as usize + 1) * d]);
        }
        let mut xn = vec![0f32; t_len * d];
        let mut qkv = vec![0f32; t_len * qkv_d];
        let mut att = vec![0f32; t_len * qd];
        let mut scores = vec![0f32; t_len * t_len];
        let mut gu = vec![0f32; t_len * 2 * self.n_ff];
        let mut hbuf = vec![0f32; t_len * self.n_ff];
        let mut partials: Vec<Vec<f32>> = (0..world).map(|_| vec![0f32; t_len * d]).collect();
        let mut delta = vec![0f32; t_len * d];
        let scale = 1.0 / (hd as f32).sqrt();

        for (li, l) in self.layers.iter().enumerate() {
            // ---- attention ----
            rmsnorm(&x, &l.attn_norm, self.eps, &mut xn);
            matmul_xwt(&xn, t_len, d, 0, &l.wqkv, qkv_d, d, 0, d, &mut qkv);
            for t in 0..t_len {
                let row = &mut qkv[t * qkv_d..t * qkv_d + qd + kvd];
                for h in 0..self.n_head + self.n_head_kv {
                    let v = &mut row[h * hd..(h + 1) * hd];
                    for i in 0..half {
                        let (c, s) = (cos[t * half + i], sin[t * half + i]);
                        let (a, b) = (v[2 * i], v[2 * i + 1]);
                        v[2 * i] = a * c - b * s;
                        v[2 * i + 1] = a * s + b * c;
                    }
                }
            }
            for h in 0..self.n_head {
                let kh = h / group;
                // scores = Q_h · K_khᵀ  [T x T]
                matmul_xwt(&qkv, t_len, qkv_d, h * hd, &qkv, t_len, qkv_d, qd + kh * hd, hd, &mut scores);
                for t in 0..t_len {
                    let row = &mut scores[t * t_len..(t + 1) * t_len];
                    let mut mx = f32::NEG_INFINITY;
                    for v in row[..=t].iter_mut() {
                        *v *= scale;
                        mx = mx.max(*v);
                    }
                    let mut sum = 0f32;
                    for v in row[..=t].iter_mut() {
                        *v = (*v - mx).exp();
                        sum += *v;
                    }
                    let inv = 1.0 / sum;
                    for v in row[..=t].iter_mut() {
                        *v *= inv;
                    }
                    for v in row[t + 1..].iter_mut() {
                        *v = 0.0;
                    }
                }
                // att[:, h] = P · V_kh  [T x hd]
                let voff = qd + kvd + kh * hd;
                matmul_ab(&scores, t_len, t_len, &qkv[voff..], qkv_d, t_len, hd, &mut att[h * hd..], qd);
            }
            for (r, &(s, len)) in attn_slices.iter().enumerate() {
                matmul_xwt(&att, t_len, qd, s, &l.wo, d, qd, s, len, &mut partials[r]);
            }
            comb.combine(li, Kind::Attn, &partials, &mut delta);
            for (xv, dv) in x.iter_mut().zip(&delta) {
                *xv += dv;
            }

            // ---- MLP ----
            rmsnorm(&x, &l.ffn_norm, self.eps, &mut xn);
            let f = self.n_ff;
            matmul_xwt(&xn, t_len, d, 0, &l.wgu, 2 * f, d, 0, d, &mut gu);
            for t in 0..t_len {
                let g = &gu[t * 2 * f..t * 2 * f + f];
                let u = &gu[t * 2 * f + f..(t + 1) * 2 * f];
                for ((o, &gv), &uv) in hbuf[t * f..(t + 1) * f].iter_mut().zip(g).zip(u) {
                    *o = gv / (1.0 + (-gv).exp()) * uv;
                }
            }
            for (r, &(s, len)) in mlp_slices.iter().enumerate() {
                matmul_xwt(&hbuf, t_len, f, s, &l.wdown, d, f, s, len, &mut partials[r]);
            }
            comb.combine(li, Kind::Mlp, &partials, &mut delta);
            for (xv, dv) in x.iter_mut().zip(&delta) {
                *xv += dv;
            }
        }

        // ---- LM head + NLL ----
        rmsnorm(&x, &self.out_norm, self.eps, &mut xn);
        let head = self.output.as_deref().unwrap_or(&self.tok_embd);
        let v = self.n_vocab;
        let chunk = 256;
        let mut logits = vec![0f32; chunk * v];
        let mut nll = 0f64;
        let mut count = 0usize;
        let first = score_from.max(1);
        // position t's logits predict token t+1
        let mut t0 = first - 1;
        while t0 + 1 < t_len {
            let rows = chunk.min(t_len - 1 - t0);
            matmul_xwt(&xn[t0 * d..], rows, d, 0, head, v, d, 0, d, &mut logits);
            for i in 0..rows {
                let lr = &logits[i * v..(i + 1) * v];
                let mx = lr.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let se: f64 = lr.iter().map(|&z| ((z - mx) as f64).exp()).sum();
                let target = tokens[t0 + i + 1] as usize;
                nll += se.ln() + mx as f64 - lr[target] as f64;
                count += 1;
            }
            t0 += rows;
        }
        WindowResult { nll, count }
    }
}
