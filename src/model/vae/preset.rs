//! `sd-vae-shape`: Stable Diffusion 1.x/2.x's VAE architecture (`AutoencoderKL`,
//! 128/256/512/512 channels, 83.7M parameters) with deterministic random weights,
//! for measuring speed and memory without a download. Like the U-Net presets
//! (`model::preset`), the tensor names and shapes are derived from the config,
//! written as BF16 safetensors to a temporary folder, loaded through the normal path
//! ([`Vae::load`] checks every name and shape) and the folder removed again.

use std::path::Path;

use serde_json::{json, Value};

use super::config::VaeConfig;
use super::{Vae, VaeParts};
use crate::backend::Backend;
use crate::error::Result;
use crate::json_fields::Fields;
use crate::model::preset::{temp_folder, write_random_specs, Specs, WeightSpec};
use crate::model::weights::WeightFile;

/// The `vae/config.json` of Stable Diffusion 1.5 (SD 2.x's differs only in
/// `sample_size`).
pub fn sd_vae_config_json() -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    })
}

pub fn sd_vae_config() -> Result<VaeConfig> {
    VaeConfig::from_fields(&Fields::parse(
        Path::new("<sd-vae-shape>"),
        &sd_vae_config_json().to_string(),
    )?)
}

fn resnet(s: &mut Specs, p: &str, cin: usize, cout: usize) {
    s.norm(&format!("{p}.norm1"), cin);
    s.conv(&format!("{p}.conv1"), cin, cout, 3);
    s.norm(&format!("{p}.norm2"), cout);
    s.conv(&format!("{p}.conv2"), cout, cout, 3);
    if cin != cout {
        s.conv(&format!("{p}.conv_shortcut"), cin, cout, 1);
    }
}

fn mid(s: &mut Specs, p: &str, c: usize, attention: bool) {
    resnet(s, &format!("{p}.resnets.0"), c, c);
    if attention {
        s.norm(&format!("{p}.attentions.0.group_norm"), c);
        s.attention(&format!("{p}.attentions.0"), c, c, c, true);
    }
    resnet(s, &format!("{p}.resnets.1"), c, c);
}

/// Every tensor [`Vae::load`] reads for `config` (both halves), in load order.
pub fn weight_specs(c: &VaeConfig) -> Vec<WeightSpec> {
    let mut s = Specs::default();
    let (latent, levels) = (c.latent_channels, c.block_out_channels.len());
    let channels = &c.block_out_channels;
    if c.use_post_quant_conv {
        s.conv("post_quant_conv", latent, latent, 1);
    }
    let reversed: Vec<usize> = channels.iter().rev().copied().collect();
    s.conv("decoder.conv_in", latent, reversed[0], 3);
    mid(
        &mut s,
        "decoder.mid_block",
        reversed[0],
        c.mid_block_add_attention,
    );
    let mut prev = reversed[0];
    for (i, &out) in reversed.iter().enumerate() {
        for j in 0..=c.layers_per_block {
            resnet(
                &mut s,
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                if j == 0 { prev } else { out },
                out,
            );
        }
        if i + 1 < levels {
            s.conv(
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                out,
                out,
                3,
            );
        }
        prev = out;
    }
    s.norm("decoder.conv_norm_out", channels[0]);
    s.conv("decoder.conv_out", channels[0], c.out_channels, 3);

    s.conv("encoder.conv_in", c.in_channels, channels[0], 3);
    let mut prev = channels[0];
    for (i, &out) in channels.iter().enumerate() {
        for j in 0..c.layers_per_block {
            resnet(
                &mut s,
                &format!("encoder.down_blocks.{i}.resnets.{j}"),
                if j == 0 { prev } else { out },
                out,
            );
        }
        if i + 1 < levels {
            s.conv(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                out,
                out,
                3,
            );
        }
        prev = out;
    }
    mid(&mut s, "encoder.mid_block", prev, c.mid_block_add_attention);
    s.norm("encoder.conv_norm_out", prev);
    s.conv("encoder.conv_out", prev, 2 * latent, 3);
    if c.use_quant_conv {
        s.conv("quant_conv", 2 * latent, 2 * latent, 1);
    }
    s.0
}

/// A VAE for `config` with deterministic random weights drawn from `seed`, loaded
/// through the normal safetensors path (via a temporary file that is removed again).
pub fn random_vae(
    backend: &dyn Backend,
    config: VaeConfig,
    seed: u64,
    parts: VaeParts,
) -> Result<Vae> {
    let dir = temp_folder()?;
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let result = write_random_specs(&weight_specs(&config), &path, seed)
        .and_then(|()| WeightFile::open(&path))
        .and_then(|weights| Vae::load(backend, config, &weights, parts));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The derived names and shapes are exactly those of diffusers' checkpoints.
    #[test]
    fn specs_match_diffusers_checkpoints() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for dir in [
            "pipelines/sd1_tiny/vae",
            "pipelines/sd2_tiny/vae",
            "vae/4level",
        ] {
            let dir = root.join(dir);
            let config = VaeConfig::load(&dir.join("config.json")).unwrap();
            let file = WeightFile::open(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
            let specs = weight_specs(&config);
            let ours: BTreeSet<String> = specs.iter().map(|w| w.name.clone()).collect();
            let theirs: BTreeSet<String> = file.names().into_iter().collect();
            assert_eq!(ours, theirs, "{}", dir.display());
            for w in &specs {
                assert_eq!(file.shape(&w.name).as_ref(), Some(&w.shape), "{}", w.name);
            }
        }
    }

    #[test]
    fn sd_vae_shape_has_sd_vaes_parameter_count() {
        let config = sd_vae_config().unwrap();
        let count: usize = weight_specs(&config)
            .iter()
            .map(|w| w.shape.iter().product::<usize>())
            .sum();
        // diffusers: AutoencoderKL with SD 1.5's config has 83,653,863 parameters.
        assert_eq!(count, 83_653_863);
        assert_eq!(config.scale_factor(), 8);
    }
}
