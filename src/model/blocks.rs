//! The down, mid and up blocks shared by both U-Net classes: ResNets, each
//! optionally followed by a mixer (spatial attention or a transformer), plus a
//! resampling convolution.

use super::attention::SpatialSelfAttention;
use super::config::{BlockSpec, MidSpec, Mixer};
use super::layers::Conv2d;
use super::resnet::{ResnetBlock, ResnetSpec};
use super::transformer::{Transformer2D, TransformerSpec};
use super::weights::Scope;
use crate::backend::{Backend, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Settings every block of one model shares.
pub struct BlockContext {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub use_linear_projection: bool,
    pub downsample_padding: usize,
}

/// Inputs every block of one forward pass shares.
pub struct ForwardContext<'a> {
    pub backend: &'a dyn Backend,
    pub temb_act: &'a Tensor,
    pub encoder_hidden_states: Option<&'a Tensor>,
}

enum MixerLayer {
    SelfAttention(Box<SpatialSelfAttention>),
    Transformer(Box<Transformer2D>),
}

impl MixerLayer {
    fn load(
        b: &dyn Backend,
        s: &Scope,
        mixer: Mixer,
        channels: usize,
        bc: &BlockContext,
        scale: f64,
    ) -> Result<Option<Self>> {
        Ok(match mixer {
            Mixer::None => None,
            Mixer::SelfAttention {
                heads,
                head_dim,
                groups,
            } => Some(MixerLayer::SelfAttention(Box::new(
                SpatialSelfAttention::load(
                    b,
                    s,
                    (channels, heads, head_dim, groups),
                    bc.eps,
                    scale,
                )?,
            ))),
            Mixer::Transformer {
                heads,
                head_dim,
                layers,
                cross_attention_dim,
            } => Some(MixerLayer::Transformer(Box::new(Transformer2D::load(
                b,
                s,
                &TransformerSpec {
                    channels,
                    heads,
                    head_dim,
                    layers,
                    cross_attention_dim,
                    groups: bc.groups,
                    use_linear_projection: bc.use_linear_projection,
                },
            )?))),
        })
    }

    fn forward(&self, cx: &ForwardContext, x: &Tensor) -> Result<Tensor> {
        match self {
            MixerLayer::SelfAttention(a) => a.forward(cx.backend, x),
            MixerLayer::Transformer(t) => {
                let context = cx.encoder_hidden_states.ok_or_else(|| {
                    Error::invalid(
                        "encoder_hidden_states",
                        "this model cross-attends to encoder hidden states; none were given",
                    )
                })?;
                t.forward(cx.backend, x, context)
            }
        }
    }
}

/// One ResNet and the mixer after it.
struct Layer {
    resnet: ResnetBlock,
    mixer: Option<MixerLayer>,
}

impl Layer {
    /// ResNet `j` of a down or up block (`resnets.{j}`, taking `in_channels`) and its
    /// mixer (`attentions.{j}`).
    fn load(
        b: &dyn Backend,
        s: &Scope,
        j: usize,
        in_channels: usize,
        spec: &BlockSpec,
        bc: &BlockContext,
    ) -> Result<Self> {
        Ok(Layer {
            resnet: ResnetBlock::load(
                b,
                &s.sub(format!("resnets.{j}")),
                &resnet_spec(bc, in_channels, spec.out_channels, 1.0),
            )?,
            mixer: MixerLayer::load(
                b,
                &s.sub(format!("attentions.{j}")),
                spec.mixer,
                spec.out_channels,
                bc,
                1.0,
            )?,
        })
    }

    fn forward(&self, cx: &ForwardContext, x: &Tensor) -> Result<Tensor> {
        let h = self.resnet.forward(cx.backend, x, Some(cx.temb_act))?;
        match &self.mixer {
            Some(m) => m.forward(cx, &h),
            None => Ok(h),
        }
    }
}

fn resnet_spec(
    bc: &BlockContext,
    in_channels: usize,
    out_channels: usize,
    output_scale_factor: f64,
) -> ResnetSpec {
    ResnetSpec {
        in_channels,
        out_channels,
        temb_channels: Some(bc.temb_channels),
        groups: bc.groups,
        eps: bc.eps,
        output_scale_factor,
    }
}

pub struct DownBlock {
    layers: Vec<Layer>,
    downsample: Option<Conv2d>,
}

impl DownBlock {
    pub fn load(b: &dyn Backend, s: &Scope, spec: &BlockSpec, bc: &BlockContext) -> Result<Self> {
        let mut layers = Vec::new();
        for j in 0..spec.resnets {
            let cin = if j == 0 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            layers.push(Layer::load(b, s, j, cin, spec, bc)?);
        }
        let downsample = if spec.resample {
            // diffusers' Downsample2D with padding 0 pads only bottom/right by one.
            let geometry = if bc.downsample_padding == 0 {
                Conv2dGeometry {
                    stride: 2,
                    pad_top: 0,
                    pad_bottom: 1,
                    pad_left: 0,
                    pad_right: 1,
                }
            } else {
                Conv2dGeometry::symmetric(2, bc.downsample_padding)
            };
            let c = spec.out_channels;
            Some(Conv2d::load(
                b,
                &s.sub("downsamplers.0.conv"),
                (c, c, 3),
                geometry,
                true,
            )?)
        } else {
            None
        };
        Ok(DownBlock { layers, downsample })
    }

    /// Runs the block on the last skip tensor, pushing each output as a new skip.
    pub fn forward(&self, cx: &ForwardContext, skips: &mut Vec<Tensor>) -> Result<()> {
        for layer in &self.layers {
            let h = layer.forward(cx, last(skips)?)?;
            skips.push(h);
        }
        if let Some(conv) = &self.downsample {
            let h = conv.forward(cx.backend, last(skips)?)?;
            skips.push(h);
        }
        Ok(())
    }
}

fn last(skips: &[Tensor]) -> Result<&Tensor> {
    skips.last().ok_or_else(|| {
        Error::shape(
            "U-Net",
            "skip connection stack is empty (config and graph disagree)",
        )
    })
}

pub struct MidBlock {
    first: ResnetBlock,
    layers: Vec<Layer>,
}

impl MidBlock {
    pub fn load(b: &dyn Backend, s: &Scope, spec: &MidSpec, bc: &BlockContext) -> Result<Self> {
        let c = spec.channels;
        let rs = resnet_spec(bc, c, c, spec.output_scale_factor);
        let first = ResnetBlock::load(b, &s.sub("resnets.0"), &rs)?;
        let mut layers = Vec::new();
        for j in 0..spec.layers {
            let mixer = MixerLayer::load(
                b,
                &s.sub(format!("attentions.{j}")),
                spec.mixer,
                c,
                bc,
                spec.output_scale_factor,
            )?;
            layers.push(Layer {
                resnet: ResnetBlock::load(b, &s.sub(format!("resnets.{}", j + 1)), &rs)?,
                mixer,
            });
        }
        Ok(MidBlock { first, layers })
    }

    pub fn forward(&self, cx: &ForwardContext, x: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(cx.backend, x, Some(cx.temb_act))?;
        // In the mid block the mixer comes BEFORE each further ResNet.
        for layer in &self.layers {
            if let Some(m) = &layer.mixer {
                h = m.forward(cx, &h)?;
            }
            h = layer.resnet.forward(cx.backend, &h, Some(cx.temb_act))?;
        }
        Ok(h)
    }
}

pub struct UpBlock {
    layers: Vec<Layer>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    pub fn load(b: &dyn Backend, s: &Scope, spec: &BlockSpec, bc: &BlockContext) -> Result<Self> {
        let mut layers = Vec::new();
        for j in 0..spec.resnets {
            let skip = if j + 1 == spec.resnets {
                spec.in_channels
            } else {
                spec.out_channels
            };
            let cin = if j == 0 {
                spec.prev_output_channels
            } else {
                spec.out_channels
            };
            layers.push(Layer::load(b, s, j, cin + skip, spec, bc)?);
        }
        let upsample = if spec.resample {
            let c = spec.out_channels;
            Some(Conv2d::load(
                b,
                &s.sub("upsamplers.0.conv"),
                (c, c, 3),
                Conv2dGeometry::symmetric(1, 1),
                true,
            )?)
        } else {
            None
        };
        Ok(UpBlock { layers, upsample })
    }

    /// Consumes one skip tensor per ResNet; upsamples to the spatial size of the
    /// next skip (2× whenever the input size is divisible, as diffusers does).
    pub fn forward(
        &self,
        cx: &ForwardContext,
        mut h: Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let b = cx.backend;
        for layer in &self.layers {
            let skip = skips.pop().ok_or_else(|| {
                Error::shape(
                    "U-Net",
                    "ran out of skip connections (config and graph disagree)",
                )
            })?;
            let joined = b.concat_channels(&h, &skip)?;
            h = layer.forward(cx, &joined)?;
        }
        if let Some(conv) = &self.upsample {
            let (_, out_h, out_w, _) = last(skips)?.dims4("upsample target")?;
            let up = b.upsample_nearest(&h, out_h, out_w)?;
            h = conv.forward(b, &up)?;
        }
        Ok(h)
    }
}
