//! The parameterised layers every U-Net is built from, loaded from diffusers
//! (PyTorch-layout) tensors and converted once to the engine's layouts.

use rayon::prelude::*;

use super::weights::Scope;
use crate::backend::{Backend, Conv2dGeometry, ConvEpilogue};
use crate::error::Result;
use crate::tensor::Tensor;

pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    geometry: Conv2dGeometry,
    pub in_channels: usize,
    pub out_channels: usize,
}

impl Conv2d {
    /// Loads `weight` `[c_out, c_in, k, k]` (and `bias` `[c_out]` when `has_bias`)
    /// and stores it as `[k, k, c_in, c_out]`.
    pub fn load(
        b: &dyn Backend,
        s: &Scope,
        (cin, cout, k): (usize, usize, usize),
        geometry: Conv2dGeometry,
        has_bias: bool,
    ) -> Result<Self> {
        let torch = s.take("weight", &[cout, cin, k, k])?;
        // [c_out, c_in, k, k] → [k, k, c_in, c_out], one output row per task (this
        // is most of a model's load time).
        let mut hwio = vec![0f32; torch.len()];
        if cout > 0 {
            hwio.par_chunks_mut(cout)
                .enumerate()
                .for_each(|(row, dst)| {
                    let (yx, i) = (row / cin, row % cin);
                    for (o, d) in dst.iter_mut().enumerate() {
                        *d = torch[((o * cin + i) * k * k) + yx];
                    }
                });
        }
        let bias = if has_bias {
            Some(b.tensor(&[cout], s.take("bias", &[cout])?)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight: b.tensor(&[k, k, cin, cout], hwio)?,
            bias,
            geometry,
            in_channels: cin,
            out_channels: cout,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        b.conv2d(x, &self.weight, self.bias.as_ref(), &self.geometry)
    }

    /// The convolution with elementwise work folded into its output.
    pub fn forward_with(
        &self,
        b: &dyn Backend,
        x: &Tensor,
        epilogue: ConvEpilogue,
    ) -> Result<Tensor> {
        b.conv2d_epilogue(
            x,
            &self.weight,
            self.bias.as_ref(),
            &self.geometry,
            epilogue,
        )
    }
}

pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out, in]` (or a 1×1 convolution's `[out, in, 1, 1]` when
    /// `from_conv1x1`), stored transposed as `[in, out]`.
    pub fn load(
        b: &dyn Backend,
        s: &Scope,
        (fin, fout): (usize, usize),
        has_bias: bool,
    ) -> Result<Self> {
        Self::load_shaped(b, s, fin, fout, has_bias, false)
    }

    pub fn load_conv1x1(
        b: &dyn Backend,
        s: &Scope,
        (fin, fout): (usize, usize),
        has_bias: bool,
    ) -> Result<Self> {
        Self::load_shaped(b, s, fin, fout, has_bias, true)
    }

    fn load_shaped(
        b: &dyn Backend,
        s: &Scope,
        fin: usize,
        fout: usize,
        has_bias: bool,
        conv: bool,
    ) -> Result<Self> {
        let torch = if conv {
            s.take("weight", &[fout, fin, 1, 1])?
        } else {
            s.take("weight", &[fout, fin])?
        };
        let mut transposed = vec![0f32; torch.len()];
        for o in 0..fout {
            for i in 0..fin {
                transposed[i * fout + o] = torch[o * fin + i];
            }
        }
        let bias = if has_bias {
            Some(b.tensor(&[fout], s.take("bias", &[fout])?)?)
        } else {
            None
        };
        Ok(Linear {
            weight: b.tensor(&[fin, fout], transposed)?,
            bias,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        b.linear(x, &self.weight, self.bias.as_ref())
    }
}

pub struct GroupNorm {
    groups: usize,
    eps: f32,
    gamma: Tensor,
    beta: Tensor,
}

impl GroupNorm {
    pub fn load(
        b: &dyn Backend,
        s: &Scope,
        groups: usize,
        channels: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(GroupNorm {
            groups,
            eps: eps as f32,
            gamma: b.tensor(&[channels], s.take("weight", &[channels])?)?,
            beta: b.tensor(&[channels], s.take("bias", &[channels])?)?,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor, silu: bool) -> Result<Tensor> {
        b.group_norm(x, self.groups, &self.gamma, &self.beta, self.eps, silu)
    }
}

pub struct LayerNorm {
    eps: f32,
    gamma: Tensor,
    beta: Tensor,
}

impl LayerNorm {
    pub fn load(b: &dyn Backend, s: &Scope, channels: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            eps: eps as f32,
            gamma: b.tensor(&[channels], s.take("weight", &[channels])?)?,
            beta: b.tensor(&[channels], s.take("bias", &[channels])?)?,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        b.layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}
