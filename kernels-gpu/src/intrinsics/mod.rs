//! Device intrinsics: flashcomm's stand-in for `cuda_std`.
//!
//! `core::arch::nvptx` offers thread/block ids, `bar.sync` and `trap` only.
//! Everything else a communication kernel needs lives here, one module per
//! concern. This is the only place with `asm!` or `llvm.nvvm.*` declarations;
//! every item names the PTX instruction it becomes, its scope and the minimum
//! sm it needs (all of flashcomm targets sm_80 and newer).
pub mod convert;
pub mod math;
pub mod mem;
pub mod thread;
pub mod timer;
pub mod warp;
