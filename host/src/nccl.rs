//! NCCL through cudarc: the baseline of the benchmarks (feature `nccl`).
//! libnccl is loaded at run time; [`available`] tells whether it can be.
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::element::HostElement;
use cudarc::driver::CudaSlice;
use cudarc::nccl::{group_end, group_start, Comm, NcclType, ReduceOp};

/// Whether `libnccl.so` can be loaded (never panics).
pub fn available() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// One NCCL communicator per rank of a flashcomm [`Communicator`], on the
/// same streams, so both are timed the same way.
pub struct NcclBaseline {
    comms: Vec<Comm>,
}

impl NcclBaseline {
    /// `ncclCommInitAll` over the communicator's GPUs and streams.
    pub fn new(comm: &Communicator) -> Result<Self> {
        if !available() {
            return Err(Error::Nccl("libnccl.so cannot be loaded".into()));
        }
        let streams = (0..comm.world_size()).map(|r| comm.stream(r).cloned()).collect::<Result<Vec<_>>>()?;
        let comms = Comm::from_devices(streams).map_err(|e| Error::Nccl(format!("{e:?}")))?;
        Ok(Self { comms })
    }

    /// In-place sum over all ranks (one `ncclAllReduce` per rank in a group).
    pub fn all_reduce_in_place<T: HostElement + NcclType>(&self, bufs: &mut [CudaSlice<T>]) -> Result<()> {
        if bufs.len() != self.comms.len() {
            return Err(Error::BufferCount { world: self.comms.len(), got: bufs.len() });
        }
        group_start().map_err(|e| Error::Nccl(format!("{e:?}")))?;
        let mut result = Ok(());
        for (c, b) in self.comms.iter().zip(bufs.iter_mut()) {
            if let Err(e) = c.all_reduce_in_place(b, &ReduceOp::Sum) {
                result = Err(Error::Nccl(format!("{e:?}")));
            }
        }
        group_end().map_err(|e| Error::Nccl(format!("{e:?}")))?;
        result
    }
}
