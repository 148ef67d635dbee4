//! Configuration parsing and the errors raised before any GPU is touched.
use flashcomm::Spikes;
use flashcomm::{Algorithm, Bits, Communicator, Config, Error, GroupSize, Quantization, Quantized, KERNELS};
use std::time::Duration;

#[test]
fn quantization_parses() {
    assert_eq!(Quantization::parse("int8").unwrap(), Quantization::INT8);
    assert_eq!(Quantization::parse("int4-int8").unwrap(), Quantization::INT4_INT8);
    assert_eq!(Quantization::INT4_INT8.label(), "int4-int8-g128");
    assert_eq!(Quantization::parse("INT4-g32").unwrap(), Quantization::Int(Quantized::new(Bits::B4, Bits::B4, GroupSize::G32)));
    assert_eq!(Quantization::parse("int6-int4-g256").unwrap(), Quantization::Int(Quantized::new(Bits::B6, Bits::B4, GroupSize::G256)));
    let k = |n| Spikes::new(n).unwrap();
    assert_eq!(
        Quantization::parse("int4k4-int8").unwrap(),
        Quantization::Int(Quantized::new(Bits::B4, Bits::B8, GroupSize::G128).with_spikes(k(4), Spikes::NONE))
    );
    assert_eq!(Quantization::parse("int8k1-g64").unwrap(), Quantization::Int(Quantized::new(Bits::B8, Bits::B8, GroupSize::G64).with_spikes(k(1), k(1))));
    assert_eq!(Quantization::parse("INT4K8-int8k2").unwrap().label(), "int4k8-int8k2-g128");
    assert_eq!(Quantization::parse("none").unwrap(), Quantization::None);
    for bad in ["int4k3", "int4k16", "int4k", "k4", "int4-int8k-g128", "int5", "q8", "q4q8", "int8-g100", "int8-gx", "fp8", "int4-8", "int4-int8-int8", "", "off"] {
        assert!(matches!(Quantization::parse(bad), Err(Error::InvalidConfig(_))), "{bad}");
    }
    assert_eq!(Algorithm::parse("TwoShot").unwrap(), Algorithm::TwoShot);
    assert!(Algorithm::parse("ring").is_err());
}

#[test]
fn invalid_configs_are_rejected() {
    let c = Config { algorithm: Algorithm::Flash, ..Config::default() };
    assert!(matches!(c.validate(), Err(Error::InvalidConfig(_))));
    let c = Config { max_piece_elems: 100, ..Config::default() };
    assert!(matches!(c.validate(), Err(Error::InvalidConfig(_))));
    assert!(matches!(Quantization::int(Bits::B8, Bits::B8, 512), Err(Error::InvalidConfig(_))));
    assert!(matches!(Quantization::int(Bits::B8, Bits::B8, 96), Err(Error::InvalidConfig(_))));
    let c = Config { algorithm: Algorithm::Flash, ..Config::default() };
    assert!(matches!(Communicator::new(&[0, 1], c, &KERNELS), Err(Error::InvalidConfig(_))));
}

#[test]
fn device_list_errors_come_before_any_gpu_access() {
    let err = Communicator::new(&[0, 1, 0], Config::default(), &KERNELS).unwrap_err();
    assert!(matches!(err, Error::DuplicateDevice { device: 0 }), "{err}");
    let err = Communicator::new(&[0], Config::default(), &KERNELS).unwrap_err();
    assert!(matches!(err, Error::WorldSize { world: 1, .. }), "{err}");
    let err = Communicator::new(&[0, 1, 2, 3, 4, 5, 6, 7, 8], Config::default(), &KERNELS).unwrap_err();
    assert!(matches!(err, Error::WorldSize { world: 9, .. }), "{err}");
}

#[test]
fn no_gpu_is_a_typed_error_not_a_panic() {
    if flashcomm::gpu_count() == 0 {
        let err = Communicator::new(&[0, 1], Config::default(), &KERNELS).unwrap_err();
        assert!(matches!(err, Error::NoGpu(_)), "{err}");
        // A repeated device passes the list check when sharing is allowed.
        let err = Communicator::new(&[0, 0], Config { shared_devices: true, ..Config::default() }, &KERNELS).unwrap_err();
        assert!(matches!(err, Error::NoGpu(_)), "{err}");
    }
}

/// Every size and duration from config is bounded before any allocation
/// (a huge staging piece used to overflow the staging size to 0 in release
/// builds; `Some(0)` used to mean "wait forever").
#[test]
fn sizes_and_durations_are_bounded() {
    let bad = [
        Config { max_piece_elems: usize::MAX, ..Config::default() },
        Config { max_piece_elems: usize::MAX / 2 + 1, ..Config::default() },
        Config { max_piece_elems: flashcomm::config::MAX_PIECE_ELEMS + 1, ..Config::default() },
        Config { max_piece_elems: flashcomm::config::MIN_PIECE_ELEMS - 1, ..Config::default() },
        Config { timeout: Some(Duration::ZERO), ..Config::default() },
        Config { timeout: Some(Duration::from_secs(u64::MAX)), ..Config::default() },
    ];
    for c in bad {
        assert!(matches!(c.validate(), Err(Error::InvalidConfig(_))), "{c:?} passed validation");
        assert!(matches!(Communicator::new(&[0, 1], c.clone(), &KERNELS), Err(Error::InvalidConfig(_))), "{c:?} reached creation");
    }
    for ok in [flashcomm::config::MIN_PIECE_ELEMS, flashcomm::config::MAX_PIECE_ELEMS] {
        Config { max_piece_elems: ok, timeout: None, ..Config::default() }.validate().unwrap();
    }
}

/// Environment overrides are parsed and validated like the config.
#[test]
fn environment_overrides_are_validated() {
    // One test owns these variables (tests of this file run in threads).
    std::env::set_var("FLASHCOMM_MAX_PIECE_ELEMS", "18446744073709551615");
    assert!(matches!(Config::default().with_env_overrides(), Err(Error::InvalidConfig(_))));
    std::env::set_var("FLASHCOMM_MAX_PIECE_ELEMS", "1048576");
    std::env::set_var("FLASHCOMM_QUANT", "int4-int8-g64");
    std::env::set_var("FLASHCOMM_TIMEOUT_MS", "0");
    let c = Config::default().with_env_overrides().unwrap();
    assert_eq!((c.max_piece_elems, c.quantization, c.timeout), (1 << 20, Quantization::parse("int4-int8-g64").unwrap(), None));
    std::env::set_var("FLASHCOMM_QUANT", "q4q8");
    assert!(matches!(Config::default().with_env_overrides(), Err(Error::InvalidConfig(_))));
    for k in ["FLASHCOMM_MAX_PIECE_ELEMS", "FLASHCOMM_QUANT", "FLASHCOMM_TIMEOUT_MS"] {
        std::env::remove_var(k);
    }
}
