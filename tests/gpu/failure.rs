//! Failure behaviour: the watchdog, mismatched calls, bad input.
use crate::common::*;
use flashcomm::reference::reference_all_reduce;
use flashcomm::synth::Rng;
use flashcomm::{Algorithm, Bits, CallOptions, Communicator, Config, Error, Quantization, KERNELS};
use half::bf16;
use std::time::{Duration, Instant};

fn correct_call(comm: &Communicator, rng: &mut Rng, len: usize, what: &str) -> TestResult {
    let world = comm.world_size();
    let inputs = make_inputs::<bf16>(rng, DataKind::Activations, world, len);
    let mut bufs = upload(comm, &inputs)?;
    ctx(comm.all_reduce_in_place(&mut bufs), what)?;
    ctx(comm.synchronize(), what)?;
    let q = ctx(comm.plan(len, flashcomm::Dtype::Bf16, &CallOptions::default()), "plan")?.quantization();
    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    compare_bits(&download(comm, &bufs)?, &ctx(reference_all_reduce(&refs, &q), "reference")?, what)
}

/// Launch on W-1 of W GPUs: every waiting rank returns the typed timeout
/// within a bounded time, the missing rank is named, the communicator
/// refuses work until `recover()`, and then works again.
pub fn watchdog_missing_rank() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    watchdog_on(&(0..world).collect::<Vec<_>>(), exact_config(), "failure::watchdog_missing_rank")
}

/// [`watchdog_missing_rank`] with three ranks sharing one GPU
/// (`Config::shared_devices`): the missing rank's blocks never launch.
pub fn watchdog_missing_rank_shared_device() -> TestResult {
    watchdog_on(&[0, 0, 0], Config { shared_devices: true, ..exact_config() }, "failure::watchdog_missing_rank_shared_device")
}

fn watchdog_on(devices: &[usize], base: Config, name: &str) -> TestResult {
    let world = devices.len();
    let timeout = Duration::from_millis(100);
    let config = Config { timeout: Some(timeout), quantization: Quantization::INT8, ..base.clone() };
    let comm = ctx(Communicator::new(devices, config, &KERNELS), "create")?;
    let mut rng = Rng::new(seed(name));
    for (algorithm, len) in [(Algorithm::Flash, 1usize << 20), (Algorithm::OneShot, 4096), (Algorithm::TwoShot, 100_000)] {
        let missing = world - 1;
        let inputs = make_inputs::<bf16>(&mut rng, DataKind::Normal, world, len);
        let mut bufs = upload(&comm, &inputs)?;
        let opts = CallOptions { algorithm: Some(algorithm), ..CallOptions::default() };
        let start = Instant::now();
        for (r, b) in bufs.iter_mut().enumerate().take(missing) {
            ctx(comm.all_reduce_rank_in_place(r, b, &opts), "launch")?;
        }
        for r in 0..missing {
            match comm.synchronize_rank(r) {
                Err(Error::PeerTimeout { rank, peer, .. }) if rank == r => {
                    if peer != missing {
                        return Err(format!("{algorithm:?}: rank {r} blamed rank {peer}, the missing one is {missing}").into());
                    }
                }
                other => return Err(format!("{algorithm:?}: rank {r} returned {other:?}, expected PeerTimeout").into()),
            }
        }
        let elapsed = start.elapsed();
        println!("{name}: {algorithm:?}: {} ranks timed out after {elapsed:?} (timeout {timeout:?})", missing);
        if elapsed > Duration::from_secs(2) {
            return Err(format!("{algorithm:?}: waiting ranks took {elapsed:?} to give up").into());
        }
        // The missing rank ran nothing, but learnt of its peers' failure.
        match comm.synchronize_rank(missing) {
            Err(Error::PeerFailed { rank, .. }) if rank == missing => {}
            other => return Err(format!("{algorithm:?}: the missing rank returned {other:?}, expected PeerFailed").into()),
        }
        match comm.all_reduce_in_place(&mut bufs) {
            Err(Error::Poisoned(_)) => {}
            other => return Err(format!("{algorithm:?}: a call after the timeout returned {other:?}, expected Poisoned").into()),
        }
        ctx(comm.recover(), "recover")?;
        correct_call(&comm, &mut rng, 300_000, &format!("after recovering from {algorithm:?} timeout"))?;
    }
    // A fresh communicator on the same GPUs also works.
    drop(comm);
    let fresh = ctx(Communicator::new(devices, base, &KERNELS), "create fresh")?;
    correct_call(&fresh, &mut rng, 50_000, "fresh communicator")
}

/// Ranks entering one collective with different lengths get a typed error
/// (mismatch or timeout), not a hang or silent garbage.
pub fn mismatched_lengths_detected() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    let config = Config { timeout: Some(Duration::from_millis(100)), ..exact_config() };
    let comm = ctx(Communicator::new(&(0..world).collect::<Vec<_>>(), config, &KERNELS), "create")?;
    let mut rng = Rng::new(seed("failure::mismatched_lengths_detected"));
    let opts = CallOptions { algorithm: Some(Algorithm::TwoShot), ..CallOptions::default() };
    let mut bufs: Vec<_> = (0..world)
        .map(|r| {
            let len = if r == 0 { 8192 } else { 8192 + 4096 };
            ctx(ctx(comm.stream(r), "stream")?.clone_htod(&vec![bf16::ONE; len]), "upload")
        })
        .collect::<Result<_, _>>()?;
    for (r, b) in bufs.iter_mut().enumerate() {
        ctx(comm.all_reduce_rank_in_place(r, b, &opts), "launch")?;
    }
    let mut saw = Vec::new();
    for r in 0..world {
        match comm.synchronize_rank(r) {
            Err(e @ (Error::CollectiveMismatch { .. } | Error::PeerTimeout { .. })) => saw.push(e.to_string()),
            other => return Err(format!("rank {r}: {other:?}, expected a mismatch or timeout").into()),
        }
    }
    println!("failure::mismatched_lengths_detected: {saw:?}");
    ctx(comm.recover(), "recover")?;
    correct_call(&comm, &mut rng, 8192, "after a mismatch")
}

/// Ranks that call with different spike counts (same widths, same group
/// size: the same `spiky_` kernel, different layouts) must fail with a
/// mismatch or a timeout on every rank, never return: the call's tag
/// carries the counts (a rank decoding a peer's blob with another count
/// would read spikes where codes are).
pub fn mismatched_spikes_detected() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    let config = Config { timeout: Some(Duration::from_millis(100)), ..exact_config() };
    let comm = ctx(Communicator::new(&(0..world).collect::<Vec<_>>(), config, &KERNELS), "create")?;
    let mut rng = Rng::new(seed("failure::mismatched_spikes_detected"));
    for (first, others) in [("int4k4-int8", "int4k1-int8"), ("int8k1", "int8k2"), ("int4k2-int8k4", "int4k2-int8k8")] {
        let mut bufs: Vec<_> = (0..world).map(|r| ctx(ctx(comm.stream(r), "stream")?.clone_htod(&vec![bf16::ONE; 1 << 16]), "upload")).collect::<Result<_, _>>()?;
        for (r, b) in bufs.iter_mut().enumerate() {
            let setting = ctx(Quantization::parse(if r == 0 { first } else { others }), "setting")?;
            let opts = CallOptions { algorithm: Some(Algorithm::Flash), quantization: Some(setting), ..CallOptions::default() };
            ctx(comm.all_reduce_rank_in_place(r, b, &opts), "launch")?;
        }
        for r in 0..world {
            match comm.synchronize_rank(r) {
                Err(Error::CollectiveMismatch { .. } | Error::PeerTimeout { .. }) => {}
                other => return Err(format!("{first} against {others}: rank {r}: {other:?}, expected a mismatch or timeout").into()),
            }
        }
        ctx(comm.recover(), "recover")?;
    }
    // `Auto` never picks a spike setting (slower than the unquantized paths
    // at large sizes); Algorithm::Flash runs it.
    let spiky = ctx(Quantization::parse("int4k4-int8"), "setting")?;
    let auto = CallOptions { quantization: Some(spiky), ..CallOptions::default() };
    if let flashcomm::Plan::Flash(_) = ctx(comm.plan(1 << 27, flashcomm::Dtype::Bf16, &auto), "plan")? {
        return Err("Auto chose a spike setting".into());
    }
    println!("failure::mismatched_spikes_detected: three pairs of spike counts refused on every rank");
    correct_call(&comm, &mut rng, 8192, "after the mismatches")
}

/// Bad input is refused with a typed error before anything is launched.
pub fn bad_inputs_fail_before_launch() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    let comm = ctx(Communicator::new(&(0..world).collect::<Vec<_>>(), exact_config(), &KERNELS), "create")?;
    let mut rng = Rng::new(seed("failure::bad_inputs_fail_before_launch"));
    let s = |r: usize| comm.stream(r).unwrap().clone();
    // Lengths differ across ranks.
    let mut bufs: Vec<_> = (0..world).map(|r| s(r).clone_htod(&vec![bf16::ONE; 100 + r]).unwrap()).collect();
    expect(comm.all_reduce_in_place(&mut bufs), |e| matches!(e, Error::LengthMismatch { rank: 1, .. }), "length mismatch")?;
    // Wrong number of buffers.
    let mut few: Vec<_> = (0..world - 1).map(|r| s(r).clone_htod(&vec![bf16::ONE; 64]).unwrap()).collect();
    expect(comm.all_reduce_in_place(&mut few), |e| matches!(e, Error::BufferCount { .. }), "buffer count")?;
    // A buffer on the wrong device (rank 0's buffer allocated on GPU 1).
    let mut wrong: Vec<_> = (0..world).map(|r| s(if r == 0 { 1 } else { r }).clone_htod(&vec![bf16::ONE; 64]).unwrap()).collect();
    expect(comm.all_reduce_in_place(&mut wrong), |e| matches!(e, Error::WrongDevice { rank: 0, found: 1, .. }), "wrong device")?;
    // Output shorter than input.
    let ins: Vec<_> = (0..world).map(|r| s(r).clone_htod(&vec![bf16::ONE; 64]).unwrap()).collect();
    let mut outs: Vec<_> = (0..world).map(|r| s(r).clone_htod(&vec![bf16::ONE; 63]).unwrap()).collect();
    expect(comm.all_reduce(&ins, &mut outs), |e| matches!(e, Error::OutputLength { .. }), "output length")?;
    // Unsupported group size and Flash without quantization, per call.
    let mut ok: Vec<_> = (0..world).map(|r| s(r).clone_htod(&vec![bf16::ONE; 64]).unwrap()).collect();
    expect(Quantization::int(Bits::B8, Bits::B8, 96), |e| matches!(e, Error::InvalidConfig(_)), "group size 96")?;
    let flash_none = CallOptions { algorithm: Some(Algorithm::Flash), quantization: Some(Quantization::None), ..Default::default() };
    expect(comm.all_reduce_in_place_with(&mut ok, &flash_none), |e| matches!(e, Error::InvalidConfig(_)), "flash without bits")?;
    expect(comm.all_reduce_rank_in_place(world, &mut ok[0], &CallOptions::default()), |e| matches!(e, Error::NoSuchRank { .. }), "rank out of range")?;
    // Zero length: a no-op that touches nothing.
    let mut empty: Vec<_> = (0..world).map(|r| s(r).alloc_zeros::<bf16>(0).unwrap()).collect();
    ctx(comm.all_reduce_in_place(&mut empty), "zero length")?;
    ctx(comm.synchronize(), "synchronize")?;
    // Nothing was launched or corrupted: the buffers are untouched and a good call works.
    for (r, b) in ok.iter().enumerate() {
        let v = ctx(s(r).clone_dtoh(b), "download")?;
        if v.iter().any(|x| *x != bf16::ONE) {
            return Err(format!("rank {r}'s buffer changed although every call was refused").into());
        }
    }
    correct_call(&comm, &mut rng, 10_000, "after refused calls")
}

fn expect<T: std::fmt::Debug>(r: flashcomm::Result<T>, ok: impl Fn(&Error) -> bool, what: &str) -> TestResult {
    match r {
        Err(e) if ok(&e) => Ok(()),
        other => Err(format!("{what}: expected a typed error, got {other:?}").into()),
    }
}
