//! The kernels' entry points, keyed and named once for both sides: the
//! device crate defines them under these names (`kernels/`), the host loads
//! them by these names. The two-step kernels are generated from the wire
//! formats ([`twostep_wire_pairs!`](crate::twostep_wire_pairs)).
use crate::codec::wire::kind;
use crate::codec::{Dtype, Wire, WireKind};

/// The entry-point name of a two-step kernel:
/// `allreduce_twostep_<dtype>_<rs>_<ag>`, e.g. `allreduce_twostep_bf16_int4_int8`
/// (with a prefix: `diag_` for the diagnostic kernels, `spiky_` for the
/// kernels with spike reserving).
#[macro_export]
#[doc(hidden)]
macro_rules! twostep_kernel_name {
    ($prefix:literal, $dtype:ident, $rs:ident, $ag:ident) => {
        concat!($prefix, "allreduce_twostep_", stringify!($dtype), "_", stringify!($rs), "_", stringify!($ag))
    };
}

/// Calls `$callback! { (dtype Element ((rs) (ag))) ... }` for the
/// diagnostic two-step kernels (`diag_` + the kernel's name; bf16 only):
/// the settings the benchmark's phase breakdown measures.
#[macro_export]
#[doc(hidden)]
macro_rules! diagnostic_kernels {
    ($callback:path) => {
        $callback! {
            (bf16 Bf16 ((Plain plain 16) (Plain plain 16)))
            (bf16 Bf16 ((B8 int8 8) (B8 int8 8)))
            (bf16 Bf16 ((B4 int4 4) (B4 int4 4)))
        }
    };
}

macro_rules! twostep_table {
    ($((($rv:ident $rn:ident $rb:tt) ($av:ident $an:ident $ab:tt)))*) => {
        /// Every two-step kernel: element type, reduce-scatter and all-gather
        /// wires, entry-point name.
        pub const TWOSTEP_KERNELS: &[(Dtype, Wire, Wire, &str)] = &[
            $((Dtype::Bf16, <kind::$rv as WireKind>::WIRE, <kind::$av as WireKind>::WIRE, crate::twostep_kernel_name!("", bf16, $rn, $an)),)*
            $((Dtype::F16, <kind::$rv as WireKind>::WIRE, <kind::$av as WireKind>::WIRE, crate::twostep_kernel_name!("", f16, $rn, $an)),)*
        ];
    };
}
crate::twostep_wire_pairs! { twostep_table }

macro_rules! spiky_table {
    ($((($rv:ident $rn:ident $rb:tt) ($av:ident $an:ident $ab:tt)))*) => {
        /// Every two-step kernel with spike reserving (`codec::spikes`; the
        /// counts are arguments, 0 included): element type, wires, name.
        pub const SPIKY_KERNELS: &[(Dtype, Wire, Wire, &str)] = &[
            $((Dtype::Bf16, <kind::$rv as WireKind>::WIRE, <kind::$av as WireKind>::WIRE, crate::twostep_kernel_name!("spiky_", bf16, $rn, $an)),)*
            $((Dtype::F16, <kind::$rv as WireKind>::WIRE, <kind::$av as WireKind>::WIRE, crate::twostep_kernel_name!("spiky_", f16, $rn, $an)),)*
        ];
    };
}
crate::twostep_wire_pairs! { quantized spiky_table }

macro_rules! diagnostic_table {
    ($(($dtype:ident $elem:ident (($rv:ident $rn:ident $rb:tt) ($av:ident $an:ident $ab:tt))))*) => {
        /// Every diagnostic two-step kernel: element type, wires, entry-point name.
        pub const DIAGNOSTIC_KERNELS: &[(Dtype, Wire, Wire, &str)] = &[
            $((Dtype::$elem, <kind::$rv as WireKind>::WIRE, <kind::$av as WireKind>::WIRE, crate::twostep_kernel_name!("diag_", $dtype, $rn, $an)),)*
        ];
    };
}
crate::diagnostic_kernels! { diagnostic_table }

/// One kernel entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelId {
    /// `allreduce_oneshot_<dtype>`: the unquantized one-shot.
    OneShot(Dtype),
    /// `allreduce_oneshot_ll_<dtype>`: the unquantized one-shot with its data
    /// in LL lines (small messages; `kernels/oneshot_ll.rs`).
    OneShotLl(Dtype),
    /// `allreduce_twostep_<dtype>_<rs>_<ag>`: reduce-scatter then all-gather,
    /// with plain wires (the unquantized two-shot) or quantized ones (Flash).
    TwoStep {
        /// Element type.
        dtype: Dtype,
        /// Wire of the reduce-scatter.
        rs: Wire,
        /// Wire of the all-gather.
        ag: Wire,
        /// `spiky_allreduce_twostep_...`: with spike reserving (quantized
        /// wires only). A kernel of its own, so the kernels without spikes
        /// keep their code and registers.
        spiky: bool,
    },
    /// `diag_allreduce_twostep_...`: a two-step kernel that can skip phases'
    /// data work (benchmark diagnostics; see [`PhaseSkip`](crate::abi::PhaseSkip)).
    TwoStepDiagnostic {
        /// Element type.
        dtype: Dtype,
        /// Wire of the reduce-scatter.
        rs: Wire,
        /// Wire of the all-gather.
        ag: Wire,
    },
    /// `codec_quantize_<dtype>`: one buffer into one blob (codec tests).
    CodecQuantize(Dtype),
    /// `codec_dequantize_<dtype>`: one blob back into a buffer (codec tests).
    CodecDequantize(Dtype),
    /// `peer_probe`: one store and one load across a link (creation).
    PeerProbe,
}

impl KernelId {
    /// The entry point's name in the PTX; `None` for a two-step key with no
    /// kernel (a plain wire paired with a quantized one, or a diagnostic
    /// kernel that is not built).
    pub fn name(self) -> Option<&'static str> {
        let find = |table: &[(Dtype, Wire, Wire, &'static str)], d: Dtype, r: Wire, a: Wire| {
            table.iter().find(|&&(td, tr, ta, _)| (td, tr, ta) == (d, r, a)).map(|&(.., name)| name)
        };
        Some(match self {
            KernelId::OneShot(Dtype::Bf16) => "allreduce_oneshot_bf16",
            KernelId::OneShot(Dtype::F16) => "allreduce_oneshot_f16",
            KernelId::OneShotLl(Dtype::Bf16) => "allreduce_oneshot_ll_bf16",
            KernelId::OneShotLl(Dtype::F16) => "allreduce_oneshot_ll_f16",
            KernelId::TwoStep { dtype, rs, ag, spiky: false } => return find(TWOSTEP_KERNELS, dtype, rs, ag),
            KernelId::TwoStep { dtype, rs, ag, spiky: true } => return find(SPIKY_KERNELS, dtype, rs, ag),
            KernelId::TwoStepDiagnostic { dtype, rs, ag } => return find(DIAGNOSTIC_KERNELS, dtype, rs, ag),
            KernelId::CodecQuantize(Dtype::Bf16) => "codec_quantize_bf16",
            KernelId::CodecQuantize(Dtype::F16) => "codec_quantize_f16",
            KernelId::CodecDequantize(Dtype::Bf16) => "codec_dequantize_bf16",
            KernelId::CodecDequantize(Dtype::F16) => "codec_dequantize_f16",
            KernelId::PeerProbe => "peer_probe",
        })
    }

    /// Every entry point of the PTX, each with its name.
    pub fn all() -> impl Iterator<Item = (KernelId, &'static str)> {
        let per_dtype =
            Dtype::ALL.into_iter().flat_map(|d| [KernelId::OneShot(d), KernelId::OneShotLl(d), KernelId::CodecQuantize(d), KernelId::CodecDequantize(d)]);
        let twostep = TWOSTEP_KERNELS.iter().map(|&(dtype, rs, ag, _)| KernelId::TwoStep { dtype, rs, ag, spiky: false });
        let spiky = SPIKY_KERNELS.iter().map(|&(dtype, rs, ag, _)| KernelId::TwoStep { dtype, rs, ag, spiky: true });
        let diagnostic = DIAGNOSTIC_KERNELS.iter().map(|&(dtype, rs, ag, _)| KernelId::TwoStepDiagnostic { dtype, rs, ag });
        core::iter::once(KernelId::PeerProbe)
            .chain(per_dtype)
            .chain(twostep)
            .chain(spiky)
            .chain(diagnostic)
            .filter_map(|k| k.name().map(|n| (k, n)))
    }
}
