//! The kernels in the device crate's PTX: typed keys and their names.
use crate::config::{Bits, Quantization};
use flashcomm_kernels::codec::Dtype;

/// A PTX module holding flashcomm's kernels (the facade crate embeds the one
/// its build script compiled from `kernels-gpu`).
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    /// PTX text.
    pub ptx: &'static str,
}

/// One kernel entry point. A small `Copy` key, so the launch path looks
/// kernels up without building their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `allreduce_oneshot_<dtype>`.
    OneShot(Dtype),
    /// `allreduce_twoshot_<dtype>_raw` (bits 16, 16) or `..._q<rs>q<ag>`.
    TwoShot(Dtype, u32, u32),
    /// `codec_quantize_<dtype>`.
    CodecQuantize(Dtype),
    /// `codec_dequantize_<dtype>`.
    CodecDequantize(Dtype),
    /// `peer_probe`.
    PeerProbe,
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::Bf16 => "bf16",
        Dtype::F16 => "f16",
    }
}

impl Kernel {
    /// The two-shot kernel for `quant`.
    pub fn twoshot(dtype: Dtype, quant: &Quantization) -> Self {
        let (rs, ag) = quant.kernel_bits();
        Kernel::TwoShot(dtype, rs, ag)
    }

    /// The entry point's name in the PTX.
    pub fn name(&self) -> String {
        match *self {
            Kernel::OneShot(d) => format!("allreduce_oneshot_{}", dtype_name(d)),
            Kernel::TwoShot(d, 16, 16) => format!("allreduce_twoshot_{}_raw", dtype_name(d)),
            Kernel::TwoShot(d, rs, ag) => format!("allreduce_twoshot_{}_q{rs}q{ag}", dtype_name(d)),
            Kernel::CodecQuantize(d) => format!("codec_quantize_{}", dtype_name(d)),
            Kernel::CodecDequantize(d) => format!("codec_dequantize_{}", dtype_name(d)),
            Kernel::PeerProbe => "peer_probe".into(),
        }
    }

    /// Every kernel the host may launch.
    pub fn all() -> Vec<Kernel> {
        let mut all = vec![Kernel::PeerProbe];
        for d in [Dtype::Bf16, Dtype::F16] {
            all.extend([Kernel::OneShot(d), Kernel::CodecQuantize(d), Kernel::CodecDequantize(d), Kernel::TwoShot(d, 16, 16)]);
            for rs in Bits::ALL {
                for ag in Bits::ALL {
                    all.push(Kernel::TwoShot(d, rs.bits(), ag.bits()));
                }
            }
        }
        all
    }
}

/// Every kernel name the host may launch.
pub fn all() -> Vec<String> {
    Kernel::all().iter().map(Kernel::name).collect()
}
