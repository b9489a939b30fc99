//! A diffusers U-Net `config.json` (`UNet2DModel` or `UNet2DConditionModel`) read
//! into one architecture description, resolving diffusers' per-class rules (e.g.
//! `attention_head_dim` meaning head COUNT for condition models) in one place.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::Result;
use crate::json_fields::Fields;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UNetClass {
    /// `UNet2DModel`: pixel-space, optionally class-conditional.
    Unconditioned,
    /// `UNet2DConditionModel`: cross-attention on encoder hidden states (SD 1.x/2.x).
    Conditioned,
}

/// What mixes information across positions in a block, after each ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixer {
    /// None: `DownBlock2D` / `UpBlock2D`.
    None,
    /// Spatial self-attention with group norm and residual (`AttnDownBlock2D`, ...).
    SelfAttention {
        heads: usize,
        head_dim: usize,
        groups: usize,
    },
    /// `Transformer2DModel` with self- and cross-attention (`CrossAttnDownBlock2D`, ...).
    Transformer {
        heads: usize,
        head_dim: usize,
        layers: usize,
        cross_attention_dim: usize,
    },
}

#[derive(Debug, Clone)]
pub struct BlockSpec {
    pub type_name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    /// For up blocks: channels coming from the block below.
    pub prev_output_channels: usize,
    pub resnets: usize,
    pub mixer: Mixer,
    /// Down blocks: a stride-2 convolution at the end; up blocks: 2× upsampling.
    pub resample: bool,
}

#[derive(Debug, Clone)]
pub struct MidSpec {
    pub type_name: String,
    pub channels: usize,
    /// One mixer + ResNet pair per layer after the first ResNet (0 for a plain
    /// `UNetMidBlock2D` in a condition model, as diffusers builds it).
    pub layers: usize,
    pub mixer: Mixer,
    pub output_scale_factor: f64,
}

#[derive(Debug, Clone)]
pub struct UNetConfig {
    pub class: UNetClass,
    pub in_channels: usize,
    pub out_channels: usize,
    pub sample_size: Option<(usize, usize)>,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub block_out_channels: Vec<usize>,
    pub time_embed_dim: usize,
    pub num_class_embeds: Option<usize>,
    pub down_blocks: Vec<BlockSpec>,
    pub mid: Option<MidSpec>,
    pub up_blocks: Vec<BlockSpec>,
    pub downsample_padding: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub use_linear_projection: bool,
    /// The feature size of encoder hidden states (condition models).
    pub cross_attention_dim: Option<usize>,
}

const DOWN_TYPES: &[&str] = &["DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D"];
const UP_TYPES: &[&str] = &["UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D"];

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_fields(&Fields::load(path)?)
    }

    pub fn from_fields(f: &Fields) -> Result<Self> {
        let class = match f.opt_str("_class_name")? {
            Some("UNet2DModel") => UNetClass::Unconditioned,
            Some("UNet2DConditionModel") => UNetClass::Conditioned,
            Some(other) => {
                return Err(f.error(
                    "_class_name",
                    format!("model class {other:?} is not supported (supported: UNet2DModel, UNet2DConditionModel)"),
                ))
            }
            None => {
                return Err(f.error(
                    "_class_name",
                    "missing: a diffusers config names its class (UNet2DModel or UNet2DConditionModel)",
                ))
            }
        };
        let config = match class {
            UNetClass::Unconditioned => parse_unet2d(f),
            UNetClass::Conditioned => parse_unet2d_condition(f),
        }?;
        check_sizes(f, &config)?;
        Ok(config)
    }

    /// Number of ResNets whose outputs are kept as skip connections (one per down
    /// ResNet, one per downsampler, plus conv_in's output).
    pub fn num_skips(&self) -> usize {
        1 + self
            .down_blocks
            .iter()
            .map(|b| b.resnets + usize::from(b.resample))
            .sum::<usize>()
    }
}

/// The largest `sample_size` side accepted (Stable Diffusion XL's latents are 128;
/// pixel-space models 1024 at most): the sampler allocates latents of this size.
pub const MAX_SAMPLE_SIZE: usize = 4096;

fn sample_size(f: &Fields) -> Result<Option<(usize, usize)>> {
    let size = match f.get("sample_size") {
        None => return Ok(None),
        Some(Value::Array(v)) if v.len() == 2 => {
            let h = v[0]
                .as_u64()
                .ok_or_else(|| f.error("sample_size", "expected integers"))?;
            let w = v[1]
                .as_u64()
                .ok_or_else(|| f.error("sample_size", "expected integers"))?;
            (h, w)
        }
        Some(v) => v.as_u64().map(|s| (s, s)).ok_or_else(|| {
            f.error(
                "sample_size",
                format!("expected an integer or [height, width], found {v}"),
            )
        })?,
    };
    let range = 1..=MAX_SAMPLE_SIZE as u64;
    if !range.contains(&size.0) || !range.contains(&size.1) {
        return Err(f.error(
            "sample_size",
            format!(
                "{}×{} is outside 1 to {MAX_SAMPLE_SIZE} per side",
                size.0, size.1
            ),
        ));
    }
    Ok(Some((size.0 as usize, size.1 as usize)))
}

/// What diffusers' modules would refuse when built: group norms whose groups do not
/// divide the channels, a non-positive epsilon.
fn check_sizes(f: &Fields, c: &UNetConfig) -> Result<()> {
    let split = |key: &str, channels: usize, groups: usize| {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(f.error(
                key,
                format!("{channels} channels cannot be split into {groups} groups"),
            ));
        }
        Ok(())
    };
    // Every ResNet's norms see sums of block_out_channels entries.
    for &channels in &c.block_out_channels {
        split("norm_num_groups", channels, c.norm_num_groups)?;
    }
    let blocks = c.down_blocks.iter().chain(&c.up_blocks);
    let mixers = blocks.map(|b| (b.out_channels, b.mixer));
    for (channels, mixer) in mixers.chain(c.mid.iter().map(|m| (m.channels, m.mixer))) {
        if let Mixer::SelfAttention { groups, .. } = mixer {
            split("attn_norm_num_groups", channels, groups)?;
        }
    }
    if !(c.norm_eps.is_finite() && c.norm_eps > 0.0) {
        return Err(f.error(
            "norm_eps",
            format!("must be a finite number > 0, found {}", c.norm_eps),
        ));
    }
    Ok(())
}

fn check_act_fn(f: &Fields) -> Result<()> {
    f.choice("act_fn", &["silu", "swish"]).map(|_| ())
}

fn check_common_lengths(
    f: &Fields,
    channels: &[usize],
    down: &[String],
    up: &[String],
) -> Result<()> {
    if channels.is_empty() {
        return Err(f.error("block_out_channels", "must not be empty"));
    }
    if down.len() != channels.len() {
        return Err(f.error(
            "down_block_types",
            format!(
                "has {} entries but block_out_channels has {}",
                down.len(),
                channels.len()
            ),
        ));
    }
    if up.len() != channels.len() {
        return Err(f.error(
            "up_block_types",
            format!(
                "has {} entries but block_out_channels has {}",
                up.len(),
                channels.len()
            ),
        ));
    }
    for t in down {
        if !DOWN_TYPES.contains(&t.as_str()) {
            return Err(f.error(
                "down_block_types",
                format!(
                    "block type {t:?} is not supported (supported: {})",
                    DOWN_TYPES.join(", ")
                ),
            ));
        }
    }
    for t in up {
        if !UP_TYPES.contains(&t.as_str()) {
            return Err(f.error(
                "up_block_types",
                format!(
                    "block type {t:?} is not supported (supported: {})",
                    UP_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn divides(f: &Fields, key: &str, channels: usize, by: usize, what: &str) -> Result<usize> {
    if by == 0 || !channels.is_multiple_of(by) {
        return Err(f.error(
            key,
            format!("{channels} channels are not divisible by {what} {by}"),
        ));
    }
    Ok(channels / by)
}

/// Which side of the U a block is on, for the per-class callbacks of [`block_specs`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Down,
    Up,
}

/// The down and up block lists diffusers derives from `block_out_channels`: down block
/// `i` maps `channels[i-1] → channels[i]` (ending in a downsampler except the last);
/// up block `i` walks the reversed list, taking the previous up block's output plus
/// skips. What differs between the U-Net classes comes from `resnets(side, i)` and
/// `mixer(side, i, block_type, out_channels)`.
fn block_specs(
    channels: &[usize],
    down_types: &[String],
    up_types: &[String],
    resnets: impl Fn(Side, usize) -> usize,
    mixer: impl Fn(Side, usize, &str, usize) -> Result<Mixer>,
) -> Result<(Vec<BlockSpec>, Vec<BlockSpec>)> {
    let n = channels.len();
    let mut down = Vec::with_capacity(n);
    let mut output = channels[0];
    for (i, t) in down_types.iter().enumerate() {
        let input = output;
        output = channels[i];
        down.push(BlockSpec {
            type_name: t.clone(),
            in_channels: input,
            out_channels: output,
            prev_output_channels: 0,
            resnets: resnets(Side::Down, i),
            mixer: mixer(Side::Down, i, t, output)?,
            resample: i + 1 < n,
        });
    }
    let reversed: Vec<usize> = channels.iter().rev().copied().collect();
    let mut up = Vec::with_capacity(n);
    let mut output = reversed[0];
    for (i, t) in up_types.iter().enumerate() {
        let prev = output;
        output = reversed[i];
        up.push(BlockSpec {
            type_name: t.clone(),
            in_channels: reversed[(i + 1).min(n - 1)],
            out_channels: output,
            prev_output_channels: prev,
            resnets: resnets(Side::Up, i),
            mixer: mixer(Side::Up, i, t, output)?,
            resample: i + 1 < n,
        });
    }
    Ok((down, up))
}

fn parse_unet2d(f: &Fields) -> Result<UNetConfig> {
    check_act_fn(f)?;
    f.choice("time_embedding_type", &["positional"])?;
    f.choice("downsample_type", &["conv"])?;
    f.choice("upsample_type", &["conv"])?;
    f.choice("resnet_time_scale_shift", &["default"])?;
    f.require_default("class_embed_type", Value::Null)?;

    let block_out_channels = f.usize_list("block_out_channels", &[224, 448, 672, 896])?;
    let down_types = f.str_list(
        "down_block_types",
        &[
            "DownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
        ],
    )?;
    let up_types = f.str_list(
        "up_block_types",
        &[
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
        ],
    )?;
    check_common_lengths(f, &block_out_channels, &down_types, &up_types)?;
    for (key, types) in [
        ("down_block_types", &down_types),
        ("up_block_types", &up_types),
    ] {
        if let Some(t) = types.iter().find(|t| t.starts_with("CrossAttn")) {
            return Err(f.error(
                key,
                format!("{t} needs encoder hidden states, which UNet2DModel does not take"),
            ));
        }
    }
    let layers = f.usize("layers_per_block", 2)?;
    let groups = f.usize("norm_num_groups", 32)?;
    // Absent means diffusers' default 8; an explicit null means "one head".
    let head_dim_cfg = if f_has_null(f, "attention_head_dim") {
        None
    } else {
        Some(f.usize("attention_head_dim", 8)?)
    };
    let n = block_out_channels.len();

    let self_attention = |key: &str, channels: usize, groups: usize| -> Result<Mixer> {
        let head_dim = head_dim_cfg.unwrap_or(channels);
        let heads = divides(f, key, channels, head_dim, "attention_head_dim")?;
        Ok(Mixer::SelfAttention {
            heads,
            head_dim,
            groups,
        })
    };

    let (down_blocks, up_blocks) = block_specs(
        &block_out_channels,
        &down_types,
        &up_types,
        |side, _| {
            if side == Side::Down {
                layers
            } else {
                layers + 1
            }
        },
        |_, _, t, out| {
            if t.starts_with("Attn") {
                self_attention("attention_head_dim", out, groups)
            } else {
                Ok(Mixer::None)
            }
        },
    )?;

    let mid_type = match f.get("mid_block_type") {
        None if f_has_null(f, "mid_block_type") => None,
        None => Some("UNetMidBlock2D".to_string()),
        Some(_) => Some(f.choice("mid_block_type", &["UNetMidBlock2D"])?),
    };
    let mid_channels = block_out_channels[n - 1];
    let mid = match mid_type {
        None => None,
        Some(type_name) => {
            let attn_groups = f.opt_usize("attn_norm_num_groups")?.unwrap_or(groups);
            let mixer = if f.bool("add_attention", true)? {
                self_attention("attention_head_dim", mid_channels, attn_groups)?
            } else {
                Mixer::None
            };
            Some(MidSpec {
                type_name,
                channels: mid_channels,
                layers: 1,
                mixer,
                output_scale_factor: f.f64("mid_block_scale_factor", 1.0)?,
            })
        }
    };

    let time_embed_dim = f
        .opt_usize("time_embedding_dim")?
        .unwrap_or(block_out_channels[0] * 4);
    Ok(UNetConfig {
        class: UNetClass::Unconditioned,
        in_channels: f.usize("in_channels", 3)?,
        out_channels: f.usize("out_channels", 3)?,
        sample_size: sample_size(f)?,
        center_input_sample: f.bool("center_input_sample", false)?,
        flip_sin_to_cos: f.bool("flip_sin_to_cos", true)?,
        freq_shift: f.f64("freq_shift", 0.0)?,
        block_out_channels,
        time_embed_dim,
        num_class_embeds: f.opt_usize("num_class_embeds")?,
        down_blocks,
        mid,
        up_blocks,
        downsample_padding: f.usize("downsample_padding", 1)?,
        norm_num_groups: groups,
        norm_eps: f.f64("norm_eps", 1e-5)?,
        conv_in_kernel: 3,
        conv_out_kernel: 3,
        use_linear_projection: false,
        cross_attention_dim: None,
    })
}

/// Whether `key` is present with an explicit JSON null (diffusers distinguishes
/// "absent: use the default" from "null").
fn f_has_null(f: &Fields, key: &str) -> bool {
    f.get(key).is_none() && f.has_key(key)
}

fn parse_unet2d_condition(f: &Fields) -> Result<UNetConfig> {
    check_act_fn(f)?;
    f.choice("time_embedding_type", &["positional"])?;
    f.choice("resnet_time_scale_shift", &["default"])?;
    f.choice("attention_type", &["default"])?;
    for key in [
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "class_embed_type",
        "addition_embed_type",
        "time_embedding_act_fn",
        "timestep_post_act",
        "time_cond_proj_dim",
        "projection_class_embeddings_input_dim",
        "cross_attention_norm",
        "reverse_transformer_layers_per_block",
    ] {
        f.require_default(key, Value::Null)?;
    }
    f.require_default("dual_cross_attention", json!(false))?;
    f.require_default("only_cross_attention", json!(false))?;
    f.require_default("mid_block_only_cross_attention", json!(false))?;
    f.require_default("class_embeddings_concat", json!(false))?;
    f.require_default("resnet_skip_time_act", json!(false))?;
    f.require_default("resnet_out_scale_factor", json!(1.0))?;

    let block_out_channels = f.usize_list("block_out_channels", &[320, 640, 1280, 1280])?;
    let down_types = f.str_list(
        "down_block_types",
        &[
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
    )?;
    let up_types = f.str_list(
        "up_block_types",
        &[
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
    )?;
    check_common_lengths(f, &block_out_channels, &down_types, &up_types)?;
    let n = block_out_channels.len();
    let groups = f.opt_usize("norm_num_groups")?.unwrap_or(32);
    let layers = f.per_block("layers_per_block", n)?.unwrap_or(vec![2; n]);
    // In diffusers' condition model `attention_head_dim` historically holds the
    // number of heads; `num_attention_heads`, when given, takes precedence.
    let head_dims = f.per_block("attention_head_dim", n)?.unwrap_or(vec![8; n]);
    let heads = f
        .per_block("num_attention_heads", n)?
        .unwrap_or_else(|| head_dims.clone());
    let cross_dims = f
        .per_block("cross_attention_dim", n)?
        .unwrap_or(vec![1280; n]);
    if cross_dims.iter().any(|&d| d != cross_dims[0]) {
        return Err(f.error(
            "cross_attention_dim",
            "different cross-attention sizes per block are not supported (one encoder hidden state feeds all blocks)",
        ));
    }
    let transformer_layers = match f.get("transformer_layers_per_block") {
        Some(Value::Array(items)) if items.iter().any(Value::is_array) => {
            return Err(f.error(
                "transformer_layers_per_block",
                "nested per-layer lists (SDXL-style) are not supported",
            ))
        }
        _ => f
            .per_block("transformer_layers_per_block", n)?
            .unwrap_or(vec![1; n]),
    };
    let use_linear_projection = f.bool("use_linear_projection", false)?;

    let mixer_for = |type_name: &str,
                     channels: usize,
                     heads: usize,
                     head_dim_cfg: usize,
                     t_layers: usize|
     -> Result<Mixer> {
        if type_name.starts_with("CrossAttn") {
            let head_dim = divides(
                f,
                "attention_head_dim",
                channels,
                heads,
                "the number of attention heads",
            )?;
            Ok(Mixer::Transformer {
                heads,
                head_dim,
                layers: t_layers,
                cross_attention_dim: cross_dims[0],
            })
        } else if type_name.starts_with("Attn") {
            let heads = divides(
                f,
                "attention_head_dim",
                channels,
                head_dim_cfg,
                "attention_head_dim",
            )?;
            Ok(Mixer::SelfAttention {
                heads,
                head_dim: head_dim_cfg,
                groups,
            })
        } else {
            Ok(Mixer::None)
        }
    };

    // diffusers reverses heads, layers and transformer depth for the up path but
    // indexes `attention_head_dim` forwards; mirror it exactly.
    let (down_blocks, up_blocks) = block_specs(
        &block_out_channels,
        &down_types,
        &up_types,
        |side, i| match side {
            Side::Down => layers[i],
            Side::Up => layers[n - 1 - i] + 1,
        },
        |side, i, t, out| {
            let r = if side == Side::Down { i } else { n - 1 - i };
            mixer_for(t, out, heads[r], head_dims[i], transformer_layers[r])
        },
    )?;

    let mid_channels = block_out_channels[n - 1];
    let mid = match f.get("mid_block_type") {
        None if f_has_null(f, "mid_block_type") => None,
        _ => {
            let type_name = f.choice(
                "mid_block_type",
                &["UNetMidBlock2DCrossAttn", "UNetMidBlock2D"],
            )?;
            let (layers, mixer) = if type_name == "UNetMidBlock2DCrossAttn" {
                (
                    1,
                    mixer_for(
                        "CrossAttn",
                        mid_channels,
                        heads[n - 1],
                        head_dims[n - 1],
                        transformer_layers[n - 1],
                    )?,
                )
            } else {
                // diffusers builds a plain mid block of a condition model with no layers.
                (0, Mixer::None)
            };
            Some(MidSpec {
                type_name,
                channels: mid_channels,
                layers,
                mixer,
                output_scale_factor: f.f64("mid_block_scale_factor", 1.0)?,
            })
        }
    };

    let conv_in_kernel = f.usize("conv_in_kernel", 3)?;
    let conv_out_kernel = f.usize("conv_out_kernel", 3)?;
    for (key, k) in [
        ("conv_in_kernel", conv_in_kernel),
        ("conv_out_kernel", conv_out_kernel),
    ] {
        if k % 2 == 0 {
            return Err(f.error(key, format!("kernel size {k} must be odd")));
        }
    }
    let time_embed_dim = f
        .opt_usize("time_embedding_dim")?
        .unwrap_or(block_out_channels[0] * 4);
    Ok(UNetConfig {
        class: UNetClass::Conditioned,
        in_channels: f.usize("in_channels", 4)?,
        out_channels: f.usize("out_channels", 4)?,
        sample_size: sample_size(f)?,
        center_input_sample: f.bool("center_input_sample", false)?,
        flip_sin_to_cos: f.bool("flip_sin_to_cos", true)?,
        freq_shift: f.f64("freq_shift", 0.0)?,
        block_out_channels,
        time_embed_dim,
        num_class_embeds: f.opt_usize("num_class_embeds")?,
        down_blocks,
        mid,
        up_blocks,
        downsample_padding: f.usize("downsample_padding", 1)?,
        norm_num_groups: groups,
        norm_eps: f.f64("norm_eps", 1e-5)?,
        conv_in_kernel,
        conv_out_kernel,
        use_linear_projection,
        cross_attention_dim: Some(cross_dims[0]),
    })
}
