//! Every way a model folder or a sampling run can be wrong gives an `Err` whose
//! message names the file, tensor or field and what was expected — never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::fixtures;
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::guidance::Guidance;
use diffsteer::model::weights::WeightFile;
use diffsteer::model::ModelFolder;
use diffsteer::sampler::{Condition, PhiloxNoise, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const MODEL: &str = "unet2d_class";

/// A copy of the class-conditional fixture model in a temporary folder.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(
            fixtures().join("models").join(MODEL).join(file),
            dir.join(file),
        )
        .expect("copy");
    }
    (tmp, dir)
}

fn load_err(dir: &Path) -> String {
    let backend = CpuBackend::new();
    match ModelFolder::locate(dir).and_then(|f| f.load_unet(&backend)) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error message {message:?} should mention {part:?}"
        );
    }
}

/// Rewrites the weights with `edit` applied to the (name → (dtype, shape, bytes)) map.
fn rewrite_weights(
    dir: &Path,
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let file = WeightFile::open(&path).expect("open");
    let mut tensors = HashMap::new();
    for name in file.names() {
        let (shape, values) = file.read_f32(&name).expect("read");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(name, (Dtype::F32, shape, bytes));
    }
    drop(file);
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).expect("view"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(&path, bytes).expect("write");
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    config[key] = value;
    std::fs::write(&path, config.to_string()).expect("write");
}

#[test]
fn missing_folder_is_named() {
    let message = load_err(Path::new("/nonexistent/model-folder"));
    assert_mentions(&message, &["/nonexistent/model-folder", "does not exist"]);
}

#[test]
fn missing_weights_file_is_named() {
    let (_tmp, dir) = model_copy();
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).expect("rm");
    assert_mentions(
        &load_err(&dir),
        &["diffusion_pytorch_model.safetensors", "missing"],
    );
}

#[test]
fn missing_config_is_named() {
    let (_tmp, dir) = model_copy();
    std::fs::remove_file(dir.join("config.json")).expect("rm");
    assert_mentions(&load_err(&dir), &["config.json", "missing"]);
}

#[test]
fn truncated_safetensors_is_reported() {
    let (_tmp, dir) = model_copy();
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    assert_mentions(
        &load_err(&dir),
        &["diffusion_pytorch_model.safetensors", "truncated"],
    );
}

#[test]
fn garbage_safetensors_is_reported() {
    let (_tmp, dir) = model_copy();
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors"),
        b"this is not a safetensors file at all",
    )
    .expect("write");
    assert_mentions(
        &load_err(&dir),
        &[
            "diffusion_pytorch_model.safetensors",
            "not a valid safetensors file",
        ],
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = model_copy();
    rewrite_weights(&dir, |t| {
        t.remove("down_blocks.1.attentions.0.to_k.weight");
    });
    assert_mentions(
        &load_err(&dir),
        &["down_blocks.1.attentions.0.to_k.weight", "missing"],
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let (_tmp, dir) = model_copy();
    rewrite_weights(&dir, |t| {
        t.insert(
            "extra_head.weight".into(),
            (Dtype::F32, vec![2], vec![0; 8]),
        );
    });
    assert_mentions(&load_err(&dir), &["extra_head.weight", "unexpected"]);
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let (_tmp, dir) = model_copy();
    rewrite_weights(&dir, |t| {
        let entry = t.get_mut("conv_in.bias").expect("conv_in.bias");
        entry.1 = vec![entry.1[0] / 2, 2];
    });
    assert_mentions(
        &load_err(&dir),
        &["conv_in.bias", "has shape [8, 2]", "expected [16]"],
    );
}

#[test]
fn wrong_dtype_is_named() {
    let (_tmp, dir) = model_copy();
    rewrite_weights(&dir, |t| {
        let entry = t.get_mut("conv_in.bias").expect("conv_in.bias");
        let n = entry.1[0];
        *entry = (Dtype::I64, vec![n], vec![0; 8 * n]);
    });
    assert_mentions(
        &load_err(&dir),
        &["conv_in.bias", "I64", "F32, F16 or BF16"],
    );
}

#[test]
fn unsupported_block_type_is_named() {
    let (_tmp, dir) = model_copy();
    edit_config(
        &dir,
        "down_block_types",
        serde_json::json!(["DownBlock2D", "SkipDownBlock2D", "DownBlock2D"]),
    );
    assert_mentions(
        &load_err(&dir),
        &[
            "config.json",
            "down_block_types",
            "SkipDownBlock2D",
            "AttnDownBlock2D",
        ],
    );
}

#[test]
fn unsupported_config_value_is_named() {
    let (_tmp, dir) = model_copy();
    edit_config(
        &dir,
        "resnet_time_scale_shift",
        serde_json::json!("scale_shift"),
    );
    assert_mentions(
        &load_err(&dir),
        &[
            "config.json",
            "resnet_time_scale_shift",
            "scale_shift",
            "default",
        ],
    );
}

#[test]
fn wrong_config_type_is_named() {
    let (_tmp, dir) = model_copy();
    edit_config(&dir, "layers_per_block", serde_json::json!("two"));
    assert_mentions(
        &load_err(&dir),
        &["config.json", "layers_per_block", "integer"],
    );
}

#[test]
fn nan_during_sampling_is_an_error_naming_the_step() {
    let (_tmp, dir) = model_copy();
    rewrite_weights(&dir, |t| {
        let entry = t.get_mut("conv_out.bias").expect("conv_out.bias");
        entry.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let backend = CpuBackend::new();
    let unet = ModelFolder::locate(&dir)
        .and_then(|f| f.load_unet(&backend))
        .expect("loads");
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &SchedulerConfig::empty(),
        5,
        &ScheduleOptions::default(),
    )
    .expect("scheduler");
    let sampler = Sampler::new(&backend, &unet, scheduler.as_ref()).expect("sampler");
    let spec = SampleSpec {
        seed: 1,
        condition: Condition::Class(3),
        guidance: Guidance::default(),
    };
    let err = sampler
        .sample(&[spec], &PhiloxNoise, &mut |_| {})
        .expect_err("NaN must be an error");
    assert_mentions(&err.to_string(), &["NaN", "sample 0", "step 0"]);
}

#[test]
fn class_out_of_range_is_an_error() {
    let backend = CpuBackend::new();
    let unet = ModelFolder::locate(fixtures().join("models").join(MODEL))
        .and_then(|f| f.load_unet(&backend))
        .expect("loads");
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &SchedulerConfig::empty(),
        2,
        &ScheduleOptions::default(),
    )
    .expect("scheduler");
    let sampler = Sampler::new(&backend, &unet, scheduler.as_ref()).expect("sampler");
    for label in [10, 11, 99] {
        let spec = SampleSpec {
            seed: 1,
            condition: Condition::Class(label),
            guidance: Guidance::default(),
        };
        let err = sampler
            .sample(&[spec], &PhiloxNoise, &mut |_| {})
            .expect_err("out of range");
        assert_mentions(&err.to_string(), &["class", &label.to_string()]);
    }
}
