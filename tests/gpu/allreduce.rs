//! Multi-GPU all-reduce against the CPU reference reducer, bit for bit.
use crate::common::*;
use flashcomm::reference::reference_all_reduce;
use flashcomm::synth::Rng;
use flashcomm::Spikes;
use flashcomm::{Algorithm, Bits, CallOptions, Communicator, Config, GroupSize, HostElement, Link, Quantization, Quantized, Transport, KERNELS};
use half::{bf16, f16};
use std::collections::BTreeMap;

fn communicator(world: usize, config: Config) -> Result<Communicator, libtest_mimic::Failed> {
    let devices: Vec<usize> = (0..world).collect();
    ctx(Communicator::new(&devices, config, &KERNELS), &format!("create a communicator on {devices:?}"))
}

fn worlds() -> Vec<usize> {
    (2..=flashcomm::gpu_count().min(4)).collect()
}

/// One all-reduce on `comm`, checked against the reference on every rank.
fn check_case<T: HostElement>(comm: &Communicator, inputs: &[Vec<T>], opts: &CallOptions, in_place: bool, what: &str) -> TestResult {
    let len = inputs[0].len();
    let quant = match comm.plan(len, T::DTYPE, opts) {
        Ok(plan) => plan.quantization(),
        Err(e) => return Err(format!("{what}: plan: {e}").into()),
    };
    let refs: Vec<&[T]> = inputs.iter().map(|v| v.as_slice()).collect();
    let expected = ctx(reference_all_reduce(&refs, &quant), "reference")?;
    let outputs = if in_place {
        let mut bufs = upload(comm, inputs)?;
        ctx(comm.all_reduce_in_place_with(&mut bufs, opts), what)?;
        ctx(comm.synchronize(), what)?;
        download(comm, &bufs)?
    } else {
        let d_in = upload(comm, inputs)?;
        let mut d_out = poisoned::<T>(comm, len)?;
        ctx(comm.all_reduce_with(&d_in, &mut d_out, opts), what)?;
        ctx(comm.synchronize(), what)?;
        let after = download(comm, &d_in)?;
        if after.iter().zip(comm.local_ranks()).any(|(a, r)| a.iter().zip(&inputs[r]).any(|(x, y)| x.to_bits() != y.to_bits())) {
            return Err(format!("{what}: out-of-place call modified its input").into());
        }
        download(comm, &d_out)?
    };
    compare_bits(&outputs, &expected, what)
}

fn random_transport(rng: &mut Rng) -> Transport {
    let link = |rng: &mut Rng| if rng.uniform() < 0.5 { Link::Pull } else { Link::Push };
    Transport { reduce_scatter: link(rng), all_gather: link(rng) }
}

fn random_quant(rng: &mut Rng) -> Quantization {
    let bits = |rng: &mut Rng| Bits::ALL[rng.range(0, Bits::ALL.len() - 1)];
    // Half the settings keep spikes (codec::spikes) in one step or both.
    let spikes = |rng: &mut Rng| if rng.uniform() < 0.5 { Spikes::NONE } else { Spikes::ALL[rng.range(1, Spikes::ALL.len() - 1)] };
    let q = Quantized::new(bits(rng), bits(rng), GroupSize::ALL[rng.range(0, GroupSize::ALL.len() - 1)]);
    Quantization::Int(q.with_spikes(spikes(rng), spikes(rng)))
}

/// Random world sizes, lengths (1 to ~4M, log-uniform), element types,
/// every bit-width pair and group size, the three algorithms, in place and
/// out of place, five data distributions; outputs poisoned before each call.
pub fn random_cases_bit_exact() -> TestResult {
    let name = "allreduce::random_cases_bit_exact";
    let mut rng = Rng::new(seed(name));
    let cases: usize = std::env::var("FLASHCOMM_GPU_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let comms: BTreeMap<usize, Communicator> =
        worlds().into_iter().map(|w| communicator(w, exact_config()).map(|c| (w, c))).collect::<Result<_, _>>()?;
    random_cases(&comms, cases, &mut rng, name)
}

/// Ranks sharing GPUs (`Config::shared_devices`): worlds 2, 3, 4 and 8,
/// every GPU holding two ranks or more (all on one GPU where there is one),
/// random cases as in [`random_cases_bit_exact`] with small staging, so
/// long messages run in many pieces. On one GPU this is the check of the
/// multi-rank kernels (the protocol and the numerics; the links are not
/// involved), and W = 8 is covered with fewer than 8 GPUs.
pub fn shared_device_ranks_bit_exact() -> TestResult {
    let name = "allreduce::shared_device_ranks_bit_exact";
    let mut rng = Rng::new(seed(name));
    let cases: usize = std::env::var("FLASHCOMM_GPU_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400) / 2;
    let gpus = flashcomm::gpu_count();
    let config = Config { shared_devices: true, max_piece_elems: 1 << 18, ..exact_config() };
    let mut comms = BTreeMap::new();
    for world in [2, 3, 4, 8] {
        let devices: Vec<usize> = (0..world).map(|r| r % (world / 2).clamp(1, gpus.max(1))).collect();
        let comm = ctx(Communicator::new(&devices, config.clone(), &KERNELS), &format!("create a communicator on {devices:?}"))?;
        if comm.has_nccl() {
            return Err(format!("W={world} on {devices:?}: NCCL communicators were created for shared GPUs").into());
        }
        comms.insert(world, comm);
    }
    random_cases(&comms, cases, &mut rng, name)
}

/// `cases` random calls on the communicators of `comms` (keyed by world
/// size), each checked bit for bit on every rank.
pub fn random_cases(comms: &BTreeMap<usize, Communicator>, cases: usize, rng: &mut Rng, name: &str) -> TestResult {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for case in 0..cases {
        let world = *comms.keys().nth(rng.range(0, comms.len() - 1)).unwrap();
        let comm = &comms[&world];
        let len = if rng.uniform() < 0.15 { rng.range(1, 3 * 256) } else { (2f64.powf(rng.uniform() * 22.0)) as usize + 1 };
        let kind = KINDS[rng.range(0, KINDS.len() - 1)];
        let (algorithm, quantization) = match rng.range(0, 10) {
            0 => (Algorithm::OneShot, Quantization::None),
            1 => (Algorithm::OneShotLl, Quantization::None),
            2 => (Algorithm::TwoShot, Quantization::None),
            _ => (Algorithm::Flash, random_quant(rng)),
        };
        let transport = random_transport(rng);
        let opts = CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), transport: Some(transport), ..Default::default() };
        let in_place = rng.uniform() < 0.5;
        let f16_case = rng.uniform() < 0.3;
        let what = format!(
            "case {case}: W={world} len={len} {} {algorithm:?} {} {} {kind:?} {}",
            if f16_case { "f16" } else { "bf16" },
            quantization.label(),
            transport.name(),
            if in_place { "in-place" } else { "out-of-place" }
        );
        if f16_case {
            let inputs = make_inputs::<f16>(rng, kind, world, len);
            check_case(comm, &inputs, &opts, in_place, &what)?;
        } else {
            let inputs = make_inputs::<bf16>(rng, kind, world, len);
            check_case(comm, &inputs, &opts, in_place, &what)?;
        }
        *counts.entry(format!("W={world} {algorithm:?} {}", transport.name())).or_default() += 1;
    }
    println!("{name}: {cases} cases bit-identical on every rank: {counts:?}");
    Ok(())
}

/// Many calls on one communicator with changing sizes and configurations
/// (epoch logic), including messages several times the staging capacity.
pub fn consecutive_calls_and_pieces() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    let config = Config { max_piece_elems: 1 << 16, ..exact_config() };
    let comm = communicator(world, config)?;
    let mut rng = Rng::new(seed("allreduce::consecutive_calls_and_pieces"));
    let sizes = [1000usize, 300_001, 17, 65_536, 65_537, 200_000, 1, 4096, 1_000_000, 123];
    for round in 0..3 {
        for (i, &len) in sizes.iter().enumerate() {
            let (algorithm, quantization) = match (i + round) % 4 {
                0 => (Algorithm::OneShot, Quantization::None),
                1 => (Algorithm::TwoShot, Quantization::None),
                2 => (Algorithm::Flash, random_quant(&mut rng)),
                _ => (Algorithm::Auto, Quantization::INT4_INT8),
            };
            // Transports change from call to call too (buffer roles swap).
            let opts = CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), transport: Some(random_transport(&mut rng)), ..Default::default() };
            let inputs = make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len);
            check_case(&comm, &inputs, &opts, i % 2 == 0, &format!("round {round} call {i}: len {len} {algorithm:?} {}", quantization.label()))?;
        }
    }
    println!("allreduce::consecutive_calls_and_pieces: 30 calls (pieces of 65536) bit-identical");
    Ok(())
}

/// The unquantized modes equal the rank-ordered f32 sum rounded to the type,
/// computed here independently with the `half` crate.
pub fn unquantized_is_rank_ordered_sum() -> TestResult {
    let mut rng = Rng::new(seed("allreduce::unquantized_is_rank_ordered_sum"));
    for world in worlds() {
        let comm = communicator(world, exact_config())?;
        for algorithm in [Algorithm::OneShot, Algorithm::TwoShot] {
            for len in [1usize, 100, 4097, 1 << 20] {
                let inputs = make_inputs::<bf16>(&mut rng, DataKind::Normal, world, len);
                let d_in = upload(&comm, &inputs)?;
                let mut d_out = poisoned::<bf16>(&comm, len)?;
                let opts = CallOptions { algorithm: Some(algorithm), quantization: Some(Quantization::None), ..Default::default() };
                ctx(comm.all_reduce_with(&d_in, &mut d_out, &opts), "all_reduce")?;
                ctx(comm.synchronize(), "synchronize")?;
                let expected: Vec<bf16> = (0..len)
                    .map(|i| {
                        let mut acc = inputs[0][i].to_f32();
                        for x in &inputs[1..] {
                            acc += x[i].to_f32();
                        }
                        bf16::from_f32(acc)
                    })
                    .collect();
                compare_bits(&download(&comm, &d_out)?, &expected, &format!("W={world} {algorithm:?} len {len}"))?;
            }
        }
    }
    Ok(())
}

/// Engines with one thread per GPU: each rank issues its own calls.
pub fn per_rank_calls_from_threads() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    let comm = communicator(world, Config { quantization: Quantization::INT8, ..exact_config() })?;
    let mut rng = Rng::new(seed("allreduce::per_rank_calls_from_threads"));
    let lens = [5000usize, 1 << 20, 77, 3 << 20];
    let inputs: Vec<Vec<Vec<bf16>>> = lens.iter().map(|&len| make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len)).collect();
    let mut bufs: Vec<Vec<cudarc::driver::CudaSlice<bf16>>> = inputs.iter().map(|inp| upload(&comm, inp)).collect::<Result<_, _>>()?;
    // bufs[call][rank] -> per rank: its buffer of each call.
    let mut per_rank: Vec<Vec<cudarc::driver::CudaSlice<bf16>>> = (0..world).map(|_| Vec::new()).collect();
    for call in bufs.iter_mut() {
        for (r, b) in call.drain(..).enumerate() {
            per_rank[r].push(b);
        }
    }
    let comm_ref = &comm;
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        per_rank
            .iter_mut()
            .enumerate()
            .map(|(r, mine)| {
                s.spawn(move || -> Result<(), String> {
                    for b in mine.iter_mut() {
                        comm_ref.all_reduce_rank_in_place(r, b, &CallOptions::default()).map_err(|e| e.to_string())?;
                    }
                    comm_ref.synchronize_rank(r).map_err(|e| e.to_string())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    for (r, res) in results.into_iter().enumerate() {
        res.map_err(|e| format!("rank {r}: {e}"))?;
    }
    for (call, len) in lens.iter().enumerate() {
        let q = ctx(comm.plan(*len, flashcomm::Dtype::Bf16, &CallOptions::default()), "plan")?.quantization();
        let refs: Vec<&[bf16]> = inputs[call].iter().map(|v| v.as_slice()).collect();
        let expected = ctx(reference_all_reduce(&refs, &q), "reference")?;
        let outs: Vec<Vec<bf16>> = (0..world).map(|r| ctx(ctx(comm.stream(r), "stream")?.clone_dtoh(&per_rank[r][call]), "download")).collect::<Result<_, _>>()?;
        compare_bits(&outs, &expected, &format!("per-rank call {call} len {len} ({})", q.label()))?;
    }
    Ok(())
}

/// The raw pointer entry point on the caller's own streams, and its checks.
pub fn raw_entry_point() -> TestResult {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let world = flashcomm::gpu_count().min(4);
    let comm = communicator(world, Config { quantization: Quantization::INT4, algorithm: Algorithm::Flash, ..exact_config() })?;
    let mut rng = Rng::new(seed("allreduce::raw_entry_point"));
    let len = 777_777;
    let inputs = make_inputs::<bf16>(&mut rng, DataKind::Activations, world, len);
    let mut d_out = poisoned::<bf16>(&comm, len)?;
    let d_in = upload(&comm, &inputs)?;
    let user_streams: Vec<_> = (0..world).map(|r| ctx(ctx(comm.context(r), "ctx")?.new_stream(), "new_stream")).collect::<Result<_, _>>()?;
    for r in 0..world {
        let s = &user_streams[r];
        let (src, _g1) = d_in[r].device_ptr(s);
        let (dst, _g2) = d_out[r].device_ptr_mut(s);
        // SAFETY: both buffers live on rank r's GPU with `len` elements and
        // outlive the collective (we synchronise below).
        unsafe {
            ctx(comm.all_reduce_raw(r, src, dst, len, flashcomm::Dtype::Bf16, s.cu_stream(), &CallOptions::default()), "all_reduce_raw")?;
            let misaligned = comm.all_reduce_raw(r, src + 2, dst, 16, flashcomm::Dtype::Bf16, s.cu_stream(), &CallOptions::default());
            if !matches!(misaligned, Err(flashcomm::Error::Misaligned { .. })) {
                return Err(format!("misaligned input was not refused: {misaligned:?}").into());
            }
            let overlap = comm.all_reduce_raw(r, src, src + 32, 64, flashcomm::Dtype::Bf16, s.cu_stream(), &CallOptions::default());
            if !matches!(overlap, Err(flashcomm::Error::Overlap { .. })) {
                return Err(format!("overlapping buffers were not refused: {overlap:?}").into());
            }
        }
    }
    for s in &user_streams {
        ctx(s.synchronize(), "user stream")?;
    }
    ctx(comm.synchronize(), "synchronize")?;
    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    let expected = ctx(reference_all_reduce(&refs, &Quantization::INT4), "reference")?;
    compare_bits(&download(&comm, &d_out)?, &expected, "raw entry point")
}

/// Real row-parallel partial sums of SmolLM2-135M (test fixture), through
/// the GPU, bit for bit.
pub fn real_activations_bit_exact() -> TestResult {
    let tensors = ctx(crate::common::fixture::load(), "load the fixture")?;
    let mut checked = 0;
    let mut placements = Vec::new();
    for t in &tensors {
        // Ranks share GPUs where there are fewer than t.world (the kernels'
        // numerics on real tensors; the links are then not all involved).
        let (sub, devices) = communicator_on_gpus_there_are(t.world, exact_config())?;
        placements.push(format!("{} on {devices:?}", t.name));
        let mut settings = vec![Quantization::None];
        for g in GroupSize::ALL {
            for (rs, ag) in [(Bits::B8, Bits::B8), (Bits::B4, Bits::B8), (Bits::B6, Bits::B6), (Bits::B4, Bits::B4)] {
                settings.push(Quantization::Int(Quantized::new(rs, ag, g)));
            }
        }
        // Spike reserving (the settings of the accuracy tables and a few more).
        for setting in ["int4k4-int8", "int4k4", "int4k8", "int8k1", "int4k8-int8-g256", "int4k2-int8k2-g64", "int6k1-int4k4-g32"] {
            settings.push(ctx(Quantization::parse(setting), "a spike setting")?);
        }
        for quantization in settings {
            let opts = CallOptions {
                algorithm: Some(if quantization == Quantization::None { Algorithm::TwoShot } else { Algorithm::Flash }),
                quantization: Some(quantization),
                ..Default::default()
            };
            check_case(&sub, &t.partials, &opts, false, &format!("{} {}", t.name, quantization.label()))?;
            checked += 1;
        }
    }
    println!("allreduce::real_activations_bit_exact: {checked} tensor/config pairs bit-identical ({})", placements.join(", "));
    Ok(())
}

/// `Auto` with the NCCL fallback on: calls it sends to NCCL give results
/// identical on every rank and within NCCL's bf16 rounding of the exact sum.
pub fn auto_nccl_fallback() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    // Explicit thresholds: the mechanism is tested, whatever the tuning table says.
    let thresholds = flashcomm::Thresholds { ll_max_bytes: 0, oneshot_max_bytes: 0, flash_min_bytes: usize::MAX, nccl_min_bytes: 1 << 20 };
    let comm = communicator(world, Config { thresholds: Some(thresholds), nccl_fallback: true, ..Config::default() })?;
    if !comm.has_nccl() {
        return Err("the NCCL fallback did not initialise (libnccl.so on LD_LIBRARY_PATH?)".into());
    }
    let mut rng = Rng::new(seed("allreduce::auto_nccl_fallback"));
    let len = 1 << 20;
    if ctx(comm.plan(len, flashcomm::Dtype::Bf16, &CallOptions::default()), "plan")? != flashcomm::Plan::Nccl {
        return Err(format!("Auto did not choose NCCL at {len} elements (thresholds {:?})", comm.thresholds()).into());
    }
    let inputs = make_inputs::<bf16>(&mut rng, DataKind::Normal, world, len);
    let mut bufs = upload(&comm, &inputs)?;
    ctx(comm.all_reduce_in_place(&mut bufs), "auto -> nccl")?;
    ctx(comm.synchronize(), "synchronize")?;
    let outs = download(&comm, &bufs)?;
    compare_bits(&outs[1..], &outs[0], "ranks agree under the NCCL fallback")?;
    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    let exact = flashcomm::reference::exact_sum_f64(&refs);
    for i in 0..len {
        let tol = world as f64 * 2f64.powi(-8) * inputs.iter().map(|x| (x[i].to_f32() as f64).abs()).sum::<f64>() + 1e-30;
        if (outs[0][i].to_f32() as f64 - exact[i]).abs() > tol {
            return Err(format!("element {i}: {} vs exact {}", outs[0][i], exact[i]).into());
        }
    }
    Ok(())
}

/// Registered as ignored without the `nccl` feature (main.rs).
#[cfg(not(feature = "nccl"))]
pub fn nccl_baseline_agrees() -> TestResult {
    Err("built without the nccl feature".into())
}

#[cfg(feature = "nccl")]
/// NCCL through cudarc (`Algorithm::Nccl`, the path the benchmark's
/// baseline takes too) works here and agrees with the exact sum to bf16
/// accuracy: the benchmark's reference contender is sound.
pub fn nccl_baseline_agrees() -> TestResult {
    let world = flashcomm::gpu_count().min(4);
    if !flashcomm::nccl::available() {
        return Err("libnccl.so cannot be loaded (set LD_LIBRARY_PATH; see docs/gpu-testing.md)".into());
    }
    let comm = communicator(world, Config { nccl_fallback: true, ..exact_config() })?;
    let mut rng = Rng::new(seed("allreduce::nccl_baseline_agrees"));
    let len = 1 << 20;
    let inputs = make_inputs::<bf16>(&mut rng, DataKind::Normal, world, len);
    let mut bufs = upload(&comm, &inputs)?;
    let nccl = CallOptions { algorithm: Some(Algorithm::Nccl), ..Default::default() };
    ctx(comm.all_reduce_in_place_with(&mut bufs, &nccl), "ncclAllReduce")?;
    ctx(comm.synchronize(), "synchronize")?;
    let outs = download(&comm, &bufs)?;
    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    let exact = flashcomm::reference::exact_sum_f64(&refs);
    for (r, out) in outs.iter().enumerate() {
        for i in 0..len {
            let err = (out[i].to_f32() as f64 - exact[i]).abs();
            // NCCL's ring rounds to bf16 after every hop: up to W roundings
            // of partial sums no larger than sum |x|.
            let tol = world as f64 * 2f64.powi(-8) * inputs.iter().map(|x| (x[i].to_f32() as f64).abs()).sum::<f64>() + 1e-30;
            if err > tol {
                return Err(format!("NCCL rank {r} element {i}: {} vs exact {}", out[i], exact[i]).into());
            }
        }
    }
    Ok(())
}

/// Calls captured into CUDA graphs (one per rank, through the raw entry
/// point on the rank's own stream) and replayed with fresh inputs: every
/// replay bit-identical to the reference. The kernels keep their epochs in
/// device memory and take fixed pointers, so a replay is a new call to them.
/// Four ranks on the GPUs there are (sharing GPUs where fewer than four).
pub fn graph_replay_bit_exact() -> TestResult {
    // Small staging: the multi-piece schedule replays too.
    let (comm, devices) = communicator_on_gpus_there_are(4, Config { max_piece_elems: 1 << 18, ..exact_config() })?;
    let mut rng = Rng::new(seed("allreduce::graph_replay_bit_exact"));
    graph_replay_cases(&comm, &mut rng)?;
    println!("allreduce::graph_replay_bit_exact: 4 plans x 3 replays bit-identical on {devices:?}");
    Ok(())
}

/// [`graph_replay_bit_exact`]'s body, for this process's ranks of `comm`
/// (every rank, or one rank of a per-process communicator).
pub fn graph_replay_cases(comm: &Communicator, rng: &mut Rng) -> TestResult {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let world = comm.world_size();
    let cases = [
        (Algorithm::OneShot, Quantization::None, 3000usize),
        (Algorithm::TwoShot, Quantization::None, 200_001),
        (Algorithm::Flash, Quantization::INT8, 1_000_000),
        (Algorithm::Flash, Quantization::INT4, 777_777),
    ];
    for (algorithm, quantization, len) in cases {
        let what = format!("graph {algorithm:?} {} len {len}", quantization.label());
        let opts = CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), ..Default::default() };
        let mut d_in = upload(comm, &make_inputs::<bf16>(rng, DataKind::Activations, world, len))?;
        let mut d_out = poisoned::<bf16>(comm, len)?;
        ctx(comm.synchronize(), &what)?;
        // Indexed by rank (zeros for ranks of other processes).
        let mut ptrs = vec![(0u64, 0u64); world];
        for (i, r) in comm.local_ranks().into_iter().enumerate() {
            let stream = ctx(comm.stream(r), "stream")?;
            ptrs[r] = (d_in[i].device_ptr(stream).0, d_out[i].device_ptr_mut(stream).0);
        }
        // SAFETY: both buffers live on rank r's GPU with `len` elements and
        // outlive every replay (dropped after the loop below).
        let graphs = capture_per_rank(comm, |r, stream| unsafe { comm.all_reduce_raw(r, ptrs[r].0, ptrs[r].1, len, flashcomm::Dtype::Bf16, stream.cu_stream(), &opts) }, &what)?;
        for replay in 0..3 {
            let inputs = make_inputs::<bf16>(rng, DataKind::Activations, world, len);
            for (i, r) in comm.local_ranks().into_iter().enumerate() {
                let stream = ctx(comm.stream(r), "stream")?;
                ctx(stream.memcpy_htod(&inputs[r], &mut d_in[i]), "upload")?;
                ctx(stream.memcpy_htod(&vec![bf16::from_bits(0xFFFF); len], &mut d_out[i]), "poison")?;
                ctx(stream.synchronize(), "upload")?;
            }
            replay_all(comm, &graphs, &format!("{what}: replay {replay}"))?;
            let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
            let expected = ctx(reference_all_reduce(&refs, &quantization), "reference")?;
            compare_bits(&download(comm, &d_out)?, &expected, &format!("{what}: replay {replay}"))?;
        }
        drop(graphs);
    }
    Ok(())
}

/// Hundreds of calls queued back to back without a host synchronisation,
/// eager and then replayed from one CUDA graph per rank (no host gaps at
/// all): one-shots of two lengths (different tags) and a quantized two-shot
/// in turn, each into its own poisoned output buffer, then every output
/// checked. The one-shot crosses one barrier per call, so a rank can run a
/// call ahead of its peers: a slot reused too early would give a wrong sum,
/// a tag of the next call read for this one a spurious `CollectiveMismatch`
/// (a narrow window, fixed by construction: tags by epoch parity; this test
/// did not reproduce it with the kernels before that fix). Four ranks on
/// the GPUs there are (sharing where fewer).
pub fn back_to_back_calls_no_host_sync() -> TestResult {
    let (comm, devices) = communicator_on_gpus_there_are(4, exact_config())?;
    let mut rng = Rng::new(seed("allreduce::back_to_back_calls_no_host_sync"));
    let calls = back_to_back_calls(&comm, &mut rng)?;
    println!("allreduce::back_to_back_calls_no_host_sync: {calls} queued calls bit-identical on {devices:?}, eager and in 2 graph replays");
    Ok(())
}

/// [`back_to_back_calls_no_host_sync`]'s body, for this process's ranks of
/// `comm`; returns the number of calls.
pub fn back_to_back_calls(comm: &Communicator, rng: &mut Rng) -> Result<usize, libtest_mimic::Failed> {
    let world = comm.world_size();
    let kinds = [
        (Algorithm::OneShot, Quantization::None, 3000usize),
        (Algorithm::OneShotLl, Quantization::None, 5001),
        (Algorithm::OneShot, Quantization::None, 70_001),
        (Algorithm::OneShotLl, Quantization::None, 100_000),
        (Algorithm::Flash, Quantization::INT8, 50_000),
    ];
    let mut inputs = Vec::new();
    let mut expected = Vec::new();
    for &(_, q, len) in &kinds {
        let data = make_inputs::<bf16>(rng, DataKind::Activations, world, len);
        let refs: Vec<&[bf16]> = data.iter().map(|v| v.as_slice()).collect();
        expected.push(ctx(reference_all_reduce(&refs, &q), "reference")?);
        inputs.push(upload(comm, &data)?);
    }
    // FLASHCOMM_BACK_TO_BACK_CALLS: fewer under the sanitizer (300 calls
    // and two graph replays of them take over 7 minutes under memcheck).
    let calls: usize = std::env::var("FLASHCOMM_BACK_TO_BACK_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(300).max(kinds.len());
    let mut outputs = Vec::with_capacity(calls);
    for i in 0..calls {
        let k = i % kinds.len();
        outputs.push(poisoned::<bf16>(comm, kinds[k].2)?);
    }
    ctx(comm.synchronize(), "uploads")?;
    for (i, out) in outputs.iter_mut().enumerate() {
        let (algorithm, quantization, _) = kinds[i % kinds.len()];
        let opts = CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), ..Default::default() };
        ctx(comm.all_reduce_with(&inputs[i % kinds.len()], out, &opts), &format!("call {i}"))?;
    }
    ctx(comm.synchronize(), &format!("{calls} queued calls"))?;
    let check = |outputs: &[Vec<cudarc::driver::CudaSlice<bf16>>], how: &str| -> TestResult {
        for (i, out) in outputs.iter().enumerate() {
            let (algorithm, quantization, len) = kinds[i % kinds.len()];
            compare_bits(&download(comm, out)?, &expected[i % kinds.len()], &format!("{how} call {i}: {algorithm:?} {} len {len}", quantization.label()))?;
        }
        Ok(())
    };
    check(&outputs, "eager")?;

    // The same sequence captured, one graph per rank, and replayed twice.
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    // Indexed by rank (empty for ranks of other processes).
    let mut srcs = vec![Vec::new(); world];
    let mut dsts = vec![Vec::new(); world];
    for (l, r) in comm.local_ranks().into_iter().enumerate() {
        let stream = ctx(comm.stream(r), "stream")?;
        srcs[r] = inputs.iter().map(|set| set[l].device_ptr(stream).0).collect::<Vec<u64>>();
        dsts[r] = outputs.iter_mut().map(|out| out[l].device_ptr_mut(stream).0).collect::<Vec<u64>>();
    }
    let graphs = capture_per_rank(
        comm,
        |r, stream| {
            dsts[r].iter().enumerate().try_for_each(|(i, &dst)| {
                let (algorithm, quantization, len) = kinds[i % kinds.len()];
                let opts = CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), ..Default::default() };
                // SAFETY: both buffers live on rank r's GPU with `len`
                // elements and outlive every replay.
                unsafe { comm.all_reduce_raw(r, srcs[r][i % kinds.len()], dst, len, flashcomm::Dtype::Bf16, stream.cu_stream(), &opts) }
            })
        },
        "back-to-back",
    )?;
    for replay in 0..2 {
        for (i, out) in outputs.iter_mut().enumerate() {
            for (buf, r) in out.iter_mut().zip(comm.local_ranks()) {
                ctx(ctx(comm.stream(r), "stream")?.memcpy_htod(&vec![bf16::from_bits(0xFFFF); kinds[i % kinds.len()].2], buf), "poison")?;
            }
        }
        ctx(comm.synchronize(), "poison")?;
        replay_all(comm, &graphs, &format!("replay {replay}"))?;
        check(&outputs, &format!("graph replay {replay}"))?;
    }
    Ok(calls)
}
