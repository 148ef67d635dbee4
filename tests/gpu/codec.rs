//! The codec kernels on one GPU against the host codec, bit for bit.
use crate::common::*;
use cudarc::driver::CudaSlice;
use flashcomm::codec_gpu::GpuCodec;
use flashcomm::reference::{blob_data_ranges, blob_layout, dequantize_blob, quantize_blob};
use flashcomm::synth::Rng;
use flashcomm::Spikes;
use flashcomm::{Bits, GroupSize, HostElement, KERNELS};
use half::{bf16, f16};

fn one_case<T: HostElement>(codec: &GpuCodec, rng: &mut Rng, len: usize, (bits, group_size, spikes): (Bits, GroupSize, Spikes)) -> TestResult {
    let kind = KINDS[rng.range(0, KINDS.len() - 1)];
    let mut input = make_inputs::<T>(rng, kind, 1, len).remove(0);
    if rng.uniform() < 0.1 {
        // The non-finite rule: one NaN or inf somewhere.
        let at = rng.range(0, len - 1);
        input[at] = T::from_f32([f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.range(0, 2)]);
        if rng.uniform() < 0.5 {
            // A NaN with a payload and either sign, not the canonical one:
            // spike keys come from the input's raw bits.
            let nan = match T::DTYPE {
                flashcomm::Dtype::Bf16 => 0x7F81u16,
                flashcomm::Dtype::F16 => 0x7C01u16,
            };
            input[at] = T::from_bits(nan | rng.range(0, 0x3E) as u16 | if rng.uniform() < 0.5 { 0x8000 } else { 0 });
        }
    }
    let stream = codec.stream();
    let what = format!("{:?} len {len} {} g{} k{} {kind:?}", T::DTYPE, bits.name(), group_size.get(), spikes.get());
    let d_input = ctx(stream.clone_htod(&input), "upload")?;
    let layout = blob_layout(len, bits, group_size, spikes);
    let mut d_blob: CudaSlice<u8> = ctx(stream.clone_htod(&vec![0xA5u8; layout.total_bytes()]), "poison blob")?;
    let mut d_out = ctx(stream.clone_htod(&vec![T::from_bits(0xFFFF); len]), "poison output")?;
    ctx(codec.quantize(&d_input, (bits, group_size, spikes), &mut d_blob), "quantize")?;
    ctx(codec.dequantize(&d_blob, (bits, group_size, spikes), &mut d_out), "dequantize")?;
    let blob = ctx(stream.clone_dtoh(&d_blob), "download blob")?;
    let out = ctx(stream.clone_dtoh(&d_out), "download output")?;
    let expected_blob = quantize_blob(&input, bits, group_size, spikes);
    for range in blob_data_ranges(&layout) {
        if let Some(i) = range.clone().find(|&i| blob[i] != expected_blob[i]) {
            return Err(format!("{what}: blob byte {i} is {:#04x}, host codec wrote {:#04x}", blob[i], expected_blob[i]).into());
        }
    }
    let expected: Vec<T> = ctx(dequantize_blob(&expected_blob, len, bits, group_size, spikes), "host dequantize")?;
    compare_bits(&[out], &expected, &what)
}

/// Quantize + dequantize kernels equal the host codec on random inputs of
/// many lengths (including tails and lengths below one group and below the
/// spike count), every width, group size, spike count and element type.
pub fn round_trip_bit_exact() -> TestResult {
    let codec = ctx(GpuCodec::new(0, &KERNELS), "load codec kernels")?;
    let mut rng = Rng::new(seed("codec::round_trip_bit_exact"));
    let mut cases = 0;
    let fixed = [1usize, 15, 16, 17, 31, 33, 127, 4095, 4096, 4097, 65_537];
    for &bits in Bits::ALL {
        for g in GroupSize::ALL {
            for spikes in Spikes::ALL {
                let lens: Vec<usize> = fixed.iter().copied().chain((0..3).map(|_| (2f64.powf(rng.uniform() * 21.0)) as usize + 1)).collect();
                for len in lens {
                    one_case::<bf16>(&codec, &mut rng, len, (bits, g, spikes))?;
                    one_case::<f16>(&codec, &mut rng, len, (bits, g, spikes))?;
                    cases += 2;
                }
            }
        }
    }
    println!("codec::round_trip_bit_exact: {cases} cases bit-identical");
    Ok(())
}
