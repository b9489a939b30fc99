//! The U-Net graph shared by `UNet2DModel` and `UNet2DConditionModel`: time (and
//! class) embedding, conv_in, down blocks pushing skip connections, mid block, up
//! blocks consuming them, group norm + SiLU, conv_out.

use super::blocks::{BlockContext, DownBlock, ForwardContext, MidBlock, UpBlock};
use super::config::{UNetClass, UNetConfig};
use super::embeddings::{ClassEmbedding, TimestepEmbedding};
use super::layers::{Conv2d, GroupNorm};
use super::weights::{Scope, WeightFile};
use crate::backend::embedding::sinusoidal_frequencies;
use crate::backend::{Backend, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub struct UNet {
    config: UNetConfig,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<ClassEmbedding>,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// One forward call's conditioning. Every field is per sample.
pub struct UNetInputs<'a> {
    /// The model's timestep for each sample (diffusers passes a tensor of shape [batch]).
    pub timesteps: &'a [f32],
    /// Class labels, for models with class embeddings.
    pub class_labels: Option<&'a [usize]>,
    /// `[batch, tokens, cross_attention_dim]`, for condition models.
    pub encoder_hidden_states: Option<&'a Tensor>,
}

impl UNet {
    pub fn load(b: &dyn Backend, config: UNetConfig, weights: &WeightFile) -> Result<Self> {
        let root = Scope::root(weights);
        let c0 = config.block_out_channels[0];
        let bc = BlockContext {
            temb_channels: config.time_embed_dim,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            use_linear_projection: config.use_linear_projection,
            downsample_padding: config.downsample_padding,
        };
        let k_in = config.conv_in_kernel;
        let k_out = config.conv_out_kernel;
        let unet = UNet {
            time_embedding: TimestepEmbedding::load(
                b,
                &root.sub("time_embedding"),
                c0,
                config.time_embed_dim,
            )?,
            class_embedding: config
                .num_class_embeds
                .map(|n| {
                    ClassEmbedding::load(&root.sub("class_embedding"), n, config.time_embed_dim)
                })
                .transpose()?,
            conv_in: Conv2d::load(
                b,
                &root.sub("conv_in"),
                (config.in_channels, c0, k_in),
                Conv2dGeometry::symmetric(1, (k_in - 1) / 2),
                true,
            )?,
            down_blocks: config
                .down_blocks
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    DownBlock::load(b, &root.sub(format!("down_blocks.{i}")), spec, &bc)
                })
                .collect::<Result<_>>()?,
            mid_block: config
                .mid
                .as_ref()
                .map(|spec| MidBlock::load(b, &root.sub("mid_block"), spec, &bc))
                .transpose()?,
            up_blocks: config
                .up_blocks
                .iter()
                .enumerate()
                .map(|(i, spec)| UpBlock::load(b, &root.sub(format!("up_blocks.{i}")), spec, &bc))
                .collect::<Result<_>>()?,
            conv_norm_out: GroupNorm::load(
                b,
                &root.sub("conv_norm_out"),
                config.norm_num_groups,
                c0,
                config.norm_eps,
            )?,
            conv_out: Conv2d::load(
                b,
                &root.sub("conv_out"),
                (c0, config.out_channels, k_out),
                Conv2dGeometry::symmetric(1, (k_out - 1) / 2),
                true,
            )?,
            config,
        };
        weights.ensure_all_used()?;
        Ok(unet)
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Number of class labels the model embeds (including any null class).
    pub fn num_classes(&self) -> Option<usize> {
        self.class_embedding.as_ref().map(ClassEmbedding::classes)
    }

    fn check_inputs(&self, sample: &Tensor, inputs: &UNetInputs) -> Result<()> {
        let (n, h, w, c) = sample.dims4("U-Net input")?;
        if c != self.config.in_channels {
            return Err(Error::invalid(
                "sample",
                format!(
                    "has {c} channels, the model expects {}",
                    self.config.in_channels
                ),
            ));
        }
        if h == 0 || w == 0 || n == 0 {
            return Err(Error::invalid(
                "sample",
                format!("empty sample shape {:?}", sample.shape()),
            ));
        }
        if inputs.timesteps.len() != n {
            return Err(Error::invalid(
                "timesteps",
                format!("{} timesteps for a batch of {n}", inputs.timesteps.len()),
            ));
        }
        match (&self.class_embedding, inputs.class_labels) {
            (Some(_), None) => {
                return Err(Error::invalid(
                    "class_labels",
                    "this model is class-conditional; class labels are required",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "class_labels",
                    "this model has no class embedding; do not pass class labels",
                ))
            }
            (Some(_), Some(labels)) if labels.len() != n => {
                return Err(Error::invalid(
                    "class_labels",
                    format!("{} labels for a batch of {n}", labels.len()),
                ))
            }
            _ => {}
        }
        match (self.config.class, inputs.encoder_hidden_states) {
            (UNetClass::Conditioned, None) => {
                return Err(Error::invalid(
                    "encoder_hidden_states",
                    "a UNet2DConditionModel needs encoder hidden states",
                ))
            }
            (UNetClass::Unconditioned, Some(_)) => {
                return Err(Error::invalid(
                    "encoder_hidden_states",
                    "a UNet2DModel takes no encoder hidden states",
                ))
            }
            (UNetClass::Conditioned, Some(e)) => {
                let dim = self.config.cross_attention_dim.unwrap_or(0);
                match e.shape()[..] {
                    [en, tokens, d] if en == n && d == dim && tokens > 0 => {}
                    _ => {
                        return Err(Error::invalid(
                            "encoder_hidden_states",
                            format!("shape {:?}, expected [{n}, tokens, {dim}]", e.shape()),
                        ))
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The model output for an NHWC `sample` batch.
    pub fn forward(&self, b: &dyn Backend, sample: &Tensor, inputs: &UNetInputs) -> Result<Tensor> {
        self.check_inputs(sample, inputs)?;
        let n = inputs.timesteps.len();
        let c0 = self.config.block_out_channels[0];

        let frequencies = sinusoidal_frequencies(c0, self.config.freq_shift);
        let t_emb = b.timestep_embedding(
            inputs.timesteps,
            &frequencies,
            c0,
            self.config.flip_sin_to_cos,
        )?;
        let mut emb = self.time_embedding.forward(b, &t_emb)?;
        if let (Some(table), Some(labels)) = (&self.class_embedding, inputs.class_labels) {
            let rows = b.tensor(&[n, self.config.time_embed_dim], table.rows(labels)?)?;
            b.add_assign(&mut emb, &rows, 1.0)?;
        }
        // Every ResNet applies SiLU to the embedding before projecting it.
        b.silu_assign(&mut emb)?;
        let cx = ForwardContext {
            backend: b,
            temb_act: &emb,
            encoder_hidden_states: inputs.encoder_hidden_states,
        };

        let centered;
        let input = if self.config.center_input_sample {
            let values = b
                .to_host(sample)?
                .into_iter()
                .map(|v| 2.0 * v - 1.0)
                .collect();
            centered = b.tensor(sample.shape(), values)?;
            &centered
        } else {
            sample
        };

        let mut skips = Vec::with_capacity(self.config.num_skips());
        skips.push(self.conv_in.forward(b, input)?);
        for block in &self.down_blocks {
            block.forward(&cx, &mut skips)?;
        }
        let deepest = skips
            .last()
            .ok_or_else(|| Error::shape("U-Net", "no skip connections"))?;
        let mut h = match &self.mid_block {
            Some(mid) => mid.forward(&cx, deepest)?,
            None => b.tensor(deepest.shape(), b.to_host(deepest)?)?,
        };
        for block in &self.up_blocks {
            h = block.forward(&cx, h, &mut skips)?;
        }
        let h = self.conv_norm_out.forward(b, &h, true)?;
        self.conv_out.forward(b, &h)
    }
}
