//! Decoding the floating-point dtypes of safetensors files, shared by every loader
//! (U-Net weights, reward models).

use safetensors::Dtype;

/// The little-endian values of an F32, F16 or BF16 tensor as f32; `None` for any
/// other dtype (the caller names the file and tensor in its error).
pub fn float_values_as_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_float_dtype() {
        assert_eq!(
            float_values_as_f32(&1.5f32.to_le_bytes(), Dtype::F32),
            Some(vec![1.5])
        );
        // 0x3E00 is 1.5 in f16; 0x3FC0 is 1.5 in bf16.
        assert_eq!(
            float_values_as_f32(&[0x00, 0x3E], Dtype::F16),
            Some(vec![1.5])
        );
        assert_eq!(
            float_values_as_f32(&[0xC0, 0x3F], Dtype::BF16),
            Some(vec![1.5])
        );
        assert_eq!(float_values_as_f32(&[0; 8], Dtype::I64), None);
    }
}
