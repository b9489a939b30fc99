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
        Dtype::F16 => {
            use half::slice::HalfFloatSliceExt;
            // The slice conversion runs eight values per F16C instruction; it needs
            // 2-byte alignment, which a memory-mapped file's tensors usually have.
            match bytemuck::try_cast_slice::<u8, half::f16>(bytes) {
                Ok(halves) if cfg!(target_endian = "little") => {
                    let mut out = vec![0f32; halves.len()];
                    halves.convert_to_f32_slice(&mut out);
                    out
                }
                _ => bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            }
        }
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
    fn f16_decodes_the_same_at_any_alignment() {
        let values: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let mut bytes = vec![0u8];
        for v in &values {
            bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
        }
        bytes.push(0);
        let want: Vec<f32> = values
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect();
        // One of the two windows starts on an odd address, the other on an even one.
        let odd = float_values_as_f32(&bytes[1..bytes.len() - 1], Dtype::F16);
        let mut shifted = bytes[1..].to_vec();
        shifted.pop();
        let even = float_values_as_f32(&shifted, Dtype::F16);
        assert_eq!(odd.as_deref(), Some(&want[..]));
        assert_eq!(even.as_deref(), Some(&want[..]));
    }

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
