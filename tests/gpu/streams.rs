//! Calls on an engine's streams: the candle situation (buffers on a
//! context's per-thread or legacy default stream, cudarc's multi-stream mode
//! off, so cudarc records no events), a communicator built on the engine's
//! own streams, views into bigger buffers, and which kernel code loads.
//!
//! Each call is made right after a write to its input on the engine's
//! stream (queued behind a 20 ms spin, so a collective that does not wait
//! for it reads the poison that was there) and is followed by a read of its
//! output on the engine's stream (a copy that, unordered, would copy poison).
use crate::common::*;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashcomm::reference::reference_all_reduce;
use flashcomm::synth::Rng;
use flashcomm::{Algorithm, CallOptions, Communicator, Dtype, Error, Quantization, KERNELS};
use half::bf16;
use std::sync::Arc;

const SPIN_NS: u64 = 20_000_000;

const SETTINGS: [(Algorithm, Quantization, usize); 3] =
    [(Algorithm::OneShot, Quantization::None, 4096), (Algorithm::TwoShot, Quantization::None, 100_000), (Algorithm::Flash, Quantization::INT8, 300_000)];

fn opts(algorithm: Algorithm, quantization: Quantization) -> CallOptions {
    CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), ..Default::default() }
}

/// One engine GPU: a context object of its own (not the communicator's),
/// its stream, the spin kernel.
struct Engine {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    busy: CudaFunction,
}

impl Engine {
    fn new(device: usize, per_thread: bool) -> Result<Self, libtest_mimic::Failed> {
        let context = ctx(CudaContext::new(device), "engine context")?;
        let stream = if per_thread { context.per_thread_stream() } else { context.default_stream() };
        let busy = busy_kernel(&context)?;
        Ok(Self { context, stream, busy })
    }

    fn multi_stream(&self) -> bool {
        self.context.is_in_multi_stream_mode()
    }

    /// Poisoned input and output, and the source of the later write.
    fn buffers(&self, data: &[bf16]) -> Result<(CudaSlice<bf16>, CudaSlice<bf16>, CudaSlice<bf16>), libtest_mimic::Failed> {
        let poison = vec![bf16::from_bits(0xFFFF); data.len()];
        let input = ctx(self.stream.clone_htod(&poison), "poison input")?;
        let output = ctx(self.stream.clone_htod(&poison), "poison output")?;
        let source = ctx(self.stream.clone_htod(data), "source")?;
        ctx(self.stream.synchronize(), "uploads")?;
        Ok((input, output, source))
    }

    /// The write right before the call: a spin, then source -> input.
    fn write(&self, source: &CudaSlice<bf16>, input: &mut CudaSlice<bf16>) -> TestResult {
        spin(&self.stream, &self.busy, SPIN_NS)?;
        ctx(self.stream.memcpy_dtod(source, input), "write input")
    }

    /// The read right after the call: output -> a fresh buffer, then back to the host.
    fn read(&self, output: &CudaSlice<bf16>) -> Result<Vec<bf16>, libtest_mimic::Failed> {
        let mut copy = ctx(self.stream.alloc_zeros::<bf16>(output.len()), "read buffer")?;
        ctx(self.stream.memcpy_dtod(output, &mut copy), "read output")?;
        ctx(self.stream.clone_dtoh(&copy), "download")
    }
}

fn engines(devices: &[usize], per_thread: bool) -> Result<Vec<Engine>, libtest_mimic::Failed> {
    devices.iter().map(|&d| Engine::new(d, per_thread)).collect()
}

/// The engines as the per-rank helpers take them (one engine may serve two ranks).
fn each(engines: &[Engine]) -> Vec<&Engine> {
    engines.iter().collect()
}

type Buffers = (Vec<CudaSlice<bf16>>, Vec<CudaSlice<bf16>>, Vec<CudaSlice<bf16>>);

/// Every engine's poisoned inputs and outputs and write sources.
fn engine_buffers(engines: &[&Engine], data: &[Vec<bf16>]) -> Result<Buffers, libtest_mimic::Failed> {
    let mut all: Buffers = (Vec::new(), Vec::new(), Vec::new());
    for (engine, d) in engines.iter().zip(data) {
        let (i, o, s) = engine.buffers(d)?;
        all.0.push(i);
        all.1.push(o);
        all.2.push(s);
    }
    Ok(all)
}

fn write_all(engines: &[&Engine], sources: &[CudaSlice<bf16>], inputs: &mut [CudaSlice<bf16>]) -> TestResult {
    engines.iter().zip(sources).zip(inputs.iter_mut()).try_for_each(|((e, s), i)| e.write(s, i))
}

fn read_all(engines: &[&Engine], outputs: &[CudaSlice<bf16>]) -> Result<Vec<Vec<bf16>>, libtest_mimic::Failed> {
    engines.iter().zip(outputs).map(|(e, o)| e.read(o)).collect()
}

fn expected(data: &[Vec<bf16>], q: Quantization) -> Result<Vec<bf16>, libtest_mimic::Failed> {
    let refs: Vec<&[bf16]> = data.iter().map(|v| v.as_slice()).collect();
    ctx(reference_all_reduce(&refs, &q), "reference")
}

/// The candle situation with a communicator on its own streams: each rank's
/// thread writes, calls (per-rank entry points, out of place and in place)
/// and reads on its per-thread default stream; then the same from one
/// thread with the all-rank entry point, and with the raw entry point on
/// the per-thread stream.
pub fn engine_streams_ordered() -> TestResult {
    let world = 2;
    let devices: Vec<usize> = (0..world).collect();
    let comm = ctx(Communicator::new(&devices, exact_config(), &KERNELS), "create")?;
    let mut rng = Rng::new(seed("streams::engine_streams_ordered"));
    for (algorithm, q, len) in SETTINGS {
        let o = opts(algorithm, q);
        let data = make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len);
        let want = expected(&data, q)?;
        let what = format!("{algorithm:?} {} len {len}", q.label());
        // Per-rank threads: each thread's own per-thread stream.
        let results: Vec<Result<(Vec<bf16>, Vec<bf16>, bool), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|r| {
                    let (comm, data, o, device) = (&comm, &data[r], &o, devices[r]);
                    s.spawn(move || -> Result<(Vec<bf16>, Vec<bf16>, bool), String> {
                        let e = |x: libtest_mimic::Failed| format!("{x:?}");
                        let engine = Engine::new(device, true).map_err(e)?;
                        let (mut input, mut output, source) = engine.buffers(data).map_err(e)?;
                        engine.write(&source, &mut input).map_err(e)?;
                        comm.all_reduce_rank(r, &input, &mut output, o).map_err(|x| x.to_string())?;
                        let out_of_place = engine.read(&output).map_err(e)?;
                        engine.write(&source, &mut input).map_err(e)?;
                        comm.all_reduce_rank_in_place(r, &mut input, o).map_err(|x| x.to_string())?;
                        let in_place = engine.read(&input).map_err(e)?;
                        comm.synchronize_rank(r).map_err(|x| x.to_string())?;
                        Ok((out_of_place, in_place, engine.multi_stream()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("rank thread panicked".into()))).collect()
        });
        let mut outs = (Vec::new(), Vec::new());
        for (r, res) in results.into_iter().enumerate() {
            let (a, b, multi) = res.map_err(|e| format!("{what}: rank {r}: {e}"))?;
            if multi {
                return Err(format!("{what}: the engine's context entered cudarc's multi-stream mode").into());
            }
            outs.0.push(a);
            outs.1.push(b);
        }
        compare_bits(&outs.0, &want, &format!("per-thread streams, per-rank out of place, {what}"))?;
        compare_bits(&outs.1, &want, &format!("per-thread streams, per-rank in place, {what}"))?;

        // One thread, the all-rank entry point and the raw one.
        let owned = engines(&devices, true)?;
        let engines = each(&owned);
        let (mut inputs, mut outputs, sources) = engine_buffers(&engines, &data)?;
        write_all(&engines, &sources, &mut inputs)?;
        ctx(comm.all_reduce_with(&inputs, &mut outputs, &o), "all-rank call")?;
        compare_bits(&read_all(&engines, &outputs)?, &want, &format!("per-thread streams, all-rank call, {what}"))?;
        write_all(&engines, &sources, &mut inputs)?;
        for (r, engine) in engines.iter().enumerate() {
            let (src, _r) = inputs[r].device_ptr(&engine.stream);
            let (dst, _w) = outputs[r].device_ptr_mut(&engine.stream);
            // SAFETY: both buffers hold `len` bf16 on rank r's GPU and live
            // until the reads below, which wait for the call.
            ctx(unsafe { comm.all_reduce_raw(r, src, dst, len, Dtype::Bf16, engine.stream.cu_stream(), &o) }, "raw call")?;
        }
        compare_bits(&read_all(&engines, &outputs)?, &want, &format!("per-thread streams, raw call, {what}"))?;
        ctx(comm.synchronize(), "synchronize")?;
        if engines.iter().any(|e| e.multi_stream()) {
            return Err(format!("{what}: an engine context entered cudarc's multi-stream mode").into());
        }
    }
    println!("streams::engine_streams_ordered: per-thread default streams, multi-stream mode off: every call exact");
    Ok(())
}

/// A communicator built on the engine's streams (each context's legacy
/// default stream): creation leaves the engine's contexts out of cudarc's
/// multi-stream mode; calls between a write and a read on those streams are
/// exact; a view into a bigger buffer reduces only its range; per-thread
/// and repeated streams are refused.
pub fn from_engine_streams() -> TestResult {
    let world = 2;
    let devices: Vec<usize> = (0..world).collect();
    let owned = engines(&devices, false)?;
    let engines = each(&owned);
    let streams: Vec<Arc<CudaStream>> = engines.iter().map(|e| e.stream.clone()).collect();
    let comm = ctx(Communicator::from_streams(&streams, exact_config(), &KERNELS), "from_streams")?;
    if engines.iter().any(|e| e.multi_stream()) {
        return Err("from_streams put an engine context into cudarc's multi-stream mode".into());
    }
    for r in 0..world {
        if !Arc::ptr_eq(ctx(comm.stream(r), "stream")?, &streams[r]) {
            return Err(format!("rank {r} does not run on the engine's stream").into());
        }
    }
    let mut rng = Rng::new(seed("streams::from_engine_streams"));
    for (algorithm, q, len) in SETTINGS {
        let o = opts(algorithm, q);
        let data = make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len);
        let want = expected(&data, q)?;
        let what = format!("{algorithm:?} {} len {len}", q.label());
        let (mut inputs, mut outputs, sources) = engine_buffers(&engines, &data)?;
        write_all(&engines, &sources, &mut inputs)?;
        ctx(comm.all_reduce_with(&inputs, &mut outputs, &o), "call")?;
        compare_bits(&read_all(&engines, &outputs)?, &want, &format!("engine streams, {what}"))?;

        // A view: the middle `len` elements of a buffer three times longer.
        let mut big: Vec<CudaSlice<bf16>> = Vec::new();
        let mut fill = Vec::new();
        for (engine, d) in engines.iter().zip(&data) {
            let mut host: Vec<bf16> = (0..3 * len).map(|i| bf16::from_f32(i as f32)).collect();
            host[len..2 * len].copy_from_slice(d);
            fill.push(host.clone());
            big.push(ctx(engine.stream.clone_htod(&host), "big buffer")?);
        }
        let mut views: Vec<_> = big.iter_mut().map(|b| b.slice_mut(len..2 * len)).collect();
        ctx(comm.all_reduce_in_place_with(&mut views, &o), "view call")?;
        drop(views);
        for (r, (engine, b)) in engines.iter().zip(&big).enumerate() {
            let host = ctx(engine.stream.clone_dtoh(b), "download big")?;
            compare_bits(&[host[len..2 * len].to_vec()], &want, &format!("view, rank {r}, {what}"))?;
            let untouched = host[..len] == fill[r][..len] && host[2 * len..] == fill[r][2 * len..];
            if !untouched {
                return Err(format!("view call, rank {r}, {what}: elements outside the view changed").into());
            }
        }
    }
    ctx(comm.synchronize(), "synchronize")?;
    if engines.iter().any(|e| e.multi_stream()) {
        return Err("calls put an engine context into cudarc's multi-stream mode".into());
    }
    drop(comm);

    let per_thread: Vec<Arc<CudaStream>> = engines.iter().map(|e| e.context.per_thread_stream()).collect();
    match Communicator::from_streams(&per_thread, exact_config(), &KERNELS) {
        Err(Error::InvalidConfig(_)) => {}
        other => return Err(format!("per-thread streams: expected InvalidConfig, got {:?}", other.map(|_| ())).into()),
    }
    let twice = [streams[0].clone(), streams[0].clone()];
    let shared = flashcomm::Config { shared_devices: true, ..exact_config() };
    match Communicator::from_streams(&twice, shared, &KERNELS) {
        Err(Error::InvalidConfig(_)) => {}
        other => return Err(format!("one stream for two ranks: expected InvalidConfig, got {:?}", other.map(|_| ())).into()),
    }
    println!("streams::from_engine_streams: legacy default streams, calls and views exact, multi-stream mode never entered");
    Ok(())
}

/// The kernel image: H100/H200 load the SASS (no JIT), and the PTX path
/// (`KernelImage::ptx_only`, what GPUs without SASS run) gives the same
/// bits. Two ranks (sharing the GPU where there is one).
pub fn sass_and_ptx_agree() -> TestResult {
    let gpus = flashcomm::gpu_count();
    let devices = if gpus >= 2 { vec![0, 1] } else { vec![0, 0] };
    let config = flashcomm::Config { shared_devices: gpus < 2, ..exact_config() };
    let mut rng = Rng::new(seed("streams::sass_and_ptx_agree"));
    for image in [KERNELS, KERNELS.ptx_only()] {
        let start = std::time::Instant::now();
        let comm = ctx(Communicator::new(&devices, config.clone(), &image), "create")?;
        let code = ctx(comm.kernel_code(0), "kernel code")?;
        println!("streams::sass_and_ptx_agree: {code} on {}, created in {:?}", comm.gpu_name(), start.elapsed());
        let want_code = match image.sass().is_empty() {
            true => flashcomm::KernelCode::Ptx,
            false => {
                let context = ctx(comm.context(0), "ctx")?;
                let cc = |a| ctx(context.attribute(a), "compute capability").map(|v| v as u32);
                use cudarc::driver::sys::CUdevice_attribute as A;
                KERNELS.code_for((cc(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?, cc(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?))
            }
        };
        if code != want_code {
            return Err(format!("loaded {code}, expected {want_code}").into());
        }
        for (algorithm, q, len) in SETTINGS {
            let data = make_inputs::<bf16>(&mut rng, DataKind::Activations, 2, len);
            let want = expected(&data, q)?;
            let inputs = upload(&comm, &data)?;
            let mut outputs = poisoned::<bf16>(&comm, len)?;
            ctx(comm.all_reduce_with(&inputs, &mut outputs, &opts(algorithm, q)), "call")?;
            ctx(comm.synchronize(), "synchronize")?;
            compare_bits(&download(&comm, &outputs)?, &want, &format!("{code}: {algorithm:?} {} len {len}", q.label()))?;
        }
    }
    Ok(())
}

/// Two ranks on one GPU whose buffers share one stream (the engine's
/// legacy default stream), through the all-rank entry point: every rank's
/// stream first waits for the buffer stream, then both launch, then the
/// buffer stream waits for both. Joined rank by rank, the second rank's
/// stream would wait behind the first rank's kernel, which waits for the
/// second rank: a timeout instead of a result.
pub fn shared_gpu_ranks_share_a_buffer_stream() -> TestResult {
    let devices = [0usize, 0];
    let config = flashcomm::Config { shared_devices: true, timeout: Some(std::time::Duration::from_secs(2)), ..exact_config() };
    let comm = ctx(Communicator::new(&devices, config, &KERNELS), "create")?;
    let engine = Engine::new(0, false)?;
    let mut rng = Rng::new(seed("streams::shared_gpu_ranks_share_a_buffer_stream"));
    for (algorithm, q, len) in SETTINGS {
        let data = make_inputs::<bf16>(&mut rng, DataKind::Activations, 2, len);
        let want = expected(&data, q)?;
        let ranks = [&engine, &engine];
        let (mut inputs, mut outputs, sources) = engine_buffers(&ranks, &data)?;
        write_all(&ranks, &sources, &mut inputs)?;
        ctx(comm.all_reduce_with(&inputs, &mut outputs, &opts(algorithm, q)), "call")?;
        let got = read_all(&ranks, &outputs)?;
        ctx(comm.synchronize(), "synchronize")?;
        compare_bits(&got, &want, &format!("one buffer stream for two ranks of GPU 0, {algorithm:?} {} len {len}", q.label()))?;
    }
    println!("streams::shared_gpu_ranks_share_a_buffer_stream: exact");
    Ok(())
}

/// NCCL through the all-rank entry point on buffers of the engine's
/// per-thread streams: the buffer streams must wait for NCCL's kernels,
/// which NCCL queues only at the end of its group. A read right after the
/// call must see the sum (within bf16 of the exact one), never the poison.
#[cfg(feature = "nccl")]
pub fn nccl_on_engine_streams() -> TestResult {
    if !flashcomm::nccl::available() {
        return Err("libnccl.so cannot be loaded (set LD_LIBRARY_PATH; see docs/gpu-testing.md)".into());
    }
    let devices = [0usize, 1];
    let comm = ctx(Communicator::new(&devices, flashcomm::Config { nccl_fallback: true, ..exact_config() }, &KERNELS), "create")?;
    let owned = engines(&devices, true)?;
    let engines = each(&owned);
    let mut rng = Rng::new(seed("streams::nccl_on_engine_streams"));
    let len = 1 << 22;
    let data = make_inputs::<bf16>(&mut rng, DataKind::Normal, 2, len);
    let (mut inputs, mut outputs, sources) = engine_buffers(&engines, &data)?;
    write_all(&engines, &sources, &mut inputs)?;
    let nccl = CallOptions { algorithm: Some(Algorithm::Nccl), ..Default::default() };
    ctx(comm.all_reduce_with(&inputs, &mut outputs, &nccl), "NCCL call")?;
    let got = read_all(&engines, &outputs)?;
    ctx(comm.synchronize(), "synchronize")?;
    for (r, out) in got.iter().enumerate() {
        for (i, y) in out.iter().enumerate() {
            let exact = data[0][i].to_f64() + data[1][i].to_f64();
            if !(y.to_f64() - exact).abs().le(&(exact.abs() / 128.0 + 1e-30)) {
                return Err(format!("rank {r}, element {i}: read {} ({:#06x}), the sum is {exact}", y.to_f32(), y.to_bits()).into());
            }
        }
    }
    println!("streams::nccl_on_engine_streams: {len} elements read right after the NCCL call, all the sum");
    Ok(())
}

/// Registered as ignored without the `nccl` feature (main.rs).
#[cfg(not(feature = "nccl"))]
pub fn nccl_on_engine_streams() -> TestResult {
    Err("built without the nccl feature".into())
}
