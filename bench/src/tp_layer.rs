//! A tensor-parallel transformer layer at TP = W: cuBLAS GEMMs (bf16,
//! through cudarc) with the layer's two all-reduces, to see what an
//! all-reduce saves end to end, not only in isolation.
//!
//! Per rank and layer, on the rank's stream:
//! 1. column-parallel QKV: `x [T, d] x W_qkv [d, (q + 2 kv) h / W]`;
//! 2. row-parallel O: the first `q h / W` columns of QKV's output (the
//!    attention core is not run: it does not depend on the all-reduce)
//!    `x W_o [q h / W, d]`, then all-reduce of `[T, d]`;
//! 3. column-parallel gate and up: `x W_gu [d, 2 f / W]`;
//! 4. row-parallel down: the first `f / W` columns (the SwiGLU product is
//!    not run) `x W_down [f / W, d]`, then all-reduce of `[T, d]`, which is
//!    the next layer's input.
//!
//! Every contender runs three ways: the whole layer; the GEMMs alone (no
//! all-reduce); the two all-reduces alone. "Saving kept" is how much of
//! what a contender saves on the all-reduces alone (against NCCL) it
//! saves on the whole layer. Eager, one host thread issuing every rank's
//! GEMMs and calls; CUDA events around `layers` layers on every rank's
//! stream; the time of a sample is the longest rank's; median of `iters`.
use crate::NcclBaseline;
use flashcomm::cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use flashcomm::cudarc::driver::{sys, CudaSlice, CudaView, CudaViewMut};
use flashcomm::{Algorithm, CallOptions, Communicator, Config, Quantization};
use half::bf16;
use serde::Serialize;

/// A decoder layer's shape (the whole model's, before the TP split).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LayerShape {
    /// Model width `d`.
    pub hidden: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension `h`.
    pub head_dim: usize,
    /// MLP width `f`.
    pub intermediate: usize,
}

/// Llama-3-70B: d = 8192, 64 query and 8 KV heads of 128, f = 28672.
pub const LLAMA3_70B: LayerShape = LayerShape { hidden: 8192, q_heads: 64, kv_heads: 8, head_dim: 128, intermediate: 28672 };

/// What reduces the row-parallel outputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reducer {
    /// NCCL through cudarc (the same communicators as the all-reduce bench).
    Nccl,
    /// flashcomm's `Auto` with this quantization allowed.
    Flashcomm(Quantization),
}

impl Reducer {
    /// Table label.
    pub fn label(&self) -> String {
        match self {
            Reducer::Nccl => "nccl".into(),
            Reducer::Flashcomm(Quantization::None) => "auto".into(),
            Reducer::Flashcomm(q) => format!("auto({})", q.label()),
        }
    }
}

/// One measured row: one token count and one reducer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    /// Ranks.
    pub world: usize,
    /// Tokens in the batch (prefill: the prompt; decode: the batch size).
    pub tokens: usize,
    /// Reducer label.
    pub reducer: String,
    /// What `Auto` ran for the `[T, d]` all-reduce.
    pub plan: Option<String>,
    /// Median time per layer, microseconds.
    pub layer_us: f64,
    /// The GEMMs alone, per layer.
    pub gemm_us: f64,
    /// The two all-reduces alone, per layer.
    pub comm_us: f64,
    /// `comm_us / layer_us`.
    pub comm_share: f64,
    /// NCCL's layer time / this layer time.
    pub layer_speedup_vs_nccl: Option<f64>,
    /// (NCCL layer - this layer) / (NCCL comm - this comm).
    pub saving_kept: Option<f64>,
}

/// A run's rows and where they come from.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// UTC date.
    pub date: String,
    /// GPU model.
    pub gpu: String,
    /// Command line.
    pub command: String,
    /// The layer.
    pub shape: LayerShape,
    /// Method summary.
    pub method: String,
    /// Rows.
    pub rows: Vec<LayerRow>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    /// Ranks (GPUs 0..W).
    pub world: usize,
    /// Token counts.
    pub tokens: Vec<usize>,
    /// Layers per timed sample.
    pub layers: usize,
    /// Timed samples.
    pub iters: usize,
    /// Reducers.
    pub reducers: Vec<Reducer>,
    /// Capture each sample's layers into one CUDA graph per rank and time
    /// replays (how engines run decode) instead of eager calls.
    pub graphs: bool,
}

impl Default for LayerOptions {
    /// Decode at batch 1, 32 and 128; prefill of 2K and 8K tokens; TP = 2;
    /// NCCL, `Auto` unquantized, with INT8 and with INT4 allowed.
    fn default() -> Self {
        Self {
            world: 2,
            tokens: vec![1, 32, 128, 2048, 8192],
            layers: 4,
            iters: 20,
            reducers: vec![
                Reducer::Nccl,
                Reducer::Flashcomm(Quantization::None),
                Reducer::Flashcomm(Quantization::INT8),
                Reducer::Flashcomm(Quantization::INT4),
            ],
            graphs: false,
        }
    }
}

/// Every rank's weights and activations, one entry per rank.
struct Ranks {
    blas: Vec<CudaBlas>,
    w_qkv: Vec<CudaSlice<bf16>>,
    w_o: Vec<CudaSlice<bf16>>,
    w_gu: Vec<CudaSlice<bf16>>,
    w_down: Vec<CudaSlice<bf16>>,
    /// The layer input, and the second all-reduce's output.
    x: Vec<CudaSlice<bf16>>,
    qkv: Vec<CudaSlice<bf16>>,
    /// O's output, the first all-reduce's input.
    attn_partial: Vec<CudaSlice<bf16>>,
    /// The first all-reduce's output.
    h: Vec<CudaSlice<bf16>>,
    gu: Vec<CudaSlice<bf16>>,
    /// down's output, the second all-reduce's input.
    mlp_partial: Vec<CudaSlice<bf16>>,
}

/// Per-rank widths after the TP split.
struct Split {
    d: usize,
    qkv: usize,
    attn: usize,
    gu: usize,
    mlp: usize,
}

impl Split {
    fn new(s: &LayerShape, world: usize) -> flashcomm::Result<Self> {
        if !s.q_heads.is_multiple_of(world) || !s.kv_heads.is_multiple_of(world) || !s.intermediate.is_multiple_of(world) {
            return Err(flashcomm::Error::InvalidConfig(format!("{s:?} does not split {world} ways")));
        }
        let (q, kv) = (s.q_heads / world * s.head_dim, s.kv_heads / world * s.head_dim);
        Ok(Self { d: s.hidden, qkv: q + 2 * kv, attn: q, gu: 2 * s.intermediate / world, mlp: s.intermediate / world })
    }
}

/// `len` elements of a repeating pseudo-random block, scaled so that a
/// product with `fan_in` terms stays near unit size.
fn filled(stream: &std::sync::Arc<flashcomm::cudarc::driver::CudaStream>, len: usize, fan_in: usize, seed: u64) -> flashcomm::Result<CudaSlice<bf16>> {
    let block: Vec<bf16> = {
        let mut rng = flashcomm::synth::Rng::new(seed);
        let scale = 1.0 / (fan_in as f64).sqrt();
        (0..(1 << 20).min(len)).map(|_| bf16::from_f64(rng.normal() * scale)).collect()
    };
    let mut buf = stream.alloc_zeros::<bf16>(len)?;
    let mut start = 0;
    while start < len {
        let n = block.len().min(len - start);
        stream.memcpy_htod(&block[..n], &mut buf.slice_mut(start..start + n))?;
        start += n;
    }
    Ok(buf)
}

/// `c [T, n] = a [T, k] (row stride lda) x w [k, n]`, row-major, bf16 with
/// f32 accumulation (cuBLAS is column-major: `c^T = w^T a^T`).
#[allow(clippy::too_many_arguments)] // the GEMM's own shape and strides
fn matmul(blas: &CudaBlas, t: usize, k: usize, n: usize, a: &CudaView<bf16>, lda: usize, w: &CudaSlice<bf16>, c: &mut CudaSlice<bf16>) -> flashcomm::Result<()> {
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: t as i32,
        k: k as i32,
        alpha: bf16::ONE,
        lda: n as i32,
        ldb: lda as i32,
        beta: bf16::ZERO,
        ldc: n as i32,
    };
    // SAFETY: w holds k x n, a holds t rows of lda >= k elements, c holds
    // t x n (allocated so by `RankState`); all on the handle's stream's GPU.
    unsafe { blas.gemm(cfg, w, a, c) }.map_err(|e| flashcomm::Error::InvalidConfig(format!("cuBLAS GEMM ({t}x{k} x {k}x{n}): {e:?}")))
}

/// Which parts of the layer a sample runs.
#[derive(Clone, Copy, PartialEq)]
enum Parts {
    Whole,
    GemmsOnly,
    CommOnly,
}

struct Layer<'a> {
    comm: &'a Communicator,
    nccl: Option<&'a NcclBaseline>,
    split: Split,
    ranks: Ranks,
    tokens: usize,
}

impl Layer<'_> {
    /// All-reduce of the first `tokens` rows of every rank's `input` into `output`.
    fn reduce(&self, reducer: Reducer, input: &[CudaSlice<bf16>], output: &mut [CudaSlice<bf16>]) -> flashcomm::Result<()> {
        let n = self.tokens * self.split.d;
        let input: Vec<CudaView<bf16>> = input.iter().map(|b| b.slice(..n)).collect();
        let mut output: Vec<CudaViewMut<bf16>> = output.iter_mut().map(|b| b.slice_mut(..n)).collect();
        match reducer {
            Reducer::Nccl => self.nccl.ok_or_else(|| flashcomm::Error::Nccl("NCCL is unavailable".into()))?.all_reduce(&input, &mut output),
            Reducer::Flashcomm(q) => {
                self.comm.all_reduce_with(&input, &mut output, &CallOptions { algorithm: Some(Algorithm::Auto), quantization: Some(q), ..Default::default() })
            }
        }
    }

    fn run(&mut self, reducer: Reducer, parts: Parts) -> flashcomm::Result<()> {
        let (t, s) = (self.tokens, &self.split);
        let (d, qkv, attn, gu, mlp) = (s.d, s.qkv, s.attn, s.gu, s.mlp);
        let world = self.ranks.blas.len();
        if parts != Parts::CommOnly {
            let r = &mut self.ranks;
            for i in 0..world {
                matmul(&r.blas[i], t, d, qkv, &r.x[i].slice(..), d, &r.w_qkv[i], &mut r.qkv[i])?;
                matmul(&r.blas[i], t, attn, d, &r.qkv[i].slice(..), qkv, &r.w_o[i], &mut r.attn_partial[i])?;
            }
        }
        if parts != Parts::GemmsOnly {
            let mut h = std::mem::take(&mut self.ranks.h);
            let done = self.reduce(reducer, &self.ranks.attn_partial, &mut h);
            self.ranks.h = h;
            done?;
        }
        if parts != Parts::CommOnly {
            let r = &mut self.ranks;
            for i in 0..world {
                matmul(&r.blas[i], t, d, gu, &r.h[i].slice(..), d, &r.w_gu[i], &mut r.gu[i])?;
                matmul(&r.blas[i], t, mlp, d, &r.gu[i].slice(..), gu, &r.w_down[i], &mut r.mlp_partial[i])?;
            }
        }
        if parts != Parts::GemmsOnly {
            let mut x = std::mem::take(&mut self.ranks.x);
            let done = self.reduce(reducer, &self.ranks.mlp_partial, &mut x);
            self.ranks.x = x;
            done?;
        }
        Ok(())
    }

    /// Per-layer times of `iters` samples of `parts` with `reducer`,
    /// microseconds (the longest rank of each sample), after two untimed
    /// layers.
    fn samples(&mut self, reducer: Reducer, parts: Parts, layers: usize, iters: usize, graphs: bool) -> flashcomm::Result<Vec<f64>> {
        use flashcomm::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let world = self.ranks.blas.len();
        for _ in 0..2 {
            self.run(reducer, parts)?;
        }
        self.comm.synchronize()?;
        // With `graphs`: the sample's layers captured once, one graph per
        // rank (relaxed: every rank's stream captures at once), replayed.
        let captured = if graphs {
            for r in 0..world {
                self.comm.stream(r)?.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
            }
            let issued = (0..layers).try_for_each(|_| self.run(reducer, parts));
            let ended: Vec<_> = (0..world).map(|r| Ok(self.comm.stream(r)?.end_capture(CUgraphInstantiate_flags(0))?)).collect::<flashcomm::Result<_>>()?;
            issued?;
            let graphs = ended.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| flashcomm::Error::InvalidConfig("stream capture produced no graph".into()))?;
            for g in &graphs {
                g.upload()?;
                g.launch()?;
            }
            self.comm.synchronize()?;
            Some(graphs)
        } else {
            None
        };
        let mut samples = Vec::with_capacity(iters);
        for _ in 0..iters {
            let mut events = Vec::with_capacity(world);
            for r in 0..world {
                let ctx = self.comm.context(r)?;
                let (start, end) = (ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?, ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?);
                start.record(self.comm.stream(r)?)?;
                events.push((start, end));
            }
            match &captured {
                Some(graphs) => graphs.iter().try_for_each(|g| g.launch())?,
                None => (0..layers).try_for_each(|_| self.run(reducer, parts))?,
            }
            for (r, (_, end)) in events.iter().enumerate() {
                end.record(self.comm.stream(r)?)?;
            }
            self.comm.synchronize()?;
            let mut longest = 0f64;
            for (start, end) in &events {
                longest = longest.max(start.elapsed_ms(end)? as f64 * 1000.0);
            }
            samples.push(longest / layers as f64);
        }
        Ok(samples)
    }

    /// Whole layers for at least `time` (GPU clocks up, cuBLAS warm).
    fn warm_up(&mut self, reducer: Reducer, time: std::time::Duration) -> flashcomm::Result<()> {
        let start = std::time::Instant::now();
        while start.elapsed() < time {
            self.run(reducer, Parts::Whole)?;
            self.comm.synchronize()?;
        }
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Rounds of samples per token count (each contender's samples spread
/// over them).
const ROUNDS: usize = 4;

/// Runs `opts` on GPUs `0..world`; rows in measurement order.
pub fn run(opts: &LayerOptions, shape: LayerShape, command: &str) -> flashcomm::Result<LayerReport> {
    let world = opts.world;
    let devices: Vec<usize> = (0..world).collect();
    let comm = Communicator::new(&devices, Config::default(), &flashcomm::KERNELS)?;
    // One stream per rank drives everything: cudarc's per-buffer events
    // would only add host work, and under capture they would make the
    // captured stream wait for work recorded before the capture.
    for r in 0..world {
        // SAFETY: every buffer of this run is used on its rank's one stream only.
        unsafe { comm.context(r)?.disable_event_tracking() };
    }
    let nccl = NcclBaseline::new(&comm).ok();
    let split = Split::new(&shape, world)?;
    let max_t = opts.tokens.iter().copied().max().unwrap_or(1);
    let stream = |r: usize| comm.stream(r).cloned();
    let per_rank = |f: &dyn Fn(usize) -> flashcomm::Result<CudaSlice<bf16>>| (0..world).map(f).collect::<flashcomm::Result<Vec<_>>>();
    let (d, sp) = (split.d, &split);
    let ranks = Ranks {
        blas: (0..world).map(|r| CudaBlas::new(stream(r)?).map_err(|e| flashcomm::Error::InvalidConfig(format!("cuBLAS: {e:?}")))).collect::<flashcomm::Result<_>>()?,
        w_qkv: per_rank(&|r| filled(&stream(r)?, d * sp.qkv, d, 10 + r as u64))?,
        w_o: per_rank(&|r| filled(&stream(r)?, sp.attn * d, sp.attn, 20 + r as u64))?,
        w_gu: per_rank(&|r| filled(&stream(r)?, d * sp.gu, d, 30 + r as u64))?,
        w_down: per_rank(&|r| filled(&stream(r)?, sp.mlp * d, sp.mlp, 40 + r as u64))?,
        x: per_rank(&|r| filled(&stream(r)?, max_t * d, 1, 50 + r as u64))?,
        qkv: per_rank(&|r| Ok(stream(r)?.alloc_zeros(max_t * sp.qkv)?))?,
        attn_partial: per_rank(&|r| Ok(stream(r)?.alloc_zeros(max_t * d)?))?,
        h: per_rank(&|r| Ok(stream(r)?.alloc_zeros(max_t * d)?))?,
        gu: per_rank(&|r| Ok(stream(r)?.alloc_zeros(max_t * sp.gu)?))?,
        mlp_partial: per_rank(&|r| Ok(stream(r)?.alloc_zeros(max_t * d)?))?,
    };
    comm.synchronize()?;
    let mut layer = Layer { comm: &comm, nccl: nccl.as_ref(), split, ranks, tokens: 0 };
    let mut rows = Vec::new();
    for &tokens in &opts.tokens {
        // The buffers hold `max_t` tokens; the GEMMs and all-reduces use
        // the first `tokens` rows.
        layer.tokens = tokens;
        let reducers: Vec<Reducer> = opts.reducers.iter().copied().filter(|&r| r != Reducer::Nccl || layer.nccl.is_some()).collect();
        layer.warm_up(reducers[0], std::time::Duration::from_millis(500))?;
        // Rounds in turn over the reducers, so that drift (clocks, heat)
        // reaches every contender alike; the GEMMs alone once per round.
        let per_round = opts.iters.div_ceil(ROUNDS);
        let mut whole: Vec<Vec<f64>> = vec![Vec::new(); reducers.len()];
        let mut alone: Vec<Vec<f64>> = vec![Vec::new(); reducers.len()];
        let mut gemms = Vec::new();
        for _ in 0..ROUNDS {
            gemms.extend(layer.samples(reducers[0], Parts::GemmsOnly, opts.layers, per_round, opts.graphs)?);
            for (i, &reducer) in reducers.iter().enumerate() {
                whole[i].extend(layer.samples(reducer, Parts::Whole, opts.layers, per_round, opts.graphs)?);
                alone[i].extend(layer.samples(reducer, Parts::CommOnly, opts.layers, per_round, opts.graphs)?);
            }
        }
        let gemm_us = median(gemms);
        let mut nccl_times = None;
        for (i, &reducer) in reducers.iter().enumerate() {
            let layer_us = median(std::mem::take(&mut whole[i]));
            let comm_us = median(std::mem::take(&mut alone[i]));
            if reducer == Reducer::Nccl {
                nccl_times = Some((layer_us, comm_us));
            }
            let plan = match reducer {
                Reducer::Flashcomm(q) => Some(comm.plan(tokens * d, flashcomm::Dtype::Bf16, &CallOptions { algorithm: Some(Algorithm::Auto), quantization: Some(q), ..Default::default() })?.label()),
                Reducer::Nccl => None,
            };
            let saving_kept = nccl_times.and_then(|(nl, nc)| (reducer != Reducer::Nccl && (nc - comm_us).abs() > 0.5).then(|| (nl - layer_us) / (nc - comm_us)));
            rows.push(LayerRow {
                world,
                tokens,
                reducer: reducer.label(),
                plan,
                layer_us,
                gemm_us,
                comm_us,
                comm_share: comm_us / layer_us,
                layer_speedup_vs_nccl: nccl_times.map(|(nl, _)| nl / layer_us),
                saving_kept,
            });
        }
    }
    Ok(LayerReport {
        date: crate::utc_date(),
        gpu: comm.gpu_name().to_string(),
        command: command.to_string(),
        shape,
        method: format!(
            "TP = {world}, bf16; per layer: QKV, O, all-reduce, gate-up, down, all-reduce (attention core and SwiGLU product not run); cuBLAS GEMMs (cudarc, f32 accumulation); {}, one host thread issuing every rank; CUDA events around {} layers per sample on every rank's stream, sample = longest rank / {}; per token count 0.5 s of warm-up layers, then {ROUNDS} rounds over the contenders in turn (whole layer, then the all-reduces alone), the GEMMs alone once per round; median of {} samples each",
            if opts.graphs { "CUDA-graph replay (each sample's layers captured once per rank and contender, then replayed)" } else { "eager" },
            opts.layers,
            opts.layers,
            opts.iters.div_ceil(ROUNDS) * ROUNDS
        ),
        rows,
    })
}

/// The table.
pub fn markdown(report: &LayerReport) -> String {
    let mut s = format!("Method: {}.\n\n### {} ({}, {})\n\n", report.method, "Llama-3-70B layer", report.gpu, report.date);
    s += "| tokens | reducer | plan | layer us | GEMMs alone us | all-reduces alone us | comm share | layer vs NCCL | saving kept |\n|---:|---|---|---:|---:|---:|---:|---:|---:|\n";
    for r in &report.rows {
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1}% | {} | {} |\n",
            r.tokens,
            r.reducer,
            r.plan.as_deref().unwrap_or("-"),
            r.layer_us,
            r.gemm_us,
            r.comm_us,
            100.0 * r.comm_share,
            r.layer_speedup_vs_nccl.map_or("-".into(), |x| format!("{x:.3}x")),
            r.saving_kept.map_or("-".into(), |x| format!("{:.0}%", 100.0 * x)),
        );
    }
    s
}
