//! Forward pass (f32) of the two architectures the tool evaluates, with
//! simulated tensor parallelism of the two row-parallel projections per layer
//! (attention output, ffn_down):
//!
//! - **llama** (SmolLM2): RMSNorm, RoPE on adjacent pairs (ggml "NORM"), GQA
//!   causal attention, SiLU-gated MLP, final RMSNorm, LM head.
//! - **gemma3** (Gemma-3-270M), as llama.cpp's `llm_build_gemma3` (iSWA) and
//!   Hugging Face's `Gemma3ForCausalLM`: token embeddings scaled by
//!   sqrt(n_embd); RMSNorm `x / rms(x) * (1 + w)` everywhere (the GGUF
//!   converter stores `1 + w`, so the stored weight is used as is); RMSNorm of
//!   each query and key head (`attn_q_norm`, `attn_k_norm`) before RoPE;
//!   RoPE on (i, i + head_dim/2) pairs (ggml "NEOX"); sliding-window attention
//!   on local layers (`il % 6 < 5`, window `gemma3.attention.sliding_window`,
//!   RoPE base 10,000) and full attention on the global ones (every 6th, RoPE
//!   base `gemma3.rope.freq_base`); query scale 1/sqrt(head_dim); the
//!   attention output and the MLP output each pass a post-norm
//!   (`post_attention_norm`, `post_ffw_norm`) before the residual add; GeGLU
//!   MLP `gelu_tanh(gate) * up`; final RMSNorm; tied LM head; final logit
//!   soft-capping only if the GGUF carries `gemma3.final_logit_softcapping`
//!   (Gemma 3 has none).
//!
//! Each row-parallel projection `y = h · Wᵀ` (h: [T x in], W: [n_embd x in]) is
//! computed as W_tp partial products over disjoint contiguous slices of the
//! input dimension, `y_r = h[:, s_r] · W[:, s_r]ᵀ`, and the partials are handed
//! to a [`Combine`] implementation (exact sum or the library's reducer) which
//! writes the combined [T x n_embd] result. Everything else (norms, q/k/v,
//! gate/up, attention, post-norms, LM head) is computed whole: in a real TP
//! engine those are column-parallel or replicated and need no communication.
//! Gemma's post-norms act on the all-reduced sum, as in a TP engine.

use crate::gguf::Gguf;
use crate::matmul::{matmul_ab, matmul_xwt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// attention output projection (`blk.N.attn_output`)
    Attn = 0,
    /// MLP down projection (`blk.N.ffn_down`)
    Mlp = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
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
    /// gemma3: per-head RMSNorm weights of q and k [head_dim]
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// gemma3: post-attention and post-MLP norms [n_embd]
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    /// `Some(n)`: sliding-window layer, key j visible from query t iff t - j < n
    window: Option<usize>,
    /// index into the model's RoPE bases (0: global, 1: local)
    rope: usize,
}

pub struct Model {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub eps: f32,
    /// RoPE base of the global layers (all layers for llama)
    pub rope_base: f32,
    /// gemma3: RoPE base of the sliding-window layers
    pub rope_base_local: Option<f32>,
    /// gemma3: sliding window (tokens) and how many layers are local
    pub sliding_window: Option<usize>,
    pub n_local_layers: usize,
    /// multiplies the token embeddings (gemma3: sqrt(n_embd))
    embd_scale: f32,
    /// multiplies q·k (1/sqrt(head_dim))
    attn_scale: f32,
    /// ggml NEOX rotation (pairs i, i + head_dim/2) instead of adjacent pairs
    rope_neox: bool,
    /// gemma3 GeGLU (gelu tanh approximation) instead of SiLU
    gelu: bool,
    /// `Some(c)`: logits = c * tanh(logits / c)
    pub final_softcap: Option<f32>,
    tok_embd: Vec<f32>,
    /// LM head; `None` = tied to `tok_embd`.
    output: Option<Vec<f32>>,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
}

fn meta_u(g: &Gguf, k: &str) -> Result<usize, String> {
    g.get(k)?.as_u64().map(|v| v as usize).ok_or_else(|| format!("{k} not an integer"))
}

fn meta_f(g: &Gguf, k: &str) -> Option<f32> {
    g.metadata.get(k).and_then(|v| v.as_f64()).map(|v| v as f32)
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
        let arch_name = g.get("general.architecture")?.as_str().unwrap_or("");
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            other => return Err(format!("architecture {other:?}: only llama and gemma3 are implemented")),
        };
        let a = arch_name;
        let n_layer = meta_u(g, &format!("{a}.block_count"))?;
        let n_embd = meta_u(g, &format!("{a}.embedding_length"))?;
        let n_head = meta_u(g, &format!("{a}.attention.head_count"))?;
        let n_head_kv = meta_u(g, &format!("{a}.attention.head_count_kv"))?;
        let n_ff = meta_u(g, &format!("{a}.feed_forward_length"))?;
        let head_dim = match g.metadata.get(&format!("{a}.attention.key_length")) {
            Some(v) => v.as_u64().ok_or("key_length not an integer")? as usize,
            None => n_embd / n_head,
        };
        if let Some(v) = g.metadata.get(&format!("{a}.attention.value_length")) {
            if v.as_u64() != Some(head_dim as u64) {
                return Err("value_length != key_length not implemented".into());
            }
        }
        if let Ok(v) = g.get(&format!("{a}.rope.dimension_count")) {
            if v.as_u64() != Some(head_dim as u64) {
                return Err("partial rotary embedding not implemented".into());
            }
        }
        let eps = g.get(&format!("{a}.attention.layer_norm_rms_epsilon"))?.as_f64().ok_or("eps")? as f32;
        let default_base = if arch == Arch::Gemma3 { 1_000_000.0 } else { 10_000.0 };
        let rope_base = meta_f(g, &format!("{a}.rope.freq_base")).unwrap_or(default_base);
        if let Some(t) = g.metadata.get(&format!("{a}.rope.scaling.type")) {
            let t = t.as_str().unwrap_or("");
            if t != "none" {
                return Err(format!("rope scaling {t:?} not implemented"));
            }
        }
        for k in ["attention.causal", "attn_logit_softcapping"] {
            if let Some(v) = g.metadata.get(&format!("{a}.{k}")) {
                if k == "attention.causal" && v.as_bool() == Some(true) {
                    continue;
                }
                return Err(format!("{a}.{k} = {v:?} not implemented"));
            }
        }
        let final_softcap = meta_f(g, &format!("{a}.final_logit_softcapping")).filter(|&c| c > 0.0);
        // Gemma 3 (llama.cpp llama-model.cpp, LLM_ARCH_GEMMA3): swa pattern 6
        // (layer il is local iff il % 6 < 5), local RoPE base 10,000 (both
        // fixed there; read from the GGUF when a newer converter wrote them).
        let (sliding_window, rope_base_local, pattern) = if arch == Arch::Gemma3 {
            let w = meta_u(g, &format!("{a}.attention.sliding_window"))?;
            let base_local = meta_f(g, &format!("{a}.rope.freq_base_swa")).unwrap_or(10_000.0);
            let pattern = match g.metadata.get(&format!("{a}.attention.sliding_window_pattern")) {
                None => 6,
                Some(v) => v.as_u64().ok_or("sliding_window_pattern: only the integer form is implemented")? as usize,
            };
            (Some(w), Some(base_local), pattern)
        } else {
            (None, None, 0)
        };
        let is_local = |il: usize| pattern > 0 && il % pattern < pattern - 1;
        let attn_scale = if arch == Arch::Gemma3 && n_layer == 62 {
            // llama.cpp: Gemma 3 27B scales by 1/sqrt(n_embd / n_head)
            1.0 / ((n_embd / n_head) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
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
        check_dims(g, "output_norm.weight", &[n_embd])?;
        let out_norm = g.dequantize("output_norm.weight")?;
        let qd = n_head * head_dim;
        let kvd = n_head_kv * head_dim;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            check_dims(g, &p("attn_norm"), &[n_embd])?;
            check_dims(g, &p("attn_q"), &[n_embd, qd])?;
            check_dims(g, &p("attn_k"), &[n_embd, kvd])?;
            check_dims(g, &p("attn_v"), &[n_embd, kvd])?;
            check_dims(g, &p("attn_output"), &[qd, n_embd])?;
            check_dims(g, &p("ffn_norm"), &[n_embd])?;
            check_dims(g, &p("ffn_gate"), &[n_embd, n_ff])?;
            check_dims(g, &p("ffn_up"), &[n_embd, n_ff])?;
            check_dims(g, &p("ffn_down"), &[n_ff, n_embd])?;
            let mut wqkv = g.dequantize(&p("attn_q"))?;
            wqkv.extend(g.dequantize(&p("attn_k"))?);
            wqkv.extend(g.dequantize(&p("attn_v"))?);
            let mut wgu = g.dequantize(&p("ffn_gate"))?;
            wgu.extend(g.dequantize(&p("ffn_up"))?);
            let gemma_norm = |name: &str, len: usize| -> Result<Option<Vec<f32>>, String> {
                if arch != Arch::Gemma3 {
                    return Ok(None);
                }
                check_dims(g, &p(name), &[len])?;
                Ok(Some(g.dequantize(&p(name))?))
            };
            layers.push(Layer {
                attn_norm: g.dequantize(&p("attn_norm"))?,
                wqkv,
                wo: g.dequantize(&p("attn_output"))?,
                ffn_norm: g.dequantize(&p("ffn_norm"))?,
                wgu,
                wdown: g.dequantize(&p("ffn_down"))?,
                q_norm: gemma_norm("attn_q_norm", head_dim)?,
                k_norm: gemma_norm("attn_k_norm", head_dim)?,
                post_attn_norm: gemma_norm("post_attention_norm", n_embd)?,
                post_ffn_norm: gemma_norm("post_ffw_norm", n_embd)?,
                window: if is_local(i) { sliding_window } else { None },
                rope: usize::from(is_local(i)),
            });
        }
        let n_local_layers = (0..n_layer).filter(|&i| is_local(i)).count();
        Ok(Model {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            eps,
            rope_base,
            rope_base_local,
            sliding_window,
            n_local_layers,
            embd_scale: if arch == Arch::Gemma3 { (n_embd as f32).sqrt() } else { 1.0 },
            attn_scale,
            rope_neox: arch == Arch::Gemma3,
            gelu: arch == Arch::Gemma3,
            final_softcap,
            tok_embd,
            output,
            out_norm,
            layers,
        })
    }

    /// Input-dimension slices (start, len) of the attention output projection
    /// for `world` ranks: on head boundaries, as equal as possible, the first
    /// `n_head % world` ranks taking one head more (9 heads, W=4 -> 3,2,2,2;
    /// 4 heads, W=2 -> 2,2, W=4 -> 1,1,1,1). With more ranks than heads
    /// (Gemma-3-270M at W=8), each head is split into `world / n_head` equal
    /// column slices when that divides evenly (W=8: half a head, 128 columns,
    /// per rank), otherwise the last ranks get an empty slice.
    pub fn attn_slices(&self, world: usize) -> Vec<(usize, usize)> {
        let qd = self.n_head * self.head_dim;
        if world > self.n_head && world.is_multiple_of(self.n_head) && qd.is_multiple_of(world) {
            return split_even(qd, world);
        }
        split_even(self.n_head, world)
            .into_iter()
            .map(|(s, l)| (s * self.head_dim, l * self.head_dim))
            .collect()
    }

    /// Input-dimension slices of ffn_down: contiguous, as equal as possible
    /// (1536 and 2048 divide by 2, 4 and 8).
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

fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let scale = 1.0 / (ss / d as f32 + eps).sqrt();
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// GELU, tanh approximation (ggml's `ggml_gelu`, HF `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

impl Model {
    /// Run `tokens` (one context window, positions 0..T) through the layers,
    /// combining each row-parallel projection's `world` partials with `comb`;
    /// returns the final-normed hidden states `[T x n_embd]`.
    pub fn forward_hidden(&self, tokens: &[u32], world: usize, comb: &mut dyn Combine) -> Vec<f32> {
        let t_len = tokens.len();
        let d = self.n_embd;
        let hd = self.head_dim;
        let qd = self.n_head * hd;
        let kvd = self.n_head_kv * hd;
        let qkv_d = qd + 2 * kvd;
        let group = self.n_head / self.n_head_kv;
        let attn_slices = self.attn_slices(world);
        let mlp_slices = self.mlp_slices(world);

        // RoPE tables, one per base (0: global / all layers, 1: local layers).
        // NORM (llama): rotate adjacent pairs (2i, 2i+1) (the GGUF converter
        // permuted the HF q/k weights for this); NEOX (gemma3): pairs (i, i+hd/2).
        let half = hd / 2;
        let bases: Vec<f32> = std::iter::once(self.rope_base).chain(self.rope_base_local).collect();
        let tables: Vec<(Vec<f32>, Vec<f32>)> = bases
            .iter()
            .map(|&base| {
                let mut cos = vec![0f32; t_len * half];
                let mut sin = vec![0f32; t_len * half];
                for p in 0..t_len {
                    for i in 0..half {
                        let theta = base.powf(-2.0 * i as f32 / hd as f32);
                        let a = p as f32 * theta;
                        cos[p * half + i] = a.cos();
                        sin[p * half + i] = a.sin();
                    }
                }
                (cos, sin)
            })
            .collect();

        let mut x = vec![0f32; t_len * d];
        for (t, &id) in tokens.iter().enumerate() {
            let row = &mut x[t * d..(t + 1) * d];
            row.copy_from_slice(&self.tok_embd[id as usize * d..(id as usize + 1) * d]);
            if self.embd_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= self.embd_scale);
            }
        }
        let mut xn = vec![0f32; t_len * d];
        let mut qkv = vec![0f32; t_len * qkv_d];
        let mut att = vec![0f32; t_len * qd];
        let mut scores = vec![0f32; t_len * t_len];
        let mut gu = vec![0f32; t_len * 2 * self.n_ff];
        let mut hbuf = vec![0f32; t_len * self.n_ff];
        let mut partials: Vec<Vec<f32>> = (0..world).map(|_| vec![0f32; t_len * d]).collect();
        let mut delta = vec![0f32; t_len * d];

        for (li, l) in self.layers.iter().enumerate() {
            // ---- attention ----
            rmsnorm(&x, &l.attn_norm, self.eps, &mut xn);
            matmul_xwt(&xn, t_len, d, 0, &l.wqkv, qkv_d, d, 0, d, &mut qkv);
            let (cos, sin) = &tables[l.rope];
            for t in 0..t_len {
                let row = &mut qkv[t * qkv_d..t * qkv_d + qd + kvd];
                if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                    for h in 0..self.n_head + self.n_head_kv {
                        let w = if h < self.n_head { qn } else { kn };
                        rmsnorm_inplace(&mut row[h * hd..(h + 1) * hd], w, self.eps);
                    }
                }
                for h in 0..self.n_head + self.n_head_kv {
                    let v = &mut row[h * hd..(h + 1) * hd];
                    for i in 0..half {
                        let (c, s) = (cos[t * half + i], sin[t * half + i]);
                        let (ia, ib) = if self.rope_neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                        let (a, b) = (v[ia], v[ib]);
                        v[ia] = a * c - b * s;
                        v[ib] = a * s + b * c;
                    }
                }
            }
            for h in 0..self.n_head {
                let kh = h / group;
                // scores = Q_h · K_khᵀ  [T x T]
                matmul_xwt(&qkv, t_len, qkv_d, h * hd, &qkv, t_len, qkv_d, qd + kh * hd, hd, &mut scores);
                for t in 0..t_len {
                    let row = &mut scores[t * t_len..(t + 1) * t_len];
                    // visible keys: lo..=t (causal; sliding window: t - j < window)
                    let lo = l.window.map_or(0, |w| (t + 1).saturating_sub(w));
                    let mut mx = f32::NEG_INFINITY;
                    for v in row[lo..=t].iter_mut() {
                        *v *= self.attn_scale;
                        mx = mx.max(*v);
                    }
                    let mut sum = 0f32;
                    for v in row[lo..=t].iter_mut() {
                        *v = (*v - mx).exp();
                        sum += *v;
                    }
                    let inv = 1.0 / sum;
                    for v in row[lo..=t].iter_mut() {
                        *v *= inv;
                    }
                    row[..lo].fill(0.0);
                    row[t + 1..].fill(0.0);
                }
                // att[:, h] = P · V_kh  [T x hd]
                let voff = qd + kvd + kh * hd;
                matmul_ab(&scores, t_len, t_len, &qkv[voff..], qkv_d, t_len, hd, &mut att[h * hd..], qd);
            }
            for (r, &(s, len)) in attn_slices.iter().enumerate() {
                matmul_xwt(&att, t_len, qd, s, &l.wo, d, qd, s, len, &mut partials[r]);
            }
            comb.combine(li, Kind::Attn, &partials, &mut delta);
            if let Some(w) = &l.post_attn_norm {
                rmsnorm_inplace(&mut delta, w, self.eps);
            }
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
                let o = &mut hbuf[t * f..(t + 1) * f];
                if self.gelu {
                    for ((o, &gv), &uv) in o.iter_mut().zip(g).zip(u) {
                        *o = gelu_tanh(gv) * uv;
                    }
                } else {
                    for ((o, &gv), &uv) in o.iter_mut().zip(g).zip(u) {
                        *o = gv / (1.0 + (-gv).exp()) * uv;
                    }
                }
            }
            for (r, &(s, len)) in mlp_slices.iter().enumerate() {
                matmul_xwt(&hbuf, t_len, f, s, &l.wdown, d, f, s, len, &mut partials[r]);
            }
            comb.combine(li, Kind::Mlp, &partials, &mut delta);
            if let Some(w) = &l.post_ffn_norm {
                rmsnorm_inplace(&mut delta, w, self.eps);
            }
            for (xv, dv) in x.iter_mut().zip(&delta) {
                *xv += dv;
            }
        }
        rmsnorm(&x, &self.out_norm, self.eps, &mut xn);
        xn
    }

    /// LM head: logits `[rows x n_vocab]` of `rows` final-normed hidden states.
    pub fn logits(&self, xn: &[f32], rows: usize, out: &mut [f32]) {
        let d = self.n_embd;
        let v = self.n_vocab;
        let head = self.output.as_deref().unwrap_or(&self.tok_embd);
        matmul_xwt(xn, rows, d, 0, head, v, d, 0, d, out);
        if let Some(c) = self.final_softcap {
            for z in out[..rows * v].iter_mut() {
                *z = c * (*z / c).tanh();
            }
        }
    }

    /// Run one context window and return the next-token NLL for predictions
    /// of positions `score_from..T` (each predicted from all earlier positions).
    pub fn forward_window(&self, tokens: &[u32], world: usize, comb: &mut dyn Combine, score_from: usize) -> WindowResult {
        let t_len = tokens.len();
        let xn = self.forward_hidden(tokens, world, comb);
        // ---- LM head + NLL ----
        let d = self.n_embd;
        let v = self.n_vocab;
        // at most 16 Mi logits at a time (256 rows for SmolLM2, 64 for Gemma's 262k vocabulary)
        let chunk = ((16 << 20) / v).clamp(16, 256);
        let mut logits = vec![0f32; chunk * v];
        let mut nll = 0f64;
        let mut count = 0usize;
        let first = score_from.max(1);
        // position t's logits predict token t+1
        let mut t0 = first - 1;
        while t0 + 1 < t_len {
            let rows = chunk.min(t_len - 1 - t0);
            self.logits(&xn[t0 * d..], rows, &mut logits);
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

    /// Logits of the next token after `tokens` (exact combine, W = 1).
    pub fn next_logits(&self, tokens: &[u32], comb: &mut dyn Combine) -> Vec<f32> {
        let xn = self.forward_hidden(tokens, 1, comb);
        let d = self.n_embd;
        let mut out = vec![0f32; self.n_vocab];
        self.logits(&xn[(tokens.len() - 1) * d..], 1, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_sizes() {
        assert_eq!(split_even(9, 4), vec![(0, 3), (3, 2), (5, 2), (7, 2)]);
        assert_eq!(split_even(4, 2), vec![(0, 2), (2, 2)]);
        assert_eq!(split_even(2048, 8).iter().map(|p| p.1).collect::<Vec<_>>(), vec![256; 8]);
    }

    #[test]
    fn gelu_tanh_values() {
        // reference values of 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-1.0) + 0.158_808).abs() < 1e-5);
        assert!((gelu_tanh(3.0) - 2.996_363).abs() < 1e-5);
    }
}
