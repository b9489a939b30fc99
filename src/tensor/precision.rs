//! The element type a backend stores its tensors in. The CPU backend always works in
//! f32; the CUDA backend can keep every tensor (weights and activations) in f16 or
//! bf16, with f32 accumulation inside its kernels and GEMMs (`--dtype`).

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
    BF16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::BF16];

    /// The name used on the command line and in reports (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
        }
    }

    /// Parses a `--dtype` value, naming the accepted ones in the error.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "dtype",
                    format!("unknown dtype {name:?}; expected f32, f16 or bf16"),
                )
            })
    }

    pub fn bytes_per_element(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::BF16 => 2,
        }
    }

    /// The bit patterns of `values` rounded to nearest-even in this 16-bit type.
    /// `F32` has no 16-bit form: it yields `None`.
    pub fn encode_16(self, values: &[f32]) -> Option<Vec<u16>> {
        use half::slice::HalfFloatSliceExt;
        let mut out = vec![0u16; values.len()];
        match self {
            Precision::F32 => return None,
            Precision::F16 => {
                let halves: &mut [half::f16] = bytemuck::cast_slice_mut(&mut out);
                halves.convert_from_f32_slice(values);
            }
            Precision::BF16 => {
                let halves: &mut [half::bf16] = bytemuck::cast_slice_mut(&mut out);
                halves.convert_from_f32_slice(values);
            }
        }
        Some(out)
    }

    /// The values of 16-bit patterns of this type; `None` for `F32`.
    pub fn decode_16(self, bits: &[u16]) -> Option<Vec<f32>> {
        use half::slice::HalfFloatSliceExt;
        let mut out = vec![0f32; bits.len()];
        match self {
            Precision::F32 => return None,
            Precision::F16 => {
                bytemuck::cast_slice::<u16, half::f16>(bits).convert_to_f32_slice(&mut out)
            }
            Precision::BF16 => {
                bytemuck::cast_slice::<u16, half::bf16>(bits).convert_to_f32_slice(&mut out)
            }
        }
        Some(out)
    }

    /// `v` after a round trip through this type: what storing it loses.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::F16 => half::f16::from_f32(v).to_f32(),
            Precision::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for p in Precision::ALL {
            assert_eq!(Precision::parse(p.name()).ok(), Some(p));
        }
        let err = Precision::parse("fp8").unwrap_err().to_string();
        assert!(err.contains("f32, f16 or bf16"), "{err}");
    }

    #[test]
    fn sixteen_bit_encodings_round_to_nearest_even() {
        // 1 + 2^-11 lies halfway between two f16 values; ties go to the even one (1).
        // 1 + 3·2^-11 ties between 1 + 2^-10 and 1 + 2^-9: even is 1 + 2^-9.
        let values = [
            1.0,
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -2.5,
            65504.0,
        ];
        let f16 = Precision::F16.encode_16(&values).unwrap();
        assert_eq!(f16, vec![0x3c00, 0x3c00, 0x3c02, 0xc100, 0x7bff]);
        let back = Precision::F16.decode_16(&f16).unwrap();
        assert_eq!(back, vec![1.0, 1.0, 1.0 + 2f32.powi(-9), -2.5, 65504.0]);
        // bf16 keeps f32's exponent and 8 bits of significand: 1 + 2^-8 ties to 1.
        let bf16 = Precision::BF16
            .encode_16(&[1.0, 1.0 + 2f32.powi(-8), 3.0e38, -0.15625])
            .unwrap();
        assert_eq!(bf16, vec![0x3f80, 0x3f80, 0x7f62, 0xbe20]);
        assert_eq!(
            Precision::BF16.round(1.0 + 2f32.powi(-7)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(Precision::F32.encode_16(&values), None);
    }
}
