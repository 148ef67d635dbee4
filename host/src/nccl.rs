//! NCCL through cudarc's `nccl::result` layer (feature `nccl`): the
//! benchmark baseline and `Algorithm::Auto`'s fallback where NCCL measured
//! faster. libnccl is loaded at run time; [`available`] tells whether it can be.
//!
//! Raw `ncclComm_t` handles (not cudarc's `Comm`) so device pointers of any
//! origin work, including the communicator's raw entry point.
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};
use flashcomm_kernels::codec::Dtype;
use std::sync::Arc;

/// Whether `libnccl.so` can be loaded (never panics).
pub fn available() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { sys::is_culib_present() }
}

fn nccl_err(what: &str, e: result::NcclError) -> Error {
    Error::Nccl(format!("{what}: {:?}", e.0))
}

/// One NCCL communicator per rank (`ncclCommInitAll`), on given streams.
pub struct NcclComms {
    comms: Vec<sys::ncclComm_t>,
    streams: Vec<Arc<CudaStream>>,
}

// SAFETY: NCCL communicators may be used from any thread, one call at a time
// per communicator; the flashcomm Communicator serialises each rank's calls
// behind that rank's launch lock, and the baseline is driven from one thread.
unsafe impl Send for NcclComms {}
// SAFETY: as above.
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
        Ok(Self { comms, streams })
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

    /// `ncclAllReduce` (sum) of `count` elements on `rank`'s stream, or on
    /// `stream` when given.
    ///
    /// # Safety
    /// `src` and `dst` are device addresses on `rank`'s GPU with `count`
    /// elements each, valid until the collective completes; `stream`, when
    /// given, is a live stream of that GPU.
    pub unsafe fn all_reduce_raw(&self, rank: usize, src: u64, dst: u64, count: usize, dtype: Dtype) -> Result<()> {
        let ty = match dtype {
            Dtype::Bf16 => sys::ncclDataType_t::ncclBfloat16,
            Dtype::F16 => sys::ncclDataType_t::ncclFloat16,
        };
        let stream = &self.streams[rank];
        stream.context().bind_to_thread()?;
        // SAFETY: caller contract; the communicator and stream belong to `rank`.
        unsafe {
            result::all_reduce(
                src as *const _,
                dst as *mut _,
                count,
                ty,
                sys::ncclRedOp_t::ncclSum,
                self.comms[rank],
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
            // SAFETY: created by ncclCommInitAll, destroyed once, idle.
            let _ = unsafe { result::comm_destroy(*c) };
        }
    }
}

/// NCCL over a flashcomm [`Communicator`](crate::Communicator)'s GPUs and
/// streams, for the benchmark (timed exactly like flashcomm's calls).
pub struct NcclBaseline {
    comms: NcclComms,
}

impl NcclBaseline {
    /// NCCL communicators on `comm`'s streams.
    pub fn new(comm: &crate::Communicator) -> Result<Self> {
        let streams = (0..comm.world_size()).map(|r| comm.stream(r).cloned()).collect::<Result<Vec<_>>>()?;
        Ok(Self { comms: NcclComms::new(streams)? })
    }

    /// Out-of-place sum over all ranks, issued from this thread in one group.
    pub fn all_reduce<T: crate::HostElement>(
        &self,
        inputs: &[cudarc::driver::CudaSlice<T>],
        outputs: &mut [cudarc::driver::CudaSlice<T>],
    ) -> Result<()> {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let world = self.comms.world_size();
        if inputs.len() != world || outputs.len() != world {
            return Err(Error::BufferCount { world, got: inputs.len().min(outputs.len()) });
        }
        NcclComms::group(|| {
            for (r, (i, o)) in inputs.iter().zip(outputs.iter_mut()).enumerate() {
                if i.len() != o.len() {
                    return Err(Error::OutputLength { rank: r, input: i.len(), output: o.len() });
                }
                let (src, _g1) = i.device_ptr(&self.comms.streams[r]);
                let (dst, _g2) = o.device_ptr_mut(&self.comms.streams[r]);
                // SAFETY: both buffers live on rank r's GPU with len elements.
                unsafe { self.comms.all_reduce_raw(r, src, dst, i.len(), T::DTYPE)? };
            }
            Ok(())
        })
    }

    /// In-place sum over all ranks.
    pub fn all_reduce_in_place<T: crate::HostElement>(&self, bufs: &mut [cudarc::driver::CudaSlice<T>]) -> Result<()> {
        use cudarc::driver::DevicePtrMut;
        let world = self.comms.world_size();
        if bufs.len() != world {
            return Err(Error::BufferCount { world, got: bufs.len() });
        }
        NcclComms::group(|| {
            for (r, b) in bufs.iter_mut().enumerate() {
                let len = b.len();
                let (p, _g) = b.device_ptr_mut(&self.comms.streams[r]);
                // SAFETY: the buffer lives on rank r's GPU with len elements.
                unsafe { self.comms.all_reduce_raw(r, p, p, len, T::DTYPE)? };
            }
            Ok(())
        })
    }
}
