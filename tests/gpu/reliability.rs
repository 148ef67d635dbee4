//! Failure paths never give a silent wrong result: a late rank, concurrent
//! callers, calls that split into launches differently, `recover()` racing
//! the next call, a busy GPU, a graph outliving its communicator.
//!
//! Every call ends, on every rank, in a typed error from `synchronize_rank`
//! or in a result bit-identical to the CPU reference. These tests use only
//! API that the code before the fixes also had, so the same file builds
//! against it (docs/gpu-testing.md: "before and after").
use crate::common::*;
use cudarc::driver::CudaSlice;
use flashcomm::reference::reference_all_reduce;
use flashcomm::synth::Rng;
use flashcomm::{Algorithm, CallOptions, Communicator, Config, Quantization};
use half::bf16;
use std::time::{Duration, Instant};

const SETTINGS: [(Algorithm, Quantization, usize); 3] =
    [(Algorithm::OneShot, Quantization::None, 4096), (Algorithm::TwoShot, Quantization::None, 100_000), (Algorithm::Flash, Quantization::INT8, 300_000)];

fn opts(algorithm: Algorithm, quantization: Quantization) -> CallOptions {
    CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), ..Default::default() }
}

/// `world` ranks on the GPUs there are (shared where fewer), with a watchdog.
fn comm_with_timeout(world: usize, timeout_ms: u64) -> Result<(Communicator, Vec<usize>), libtest_mimic::Failed> {
    communicator_on_gpus_there_are(world, Config { timeout: Some(Duration::from_millis(timeout_ms)), quantization: Quantization::INT8, ..exact_config() })
}

/// Per-rank threads: rank 0..world-1 queue `calls[r]` calls at once, the
/// last rank sleeps `late` first. Each rank then synchronizes. Returns each
/// rank's status (Ok or the error text).
fn run_ranks(comm: &Communicator, bufs: &mut [Vec<CudaSlice<bf16>>], o: &CallOptions, late: Duration) -> Vec<Result<(), String>> {
    let world = comm.world_size();
    std::thread::scope(|s| {
        let handles: Vec<_> = bufs
            .iter_mut()
            .enumerate()
            .map(|(r, mine)| {
                s.spawn(move || -> Result<(), String> {
                    if r == world - 1 {
                        std::thread::sleep(late);
                    }
                    for b in mine.iter_mut() {
                        comm.all_reduce_rank_in_place(r, b, o).map_err(|e| e.to_string())?;
                    }
                    comm.synchronize_rank(r).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("rank thread panicked".into()))).collect()
    })
}

/// Issue 13's scenario: rank 0 (and the other early ranks) queue 4 calls,
/// the last rank arrives 350 ms later (watchdog 200 ms) with 2 calls. Every
/// rank must report an error, or return results equal to the reference for
/// every call it made. For the one-shot, two-shot and Flash, at W = 2 and 3.
pub fn late_rank_gets_an_error() -> TestResult {
    let mut rng = Rng::new(seed("reliability::late_rank_gets_an_error"));
    for world in [2, 3] {
        let (comm, devices) = comm_with_timeout(world, 200)?;
        for (algorithm, quantization, len) in SETTINGS {
            let what = format!("W={world} on {devices:?}, {algorithm:?} {}", quantization.label());
            let calls: Vec<usize> = (0..world).map(|r| if r == world - 1 { 2 } else { 4 }).collect();
            let data: Vec<Vec<Vec<bf16>>> = (0..4).map(|_| make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len)).collect();
            let mut bufs: Vec<Vec<CudaSlice<bf16>>> = (0..world)
                .map(|r| (0..calls[r]).map(|c| ctx(ctx(comm.stream(r), "stream")?.clone_htod(&data[c][r]), "upload")).collect::<Result<_, _>>())
                .collect::<Result<_, _>>()?;
            ctx(comm.synchronize(), "uploads")?;
            let status = run_ranks(&comm, &mut bufs, &opts(algorithm, quantization), Duration::from_millis(350));
            for (r, st) in status.iter().enumerate() {
                if st.is_ok() {
                    // An Ok rank: every one of its calls must be exact.
                    for (c, buf) in bufs[r].iter().enumerate() {
                        let refs: Vec<&[bf16]> = data[c].iter().map(|v| v.as_slice()).collect();
                        let expected = ctx(reference_all_reduce(&refs, &quantization), "reference")?;
                        let got = ctx(ctx(comm.stream(r), "stream")?.clone_dtoh(buf), "download")?;
                        compare_bits(&[got], &expected, &format!("{what}: rank {r} returned Ok, call {c}"))?;
                    }
                }
            }
            println!("reliability::late_rank_gets_an_error: {what}: {status:?}");
            if status.iter().all(|s| s.is_ok()) {
                return Err(format!("{what}: every rank returned Ok although the calls did not match in number").into());
            }
            ctx(comm.recover(), "recover")?;
            one_exact_call(&comm, &mut rng, 50_000, &format!("{what}: after recover"))?;
        }
    }
    Ok(())
}

/// One in-place call of `len` elements from one thread, checked on every rank.
fn one_exact_call(comm: &Communicator, rng: &mut Rng, len: usize, what: &str) -> TestResult {
    let world = comm.world_size();
    let inputs = make_inputs::<bf16>(rng, DataKind::Activations, world, len);
    let mut bufs = upload(comm, &inputs)?;
    let o = opts(Algorithm::TwoShot, Quantization::None);
    ctx(comm.all_reduce_in_place_with(&mut bufs, &o), what)?;
    ctx(comm.synchronize(), what)?;
    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    compare_bits(&download(comm, &bufs)?, &ctx(reference_all_reduce(&refs, &Quantization::None), "reference")?, what)
}

/// Two host threads calling the all-rank entry point on one communicator,
/// 300 one-shots each with their own data and outputs: every call exact.
/// (Interleaved per-rank launches paired one thread's call on one rank with
/// the other thread's on another: same tag, wrong sums, no error.)
pub fn concurrent_all_rank_calls() -> TestResult {
    let mut rng = Rng::new(seed("reliability::concurrent_all_rank_calls"));
    for world in [2, 3, 4] {
        let (comm, devices) = communicator_on_gpus_there_are(world, exact_config())?;
        let (threads, calls, len) = (2, 300, 2048);
        let data: Vec<Vec<Vec<Vec<bf16>>>> =
            (0..threads).map(|_| (0..calls).map(|_| make_inputs::<bf16>(&mut rng, DataKind::Normal, world, len)).collect()).collect();
        let inputs: Vec<Vec<Vec<CudaSlice<bf16>>>> = data.iter().map(|t| t.iter().map(|c| upload(&comm, c)).collect::<Result<_, _>>()).collect::<Result<_, _>>()?;
        let mut outputs: Vec<Vec<Vec<CudaSlice<bf16>>>> =
            (0..threads).map(|_| (0..calls).map(|_| poisoned::<bf16>(&comm, len)).collect::<Result<_, _>>()).collect::<Result<_, _>>()?;
        ctx(comm.synchronize(), "uploads")?;
        let o = opts(Algorithm::OneShot, Quantization::None);
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = inputs
                .iter()
                .zip(outputs.iter_mut())
                .map(|(ins, outs)| {
                    let (comm, o) = (&comm, &o);
                    s.spawn(move || ins.iter().zip(outs.iter_mut()).try_for_each(|(i, out)| comm.all_reduce_with(i, out, o)).map_err(|e| e.to_string()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
        });
        for r in results {
            r.map_err(|e| format!("W={world}: {e}"))?;
        }
        ctx(comm.synchronize(), "synchronize")?;
        let mut wrong = 0;
        for t in 0..threads {
            for c in 0..calls {
                let refs: Vec<&[bf16]> = data[t][c].iter().map(|v| v.as_slice()).collect();
                let expected = ctx(reference_all_reduce(&refs, &Quantization::None), "reference")?;
                wrong += compare_bits(&download(&comm, &outputs[t][c])?, &expected, "").is_err() as usize;
            }
        }
        if wrong > 0 {
            return Err(format!("W={world} on {devices:?}: {wrong} of {} calls from two threads were wrong", threads * calls).into());
        }
        println!("reliability::concurrent_all_rank_calls: W={world} on {devices:?}: {} calls from {threads} threads exact", threads * calls);
    }
    Ok(())
}

/// Calls that disagree only in how they split: rank 0 reduces 3M elements
/// (the one-shot runs it in two launches, 2M and 1M), rank 1 reduces 2M
/// then 1M. The launches line up one for one, but they are different calls:
/// each rank must report an error, or be exact (it cannot be, here). Also
/// an empty call on one rank against a non-empty one on the other.
pub fn split_calls_do_not_pair() -> TestResult {
    let mut rng = Rng::new(seed("reliability::split_calls_do_not_pair"));
    let (comm, devices) = comm_with_timeout(2, 200)?;
    let o = opts(Algorithm::OneShot, Quantization::None);
    for (name, lens) in [("3M against 2M + 1M", [vec![3usize << 20], vec![2 << 20, 1 << 20]]), ("empty against 4096", [vec![0], vec![4096]])] {
        let data: Vec<Vec<Vec<bf16>>> = lens.iter().map(|ls| ls.iter().map(|&l| make_inputs::<bf16>(&mut rng, DataKind::Normal, 1, l).remove(0)).collect()).collect();
        let mut bufs: Vec<Vec<CudaSlice<bf16>>> = (0..2)
            .map(|r| data[r].iter().map(|v| ctx(ctx(comm.stream(r), "stream")?.clone_htod(v), "upload")).collect::<Result<_, _>>())
            .collect::<Result<_, _>>()?;
        ctx(comm.synchronize(), "uploads")?;
        let start = Instant::now();
        let status = run_ranks(&comm, &mut bufs, &o, Duration::ZERO);
        println!("reliability::split_calls_do_not_pair: {name} on {devices:?}: {status:?} after {:?}", start.elapsed());
        for (r, st) in status.iter().enumerate() {
            if st.is_ok() {
                return Err(format!("{name}: rank {r} returned Ok for calls no peer made").into());
            }
        }
        ctx(comm.recover(), "recover")?;
        one_exact_call(&comm, &mut rng, 10_000, &format!("{name}: after recover"))?;
    }
    Ok(())
}

/// `recover()` and the very next call, without any host synchronisation in
/// between, many times: the reset of the flags must land before the call's
/// kernels run (it used to be a memset on the legacy stream, unordered with
/// the communicator's streams).
pub fn recover_is_ordered() -> TestResult {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let mut rng = Rng::new(seed("reliability::recover_is_ordered"));
    let world = flashcomm::gpu_count().clamp(2, 4);
    let (comm, devices) = comm_with_timeout(world, 20)?;
    let len = 1 << 20;
    // One spinning block on each GPU's legacy default stream: work queued
    // there (as a synchronous memset is) waits for it, while the
    // communicator's non-blocking streams do not.
    let legacy: Vec<_> = (0..world).map(|r| ctx(comm.context(r), "ctx").map(|c| c.default_stream())).collect::<Result<_, _>>()?;
    let spin: Vec<_> = (0..world)
        .map(|r| {
            let module = ctx(ctx(comm.context(r), "ctx")?.load_module(cudarc::nvrtc::Ptx::from_src(BUSY_PTX)), "load busy_wait")?;
            ctx(module.load_function("busy_wait"), "busy_wait")
        })
        .collect::<Result<_, _>>()?;
    for round in 0..20 {
        // A timeout: all ranks but the last call.
        let mut bufs = upload(&comm, &make_inputs::<bf16>(&mut rng, DataKind::Normal, world, 4096))?;
        let o = opts(Algorithm::OneShot, Quantization::None);
        for (r, b) in bufs.iter_mut().enumerate().take(world - 1) {
            ctx(comm.all_reduce_rank_in_place(r, b, &o), "launch")?;
        }
        if comm.synchronize().is_ok() {
            return Err(format!("round {round}: the missing rank went unnoticed").into());
        }
        let ns: u64 = 30_000_000;
        for (s, f) in legacy.iter().zip(&spin) {
            let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: busy_wait takes one u64 and touches no memory.
            ctx(unsafe { s.launch_builder(f).arg(&ns).launch(one) }, "launch busy_wait")?;
        }
        ctx(comm.recover(), "recover")?;
        // At once a large call, queued right behind the reset.
        one_exact_call(&comm, &mut rng, len, &format!("round {round}: right after recover on {devices:?}"))?;
        for s in &legacy {
            ctx(s.synchronize(), "busy_wait")?;
        }
    }
    println!("reliability::recover_is_ordered: 20 rounds of timeout, recover, call: exact on {devices:?}");
    Ok(())
}

/// A call while another stream keeps the last rank's GPU full with a long
/// kernel: the collective's blocks there start only as the busy kernel
/// ends. A short busy time (below the watchdog) must give an exact result;
/// a long one a typed error on every rank; never a hang or corruption.
pub fn busy_gpu_correct_or_error() -> TestResult {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let mut rng = Rng::new(seed("reliability::busy_gpu_correct_or_error"));
    let world = flashcomm::gpu_count().clamp(2, 4);
    let (comm, devices) = comm_with_timeout(world, 200)?;
    let busy_rank = world - 1;
    let busy_ctx = ctx(comm.context(busy_rank), "ctx")?.clone();
    let module = ctx(busy_ctx.load_module(cudarc::nvrtc::Ptx::from_src(BUSY_PTX)), "load busy_wait")?;
    let busy = ctx(module.load_function("busy_wait"), "busy_wait")?;
    let side = ctx(busy_ctx.new_stream(), "side stream")?;
    let sms = ctx(busy_ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT), "SMs")? as u32;
    for (busy_ms, must_succeed) in [(50u64, true), (600, false)] {
        for (algorithm, quantization, len) in SETTINGS {
            let what = format!("{algorithm:?} {} with rank {busy_rank}'s GPU busy {busy_ms} ms, on {devices:?}", quantization.label());
            let inputs = make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len);
            let mut bufs = upload(&comm, &inputs)?;
            ctx(comm.synchronize(), "uploads")?;
            let ns = busy_ms * 1_000_000;
            // Two full-size blocks per SM: every thread slot of the GPU.
            let cfg = LaunchConfig { grid_dim: (2 * sms, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: busy_wait takes one u64 and touches no memory.
            ctx(unsafe { side.launch_builder(&busy).arg(&ns).launch(cfg) }, "launch busy_wait")?;
            let start = Instant::now();
            ctx(comm.all_reduce_in_place_with(&mut bufs, &opts(algorithm, quantization)), &what)?;
            let synced = comm.synchronize();
            let elapsed = start.elapsed();
            ctx(side.synchronize(), "busy_wait")?;
            println!("reliability::busy_gpu_correct_or_error: {what}: {:?} after {elapsed:?}", synced.as_ref().err().map(|e| e.to_string()));
            if elapsed > Duration::from_millis(busy_ms) + Duration::from_secs(2) {
                return Err(format!("{what}: took {elapsed:?}").into());
            }
            match synced {
                Ok(()) => {
                    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
                    compare_bits(&download(&comm, &bufs)?, &ctx(reference_all_reduce(&refs, &quantization), "reference")?, &what)?;
                }
                Err(e) if must_succeed => return Err(format!("{what}: {e} (the GPU was busy for less than the watchdog)").into()),
                Err(_) => {
                    ctx(comm.recover(), "recover")?;
                }
            }
        }
    }
    one_exact_call(&comm, &mut rng, 50_000, "after the busy rounds")
}

/// Calls captured into CUDA graphs (one per rank, on a stream of the
/// caller's, through the raw entry point as an engine would); the
/// communicator is dropped; the graphs are replayed: the kernels' buffers
/// must still be there (the graph holds them), so the results are exact.
pub fn graph_outlives_communicator() -> TestResult {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let mut rng = Rng::new(seed("reliability::graph_outlives_communicator"));
    let world = 2;
    let (comm, devices) = communicator_on_gpus_there_are(world, exact_config())?;
    let len = 300_000;
    let inputs = make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len);
    let d_in = upload(&comm, &inputs)?;
    let mut d_out = poisoned::<bf16>(&comm, len)?;
    ctx(comm.synchronize(), "uploads")?;
    let ptrs: Vec<(u64, u64)> = (0..world)
        .map(|r| {
            let stream = ctx(comm.stream(r), "stream")?;
            Ok((d_in[r].device_ptr(stream).0, d_out[r].device_ptr_mut(stream).0))
        })
        .collect::<Result<_, libtest_mimic::Failed>>()?;
    let o = opts(Algorithm::Flash, Quantization::INT8);
    // SAFETY: both buffers live on rank r's GPU with `len` elements and
    // outlive every replay (dropped at the end).
    let graphs = capture_per_rank(&comm, |r, stream| unsafe { comm.all_reduce_raw(r, ptrs[r].0, ptrs[r].1, len, flashcomm::Dtype::Bf16, stream.cu_stream(), &o) }, "capture")?;
    let contexts: Vec<_> = (0..world).map(|r| comm.context(r).cloned()).collect::<Result<_, _>>().map_err(|e| format!("{e}"))?;
    drop(comm);
    // Fill the freed memory, if it was freed, with other allocations.
    let junk: Vec<_> = contexts.iter().map(|c| c.default_stream().alloc_zeros::<u8>(256 << 20)).collect();
    for (_, g) in &graphs {
        ctx(g.launch(), "replay")?;
    }
    for (s, _) in &graphs {
        ctx(s.synchronize(), "replay")?;
    }
    drop(junk);
    let outs: Vec<Vec<bf16>> = graphs.iter().zip(&d_out).map(|((s, _), o)| ctx(s.clone_dtoh(o), "download")).collect::<Result<_, _>>()?;
    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    compare_bits(&outs, &ctx(reference_all_reduce(&refs, &Quantization::INT8), "reference")?, "replay after the communicator was dropped")?;
    println!("reliability::graph_outlives_communicator: on {devices:?}: graphs replayed after the communicator was dropped, exact");
    drop(graphs);
    // A new communicator frees what the graphs held.
    let (again, _) = communicator_on_gpus_there_are(world, exact_config())?;
    one_exact_call(&again, &mut rng, 10_000, "a new communicator after the graphs")
}

/// Three ranks, no watchdog: ranks 0 and 1 enter with different lengths,
/// rank 2 (matching rank 0) comes 100 ms later. The mismatch must reach
/// every rank, through rank 2 too (which stops at its entry check and must
/// say so), so every rank returns an error; nothing may wait forever. A
/// helper thread aborts with `recover()` after 5 s, so a failure of this
/// test cannot hang the suite.
pub fn mismatch_without_watchdog_ends() -> TestResult {
    let mut rng = Rng::new(seed("reliability::mismatch_without_watchdog_ends"));
    // The LL one-shot too: its data lines alone would not reveal a peer in
    // another call; its barrier signal and tag check must.
    for algorithm in [Algorithm::OneShot, Algorithm::OneShotLl] {
        mismatch_without_watchdog(&mut rng, algorithm)?;
    }
    Ok(())
}

fn mismatch_without_watchdog(rng: &mut Rng, algorithm: Algorithm) -> TestResult {
    let world = 3;
    let (comm, devices) = communicator_on_gpus_there_are(world, Config { timeout: None, ..exact_config() })?;
    let o = opts(algorithm, Quantization::None);
    let lens = [8192usize, 4096, 8192];
    let mut bufs: Vec<Vec<CudaSlice<bf16>>> = (0..world)
        .map(|r| Ok(vec![ctx(ctx(comm.stream(r), "stream")?.clone_htod(&make_inputs::<bf16>(rng, DataKind::Normal, 1, lens[r]).remove(0)), "upload")?]))
        .collect::<Result<_, libtest_mimic::Failed>>()?;
    ctx(comm.synchronize(), "uploads")?;
    let start = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (status, rescued) = std::thread::scope(|s| {
        let rescue = s.spawn(|| {
            while start.elapsed() < Duration::from_secs(5) {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = comm.recover();
            true
        });
        let status = run_ranks(&comm, &mut bufs, &o, Duration::from_millis(100));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (status, rescue.join().unwrap_or(true))
    });
    println!("reliability::mismatch_without_watchdog_ends: {algorithm:?} on {devices:?}: {status:?} after {:?}", start.elapsed());
    if rescued {
        return Err(format!("the ranks were still waiting after 5 s (no watchdog): {status:?}").into());
    }
    if let Some(r) = status.iter().position(|s| s.is_ok()) {
        return Err(format!("rank {r} returned Ok for a mismatched call: {status:?}").into());
    }
    ctx(comm.recover(), "recover")?;
    one_exact_call(&comm, rng, 10_000, "after recover")
}

/// A rank's error that its host has not been told yet survives `recover()`:
/// rank 0 queues a call rank 1 never makes (timeout), then `recover()` runs
/// before rank 0's host synchronized. Rank 0's next `synchronize_rank` must
/// report the error (its call did not complete), and rank 0 must refuse new
/// calls until it has; then both ranks work again.
pub fn recover_keeps_unreported_errors() -> TestResult {
    let mut rng = Rng::new(seed("reliability::recover_keeps_unreported_errors"));
    let (comm, devices) = comm_with_timeout(2, 50)?;
    let o = opts(Algorithm::OneShot, Quantization::None);
    let mut bufs = upload(&comm, &make_inputs::<bf16>(&mut rng, DataKind::Normal, 2, 4096))?;
    ctx(comm.synchronize(), "uploads")?;
    ctx(comm.all_reduce_rank_in_place(0, &mut bufs[0], &o), "rank 0's call")?;
    std::thread::sleep(Duration::from_millis(300));
    ctx(comm.recover(), "recover")?;
    let refused = comm.all_reduce_rank_in_place(0, &mut bufs[0], &o);
    let first = comm.synchronize_rank(0);
    let second = comm.synchronize_rank(0);
    println!("reliability::recover_keeps_unreported_errors: on {devices:?}: call before the report {refused:?}; first {first:?}; second {second:?}");
    if first.is_ok() {
        return Err("rank 0's timed-out call was reported Ok after recover()".into());
    }
    if refused.is_ok() {
        return Err("rank 0 queued a call before its earlier error was reported".into());
    }
    ctx(second, "the error is reported once")?;
    one_exact_call(&comm, &mut rng, 10_000, "after the report")
}
