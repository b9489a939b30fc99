//! Single U-Net forwards against diffusers (tests/fixtures/models/*/forward.safetensors,
//! made by tools/make_model_fixtures.py): relative L2 ≤ 1e-5.

mod common;

use common::{assert_close, fixtures, nchw_to_nhwc, nhwc_to_nchw};
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::backend::Backend;
use diffsteer::model::weights::WeightFile;
use diffsteer::model::{ModelFolder, UNetInputs};

fn check_forward(name: &str) {
    let backend = CpuBackend::new();
    let dir = fixtures().join("models").join(name);
    let unet = ModelFolder::locate(&dir)
        .and_then(|f| f.load_unet(&backend))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    let fx = WeightFile::open(dir.join("forward.safetensors")).expect("forward fixture");
    let (shape, sample) = fx.read_f32("sample").expect("sample");
    let (nhwc_shape, sample) = nchw_to_nhwc(&sample, &shape);
    let (_, timesteps) = fx.read_f32("timestep").expect("timestep");
    let labels: Option<Vec<usize>> = fx.contains("class_labels").then(|| {
        fx.read_i64("class_labels")
            .expect("labels")
            .1
            .iter()
            .map(|&l| l as usize)
            .collect()
    });
    let encoder = fx.contains("encoder_hidden_states").then(|| {
        let (s, v) = fx.read_f32("encoder_hidden_states").expect("states");
        backend.tensor(&s, v).expect("tensor")
    });
    let (_, expected) = fx.read_f32("output").expect("output");

    let x = backend.tensor(&nhwc_shape, sample).expect("tensor");
    let out = unet
        .forward(
            &backend,
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
