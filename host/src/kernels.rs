//! Names of the kernels in the device crate's PTX, and the PTX image.
use crate::config::Quantization;
use flashcomm_kernels::codec::Dtype;

/// A PTX module holding flashcomm's kernels (the facade crate embeds the one
/// its build script compiled from `kernels-gpu`).
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    /// PTX text.
    pub ptx: &'static str,
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::Bf16 => "bf16",
        Dtype::F16 => "f16",
    }
}

/// `allreduce_twoshot_<dtype>_raw` or `allreduce_twoshot_<dtype>_q<rs>q<ag>`.
pub fn twoshot(dtype: Dtype, quant: &Quantization) -> String {
    match quant.kernel_bits() {
        (16, 16) => format!("allreduce_twoshot_{}_raw", dtype_name(dtype)),
        (rs, ag) => format!("allreduce_twoshot_{}_q{rs}q{ag}", dtype_name(dtype)),
    }
}

/// `allreduce_oneshot_<dtype>`.
pub fn oneshot(dtype: Dtype) -> String {
    format!("allreduce_oneshot_{}", dtype_name(dtype))
}

/// `codec_quantize_<dtype>`.
pub fn codec_quantize(dtype: Dtype) -> String {
    format!("codec_quantize_{}", dtype_name(dtype))
}

/// `codec_dequantize_<dtype>`.
pub fn codec_dequantize(dtype: Dtype) -> String {
    format!("codec_dequantize_{}", dtype_name(dtype))
}

/// The peer-access probe.
pub const PEER_PROBE: &str = "peer_probe";

/// Every kernel name the host may launch.
pub fn all() -> Vec<String> {
    let mut names = vec![PEER_PROBE.to_string()];
    for dtype in [Dtype::Bf16, Dtype::F16] {
        names.push(oneshot(dtype));
        names.push(codec_quantize(dtype));
        names.push(codec_dequantize(dtype));
        names.push(twoshot(dtype, &Quantization::None));
        for rs in crate::Bits::ALL {
            for ag in crate::Bits::ALL {
                names.push(twoshot(dtype, &Quantization::Int { rs_bits: rs, ag_bits: ag, group_size: 128 }));
            }
        }
    }
    names
}
