//! Single U-Net forwards against diffusers (tests/fixtures/models/*/forward.safetensors,
//! made by tools/make_model_fixtures.py): relative L2 ≤ 1e-5.

mod common;

use common::{assert_close, fixture_forward};
use diffsteer::backend::cpu::CpuBackend;

fn check_forward(name: &str) {
    let (out, expected) = fixture_forward(name, &CpuBackend::new());
    let err = assert_close(&format!("{name} forward"), &out, &expected, 1e-5);
    eprintln!("{name}: forward relative L2 {err:.2e}");
}

#[test]
fn unet2d_class_conditional_with_attention_matches_diffusers() {
    check_forward("unet2d_class");
}

#[test]
fn unet2d_condition_sd1_style_matches_diffusers() {
    check_forward("unet_cond");
}

#[test]
fn unet2d_condition_linear_projection_sd2_style_matches_diffusers() {
    check_forward("unet_cond_linear");
}
