//! The plain 16-bit reference that `diffsteer selftest` holds the CUDA backend's f16
//! and bf16 kernels to (`RoundingBackend`: the CPU backend with every stored tensor
//! rounded) runs whole U-Nets, and its error against diffusers' f32 output is what
//! storing every tensor in that precision costs: about 2⁻¹¹ (f16) and 2⁻⁸ (bf16)
//! relative, times a small growth through the network.

mod common;

use common::{fixtures, nchw_to_nhwc, nhwc_to_nchw};
use diffsteer::backend::rounding::RoundingBackend;
use diffsteer::backend::Backend;
use diffsteer::model::weights::WeightFile;
use diffsteer::model::{ModelFolder, UNetInputs};
use diffsteer::tensor::Precision;

fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    let diff: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// Relative L2 of a fixture model's forward on `backend` against diffusers' output.
fn forward_error(name: &str, backend: &dyn Backend) -> f64 {
    let dir = fixtures().join("models").join(name);
    let unet = ModelFolder::locate(&dir)
        .and_then(|f| f.load_unet(backend))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    let fx = WeightFile::open(dir.join("forward.safetensors")).expect("forward fixture");
    let (shape, sample) = fx.read_f32("sample").expect("sample");
    let (nhwc_shape, sample) = nchw_to_nhwc(&sample, &shape);
    let (_, timesteps) = fx.read_f32("timestep").expect("timestep");
    let labels: Option<Vec<usize>> = fx.contains("class_labels").then(|| {
        let (_, l) = fx.read_i64("class_labels").expect("labels");
        l.iter().map(|&l| l as usize).collect()
    });
    let encoder = fx.contains("encoder_hidden_states").then(|| {
        let (s, v) = fx.read_f32("encoder_hidden_states").expect("states");
        backend.tensor(&s, v).expect("tensor")
    });
    let (_, expected) = fx.read_f32("output").expect("output");
    let x = backend.tensor(&nhwc_shape, sample).expect("tensor");
    let out = unet
        .forward(
            backend,
            &x,
            &UNetInputs {
                timesteps: &timesteps,
                class_labels: labels.as_deref(),
                encoder_hidden_states: encoder.as_ref(),
            },
        )
        .unwrap_or_else(|e| panic!("forward {name}: {e}"));
    let out_shape = out.shape().to_vec();
    let out = nhwc_to_nchw(&backend.to_host(&out).expect("host"), &out_shape);
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
