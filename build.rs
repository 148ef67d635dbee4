//! Builds the device crate `kernels-gpu` into one PTX module and embeds it.
//!
//! This plays the role of Rust-CUDA's `cuda_builder` with rustc's own
//! `nvptx64-nvidia-cuda` target: a nested `cargo rustc` compiles the crate
//! (and `core`, from source, with `-Zbuild-std=core`) to LLVM bitcode and
//! links it with `kernels-gpu/llbc-linker.sh` (llvm-link -> opt -> llc). The
//! result is checked (no `.extern .func`, every kernel present) and copied to
//! `$OUT_DIR/flashcomm_kernels.ptx`, which `src/lib.rs` embeds. A broken
//! kernel fails this build with the compiler's own message.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One fixed target for every crate of the device build: sm_80 PTX runs on
/// A100, L40, H100 and H200 (the driver JIT-compiles it for newer parts).
const TARGET_CPU: &str = "sm_80";
const TARGET: &str = "nvptx64-nvidia-cuda";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels = root.join("kernels-gpu");
    let linker = kernels.join("llbc-linker.sh");
    println!("cargo:rerun-if-changed={}", kernels.join("src").display());
    println!("cargo:rerun-if-changed={}", kernels.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", linker.display());
    println!("cargo:rerun-if-changed=rust-toolchain.toml");

    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    // target/<profile>/build/<pkg>/out -> target/nvptx-kernels: one device
    // build shared by every host profile (building `core` takes a minute).
    let target_dir = out_dir.ancestors().nth(4).unwrap_or(&out_dir).join("nvptx-kernels");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let llvm_bin = llvm_tools_dir(&rustc);

    let flags = [
        "-Zunstable-options",
        "-Cpanic=immediate-abort",
        "-Clinker-flavor=llbc",
        &format!("-Clinker={}", linker.display()),
        &format!("-Ctarget-cpu={TARGET_CPU}"),
        "-Copt-level=3",
    ]
    .join("\x1f");

    // A clean environment: the outer build's RUSTFLAGS, CARGO_* and target
    // settings must not leak into the device build.
    let mut cmd = Command::new(&cargo);
    cmd.env_clear();
    for keep in ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "RUSTUP_TOOLCHAIN", "TMPDIR", "CARGO_NET_OFFLINE"] {
        if let Ok(v) = env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env("FLASHCOMM_LLVM_BIN", &llvm_bin)
        .current_dir(&root)
        .args(["rustc", "--release", "--locked", "-p", "flashcomm-kernels", "--lib", "--crate-type", "cdylib"])
        .args(["--target", TARGET, "-Zbuild-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    let output = cmd.output().unwrap_or_else(|e| panic!("could not run {cargo} for the device build: {e}"));
    if !output.status.success() {
        panic!(
            "the device crate kernels-gpu failed to build for {TARGET}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The device build's own warnings would be swallowed: pass them on.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|l| l.starts_with("warning")) {
        println!("cargo:warning=kernels-gpu (nvptx64): {line}");
    }

    let ptx_path = target_dir.join(TARGET).join("release").join("flashcomm_kernels.ptx");
    let ptx = std::fs::read_to_string(&ptx_path)
        .unwrap_or_else(|e| panic!("the device build produced no PTX at {}: {e}", ptx_path.display()));
    let ptx = add_launch_bounds(&ptx);
    check_ptx(&ptx);
    std::fs::write(out_dir.join("flashcomm_kernels.ptx"), &ptx).unwrap();
}

/// The folder of `llvm-link`, `opt` and `llc` in the pinned toolchain.
fn llvm_tools_dir(rustc: &str) -> PathBuf {
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output().expect("rustc --print sysroot");
    let sysroot = String::from_utf8(sysroot.stdout).unwrap();
    let host = Command::new(rustc).args(["--print", "host-tuple"]).output().expect("rustc --print host-tuple");
    let host = String::from_utf8(host.stdout).unwrap();
    let dir = Path::new(sysroot.trim()).join("lib/rustlib").join(host.trim()).join("bin");
    if !dir.join("llc").exists() {
        panic!(
            "llc not found in {}: install the pinned toolchain's llvm-tools \
             (`rustup component add llvm-tools rust-src`, see README)",
            dir.display()
        );
    }
    dir
}

/// Threads per block of every kernel (`flashcomm_kernels::abi::THREADS`;
/// the host's `ptx_shape` test checks the two agree).
const THREADS: u32 = 256;
/// Register cap per thread: 65536 / (THREADS * 4), so four blocks (32 warps)
/// share an SM: the collectives are latency-bound, and at 64 registers only
/// one kernel spills (8 bytes, INT8). A hard
/// `.maxnreg`: ptxas treated `.minnctapersm 2` as a hint and used up to 168
/// registers (one block per SM). rustc has no `__launch_bounds__`.
const MAX_REGISTERS: u32 = 64;

/// Inserts `.maxntid` / `.maxnreg` between each entry's parameter list and
/// its body.
fn add_launch_bounds(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len() + 4096);
    let mut in_entry_params = false;
    for line in ptx.lines() {
        if line.starts_with(".visible .entry ") {
            in_entry_params = true;
        }
        out.push_str(line);
        out.push('\n');
        if in_entry_params && line.trim_start().starts_with(")") {
            out.push_str(&format!(".maxntid {THREADS}, 1, 1\n.maxnreg {MAX_REGISTERS}\n"));
            in_entry_params = false;
        }
    }
    out
}

/// Fails the build on PTX the driver would reject or that lacks a kernel.
fn check_ptx(ptx: &str) {
    if let Some(line) = ptx.lines().find(|l| l.contains(".extern .func")) {
        panic!("the PTX calls a function it does not define (`{line}`): a `core` routine was not inlined");
    }
    if !ptx.contains(".entry ") {
        panic!("the PTX holds no kernel entry point");
    }
    // That every kernel the host launches is present is checked by the
    // host's tests (`kernel_names_are_in_the_ptx`), without a GPU.
}
