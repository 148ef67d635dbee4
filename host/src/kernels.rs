//! The kernel image (PTX, plus SASS for the architectures it was assembled
//! for) and its entry points loaded on one context. Keys and names come from
//! the device crate's [`entry`](flashcomm_kernels::entry) table.
use crate::driver::module::{Function, Module, ModuleImage};
use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaContext};
use flashcomm_kernels::entry::KernelId;
use std::collections::HashMap;
use std::sync::Arc;

/// flashcomm's kernels: one PTX module and the same module assembled to
/// SASS for some architectures (the facade crate embeds the prebuilt image
/// in `kernel-image/` as [`KERNELS`](../flashcomm/static.KERNELS.html)).
///
/// A GPU loads the SASS of the newest listed architecture it can run (same
/// major version, minor not above its own); any other GPU of compute
/// capability 8.0 or newer loads the PTX, which the driver JIT-compiles
/// (seconds, cached by the driver in `~/.nv/ComputeCache`).
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    ptx: &'static str,
    sass: &'static [Sass],
}

/// A cubin: the image's PTX assembled for one architecture.
#[derive(Clone, Copy, Debug)]
pub struct Sass {
    arch: (u32, u32),
    cubin: &'static [u8],
}

impl Sass {
    /// The cubin `cubin` (an ELF file) for compute capability `arch`.
    pub const fn new(arch: (u32, u32), cubin: &'static [u8]) -> Self {
        Self { arch, cubin }
    }

    /// The architecture, as compute capability `(major, minor)`.
    pub fn arch(&self) -> (u32, u32) {
        self.arch
    }

    /// The cubin.
    pub fn cubin(&self) -> &'static [u8] {
        self.cubin
    }
}

/// Which code of a [`KernelImage`] a GPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCode {
    /// Machine code for this architecture (loads in milliseconds).
    Sass {
        /// Compute capability the SASS was assembled for.
        arch: (u32, u32),
    },
    /// PTX, JIT-compiled by the driver when loaded.
    Ptx,
}

impl std::fmt::Display for KernelCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelCode::Sass { arch: (major, minor) } => write!(f, "SASS sm_{major}{minor}"),
            KernelCode::Ptx => write!(f, "PTX (JIT)"),
        }
    }
}

impl KernelImage {
    /// An image of `ptx` (for compute capability 8.0 and newer) and the
    /// same code assembled for the architectures of `sass`.
    ///
    /// # Safety
    /// The driver reads each cubin by the offsets in its own headers (it is
    /// given no length): every `sass` entry must be a complete cubin that
    /// ptxas made for its architecture, and `ptx` must hold every kernel of
    /// the device crate's table with its argument layout: flashcomm's
    /// `KERNELS` (built by scripts/build-kernels.sh, checked in CI).
    pub const unsafe fn new(ptx: &'static str, sass: &'static [Sass]) -> Self {
        Self { ptx, sass }
    }

    /// The PTX text.
    pub fn ptx(&self) -> &'static str {
        self.ptx
    }

    /// The SASS, per architecture.
    pub fn sass(&self) -> &'static [Sass] {
        self.sass
    }

    /// The same image without SASS: every GPU JIT-compiles the PTX (for
    /// checking the PTX path on a GPU that has SASS).
    pub const fn ptx_only(&self) -> KernelImage {
        KernelImage { ptx: self.ptx, sass: &[] }
    }

    /// The code a GPU of compute capability `(major, minor)` loads.
    pub fn code_for(&self, (major, minor): (u32, u32)) -> KernelCode {
        self.sass_for((major, minor)).map_or(KernelCode::Ptx, |s| KernelCode::Sass { arch: s.arch })
    }

    fn sass_for(&self, (major, minor): (u32, u32)) -> Option<&Sass> {
        self.sass.iter().filter(|s| s.arch.0 == major && s.arch.1 <= minor).max_by_key(|s| s.arch.1)
    }
}

/// Every entry point of a [`KernelImage`], loaded on one context.
#[derive(Debug)]
pub(crate) struct LoadedKernels {
    // Declared before `_module`: the handles die with it.
    functions: HashMap<KernelId, Function>,
    code: KernelCode,
    _module: Module,
}

impl LoadedKernels {
    /// Loads the code of `image` that `ctx`'s GPU runs and looks up every
    /// entry point of the table.
    pub fn load(ctx: &Arc<CudaContext>, image: &KernelImage) -> Result<Self> {
        let major = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32;
        let minor = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32;
        if major < 8 {
            return Err(Error::NoGpu(format!("compute capability {major}.{minor}: flashcomm's kernels need 8.0 or newer")));
        }
        let code = image.code_for((major, minor));
        // SAFETY: a KernelImage's cubins are complete (KernelImage::new).
        let module = unsafe {
            match image.sass_for((major, minor)) {
                Some(sass) => Module::load(ctx, ModuleImage::Cubin(sass.cubin))?,
                None => Module::load(ctx, ModuleImage::Ptx(image.ptx))?,
            }
        };
        let mut functions = HashMap::new();
        for (id, name) in KernelId::all() {
            let f = module.function(name).map_err(|_| Error::MissingKernel { name: name.into() })?;
            functions.insert(id, f);
        }
        Ok(Self { functions, code, _module: module })
    }

    /// The entry point `id`.
    pub fn get(&self, id: KernelId) -> Result<Function> {
        self.functions.get(&id).copied().ok_or_else(|| Error::MissingKernel { name: id.name().unwrap_or("(no such kernel)").into() })
    }

    /// Every loaded entry point.
    pub fn iter(&self) -> impl Iterator<Item = (KernelId, Function)> + '_ {
        self.functions.iter().map(|(&k, &f)| (k, f))
    }

    /// Which code of the image was loaded.
    pub fn code(&self) -> KernelCode {
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: KernelImage = KernelImage {
        ptx: "",
        sass: &[Sass { arch: (8, 0), cubin: &[] }, Sass { arch: (9, 0), cubin: &[] }, Sass { arch: (8, 6), cubin: &[] }],
    };

    #[test]
    fn newest_compatible_sass_else_ptx() {
        assert_eq!(IMAGE.code_for((8, 0)), KernelCode::Sass { arch: (8, 0) });
        assert_eq!(IMAGE.code_for((8, 9)), KernelCode::Sass { arch: (8, 6) });
        assert_eq!(IMAGE.code_for((9, 0)), KernelCode::Sass { arch: (9, 0) });
        // SASS never runs across major versions, nor on an older minor.
        assert_eq!(IMAGE.code_for((10, 0)), KernelCode::Ptx);
        assert_eq!(IMAGE.code_for((12, 0)), KernelCode::Ptx);
        assert_eq!(KernelImage { sass: &IMAGE.sass[2..], ..IMAGE }.code_for((8, 0)), KernelCode::Ptx);
        assert_eq!(IMAGE.ptx_only().code_for((9, 0)), KernelCode::Ptx);
    }
}
