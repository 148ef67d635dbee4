//! The peer-access probe run at communicator creation (docs/design.md R12): one
//! real store and one real load across the link, by the SM, the path the
//! collectives use (a copy-engine memcpy would not prove it).
use crate::intrinsics::mem::{ld_acquire_sys_u32, st_global_u32, st_release_sys_u32};
use crate::intrinsics::thread::{block_idx, thread_idx};

/// Writes `token` to `remote[0]` and copies `remote[1]` to `local[0]`.
///
/// # Safety
/// `remote` points to two `u32` of a peer GPU's memory mapped into this GPU;
/// `local` to one `u32` of this GPU's memory.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn peer_probe(remote: *mut u32, local: *mut u32, token: u32) {
    if thread_idx() == 0 && block_idx() == 0 {
        // SAFETY: caller contract.
        unsafe {
            st_release_sys_u32(remote, token);
            let seen = ld_acquire_sys_u32(remote.add(1));
            st_global_u32(local, seen);
        }
    }
}
