//! The plain 16-bit reference that `diffsteer selftest` holds the CUDA backend's f16
//! and bf16 kernels to (`RoundingBackend`: the CPU backend with every stored tensor
//! rounded) runs whole U-Nets, and its error against diffusers' f32 output is what
//! storing every tensor in that precision costs: about 2⁻¹¹ (f16) and 2⁻⁸ (bf16)
//! relative, times a small growth through the network.

mod common;

use common::{fixture_forward, rel_l2};
use diffsteer::backend::rounding::RoundingBackend;
use diffsteer::backend::Backend;
use diffsteer::tensor::Precision;

/// Relative L2 of a fixture model's forward on `backend` against diffusers' output.
fn forward_error(name: &str, backend: &dyn Backend) -> f64 {
    let (out, expected) = fixture_forward(name, backend);
    rel_l2(&out, &expected)
}

#[test]
fn sixteen_bit_forwards_lose_what_their_precision_predicts() {
    for name in ["unet2d_class", "unet_cond", "unet_cond_linear"] {
        let f32_err = forward_error(name, &RoundingBackend::new(Precision::F32));
        let f16_err = forward_error(name, &RoundingBackend::new(Precision::F16));
        let bf16_err = forward_error(name, &RoundingBackend::new(Precision::BF16));
        eprintln!(
            "{name}: rel L2 vs diffusers f32 {f32_err:.2e}, f16 {f16_err:.2e}, bf16 {bf16_err:.2e}"
        );
        assert!(f32_err <= 1e-5, "{name}: f32 {f32_err:.2e}");
        assert!(
            (2e-4..=5e-3).contains(&f16_err),
            "{name}: f16 {f16_err:.2e}"
        );
        assert!(
            (2e-3..=4e-2).contains(&bf16_err),
            "{name}: bf16 {bf16_err:.2e}"
        );
        assert!(
            bf16_err > 4.0 * f16_err,
            "{name}: bf16 keeps 3 fewer bits than f16"
        );
    }
}
