//! Thin `extern "ptx-kernel"` entry points. Each takes scalars, raw pointers
//! or an [`abi`](crate::abi) struct by value, and calls one generic body. The
//! names come from [`entry`](crate::entry), which the host uses to find them.
mod barrier;
mod chunk;
mod codec_roundtrip;
mod oneshot;
mod oneshot_ll;
mod peer_probe;
mod twostep;
