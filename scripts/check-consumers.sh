#!/usr/bin/env bash
# Builds flashcomm the ways applications take it, each as a fresh crate
# outside this workspace (CI; needs crates.io):
#   1. stable: a path dependency, built and run (its CPU reference and the
#      embedded kernel image) with only the stable toolchain's own cargo and
#      rustc on PATH: no rustup proxies, no nightly;
#   2. next to candle: cudarc with candle-core 0.11's feature set (CUDA
#      linked at build time, its version from the build system) and
#      flashcomm without default features: `cargo check` at CUDA API levels
#      11.8, 12.9 and 13.0 (linking would need libcuda; the build system's
#      CUDA version comes from CUDARC_CUDA_VERSION, as cudarc reads it
#      before asking nvcc);
#   3. packaged: `cargo package` of the three library crates, then a
#      consumer built and run from the unpacked .crate files alone, on stable.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
stable=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
toolchain_bin=$(dirname "$(rustup which --toolchain "$stable" cargo)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One target folder for the consumers (same toolchain, same dependencies).
target=$root/target/consumers

# Only the stable toolchain's binaries and the system's (cc, tar).
stable_env() {
  env -i PATH="$toolchain_bin:/usr/local/bin:/usr/bin:/bin" HOME="$HOME" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" \
    CARGO_TARGET_DIR="$target" ${CARGO_NET_OFFLINE:+CARGO_NET_OFFLINE="$CARGO_NET_OFFLINE"} "$@"
}

main_rs='use flashcomm::reference::reference_all_reduce;
use flashcomm::Quantization;
use half::bf16;

fn main() {
    let ranks: Vec<Vec<bf16>> = (0..4)
        .map(|r| (0..4096).map(|i| bf16::from_f32(((i * 7 + r * 13) % 97) as f32 / 9.0 - 5.0)).collect())
        .collect();
    let refs: Vec<&[bf16]> = ranks.iter().map(|v| v.as_slice()).collect();
    let exact: Vec<f64> = (0..4096).map(|i| refs.iter().map(|r| r[i].to_f64()).sum()).collect();
    let plain = reference_all_reduce(&refs, &Quantization::None).expect("reference");
    let int8 = reference_all_reduce(&refs, &Quantization::INT8).expect("reference");
    let rel = |out: &[bf16]| {
        let num: f64 = out.iter().zip(&exact).map(|(y, x)| (y.to_f64() - x).powi(2)).sum();
        let den: f64 = exact.iter().map(|x| x * x).sum();
        (num / den).sqrt()
    };
    let (e_plain, e_int8) = (rel(&plain), rel(&int8));
    assert!(e_plain < 4e-3 && e_int8 < 2e-2 && e_int8 > e_plain, "errors {e_plain:e} {e_int8:e}");
    assert_eq!(flashcomm::KERNELS.sass().len(), 2);
    println!(
        "consumer: reference all-reduce of 4 ranks x 4096 bf16: rel. L2 error {e_plain:.2e} unquantized, {e_int8:.2e} INT8; \
         {} kernels image bytes; {} GPU(s) visible",
        flashcomm::KERNELS.ptx().len(),
        flashcomm::gpu_count()
    );
}'

new_crate() { # dir, dependency lines
  mkdir -p "$1/src"
  printf '[package]\nname = "consumer"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[dependencies]\n%s\n' "$2" > "$1/Cargo.toml"
  echo "$main_rs" > "$1/src/main.rs"
}

echo "== 1. stable consumer, path dependency, no nightly on PATH"
stable_env sh -c 'command -v rustup >/dev/null && { echo "rustup is on PATH" >&2; exit 1; }; rustc --version; cargo --version'
new_crate "$work/stable" "flashcomm = { path = \"$root\" }
half = \"2.7\""
(cd "$work/stable" && stable_env cargo run --quiet --release)

echo "== 2. next to candle: cudarc dynamic-linking + cuda-version-from-build-system"
new_crate "$work/candle" "flashcomm = { path = \"$root\", default-features = false, features = [\"nccl\"] }
half = \"2.7\"
cudarc = { version = \"0.19\", default-features = false, features = [\"std\", \"cublas\", \"cublaslt\", \"curand\", \"driver\", \"nvrtc\", \"f16\", \"f8\", \"cuda-version-from-build-system\", \"dynamic-linking\"] }"
# An old CUDA API level (11.8), the default's neighbour, and CUDA 13 (what
# candle gets from a current nvcc): flashcomm must build against each.
for version in 11080 12090 13000; do
  (cd "$work/candle" && stable_env CUDARC_CUDA_VERSION=$version cargo check --quiet)
  echo "checked with CUDA API $version"
done
# flashcomm must leave the CUDA version to the application: no cuda-1xxxx
# feature of cudarc may come from it.
forced=$(cd "$work/candle" && stable_env cargo tree --quiet -e features -i cudarc | grep -o 'cudarc feature "cuda-1[0-9]*"' || true)
[ -z "$forced" ] || { echo "flashcomm forces a CUDA version on cudarc: $forced" >&2; exit 1; }
echo "checked; cudarc's CUDA version is the application's"

echo "== 3. packaged crates, consumer from the .crate files"
cargo package --quiet --no-verify --allow-dirty -p flashcomm-kernels -p flashcomm-host -p flashcomm --target-dir "$work/package"
mkdir -p "$work/crates"
for c in "$work"/package/package/*.crate; do tar xzf "$c" -C "$work/crates"; done
ls "$work/crates"
new_crate "$work/packaged" "flashcomm = \"0.1.0\"
half = \"2.7\"

[patch.crates-io]
flashcomm = { path = \"$work/crates/flashcomm-0.1.0\" }
flashcomm-host = { path = \"$work/crates/flashcomm-host-0.1.0\" }
flashcomm-kernels = { path = \"$work/crates/flashcomm-kernels-0.1.0\" }"
(cd "$work/packaged" && stable_env cargo run --quiet --release)
echo "consumers: all three built"
