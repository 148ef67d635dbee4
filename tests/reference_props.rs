//! Property tests of the CPU reference reducer against the exact sum.
use flashcomm::reference::{error_bound, exact_sum_f64, reference_all_reduce};
use flashcomm::synth::Rng;
use flashcomm::Spikes;
use flashcomm::{Bits, Error, GroupSize, HostElement, Quantization, Quantized};
use half::{bf16, f16};
use proptest::prelude::*;

fn quant_strategy() -> impl Strategy<Value = Quantization> {
    let bits = proptest::sample::select(Bits::ALL);
    let spikes = proptest::sample::select(&Spikes::ALL[..]);
    prop_oneof![
        1 => Just(Quantization::None),
        6 => (bits.clone(), bits, proptest::sample::select(&GroupSize::ALL[..]), spikes.clone(), spikes)
            .prop_map(|(rs, ag, group_size, rs_k, ag_k)| Quantization::Int(Quantized::new(rs, ag, group_size).with_spikes(rs_k, ag_k))),
    ]
}

/// Per-rank inputs: LLM-like (normal + outlier channels), or wide-range.
fn inputs<T: HostElement>(seed: u64, world: usize, len: usize, kind: u8) -> Vec<Vec<T>> {
    let mut rng = Rng::new(seed);
    match kind % 3 {
        0 => flashcomm::synth::rank_activations(seed, world, len, 1 + rng.range(0, 700)),
        1 => (0..world).map(|_| (0..len).map(|_| T::from_f32((rng.normal() * 1e-3) as f32)).collect()).collect(),
        _ => (0..world)
            .map(|_| (0..len).map(|_| T::from_f32((rng.normal() * 2f64.powi(rng.range(0, 20) as i32 - 10)) as f32)).collect())
            .collect(),
    }
}

fn check_within_bound<T: HostElement>(seed: u64, world: usize, len: usize, kind: u8, quant: Quantization) -> Result<(), TestCaseError> {
    let data = inputs::<T>(seed, world, len, kind);
    let refs: Vec<&[T]> = data.iter().map(|v| v.as_slice()).collect();
    let out = reference_all_reduce(&refs, &quant).unwrap();
    let exact = exact_sum_f64(&refs);
    let bound = error_bound(&refs, &quant).unwrap();
    prop_assert_eq!(out.len(), len);
    for i in 0..len {
        let y = out[i].to_f32() as f64;
        prop_assert!(y.is_finite(), "finite inputs gave {y} at {i}");
        let err = (y - exact[i]).abs();
        prop_assert!(err <= bound[i], "element {i}: |{y:e} - {:e}| = {err:e} > bound {:e} ({quant:?}, W={world})", exact[i], bound[i]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn bf16_reference_within_bound(seed in any::<u64>(), world in 2usize..=8, len in 1usize..4000, kind in any::<u8>(), quant in quant_strategy()) {
        check_within_bound::<bf16>(seed, world, len, kind, quant)?;
    }

    #[test]
    fn f16_reference_within_bound(seed in any::<u64>(), world in 2usize..=8, len in 1usize..4000, kind in any::<u8>(), quant in quant_strategy()) {
        check_within_bound::<f16>(seed, world, len, kind, quant)?;
    }

    /// Groups are independent: reducing a message in two parts cut on a
    /// group boundary gives the same bits (so shards and pieces change nothing).
    #[test]
    fn cutting_on_group_boundaries_changes_nothing(seed in any::<u64>(), world in 2usize..=8, len in 2usize..3000, quant in quant_strategy()) {
        let data = inputs::<bf16>(seed, world, len, 0);
        let g = quant.quantized().map_or(1, |q| q.group_size.get());
        let cut = ((len / 2) / g * g).max(g).min(len);
        let whole = reference_all_reduce(&data.iter().map(|v| v.as_slice()).collect::<Vec<_>>(), &quant).unwrap();
        let a = reference_all_reduce(&data.iter().map(|v| &v[..cut]).collect::<Vec<_>>(), &quant).unwrap();
        let b = reference_all_reduce(&data.iter().map(|v| &v[cut..]).collect::<Vec<_>>(), &quant).unwrap();
        prop_assert_eq!(whole, [a, b].concat());
    }
}

/// The unquantized mode equals an independent computation with the `half`
/// crate: the f32 sum in rank order, rounded once.
#[test]
fn unquantized_is_the_rank_ordered_f32_sum() {
    for seed in 0..50 {
        let data = inputs::<bf16>(seed, 2 + seed as usize % 7, 1000, seed as u8);
        let refs: Vec<&[bf16]> = data.iter().map(|v| v.as_slice()).collect();
        let out = reference_all_reduce(&refs, &Quantization::None).unwrap();
        for i in 0..1000 {
            let mut acc = data[0][i].to_f32();
            for x in &data[1..] {
                acc += x[i].to_f32();
            }
            assert_eq!(out[i].to_bits(), bf16::from_f32(acc).to_bits());
        }
    }
}

#[test]
fn nan_in_one_rank_poisons_exactly_its_group() {
    let world = 4;
    let data = inputs::<bf16>(7, world, 1000, 0);
    for quant in [Quantization::INT8, Quantization::INT4_INT8, Quantization::INT4] {
        let clean = reference_all_reduce(&data.iter().map(|v| v.as_slice()).collect::<Vec<_>>(), &quant).unwrap();
        let mut bad = data.clone();
        bad[2][300] = bf16::NAN;
        let out = reference_all_reduce(&bad.iter().map(|v| v.as_slice()).collect::<Vec<_>>(), &quant).unwrap();
        for i in 0..1000 {
            if i / 128 == 300 / 128 {
                assert_eq!(out[i].to_bits(), 0x7FC0, "{quant:?} element {i}");
            } else {
                assert_eq!(out[i].to_bits(), clean[i].to_bits(), "{quant:?} element {i}");
            }
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let a = [bf16::ONE; 10];
    let b = [bf16::ONE; 11];
    assert!(matches!(reference_all_reduce(&[&a[..], &b[..]], &Quantization::INT8), Err(Error::LengthMismatch { rank: 1, .. })));
    assert!(matches!(reference_all_reduce::<bf16>(&[], &Quantization::INT8), Err(Error::WorldSize { .. })));
    let nine: Vec<&[bf16]> = vec![&a[..]; 9];
    assert!(matches!(reference_all_reduce(&nine, &Quantization::INT8), Err(Error::WorldSize { world: 9, .. })));
    assert!(matches!(Quantization::int(Bits::B8, Bits::B8, 48), Err(Error::InvalidConfig(_))));
    assert!(Bits::from_bits(5).is_none() && GroupSize::new(48).is_none());
}
