//! Timestep and class embeddings.

use super::layers::Linear;
use super::weights::Scope;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

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
