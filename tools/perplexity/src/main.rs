//! `perplexity`: accuracy evaluation of flashcomm's quantized all-reduce.
//!
//! Runs SmolLM2-135M-Instruct (Q4_1 GGUF) or Gemma-3-270M (Q4_K_M GGUF,
//! `--model gemma3`) on the CPU with tensor parallelism simulated for W
//! ranks, combines the row-parallel partial sums either exactly or with the
//! library's reference reducer (bit-identical to the GPU kernels), and
//! reports perplexity per configuration. See docs/accuracy.md.

mod gguf;
mod matmul;
mod model;
mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use half::bf16;

use model::{Combine, Kind, Model};
use flashcomm_host::reference::reference_all_reduce;
use flashcomm_host::Quantization;

/// The models `--model` selects: name, GGUF path under the models directory.
const MODELS: &[(&str, &str)] = &[
    ("smollm2", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3", "gemma3/gemma-3-270m-q4_k_m.gguf"),
];

fn default_models_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FLASHCOMM_MODELS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

// ---------------------------------------------------------------- configs --

/// One evaluated configuration.
#[derive(Clone, Debug)]
struct Cfg {
    /// `None`: exact sum (f64 sum of the f32 partials, rounded to f32).
    /// `Some(q)`: partials -> bf16 -> library reducer with `q` -> f32.
    quant: Option<Quantization>,
    /// Call the reducer once per token row (576 elements) instead of once on
    /// the flattened [tokens x 576] buffer, so no group straddles two tokens
    /// (the last group of a row is short when G does not divide 576).
    per_row: bool,
    /// Diagnostic: combine the first token row of every window exactly and
    /// hand only rows 1.. to the reducer (isolates the "attention sink"
    /// token, whose massive activations dominate its quantization groups).
    tok0_exact: bool,
    /// Diagnostic: run the reducer and measure its error, but propagate the
    /// exact sum (per-layer errors on the unperturbed activations; PPL = exact).
    shadow: bool,
    /// Evaluate only at these world sizes (`None`: all of `--worlds`).
    worlds: Option<Vec<usize>>,
    /// Per-projection precision plan: these projections use their own
    /// setting instead of `quant` (`/SETTING=PROJ+PROJ...`, repeatable).
    overrides: Vec<(Quantization, Vec<Proj>)>,
}

/// A row-parallel projection: (layer, kind), spelled `<layer>a`
/// (`attn_output`) or `<layer>m` (`ffn_down`).
type Proj = (usize, Kind);

fn parse_proj(s: &str) -> Result<Proj, String> {
    let (n, k) = s.split_at(s.len().saturating_sub(1));
    let kind = match k {
        "a" => Kind::Attn,
        "m" => Kind::Mlp,
        _ => return Err(format!("bad projection {s:?}: <layer>a (attn_output) or <layer>m (ffn_down), e.g. 0m")),
    };
    Ok((n.parse().map_err(|_| format!("bad projection {s:?}: <layer>a or <layer>m, e.g. 29m"))?, kind))
}

fn proj_name((layer, kind): Proj) -> String {
    format!("{layer}{}", if kind == Kind::Attn { "a" } else { "m" })
}

/// Bits per element that cross the link in the (reduce-scatter, all-gather)
/// steps with `q` (`Quantized::bits_per_element`: full groups, 64 bits of
/// parameters per group, 24 per spike); 16 for bf16 transport or the exact sum.
fn bits_of(q: Option<Quantization>) -> (f64, f64) {
    match q {
        Some(Quantization::Int(x)) => x.bits_per_element(),
        _ => (16.0, 16.0),
    }
}

impl Cfg {
    /// `/int8-g128=0m+29m...`: the overrides as `parse_cfg` reads them.
    fn overrides_label(&self) -> String {
        self.overrides
            .iter()
            .map(|(q, ps)| format!("/{}={}", q.label(), ps.iter().map(|&p| proj_name(p)).collect::<Vec<_>>().join("+")))
            .collect()
    }
    /// The setting used at projection `p` (`None`: exact sum).
    fn quant_at(&self, p: Proj) -> Option<Quantization> {
        self.overrides.iter().find(|(_, ps)| ps.contains(&p)).map(|(q, _)| *q).or(self.quant)
    }
    /// Mean bits per element of the (reduce-scatter, all-gather) steps over
    /// the 2 * n_layer all-reduces of a forward pass (all of the same size).
    fn mean_bits(&self, n_layer: usize) -> (f64, f64) {
        let (mut rs, mut ag) = (0.0, 0.0);
        for l in 0..n_layer {
            for kind in [Kind::Attn, Kind::Mlp] {
                let (r, a) = bits_of(self.quant_at((l, kind)));
                rs += r;
                ag += a;
            }
        }
        (rs / (2 * n_layer) as f64, ag / (2 * n_layer) as f64)
    }
    /// Overrides name existing layers, each projection at most once.
    fn check(&self, n_layer: usize) -> Result<(), String> {
        let mut seen = Vec::new();
        for p in self.overrides.iter().flat_map(|(_, ps)| ps) {
            if p.0 >= n_layer {
                return Err(format!("{}: projection {} beyond the model's {n_layer} layers", self.short(), proj_name(*p)));
            }
            if seen.contains(p) {
                return Err(format!("{}: projection {} overridden twice", self.short(), proj_name(*p)));
            }
            seen.push(*p);
        }
        Ok(())
    }
    fn label(&self) -> String {
        let base = match self.quant {
            None => "exact (f64 sum of f32)".to_string(),
            Some(Quantization::None) => "bf16, unquantized (none)".into(),
            Some(q) => q.label(),
        };
        let mut out = base + &self.overrides_label();
        if self.per_row {
            out += ", per-token groups";
        }
        if self.tok0_exact {
            out += ", token 0 exact";
        }
        if self.shadow {
            out += ", measured only (exact propagated)";
        }
        out
    }
    fn short(&self) -> String {
        let base = match self.quant {
            None => "exact".to_string(),
            Some(q) => q.label(),
        };
        let mut out = base;
        if self.per_row {
            out += "-row";
        }
        if self.tok0_exact {
            out += "-tok0";
        }
        if self.shadow {
            out += "-shadow";
        }
        out + &self.overrides_label()
    }
    fn applies(&self, world: usize) -> bool {
        self.worlds.as_ref().is_none_or(|w| w.contains(&world))
    }
}

/// `exact` | a library setting, spelled as `Quantization::parse` reads it
/// (`none`, `int8-g128`, `int4-int8-g64`, ...); optional suffixes, in this
/// order: `-row` (per-token groups), `-tok0` (token 0 of each window
/// combined exactly: diagnostic), `-shadow` (measure the reducer's error,
/// propagate the exact sum: diagnostic), then per-projection overrides
/// `/SETTING=PROJ+PROJ...` (repeatable; PROJ `<layer>a` for `attn_output`,
/// `<layer>m` for `ffn_down`), then `@W[+W...]` (only at these world sizes).
/// E.g. `int4k4-int8-g128/int8-g128=0m+29m@4`.
fn parse_cfg(s: &str) -> Result<Cfg, String> {
    let (s, worlds) = match s.split_once('@') {
        Some((c, w)) => {
            let w: Vec<usize> = w
                .split('+')
                .map(|x| x.parse().map_err(|_| format!("bad world list in {s:?}")))
                .collect::<Result<_, _>>()?;
            (c, Some(w))
        }
        None => (s, None),
    };
    let mut parts = s.split('/');
    let s = parts.next().unwrap_or_default();
    let overrides = parts
        .map(|o| {
            let (q, ps) = o.split_once('=').ok_or_else(|| format!("bad override {o:?}: SETTING=PROJ+PROJ..., e.g. int8-g128=0m+29m"))?;
            let q = Quantization::parse(q).map_err(|e| e.to_string())?;
            let ps = ps.split('+').map(parse_proj).collect::<Result<Vec<_>, _>>()?;
            Ok((q, ps))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let (s, shadow) = match s.strip_suffix("-shadow") {
        Some(c) => (c, true),
        None => (s, false),
    };
    let (s, tok0_exact) = match s.strip_suffix("-tok0") {
        Some(c) => (c, true),
        None => (s, false),
    };
    let (s, per_row) = match s.strip_suffix("-row") {
        Some(c) => (c, true),
        None => (s, false),
    };
    let quant = match s {
        "exact" => None,
        setting => Some(Quantization::parse(setting).map_err(|e| e.to_string())?),
    };
    if (per_row || tok0_exact || shadow || !overrides.is_empty()) && quant.is_none() {
        return Err("-row, -tok0, -shadow and per-projection overrides apply to reducer configurations only".into());
    }
    Ok(Cfg { quant, per_row, tok0_exact, shadow, worlds, overrides })
}

fn cfg_set(name: &str) -> Result<Vec<Cfg>, String> {
    let list: Vec<String> = match name {
        // what docs/accuracy.md reports: every scheme at G=128, INT8 and INT4
        // at every group size; at W=4 also the per-token-group variants and
        // the diagnostics (token 0 exact; errors measured on the exact run)
        "full" => {
            let mut v = vec!["exact".to_string(), "none".to_string()];
            for g in [32, 64, 128, 256] {
                v.push(format!("int8-g{g}"));
            }
            v.push("int4-int8-g128".into());
            for g in [32, 64, 128, 256] {
                v.push(format!("int4-g{g}"));
            }
            for c in ["int8-g128-row", "int4-g128-row", "int4-g256-row"] {
                v.push(format!("{c}@4"));
            }
            for c in ["int8-g128", "int4-int8-g128", "int4-g128"] {
                v.push(format!("{c}-tok0@4"));
            }
            for c in ["int8-g128", "int4-int8-g128", "int4-g128"] {
                v.push(format!("{c}-shadow@4"));
            }
            v
        }
        // every configuration, int4-int8 at every group size too (no diagnostics)
        "all" => {
            let mut v = vec!["exact".to_string(), "none".to_string()];
            for bits in ["int8", "int4-int8", "int4"] {
                for g in [32, 64, 128, 256] {
                    v.push(format!("{bits}-g{g}"));
                }
            }
            v
        }
        // spike reserving (docs/accuracy.md): without and with spikes at
        // W = 4, and INT8 with spikes at W = 8 (run with --worlds 4,8)
        "spikes" => {
            let mut v = vec!["exact".to_string()];
            for c in [
                "int4-int8", "int4k1-int8", "int4k4-int8", "int4k8-int8", "int4k4-int8k4", "int4", "int4k4", "int4k8", "int8",
                "int8k1", "int4k8-int8-g256",
            ] {
                v.push(format!("{c}@4"));
            }
            for c in ["int8", "int8k1", "int8k4"] {
                v.push(format!("{c}@8"));
            }
            v
        }
        // the minimum: every scheme at G=128
        "g128" => ["exact", "none", "int8-g128", "int4-int8-g128", "int4-g128"].iter().map(|s| s.to_string()).collect(),
        other => other.split(',').map(|s| s.trim().to_string()).collect(),
    };
    list.iter().map(|s| parse_cfg(s)).collect()
}

// -------------------------------------------------------------- combiners --

/// Sums of squares of (combined - exact) and of exact, per layer, kind and
/// part (0: the first token row of each window, 1: the other rows).
#[derive(Clone, Default)]
struct ErrStats {
    // index: (layer * 2 + kind) * 2 + part
    err2: Vec<f64>,
    ref2: Vec<f64>,
}

impl ErrStats {
    fn new(n_layer: usize) -> Self {
        ErrStats { err2: vec![0.0; n_layer * 4], ref2: vec![0.0; n_layer * 4] }
    }
    fn add(&mut self, o: &ErrStats) {
        for (a, b) in self.err2.iter_mut().zip(&o.err2) {
            *a += b;
        }
        for (a, b) in self.ref2.iter_mut().zip(&o.ref2) {
            *a += b;
        }
    }
    fn sums(&self, layers: std::ops::Range<usize>, kind: Kind, parts: &[usize]) -> f64 {
        let (mut e, mut r) = (0.0, 0.0);
        for l in layers {
            for &p in parts {
                let i = (l * 2 + kind as usize) * 2 + p;
                e += self.err2[i];
                r += self.ref2[i];
            }
        }
        (e / r).sqrt()
    }
    /// Relative error of one projection over all tokens.
    fn rel(&self, layer: usize, kind: Kind) -> f64 {
        self.sums(layer..layer + 1, kind, &[0, 1])
    }
    /// Relative error of one projection over tokens 1.. of each window.
    fn rel_rest(&self, layer: usize, kind: Kind) -> f64 {
        self.sums(layer..layer + 1, kind, &[1])
    }
    /// Relative error of all projections of a kind, all tokens.
    fn rel_all(&self, kind: Kind) -> f64 {
        self.sums(0..self.err2.len() / 4, kind, &[0, 1])
    }
}

fn exact_sum(partials: &[Vec<f32>], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let mut s = 0f64;
        for p in partials {
            s += p[i] as f64;
        }
        *o = s as f32;
    }
}

struct ExactComb;

impl Combine for ExactComb {
    fn combine(&mut self, _layer: usize, _kind: Kind, partials: &[Vec<f32>], out: &mut [f32]) {
        exact_sum(partials, out);
    }
}

/// Hands bf16 partials to the library's reference all-reduce and measures the
/// error of its output against the exact sum of the same (f32) partials.
struct ReducerComb {
    /// The setting of each projection, at `layer * 2 + kind`.
    quants: Vec<Quantization>,
    /// `Some(row)`: reduce each `row`-element slice separately.
    per_row: Option<usize>,
    /// Rows (of `row_len` elements) at the start of the buffer combined exactly.
    exact_rows: usize,
    row_len: usize,
    /// `Some((layer, kind))`: use the reducer only there, the exact sum elsewhere.
    only: Option<(usize, Kind)>,
    /// Measure only: pass the exact sum on (errors measured on the exact trajectory).
    shadow: bool,
    stats: ErrStats,
    bufs: Vec<Vec<bf16>>,
    exact: Vec<f32>,
}

impl ReducerComb {
    /// `cfg` must be a reducer configuration (`cfg.quant` is `Some`).
    fn new(cfg: &Cfg, model: &Model, only: Option<(usize, Kind)>) -> Self {
        let quants = (0..2 * model.n_layer)
            .map(|i| {
                let kind = if i % 2 == 0 { Kind::Attn } else { Kind::Mlp };
                cfg.quant_at((i / 2, kind)).expect("ReducerComb needs a reducer configuration")
            })
            .collect();
        ReducerComb {
            quants,
            per_row: cfg.per_row.then_some(model.n_embd),
            exact_rows: usize::from(cfg.tok0_exact),
            row_len: model.n_embd,
            only,
            shadow: cfg.shadow,
            stats: ErrStats::new(model.n_layer),
            bufs: vec![],
            exact: vec![],
        }
    }
}

impl Combine for ReducerComb {
    fn combine(&mut self, layer: usize, kind: Kind, partials: &[Vec<f32>], out: &mut [f32]) {
        let n = out.len();
        if self.only.is_some_and(|o| o != (layer, kind)) {
            exact_sum(partials, out);
            return;
        }
        self.bufs.resize_with(partials.len(), Vec::new);
        for (b, p) in self.bufs.iter_mut().zip(partials) {
            b.clear();
            b.extend(p[..n].iter().map(|&v| bf16::from_f32(v)));
        }
        let quant = self.quants[layer * 2 + kind as usize];
        let reduce = |range: std::ops::Range<usize>| {
            let inputs: Vec<&[bf16]> = self.bufs.iter().map(|b| &b[range.clone()]).collect();
            let r = reference_all_reduce(&inputs, &quant)
                .unwrap_or_else(|e| panic!("reference_all_reduce({quant:?}) failed: {e}"));
            assert_eq!(r.len(), range.len(), "reducer returned a buffer of the wrong length");
            r
        };
        self.exact.resize(n, 0.0);
        exact_sum(partials, &mut self.exact);
        // Rows combined exactly (diagnostic) get the exact sum rounded to bf16,
        // the best an unquantized bf16 transport could deliver.
        let skip = self.exact_rows * self.row_len;
        let mut reduced: Vec<bf16> = self.exact[..skip].iter().map(|&x| bf16::from_f32(x)).collect();
        match self.per_row {
            None => reduced.extend(reduce(skip..n)),
            Some(row) => (skip / row..n / row).for_each(|t| reduced.extend(reduce(t * row..(t + 1) * row))),
        }
        debug_assert_eq!(reduced.len(), n);
        let base = (layer * 2 + kind as usize) * 2;
        for (i, ((o, r), &x)) in out.iter_mut().zip(&reduced).zip(&self.exact).enumerate() {
            let v = r.to_f32();
            *o = if self.shadow { x } else { v };
            let d = (v - x) as f64;
            let part = usize::from(i >= self.row_len);
            self.stats.err2[base + part] += d * d;
            self.stats.ref2[base + part] += (x as f64) * (x as f64);
        }
    }
}

/// Exact combine that also records bf16 copies of selected layers' partials.
struct CaptureComb {
    want: Vec<(usize, Kind)>,
    got: Vec<(usize, Kind, Vec<Vec<bf16>>)>,
}

impl Combine for CaptureComb {
    fn combine(&mut self, layer: usize, kind: Kind, partials: &[Vec<f32>], out: &mut [f32]) {
        if self.want.contains(&(layer, kind)) {
            let n = out.len();
            let p = partials.iter().map(|p| p[..n].iter().map(|&v| bf16::from_f32(v)).collect()).collect();
            self.got.push((layer, kind, p));
        }
        exact_sum(partials, out);
    }
}

// ------------------------------------------------------------------ texts --

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e} (run tools/perplexity/fetch-assets.sh)", p.display()))
}

/// Moby Dick chapters `1..` in order, each file's text as shipped (it starts
/// with its "CHAPTER N. Title." line and ends with "\n"), joined with "\n"
/// (so one blank line separates chapters); only as many chapters as needed.
fn moby_text(models: &Path, chapters: std::ops::RangeInclusive<usize>) -> Result<String, String> {
    let mut s = String::new();
    for c in chapters {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&read(&models.join(format!("text/moby-dick/chapter_{c}.txt")))?);
    }
    Ok(s)
}

fn first_tokens(tok: &tokenizer::Tokenizer, text: &str, n: usize, what: &str) -> Result<Vec<u32>, String> {
    let ids = tok.encode(text);
    if ids.len() < n {
        return Err(format!("{what}: only {} tokens, need {n}", ids.len()));
    }
    Ok(ids[..n].to_vec())
}

/// The BOS token each window starts with, if the tokenizer adds one
/// (`tokenizer.ggml.add_bos_token`: Gemma 3 yes, SmolLM2 no).
fn window_bos(tok: &tokenizer::Tokenizer) -> Option<u32> {
    if tok.add_bos {
        tok.bos
    } else {
        None
    }
}

/// `nwin` consecutive, non-overlapping windows of `ctx` positions over the
/// start of `text`'s tokens: each window is the next `ctx` text tokens, or,
/// when the model wants a BOS, BOS followed by the next `ctx - 1` text tokens.
fn make_windows(tok: &tokenizer::Tokenizer, text: &str, nwin: usize, ctx: usize, what: &str) -> Result<Vec<Vec<u32>>, String> {
    let bos = window_bos(tok);
    let per = ctx - usize::from(bos.is_some());
    let ids = first_tokens(tok, text, nwin * per, what)?;
    Ok(ids.chunks(per).map(|c| bos.into_iter().chain(c.iter().copied()).collect()).collect())
}

// ------------------------------------------------------------------- jobs --

struct Sample {
    name: String,
    windows: Vec<Vec<u32>>,
}

struct Job {
    sample: usize,
    world: usize,
    cfg: usize,
    window: usize,
}

#[derive(Default, Clone)]
struct Agg {
    nll: f64,
    count: usize,
    cpu_s: f64,
    stats: Option<ErrStats>,
    /// Per window: (NLL, predictions).
    windows: BTreeMap<usize, (f64, usize)>,
}

impl Agg {
    fn ppl(&self) -> f64 {
        (self.nll / self.count as f64).exp()
    }
    /// Standard error of ΔPPL % against `exact` from the spread of the
    /// per-window mean-NLL differences (paired, same windows): the standard
    /// error of their mean, times the PPL ratio (first order). `None` with
    /// fewer than 2 windows.
    fn dppl_se_pct(&self, exact: &Agg) -> Option<f64> {
        let d: Vec<f64> = self
            .windows
            .iter()
            .filter_map(|(w, &(nll, n))| exact.windows.get(w).map(|&(en, ec)| nll / n as f64 - en / ec as f64))
            .collect();
        if d.len() < 2 {
            return None;
        }
        let k = d.len() as f64;
        let mean = d.iter().sum::<f64>() / k;
        let var = d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (k - 1.0);
        Some((var / k).sqrt() * self.ppl() / exact.ppl() * 100.0)
    }
}

/// `--max-dppl-pct`: exit non-zero if a reducer row's ΔPPL exceeds its limit.
#[derive(Clone, Debug, Default)]
struct DpplLimits {
    /// For every reducer row without its own limit.
    default: Option<f64>,
    /// (configuration as `Cfg::short` prints it, limit).
    per_cfg: Vec<(String, f64)>,
}

impl DpplLimits {
    /// `P` (every reducer row) and/or `CFG=P` entries, comma-separated:
    /// `1,int4k4-int8-g128=8`.
    fn parse(s: &str) -> Result<Self, String> {
        let mut out = DpplLimits::default();
        for e in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let pct = |p: &str| p.trim().parse::<f64>().map_err(|_| format!("bad --max-dppl-pct entry {e:?}"));
            match e.split_once('=') {
                Some((c, p)) => out.per_cfg.push((parse_cfg(c)?.short(), pct(p)?)),
                None => out.default = Some(pct(e)?),
            }
        }
        Ok(out)
    }
    fn limit(&self, cfg: &Cfg) -> Option<f64> {
        let short = cfg.short();
        self.per_cfg.iter().find(|(c, _)| *c == short).map(|&(_, p)| p).or(self.default)
    }
}

#[derive(Clone)]
struct Opts {
    models: PathBuf,
    model: String,
    generate: Option<String>,
    gen_tokens: usize,
    quick: bool,
    ctx: usize,
    moby_tokens: usize,
    sotu_file: String,
    sotu_tokens: usize,
    worlds: Vec<usize>,
    cfgs: String,
    sotu_cfgs: Option<String>,
    threads: usize,
    markdown: Option<PathBuf>,
    sanity: bool,
    fixture: Option<PathBuf>,
    layer_errors: Vec<String>,
    max_dppl: DpplLimits,
    tokenize: Option<PathBuf>,
    fixture_layers: String,
    ablate: Option<String>,
    ablate_windows: usize,
    plan: Option<String>,
    plan_upgrade: String,
    plan_n: Vec<usize>,
    plan_methods: Vec<PlanMethod>,
}

fn usage() -> ! {
    eprintln!(
        "usage: perplexity [--model smollm2|gemma3] [--quick] [--models DIR] [--ctx N] [--moby-tokens N] [--sotu FILE] [--sotu-tokens N]
                  [--worlds 2,4,8] [--configs full|all|g128|spikes|LIST] [--sotu-configs full|all|g128|spikes|LIST] [--threads N]
                  [--markdown FILE] [--layer-errors CFG@W,...] [--max-dppl-pct P[,CFG=P...]]
       perplexity --sanity            forward-pass check: PPL of the first 2,044 tokens of Moby Dick ch. 1-3
                                      (smollm2: against the numpy reference; gemma3: plus greedy continuations)
       perplexity --generate PROMPT [--gen-tokens N]
                                      greedy continuation of PROMPT (W=1, exact), with the top 5 first tokens
       perplexity --write-fixture F [--fixture-layers 0a,11m,29m]
                                      write W=4 bf16 partial sums (see tests/fixtures/README.md)
       perplexity --tokenize FILE     print the token ids of a text file
       perplexity --ablate CFG@W [--ablate-windows N]
                                      dPPL with CFG applied at one projection only (each in turn),
                                      on the first N (4) Moby Dick windows
       perplexity --plan CFG@W [--plan-upgrade SETTING] [--plan-n N[,N...]] [--plan-method ablate,gain] [--ablate-windows N]
                                      per-projection precision plan: rank the projections by the --ablate
                                      dPPL of CFG (method ablate, the default) and/or by the PPL gain of
                                      upgrading that one projection with CFG everywhere else (gain), give
                                      the top N (2) SETTING (int8-g128), evaluate exact, CFG and each plan
                                      CFG/SETTING=<top N> on the Moby Dick sample at W
--model: smollm2 (default; models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) or
         gemma3 (models/gemma3/gemma-3-270m-q4_k_m.gguf); windows start with BOS when the model adds one
configs: exact, or a library setting: none, int8-gG, int4-int8-gG (4 bits reduce-scatter, 8 all-gather), int4-gG,
         a width with spikes per group: int4k4-int8 (4 spikes in the reduce-scatter), int8k1 (1 in both steps), ...;
         suffixes -row, -tok0, -shadow (diagnostics), then per-projection overrides /SETTING=PROJ+PROJ...
         (PROJ: <layer>a attn_output, <layer>m ffn_down; e.g. int4k4-int8-g128/int8-g128=0m+29m), then @W[+W]
--max-dppl-pct: P for every reducer row, CFG=P for one configuration (e.g. 1,int4k4-int8-g128=8)"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        models: default_models_dir(),
        model: "smollm2".into(),
        generate: None,
        gen_tokens: 24,
        quick: false,
        ctx: 512,
        moby_tokens: 8192,
        sotu_file: "2016_barack_obama_d.txt".into(),
        sotu_tokens: 2048,
        worlds: vec![2, 4, 8],
        cfgs: "full".into(),
        sotu_cfgs: None,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        markdown: None,
        sanity: false,
        fixture: None,
        layer_errors: ["int4-g128-shadow@4", "int4-int8-g128-shadow@4", "int8-g128-shadow@4", "int4-g128@4"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        max_dppl: DpplLimits::default(),
        tokenize: None,
        fixture_layers: "0a,11m,29m".into(),
        ablate: None,
        ablate_windows: 4,
        plan: None,
        plan_upgrade: "int8-g128".into(),
        plan_n: vec![2],
        plan_methods: vec![PlanMethod::Ablate],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => o.quick = true,
            "--sanity" => o.sanity = true,
            "--models" => o.models = PathBuf::from(val()),
            "--model" => o.model = val(),
            "--generate" => o.generate = Some(val()),
            "--gen-tokens" => o.gen_tokens = val().parse().unwrap_or_else(|_| usage()),
            "--ctx" => o.ctx = val().parse().unwrap_or_else(|_| usage()),
            "--moby-tokens" => o.moby_tokens = val().parse().unwrap_or_else(|_| usage()),
            "--sotu" => o.sotu_file = val(),
            "--sotu-tokens" => o.sotu_tokens = val().parse().unwrap_or_else(|_| usage()),
            "--worlds" => o.worlds = val().split(',').map(|s| s.parse().unwrap_or_else(|_| usage())).collect(),
            "--configs" => o.cfgs = val(),
            "--sotu-configs" => o.sotu_cfgs = Some(val()),
            "--threads" => o.threads = val().parse().unwrap_or_else(|_| usage()),
            "--markdown" => o.markdown = Some(PathBuf::from(val())),
            "--write-fixture" => o.fixture = Some(PathBuf::from(val())),
            "--layer-errors" => o.layer_errors = val().split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            "--ablate" => o.ablate = Some(val()),
            "--ablate-windows" => o.ablate_windows = val().parse().unwrap_or_else(|_| usage()),
            "--plan" => o.plan = Some(val()),
            "--plan-upgrade" => o.plan_upgrade = val(),
            "--plan-method" => {
                o.plan_methods = val().split(',').map(|m| PlanMethod::parse(m).unwrap_or_else(|_| usage())).collect()
            }
            "--plan-n" => o.plan_n = val().split(',').map(|s| s.trim().parse().unwrap_or_else(|_| usage())).collect(),
            "--fixture-layers" => o.fixture_layers = val(),
            "--tokenize" => o.tokenize = Some(PathBuf::from(val())),
            "--max-dppl-pct" => {
                o.max_dppl = DpplLimits::parse(&val()).unwrap_or_else(|e| {
                    eprintln!("{e}");
                    usage()
                })
            }
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {a}");
                usage()
            }
        }
    }
    if o.quick {
        o.ctx = 256;
        o.moby_tokens = 512;
        o.sotu_tokens = 0;
        o.worlds = vec![4];
        // INT8 and one spike-reserving setting (4 spikes per group in the
        // 4-bit reduce-scatter, INT8 all-gather)
        o.cfgs = "exact,int8-g128,int4k4-int8-g128".into();
        o.layer_errors = vec!["int8-g128@4".into()];
    }
    o
}

fn run_jobs<R: Send>(threads: usize, n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                out.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_inner().unwrap().into_iter().map(|r| r.unwrap()).collect()
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn load(opts: &Opts) -> Result<(Model, tokenizer::Tokenizer), String> {
    let t0 = Instant::now();
    let file = MODELS
        .iter()
        .find(|m| m.0 == opts.model)
        .ok_or_else(|| format!("--model {:?}: one of {:?}", opts.model, MODELS.iter().map(|m| m.0).collect::<Vec<_>>()))?
        .1;
    let path = opts.models.join(file);
    let g = gguf::Gguf::open(&path).map_err(|e| format!("{e} (run tools/perplexity/fetch-assets.sh)"))?;
    let model = Model::load(&g)?;
    let tok = tokenizer::Tokenizer::from_gguf(&g)?;
    eprintln!(
        "loaded {} (GGUF v{}, {} tensors) in {:.1}s: {:?}, {} layers, d={}, heads {}/{} kv of {}, ff={}, vocab {}, rope base {}{}, add_bos {} (bos id {:?})",
        path.display(),
        g.version,
        g.tensors.len(),
        t0.elapsed().as_secs_f64(),
        model.arch,
        model.n_layer,
        model.n_embd,
        model.n_head,
        model.n_head_kv,
        model.head_dim,
        model.n_ff,
        model.n_vocab,
        model.rope_base,
        match (model.sliding_window, model.rope_base_local) {
            (Some(w), Some(b)) => format!(
                " (global layers), {} sliding-window layers (window {w}, rope base {b}), final softcap {:?}",
                model.n_local_layers, model.final_softcap
            ),
            _ => String::new(),
        },
        tok.add_bos,
        tok.bos
    );
    Ok((model, tok))
}

fn real_main() -> Result<(), String> {
    let opts = parse_args();
    let (model, tok) = load(&opts)?;

    if opts.sanity {
        return sanity(&opts, &model, &tok);
    }
    if let Some(p) = &opts.generate {
        return generate(&model, &tok, p, opts.gen_tokens);
    }
    if let Some(p) = &opts.tokenize {
        let ids = tok.encode(&read(p)?);
        println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    if let Some(p) = &opts.fixture {
        return write_fixture(&opts, &model, &tok, p);
    }

    if let Some(spec) = &opts.ablate {
        return ablate(&opts, &model, &tok, spec);
    }
    if let Some(spec) = &opts.plan {
        return plan(&opts, &model, &tok, spec);
    }

    let ev = evaluate(&opts, &model, &tok)?;
    print!("{}", ev.md);
    if let Some(p) = &opts.markdown {
        std::fs::write(p, &ev.md).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if !ev.failed.is_empty() {
        return Err(format!("dPPL threshold exceeded:\n  {}", ev.failed.join("\n  ")));
    }
    Ok(())
}

/// One row of an evaluation: a configuration on a sample at a world size.
struct Row {
    sample: usize,
    world: usize,
    /// `Cfg::short`.
    cfg: String,
    ppl: f64,
    /// Against the exact row of the same sample and W, if there is one.
    dppl_pct: Option<f64>,
    /// Its standard error (`Agg::dppl_se_pct`).
    dppl_se_pct: Option<f64>,
    /// Mean bits per element of the (reduce-scatter, all-gather) steps.
    bits: (f64, f64),
}

/// What `evaluate` measured: its markdown, the rows above their `--max-dppl-pct`
/// limit, and every row.
struct Eval {
    md: String,
    failed: Vec<String>,
    rows: Vec<Row>,
}

/// The main evaluation: every configuration of `--configs` (`--sotu-configs`)
/// at every world size on the Moby Dick (and SOTU) sample.
fn evaluate(opts: &Opts, model: &Model, tok: &tokenizer::Tokenizer) -> Result<Eval, String> {
    let t_start = Instant::now();
    let ctx = opts.ctx;
    if !opts.moby_tokens.is_multiple_of(ctx) || !opts.sotu_tokens.is_multiple_of(ctx) || !ctx.is_multiple_of(32) {
        return Err("token counts must be multiples of --ctx, and --ctx a multiple of 32".into());
    }
    let mut samples = Vec::new();
    let moby = moby_text(&opts.models, 1..=40)?;
    let bos_note = if window_bos(tok).is_some() { format!(" (BOS + {} text tokens each)", ctx - 1) } else { String::new() };
    samples.push(Sample {
        name: format!("{}: Moby Dick ch. 1+, first {} tokens{bos_note}", opts.model, opts.moby_tokens),
        windows: make_windows(tok, &moby, opts.moby_tokens / ctx, ctx, "Moby Dick")?,
    });
    if opts.sotu_tokens > 0 {
        let text = read(&opts.models.join("text/sotu").join(&opts.sotu_file))?;
        samples.push(Sample {
            name: format!(
                "{}: SOTU {}, first {} tokens{bos_note}",
                opts.model,
                opts.sotu_file.trim_end_matches(".txt"),
                opts.sotu_tokens
            ),
            windows: make_windows(tok, &text, opts.sotu_tokens / ctx, ctx, &opts.sotu_file)?,
        });
    }
    let cfgs_per_sample: Vec<Vec<Cfg>> = samples
        .iter()
        .enumerate()
        .map(|(i, _)| {
            if i == 0 {
                cfg_set(&opts.cfgs)
            } else {
                cfg_set(opts.sotu_cfgs.as_deref().unwrap_or(&opts.cfgs))
            }
        })
        .collect::<Result<_, _>>()?;
    for c in cfgs_per_sample.iter().flatten() {
        c.check(model.n_layer)?;
    }
    let mut jobs = Vec::new();
    for (si, s) in samples.iter().enumerate() {
        let nwin = s.windows.len();
        for &w in &opts.worlds {
            for (ci, c) in cfgs_per_sample[si].iter().enumerate() {
                if !c.applies(w) {
                    continue;
                }
                for window in 0..nwin {
                    jobs.push(Job { sample: si, world: w, cfg: ci, window });
                }
            }
        }
    }
    eprintln!(
        "{} jobs ({} samples, worlds {:?}, windows of {ctx} tokens), {} threads",
        jobs.len(),
        samples.len(),
        opts.worlds,
        opts.threads
    );
    let done = AtomicUsize::new(0);
    let results = run_jobs(opts.threads, jobs.len(), |i| {
        let j = &jobs[i];
        let toks = &samples[j.sample].windows[j.window];
        let t0 = Instant::now();
        let cfg = &cfgs_per_sample[j.sample][j.cfg];
        let (r, stats) = match cfg.quant {
            None => (model.forward_window(toks, j.world, &mut ExactComb, 1), None),
            Some(_) => {
                let mut c = ReducerComb::new(cfg, model, None);
                let r = model.forward_window(toks, j.world, &mut c, 1);
                (r, Some(c.stats))
            }
        };
        let dt = t0.elapsed().as_secs_f64();
        let k = done.fetch_add(1, Ordering::Relaxed) + 1;
        if k.is_multiple_of(10) || k == jobs.len() {
            eprintln!("  {k}/{} jobs, {:.0}s", jobs.len(), t_start.elapsed().as_secs_f64());
        }
        (r, stats, dt)
    });
    let mut agg: BTreeMap<(usize, usize, usize), Agg> = BTreeMap::new();
    for (j, (r, stats, dt)) in jobs.iter().zip(results) {
        let a = agg.entry((j.sample, j.world, j.cfg)).or_default();
        a.nll += r.nll;
        a.count += r.count;
        a.cpu_s += dt;
        a.windows.insert(j.window, (r.nll, r.count));
        if let Some(s) = stats {
            match &mut a.stats {
                Some(x) => x.add(&s),
                None => a.stats = Some(s),
            }
        }
    }
    let wall = t_start.elapsed().as_secs_f64();

    // ---- report ----
    let mut md = String::new();
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for (si, s) in samples.iter().enumerate() {
        let cfgs = &cfgs_per_sample[si];
        let exact_i = cfgs.iter().position(|c| c.quant.is_none() && c.worlds.is_none());
        md += &format!(
            "\n### {}\n\n{} windows of {ctx} tokens, {} scored predictions per configuration.\n\n",
            s.name,
            s.windows.len(),
            s.windows.iter().map(|w| w.len() - 1).sum::<usize>()
        );
        md += "\"bits rs\", \"bits ag\": bits per element that cross the link in the reduce-scatter and the all-gather step \
               (codes, 64 bits of parameters per group of G, 24 per spike; full groups), averaged over the 2 × n_layer \
               row-parallel all-reduces (all of the same size); 16 for bf16 transport and the exact sum. \
               \"s.e.\": standard error of ΔPPL % from the spread of the per-window ΔNLL (paired with exact, same windows).\n\n";
        md += "| W | configuration | bits rs | bits ag | PPL | ΔPPL | ΔPPL % | s.e. | rel. err attn | rel. err mlp | CPU s |\n";
        md += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for &w in &opts.worlds {
            let exact = exact_i.map(|e| &agg[&(si, w, e)]);
            let base = exact.map(Agg::ppl);
            for (ci, c) in cfgs.iter().enumerate() {
                let Some(a) = agg.get(&(si, w, ci)) else { continue };
                let ppl = a.ppl();
                let se = exact.filter(|_| c.quant.is_some()).and_then(|e| a.dppl_se_pct(e));
                let (d, dp) = match base {
                    Some(b) if c.quant.is_some() => {
                        (format!("{:+.4}", ppl - b), format!("{:+.3}%", (ppl / b - 1.0) * 100.0))
                    }
                    _ => ("".into(), "".into()),
                };
                let se_s = se.map_or(String::new(), |x| format!("±{x:.3}%"));
                let (ea, em) = match &a.stats {
                    Some(st) => (format!("{:.2e}", st.rel_all(Kind::Attn)), format!("{:.2e}", st.rel_all(Kind::Mlp))),
                    None => ("".into(), "".into()),
                };
                let (brs, bag) = c.mean_bits(model.n_layer);
                md += &format!(
                    "| {w} | {} | {brs:.3} | {bag:.3} | {ppl:.4} | {d} | {dp} | {se_s} | {ea} | {em} | {:.1} |\n",
                    c.label(),
                    a.cpu_s
                );
                if let (Some(b), Some(max), Some(_)) = (base, opts.max_dppl.limit(c), c.quant) {
                    if (ppl / b - 1.0) * 100.0 > max {
                        failed.push(format!("{} W={w} {}: dPPL {:+.3}% > {max}%", s.name, c.short(), (ppl / b - 1.0) * 100.0));
                    }
                }
                rows.push(Row {
                    sample: si,
                    world: w,
                    cfg: c.short(),
                    ppl,
                    dppl_pct: base.filter(|_| c.quant.is_some()).map(|b| (ppl / b - 1.0) * 100.0),
                    dppl_se_pct: se,
                    bits: (brs, bag),
                });
            }
        }
    }
    // per-layer error tables
    for spec in &opts.layer_errors {
        let (cs, ws) = spec.split_once('@').ok_or_else(|| format!("bad --layer-errors entry {spec:?}"))?;
        let w: usize = ws.parse().map_err(|_| format!("bad world in {spec:?}"))?;
        let want = parse_cfg(cs)?;
        let Some(ci) = cfgs_per_sample[0].iter().position(|c| c.short() == want.short()) else { continue };
        let Some(a) = agg.get(&(0, w, ci)) else { continue };
        let Some(st) = &a.stats else { continue };
        md += &format!(
            "\n### Per-layer relative error, {} at W={w}, {}\n\n`‖reduced − exact‖₂ / ‖exact‖₂`, summed over the sample, where exact is the f64 sum of the f32 partials of the same run; \"all\" over all tokens, \"t ≥ 1\" without the first token of each window.\n\n",
            want.label(),
            samples[0].name
        );
        md += "| layer | attn_output all | attn_output t ≥ 1 | ffn_down all | ffn_down t ≥ 1 |\n|---:|---:|---:|---:|---:|\n";
        for l in 0..model.n_layer {
            md += &format!(
                "| {l} | {:.3e} | {:.3e} | {:.3e} | {:.3e} |\n",
                st.rel(l, Kind::Attn),
                st.rel_rest(l, Kind::Attn),
                st.rel(l, Kind::Mlp),
                st.rel_rest(l, Kind::Mlp)
            );
        }
    }
    md += &format!("\nWall time: {wall:.1} s on {} threads.\n", opts.threads);
    Ok(Eval { md, failed, rows })
}

/// Forward-pass correctness check against the numpy reference (PPL ~59.8 on
/// the first 2,044 tokens of Moby Dick chapters 1-3). No TP (W=1).
fn sanity(opts: &Opts, model: &Model, tok: &tokenizer::Tokenizer) -> Result<(), String> {
    if opts.model != "smollm2" {
        return sanity_other(opts, model, tok);
    }
    let text = moby_text(&opts.models, 1..=3)?;
    let ids = tok.encode(&text);
    eprintln!("Moby Dick ch. 1-3: {} chars, {} tokens", text.len(), ids.len());
    eprintln!("first tokens: {:?}", &ids[..16]);
    eprintln!("decoded: {:?}", tok.decode(&ids[..16]));
    let t0 = Instant::now();
    // The numpy reference scored 4 windows of 512 tokens (511 predictions
    // each = 2,044 predictions); a single 2,044-token sequence is shown for
    // comparison (longer context, lower perplexity).
    let r = model.forward_window(&ids[..2044], 1, &mut ExactComb, 1);
    println!("one sequence of 2,044 tokens ({} predictions): PPL {:.3}", r.count, (r.nll / r.count as f64).exp());
    // windows of 512 (511 predictions each): 4 windows = 2,044 predictions
    let res = run_jobs(opts.threads, 4, |w| model.forward_window(&ids[w * 512..(w + 1) * 512], 1, &mut ExactComb, 1));
    let (nll, cnt) = res.iter().fold((0.0, 0), |(a, b), r| (a + r.nll, b + r.count));
    let ppl = (nll / cnt as f64).exp();
    println!("4 windows of 512 tokens (2,044 predictions): PPL {ppl:.3} (numpy reference: 59.8)");
    eprintln!("{:.1}s", t0.elapsed().as_secs_f64());
    if (ppl - 59.8).abs() > 0.05 {
        return Err(format!("sanity check failed: PPL {ppl:.3}, expected 59.8"));
    }
    Ok(())
}

/// The forward-pass check for a model without a numpy reference (gemma3):
/// 4 windows of 512 (BOS + 511 text tokens when the model adds a BOS; 2,044
/// predictions, as for SmolLM2) over Moby Dick ch. 1-3, W = 1 and W = 4
/// (exact), then greedy continuations of a few prompts.
fn sanity_other(opts: &Opts, model: &Model, tok: &tokenizer::Tokenizer) -> Result<(), String> {
    let text = moby_text(&opts.models, 1..=3)?;
    let ids = tok.encode(&text);
    eprintln!("Moby Dick ch. 1-3: {} chars, {} tokens", text.len(), ids.len());
    eprintln!("first tokens: {:?}", &ids[..16]);
    eprintln!("decoded: {:?}", tok.decode(&ids[..16]));
    let t0 = Instant::now();
    let wins = make_windows(tok, &text, 4, 512, "Moby Dick")?;
    for world in [1, 4] {
        let res = run_jobs(opts.threads, 4, |w| model.forward_window(&wins[w], world, &mut ExactComb, 1));
        let (nll, cnt) = res.iter().fold((0.0, 0), |(a, b), r| (a + r.nll, b + r.count));
        println!("W={world}: 4 windows of 512 positions ({cnt} predictions): PPL {:.3}", (nll / cnt as f64).exp());
    }
    eprintln!("{:.1}s", t0.elapsed().as_secs_f64());
    for p in ["The capital of France is", "Call me Ishmael. Some years ago", "def fibonacci(n):"] {
        generate(model, tok, p, 16)?;
    }
    Ok(())
}

/// Greedy continuation of `prompt` (BOS first when the model adds one),
/// recomputing the whole prefix each step (W = 1, exact sum); prints the top
/// 5 candidates for the first new token.
fn generate(model: &Model, tok: &tokenizer::Tokenizer, prompt: &str, n: usize) -> Result<(), String> {
    let mut ids: Vec<u32> = window_bos(tok).into_iter().chain(tok.encode(prompt)).collect();
    let n_prompt = ids.len();
    println!("prompt {prompt:?}: ids {ids:?}");
    for step in 0..n {
        let logits = model.next_logits(&ids, &mut ExactComb);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.select_nth_unstable_by(5, |&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(5);
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if step == 0 {
            let mx = logits[order[0]];
            let lse = mx as f64 + logits.iter().map(|&z| ((z - mx) as f64).exp()).sum::<f64>().ln();
            for &i in &order {
                println!("  top: {i:>6} {:<16?} logit {:>8.4}  p {:.4}", tok.decode(&[i as u32]), logits[i], (logits[i] as f64 - lse).exp());
            }
        }
        ids.push(order[0] as u32);
    }
    println!("  greedy: {:?}", tok.decode(&ids[n_prompt..]));
    Ok(())
}

/// Fixture: W=4 row-parallel partial sums (bf16, as handed to the reducer) of
/// the first 32 tokens of Moby Dick chapter 1 (positions 0..32 of a sequence),
/// taken on the exact-sum trajectory. Format: tests/fixtures/README.md.
fn write_fixture(opts: &Opts, model: &Model, tok: &tokenizer::Tokenizer, path: &Path) -> Result<(), String> {
    const TOKENS: usize = 32;
    const WORLD: usize = 4;
    // "0a,11m,29m": layer number + a (attn_output) or m (ffn_down)
    let want: Vec<(usize, Kind)> = opts
        .fixture_layers
        .split(',')
        .map(|s| parse_proj(s).map_err(|e| format!("--fixture-layers: {e}")))
        .collect::<Result<_, String>>()?;
    let moby = moby_text(&opts.models, 1..=1)?;
    // (BOS first when the model adds one, as in the evaluation windows)
    let ids = make_windows(tok, &moby, 1, TOKENS, "Moby Dick")?.remove(0);
    let mut cap = CaptureComb { want: want.clone(), got: vec![] };
    model.forward_window(&ids, WORLD, &mut cap, 1);
    let mut out = Vec::new();
    out.extend_from_slice(b"FCACTS01"); // magic, format version 01
    out.extend_from_slice(&(cap.got.len() as u32).to_le_bytes());
    for (layer, kind, parts) in &cap.got {
        for v in [*layer as u32, *kind as u32, WORLD as u32, TOKENS as u32, model.n_embd as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for p in parts {
            for x in p {
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
        }
    }
    std::fs::write(path, &out).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("wrote {} ({} bytes, {} records; tokens {:?})", path.display(), out.len(), cap.got.len(), ids);
    Ok(())
}

/// How `--plan` ranks the projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlanMethod {
    /// Single-projection ablation: ΔPPL with the configuration at that
    /// projection only, every other all-reduce exact (`--ablate`).
    Ablate,
    /// Upgrade gain: PPL with the configuration everywhere minus PPL with
    /// that one projection upgraded (errors of the other projections present).
    Gain,
}

impl PlanMethod {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "ablate" => Ok(Self::Ablate),
            "gain" => Ok(Self::Gain),
            _ => Err(format!("--plan-method {s:?}: ablate or gain")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Ablate => "ablate",
            Self::Gain => "gain",
        }
    }
}

/// A single-projection ablation and/or upgrade-gain measurement: PPL on the
/// first windows of the Moby Dick sample, exact, with the configuration
/// everywhere, with it at one projection only (every other all-reduce
/// exact), and with it everywhere but one projection upgraded.
struct Ablation {
    exact: f64,
    everywhere: f64,
    /// PPL with the configuration at projection `layer * 2 + kind` only (empty: not run).
    only: Vec<f64>,
    /// PPL with the configuration everywhere and the upgrade at projection
    /// `layer * 2 + kind` (empty: not run).
    upgraded: Vec<f64>,
    /// Windows and their length.
    nwin: usize,
    ctx: usize,
    wall_s: f64,
}

impl Ablation {
    fn pct(&self, ppl: f64) -> f64 {
        (ppl / self.exact - 1.0) * 100.0
    }
    /// ΔPPL % with the configuration at `p` only.
    fn only_pct(&self, (layer, kind): Proj) -> f64 {
        self.pct(self.only[layer * 2 + kind as usize])
    }
    /// PPL gain (% of the exact PPL) from upgrading `p` alone.
    fn gain_pct(&self, (layer, kind): Proj) -> f64 {
        (self.everywhere - self.upgraded[layer * 2 + kind as usize]) / self.exact * 100.0
    }
    fn sensitivity(&self, method: PlanMethod, p: Proj) -> f64 {
        match method {
            PlanMethod::Ablate => self.only_pct(p),
            PlanMethod::Gain => self.gain_pct(p),
        }
    }
    /// The table of every projection's ΔPPL % (and gain).
    fn markdown(&self, cfg: &Cfg, world: usize, n_layer: usize, upgrade: Option<Quantization>) -> String {
        let mut md = format!(
            "\n### Single-projection ablation, {} at W={world}, first {} tokens of the Moby Dick sample ({} windows of {})\n\n\
             Exact PPL {:.4}; {} at every projection: PPL {:.4} ({:+.3}%).",
            cfg.label(),
            self.nwin * self.ctx,
            self.nwin,
            self.ctx,
            self.exact,
            cfg.label(),
            self.everywhere,
            self.pct(self.everywhere)
        );
        let (mut head, mut rule) = ("| layer |".to_string(), "|---:|".to_string());
        if !self.only.is_empty() {
            md += " \"only\": ΔPPL % when only that one projection uses it (every other all-reduce exact).";
            head += " attn_output only | ffn_down only |";
            rule += "---:|---:|";
        }
        if let (false, Some(u)) = (self.upgraded.is_empty(), upgrade) {
            md += &format!(
                " \"gain\": PPL reduction (% of the exact PPL) when that one projection uses {} and every other {}.",
                u.label(),
                cfg.short()
            );
            head += " attn_output gain | ffn_down gain |";
            rule += "---:|---:|";
        }
        md += &format!("\n\n{head}\n{rule}\n");
        for l in 0..n_layer {
            md += &format!("| {l} |");
            if !self.only.is_empty() {
                md += &format!(" {:+.3}% | {:+.3}% |", self.only_pct((l, Kind::Attn)), self.only_pct((l, Kind::Mlp)));
            }
            if !self.upgraded.is_empty() {
                md += &format!(" {:+.3}% | {:+.3}% |", self.gain_pct((l, Kind::Attn)), self.gain_pct((l, Kind::Mlp)));
            }
            md += "\n";
        }
        md
    }
}

/// Runs the single-projection ablation of `cfg` at `world` (`only`) and/or
/// the upgrade gains (`upgrade`) on the first `--ablate-windows` windows of
/// the Moby Dick sample.
fn run_ablation(
    opts: &Opts,
    model: &Model,
    tok: &tokenizer::Tokenizer,
    cfg: &Cfg,
    world: usize,
    only: bool,
    upgrade: Option<Quantization>,
) -> Result<Ablation, String> {
    let t_start = Instant::now();
    if cfg.quant.is_none() {
        return Err("the ablation needs a reducer configuration".into());
    }
    cfg.check(model.n_layer)?;
    let ctx = opts.ctx;
    let nwin = opts.ablate_windows;
    let moby = moby_text(&opts.models, 1..=40)?;
    let windows = make_windows(tok, &moby, nwin, ctx, "Moby Dick")?;
    let projs: Vec<Proj> = (0..model.n_layer).flat_map(|l| [(l, Kind::Attn), (l, Kind::Mlp)]).collect();
    // variant 0: exact; 1: everywhere; then `cfg` at one projection only
    // (index 2 + 2*layer + kind), then everywhere with one projection upgraded
    let mut variants: Vec<Option<(Cfg, Option<Proj>)>> = vec![None, Some((cfg.clone(), None))];
    if only {
        variants.extend(projs.iter().map(|&p| Some((cfg.clone(), Some(p)))));
    }
    if let Some(u) = upgrade {
        variants.extend(projs.iter().map(|&p| {
            let mut c = cfg.clone();
            if !c.overrides.iter().any(|(_, ps)| ps.contains(&p)) {
                c.overrides.push((u, vec![p]));
            }
            Some((c, None))
        }));
    }
    let nvar = variants.len();
    eprintln!("ablation of {} at W={world}: {} jobs ({nwin} windows of {ctx}), {} threads", cfg.short(), nvar * nwin, opts.threads);
    let res = run_jobs(opts.threads, nvar * nwin, |i| {
        let (v, w) = (i / nwin, i % nwin);
        let toks = &windows[w];
        let r = match &variants[v] {
            None => model.forward_window(toks, world, &mut ExactComb, 1),
            Some((c, at)) => model.forward_window(toks, world, &mut ReducerComb::new(c, model, *at), 1),
        };
        if (i + 1) % 20 == 0 {
            eprintln!("  {}/{} jobs, {:.0}s", i + 1, nvar * nwin, t_start.elapsed().as_secs_f64());
        }
        r
    });
    let mut ppl: Vec<f64> = (0..nvar)
        .map(|v| {
            let (nll, cnt) = res[v * nwin..(v + 1) * nwin].iter().fold((0.0, 0), |(a, b), r| (a + r.nll, b + r.count));
            (nll / cnt as f64).exp()
        })
        .collect();
    let upgraded = if upgrade.is_some() { ppl.split_off(ppl.len() - projs.len()) } else { vec![] };
    let only = if only { ppl.split_off(2) } else { vec![] };
    Ok(Ablation { exact: ppl[0], everywhere: ppl[1], only, upgraded, nwin, ctx, wall_s: t_start.elapsed().as_secs_f64() })
}

/// Parses `CFG@W` (one world size).
fn cfg_at_world(spec: &str, what: &str) -> Result<(Cfg, usize), String> {
    let (cs, ws) = spec.rsplit_once('@').ok_or_else(|| format!("{what} wants CFG@W, e.g. int4-g128@4"))?;
    let world: usize = ws.parse().map_err(|_| format!("bad world in {spec:?}"))?;
    let cfg = parse_cfg(cs)?;
    if cfg.quant.is_none() {
        return Err(format!("{what} needs a reducer configuration"));
    }
    Ok((cfg, world))
}

fn write_md(opts: &Opts, md: &str) -> Result<(), String> {
    print!("{md}");
    if let Some(p) = &opts.markdown {
        std::fs::write(p, md).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Which projections matter: run the Moby Dick sample's first windows with
/// the reducer configuration applied at a single row-parallel projection (all
/// others exact), for every projection in turn.
fn ablate(opts: &Opts, model: &Model, tok: &tokenizer::Tokenizer, spec: &str) -> Result<(), String> {
    let (cfg, world) = cfg_at_world(spec, "--ablate")?;
    let ab = run_ablation(opts, model, tok, &cfg, world, true, None)?;
    let mut md = ab.markdown(&cfg, world, model.n_layer, None);
    md += &format!("\nWall time: {:.1} s on {} threads.\n", ab.wall_s, opts.threads);
    write_md(opts, &md)
}

/// A per-projection precision plan: rank the projections by their
/// sensitivity under `CFG` (`--plan-method`), give the top N the upgrade
/// setting, and evaluate exact, `CFG` and each plan on the Moby Dick sample.
fn plan(opts: &Opts, model: &Model, tok: &tokenizer::Tokenizer, spec: &str) -> Result<(), String> {
    let t_start = Instant::now();
    let (cfg, world) = cfg_at_world(spec, "--plan")?;
    let upgrade = Quantization::parse(&opts.plan_upgrade).map_err(|e| e.to_string())?;
    let methods = &opts.plan_methods;
    let ab = run_ablation(
        opts,
        model,
        tok,
        &cfg,
        world,
        methods.contains(&PlanMethod::Ablate),
        methods.contains(&PlanMethod::Gain).then_some(upgrade),
    )?;
    // per method: every projection the base does not already override, most sensitive first
    let rankings: Vec<(PlanMethod, Vec<(Proj, f64)>)> = methods
        .iter()
        .map(|&m| {
            let mut r: Vec<(Proj, f64)> = (0..model.n_layer)
                .flat_map(|l| [(l, Kind::Attn), (l, Kind::Mlp)])
                .filter(|p| !cfg.overrides.iter().any(|(_, ps)| ps.contains(p)))
                .map(|p| (p, ab.sensitivity(m, p)))
                .collect();
            r.sort_by(|a, b| b.1.total_cmp(&a.1));
            (m, r)
        })
        .collect();
    // (plan, N, the methods that proposed it)
    let mut plans: Vec<(String, usize, Vec<&str>)> = Vec::new();
    for (m, ranking) in &rankings {
        for &n in &opts.plan_n {
            let mut top: Vec<Proj> = ranking.iter().take(n).map(|r| r.0).collect();
            top.sort();
            if top.is_empty() {
                continue;
            }
            let p = format!("{}/{}={}", cfg.short(), upgrade.label(), top.iter().map(|&p| proj_name(p)).collect::<Vec<_>>().join("+"));
            match plans.iter_mut().find(|x| x.0 == p) {
                Some(x) => x.2.push(m.name()),
                None => plans.push((p, top.len(), vec![m.name()])),
            }
        }
    }
    // evaluate exact, the base and the plans at W on the Moby Dick sample
    let mut eo = opts.clone();
    eo.worlds = vec![world];
    eo.sotu_tokens = 0;
    eo.layer_errors = vec![];
    eo.cfgs = ["exact".to_string(), cfg.short()].into_iter().chain(plans.iter().map(|p| p.0.clone())).collect::<Vec<_>>().join(",");
    eprintln!("evaluating {}", eo.cfgs);
    let ev = evaluate(&eo, model, tok)?;
    let mut md = format!(
        "\n## Per-projection precision plan: {} at W={world}, upgrade {}\n\n\
         Sensitivity measured on the first {} tokens of the Moby Dick sample ({} windows of {}): exact PPL there {:.4}, \
         {} everywhere {:.4} ({:+.3}%).\n",
        cfg.label(),
        upgrade.label(),
        ab.nwin * ab.ctx,
        ab.nwin,
        ab.ctx,
        ab.exact,
        cfg.short(),
        ab.everywhere,
        ab.pct(ab.everywhere)
    );
    for (m, ranking) in &rankings {
        let what = match m {
            PlanMethod::Ablate => format!(
                "`ablate`: ΔPPL % of the single-projection ablation ({} at that projection only, every other all-reduce exact)",
                cfg.short()
            ),
            PlanMethod::Gain => format!(
                "`gain`: PPL reduction (% of the exact PPL) when that projection alone uses {} and every other {}",
                upgrade.label(),
                cfg.short()
            ),
        };
        md += &format!("\nRanking by {what}, most sensitive first (top 10):\n\n| rank | projection | {} |\n|---:|---|---:|\n", m.name());
        for (i, &((l, k), pct)) in ranking.iter().take(10).enumerate() {
            let kind = if k == Kind::Attn { "attn_output" } else { "ffn_down" };
            md += &format!("| {} | `{}` ({kind} of layer {l}) | {pct:+.3}% |\n", i + 1, proj_name((l, k)));
        }
    }
    md += &format!(
        "\nPlans (top N of a ranking → {}), evaluated with exact and the base on the whole sample ({} tokens, W = {world}):\n\n\
         | plan | ranked by | N | bits rs | bits ag | PPL | ΔPPL % | s.e. |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
        upgrade.label(),
        opts.moby_tokens
    );
    for (name, n, by) in std::iter::once((cfg.short(), 0, vec!["(base)"])).chain(plans.iter().cloned()) {
        let r = ev.rows.iter().find(|r| r.sample == 0 && r.world == world && r.cfg == name).ok_or("plan row missing")?;
        md += &format!(
            "| `{name}` | {} | {n} | {:.3} | {:.3} | {:.4} | {} | {} |\n",
            by.join(", "),
            r.bits.0,
            r.bits.1,
            r.ppl,
            r.dppl_pct.map_or(String::new(), |d| format!("{d:+.3}%")),
            r.dppl_se_pct.map_or(String::new(), |d| format!("±{d:.3}%"))
        );
    }
    md += &ev.md;
    md += &ab.markdown(&cfg, world, model.n_layer, Some(upgrade));
    md += &format!(
        "\nWall time of --plan: {:.1} s on {} threads (ablation {:.1} s).\n",
        t_start.elapsed().as_secs_f64(),
        opts.threads,
        ab.wall_s
    );
    write_md(opts, &md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_print_and_count_bits() {
        let c = parse_cfg("int4k4-int8/int8-g128=0m+29m/none=3a@4").unwrap();
        assert_eq!(c.short(), "int4k4-int8-g128/int8-g128=0m+29m/none=3a");
        assert_eq!(c.worlds, Some(vec![4]));
        // the short form parses back to the same configuration
        let again = parse_cfg(&c.short()).unwrap();
        assert_eq!(again.short(), c.short());
        assert_eq!(c.quant_at((0, Kind::Mlp)), Quantization::parse("int8-g128").ok());
        assert_eq!(c.quant_at((29, Kind::Mlp)), Quantization::parse("int8-g128").ok());
        assert_eq!(c.quant_at((3, Kind::Attn)), Some(Quantization::None));
        assert_eq!(c.quant_at((0, Kind::Attn)), Quantization::parse("int4k4-int8-g128").ok());
        // 57 projections at 4 + 0.5 + 4 * 24 / 128 = 5.25 bits, two at 8.5, one at 16
        let (rs, ag) = c.mean_bits(30);
        assert!((rs - (57.0 * 5.25 + 2.0 * 8.5 + 16.0) / 60.0).abs() < 1e-12, "{rs}");
        assert!((ag - (59.0 * 8.5 + 16.0) / 60.0).abs() < 1e-12, "{ag}");
        assert!(c.check(30).is_ok());
        assert!(c.check(29).is_err(), "layer 29 of a 29-layer model");
        assert_eq!(parse_cfg("exact").unwrap().mean_bits(30), (16.0, 16.0));
        assert_eq!(parse_cfg("none").unwrap().mean_bits(30), (16.0, 16.0));
        // with the diagnostics' suffixes on the base
        assert_eq!(parse_cfg("int4-g128-row/int8-g128=1a").unwrap().short(), "int4-g128-row/int8-g128=1a");
    }

    #[test]
    fn bad_overrides_are_errors() {
        for bad in ["exact/int8-g128=0m", "int4k4/int8=0x", "int4k4/int8", "int4k4/int3=0m", "int4k4/int8=m"] {
            assert!(parse_cfg(bad).is_err(), "{bad}");
        }
        assert!(parse_cfg("int4k4/int8=0m/int8k1=0m").unwrap().check(30).is_err(), "a projection twice");
    }

    #[test]
    fn dppl_limits_per_configuration() {
        let l = DpplLimits::parse("1,int4k4-int8=8").unwrap();
        assert_eq!(l.limit(&parse_cfg("int8-g128").unwrap()), Some(1.0));
        assert_eq!(l.limit(&parse_cfg("int4k4-int8-g128").unwrap()), Some(8.0));
        assert_eq!(DpplLimits::parse("int4=5").unwrap().limit(&parse_cfg("int8").unwrap()), None);
        assert!(DpplLimits::parse("x").is_err());
    }

    #[test]
    fn projection_names() {
        assert_eq!(parse_proj("29m").unwrap(), (29, Kind::Mlp));
        assert_eq!(parse_proj("0a").unwrap(), (0, Kind::Attn));
        assert_eq!(proj_name((11, Kind::Mlp)), "11m");
        assert!(parse_proj("").is_err() && parse_proj("a").is_err() && parse_proj("3").is_err());
    }
}
