//! # flashcomm
//!
//! A Rust-native all-reduce for tensor-parallel LLM inference on one node,
//! implementing *Flash Communication* (arXiv 2412.04964, 2508.03760):
//! activations are quantized in small groups (INT8/6/4, per-group min/max),
//! reduce-scattered in one hop, summed in f32, re-quantized and all-gathered
//! in one hop, in fused GPU kernels written in Rust (`kernels-gpu`, compiled
//! to PTX by rustc's nvptx64 backend at build time and embedded here).
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
pub use flashcomm_host::*;

/// The device crate (codec, launch ABI, entry-point table), shared with the kernels.
pub use flashcomm_kernels as device;

/// The PTX of every flashcomm kernel, built from `kernels-gpu` by `build.rs`.
pub static KERNELS: KernelImage = KernelImage { ptx: include_str!(concat!(env!("OUT_DIR"), "/flashcomm_kernels.ptx")) };
