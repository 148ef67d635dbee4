//! All-reduce benchmark: flashcomm against NCCL on this host's GPUs.
//!
//! `cargo bench --bench allreduce -- [--quick] [--worlds 2,4] [--iters N] [--sizes 16K,1M]
//! [--graphs K] [--shared-gpu] [--flash LIST] [--out DIR]` (staged by `scripts/gpu-suite.sh` and run on
//! the GPU host as `scripts/gpu-suite.sh remote bench`). `--graphs K` times
//! CUDA-graph replays of K back-to-back calls for every contender;
//! `--shared-gpu` is a smoke test of the harness with every rank on GPU 0
//! (no NCCL; the times mean nothing). `--procs` runs one process per rank
//! (`Communicator::init_rank`, NCCL by `ncclCommInitRank`): this binary
//! launches W copies of itself, each driving its own GPU and issuing its own
//! rank's calls, as engines with one process per GPU do; rank 0 reports.
//! Without GPUs it says so and exits.
use flashcomm_bench::{run_and_report, run_process_rank, write_report, BenchOptions};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Set in a rank process of `--procs`: `<rank> <world> [<unique id>]`.
const RANK_ENV: &str = "FLASHCOMM_BENCH_RANK";

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
            "--flash" => {
                let list = it.next().expect("--flash int8,int4k4-int8");
                opts.contenders = flashcomm_bench::flash_contenders(list).expect("quantization settings");
            }
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
    if let Ok(spec) = std::env::var(RANK_ENV) {
        let parts: Vec<&str> = spec.split(' ').collect();
        let (rank, world): (usize, usize) = (parts[0].parse().expect("rank"), parts[1].parse().expect("world"));
        let done = run_process_rank(&opts, &command, rank, world, parts.get(2).copied()).and_then(|report| match report {
            Some(report) => write_report(&report, &opts, out.as_deref()),
            None => Ok(()),
        });
        if let Err(e) = done {
            eprintln!("allreduce bench, rank {rank} of {world}: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--procs") {
        let mut failed = false;
        for &world in &opts.worlds {
            if world > gpus {
                println!("skipping W={world}: only {gpus} GPUs");
                continue;
            }
            failed |= !launch_ranks(&args, world);
        }
        std::process::exit(failed as i32);
    }
    if let Err(e) = run_and_report(&opts, out.as_deref(), &command) {
        eprintln!("allreduce bench failed: {e}");
        std::process::exit(1);
    }
}

/// Starts `world` rank processes (this binary, same arguments, one per
/// GPU): rank 0 first, whose first line is the bootstrap id handed to the
/// others; then forwards rank 0's output and waits for all. True when every
/// rank succeeded.
fn launch_ranks(args: &[String], world: usize) -> bool {
    let worlds: Vec<String> = vec!["--worlds".into(), world.to_string()];
    let spawn = |rank: usize, id: &str, stdout: Stdio| {
        Command::new(&args[0])
            .args(&args[1..])
            .args(&worlds)
            .env(RANK_ENV, format!("{rank} {world} {id}").trim_end())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
    };
    let mut root = match spawn(0, "", Stdio::piped()) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("start rank 0: {e}");
            return false;
        }
    };
    let mut lines = BufReader::new(root.stdout.take().expect("piped")).lines();
    let id = match lines.next() {
        Some(Ok(line)) if line.starts_with("id ") => line["id ".len()..].to_string(),
        other => {
            eprintln!("rank 0 did not print its id (got {other:?})");
            let _ = root.kill();
            return false;
        }
    };
    let mut others = Vec::new();
    for rank in 1..world {
        match spawn(rank, &id, Stdio::null()) {
            Ok(child) => others.push(child),
            Err(e) => {
                eprintln!("start rank {rank}: {e}");
                let _ = root.kill();
                return false;
            }
        }
    }
    for line in lines.map_while(Result::ok) {
        println!("{line}");
    }
    let mut ok = root.wait().is_ok_and(|s| s.success());
    for mut child in others {
        if !ok {
            // Rank 0 failed: the others may wait for it (NCCL has no deadline).
            let _ = child.kill();
        }
        ok &= child.wait().is_ok_and(|s| s.success());
    }
    ok
}
