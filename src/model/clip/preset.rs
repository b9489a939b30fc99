//! `sd15-shape`'s text encoder: Stable Diffusion 1.5's `CLIPTextModel` (OpenAI
//! CLIP ViT-L/14's text tower: 12 layers of width 768, 12 heads, MLP 3072,
//! quick-GELU, 77 positions, a vocabulary of 49408; 123.1M parameters) with
//! deterministic random weights, for measuring speed without a download. Like the
//! U-Net and VAE presets (`model::preset`, `vae::preset`), the tensor names and
//! shapes are derived from the config, written as BF16 safetensors to a temporary
//! folder, loaded through the normal path ([`TextEncoder::load`] checks every name
//! and shape, and that none is left over) and the folder removed again.

use std::path::Path;

use serde_json::{json, Value};

use super::config::ClipTextConfig;
use super::TextEncoder;
use crate::backend::Backend;
use crate::error::Result;
use crate::json_fields::Fields;
use crate::model::preset::{temp_folder, write_random_specs, Init, Specs, WeightSpec};
use crate::model::weights::WeightFile;

/// CLIP's start-of-text token (`<|startoftext|>`).
pub const BOS: u32 = 49406;
/// CLIP's end-of-text token (`<|endoftext|>`), which SD 1.5's tokenizer also pads with.
pub const EOS: u32 = 49407;

/// The `text_encoder/config.json` of Stable Diffusion 1.5.
pub fn sd15_text_config_json() -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "vocab_size": 49408
    })
}

pub fn sd15_text_config() -> Result<ClipTextConfig> {
    ClipTextConfig::from_fields(&Fields::parse(
        Path::new("<sd15-shape text encoder>"),
        &sd15_text_config_json().to_string(),
    )?)
}

/// Every tensor [`TextEncoder::load`] reads for `config`, in load order, with the
/// `text_model.` prefix of the Hub's checkpoints.
pub fn weight_specs(c: &ClipTextConfig) -> Vec<WeightSpec> {
    let mut s = Specs::default();
    let (d, inner) = (c.hidden_size, c.intermediate_size);
    // nn.Embedding's default: unit variance (uniform in ±√3).
    let unit = Init::Uniform(3f32.sqrt());
    let e = "text_model.embeddings";
    s.push(
        format!("{e}.token_embedding.weight"),
        vec![c.vocab_size, d],
        unit,
    );
    s.push(
        format!("{e}.position_embedding.weight"),
        vec![c.max_position_embeddings, d],
        unit,
    );
    for i in 0..c.num_hidden_layers {
        let p = format!("text_model.encoder.layers.{i}");
        s.norm(&format!("{p}.layer_norm1"), d);
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            s.linear(&format!("{p}.self_attn.{proj}"), d, d, true);
        }
        s.norm(&format!("{p}.layer_norm2"), d);
        s.linear(&format!("{p}.mlp.fc1"), d, inner, true);
        s.linear(&format!("{p}.mlp.fc2"), inner, d, true);
    }
    s.norm("text_model.final_layer_norm", d);
    s.0
}

/// A text encoder for `config` with deterministic random weights drawn from `seed`,
/// loaded through the normal safetensors path (via a temporary file that is removed
/// again).
pub fn random_text_encoder(
    backend: &dyn Backend,
    config: ClipTextConfig,
    seed: u64,
) -> Result<TextEncoder> {
    let dir = temp_folder()?;
    let path = dir.join("model.safetensors");
    let result = write_random_specs(&weight_specs(&config), &path, seed)
        .and_then(|()| WeightFile::open(&path))
        .and_then(|weights| TextEncoder::load(backend, config, &weights));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Token ids of a prompt as SD 1.5's tokenizer pads them: `<|startoftext|>`, the
/// `words`, `<|endoftext|>`, then `<|endoftext|>` up to `length` (the words are cut
/// to fit).
pub fn padded_ids(words: &[u32], length: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(length);
    ids.push(BOS);
    ids.extend(words.iter().take(length.saturating_sub(2)));
    ids.resize(length, EOS);
    ids.truncate(length);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The derived names and shapes are exactly those of transformers' checkpoints.
    #[test]
    fn specs_match_transformers_checkpoints() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for dir in [
            "pipelines/sd1_tiny/text_encoder",
            "pipelines/sd2_tiny/text_encoder",
        ] {
            let dir = root.join(dir);
            let config = ClipTextConfig::load(&dir.join("config.json")).unwrap();
            let file = WeightFile::open(dir.join("model.safetensors")).unwrap();
            let strip = |n: &str| n.trim_start_matches("text_model.").to_string();
            let ours: BTreeSet<String> = weight_specs(&config)
                .iter()
                .map(|w| strip(&w.name))
                .collect();
            let theirs: BTreeSet<String> = file
                .names()
                .into_iter()
                .filter(|n| !n.ends_with("position_ids"))
                .map(|n| strip(&n))
                .collect();
            assert_eq!(ours, theirs, "{}", dir.display());
            for w in weight_specs(&config) {
                let shape = file.shape(&w.name).or_else(|| file.shape(&strip(&w.name)));
                assert_eq!(shape.as_ref(), Some(&w.shape), "{}", w.name);
            }
        }
    }

    #[test]
    fn sd15_text_encoder_has_sd15s_parameter_count() {
        let config = sd15_text_config().unwrap();
        let count: usize = weight_specs(&config)
            .iter()
            .map(|w| w.shape.iter().product::<usize>())
            .sum();
        // transformers: CLIPTextModel of SD 1.5 has 123,060,480 parameters.
        assert_eq!(count, 123_060_480);
    }

    /// A small encoder through the same path: loads, is deterministic, and gives
    /// finite states of the right shape.
    #[test]
    fn random_text_encoder_loads_and_encodes() {
        let cpu = crate::backend::cpu::CpuBackend::new();
        let mut json = sd15_text_config_json();
        json["hidden_size"] = json!(64);
        json["intermediate_size"] = json!(128);
        json["num_attention_heads"] = json!(4);
        json["num_hidden_layers"] = json!(2);
        let config = ClipTextConfig::from_fields(
            &Fields::parse(Path::new("<tiny>"), &json.to_string()).unwrap(),
        )
        .unwrap();
        let rows = [padded_ids(&[], 77), padded_ids(&[320, 8853, 539], 77)];
        assert_eq!(rows[1][..5], [BOS, 320, 8853, 539, EOS]);
        let encode = |seed| {
            let encoder = random_text_encoder(&cpu, config.clone(), seed).unwrap();
            let states = encoder.encode(&cpu, &rows).unwrap();
            assert_eq!(states.shape(), &[2, 77, 64]);
            cpu.to_host(&states).unwrap()
        };
        let a = encode(3);
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(a, encode(3));
        assert_ne!(a, encode(4));
    }
}
