//! Thin `extern "ptx-kernel"` entry points. Each takes scalars, raw pointers
//! or an [`abi`](crate::abi) struct by value, and calls one generic body.
//! The host finds them by the names built in `flashcomm-host`'s `kernels`
//! module; `kernel_names()` there lists every name below.
mod allreduce;
mod barrier;
mod chunk;
mod codec_roundtrip;
mod peer_probe;
