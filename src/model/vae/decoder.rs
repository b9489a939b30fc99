//! The decoding half of diffusers' `AutoencoderKL`: `post_quant_conv` (1×1), then
//! the `Decoder`: `conv_in`, the mid block, the up blocks (walking
//! `block_out_channels` backwards, each with `layers_per_block + 1` ResNets and a
//! 2× nearest upsample + 3×3 convolution except the last), group norm + SiLU,
//! `conv_out`.

use super::blocks::{MidBlock, UpBlock, VAE_NORM_EPS};
use super::config::VaeConfig;
use crate::backend::{Backend, Conv2dGeometry};
use crate::error::Result;
use crate::model::layers::{Conv2d, GroupNorm};
use crate::model::weights::Scope;
use crate::tensor::Tensor;

pub struct Decoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// `root` is the weight file's root (`post_quant_conv.*`, `decoder.*`).
    pub fn load(b: &dyn Backend, root: &Scope, c: &VaeConfig) -> Result<Self> {
        let s = root.sub("decoder");
        let (groups, latent) = (c.norm_num_groups, c.latent_channels);
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let same = Conv2dGeometry::symmetric(1, 1);
        let mut up = Vec::with_capacity(reversed.len());
        let mut prev = reversed[0];
        for (i, &out) in reversed.iter().enumerate() {
            up.push(UpBlock::load(
                b,
                &s.sub(format!("up_blocks.{i}")),
                (prev, out),
                c.layers_per_block + 1,
                groups,
                i + 1 < reversed.len(),
            )?);
            prev = out;
        }
        let c0 = c.block_out_channels[0];
        Ok(Decoder {
            post_quant_conv: if c.use_post_quant_conv {
                Some(Conv2d::load(
                    b,
                    &root.sub("post_quant_conv"),
                    (latent, latent, 1),
                    Conv2dGeometry::symmetric(1, 0),
                    true,
                )?)
            } else {
                None
            },
            conv_in: Conv2d::load(b, &s.sub("conv_in"), (latent, reversed[0], 3), same, true)?,
            mid: MidBlock::load(
                b,
                &s.sub("mid_block"),
                reversed[0],
                groups,
                c.mid_block_add_attention,
            )?,
            up,
            norm_out: GroupNorm::load(b, &s.sub("conv_norm_out"), groups, c0, VAE_NORM_EPS)?,
            conv_out: Conv2d::load(b, &s.sub("conv_out"), (c0, c.out_channels, 3), same, true)?,
        })
    }

    /// The image (`[n, h·f, w·f, out_channels]`, about [-1, 1]) of VAE-space `z`
    /// (`[n, h, w, latent_channels]`).
    pub fn forward(&self, b: &dyn Backend, z: &Tensor) -> Result<Tensor> {
        let post;
        let z = match &self.post_quant_conv {
            Some(conv) => {
                post = conv.forward(b, z)?;
                &post
            }
            None => z,
        };
        let mut h = self.conv_in.forward(b, z)?;
        h = self.mid.forward(b, &h)?;
        for block in &self.up {
            h = block.forward(b, h)?;
            // Each level doubles the resolution: the CPU buffer pool's buffers of the
            // level below would mostly sit unused through the peak; free them.
            crate::tensor::pool::release_cached_buffers();
        }
        h = self.norm_out.forward(b, &h, true)?;
        self.conv_out.forward(b, &h)
    }
}
