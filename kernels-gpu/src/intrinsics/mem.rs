//! Global-memory operations with explicit width, caching and scope.
//!
//! Names follow NCCL's `op128.h`: operation, semantics, scope, state space
//! (`ld_acquire_sys_u32` = `ld.acquire.sys.global.u32`). Every function takes
//! a *generic* pointer to global memory (what `cuMemAlloc` returns) and
//! converts it with `cvta.to.global` first.
//!
//! Caching rules for data a peer GPU writes while a kernel runs (docs/design.md rules
//! 3): such data is read only after an acquire on its flag, and with `.cg`
//! (cache at L2, bypass L1) so no stale L1 line survives from an earlier call.
//! Non-coherent loads (`ld.global.nc`) are never used on peer-written memory.
use core::arch::asm;

macro_rules! global_load {
    ($(#[$doc:meta])* $name:ident, $op:literal, $ty:ty, $reg:ident) => {
        $(#[$doc])*
        /// # Safety
        /// `p` must point to readable global memory of this or a peer-mapped
        /// GPU, aligned to the access width.
        #[inline(always)]
        pub unsafe fn $name(p: *const $ty) -> $ty {
            let v: $ty;
            // SAFETY: the caller guarantees a valid, aligned global address.
            unsafe {
                asm!(
                    "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ", $op, " {v}, [g]; }}",
                    p = in(reg64) p, v = out($reg) v,
                    options(nostack, readonly, preserves_flags)
                )
            };
            v
        }
    };
}

global_load!(
    /// `ld.global.u32`.
    ld_global_u32, "ld.global.u32", u32, reg32);
global_load!(
    /// `ld.global.u16` (one f16/bf16 element).
    ld_global_u16, "ld.global.u16", u16, reg16);
global_load!(
    /// `ld.global.cg.u32`: L2 only, for data a peer wrote.
    ld_global_cg_u32, "ld.global.cg.u32", u32, reg32);
global_load!(
    /// `ld.global.cg.u16`: L2 only, for data a peer wrote.
    ld_global_cg_u16, "ld.global.cg.u16", u16, reg16);

/// `ld.global.cg.u8` into a 32-bit register: L2 only, for data a peer wrote.
///
/// # Safety
/// `p` must point to a readable byte of global memory of this or a
/// peer-mapped GPU.
#[inline(always)]
pub unsafe fn ld_global_cg_u8(p: *const u8) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees a valid global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.global.cg.u8 {v}, [g]; }}",
            p = in(reg64) p, v = out(reg32) v,
            options(nostack, readonly, preserves_flags)
        )
    };
    v
}

/// `ld.global.v4.u32`: one 16-byte load.
///
/// # Safety
/// `p` must point to 16 readable bytes of global memory, 16-byte aligned.
#[inline(always)]
pub unsafe fn ld_global_v4(p: *const [u32; 4]) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees a valid, 16-byte aligned global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.global.v4.u32 {{{a}, {b}, {c}, {d}}}, [g]; }}",
            p = in(reg64) p, a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            options(nostack, readonly, preserves_flags)
        )
    };
    [a, b, c, d]
}

/// `ld.global.cg.v4.u32`: one 16-byte load cached at L2 only, for peer data.
///
/// # Safety
/// `p` must point to 16 readable bytes of global memory, 16-byte aligned.
#[inline(always)]
pub unsafe fn ld_global_cg_v4(p: *const [u32; 4]) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees a valid, 16-byte aligned global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.global.cg.v4.u32 {{{a}, {b}, {c}, {d}}}, [g]; }}",
            p = in(reg64) p, a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            options(nostack, readonly, preserves_flags)
        )
    };
    [a, b, c, d]
}

/// `ld.global.cg.v2.u32`: one 8-byte load cached at L2 only, for peer data.
///
/// # Safety
/// `p` must point to 8 readable bytes of global memory, 8-byte aligned.
#[inline(always)]
pub unsafe fn ld_global_cg_v2(p: *const [u32; 2]) -> [u32; 2] {
    let (a, b): (u32, u32);
    // SAFETY: the caller guarantees a valid, 8-byte aligned global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.global.cg.v2.u32 {{{a}, {b}}}, [g]; }}",
            p = in(reg64) p, a = out(reg32) a, b = out(reg32) b,
            options(nostack, readonly, preserves_flags)
        )
    };
    [a, b]
}

/// `ld.global.v2.u32`: one 8-byte load.
///
/// # Safety
/// `p` must point to 8 readable bytes of global memory, 8-byte aligned.
#[inline(always)]
pub unsafe fn ld_global_v2(p: *const [u32; 2]) -> [u32; 2] {
    let (a, b): (u32, u32);
    // SAFETY: the caller guarantees a valid, 8-byte aligned global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.global.v2.u32 {{{a}, {b}}}, [g]; }}",
            p = in(reg64) p, a = out(reg32) a, b = out(reg32) b,
            options(nostack, readonly, preserves_flags)
        )
    };
    [a, b]
}

/// `st.global.v4.u32`: one 16-byte store.
///
/// # Safety
/// `p` must point to 16 writable bytes of global memory (local or peer-mapped),
/// 16-byte aligned, that no other thread accesses concurrently.
#[inline(always)]
pub unsafe fn st_global_v4(p: *mut [u32; 4], v: [u32; 4]) {
    // SAFETY: the caller guarantees a valid, aligned, exclusively owned address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.global.v4.u32 [g], {{{a}, {b}, {c}, {d}}}; }}",
            p = in(reg64) p, a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
            options(nostack, preserves_flags)
        )
    };
}

/// `st.global.v2.u32`: one 8-byte store.
///
/// # Safety
/// As [`st_global_v4`], with 8-byte alignment.
#[inline(always)]
pub unsafe fn st_global_v2(p: *mut [u32; 2], v: [u32; 2]) {
    // SAFETY: the caller guarantees a valid, aligned, exclusively owned address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.global.v2.u32 [g], {{{a}, {b}}}; }}",
            p = in(reg64) p, a = in(reg32) v[0], b = in(reg32) v[1],
            options(nostack, preserves_flags)
        )
    };
}

/// `st.global.u32`.
///
/// # Safety
/// As [`st_global_v4`], with 4-byte alignment.
#[inline(always)]
pub unsafe fn st_global_u32(p: *mut u32, v: u32) {
    // SAFETY: the caller guarantees a valid, aligned, exclusively owned address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.global.u32 [g], {v}; }}",
            p = in(reg64) p, v = in(reg32) v, options(nostack, preserves_flags)
        )
    };
}

/// `st.global.u16` (one f16/bf16 element).
///
/// # Safety
/// As [`st_global_v4`], with 2-byte alignment.
#[inline(always)]
pub unsafe fn st_global_u16(p: *mut u16, v: u16) {
    // SAFETY: the caller guarantees a valid, aligned, exclusively owned address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.global.u16 [g], {v}; }}",
            p = in(reg64) p, v = in(reg16) v, options(nostack, preserves_flags)
        )
    };
}

/// `st.global.u8` of the low byte of `v`.
///
/// # Safety
/// As [`st_global_v4`], for one byte.
#[inline(always)]
pub unsafe fn st_global_u8(p: *mut u8, v: u32) {
    // SAFETY: the caller guarantees a valid, exclusively owned address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.global.u8 [g], {v}; }}",
            p = in(reg64) p, v = in(reg32) v, options(nostack, preserves_flags)
        )
    };
}

/// `ld.acquire.sys.global.u32`: a flag read that orders every later memory
/// access of this thread after it, at system scope (all GPUs and the host).
///
/// # Safety
/// `p` must point to a 4-byte aligned global `u32`.
#[inline(always)]
pub unsafe fn ld_acquire_sys_u32(p: *const u32) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees a valid, aligned global address. Not
    // `readonly`: an acquire must not be reordered with later accesses.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.acquire.sys.global.u32 {v}, [g]; }}",
            p = in(reg64) p, v = out(reg32) v, options(nostack, preserves_flags)
        )
    };
    v
}

/// `st.release.sys.global.u32`: a flag write that makes every earlier memory
/// access of this thread (and, after a `bar.sync`, of its block) visible at
/// system scope before the flag itself.
///
/// # Safety
/// `p` must point to a 4-byte aligned global `u32` (local or peer-mapped) with
/// exactly one writer (docs/design.md H1).
#[inline(always)]
pub unsafe fn st_release_sys_u32(p: *mut u32, v: u32) {
    // SAFETY: the caller guarantees a valid, aligned, single-writer address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.release.sys.global.u32 [g], {v}; }}",
            p = in(reg64) p, v = in(reg32) v, options(nostack, preserves_flags)
        )
    };
}

/// `st.relaxed.sys.global.u32`: a morally strong store with no ordering of its
/// own; published by a later release store of the same thread.
///
/// # Safety
/// As [`st_release_sys_u32`].
#[inline(always)]
pub unsafe fn st_relaxed_sys_u32(p: *mut u32, v: u32) {
    // SAFETY: the caller guarantees a valid, aligned, single-writer address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.relaxed.sys.global.u32 [g], {v}; }}",
            p = in(reg64) p, v = in(reg32) v, options(nostack, preserves_flags)
        )
    };
}

/// `ld.relaxed.sys.global.u32`: a morally strong read with no ordering of its own.
///
/// # Safety
/// `p` must point to a 4-byte aligned global `u32`.
#[inline(always)]
pub unsafe fn ld_relaxed_sys_u32(p: *const u32) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees a valid, aligned global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.relaxed.sys.global.u32 {v}, [g]; }}",
            p = in(reg64) p, v = out(reg32) v, options(nostack, preserves_flags)
        )
    };
    v
}

/// `st.relaxed.sys.global.v4.u32`: one 16-byte store, morally strong; each
/// aligned 8-byte half arrives whole (what LL lines rely on: a payload word
/// and its flag word share one half, as in NCCL's LL protocol).
///
/// # Safety
/// `p` must point to 16 writable bytes of global memory (local or
/// peer-mapped), 16-byte aligned, written by this thread only.
#[inline(always)]
pub unsafe fn st_relaxed_sys_v4(p: *mut [u32; 4], v: [u32; 4]) {
    // SAFETY: the caller guarantees a valid, aligned, single-writer address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.relaxed.sys.global.v4.u32 [g], {{{a}, {b}, {c}, {d}}}; }}",
            p = in(reg64) p, a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
            options(nostack, preserves_flags)
        )
    };
}

/// `ld.relaxed.sys.global.v4.u32`: one 16-byte morally strong read (each
/// aligned 8-byte half as one peer store left it).
///
/// # Safety
/// `p` must point to 16 readable, 16-byte aligned bytes of global memory.
#[inline(always)]
pub unsafe fn ld_relaxed_sys_v4(p: *const [u32; 4]) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees a valid, aligned global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.relaxed.sys.global.v4.u32 {{{a}, {b}, {c}, {d}}}, [g]; }}",
            p = in(reg64) p, a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            options(nostack, preserves_flags)
        )
    };
    [a, b, c, d]
}

/// `fence.acq_rel.sys`: orders this thread's earlier and later accesses at
/// system scope.
#[inline(always)]
pub fn fence_acq_rel_sys() {
    // SAFETY: a fence touches no memory location itself.
    unsafe { asm!("fence.acq_rel.sys;", options(nostack, preserves_flags)) };
}

/// `atom.relaxed.gpu.global.cas.b32`: stores `new` at `p` if it holds
/// `expected`; returns the old value. On this GPU's own memory only (no peer
/// atomics, docs/design.md R3).
///
/// # Safety
/// `p` must point to a 4-byte aligned global `u32` of this GPU.
#[inline(always)]
pub unsafe fn atom_cas_relaxed_gpu_u32(p: *mut u32, expected: u32, new: u32) -> u32 {
    let old: u32;
    // SAFETY: the caller guarantees a valid, aligned, local global address.
    unsafe {
        asm!(
            "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; atom.relaxed.gpu.global.cas.b32 {old}, [g], {e}, {n}; }}",
            p = in(reg64) p, e = in(reg32) expected, n = in(reg32) new, old = out(reg32) old, options(nostack, preserves_flags)
        )
    };
    old
}
