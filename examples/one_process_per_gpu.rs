//! One process per GPU, as tensor-parallel servers run: this program is
//! its own launcher. Run without `FLASHCOMM_RANK`, it makes a unique id and
//! starts one copy of itself per GPU with `FLASHCOMM_RANK`,
//! `FLASHCOMM_WORLD_SIZE`, `FLASHCOMM_UNIQUE_ID` and `CUDA_VISIBLE_DEVICES`
//! set (what any launcher sets); each copy creates its rank with
//! `Communicator::init_rank`, all-reduces a buffer with INT8 Flash, and
//! checks it against the CPU reference bit for bit.
//!
//! `cargo run --release --example one_process_per_gpu` (2+ GPUs).
use flashcomm::bootstrap::{env, Bootstrap, Identity, UniqueId};
use flashcomm::reference::reference_all_reduce;
use flashcomm::{CallOptions, Communicator, Config, Quantization, KERNELS};
use half::bf16;
use std::process::Command;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var(env::RANK).is_err() {
        return launch();
    }
    let config = Config { quantization: Quantization::INT8, ..Config::default() };
    let (bootstrap, _) = Bootstrap::from_env(&Identity::current(&config, &KERNELS), &[], Duration::from_secs(60))?;
    let (rank, world) = (bootstrap.rank(), bootstrap.world());
    // Each process sees only its GPU: device 0.
    let comm = Communicator::init_rank(bootstrap, 0, config, &KERNELS)?;

    // Every rank's input, made the same way in every process (so each can
    // check the sum); this rank uploads its own.
    let len = 4 << 20;
    let inputs: Vec<Vec<bf16>> = flashcomm::synth::rank_activations(7, world, len, 4096);
    let stream = comm.stream(rank)?;
    let mut x = stream.clone_htod(&inputs[rank])?;
    let opts = CallOptions { algorithm: Some(flashcomm::Algorithm::Flash), ..Default::default() };
    comm.all_reduce_rank_in_place(rank, &mut x, &opts)?;
    comm.synchronize_rank(rank)?;

    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    let expected = reference_all_reduce(&refs, &Quantization::INT8)?;
    let got = stream.clone_dtoh(&x)?;
    let exact = got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
    println!("rank {rank} of {world} ({}): INT8 all-reduce of {len} bf16, bit-identical to the CPU reference: {exact}", comm.gpu_name());
    if !exact {
        return Err("result differs from the reference".into());
    }
    Ok(())
}

/// Starts one copy of this program per GPU, each seeing only its GPU.
fn launch() -> Result<(), Box<dyn std::error::Error>> {
    let world = flashcomm::gpu_count();
    if world < 2 {
        println!("one_process_per_gpu: needs 2+ GPUs ({world} visible)");
        return Ok(());
    }
    let id = UniqueId::generate("127.0.0.1:29517".parse()?)?;
    let children = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe()?)
                .env(env::RANK, rank.to_string())
                .env(env::WORLD_SIZE, world.to_string())
                .env(env::UNIQUE_ID, id.to_string())
                .env("CUDA_VISIBLE_DEVICES", rank.to_string())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut failed = 0;
    for mut child in children {
        failed += !child.wait()?.success() as usize;
    }
    if failed > 0 {
        return Err(format!("{failed} rank process(es) failed").into());
    }
    Ok(())
}
