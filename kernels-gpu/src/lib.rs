//! Device side of flashcomm.
//!
//! Layers, each using only the ones above it:
//! 1. `intrinsics` (nvptx64 only): the one home of `asm!` and `llvm.nvvm.*`:
//!    thread ids, warp shuffles, scoped memory operations, conversions, timers.
//! 2. [`codec`]: per-group quantization, bit packing and the byte layout of a
//!    quantized shard. Pure Rust, compiled for the GPU *and* the host, so the
//!    host's reference reducer and the kernels run the very same code.
//! 3. [`abi`]: the `#[repr(C)]` argument blocks shared by host launches and
//!    kernels; [`entry`]: every entry point's key and name.
//! 4. `kernels` (nvptx64 only): thin `extern "ptx-kernel"` entry points.
//!
//! Only the nvptx64 build needs nightly features; the host build of the
//! codec, the ABI and the entry table is plain stable Rust.
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(abi_ptx, stdarch_nvptx, asm_experimental_arch, link_llvm_intrinsics, stmt_expr_attributes)
)]
// `link_llvm_intrinsics` is how the shuffles reach LLVM's convergent intrinsics.
#![cfg_attr(target_arch = "nvptx64", allow(internal_features))]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod abi;
pub mod codec;
pub mod entry;

#[cfg(target_arch = "nvptx64")]
pub mod intrinsics;
#[cfg(target_arch = "nvptx64")]
mod kernels;

/// With `-Cpanic=immediate-abort` no panic ever reaches this handler (a failed
/// bounds check becomes `trap`), but a `no_std` cdylib must still name one.
#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `trap` aborts the kernel; it has no preconditions.
    unsafe { core::arch::nvptx::trap() }
}
