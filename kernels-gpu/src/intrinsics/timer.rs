//! Clocks for the watchdog.

/// `%globaltimer`: a nanosecond clock shared by the whole GPU (it ticks in
/// steps of about a microsecond on current parts, plenty for a watchdog).
#[inline(always)]
pub fn global_timer_ns() -> u64 {
    let t: u64;
    // SAFETY: reading a special register has no preconditions. Not `pure`:
    // two reads must not be merged.
    unsafe { core::arch::asm!("mov.u64 {0}, %globaltimer;", out(reg64) t, options(nomem, nostack)) };
    t
}

/// `nanosleep.u32` (sm_70+): park this thread for about `ns` nanoseconds,
/// so a spinning waiter leaves issue slots and memory bandwidth to others.
#[inline(always)]
pub fn nanosleep(ns: u32) {
    // SAFETY: no memory is touched; any duration is valid.
    unsafe { core::arch::asm!("nanosleep.u32 {0};", in(reg32) ns, options(nomem, nostack)) };
}
