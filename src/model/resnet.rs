//! diffusers' `ResnetBlock2D` (time-embedding norm "default", SiLU), with a time
//! embedding (U-Nets) or without one (the VAE's blocks, `temb_channels=None`).

use super::layers::{Conv2d, GroupNorm, Linear};
use super::weights::Scope;
use crate::backend::{Backend, Conv2dGeometry, ConvEpilogue};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale: f32,
}

pub struct ResnetSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    /// `None`: no time embedding (the VAE).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock {
    pub fn load(b: &dyn Backend, s: &Scope, spec: &ResnetSpec) -> Result<Self> {
        let (cin, cout) = (spec.in_channels, spec.out_channels);
        let same = Conv2dGeometry::symmetric(1, 1);
        Ok(ResnetBlock {
            norm1: GroupNorm::load(b, &s.sub("norm1"), spec.groups, cin, spec.eps)?,
            conv1: Conv2d::load(b, &s.sub("conv1"), (cin, cout, 3), same, true)?,
            time_emb_proj: spec
                .temb_channels
                .map(|t| Linear::load(b, &s.sub("time_emb_proj"), (t, cout), true))
                .transpose()?,
            norm2: GroupNorm::load(b, &s.sub("norm2"), spec.groups, cout, spec.eps)?,
            conv2: Conv2d::load(b, &s.sub("conv2"), (cout, cout, 3), same, true)?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::load(
                    b,
                    &s.sub("conv_shortcut"),
                    (cin, cout, 1),
                    Conv2dGeometry::symmetric(1, 0),
                    true,
                )?)
            } else {
                None
            },
            output_scale: (1.0 / spec.output_scale_factor) as f32,
        })
    }

    /// `temb_act` is SiLU(time embedding), `[batch, temb_channels]`, shared by all
    /// ResNets of a forward pass; `None` for a block without a time embedding.
    pub fn forward(
        &self,
        b: &dyn Backend,
        x: &Tensor,
        temb_act: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Each intermediate is dropped as soon as the next exists (a VAE's full-size
        // activations are hundreds of megabytes each).
        let normed = self.norm1.forward(b, x, true)?;
        let t = match (&self.time_emb_proj, temb_act) {
            (Some(proj), Some(temb)) => Some(proj.forward(b, temb)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::invalid(
                    "time embedding",
                    "this ResNet block projects a time embedding; none was given",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "time embedding",
                    "this ResNet block has no time embedding projection (a VAE block)",
                ))
            }
        };
        let h = self.conv1.forward_with(
            b,
            &normed,
            ConvEpilogue {
                sample_bias: t.as_ref(),
                residual: None,
            },
        )?;
        drop(normed);
        let normed = self.norm2.forward(b, &h, true)?;
        drop(h);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => Some(conv.forward(b, x)?),
            None => None,
        };
        self.conv2.forward_with(
            b,
            &normed,
            ConvEpilogue {
                sample_bias: None,
                residual: Some((shortcut.as_ref().unwrap_or(x), self.output_scale)),
            },
        )
    }
}
