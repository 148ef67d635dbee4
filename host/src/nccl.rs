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

/// NCCL communicators of this process's ranks, on given streams: every
/// rank's (`ncclCommInitAll`), or one rank of several processes
/// (`ncclCommInitRank`).
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

    /// A new NCCL unique id (rank 0 makes it; the bootstrap carries it to
    /// the other processes).
    pub fn unique_id() -> Result<Vec<u8>> {
        if !available() {
            return Err(Error::Nccl("libnccl.so cannot be loaded".into()));
        }
        let id = result::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        Ok(id.internal.iter().map(|&c| c as u8).collect())
    }

    /// `ncclCommInitRank`: this process's rank `rank` of `world`, on
    /// `stream`, with rank 0's [`NcclComms::unique_id`]. Collective: every
    /// rank's process must call it (NCCL waits for them without a deadline).
    pub fn init_rank(stream: Arc<CudaStream>, rank: usize, world: usize, id: &[u8]) -> Result<Self> {
        let mut unique = sys::ncclUniqueId { internal: [0; 128] };
        if id.len() != unique.internal.len() {
            return Err(Error::Nccl(format!("an NCCL unique id of {} bytes (expected {})", id.len(), unique.internal.len())));
        }
        for (d, &b) in unique.internal.iter_mut().zip(id) {
            *d = b as _;
        }
        let mut comm = std::ptr::null_mut();
        stream.context().bind_to_thread()?;
        // SAFETY: `comm` is a valid out-pointer; rank < world (the caller's communicator checked both).
        unsafe { result::comm_init_rank(&mut comm, world as i32, unique, rank as i32) }.map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self { comms: vec![Mutex::new(comm)], streams: vec![stream] })
    }

    /// This process's ranks.
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

    /// `ncclAllReduce` (sum) of `count` elements on the stream of this
    /// process's `rank`-th rank (its place in [`NcclComms::new`]'s list; 0
    /// for [`NcclComms::init_rank`]).
    ///
    /// # Safety
    /// `src` and `dst` are device addresses on that rank's GPU with `count`
    /// elements each, valid until the collective completes, and ordered on
    /// its stream.
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
            // SAFETY: created by ncclCommInitAll or ncclCommInitRank, destroyed once, idle.
            let _ = unsafe { result::comm_destroy(*c) };
        }
    }
}
