//! A diffusers `AutoencoderKL` `config.json` (a pipeline's `vae/config.json`), with
//! diffusers' defaults for absent fields.

use std::path::Path;

use serde_json::json;

use crate::error::Result;
use crate::json_fields::Fields;

#[derive(Debug, Clone)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// One entry per level; the image is `2^(levels − 1)` times the latent's size.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder level (decoder levels have one more).
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Latents are `scaling_factor · (z − shift_factor)` of the VAE's own `z`
    /// (SD 1.x/2.x: 0.18215, no shift).
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// diffusers runs this VAE in f32 even when the pipeline is f16 (SD 1.x/2.x's
    /// VAE overflows f16). The engine does not choose precisions per model: run
    /// [`super::Vae`] on an f32 backend when this is set.
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    /// The image size it was trained at; diffusers' tiled decoding uses it as the
    /// tile size.
    pub sample_size: Option<usize>,
}

/// Limits that keep a malformed config from asking for absurd allocations before
/// any weight is checked.
const MAX_LEVELS: usize = 8;
const MAX_CHANNELS: usize = 1 << 14;
const MAX_LAYERS: usize = 64;

impl VaeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_fields(&Fields::load(path)?)
    }

    pub fn from_fields(f: &Fields) -> Result<Self> {
        match f.opt_str("_class_name")? {
            Some("AutoencoderKL") => {}
            Some(other) => {
                return Err(f.error(
                    "_class_name",
                    format!("{other:?} is not supported (supported: AutoencoderKL)"),
                ))
            }
            None => {
                return Err(f.error(
                    "_class_name",
                    "missing: a diffusers VAE config names its class (AutoencoderKL)",
                ))
            }
        }
        f.choice("act_fn", &["silu", "swish"])?;
        f.require_default("norm_type", json!("group"))?;
        let block_out_channels = f.usize_list("block_out_channels", &[64])?;
        let levels = block_out_channels.len();
        if levels == 0 || levels > MAX_LEVELS {
            return Err(f.error(
                "block_out_channels",
                format!("{levels} levels; expected 1..={MAX_LEVELS}"),
            ));
        }
        let down = f.str_list("down_block_types", &["DownEncoderBlock2D"])?;
        let up = f.str_list("up_block_types", &["UpDecoderBlock2D"])?;
        for (key, types, accepted) in [
            ("down_block_types", &down, "DownEncoderBlock2D"),
            ("up_block_types", &up, "UpDecoderBlock2D"),
        ] {
            if types.len() != levels {
                return Err(f.error(
                    key,
                    format!(
                        "has {} entries but block_out_channels has {levels}",
                        types.len()
                    ),
                ));
            }
            if let Some(t) = types.iter().find(|t| *t != accepted) {
                return Err(f.error(
                    key,
                    format!("block type {t:?} is not supported (supported: {accepted})"),
                ));
            }
        }
        let groups = f.usize("norm_num_groups", 32)?;
        for &c in &block_out_channels {
            if c == 0 || c > MAX_CHANNELS {
                return Err(f.error(
                    "block_out_channels",
                    format!("{c} channels is outside 1..={MAX_CHANNELS}"),
                ));
            }
            if groups == 0 || !c.is_multiple_of(groups) {
                return Err(f.error(
                    "norm_num_groups",
                    format!("{c} channels cannot be split into {groups} groups"),
                ));
            }
        }
        let small = |key: &str, default: usize, max: usize| -> Result<usize> {
            let v = f.usize(key, default)?;
            if v == 0 || v > max {
                return Err(f.error(key, format!("{v} is outside 1..={max}")));
            }
            Ok(v)
        };
        // An int, or [h, w] of which diffusers' tiling uses the first.
        let sample_size = match f.get("sample_size").and_then(|v| v.as_array()) {
            Some(items) => items.first().and_then(|v| v.as_u64()).map(|v| v as usize),
            None => f.opt_usize("sample_size")?,
        };
        let scaling_factor = f.f64("scaling_factor", 0.18215)?;
        if !scaling_factor.is_finite() || scaling_factor == 0.0 {
            return Err(f.error(
                "scaling_factor",
                format!("{scaling_factor} must be finite and non-zero"),
            ));
        }
        Ok(VaeConfig {
            in_channels: small("in_channels", 3, MAX_CHANNELS)?,
            out_channels: small("out_channels", 3, MAX_CHANNELS)?,
            layers_per_block: small("layers_per_block", 1, MAX_LAYERS)?,
            latent_channels: small("latent_channels", 4, MAX_CHANNELS)?,
            norm_num_groups: groups,
            scaling_factor,
            shift_factor: f.f64("shift_factor", 0.0)?,
            force_upcast: f.bool("force_upcast", true)?,
            use_quant_conv: f.bool("use_quant_conv", true)?,
            use_post_quant_conv: f.bool("use_post_quant_conv", true)?,
            mid_block_add_attention: f.bool("mid_block_add_attention", true)?,
            sample_size,
            block_out_channels,
        })
    }

    /// How many times larger the image is than the latent (8 for SD's VAE).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
