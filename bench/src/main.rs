//! `flashcomm`: the main job.
//!
//! `cargo run --release` picks what the machine can do:
//! - 2+ GPUs: a short benchmark against NCCL (table on stdout);
//! - 1 GPU: the codec kernels' bit-exactness check against the host codec,
//!   then the all-reduce kernels with four ranks sharing the GPU against the
//!   CPU reference;
//! - no GPU: the error of every quantization setting on LLM-like activations
//!   (CPU reference reducer, which the GPU matches bit for bit).
//!
//! Subcommands: `codec-table`, `check`, `bench [--full] [--out DIR]`,
//! `startup [--ptx]` (time `Communicator::new` over every GPU, the first in
//! this process), `id [ADDR]` (a new bootstrap unique id for a launcher that
//! starts one process per rank, rank 0 listening at ADDR, default
//! 127.0.0.1:29517), `ptx` (print the embedded PTX).
use flashcomm::reference::{exact_sum_f64, reference_all_reduce, round_trip_group};
use flashcomm::Spikes;
use flashcomm::{Bits, GroupSize, Quantization, Quantized};
use half::bf16;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gpus = flashcomm::gpu_count();
    let result = match args.first().map(String::as_str) {
        Some("codec-table") => codec_table(),
        Some("check") => gpu_check(),
        Some("bench") => bench(&args[1..], gpus),
        Some("startup") => startup(args.get(1).map(String::as_str) == Some("--ptx"), gpus),
        Some("id") => new_id(args.get(1).map(String::as_str).unwrap_or("127.0.0.1:29517")),
        Some("ptx") => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(flashcomm::KERNELS.ptx().as_bytes());
            Ok(())
        }
        Some("help" | "--help" | "-h") => {
            println!("usage: flashcomm [codec-table | check | bench [--full] [--out DIR] | startup [--ptx] | id [ADDR] | ptx]");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?} (try --help)")),
        None if gpus >= 2 => bench(&[], gpus),
        None if gpus == 1 => gpu_check(),
        None => {
            println!("No CUDA GPU visible: showing the quantization error table (CPU reference reducer).\n");
            codec_table()
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a new unique id for rank 0 to listen at `addr`: what a launcher
/// hands to every rank's process as `FLASHCOMM_UNIQUE_ID`
/// (`Bootstrap::from_env`). It holds the secret: keep it out of logs.
fn new_id(addr: &str) -> Result<(), String> {
    let addr = addr.parse().map_err(|e| format!("{addr:?} is not an address (IP:port): {e}"))?;
    println!("{}", flashcomm::bootstrap::UniqueId::generate(addr).map_err(|e| e.to_string())?);
    Ok(())
}

/// Times the first `Communicator::new` of this process over every GPU (two
/// ranks sharing the GPU where there is one): driver start, contexts, peer
/// access and probe, loading the kernels (SASS, or with `--ptx` the PTX the
/// driver JIT-compiles), buffers. Run it in a fresh process per setting
/// (`CUDA_CACHE_DISABLE=1`, an empty `CUDA_CACHE_PATH`) to see cold starts.
fn startup(ptx_only: bool, gpus: usize) -> Result<(), String> {
    if gpus == 0 {
        return Err("startup needs a GPU".into());
    }
    let devices: Vec<usize> = if gpus >= 2 { (0..gpus).collect() } else { vec![0, 0] };
    let config = flashcomm::Config { shared_devices: gpus < 2, ..flashcomm::Config::default() };
    let image = if ptx_only { flashcomm::KERNELS.ptx_only() } else { flashcomm::KERNELS };
    let start = std::time::Instant::now();
    let comm = flashcomm::Communicator::new(&devices, config, &image).map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    let code = comm.kernel_code(0).map_err(|e| e.to_string())?;
    let cache = |v: &str| std::env::var(v).unwrap_or_else(|_| "-".into());
    println!(
        "startup: Communicator::new over devices {devices:?} ({}): {:.3} s; kernels: {code}; CUDA_CACHE_DISABLE={} CUDA_CACHE_PATH={}",
        comm.gpu_name(),
        elapsed.as_secs_f64(),
        cache("CUDA_CACHE_DISABLE"),
        cache("CUDA_CACHE_PATH")
    );
    Ok(())
}

fn rel_l2(out: impl Iterator<Item = f64>, exact: &[f64]) -> (f64, f64) {
    let (mut num, mut den, mut max_abs) = (0.0, 0.0, 0.0f64);
    for (y, &x) in out.zip(exact) {
        num += (y - x) * (y - x);
        den += x * x;
        max_abs = max_abs.max((y - x).abs());
    }
    ((num / den).sqrt(), max_abs)
}

/// Error of each setting on LLM-like data: one rank's codec round trip, and
/// the whole reducer (W = 4) against the exact sum.
fn codec_table() -> Result<(), String> {
    let world = 4;
    let hidden = 4096;
    let len = 256 * hidden;
    let ranks = flashcomm::synth::rank_activations::<bf16>(2412_04964, world, len, hidden);
    let refs: Vec<&[bf16]> = ranks.iter().map(|v| v.as_slice()).collect();
    let exact = exact_sum_f64(&refs);
    let x0: Vec<f64> = ranks[0].iter().map(|v| v.to_f32() as f64).collect();
    println!("Data: {world} ranks x {len} bf16 elements (256 tokens x hidden {hidden}), N(0,1) with 4 outlier channels x20-100.");
    println!("codec rel L2 = ||roundtrip(x) - x|| / ||x|| for rank 0; reducer rel L2 / max abs vs the exact f64 sum of all ranks.\n");
    println!("| setting | group | bytes/elem (bf16 = 2) | codec rel L2 | reducer rel L2 | reducer max abs |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (none_rel, none_max) = rel_l2(
        reference_all_reduce(&refs, &Quantization::None).map_err(|e| e.to_string())?.iter().map(|v| v.to_f32() as f64),
        &exact,
    );
    println!("| none (bf16 two-shot) | - | 2.000 | 0 | {none_rel:.2e} | {none_max:.2e} |");
    let k4 = Spikes::new(4).expect("a supported count");
    let settings = [(Bits::B8, Bits::B8, Spikes::NONE), (Bits::B4, Bits::B8, Spikes::NONE), (Bits::B6, Bits::B6, Spikes::NONE), (Bits::B4, Bits::B4, Spikes::NONE), (Bits::B4, Bits::B8, k4), (Bits::B4, Bits::B4, k4)];
    for (rs, ag, spikes) in settings {
        for group_size in GroupSize::ALL {
            let g = group_size.get();
            let mut rt: Vec<f32> = ranks[0].iter().map(|v| v.to_f32()).collect();
            for group in rt.chunks_mut(g) {
                round_trip_group::<flashcomm::device::codec::Bf16>(group, rs, spikes);
            }
            let (codec_rel, _) = rel_l2(rt.iter().map(|&v| v as f64), &x0);
            let q = Quantized::new(rs, ag, group_size).with_spikes(spikes, spikes);
            let out = reference_all_reduce(&refs, &Quantization::Int(q)).map_err(|e| e.to_string())?;
            let (red_rel, red_max) = rel_l2(out.iter().map(|v| v.to_f32() as f64), &exact);
            let (rs_bits, ag_bits) = q.bits_per_element();
            let bpe = (rs_bits + ag_bits) / 16.0;
            println!("| {} | {g} | {bpe:.3} | {codec_rel:.2e} | {red_rel:.2e} | {red_max:.2e} |", q.label());
        }
    }
    println!("\nThe GPU kernels return these results bit for bit (tests/gpu, docs/gpu-testing.md).");
    Ok(())
}

/// The codec kernels on GPU 0 against the host codec.
fn gpu_check() -> Result<(), String> {
    use flashcomm::codec_gpu::GpuCodec;
    use flashcomm::reference::{dequantize_blob, quantize_blob};
    let codec = GpuCodec::new(0, &flashcomm::KERNELS).map_err(|e| e.to_string())?;
    let stream = codec.stream();
    let mut checked = 0;
    for (i, &len) in [1usize, 1000, 65_537, 4 << 20].iter().enumerate() {
        let data = flashcomm::synth::rank_activations::<bf16>(i as u64, 1, len, 4096).remove(0);
        for &bits in Bits::ALL {
            for g in GroupSize::ALL {
                for spikes in [Spikes::NONE, Spikes::new(1).expect("supported"), Spikes::MAX] {
                    let input = stream.clone_htod(&data).map_err(|e| e.to_string())?;
                    let mut blob = stream.alloc_zeros::<u8>(GpuCodec::blob_bytes(len, bits, g, spikes)).map_err(|e| e.to_string())?;
                    let mut out = stream.clone_htod(&vec![bf16::from_bits(0xFFFF); len]).map_err(|e| e.to_string())?;
                    codec.quantize(&input, (bits, g, spikes), &mut blob).map_err(|e| e.to_string())?;
                    codec.dequantize(&blob, (bits, g, spikes), &mut out).map_err(|e| e.to_string())?;
                    let got = stream.clone_dtoh(&out).map_err(|e| e.to_string())?;
                    let host_blob = quantize_blob(&data, bits, g, spikes);
                    let want: Vec<bf16> = dequantize_blob(&host_blob, len, bits, g, spikes).map_err(|e| e.to_string())?;
                    if let Some(k) = (0..len).find(|&k| got[k].to_bits() != want[k].to_bits()) {
                        return Err(format!("len {len} {} g{} k{}: element {k} is {} on the GPU, {} on the host", bits.name(), g.get(), spikes.get(), got[k], want[k]));
                    }
                    checked += 1;
                }
            }
        }
    }
    println!("GPU codec round trip: {checked} configurations bit-identical to the host codec on {}", codec.context().name().unwrap_or_default());
    drop(codec);
    shared_gpu_check()
}

/// The all-reduce kernels with four ranks sharing GPU 0
/// (`Config::shared_devices`) against the CPU reference: exact results, no
/// speed meaning (the ranks split one GPU's SMs; no links are involved).
fn shared_gpu_check() -> Result<(), String> {
    use flashcomm::{Algorithm, CallOptions, Communicator, Config, Quantization};
    let world = 4;
    let config = Config { shared_devices: true, nccl_fallback: false, ..Config::default() };
    let comm = Communicator::new(&[0; 4], config, &flashcomm::KERNELS).map_err(|e| e.to_string())?;
    let len = 1 << 20;
    let settings = [
        (Algorithm::OneShot, Quantization::None),
        (Algorithm::TwoShot, Quantization::None),
        (Algorithm::Flash, Quantization::INT8),
        (Algorithm::Flash, Quantization::INT4_INT8),
        (Algorithm::Flash, Quantization::INT4),
    ];
    for (i, (algorithm, quantization)) in settings.into_iter().enumerate() {
        let inputs = flashcomm::synth::rank_activations::<bf16>(100 + i as u64, world, len, 4096);
        let d_in = (0..world).map(|r| comm.stream(r)?.clone_htod(&inputs[r]).map_err(Into::into)).collect::<flashcomm::Result<Vec<_>>>().map_err(|e| e.to_string())?;
        let mut d_out = (0..world)
            .map(|r| comm.stream(r)?.clone_htod(&vec![bf16::from_bits(0xFFFF); len]).map_err(Into::into))
            .collect::<flashcomm::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let opts = CallOptions { algorithm: Some(algorithm), quantization: Some(quantization), ..Default::default() };
        comm.all_reduce_with(&d_in, &mut d_out, &opts).map_err(|e| e.to_string())?;
        comm.synchronize().map_err(|e| e.to_string())?;
        let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
        let want = reference_all_reduce(&refs, &quantization).map_err(|e| e.to_string())?;
        for (r, out) in d_out.iter().enumerate() {
            let got = comm.stream(r).map_err(|e| e.to_string())?.clone_dtoh(out).map_err(|e| e.to_string())?;
            if let Some(k) = (0..len).find(|&k| got[k].to_bits() != want[k].to_bits()) {
                return Err(format!("{algorithm:?} {}: rank {r} element {k} is {}, the reference {}", quantization.label(), got[k], want[k]));
            }
        }
    }
    println!(
        "All-reduce, {world} ranks sharing GPU 0 (Config::shared_devices: a correctness check, no speed meaning): one-shot, two-shot, int8, int4-int8, int4 on {len} bf16 elements bit-identical to the CPU reference on every rank"
    );
    Ok(())
}

fn bench(args: &[String], gpus: usize) -> Result<(), String> {
    use flashcomm_bench::{run_and_report, BenchOptions};
    if gpus < 2 {
        return Err(format!("the benchmark needs 2+ GPUs ({gpus} visible)"));
    }
    let opts = if args.iter().any(|a| a == "--full") { BenchOptions::full() } else { BenchOptions::quick(gpus) };
    let out = args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
    let command = std::iter::once("flashcomm".to_string()).chain(std::iter::once("bench".into())).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
    run_and_report(&opts, out.as_deref(), &command).map(|_| ()).map_err(|e| e.to_string())
}
