//! Host runtime of flashcomm, on `cudarc`.
//!
//! Layers: [`raw`] (driver calls cudarc does not wrap: peer access, module
//! loading with options, raw launches) -> checked RAII wrappers in [`device`]
//! -> [`comm`], the [`Communicator`] and its algorithms. Beside them:
//! [`config`], [`reference`] (the CPU reference reducer every GPU result is
//! compared with, bit for bit) and [`Error`].
pub mod config;
pub mod element;
pub mod error;
pub mod reference;
pub mod synth;

/// The cudarc version flashcomm is built on (allocate buffers with it).
pub use cudarc;
pub use config::{Algorithm, Bits, Config, Link, Quantization, Thresholds, Transport};
pub use element::HostElement;
pub use error::{Error, Result};
pub use flashcomm_kernels::codec::Dtype;

pub mod codec_gpu;
pub mod comm;
pub mod device;
pub mod kernels;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod raw;

pub use comm::{CallOptions, Communicator, Plan};
pub use device::gpu_count;
pub use kernels::KernelImage;
