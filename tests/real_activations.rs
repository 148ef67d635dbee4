//! The reference reducer on real activations (SmolLM2-135M row-parallel
//! partial sums, `tests/fixtures/`): every element within the analytic error
//! bound of the exact sum, for every setting; the group-independence property
//! holds on them too.
#[path = "support/fixture.rs"]
mod fixture;

use flashcomm::reference::{error_bound, exact_sum_f64, reference_all_reduce};
use flashcomm::{Bits, GroupSize, Quantization, Quantized};

#[test]
fn reference_within_bound_on_real_activations() {
    let tensors = fixture::load().expect("the fixture ships with the repository");
    assert_eq!(tensors.len(), 3);
    let mut checked = 0;
    for t in &tensors {
        assert_eq!(t.world, 4, "{}", t.name);
        let refs: Vec<&[half::bf16]> = t.partials.iter().map(|v| v.as_slice()).collect();
        let exact = exact_sum_f64(&refs);
        let mut settings = vec![Quantization::None];
        for &rs in Bits::ALL {
            for &ag in Bits::ALL {
                for g in GroupSize::ALL {
                    settings.push(Quantization::Int(Quantized::new(rs, ag, g)));
                }
            }
        }
        for q in settings {
            let out = reference_all_reduce(&refs, &q).unwrap();
            let bound = error_bound(&refs, &q).unwrap();
            for i in 0..out.len() {
                let err = (out[i].to_f32() as f64 - exact[i]).abs();
                assert!(out[i].to_f32().is_finite(), "{} {q:?}: element {i} is not finite", t.name);
                assert!(err <= bound[i], "{} {q:?}: element {i}: error {err:e} > bound {:e}", t.name, bound[i]);
            }
            checked += 1;
        }
        // Tokens are independent when groups do not straddle rows (hidden 576
        // is a multiple of 32 and 64): reducing the first token alone gives
        // the same bits as within the whole batch (batch invariance).
        for g in [GroupSize::G32, GroupSize::G64] {
            let q = Quantization::Int(Quantized::new(Bits::B8, Bits::B8, g));
            let whole = reference_all_reduce(&refs, &q).unwrap();
            let first: Vec<&[half::bf16]> = t.partials.iter().map(|v| &v[..t.hidden]).collect();
            assert_eq!(reference_all_reduce(&first, &q).unwrap(), whole[..t.hidden], "{} {}", t.name, q.label());
        }
    }
    println!("{checked} tensor/setting pairs within bound");
}
