//! Kernel modules loaded from PTX or SASS (`cuModuleLoadData`), with raw
//! function handles, without cudarc's `nvrtc` feature (which would make an
//! application that links CUDA at build time link libnvrtc too).
use cudarc::driver::{result, result::DriverError, sys, CudaContext};
use std::ffi::{c_void, CString};
use std::sync::Arc;

/// A loaded module, unloaded on drop (on its context).
#[derive(Debug)]
pub struct Module {
    ctx: Arc<CudaContext>,
    handle: sys::CUmodule,
}

// SAFETY: a CUmodule handle may be used and unloaded from any thread that
// binds its context (which every method here does); cudarc's CudaModule
// makes the same claim.
unsafe impl Send for Module {}
// SAFETY: as Send; no method mutates through `&self`.
unsafe impl Sync for Module {}

/// A kernel entry point of a [`Module`]; valid while the module is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function(sys::CUfunction);

// SAFETY: a CUfunction is an immutable handle usable from any thread with
// its context bound (cudarc's CudaFunction makes the same claim).
unsafe impl Send for Function {}
// SAFETY: as Send.
unsafe impl Sync for Function {}

impl Module {
    /// Loads `image` on `ctx`: PTX text (the driver JIT-compiles it) or a
    /// cubin (machine code for the device's architecture).
    ///
    /// # Safety
    /// A cubin must be complete and well formed: the driver reads it by the
    /// offsets in its headers, with no length (only the ELF magic is checked
    /// here).
    pub unsafe fn load(ctx: &Arc<CudaContext>, image: ModuleImage<'_>) -> Result<Self, DriverError> {
        ctx.bind_to_thread()?;
        let handle = match image {
            ModuleImage::Ptx(text) => {
                // The driver reads PTX up to a NUL byte.
                let text = CString::new(text).map_err(|_| DriverError(sys::CUresult::CUDA_ERROR_INVALID_IMAGE))?;
                // SAFETY: a NUL-terminated PTX string, alive during the call;
                // the context is bound.
                unsafe { result::module::load_data(text.as_ptr() as *const c_void)? }
            }
            ModuleImage::Cubin(bytes) => {
                // The driver reads an ELF header first; reject what cannot be one.
                if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
                    return Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_IMAGE));
                }
                // SAFETY: a complete cubin (caller contract), alive during
                // the call; the context is bound.
                unsafe { result::module::load_data(bytes.as_ptr() as *const c_void)? }
            }
        };
        Ok(Self { ctx: ctx.clone(), handle })
    }

    /// The entry point `name`.
    pub fn function(&self, name: &str) -> Result<Function, DriverError> {
        let name = CString::new(name).map_err(|_| DriverError(sys::CUresult::CUDA_ERROR_NOT_FOUND))?;
        self.ctx.bind_to_thread()?;
        // SAFETY: the module is loaded (unloaded only in Drop).
        Ok(Function(unsafe { result::module::get_function(self.handle, name)? }))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let unloaded = self.ctx.bind_to_thread().and_then(|_| {
            // SAFETY: loaded by `load`, unloaded once; the communicator
            // synchronises its streams (and graphs hold the module through
            // its owner) before this runs.
            unsafe { result::module::unload(self.handle) }
        });
        self.ctx.record_err(unloaded);
    }
}

impl Function {
    /// The raw handle, for launches.
    pub fn handle(&self) -> sys::CUfunction {
        self.0
    }

    /// Blocks of `threads` threads (no dynamic shared memory) that one SM
    /// can keep resident.
    pub fn resident_blocks_per_sm(&self, ctx: &CudaContext, threads: u32) -> Result<u32, DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: a live function of the bound context.
        let n = unsafe { result::occupancy::max_active_block_per_multiprocessor(self.0, threads as i32, 0)? };
        Ok(n.max(0) as u32)
    }
}

/// What [`Module::load`] loads.
#[derive(Clone, Copy, Debug)]
pub enum ModuleImage<'a> {
    /// PTX text (JIT-compiled by the driver).
    Ptx(&'a str),
    /// A cubin (ELF with SASS for one architecture).
    Cubin(&'a [u8]),
}
