//! Timestep and class embeddings.

use super::layers::Linear;
use super::weights::Scope;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MAX_PERIOD: f32 = 10000.0;

/// diffusers' `get_timestep_embedding`: `[sin(t·f), cos(t·f)]` (or cos first with
/// `flip_sin_to_cos`), `f_i = exp(-ln(10000)·i / (dim/2 − shift))`. The frequencies
/// and products are rounded to f32 exactly where PyTorch rounds them, because
/// t·f reaches ~1000 radians and the argument's rounding dominates the error.
pub fn sinusoidal_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Vec<f32> {
    let half = dim / 2;
    let neg_log_period = -MAX_PERIOD.ln();
    let denom = (half as f64 - shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((neg_log_period * i as f32) / denom).exp())
        .collect();
    let mut out = vec![0f32; timesteps.len() * dim];
    for (row, &t) in out.chunks_mut(dim).zip(timesteps) {
        for (i, &f) in freqs.iter().enumerate() {
            let arg = (t * f) as f64;
            let (sin, cos) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if flip_sin_to_cos {
                (cos, sin)
            } else {
                (sin, cos)
            };
            row[i] = first;
            row[half + i] = second;
        }
    }
    out
}

/// diffusers' `TimestepEmbedding`: linear → SiLU → linear.
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(b: &dyn Backend, s: &Scope, in_dim: usize, embed_dim: usize) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(b, &s.sub("linear_1"), (in_dim, embed_dim), true)?,
            linear_2: Linear::load(b, &s.sub("linear_2"), (embed_dim, embed_dim), true)?,
        })
    }

    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let mut h = self.linear_1.forward(b, x)?;
        b.silu_assign(&mut h)?;
        self.linear_2.forward(b, &h)
    }
}

/// A learned embedding per class label (`nn.Embedding`), kept on the host: a
/// forward pass only gathers `batch` rows of it.
pub struct ClassEmbedding {
    table: Vec<f32>,
    classes: usize,
    dim: usize,
}

impl ClassEmbedding {
    pub fn load(s: &Scope, classes: usize, dim: usize) -> Result<Self> {
        Ok(ClassEmbedding {
            table: s.take("weight", &[classes, dim])?,
            classes,
            dim,
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn rows(&self, labels: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(labels.len() * self.dim);
        for &label in labels {
            if label >= self.classes {
                return Err(Error::invalid(
                    "class label",
                    format!(
                        "{label} is out of range: the model has {} classes (0..={})",
                        self.classes,
                        self.classes - 1
                    ),
                ));
            }
            out.extend_from_slice(&self.table[label * self.dim..(label + 1) * self.dim]);
        }
        Ok(out)
    }
}
