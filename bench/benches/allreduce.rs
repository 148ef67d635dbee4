//! All-reduce benchmark: flashcomm against NCCL on this host's GPUs.
//!
//! `cargo bench --bench allreduce -- [--quick] [--worlds 2,4] [--iters N] [--sizes 16K,1M]
//! [--graphs K] [--shared-gpu] [--out DIR]` (staged by `scripts/gpu-suite.sh` and run on
//! the GPU host as `scripts/gpu-suite.sh remote bench`). `--graphs K` times
//! CUDA-graph replays of K back-to-back calls for every contender;
//! `--shared-gpu` is a smoke test of the harness with every rank on GPU 0
//! (no NCCL; the times mean nothing). Without GPUs it says so and exits.
use flashcomm_bench::{run_and_report, BenchOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gpus = flashcomm::gpu_count();
    let shared_gpu = args.iter().any(|a| a == "--shared-gpu");
    if gpus < 2 && !(shared_gpu && gpus == 1) {
        println!("allreduce bench: skipped, needs 2+ GPUs ({gpus} visible; --shared-gpu runs a smoke test on one)");
        return;
    }
    let mut opts = if args.iter().any(|a| a == "--quick") { BenchOptions::quick(gpus) } else { BenchOptions::full() };
    let mut out = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--worlds" => opts.worlds = it.next().expect("--worlds 2,4").split(',').map(|w| w.parse().expect("world size")).collect(),
            "--iters" => opts.iters = it.next().expect("--iters N").parse().expect("iterations"),
            "--max-bytes" => {
                let max: usize = it.next().expect("--max-bytes N").parse().expect("bytes");
                opts.sizes.retain(|&s| s <= max);
            }
            "--out" => out = Some(std::path::PathBuf::from(it.next().expect("--out DIR"))),
            "--no-progress" => opts.progress = false,
            "--no-plot" => opts.plot = false,
            "--graphs" => opts.graph_calls = Some(it.next().expect("--graphs K").parse().expect("calls per graph")),
            "--shared-gpu" => opts.shared_gpu = true,
            "--transports" => opts.contenders = flashcomm_bench::transport_contenders(),
            "--phases" => opts.contenders = flashcomm_bench::phase_contenders(),
            "--sizes" => {
                opts.sizes = it.next().expect("--sizes 16K,1M").split(',').map(parse_size).collect();
            }
            _ => {}
        }
    }
    let command = args.join(" ");
    fn parse_size(s: &str) -> usize {
        let s = s.trim().to_ascii_uppercase();
        let (num, mult) = match s.chars().last() {
            Some('K') => (&s[..s.len() - 1], 1 << 10),
            Some('M') => (&s[..s.len() - 1], 1 << 20),
            _ => (&s[..], 1),
        };
        num.parse::<usize>().expect("size") * mult
    }
    if let Err(e) = run_and_report(&opts, out.as_deref(), &command) {
        eprintln!("allreduce bench failed: {e}");
        std::process::exit(1);
    }
}
