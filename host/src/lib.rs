//! Host runtime of flashcomm, on `cudarc`.
//!
//! Layers: [`driver`] (the driver calls cudarc does not wrap: peer access,
//! stream-ordered copies, launches with argument blocks) -> checked RAII
//! memory in [`peer_buffer`] and loaded [`kernels`] -> [`comm`], the
//! [`Communicator`] and its algorithms. Beside them: [`config`],
//! [`reference`](mod@reference) (the CPU reference reducer every GPU result is compared
//! with, bit for bit) and [`Error`].
#![warn(missing_docs)]
pub mod config;
pub mod element;
pub mod error;
pub mod reference;
pub mod synth;

/// The cudarc version flashcomm is built on (allocate buffers with it).
pub use cudarc;
pub use config::{Algorithm, Config, Quantization, Quantized, Thresholds};
pub use element::HostElement;
pub use error::{Error, Result};
/// The device crate (codec, launch ABI, entry-point table).
pub(crate) use flashcomm_kernels as device;
pub use flashcomm_kernels::abi::{Link, PhaseSkip, Transport};
pub use flashcomm_kernels::codec::{Bits, Dtype, GroupSize, Spikes, Wire};
pub use flashcomm_kernels::entry::KernelId;

pub mod bootstrap;
pub mod codec_gpu;
pub mod comm;
pub mod driver;
pub mod kernels;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod peer_buffer;

pub use comm::{CallOptions, Communicator, Plan};
pub use kernels::{KernelCode, KernelImage, Sass};

/// Number of CUDA GPUs visible to this process; 0 without a driver. Never panics.
pub fn gpu_count() -> usize {
    driver::device_count()
}
