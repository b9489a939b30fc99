//! The encoding half of diffusers' `AutoencoderKL`: the `Encoder` (`conv_in`, the
//! down blocks with `layers_per_block` ResNets and diffusers' asymmetric-padded
//! stride-2 downsample except at the last level, the mid block, group norm + SiLU,
//! `conv_out` to `2·latent_channels`), then `quant_conv` (1×1). Its output holds the
//! mean and the log-variance of the latent distribution, channels `[mean, logvar]`.

use super::blocks::{DownBlock, MidBlock, VAE_NORM_EPS};
use super::config::VaeConfig;
use crate::backend::{Backend, Conv2dGeometry};
use crate::error::Result;
use crate::model::layers::{Conv2d, GroupNorm};
use crate::model::weights::Scope;
use crate::tensor::Tensor;

pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

impl Encoder {
    /// `root` is the weight file's root (`encoder.*`, `quant_conv.*`).
    pub fn load(b: &dyn Backend, root: &Scope, c: &VaeConfig) -> Result<Self> {
        let s = root.sub("encoder");
        let groups = c.norm_num_groups;
        let channels = &c.block_out_channels;
        let same = Conv2dGeometry::symmetric(1, 1);
        let mut down = Vec::with_capacity(channels.len());
        let mut prev = channels[0];
        for (i, &out) in channels.iter().enumerate() {
            down.push(DownBlock::load(
                b,
                &s.sub(format!("down_blocks.{i}")),
                (prev, out),
                c.layers_per_block,
                groups,
                i + 1 < channels.len(),
            )?);
            prev = out;
        }
        let last = prev;
        let moments = 2 * c.latent_channels;
        Ok(Encoder {
            conv_in: Conv2d::load(
                b,
                &s.sub("conv_in"),
                (c.in_channels, channels[0], 3),
                same,
                true,
            )?,
            down,
            mid: MidBlock::load(
                b,
                &s.sub("mid_block"),
                last,
                groups,
                c.mid_block_add_attention,
            )?,
            norm_out: GroupNorm::load(b, &s.sub("conv_norm_out"), groups, last, VAE_NORM_EPS)?,
            conv_out: Conv2d::load(b, &s.sub("conv_out"), (last, moments, 3), same, true)?,
            quant_conv: if c.use_quant_conv {
                Some(Conv2d::load(
                    b,
                    &root.sub("quant_conv"),
                    (moments, moments, 1),
                    Conv2dGeometry::symmetric(1, 0),
                    true,
                )?)
            } else {
                None
            },
        })
    }

    /// The moments `[n, h/f, w/f, 2·latent_channels]` (mean, then log-variance) of an
    /// NHWC image in [-1, 1].
    pub fn forward(&self, b: &dyn Backend, image: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(b, image)?;
        for block in &self.down {
            h = block.forward(b, h)?;
        }
        h = self.mid.forward(b, &h)?;
        h = self.norm_out.forward(b, &h, true)?;
        let moments = self.conv_out.forward(b, &h)?;
        drop(h);
        match &self.quant_conv {
            Some(conv) => conv.forward(b, &moments),
            None => Ok(moments),
        }
    }
}
