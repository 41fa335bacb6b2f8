//! Element types: what a matrix of logits, probabilities or gradients is stored as.
//!
//! Matrices are `f32` or `f16` ([`DType`]); every kernel and the CPU reference compute in `f32`
//! or `f64` whatever the storage, and per-row results (losses, log-sum-exp) are always `f32`.
//! WGSL has no `bf16` type: bfloat16 data must be widened to `f32` (exactly, by a 16-bit shift)
//! before it reaches softmax-ce.

use std::fmt;

/// How the elements of a matrix are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16 (`half::f16`): on the GPU where the adapter has `SHADER_F16`.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    /// The name `bench` rows and error messages use: `"f32"` or `"f16"`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A matrix element type: `f32` or `half::f16`. Sealed: the kernels exist for these two.
pub trait Element:
    Copy
    + Default
    + PartialEq
    + PartialOrd
    + fmt::Debug
    + fmt::Display
    + Send
    + Sync
    + bytemuck::Pod
    + num_traits::Zero
    + sealed::Sealed
    + 'static
{
    /// The storage this type is.
    const DTYPE: DType;

    /// Exact: every `f32` and every `f16` is an `f64`.
    fn to_f64(self) -> f64;

    /// Rounded once, to nearest even.
    fn from_f64(v: f64) -> Self;

    /// Exact: every `f16` is an `f32`.
    fn to_f32(self) -> f32;

    /// Rounded once, to nearest even.
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;

    fn to_f64(self) -> f64 {
        f64::from(self)
    }

    fn from_f64(v: f64) -> Self {
        v as f32
    }

    fn to_f32(self) -> f32 {
        self
    }

    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;

    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }

    fn from_f64(v: f64) -> Self {
        // Not `half::f16::from_f64`: it rounds twice, through f32, where the CPU has F16C
        // (half-rs issue 116), and drops the low 32 bits of the mantissa before rounding in
        // software (issue 151), so a value just above an f16 tie can round down. Rounding to
        // f32 by round-to-odd first keeps every bit the f16 rounding depends on (f32 has 13
        // more bits than f16, and round-to-odd needs 2), so `from_f32`'s rounding to nearest
        // even is then the one correct rounding of `v`.
        half::f16::from_f32(f32_round_to_odd(v))
    }

    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }

    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// `v` rounded to f32 toward zero, with the last bit of the significand set when that was
/// inexact ("round to odd"). A second rounding, to nearest, into a format at least two bits
/// narrower then gives the correctly rounded value of `v` (Boldo and Melquiond, "When double
/// rounding is odd", 2005). NaN stays NaN, infinities and every f32 stay as they are.
fn f32_round_to_odd(v: f64) -> f32 {
    let mut r = v as f32;
    if f64::from(r).abs() > v.abs() {
        // One step toward zero: the bits of a float are its sign and magnitude, and the
        // magnitude is non-zero here.
        r = f32::from_bits(r.to_bits() - 1);
    }
    if f64::from(r) != v && !v.is_nan() {
        r = f32::from_bits(r.to_bits() | 1);
    }
    r
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn conversions_round_once_to_nearest_even() {
        // 1 + 2^-11 is halfway between two f16s: ties to even gives 1.
        assert_eq!(f16::from_f64(1.0 + 2f64.powi(-11)), f16::ONE);
        // Just above the tie rounds up; through f32 first it would too, but 65520 (halfway to
        // the next binade past f16::MAX) must overflow to infinity, as IEEE says.
        assert_eq!(<f16 as Element>::from_f64(65520.0), f16::INFINITY);
        assert_eq!(<f16 as Element>::from_f64(65519.0), f16::MAX);
        assert_eq!(<f16 as Element>::to_f64(f16::MAX), 65504.0);
        assert_eq!(DType::F16.size(), 2);
        assert_eq!(<f32 as Element>::DTYPE.to_string(), "f32");
    }
}
