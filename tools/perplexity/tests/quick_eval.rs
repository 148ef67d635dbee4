//! The quick accuracy check (CI): W = 4, exact and INT8 G=128 through the
//! library's reducer on 512 tokens of Moby Dick; fails if INT8 costs more
//! than 1% perplexity. Listed as ignored (visibly) when the model and texts
//! are not installed (`scripts/setup.sh --eval` or
//! `tools/perplexity/fetch-assets.sh`).
use libtest_mimic::{Arguments, Trial};
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let args = Arguments::from_args();
    let models = std::env::var("FLASHCOMM_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let installed = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").exists() && models.join("text/moby-dick").is_dir();
    let m = models.clone();
    let trial = Trial::test("quick_eval_int8_g128_w4_within_1pct", move || {
        let out = Command::new(env!("CARGO_BIN_EXE_perplexity"))
            .args(["--quick", "--max-dppl-pct", "1", "--models"])
            .arg(&m)
            .output()
            .map_err(|e| format!("could not run perplexity: {e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("{text}");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("perplexity --quick failed ({}):\n{text}", out.status).into())
        }
    });
    let trial = if installed { trial } else { trial.with_ignored_flag(true).with_kind("needs models/: scripts/setup.sh --eval") };
    libtest_mimic::run(&args, vec![trial]).exit();
}
