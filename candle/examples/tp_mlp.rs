//! A tensor-parallel MLP block on two GPUs with candle, its all-reduce by
//! flashcomm: the Llama-7B-shaped SwiGLU block `down(silu(x gate) * (x up))`
//! (hidden 4096, intermediate 11008, bf16), gate and up split by columns,
//! down by rows, so each GPU computes a partial output and one all-reduce
//! sums them. Checks, for decode- and prefill-sized batches, unquantized
//! (`Auto`) and Flash INT8:
//! - every rank's output equals flashcomm's CPU reference applied to the
//!   partial outputs, bit for bit (the library's contract);
//! - the ranks agree bit for bit;
//! - the output matches the same block computed on one GPU within the
//!   error that splitting the sum (and, for INT8, quantizing) allows.
//!
//! Run: `cargo run --release --manifest-path candle/Cargo.toml --example tp_mlp`
//! (after scripts/setup-candle.sh, on a machine with 2 GPUs).
use candle_core::{DType, Device, Tensor};
use flashcomm::reference::reference_all_reduce;
use flashcomm::synth::Rng;
use flashcomm::{Algorithm, CallOptions, Config, Dtype, Quantization};
use flashcomm_candle::{communicator, AllReduce};
use half::bf16;
use std::sync::Arc;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const HIDDEN: usize = 4096;
const INTER: usize = 11008;
const TP: usize = 2;

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

fn bf16_tensor(data: Vec<f32>, shape: (usize, usize)) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(DType::BF16)?)
}

/// The SwiGLU block.
fn mlp(x: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor) -> candle_core::Result<Tensor> {
    (x.matmul(gate)?.silu()? * x.matmul(up)?)?.matmul(down)
}

fn host(t: &Tensor) -> Result<Vec<bf16>> {
    Ok(t.flatten_all()?.to_vec1::<bf16>()?)
}

/// Relative L2 distance of `got` from `want`.
fn rel_l2(got: &[bf16], want: &[bf16]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.to_f64(), w.to_f64());
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den).sqrt()
}

fn main() -> Result<()> {
    let devices: Vec<Device> = (0..TP).map(Device::new_cuda).collect::<candle_core::Result<_>>()?;
    let cuda: Vec<_> = devices
        .iter()
        .map(|d| match d {
            Device::Cuda(c) => Ok(c.clone()),
            _ => Err("not a CUDA device"),
        })
        .collect::<std::result::Result<_, _>>()?;
    let comm = Arc::new(communicator(&cuda, Config::default())?);
    println!("flashcomm over candle devices {:?} ({}), kernels: {}", comm.devices(), comm.gpu_name(), comm.kernel_code(0)?);

    let mut rng = Rng::new(2024);
    let gate = bf16_tensor(randn(&mut rng, HIDDEN * INTER, 0.02), (HIDDEN, INTER))?;
    let up = bf16_tensor(randn(&mut rng, HIDDEN * INTER, 0.02), (HIDDEN, INTER))?;
    let down = bf16_tensor(randn(&mut rng, INTER * HIDDEN, 0.02), (INTER, HIDDEN))?;
    let full: Vec<Tensor> = [&gate, &up, &down].iter().map(|w| w.to_device(&devices[0])).collect::<candle_core::Result<_>>()?;
    // Rank r's shards: columns of gate and up, rows of down.
    let shard = INTER / TP;
    let shards: Vec<[Tensor; 3]> = (0..TP)
        .map(|r| -> Result<[Tensor; 3]> {
            let d = &devices[r];
            Ok([
                gate.narrow(1, r * shard, shard)?.contiguous()?.to_device(d)?,
                up.narrow(1, r * shard, shard)?.contiguous()?.to_device(d)?,
                down.narrow(0, r * shard, shard)?.contiguous()?.to_device(d)?,
            ])
        })
        .collect::<Result<_>>()?;

    let settings = [
        ("none (Auto)", CallOptions::default(), Quantization::None, 1e-2),
        ("int8 (Flash)", CallOptions { algorithm: Some(Algorithm::Flash), quantization: Some(Quantization::INT8), ..Default::default() }, Quantization::INT8, 3e-2),
    ];
    println!("| tokens | all-reduce | plan | ranks equal | = CPU reference | rel. L2 vs one GPU (bound) |");
    println!("|---:|---|---|---|---|---|");
    let mut failures = Vec::new();
    for tokens in [32usize, 1024] {
        let x = bf16_tensor(randn(&mut rng, tokens * HIDDEN, 1.0), (tokens, HIDDEN))?;
        let one_gpu = host(&mlp(&x.to_device(&devices[0])?, &full[0], &full[1], &full[2])?)?;
        for (label, options, quantization, bound) in &settings {
            let plan = comm.plan(tokens * HIDDEN, Dtype::Bf16, options)?.label();
            // One thread per GPU, as an engine drives them.
            let per_rank: Vec<Result<(Vec<bf16>, Vec<bf16>)>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..TP)
                    .map(|r| {
                        let (comm, x, shards, device) = (comm.clone(), &x, &shards[r], &devices[r]);
                        s.spawn(move || -> Result<(Vec<bf16>, Vec<bf16>)> {
                            let partial = mlp(&x.to_device(device)?, &shards[0], &shards[1], &shards[2])?;
                            let y = AllReduce::new(comm, r, *options).apply(&partial)?;
                            Ok((host(&partial)?, host(&y)?))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("rank thread panicked".into()))).collect()
            });
            let per_rank: Vec<(Vec<bf16>, Vec<bf16>)> = per_rank.into_iter().collect::<Result<_>>()?;
            comm.synchronize()?;
            let partials: Vec<&[bf16]> = per_rank.iter().map(|(p, _)| p.as_slice()).collect();
            let reference = reference_all_reduce(&partials, quantization)?;
            let bits = |v: &[bf16]| v.iter().map(|b| b.to_bits()).collect::<Vec<u16>>();
            let equal = per_rank.iter().all(|(_, y)| bits(y) == bits(&per_rank[0].1));
            let exact = per_rank.iter().all(|(_, y)| bits(y) == bits(&reference));
            let err = rel_l2(&per_rank[0].1, &one_gpu);
            println!("| {tokens} | {label} | {plan} | {equal} | {exact} | {err:.2e} ({bound:.0e}) |");
            if !(equal && exact && err <= *bound) {
                failures.push(format!("{tokens} tokens, {label}"));
            }
        }
    }
    if failures.is_empty() {
        println!("tp_mlp: every case exact with flashcomm's reference and within its bound of one-GPU candle");
        Ok(())
    } else {
        Err(format!("tp_mlp: failed: {}", failures.join("; ")).into())
    }
}
