//! diffusers' `Attention` module: q/k/v projections, multi-head attention, output
//! projection; and the spatial self-attention block of `UNet2DModel`
//! (group norm → attention over H·W positions → residual → rescale).

use super::layers::{GroupNorm, Linear};
use super::weights::Scope;
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

pub struct AttentionSpec {
    pub query_dim: usize,
    /// Feature size of the keys/values source (= query_dim for self-attention).
    pub context_dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Whether q/k/v projections have biases (true in `UNet2DModel`, false in SD's transformers).
    pub qkv_bias: bool,
}

impl Attention {
    pub fn load(b: &dyn Backend, s: &Scope, spec: &AttentionSpec) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        // Checkpoints saved before diffusers 0.15 name the projections query/key/value/proj_attn.
        let legacy = !s.contains("to_q.weight") && s.contains("query.weight");
        let (q, k, v, out) = if legacy {
            ("query", "key", "value", "proj_attn")
        } else {
            ("to_q", "to_k", "to_v", "to_out.0")
        };
        Ok(Attention {
            to_q: Linear::load(b, &s.sub(q), (spec.query_dim, inner), spec.qkv_bias)?,
            to_k: Linear::load(b, &s.sub(k), (spec.context_dim, inner), spec.qkv_bias)?,
            to_v: Linear::load(b, &s.sub(v), (spec.context_dim, inner), spec.qkv_bias)?,
            to_out: Linear::load(b, &s.sub(out), (inner, spec.query_dim), true)?,
            heads: spec.heads,
        })
    }

    /// `x`: `[batch, tokens, query_dim]`; `context` (cross-attention): `[batch, s, context_dim]`.
    pub fn forward(&self, b: &dyn Backend, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let source = context.unwrap_or(x);
        let q = self.to_q.forward(b, x)?;
        let k = self.to_k.forward(b, source)?;
        let v = self.to_v.forward(b, source)?;
        let o = b.attention(&q, &k, &v, self.heads)?;
        self.to_out.forward(b, &o)
    }
}

pub struct SpatialSelfAttention {
    group_norm: GroupNorm,
    attention: Attention,
    output_scale: f32,
}

impl SpatialSelfAttention {
    pub fn load(
        b: &dyn Backend,
        s: &Scope,
        (channels, heads, head_dim, groups): (usize, usize, usize, usize),
        eps: f64,
        rescale_output_factor: f64,
    ) -> Result<Self> {
        Ok(SpatialSelfAttention {
            group_norm: GroupNorm::load(b, &s.sub("group_norm"), groups, channels, eps)?,
            attention: Attention::load(
                b,
                s,
                &AttentionSpec {
                    query_dim: channels,
                    context_dim: channels,
                    heads,
                    head_dim,
                    qkv_bias: true,
                },
            )?,
            output_scale: (1.0 / rescale_output_factor) as f32,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4("spatial attention")?;
        let normed = self
            .group_norm
            .forward(b, x, false)?
            .reshape(&[n, h * w, c])?;
        let mut out = self
            .attention
            .forward(b, &normed, None)?
            .reshape(&[n, h, w, c])?;
        b.add_assign(&mut out, x, self.output_scale)?;
        Ok(out)
    }
}
