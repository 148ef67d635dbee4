//! # flashcomm
//!
//! A Rust-native all-reduce for tensor-parallel LLM inference on one node,
//! implementing *Flash Communication* (arXiv 2412.04964, 2508.03760):
//! activations are quantized in small groups (INT8/6/4, per-group min/max),
//! reduce-scattered in one hop, summed in f32, re-quantized and all-gathered
//! in one hop, in fused GPU kernels written in Rust (`kernels-gpu`, compiled
//! to PTX by rustc's nvptx64 backend and assembled to SASS ahead of time;
//! the image is embedded here, so this crate builds on stable Rust).
//!
//! Every result equals the CPU reference reducer
//! ([`reference::reference_all_reduce`]) bit for bit, on every rank.
//!
//! ```no_run
//! use flashcomm::{Communicator, Config, Quantization, KERNELS};
//! use half::bf16;
//!
//! # fn main() -> flashcomm::Result<()> {
//! let config = Config { quantization: Quantization::INT8, ..Config::default() }; // allow INT8
//! let comm = Communicator::new(&[0, 1, 2, 3], config, &KERNELS)?;
//! let mut bufs = (0..comm.world_size())
//!     .map(|r| comm.stream(r)?.clone_htod(&vec![bf16::from_f32(r as f32); 4096]).map_err(Into::into))
//!     .collect::<flashcomm::Result<Vec<_>>>()?;
//! comm.all_reduce_in_place(&mut bufs)?; // Algorithm::Auto picks by size
//! comm.synchronize()?;                  // waits; reports a peer timeout as an error
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
pub use flashcomm_host::*;

/// The device crate (codec, launch ABI, entry-point table), shared with the kernels.
pub use flashcomm_kernels as device;

/// flashcomm's kernels, prebuilt from `kernels-gpu` by
/// `scripts/build-kernels.sh` (`kernel-image/`, checked against a rebuild
/// in CI): PTX for compute capability 8.0 and newer, and SASS for sm_80
/// (A100, and sm_86/89 GPUs) and sm_90 (H100/H200), which load without the
/// driver's JIT compilation.
pub static KERNELS: KernelImage = {
    // SAFETY: ptxas's cubins of the PTX beside them, made by
    // scripts/build-kernels.sh and checked against a rebuild in CI.
    unsafe { KernelImage::new(include_str!("../kernel-image/flashcomm_kernels.ptx"), &[Sass::new((8, 0), &SM_80.0), Sass::new((9, 0), &SM_90.0)]) }
};

/// Bytes with the alignment of a `u64`: the driver reads a cubin's ELF
/// headers in place.
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

static SM_80: Aligned<{ include_bytes!("../kernel-image/flashcomm_kernels.sm_80.cubin").len() }> =
    Aligned(*include_bytes!("../kernel-image/flashcomm_kernels.sm_80.cubin"));
static SM_90: Aligned<{ include_bytes!("../kernel-image/flashcomm_kernels.sm_90.cubin").len() }> =
    Aligned(*include_bytes!("../kernel-image/flashcomm_kernels.sm_90.cubin"));
