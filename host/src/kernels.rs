//! The kernels' PTX image and its entry points loaded on one context.
//! Keys and names come from the device crate's [`entry`](flashcomm_kernels::entry) table.
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use flashcomm_kernels::entry::KernelId;
use std::collections::HashMap;
use std::sync::Arc;

/// A PTX module holding flashcomm's kernels (the facade crate embeds the one
/// its build script compiled from `kernels-gpu`).
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    /// PTX text.
    pub ptx: &'static str,
}

/// Every entry point of a [`KernelImage`], loaded on one context.
#[derive(Debug)]
pub(crate) struct LoadedKernels {
    _module: Arc<CudaModule>,
    functions: HashMap<KernelId, CudaFunction>,
}

impl LoadedKernels {
    /// Loads `image` on `ctx` (the driver JIT-compiles the PTX) and looks up
    /// every entry point of the table.
    pub fn load(ctx: &Arc<CudaContext>, image: &KernelImage) -> Result<Self> {
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(image.ptx))?;
        let mut functions = HashMap::new();
        for (id, name) in KernelId::all() {
            let f = module.load_function(name).map_err(|_| Error::MissingKernel { name: name.into() })?;
            functions.insert(id, f);
        }
        Ok(Self { _module: module, functions })
    }

    /// The entry point `id`.
    pub fn get(&self, id: KernelId) -> Result<&CudaFunction> {
        self.functions.get(&id).ok_or_else(|| Error::MissingKernel { name: id.name().unwrap_or("(no such kernel)").into() })
    }

    /// Every loaded entry point.
    pub fn iter(&self) -> impl Iterator<Item = (KernelId, &CudaFunction)> {
        self.functions.iter().map(|(&k, f)| (k, f))
    }
}
