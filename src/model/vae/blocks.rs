//! The blocks both halves of diffusers' `AutoencoderKL` are built from: ResNets
//! without a time embedding (group norm + SiLU, eps 1e-6), the mid block (ResNet,
//! single-head spatial attention, ResNet), the encoder's `DownEncoderBlock2D` and the
//! decoder's `UpDecoderBlock2D`.

use crate::backend::{Backend, Conv2dGeometry};
use crate::error::Result;
use crate::model::attention::SpatialSelfAttention;
use crate::model::layers::Conv2d;
use crate::model::resnet::{ResnetBlock, ResnetSpec};
use crate::model::weights::Scope;
use crate::tensor::Tensor;

/// diffusers fixes the VAE's norm epsilon at 1e-6 (`resnet_eps`).
pub const VAE_NORM_EPS: f64 = 1e-6;

pub fn resnet(
    b: &dyn Backend,
    s: &Scope,
    cin: usize,
    cout: usize,
    groups: usize,
) -> Result<ResnetBlock> {
    ResnetBlock::load(
        b,
        s,
        &ResnetSpec {
            in_channels: cin,
            out_channels: cout,
            temb_channels: None,
            groups,
            eps: VAE_NORM_EPS,
            output_scale_factor: 1.0,
        },
    )
}

/// `UNetMidBlock2D` as the VAE builds it: `attention_head_dim` = the channel count,
/// so one head over all channels.
pub struct MidBlock {
    first: ResnetBlock,
    attention: Option<SpatialSelfAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    pub fn load(
        b: &dyn Backend,
        s: &Scope,
        channels: usize,
        groups: usize,
        attention: bool,
    ) -> Result<Self> {
        Ok(MidBlock {
            first: resnet(b, &s.sub("resnets.0"), channels, channels, groups)?,
            attention: if attention {
                Some(SpatialSelfAttention::load(
                    b,
                    &s.sub("attentions.0"),
                    (channels, 1, channels, groups),
                    VAE_NORM_EPS,
                    1.0,
                )?)
            } else {
                None
            },
            second: resnet(b, &s.sub("resnets.1"), channels, channels, groups)?,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(b, x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(b, &h)?;
        }
        self.second.forward(b, &h, None)
    }
}

/// ResNets `resnets.0 ..` mapping `cin` → `cout` (the first takes `cin`).
fn resnets(
    b: &dyn Backend,
    s: &Scope,
    count: usize,
    cin: usize,
    cout: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock>> {
    (0..count)
        .map(|j| {
            resnet(
                b,
                &s.sub(format!("resnets.{j}")),
                if j == 0 { cin } else { cout },
                cout,
                groups,
            )
        })
        .collect()
}

/// `DownEncoderBlock2D`: ResNets, then (except at the last level) diffusers'
/// `Downsample2D` with `padding=0`: zero padding of one row and column at the
/// bottom and right only, then a 3×3 stride-2 convolution.
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    downsample: Option<Conv2d>,
}

impl DownBlock {
    pub fn load(
        b: &dyn Backend,
        s: &Scope,
        (cin, cout): (usize, usize),
        layers: usize,
        groups: usize,
        downsample: bool,
    ) -> Result<Self> {
        let geometry = Conv2dGeometry {
            stride: 2,
            pad_top: 0,
            pad_bottom: 1,
            pad_left: 0,
            pad_right: 1,
        };
        Ok(DownBlock {
            resnets: resnets(b, s, layers, cin, cout, groups)?,
            downsample: if downsample {
                Some(Conv2d::load(
                    b,
                    &s.sub("downsamplers.0.conv"),
                    (cout, cout, 3),
                    geometry,
                    true,
                )?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: Tensor) -> Result<Tensor> {
        let mut h = x;
        for r in &self.resnets {
            h = r.forward(b, &h, None)?;
        }
        match &self.downsample {
            Some(conv) => conv.forward(b, &h),
            None => Ok(h),
        }
    }
}

/// `UpDecoderBlock2D`: ResNets, then (except at the last level) `Upsample2D`:
/// nearest 2× then a 3×3 convolution.
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    pub fn load(
        b: &dyn Backend,
        s: &Scope,
        (cin, cout): (usize, usize),
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Result<Self> {
        Ok(UpBlock {
            resnets: resnets(b, s, layers, cin, cout, groups)?,
            upsample: if upsample {
                Some(Conv2d::load(
                    b,
                    &s.sub("upsamplers.0.conv"),
                    (cout, cout, 3),
                    Conv2dGeometry::symmetric(1, 1),
                    true,
                )?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: Tensor) -> Result<Tensor> {
        let mut h = x;
        for r in &self.resnets {
            h = r.forward(b, &h, None)?;
        }
        match &self.upsample {
            Some(conv) => {
                let (_, hh, ww, _) = h.dims4("VAE upsample")?;
                let up = b.upsample_nearest(&h, 2 * hh, 2 * ww)?;
                drop(h);
                conv.forward(b, &up)
            }
            None => Ok(h),
        }
    }
}
