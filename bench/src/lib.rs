//! The all-reduce benchmark harness: flashcomm's algorithms against NCCL,
//! timed the same way in the same run. Not part of the library an engine
//! links (its own crate).
//!
//! Method (every contender alike):
//! - one host thread issues each call to every rank (eager mode, as an
//!   engine driving all GPUs from one thread would);
//! - out of place, inputs rotated over several buffer sets (at least 256 MiB
//!   in total per GPU, so large messages do not sit in the 60 MB L2);
//! - warm-up, then `iters` timed calls; each call is bracketed by CUDA events
//!   on every rank's stream, its time is the longest rank's interval, and the
//!   row reports the median (and the 10th/90th percentiles);
//! - the error columns compare rank 0's output with the exact f64 sum on
//!   LLM-like data (normal bulk + outlier channels).
//!
//! With `graph_calls = Some(k)` every contender is captured instead: one CUDA
//! graph per rank holding `k` back-to-back calls (inputs rotating), and each
//! timed sample is one replay of every rank's graph, divided by `k`. This is
//! how an engine replays a decode step: no host launch gaps between the
//! ranks' kernels after the first call, so small messages show the
//! collectives' own latency.
use flashcomm::cudarc::driver::{sys, CudaEvent, CudaSlice};
use flashcomm::nccl::NcclComms;
use flashcomm::{Algorithm, CallOptions, Communicator, Config, PhaseSkip, Quantization, Transport};
use half::bf16;
use serde::Serialize;
use std::path::Path;

pub mod tp_layer;

/// NCCL over a [`Communicator`]'s GPUs and streams, timed exactly like
/// flashcomm's calls.
pub struct NcclBaseline {
    comms: NcclComms,
}

impl NcclBaseline {
    /// NCCL communicators on `comm`'s streams.
    pub fn new(comm: &Communicator) -> flashcomm::Result<Self> {
        let streams = (0..comm.world_size()).map(|r| comm.stream(r).cloned()).collect::<flashcomm::Result<Vec<_>>>()?;
        Ok(Self { comms: NcclComms::new(streams)? })
    }

    /// This process's rank of NCCL across processes (`ncclCommInitRank`),
    /// on the stream of `comm`'s one rank, with rank 0's NCCL unique id:
    /// how engines with one process per GPU run NCCL.
    pub fn for_process(comm: &Communicator, nccl_id: &[u8]) -> flashcomm::Result<Self> {
        let rank = comm.local_ranks()[0];
        Ok(Self { comms: NcclComms::init_rank(comm.stream(rank)?.clone(), rank, comm.world_size(), nccl_id)? })
    }

    /// Out-of-place sum over this process's ranks, issued from this thread in
    /// one group (buffers or views).
    pub fn all_reduce(
        &self,
        inputs: &[impl flashcomm::cudarc::driver::DevicePtr<bf16>],
        outputs: &mut [impl flashcomm::cudarc::driver::DevicePtrMut<bf16>],
    ) -> flashcomm::Result<()> {
        let world = self.comms.world_size();
        if inputs.len() != world || outputs.len() != world {
            return Err(flashcomm::Error::BufferCount { world, got: inputs.len().min(outputs.len()) });
        }
        NcclComms::group(|| {
            for (r, (i, o)) in inputs.iter().zip(outputs.iter_mut()).enumerate() {
                if i.len() != o.len() {
                    return Err(flashcomm::Error::OutputLength { rank: r, input: i.len(), output: o.len() });
                }
                let stream = self.comms.stream(r);
                let (src, _g1) = i.device_ptr(stream);
                let (dst, _g2) = o.device_ptr_mut(stream);
                // SAFETY: both buffers live on rank r's GPU with len elements,
                // ordered on its stream.
                unsafe { self.comms.all_reduce_raw(r, src, dst, i.len(), flashcomm::Dtype::Bf16)? };
            }
            Ok(())
        })
    }
}

/// One contender of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Contender {
    /// `ncclAllReduce` through cudarc.
    Nccl,
    /// A flashcomm algorithm with a fixed quantization (and the default transport).
    Flashcomm(Algorithm, Quantization),
    /// A flashcomm two-step algorithm with an explicit transport.
    WithTransport(Algorithm, Quantization, Transport),
    /// A diagnostic variant: the default transport with phases' data work
    /// skipped; its result is wrong.
    Diagnostic(Algorithm, Quantization, PhaseSkip),
}

impl Contender {
    /// Table label.
    pub fn label(&self) -> String {
        match self {
            Contender::Nccl => "nccl".into(),
            Contender::Flashcomm(Algorithm::OneShot, _) => "oneshot".into(),
            Contender::Flashcomm(Algorithm::OneShotLl, _) => "oneshot-ll".into(),
            Contender::Flashcomm(Algorithm::TwoShot, _) => "twoshot".into(),
            Contender::Flashcomm(Algorithm::Flash, q) => format!("flash-{}", q.label()),
            Contender::Flashcomm(Algorithm::Auto, Quantization::None) => "auto".into(),
            Contender::Flashcomm(Algorithm::Auto, q) => format!("auto({})", q.label()),
            Contender::Flashcomm(Algorithm::Nccl, _) => "nccl-via-flashcomm".into(),
            Contender::WithTransport(a, q, t) => format!("{}-{}", Contender::Flashcomm(*a, *q).label(), t.name()),
            Contender::Diagnostic(a, q, skip) => {
                let names: Vec<&str> = [(PhaseSkip::STAGE, "stage"), (PhaseSkip::REDUCE, "reduce"), (PhaseSkip::GATHER, "gather")]
                    .iter()
                    .filter(|(b, _)| skip.contains(*b))
                    .map(|(_, n)| *n)
                    .collect();
                format!("diag:{}-without-{}", Contender::Flashcomm(*a, *q).label(), if names.is_empty() { "nothing".into() } else { names.join("+") })
            }
        }
    }

    fn options(&self) -> CallOptions {
        match *self {
            Contender::Nccl => CallOptions::default(),
            Contender::Flashcomm(a, q) => CallOptions { algorithm: Some(a), quantization: Some(q), ..Default::default() },
            Contender::WithTransport(a, q, t) => CallOptions { algorithm: Some(a), quantization: Some(q), transport: Some(t) },
            Contender::Diagnostic(a, q, _) => CallOptions { algorithm: Some(a), quantization: Some(q), ..Default::default() },
        }
    }

    /// Bytes each GPU receives over its links for a message of `bytes`.
    pub fn link_bytes(&self, bytes: usize, world: usize) -> f64 {
        let w = world as f64;
        let s = bytes as f64;
        match self {
            Contender::Nccl | Contender::Flashcomm(Algorithm::TwoShot, _) => 2.0 * (w - 1.0) / w * s,
            Contender::Flashcomm(Algorithm::OneShot, _) => (w - 1.0) * s,
            // Half of every LL line is flags.
            Contender::Flashcomm(Algorithm::OneShotLl, _) => 2.0 * (w - 1.0) * s,
            Contender::Flashcomm(_, Quantization::Int(q)) => {
                let (rs, ag) = q.bits_per_element();
                (w - 1.0) / w * s * (rs + ag) / 16.0
            }
            Contender::Flashcomm(_, Quantization::None) => 2.0 * (w - 1.0) / w * s,
            Contender::WithTransport(a, q, _) | Contender::Diagnostic(a, q, _) => Contender::Flashcomm(*a, *q).link_bytes(bytes, world),
        }
    }
}

/// The default contenders: NCCL, the unquantized one-shot and two-shot,
/// Flash at int8 / int4-int8 / int4 with groups of 128, and `Auto`
/// without and with INT8 allowed.
pub fn default_contenders() -> Vec<Contender> {
    vec![
        Contender::Nccl,
        Contender::Flashcomm(Algorithm::OneShot, Quantization::None),
        Contender::Flashcomm(Algorithm::OneShotLl, Quantization::None),
        Contender::Flashcomm(Algorithm::TwoShot, Quantization::None),
        Contender::Flashcomm(Algorithm::Flash, Quantization::INT8),
        Contender::Flashcomm(Algorithm::Flash, Quantization::INT4_INT8),
        Contender::Flashcomm(Algorithm::Flash, Quantization::INT4),
        Contender::Flashcomm(Algorithm::Auto, Quantization::None),
        Contender::Flashcomm(Algorithm::Auto, Quantization::INT8),
    ]
}

/// NCCL and Flash with each setting of a comma-separated list
/// (`int8,int4k4-int8`, spelled as `Quantization::parse` reads them).
pub fn flash_contenders(list: &str) -> Result<Vec<Contender>, flashcomm::Error> {
    let mut v = vec![Contender::Nccl];
    for setting in list.split(',').filter(|s| !s.trim().is_empty()) {
        v.push(Contender::Flashcomm(Algorithm::Flash, Quantization::parse(setting)?));
    }
    Ok(v)
}

/// Where the time goes: each two-shot variant whole, without one phase's
/// data work, and with barriers only.
pub fn phase_contenders() -> Vec<Contender> {
    let mut v = vec![Contender::Nccl];
    for (a, q) in [(Algorithm::TwoShot, Quantization::None), (Algorithm::Flash, Quantization::INT8), (Algorithm::Flash, Quantization::INT4)] {
        for skip in [PhaseSkip::NONE, PhaseSkip::STAGE, PhaseSkip::REDUCE, PhaseSkip::GATHER, PhaseSkip::ALL] {
            v.push(Contender::Diagnostic(a, q, skip));
        }
    }
    v
}

/// The transport comparison: every push/pull combination for the unquantized
/// two-shot and for Flash INT8 and INT4.
pub fn transport_contenders() -> Vec<Contender> {
    let mut v = vec![Contender::Nccl];
    for (a, q) in [(Algorithm::TwoShot, Quantization::None), (Algorithm::Flash, Quantization::INT8), (Algorithm::Flash, Quantization::INT4)] {
        for t in Transport::ALL {
            v.push(Contender::WithTransport(a, q, t));
        }
    }
    v
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// World sizes (ranks 0..W).
    pub worlds: Vec<usize>,
    /// Message sizes in bytes (bf16).
    pub sizes: Vec<usize>,
    /// Timed calls per row.
    pub iters: usize,
    /// Untimed calls first.
    pub warmup: usize,
    /// Contenders.
    pub contenders: Vec<Contender>,
    /// Largest message the one-shot is timed at (it moves (W-1)x the bytes).
    pub oneshot_max_bytes: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Write PNG plots next to the JSON.
    pub plot: bool,
    /// Time CUDA-graph replays of this many back-to-back calls per sample
    /// instead of eager calls (module docs).
    pub graph_calls: Option<usize>,
    /// Smoke test of the harness on one GPU: every rank on GPU 0
    /// (`Config::shared_devices`), no NCCL. The times mean nothing.
    pub shared_gpu: bool,
}

impl BenchOptions {
    /// The full sweep: W = 2 and 4, 16 KiB to 256 MiB (every power of 4
    /// and the powers of 2 between), 50 timed calls.
    pub fn full() -> Self {
        Self {
            worlds: vec![2, 4],
            sizes: (14..=28).map(|p| 1usize << p).collect(),
            iters: 50,
            warmup: 5,
            contenders: default_contenders(),
            oneshot_max_bytes: 16 << 20,
            progress: true,
            plot: true,
            graph_calls: None,
            shared_gpu: false,
        }
    }

    /// A short run for the main job: the GPUs present, every power of 4.
    pub fn quick(gpus: usize) -> Self {
        Self {
            worlds: vec![gpus.min(8)],
            sizes: (7..=14).map(|p| 1usize << (2 * p)).collect(),
            iters: 20,
            warmup: 3,
            ..Self::full()
        }
    }
}

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Ranks.
    pub world: usize,
    /// Message bytes (bf16).
    pub bytes: usize,
    /// Contender label.
    pub contender: String,
    /// Median time per call, microseconds.
    pub median_us: f64,
    /// 10th percentile.
    pub p10_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// Message bytes / time, GB/s.
    pub algbw_gbs: f64,
    /// algbw * 2(W-1)/W (nccl-tests convention), GB/s.
    pub busbw_gbs: f64,
    /// Bytes each GPU received over its links / time, GB/s (floor: ~450).
    pub link_gbs: f64,
    /// NCCL median / this median (same run).
    pub speedup_vs_nccl: Option<f64>,
    /// ||out - exact|| / ||exact|| on LLM-like data.
    pub rel_l2: f64,
    /// max |out - exact|.
    pub max_abs: f64,
    /// Timed calls.
    pub iters: usize,
    /// What `Auto` ran (for auto rows).
    pub plan: Option<String>,
}

/// Everything a run produced, plus where and when.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// UTC date of the run.
    pub date: String,
    /// GPU model.
    pub gpu: String,
    /// The command line.
    pub command: String,
    /// Method summary.
    pub method: String,
    /// Measured rows.
    pub rows: Vec<Row>,
    /// Thresholds for `Auto` derived from these rows, per world size.
    pub suggested_thresholds: Vec<SuggestedThresholds>,
}

/// `Auto` thresholds derived from a run for one world size.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SuggestedThresholds {
    /// Ranks.
    pub world: usize,
    /// One-shot up to this many bytes.
    pub oneshot_max_bytes: usize,
    /// Flash from this many bytes (`usize::MAX`: never faster).
    pub flash_min_bytes: usize,
    /// NCCL instead of the unquantized two-shot from this many bytes.
    pub nccl_min_bytes: usize,
}

/// Elements of each rank's host data block, tiled across large buffers.
const BLOCK: usize = 1 << 20;
/// Elements of the prefix the error columns are computed on.
const ERROR_PREFIX: usize = 4 << 20;

struct Sets {
    /// `inputs[set][rank]`.
    inputs: Vec<Vec<CudaSlice<bf16>>>,
    /// `blocks[set][rank]`: the host data tiled into each buffer.
    blocks: Vec<Vec<Vec<bf16>>>,
}

/// Every rank's data (the exact sums need all of it), uploaded for this
/// process's ranks (`Communicator::local_ranks`).
fn make_sets(comm: &Communicator, len: usize, sets: usize, seed: u64) -> flashcomm::Result<Sets> {
    let world = comm.world_size();
    let mut inputs = Vec::new();
    let mut blocks = Vec::new();
    for set in 0..sets {
        let block_len = len.min(BLOCK);
        let data: Vec<Vec<bf16>> = flashcomm::synth::rank_activations(seed + set as u64, world, block_len, 2048);
        let mut bufs = Vec::new();
        for r in comm.local_ranks() {
            let block = &data[r];
            let mut host = Vec::with_capacity(len);
            while host.len() < len {
                let take = block_len.min(len - host.len());
                host.extend_from_slice(&block[..take]);
            }
            bufs.push(comm.stream(r)?.clone_htod(&host)?);
        }
        inputs.push(bufs);
        blocks.push(data);
    }
    Ok(Sets { inputs, blocks })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Queues one call of `contender` on every rank.
fn issue(
    comm: &Communicator,
    nccl: Option<&NcclBaseline>,
    contender: Contender,
    opts: &CallOptions,
    set: &[CudaSlice<bf16>],
    outputs: &mut [CudaSlice<bf16>],
) -> flashcomm::Result<()> {
    match contender {
        Contender::Nccl => nccl.ok_or_else(|| flashcomm::Error::Nccl("NCCL contender without NCCL".into()))?.all_reduce(set, outputs),
        Contender::Diagnostic(_, _, skip) => comm.all_reduce_skipping_phases(set, outputs, opts, skip),
        _ => comm.all_reduce_with(set, outputs, opts),
    }
}

/// Runs `sample(i)` for `i` in `0..iters`, each bracketed by CUDA events on
/// every rank's stream; returns each sample's longest rank interval, in
/// microseconds (over the ranks of every process: with one process per
/// rank, the processes exchange their intervals).
fn time_samples(comm: &Communicator, iters: usize, mut sample: impl FnMut(usize) -> flashcomm::Result<()>) -> flashcomm::Result<Vec<f64>> {
    let locals = comm.local_ranks();
    let mut events: Vec<Vec<(CudaEvent, CudaEvent)>> = Vec::with_capacity(iters);
    for i in 0..iters {
        let mut pair = Vec::with_capacity(locals.len());
        for &r in &locals {
            let ctx = comm.context(r)?;
            pair.push((ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?, ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?));
        }
        for (&r, (start, _)) in locals.iter().zip(&pair) {
            start.record(comm.stream(r)?)?;
        }
        sample(i)?;
        for (&r, (_, end)) in locals.iter().zip(&pair) {
            end.record(comm.stream(r)?)?;
        }
        events.push(pair);
    }
    comm.synchronize()?;
    let mut times = Vec::with_capacity(iters);
    for pair in &events {
        let mut longest = 0.0f64;
        for (start, end) in pair {
            longest = longest.max(start.elapsed_ms(end)? as f64 * 1000.0);
        }
        times.push(longest);
    }
    if locals.len() < comm.world_size() {
        let mine: Vec<u8> = times.iter().flat_map(|t| t.to_le_bytes()).collect();
        for theirs in comm.all_gather_host(&mine, std::time::Duration::from_secs(60))? {
            if theirs.len() != mine.len() {
                return Err(flashcomm::Error::InvalidConfig(format!("a rank sent {} bytes of timings, expected {}", theirs.len(), mine.len())));
            }
            for (t, bytes) in times.iter_mut().zip(theirs.chunks_exact(8)) {
                *t = t.max(f64::from_le_bytes(bytes.try_into().expect("8 bytes")));
            }
        }
    }
    Ok(times)
}

/// Times one contender at one size; returns per-call times in microseconds.
fn time_calls(
    comm: &Communicator,
    nccl: Option<&NcclBaseline>,
    contender: Contender,
    sets: &Sets,
    outputs: &mut [CudaSlice<bf16>],
    warmup: usize,
    iters: usize,
) -> flashcomm::Result<Vec<f64>> {
    let opts = contender.options();
    for i in 0..warmup {
        issue(comm, nccl, contender, &opts, &sets.inputs[i % sets.inputs.len()], outputs)?;
    }
    comm.synchronize()?;
    time_samples(comm, iters, |i| issue(comm, nccl, contender, &opts, &sets.inputs[i % sets.inputs.len()], outputs))
}

/// Times one contender at one size under CUDA-graph replay (module docs):
/// per-call times in microseconds, one sample per replay. Returns the
/// input set the last call of a replay used.
#[allow(clippy::too_many_arguments)]
fn time_graph_replays(
    comm: &Communicator,
    nccl: Option<&NcclBaseline>,
    contender: Contender,
    sets: &Sets,
    outputs: &mut [CudaSlice<bf16>],
    warmup: usize,
    iters: usize,
    calls: usize,
) -> flashcomm::Result<(Vec<f64>, usize)> {
    use flashcomm::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let locals = comm.local_ranks();
    let opts = contender.options();
    comm.synchronize()?;
    // Relaxed: every rank's stream captures at once, and ending one capture
    // instantiates its graph (an allocating call, which the stricter modes
    // refuse while the other streams still capture).
    for &r in &locals {
        comm.stream(r)?.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
    }
    let issued = (0..calls).try_for_each(|i| issue(comm, nccl, contender, &opts, &sets.inputs[i % sets.inputs.len()], outputs));
    // Every capture is ended, also after a failed call.
    let graphs: Vec<_> = locals.iter().map(|&r| Ok(comm.stream(r)?.end_capture(CUgraphInstantiate_flags(0))?)).collect::<flashcomm::Result<_>>()?;
    issued?;
    let graphs: Vec<_> = graphs.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| flashcomm::Error::InvalidConfig("stream capture produced no graph".into()))?;
    let replay = || graphs.iter().try_for_each(|g| g.launch());
    for g in &graphs {
        g.upload()?;
    }
    for _ in 0..warmup.div_ceil(calls).max(1) {
        replay()?;
    }
    comm.synchronize()?;
    let times = time_samples(comm, iters, |_| Ok(replay()?))?;
    Ok((times.into_iter().map(|t| t / calls as f64).collect(), (calls - 1) % sets.inputs.len()))
}

/// Error of this process's first rank's output (prefix) against the exact
/// sum of the set used last (every rank's output is the same).
fn error_stats(comm: &Communicator, sets: &Sets, last_set: usize, output: &CudaSlice<bf16>, len: usize) -> flashcomm::Result<(f64, f64)> {
    let n = len.min(ERROR_PREFIX);
    let out = comm.stream(comm.local_ranks()[0])?.clone_dtoh(&output.slice(0..n))?;
    let blocks = &sets.blocks[last_set];
    let (mut num, mut den, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (i, y) in out.iter().enumerate() {
        let exact: f64 = blocks.iter().map(|b| b[i % b.len()].to_f32() as f64).sum();
        let e = y.to_f32() as f64 - exact;
        num += e * e;
        den += exact * exact;
        max_abs = max_abs.max(e.abs());
    }
    Ok(((num / den.max(f64::MIN_POSITIVE)).sqrt(), max_abs))
}

/// Runs the sweep; returns the report (rows in measurement order).
pub fn run(opts: &BenchOptions, command: &str) -> flashcomm::Result<Report> {
    let mut rows = Vec::new();
    let total = opts.worlds.len() * opts.sizes.len() * opts.contenders.len();
    let bar = if opts.progress { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}]").unwrap());
    let mut gpu = String::new();
    for &world in &opts.worlds {
        if world > flashcomm::gpu_count() && !opts.shared_gpu {
            bar.println(format!("skipping W={world}: only {} GPUs", flashcomm::gpu_count()));
            bar.inc((opts.sizes.len() * opts.contenders.len()) as u64);
            continue;
        }
        let devices: Vec<usize> = if opts.shared_gpu { vec![0; world] } else { (0..world).collect() };
        // Environment overrides apply (e.g. `FLASHCOMM_MAX_PIECE_ELEMS` for piece-size sweeps).
        let config = Config { shared_devices: opts.shared_gpu, ..Config::default().with_env_overrides()? };
        let comm = Communicator::new(&devices, config, &flashcomm::KERNELS)?;
        gpu = comm.gpu_name().to_string();
        // NCCL refuses ranks that share a GPU.
        let nccl = if opts.shared_gpu {
            None
        } else {
            match NcclBaseline::new(&comm) {
                Ok(n) => Some(n),
                Err(e) => {
                    bar.println(format!("NCCL unavailable ({e}); its rows are skipped"));
                    None
                }
            }
        };
        measure_world(&comm, nccl.as_ref(), opts, &bar, &mut rows)?;
    }
    bar.finish_and_clear();
    // A smoke test's times suggest nothing.
    let suggested_thresholds = if opts.shared_gpu { vec![] } else { opts.worlds.iter().filter_map(|&w| suggest_thresholds(&rows, w)).collect() };
    Ok(report(opts, command, gpu, rows, suggested_thresholds, "one host thread for all ranks"))
}

/// Every size and contender of `opts` on `comm` (its ranks in this process;
/// with one process per rank, every process runs this with the others).
fn measure_world(comm: &Communicator, nccl: Option<&NcclBaseline>, opts: &BenchOptions, bar: &indicatif::ProgressBar, rows: &mut Vec<Row>) -> flashcomm::Result<()> {
    let world = comm.world_size();
    // One stream per rank drives everything: cudarc's per-buffer event
    // bookkeeping would only add host work, equally for every contender.
    for r in comm.local_ranks() {
        // SAFETY: every buffer of this run is used on its rank's one stream only.
        unsafe { comm.context(r)?.disable_event_tracking() };
    }
    {
        for &bytes in &opts.sizes {
            let len = bytes / 2;
            let nsets = (256usize << 20).div_ceil(bytes).clamp(2, 16);
            let sets = make_sets(comm, len, nsets, bytes as u64)?;
            let mut outputs: Vec<CudaSlice<bf16>> = comm
                .local_ranks()
                .into_iter()
                .map(|r| Ok(comm.stream(r)?.clone_htod(&vec![bf16::from_bits(0xFFFF); len])?))
                .collect::<flashcomm::Result<_>>()?;
            let mut nccl_median = None;
            for &contender in &opts.contenders {
                bar.set_message(format!("W={world} {} {}", human_bytes(bytes), contender.label()));
                let skip = (contender == Contender::Nccl && nccl.is_none())
                    || (matches!(contender, Contender::Flashcomm(Algorithm::OneShot, _)) && bytes > opts.oneshot_max_bytes)
                    || (matches!(contender, Contender::Flashcomm(Algorithm::OneShotLl, _)) && bytes / 2 > comm.ll_max_elems());
                if skip {
                    bar.inc(1);
                    continue;
                }
                let (mut times, last_set) = match opts.graph_calls {
                    Some(calls) => time_graph_replays(comm, nccl, contender, &sets, &mut outputs, opts.warmup, opts.iters, calls.max(1))?,
                    None => (time_calls(comm, nccl, contender, &sets, &mut outputs, opts.warmup, opts.iters)?, (opts.iters - 1) % nsets),
                };
                times.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let median = percentile(&times, 0.5);
                let (rel_l2, max_abs) = error_stats(comm, &sets, last_set, &outputs[0], len)?;
                if contender == Contender::Nccl {
                    nccl_median = Some(median);
                }
                let plan = match contender {
                    Contender::Flashcomm(Algorithm::Auto, _) => Some(comm.plan(len, flashcomm::Dtype::Bf16, &contender.options())?.label()),
                    _ => None,
                };
                let secs = median * 1e-6;
                rows.push(Row {
                    world,
                    bytes,
                    contender: contender.label(),
                    median_us: median,
                    p10_us: percentile(&times, 0.1),
                    p90_us: percentile(&times, 0.9),
                    algbw_gbs: bytes as f64 / secs / 1e9,
                    busbw_gbs: bytes as f64 / secs / 1e9 * 2.0 * (world as f64 - 1.0) / world as f64,
                    link_gbs: contender.link_bytes(bytes, world) / secs / 1e9,
                    speedup_vs_nccl: nccl_median.map(|n| n / median),
                    rel_l2,
                    max_abs,
                    iters: opts.iters,
                    plan,
                });
                bar.inc(1);
            }
        }
    }
    Ok(())
}

fn report(opts: &BenchOptions, command: &str, gpu: String, rows: Vec<Row>, suggested_thresholds: Vec<SuggestedThresholds>, hosts: &str) -> Report {
    Report {
        date: utc_date(),
        gpu,
        command: command.to_string(),
        method: format!(
            "{}{}; out of place; inputs rotated over >=256 MiB per GPU; CUDA events per rank, per-call time = longest rank; median of the timed samples",
            if opts.shared_gpu { "SMOKE TEST, every rank on GPU 0 (times mean nothing); " } else { "" },
            match opts.graph_calls {
                Some(k) => format!("CUDA-graph replay, {k} back-to-back calls per graph and rank, {hosts} launching the graphs, sample = replay time / {k}"),
                None => format!("eager, {hosts}"),
            }
        ),
        rows,
        suggested_thresholds,
    }
}

/// One rank of a run with one process per rank (`--procs`): joins the
/// other ranks' processes (rank 0 listens and prints `id <unique id>` on
/// stdout for the launcher), creates this process's rank on GPU `rank`
/// with `Communicator::init_rank`, and NCCL across the processes
/// (`ncclCommInitRank`, rank 0's id carried by the bootstrap), then runs
/// `opts` at world size `world`. Rank 0 returns the report.
pub fn run_process_rank(opts: &BenchOptions, command: &str, rank: usize, world: usize, id: Option<&str>) -> flashcomm::Result<Option<Report>> {
    use flashcomm::bootstrap::{Bootstrap, Identity, Listener};
    use std::io::Write;
    let timeout = std::time::Duration::from_secs(120);
    let config = Config::default().with_env_overrides()?;
    let identity = Identity::current(&config, &flashcomm::KERNELS);
    let bootstrap = match id {
        None => {
            let listener = Listener::loopback()?;
            println!("id {}", listener.id());
            let _ = std::io::stdout().flush();
            // Rank 0's payload: NCCL's unique id (empty without NCCL).
            let nccl_id = NcclComms::unique_id().unwrap_or_default();
            Bootstrap::root(listener, world, &identity, &nccl_id, timeout)?
        }
        Some(id) => Bootstrap::join(&id.parse()?, rank, world, &identity, &[], timeout)?,
    };
    let (bootstrap, payloads) = bootstrap;
    let started = std::time::Instant::now();
    let comm = Communicator::init_rank(bootstrap, rank, config, &flashcomm::KERNELS)?;
    if rank == 0 {
        println!("rank 0 of {world}: Communicator::init_rank took {:.3} s (kernels: {})", started.elapsed().as_secs_f64(), comm.kernel_code(rank)?);
    }
    let nccl = if payloads[0].is_empty() { None } else { Some(NcclBaseline::for_process(&comm, &payloads[0])?) };
    let bar = indicatif::ProgressBar::hidden();
    let mut rows = Vec::new();
    let opts = BenchOptions { worlds: vec![world], ..opts.clone() };
    measure_world(&comm, nccl.as_ref(), &opts, &bar, &mut rows)?;
    if rank != 0 {
        return Ok(None);
    }
    let suggested = suggest_thresholds(&rows, world).into_iter().collect();
    Ok(Some(report(&opts, command, comm.gpu_name().to_string(), rows, suggested, "one process per rank, each issuing its own rank's calls")))
}

/// `Auto` thresholds from measured rows: the one-shot up to the largest size
/// below which it always beat the two-shot; Flash (INT8, the slowest allowed
/// quantization) from the smallest size above which it always beat NCCL and
/// both unquantized algorithms; NCCL from the smallest size above which it
/// always beat both unquantized algorithms.
pub fn suggest_thresholds(rows: &[Row], world: usize) -> Option<SuggestedThresholds> {
    let get = |label: &str, bytes: usize| {
        rows.iter().find(|r| r.world == world && r.bytes == bytes && r.contender == label).map(|r| r.median_us)
    };
    let mut sizes: Vec<usize> = rows.iter().filter(|r| r.world == world).map(|r| r.bytes).collect();
    sizes.sort();
    sizes.dedup();
    if sizes.is_empty() {
        return None;
    }
    let mut oneshot_max = 0;
    for &b in &sizes {
        match (get("oneshot", b), get("twoshot", b)) {
            (Some(o), Some(t)) if o <= t => oneshot_max = b,
            _ => break,
        }
    }
    let best_plain = |b: usize| [get("oneshot", b), get("twoshot", b)].into_iter().flatten().fold(f64::INFINITY, f64::min);
    let mut flash_min = usize::MAX;
    for &b in sizes.iter().rev() {
        let rival = best_plain(b).min(get("nccl", b).unwrap_or(f64::INFINITY));
        match get(&format!("flash-{}", Quantization::INT8.label()), b) {
            Some(f) if f < rival => flash_min = b,
            _ => break,
        }
    }
    let mut nccl_min = usize::MAX;
    for &b in sizes.iter().rev() {
        match get("nccl", b) {
            Some(n) if n < best_plain(b) => nccl_min = b,
            _ => break,
        }
    }
    Some(SuggestedThresholds { world, oneshot_max_bytes: oneshot_max, flash_min_bytes: flash_min, nccl_min_bytes: nccl_min })
}

/// `16 KiB`, `4 MiB`, ...
pub fn human_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}

pub(crate) fn utc_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = secs / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs % 86_400 / 3600, secs % 3600 / 60)
}

/// The rows as a markdown table per world size.
pub fn markdown(report: &Report) -> String {
    let mut s = format!("Method: {}.\n", report.method);
    let mut worlds: Vec<usize> = report.rows.iter().map(|r| r.world).collect();
    worlds.dedup();
    for w in worlds {
        s += &format!("\n### W = {w} ({}, {})\n\n", report.gpu, report.date);
        s += "| size | contender | median us | p10-p90 us | algbw GB/s | busbw GB/s | link GB/s | vs NCCL | rel L2 err | max abs err |\n";
        s += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for r in report.rows.iter().filter(|r| r.world == w) {
            s += &format!(
                "| {} | {}{} | {:.1} | {:.1}-{:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2e} | {:.2e} |\n",
                human_bytes(r.bytes),
                r.contender,
                r.plan.as_ref().map(|p| format!(" -> {p}")).unwrap_or_default(),
                r.median_us,
                r.p10_us,
                r.p90_us,
                r.algbw_gbs,
                r.busbw_gbs,
                r.link_gbs,
                r.speedup_vs_nccl.map(|x| format!("{x:.2}x")).unwrap_or("-".into()),
                r.rel_l2,
                r.max_abs
            );
        }
    }
    for t in &report.suggested_thresholds {
        s += &format!(
            "\nSuggested Auto thresholds for W={}: one-shot up to {} bytes, Flash from {} bytes, NCCL from {} bytes\n",
            t.world, t.oneshot_max_bytes, t.flash_min_bytes, t.nccl_min_bytes
        );
    }
    s
}

/// Writes `<dir>/allreduce-w<W>.png` (latency and speedup vs size, log-log)
/// for every world size in the report.
pub fn plot(report: &Report, dir: &Path) -> Result<Vec<std::path::PathBuf>, Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let mut worlds: Vec<usize> = report.rows.iter().map(|r| r.world).collect();
    worlds.dedup();
    let mut written = Vec::new();
    for w in worlds {
        let rows: Vec<&Row> = report.rows.iter().filter(|r| r.world == w).collect();
        let path = dir.join(format!("allreduce-w{w}.png"));
        written.push(path.clone());
        let root = BitMapBackend::new(&path, (1400, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(700);
        let mut labels: Vec<String> = rows.iter().map(|r| r.contender.clone()).collect();
        labels.dedup();
        labels.sort();
        labels.dedup();
        let (xmin, xmax) = (rows.iter().map(|r| r.bytes).min().unwrap_or(1) as f64, rows.iter().map(|r| r.bytes).max().unwrap_or(2) as f64);
        let (tmin, tmax) = rows.iter().fold((f64::INFINITY, 0.0f64), |(a, b), r| (a.min(r.median_us), b.max(r.median_us)));
        let mut chart = ChartBuilder::on(&left)
            .caption(format!("all-reduce latency, W={w}, {}", report.gpu), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale(), (tmin * 0.8..tmax * 1.25).log_scale())?;
        chart.configure_mesh().x_desc("message bytes (bf16)").y_desc("median us").x_label_formatter(&|b| human_bytes(*b as usize)).draw()?;
        for (i, label) in labels.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = rows.iter().filter(|r| &r.contender == label).map(|r| (r.bytes as f64, r.median_us)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw()?;
        let smax = rows.iter().filter_map(|r| r.speedup_vs_nccl).fold(1.0f64, f64::max);
        let smin = rows.iter().filter_map(|r| r.speedup_vs_nccl).fold(1.0f64, f64::min);
        let mut chart = ChartBuilder::on(&right)
            .caption(format!("speedup vs NCCL (same run), W={w}"), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale(), (smin * 0.8..smax * 1.25).log_scale())?;
        chart.configure_mesh().x_desc("message bytes (bf16)").y_desc("NCCL time / time").x_label_formatter(&|b| human_bytes(*b as usize)).draw()?;
        chart.draw_series(LineSeries::new(vec![(xmin, 1.0), (xmax, 1.0)], BLACK.stroke_width(1)))?;
        for (i, label) in labels.iter().enumerate().filter(|(_, l)| l.as_str() != "nccl") {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> =
                rows.iter().filter(|r| &r.contender == label).filter_map(|r| r.speedup_vs_nccl.map(|s| (r.bytes as f64, s))).collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw()?;
        root.present()?;
    }
    Ok(written)
}

/// Runs `opts`, prints the table, and writes JSON + PNGs into `out`.
pub fn run_and_report(opts: &BenchOptions, out: Option<&Path>, command: &str) -> flashcomm::Result<Report> {
    let report = run(opts, command)?;
    write_report(&report, opts, out)?;
    Ok(report)
}

/// Prints the table, and writes JSON + PNGs into `out`.
pub fn write_report(report: &Report, opts: &BenchOptions, out: Option<&Path>) -> flashcomm::Result<()> {
    let report = report.clone();
    println!("{}", markdown(&report));
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| flashcomm::Error::InvalidConfig(format!("{}: {e}", dir.display())))?;
        let json = serde_json::to_string_pretty(&report).expect("report serialises");
        std::fs::write(dir.join("allreduce.json"), json).map_err(|e| flashcomm::Error::InvalidConfig(e.to_string()))?;
        if !opts.plot {
            println!("wrote {}", dir.join("allreduce.json").display());
            return Ok(());
        }
        match plot(&report, dir) {
            Ok(files) => println!("wrote {} and {files:?}", dir.join("allreduce.json").display()),
            Err(e) => eprintln!("plot failed: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(world: usize, bytes: usize, contender: &str, us: f64, nccl: f64) -> Row {
        Row {
            world,
            bytes,
            contender: contender.into(),
            median_us: us,
            p10_us: us * 0.9,
            p90_us: us * 1.1,
            algbw_gbs: 1.0,
            busbw_gbs: 1.0,
            link_gbs: 1.0,
            speedup_vs_nccl: Some(nccl / us),
            rel_l2: 1e-3,
            max_abs: 1e-2,
            iters: 50,
            plan: None,
        }
    }

    #[test]
    fn thresholds_follow_the_crossovers() {
        let flash = format!("flash-{}", Quantization::INT8.label());
        let mut rows = Vec::new();
        for (i, &b) in [1usize << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22].iter().enumerate() {
            rows.push(row(4, b, "oneshot", [5.0, 6.0, 9.0, 30.0, 100.0][i], 50.0));
            rows.push(row(4, b, "twoshot", [8.0, 8.5, 10.0, 20.0, 60.0][i], 50.0));
            rows.push(row(4, b, &flash, [12.0, 12.0, 11.0, 15.0, 40.0][i], 50.0));
            rows.push(row(4, b, "nccl", [20.0, 20.0, 20.0, 19.0, 50.0][i], 50.0));
        }
        let t = suggest_thresholds(&rows, 4).unwrap();
        assert_eq!(t.oneshot_max_bytes, 1 << 18);
        assert_eq!(t.flash_min_bytes, 1 << 20);
        assert_eq!(t.nccl_min_bytes, 1 << 20);
        assert!(suggest_thresholds(&rows, 2).is_none());
    }

    #[test]
    fn report_renders_as_table_and_plot() {
        let rows = vec![row(2, 1 << 14, "nccl", 20.0, 20.0), row(2, 1 << 14, "twoshot", 10.0, 20.0), row(2, 1 << 20, "nccl", 40.0, 40.0), row(2, 1 << 20, "twoshot", 30.0, 40.0)];
        let report = Report { date: "d".into(), gpu: "g".into(), command: "c".into(), method: "m".into(), rows, suggested_thresholds: vec![] };
        let md = markdown(&report);
        assert!(md.contains("| 16 KiB | twoshot | 10.0 |") && md.contains("2.00x"), "{md}");
        let dir = std::env::temp_dir().join(format!("flashcomm-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = plot(&report, &dir).unwrap();
        let png = std::fs::read(&files[0]).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "PNG of {} bytes", png.len());
        std::fs::remove_dir_all(&dir).ok();
    }
}
