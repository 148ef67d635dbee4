//! Host element types and their device counterparts.
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use flashcomm_kernels::codec::{self, Dtype};

/// An element type flashcomm reduces: [`half::bf16`] or [`half::f16`].
pub trait HostElement: Copy + Default + PartialEq + std::fmt::Debug + DeviceRepr + ValidAsZeroBits + Send + Sync + 'static {
    /// The device codec's marker type for this element.
    type Device: codec::Element;
    /// Runtime tag.
    const DTYPE: Dtype = <Self::Device as codec::Element>::DTYPE;
    /// Raw bits.
    fn to_bits(self) -> u16;
    /// From raw bits.
    fn from_bits(bits: u16) -> Self;
    /// Exact widening, computed by the shared codec.
    fn to_f32(self) -> f32 {
        <Self::Device as codec::Element>::to_f32(self.to_bits())
    }
    /// Round to nearest even (canonical NaN), computed by the shared codec.
    fn from_f32(x: f32) -> Self {
        Self::from_bits(<Self::Device as codec::Element>::from_f32(x))
    }
}

impl HostElement for half::bf16 {
    type Device = codec::Bf16;
    fn to_bits(self) -> u16 {
        half::bf16::to_bits(self)
    }
    fn from_bits(bits: u16) -> Self {
        half::bf16::from_bits(bits)
    }
}

impl HostElement for half::f16 {
    type Device = codec::F16;
    fn to_bits(self) -> u16 {
        half::f16::to_bits(self)
    }
    fn from_bits(bits: u16) -> Self {
        half::f16::from_bits(bits)
    }
}
