//! The quick accuracy check (CI): W = 4, exact, INT8 G=128 and one spike
//! reserving setting (INT4 with 4 spikes per group in the reduce-scatter,
//! INT8 all-gather) through the library's reducer on 512 tokens of Moby
//! Dick, for SmolLM2-135M and Gemma-3-270M; fails if INT8 costs more than 1%
//! perplexity or `int4k4-int8-g128` more than 8% (measured: +3.8% and +4.0%
//! on these 510 predictions; without spikes INT4-then-INT8 costs +40-65%).
//! Each is listed as ignored (visibly) when its model or the texts are not
//! installed (`scripts/setup.sh --eval` or `tools/perplexity/fetch-assets.sh`).
use libtest_mimic::{Arguments, Trial};
use std::path::PathBuf;
use std::process::Command;

/// ΔPPL limits, as `--max-dppl-pct` reads them.
const LIMITS: &str = "1,int4k4-int8-g128=8";

fn main() {
    let args = Arguments::from_args();
    let models = std::env::var("FLASHCOMM_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let texts = models.join("text/moby-dick").is_dir();
    // (name, --model, GGUF under models/)
    let cases = [
        ("quick_eval_int8_g128_w4_within_1pct", "smollm2", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("quick_eval_gemma3_int8_g128_w4_within_1pct", "gemma3", "gemma3/gemma-3-270m-q4_k_m.gguf"),
    ];
    let trials = cases
        .iter()
        .map(|&(name, model, file)| {
            let installed = texts && models.join(file).exists();
            let m = models.clone();
            let trial = Trial::test(name, move || {
                let out = Command::new(env!("CARGO_BIN_EXE_perplexity"))
                    .args(["--model", model, "--quick", "--max-dppl-pct", LIMITS, "--models"])
                    .arg(&m)
                    .output()
                    .map_err(|e| format!("could not run perplexity: {e}"))?;
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                println!("{text}");
                if !out.status.success() {
                    return Err(format!("perplexity --model {model} --quick failed ({}):\n{text}", out.status).into());
                }
                // the table must hold the exact, INT8 and spike rows of W = 4
                for row in ["| 4 | exact", "| 4 | int8-g128 |", "| 4 | int4k4-int8-g128 |"] {
                    if !text.contains(row) {
                        return Err(format!("perplexity --model {model} --quick: no {row:?} row:\n{text}").into());
                    }
                }
                Ok(())
            });
            if installed {
                trial
            } else {
                trial.with_ignored_flag(true).with_kind("needs models/: scripts/setup.sh --eval")
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
