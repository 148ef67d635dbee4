//! Configuration parsing and the errors raised before any GPU is touched.
use flashcomm::{Algorithm, Bits, Communicator, Config, Error, Quantization, KERNELS};

#[test]
fn quantization_parses() {
    assert_eq!(Quantization::parse("int8").unwrap(), Quantization::INT8);
    assert_eq!(Quantization::parse("int6").unwrap(), Quantization::INT6);
    assert_eq!(Quantization::parse("INT4-g32").unwrap(), Quantization::Int { rs_bits: Bits::B4, ag_bits: Bits::B4, group_size: 32 });
    assert_eq!(Quantization::parse("q6q4-g256").unwrap(), Quantization::Int { rs_bits: Bits::B6, ag_bits: Bits::B4, group_size: 256 });
    assert_eq!(Quantization::parse("none").unwrap(), Quantization::None);
    for bad in ["int5", "q8", "int8-g100", "int8-gx", "fp8"] {
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
    let c = Config { quantization: Quantization::Int { rs_bits: Bits::B8, ag_bits: Bits::B8, group_size: 512 }, ..Config::default() };
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
