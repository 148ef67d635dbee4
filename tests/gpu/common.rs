//! Shared helpers of the GPU suite: data, transfers, comparisons, CUDA graphs.
use flashcomm::synth::Rng;
use flashcomm::{Communicator, HostElement};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream};
use libtest_mimic::Failed;
use std::sync::Arc;

/// The default configuration without the NCCL fallback (every result must
/// equal the CPU reference bit for bit), with the `FLASHCOMM_*` environment
/// applied (the sanitizer step turns the watchdog off: `FLASHCOMM_TIMEOUT_MS=0`).
pub fn exact_config() -> flashcomm::Config {
    let config = flashcomm::Config::default().with_env_overrides().expect("FLASHCOMM_* variables parse");
    flashcomm::Config { nccl_fallback: false, ..config }
}

/// `Result` of a test body.
pub type TestResult = Result<(), Failed>;

/// Turns any error into a test failure with context.
pub fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, Failed> {
    r.map_err(|e| Failed::from(format!("{what}: {e}")))
}

/// The run's seed: `FLASHCOMM_SEED` or the clock; printed so a failure replays.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("FLASHCOMM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("{test}: seed {seed} (replay with FLASHCOMM_SEED={seed})");
    seed
}

/// Kinds of input data the random cases draw from.
#[derive(Clone, Copy, Debug)]
pub enum DataKind {
    /// N(0, 1) bulk with a few large outlier channels, like LLM activations.
    Activations,
    /// Plain normal data at a random scale.
    Normal,
    /// Runs of constant groups mixed with normal data.
    ConstantGroups,
    /// Values near the type's limits (f16: 65504; bf16: 3.4e38 / W).
    NearLimits,
    /// Subnormals and tiny values.
    Subnormal,
    /// A few magnitudes with random signs, zeros of both signs included:
    /// ties everywhere for the spike selection (`codec::spikes`).
    Ties,
    /// Values near the type's limits, not divided by the world size: sums
    /// overflow (f16: round to inf after the f32 sum; bf16: the f32 sum
    /// itself), the non-finite rule with and without spikes.
    Overflowing,
}

pub const KINDS: [DataKind; 7] = [
    DataKind::Activations,
    DataKind::Normal,
    DataKind::ConstantGroups,
    DataKind::NearLimits,
    DataKind::Subnormal,
    DataKind::Ties,
    DataKind::Overflowing,
];

/// Per-rank inputs of `len` elements.
pub fn make_inputs<T: HostElement>(rng: &mut Rng, kind: DataKind, world: usize, len: usize) -> Vec<Vec<T>> {
    let max = match T::DTYPE {
        flashcomm::Dtype::F16 => 65504.0f64,
        flashcomm::Dtype::Bf16 => 3.3e38,
    };
    let hidden = 64 * rng.range(1, 64);
    let outliers: Vec<usize> = (0..4).map(|_| rng.range(0, hidden - 1)).collect();
    let scale = 2f64.powi(rng.range(0, 16) as i32 - 8);
    (0..world)
        .map(|_| match kind {
            DataKind::Activations => flashcomm::synth::activations(rng, len, hidden, scale, &outliers),
            DataKind::Normal => (0..len).map(|_| T::from_f32((rng.normal() * scale) as f32)).collect(),
            DataKind::ConstantGroups => {
                let mut v = Vec::with_capacity(len);
                while v.len() < len {
                    let run = rng.range(1, 300).min(len - v.len());
                    if rng.uniform() < 0.5 {
                        let c = T::from_f32((rng.normal() * scale) as f32);
                        v.extend(std::iter::repeat_n(c, run));
                    } else {
                        v.extend((0..run).map(|_| T::from_f32((rng.normal() * scale) as f32)));
                    }
                }
                v
            }
            // Divided by the world size so the f32 sum stays finite; f16
            // outputs may still round to inf, identically on both sides.
            DataKind::NearLimits => (0..len).map(|_| T::from_f32(((rng.uniform() * 2.0 - 1.0) * max / world as f64) as f32)).collect(),
            DataKind::Subnormal => {
                let tiny = match T::DTYPE {
                    flashcomm::Dtype::F16 => 5.96e-8,
                    flashcomm::Dtype::Bf16 => 9.2e-41,
                };
                (0..len).map(|_| T::from_f32(((rng.range(0, 2000) as f64 - 1000.0) * tiny) as f32)).collect()
            }
            DataKind::Overflowing => (0..len)
                .map(|_| {
                    let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                    T::from_f32((sign * (0.6 + 0.3 * rng.uniform()) * max) as f32)
                })
                .collect(),
            DataKind::Ties => (0..len)
                .map(|_| {
                    let magnitude = [0.0, 1.0, 2.0, 8.0][rng.range(0, 3)];
                    let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                    T::from_f32((sign * magnitude * scale) as f32)
                })
                .collect(),
        })
        .collect()
}

/// Copies per-rank host data to the communicator's GPUs.
/// Uploads `data[r]` (one entry per rank of the world) for each of this
/// process's ranks (`Communicator::local_ranks`: every rank, or the one of a
/// per-process communicator); buffers in local-rank order, as the all-rank
/// entry points take them.
pub fn upload<T: HostElement>(comm: &Communicator, data: &[Vec<T>]) -> Result<Vec<CudaSlice<T>>, Failed> {
    comm.local_ranks().into_iter().map(|r| ctx(ctx(comm.stream(r), "stream")?.clone_htod(&data[r]), "upload")).collect()
}

/// Per-rank output buffers filled with a NaN poison pattern.
pub fn poisoned<T: HostElement>(comm: &Communicator, len: usize) -> Result<Vec<CudaSlice<T>>, Failed> {
    let poison = vec![T::from_bits(0xFFFF); len];
    comm.local_ranks().into_iter().map(|r| ctx(ctx(comm.stream(r), "stream")?.clone_htod(&poison), "poison")).collect()
}

/// Copies every rank's buffer back.
pub fn download<T: HostElement>(comm: &Communicator, bufs: &[CudaSlice<T>]) -> Result<Vec<Vec<T>>, Failed> {
    bufs.iter().zip(comm.local_ranks()).map(|(b, r)| ctx(ctx(comm.stream(r), "stream")?.clone_dtoh(b), "download")).collect()
}

/// Bitwise comparison of every rank's output with the expected bits.
pub fn compare_bits<T: HostElement>(outputs: &[Vec<T>], expected: &[T], what: &str) -> TestResult {
    for (r, out) in outputs.iter().enumerate() {
        if out.len() != expected.len() {
            return Err(format!("{what}: rank {r} returned {} elements, expected {}", out.len(), expected.len()).into());
        }
        let wrong: Vec<usize> = (0..out.len()).filter(|&i| out[i].to_bits() != expected[i].to_bits()).collect();
        if let Some(&i) = wrong.first() {
            return Err(format!(
                "{what}: rank {r}: {} of {} elements differ from the reference; first at {i}: got {:#06x} ({:e}), expected {:#06x} ({:e})",
                wrong.len(),
                out.len(),
                out[i].to_bits(),
                out[i].to_f32(),
                expected[i].to_bits(),
                expected[i].to_f32()
            )
            .into());
        }
    }
    Ok(())
}

/// A communicator of `world` ranks on the GPUs there are: one rank per GPU
/// where there are enough, else ranks spread round-robin and share GPUs
/// (`Config::shared_devices`). Returns it with its device list.
pub fn communicator_on_gpus_there_are(world: usize, config: flashcomm::Config) -> Result<(Communicator, Vec<usize>), Failed> {
    let gpus = flashcomm::gpu_count();
    let devices: Vec<usize> = (0..world).map(|r| r % gpus.clamp(1, world)).collect();
    let config = flashcomm::Config { shared_devices: gpus < world, ..config };
    let comm = ctx(Communicator::new(&devices, config, &flashcomm::KERNELS), &format!("create a communicator on {devices:?}"))?;
    Ok((comm, devices))
}

/// One CUDA graph per rank: what `issue(rank, stream)` queues on a new
/// stream of that rank, captured. Each capture is ended, also when `issue`
/// fails. Pointers for the calls are best taken beforehand (on the
/// communicator's streams), as cudarc records events when handing them out.
pub fn capture_per_rank(
    comm: &Communicator,
    mut issue: impl FnMut(usize, &CudaStream) -> flashcomm::Result<()>,
    what: &str,
) -> Result<Vec<(Arc<CudaStream>, CudaGraph)>, Failed> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let mut graphs = Vec::with_capacity(comm.world_size());
    for r in comm.local_ranks() {
        let stream = ctx(ctx(comm.context(r), "ctx")?.new_stream(), "new_stream")?;
        ctx(stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "begin capture")?;
        let issued = issue(r, &stream);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        ctx(issued, &format!("{what}: capture rank {r}"))?;
        let graph = ctx(graph, "end capture")?.ok_or_else(|| format!("{what}: rank {r}: capture produced no graph"))?;
        graphs.push((stream, graph));
    }
    Ok(graphs)
}

/// Replays every rank's graph once and waits for all of them, reporting
/// the communicator's errors.
pub fn replay_all(comm: &Communicator, graphs: &[(Arc<CudaStream>, CudaGraph)], what: &str) -> TestResult {
    for (_, graph) in graphs {
        ctx(graph.launch(), what)?;
    }
    for (stream, _) in graphs {
        ctx(stream.synchronize(), what)?;
    }
    ctx(comm.synchronize(), what)
}

/// The real-activation fixture (row-parallel partial sums of SmolLM2-135M).
#[path = "../support/fixture.rs"]
pub mod fixture;

/// A spin kernel (hand-written PTX, so this test needs nothing from the
/// library): every thread waits until `%globaltimer` passes start + `ns`.
pub const BUSY_PTX: &str = r#"
.version 7.0
.target sm_80
.address_size 64
.visible .entry busy_wait(.param .u64 ns)
{
    .reg .pred %p;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [ns];
    mov.u64 %rd2, %globaltimer;
    add.u64 %rd3, %rd2, %rd1;
WAIT:
    mov.u64 %rd4, %globaltimer;
    setp.lt.u64 %p, %rd4, %rd3;
    @%p bra WAIT;
    ret;
}
"#;

/// [`BUSY_PTX`]'s kernel loaded on `context`.
pub fn busy_kernel(context: &Arc<cudarc::driver::CudaContext>) -> Result<cudarc::driver::CudaFunction, Failed> {
    let module = ctx(context.load_module(cudarc::nvrtc::Ptx::from_src(BUSY_PTX)), "load busy_wait")?;
    ctx(module.load_function("busy_wait"), "busy_wait")
}

/// Queues one warp of [`BUSY_PTX`] spinning `ns` nanoseconds on `stream`.
pub fn spin(stream: &CudaStream, busy: &cudarc::driver::CudaFunction, ns: u64) -> TestResult {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: busy_wait takes one u64 and touches no memory.
    ctx(unsafe { stream.launch_builder(busy).arg(&ns).launch(one) }, "launch busy_wait")?;
    Ok(())
}
