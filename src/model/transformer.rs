//! diffusers' `Transformer2DModel` over continuous inputs, as used by Stable
//! Diffusion 1.x/2.x: group norm, input projection (1×1 conv or linear — the same
//! thing on NHWC data), `BasicTransformerBlock`s (self-attention, cross-attention,
//! GEGLU feed-forward, each pre-LayerNorm with a residual), output projection, residual.

use super::attention::{Attention, AttentionSpec};
use super::layers::{GroupNorm, LayerNorm, Linear};
use super::weights::Scope;
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// diffusers fixes these inside `Transformer2DModel` / `BasicTransformerBlock`.
const TRANSFORMER_GROUP_NORM_EPS: f64 = 1e-6;
const LAYER_NORM_EPS: f64 = 1e-5;
const FEED_FORWARD_MULT: usize = 4;

pub struct TransformerSpec {
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub cross_attention_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn load(b: &dyn Backend, s: &Scope, spec: &TransformerSpec) -> Result<Self> {
        let dim = spec.heads * spec.head_dim;
        let ff_inner = dim * FEED_FORWARD_MULT;
        let attn = |context_dim| AttentionSpec {
            query_dim: dim,
            context_dim,
            heads: spec.heads,
            head_dim: spec.head_dim,
            qkv_bias: false,
        };
        Ok(TransformerBlock {
            norm1: LayerNorm::load(b, &s.sub("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: Attention::load(b, &s.sub("attn1"), &attn(dim))?,
            norm2: LayerNorm::load(b, &s.sub("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: Attention::load(b, &s.sub("attn2"), &attn(spec.cross_attention_dim))?,
            norm3: LayerNorm::load(b, &s.sub("norm3"), dim, LAYER_NORM_EPS)?,
            ff_in: Linear::load(b, &s.sub("ff.net.0.proj"), (dim, 2 * ff_inner), true)?,
            ff_out: Linear::load(b, &s.sub("ff.net.2"), (ff_inner, dim), true)?,
        })
    }

    fn forward(&self, b: &dyn Backend, x: &mut Tensor, context: &Tensor) -> Result<()> {
        let h = self.norm1.forward(b, x)?;
        b.add_assign(x, &self.attn1.forward(b, &h, None)?, 1.0)?;
        let h = self.norm2.forward(b, x)?;
        b.add_assign(x, &self.attn2.forward(b, &h, Some(context))?, 1.0)?;
        let h = self.norm3.forward(b, x)?;
        let h = b.geglu(&self.ff_in.forward(b, &h)?)?;
        b.add_assign(x, &self.ff_out.forward(b, &h)?, 1.0)
    }
}

pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl Transformer2D {
    pub fn load(b: &dyn Backend, s: &Scope, spec: &TransformerSpec) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        let c = spec.channels;
        let projection = |name: &str, dims| {
            if spec.use_linear_projection {
                Linear::load(b, &s.sub(name), dims, true)
            } else {
                Linear::load_conv1x1(b, &s.sub(name), dims, true)
            }
        };
        Ok(Transformer2D {
            norm: GroupNorm::load(
                b,
                &s.sub("norm"),
                spec.groups,
                c,
                TRANSFORMER_GROUP_NORM_EPS,
            )?,
            proj_in: projection("proj_in", (c, inner))?,
            blocks: (0..spec.layers)
                .map(|i| TransformerBlock::load(b, &s.sub(format!("transformer_blocks.{i}")), spec))
                .collect::<Result<_>>()?,
            proj_out: projection("proj_out", (inner, c))?,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4("transformer")?;
        let normed = self.norm.forward(b, x, false)?.reshape(&[n, h * w, c])?;
        let mut tokens = self.proj_in.forward(b, &normed)?;
        for block in &self.blocks {
            block.forward(b, &mut tokens, context)?;
        }
        let mut out = self.proj_out.forward(b, &tokens)?.reshape(&[n, h, w, c])?;
        b.add_assign(&mut out, x, 1.0)?;
        Ok(out)
    }
}
