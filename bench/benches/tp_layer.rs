//! A Llama-3-70B layer at TP = 2 with cuBLAS GEMMs and each all-reduce
//! (NCCL, flashcomm `Auto` unquantized, with INT8, with INT4): the layer
//! time, the GEMMs alone, the all-reduces alone (`bench/src/tp_layer.rs`).
//!
//! `cargo bench --bench tp_layer -- [--tokens 1,32,128,2048,8192] [--iters N] [--layers L] [--graphs] [--out DIR]`
//! (staged by `scripts/gpu-suite.sh`, step `bench-tp-layer`). Needs 2+
//! GPUs and libcublas; without them it says so and exits.
use flashcomm_bench::tp_layer::{markdown, run, LayerOptions, LLAMA3_70B};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gpus = flashcomm::gpu_count();
    if gpus < 2 {
        println!("tp_layer bench: skipped, needs 2+ GPUs ({gpus} visible)");
        return;
    }
    let mut opts = LayerOptions::default();
    let mut out = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tokens" => opts.tokens = it.next().expect("--tokens 1,32").split(',').map(|t| t.parse().expect("tokens")).collect(),
            "--iters" => opts.iters = it.next().expect("--iters N").parse().expect("iterations"),
            "--layers" => opts.layers = it.next().expect("--layers L").parse().expect("layers"),
            "--out" => out = Some(std::path::PathBuf::from(it.next().expect("--out DIR"))),
            "--graphs" => opts.graphs = true,
            _ => {}
        }
    }
    match run(&opts, LLAMA3_70B, &args.join(" ")) {
        Ok(report) => {
            println!("{}", markdown(&report));
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir).expect("output folder");
                std::fs::write(dir.join("tp_layer.json"), serde_json::to_string_pretty(&report).expect("serialises")).expect("write JSON");
                println!("wrote {}", dir.join("tp_layer.json").display());
            }
        }
        Err(e) => {
            eprintln!("tp_layer bench failed: {e}");
            std::process::exit(1);
        }
    }
}
