//! NCCL through cudarc's `nccl::result` layer (feature `nccl`):
//! `Algorithm::Nccl`, `Auto`'s optional fallback, and the benchmark's
//! baseline. libnccl is loaded at run time; [`available`] tells whether it can be.
//!
//! Raw `ncclComm_t` handles (not cudarc's `Comm`) so device pointers of any
//! origin work, including the communicator's raw entry point.
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};
use flashcomm_kernels::codec::Dtype;
use std::sync::{Arc, Mutex};

/// Whether `libnccl.so` can be loaded (never panics).
pub fn available() -> bool {
    crate::driver::library_present("nccl")
}

fn nccl_err(what: &str, e: result::NcclError) -> Error {
    Error::Nccl(format!("{what}: {:?}", e.0))
}

/// One NCCL communicator per rank (`ncclCommInitAll`), on given streams.
pub struct NcclComms {
    /// Each rank's communicator behind its own lock: one call at a time per
    /// communicator, whichever thread makes it.
    comms: Vec<Mutex<sys::ncclComm_t>>,
    streams: Vec<Arc<CudaStream>>,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a
// time; every use goes through its Mutex (`all_reduce_raw`, `Drop`).
unsafe impl Send for NcclComms {}
// SAFETY: as above: shared access only reaches a communicator through its Mutex.
unsafe impl Sync for NcclComms {}

impl NcclComms {
    /// `ncclCommInitAll` over the devices of `streams` (rank order).
    pub fn new(streams: Vec<Arc<CudaStream>>) -> Result<Self> {
        if !available() {
            return Err(Error::Nccl("libnccl.so cannot be loaded".into()));
        }
        let devices: Vec<i32> = streams.iter().map(|s| s.context().ordinal() as i32).collect();
        let mut comms = vec![std::ptr::null_mut(); streams.len()];
        // SAFETY: `comms` has one slot per device.
        unsafe { result::comm_init_all(comms.as_mut_ptr(), devices.len() as i32, devices.as_ptr()) }
            .map_err(|e| nccl_err("ncclCommInitAll", e))?;
        Ok(Self { comms: comms.into_iter().map(Mutex::new).collect(), streams })
    }

    /// Ranks.
    pub fn world_size(&self) -> usize {
        self.comms.len()
    }

    /// Runs `f` between `ncclGroupStart` and `ncclGroupEnd` (needed when one
    /// thread issues the calls of several ranks).
    pub fn group<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
        result::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
        let r = f();
        result::group_end().map_err(|e| nccl_err("ncclGroupEnd", e))?;
        r
    }

    /// Rank `rank`'s stream, on which its calls run.
    pub fn stream(&self, rank: usize) -> &Arc<CudaStream> {
        &self.streams[rank]
    }

    /// `ncclAllReduce` (sum) of `count` elements on `rank`'s stream.
    ///
    /// # Safety
    /// `src` and `dst` are device addresses on `rank`'s GPU with `count`
    /// elements each, valid until the collective completes, and ordered on
    /// `rank`'s stream.
    pub unsafe fn all_reduce_raw(&self, rank: usize, src: u64, dst: u64, count: usize, dtype: Dtype) -> Result<()> {
        let ty = match dtype {
            Dtype::Bf16 => sys::ncclDataType_t::ncclBfloat16,
            Dtype::F16 => sys::ncclDataType_t::ncclFloat16,
        };
        let stream = self.streams.get(rank).ok_or(Error::NoSuchRank { rank, world: self.streams.len() })?;
        let comm = self.comms[rank].lock().unwrap_or_else(|p| p.into_inner());
        stream.context().bind_to_thread()?;
        // SAFETY: caller contract; the communicator (locked) and stream belong to `rank`.
        unsafe {
            result::all_reduce(
                src as *const _,
                dst as *mut _,
                count,
                ty,
                sys::ncclRedOp_t::ncclSum,
                *comm,
                stream.cu_stream() as _,
            )
        }
        .map_err(|e| nccl_err("ncclAllReduce", e))?;
        Ok(())
    }
}

impl Drop for NcclComms {
    fn drop(&mut self) {
        for (c, s) in self.comms.iter().zip(&self.streams) {
            let _ = s.synchronize();
            let c = c.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: created by ncclCommInitAll, destroyed once, idle.
            let _ = unsafe { result::comm_destroy(*c) };
        }
    }
}
