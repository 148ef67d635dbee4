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
}

impl Cfg {
    fn label(&self) -> String {
        let base = match self.quant {
            None => "exact (f64 sum of f32)".to_string(),
            Some(Quantization::None) => "bf16, unquantized (none)".into(),
            Some(q) => q.label(),
        };
        let mut out = base;
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
        out
    }
    fn applies(&self, world: usize) -> bool {
        self.worlds.as_ref().is_none_or(|w| w.contains(&world))
    }
}

/// `exact` | a library setting, spelled as `Quantization::parse` reads it
/// (`none`, `int8-g128`, `int4-int8-g64`, ...); optional suffixes, in this
/// order: `-row` (per-token groups), `-tok0` (token 0 of each window
/// combined exactly: diagnostic), `-shadow` (measure the reducer's error,
/// propagate the exact sum: diagnostic), `@W[+W...]` (only at these world sizes).
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
    if (per_row || tok0_exact || shadow) && quant.is_none() {
        return Err("-row, -tok0 and -shadow apply to reducer configurations only".into());
    }
    Ok(Cfg { quant, per_row, tok0_exact, shadow, worlds })
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
    quant: Quantization,
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
    fn new(quant: Quantization, cfg: &Cfg, model: &Model, only: Option<(usize, Kind)>) -> Self {
        ReducerComb {
            quant,
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
        let reduce = |range: std::ops::Range<usize>| {
            let inputs: Vec<&[bf16]> = self.bufs.iter().map(|b| &b[range.clone()]).collect();
            let r = reference_all_reduce(&inputs, &self.quant)
                .unwrap_or_else(|e| panic!("reference_all_reduce({:?}) failed: {e}", self.quant));
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
}

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
    max_dppl_pct: Option<f64>,
    tokenize: Option<PathBuf>,
    fixture_layers: String,
    ablate: Option<String>,
    ablate_windows: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: perplexity [--model smollm2|gemma3] [--quick] [--models DIR] [--ctx N] [--moby-tokens N] [--sotu FILE] [--sotu-tokens N]
                  [--worlds 2,4,8] [--configs full|all|g128|LIST] [--sotu-configs full|all|g128|LIST] [--threads N]
                  [--markdown FILE] [--layer-errors CFG@W,...] [--max-dppl-pct P]
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
--model: smollm2 (default; models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) or
         gemma3 (models/gemma3/gemma-3-270m-q4_k_m.gguf); windows start with BOS when the model adds one
configs: exact, or a library setting: none, int8-gG, int4-int8-gG (4 bits reduce-scatter, 8 all-gather), int4-gG, ..."
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
        max_dppl_pct: None,
        tokenize: None,
        fixture_layers: "0a,11m,29m".into(),
        ablate: None,
        ablate_windows: 4,
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
            "--fixture-layers" => o.fixture_layers = val(),
            "--tokenize" => o.tokenize = Some(PathBuf::from(val())),
            "--max-dppl-pct" => o.max_dppl_pct = Some(val().parse().unwrap_or_else(|_| usage())),
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
        o.cfgs = "exact,int8-g128".into();
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

    let t_start = Instant::now();
    let ctx = opts.ctx;
    if opts.moby_tokens % ctx != 0 || opts.sotu_tokens % ctx != 0 || ctx % 32 != 0 {
        return Err("token counts must be multiples of --ctx, and --ctx a multiple of 32".into());
    }
    let mut samples = Vec::new();
    let moby = moby_text(&opts.models, 1..=40)?;
    let bos_note = if window_bos(&tok).is_some() { format!(" (BOS + {} text tokens each)", ctx - 1) } else { String::new() };
    samples.push(Sample {
        name: format!("{}: Moby Dick ch. 1+, first {} tokens{bos_note}", opts.model, opts.moby_tokens),
        windows: make_windows(&tok, &moby, opts.moby_tokens / ctx, ctx, "Moby Dick")?,
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
            windows: make_windows(&tok, &text, opts.sotu_tokens / ctx, ctx, &opts.sotu_file)?,
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
    let mut jobs = Vec::new();
    for (si, s) in samples.iter().enumerate() {
        let nwin = s.windows.len();
        for &w in &opts.worlds {
            for ci in 0..cfgs_per_sample[si].len() {
                if !cfgs_per_sample[si][ci].applies(w) {
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
            Some(q) => {
                let mut c = ReducerComb::new(q, cfg, &model, None);
                let r = model.forward_window(toks, j.world, &mut c, 1);
                (r, Some(c.stats))
            }
        };
        let dt = t0.elapsed().as_secs_f64();
        let k = done.fetch_add(1, Ordering::Relaxed) + 1;
        if k % 10 == 0 || k == jobs.len() {
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
    for (si, s) in samples.iter().enumerate() {
        let cfgs = &cfgs_per_sample[si];
        let exact_i = cfgs.iter().position(|c| c.quant.is_none() && c.worlds.is_none());
        md += &format!(
            "\n### {}\n\n{} windows of {ctx} tokens, {} scored predictions per configuration.\n\n",
            s.name,
            s.windows.len(),
            s.windows.iter().map(|w| w.len() - 1).sum::<usize>()
        );
        md += "| W | configuration | PPL | ΔPPL | ΔPPL % | rel. err attn | rel. err mlp | CPU s |\n";
        md += "|---|---|---:|---:|---:|---:|---:|---:|\n";
        for &w in &opts.worlds {
            let base = exact_i.map(|e| {
                let a = &agg[&(si, w, e)];
                (a.nll / a.count as f64).exp()
            });
            for (ci, c) in cfgs.iter().enumerate() {
                let Some(a) = agg.get(&(si, w, ci)) else { continue };
                let ppl = (a.nll / a.count as f64).exp();
                let (d, dp) = match base {
                    Some(b) if c.quant.is_some() => {
                        (format!("{:+.4}", ppl - b), format!("{:+.3}%", (ppl / b - 1.0) * 100.0))
                    }
                    _ => ("".into(), "".into()),
                };
                let (ea, em) = match &a.stats {
                    Some(st) => (format!("{:.2e}", st.rel_all(Kind::Attn)), format!("{:.2e}", st.rel_all(Kind::Mlp))),
                    None => ("".into(), "".into()),
                };
                md += &format!("| {w} | {} | {ppl:.4} | {d} | {dp} | {ea} | {em} | {:.1} |\n", c.label(), a.cpu_s);
                if let (Some(b), Some(max), Some(_)) = (base, opts.max_dppl_pct, c.quant) {
                    if (ppl / b - 1.0) * 100.0 > max {
                        failed.push(format!("{} W={w} {}: dPPL {:+.3}% > {max}%", s.name, c.short(), (ppl / b - 1.0) * 100.0));
                    }
                }
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
    print!("{md}");
    if let Some(p) = &opts.markdown {
        std::fs::write(p, &md).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if !failed.is_empty() {
        return Err(format!("dPPL threshold exceeded:\n  {}", failed.join("\n  ")));
    }
    Ok(())
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
        .map(|s| {
            let (n, k) = s.split_at(s.len().saturating_sub(1));
            let kind = match k {
                "a" => Kind::Attn,
                "m" => Kind::Mlp,
                _ => return Err(format!("bad --fixture-layers entry {s:?}")),
            };
            Ok((n.parse().map_err(|_| format!("bad --fixture-layers entry {s:?}"))?, kind))
        })
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

/// Which projections matter: run the Moby Dick sample's first windows with
/// the reducer configuration applied at a single row-parallel projection (all
/// others exact), for every projection in turn.
fn ablate(opts: &Opts, model: &Model, tok: &tokenizer::Tokenizer, spec: &str) -> Result<(), String> {
    let t_start = Instant::now();
    let (cs, ws) = spec.split_once('@').ok_or("--ablate wants CFG@W, e.g. int4-g128@4")?;
    let world: usize = ws.parse().map_err(|_| format!("bad world in {spec:?}"))?;
    let cfg = parse_cfg(cs)?;
    let q = cfg.quant.ok_or("--ablate needs a reducer configuration")?;
    let ctx = opts.ctx;
    let nwin = opts.ablate_windows;
    let moby = moby_text(&opts.models, 1..=40)?;
    let windows = make_windows(tok, &moby, nwin, ctx, "Moby Dick")?;
    // variant 0: exact; 1: everywhere; 2 + 2*layer + kind: only there
    let nvar = 2 + 2 * model.n_layer;
    let res = run_jobs(opts.threads, nvar * nwin, |i| {
        let (v, w) = (i / nwin, i % nwin);
        let toks = &windows[w];
        let r = if v == 0 {
            model.forward_window(toks, world, &mut ExactComb, 1)
        } else {
            let only = (v >= 2).then(|| ((v - 2) / 2, if (v - 2) % 2 == 0 { Kind::Attn } else { Kind::Mlp }));
            model.forward_window(toks, world, &mut ReducerComb::new(q, &cfg, model, only), 1)
        };
        if (i + 1) % 20 == 0 {
            eprintln!("  {}/{} jobs, {:.0}s", i + 1, nvar * nwin, t_start.elapsed().as_secs_f64());
        }
        r
    });
    let ppl: Vec<f64> = (0..nvar)
        .map(|v| {
            let (nll, cnt) = res[v * nwin..(v + 1) * nwin].iter().fold((0.0, 0), |(a, b), r| (a + r.nll, b + r.count));
            (nll / cnt as f64).exp()
        })
        .collect();
    let pct = |p: f64| (p / ppl[0] - 1.0) * 100.0;
    let mut md = format!(
        "\n### Single-projection ablation, {} at W={world}, first {} tokens of the Moby Dick sample ({nwin} windows of {ctx})\n\n\
         Exact PPL {:.4}; {} at every projection: PPL {:.4} ({:+.3}%). Below: ΔPPL % when only that one projection uses it.\n\n\
         | layer | attn_output only | ffn_down only |\n|---:|---:|---:|\n",
        cfg.label(),
        nwin * ctx,
        ppl[0],
        cfg.label(),
        ppl[1],
        pct(ppl[1])
    );
    for l in 0..model.n_layer {
        md += &format!("| {l} | {:+.3}% | {:+.3}% |\n", pct(ppl[2 + 2 * l]), pct(ppl[3 + 2 * l]));
    }
    md += &format!("\nWall time: {:.1} s on {} threads.\n", t_start.elapsed().as_secs_f64(), opts.threads);
    print!("{md}");
    if let Some(p) = &opts.markdown {
        std::fs::write(p, &md).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    Ok(())
}
