//! The classifier's penultimate features: what its last layer reads. A realism
//! measure compares their distribution over samples with that over real images (a
//! Fréchet distance, as FID does with an Inception network's), so it needs the
//! activations, not the logits.

use super::{ensure_finite, Classifier, Dims, Op};
use crate::backend::Activation;
use crate::error::{Error, Result};

impl Classifier {
    /// How many features [`Classifier::features`] returns per sample: the size of
    /// the last layer's input.
    pub fn feature_count(&self) -> Result<usize> {
        match self.layers.last().map(|layer| layer.input) {
            Some(Dims::Flat { features, .. }) => Ok(features),
            Some(map @ Dims::Map { .. }) => Err(Error::invalid(
                "classifier",
                format!(
                    "the last layer of the classifier in {} reads {}, not a feature vector",
                    self.dir.display(),
                    map.describe()
                ),
            )),
            None => Err(Error::invalid(
                "classifier",
                format!("the classifier in {} has no layers", self.dir.display()),
            )),
        }
    }

    /// The penultimate features of every sample in `x` (`n × input_shape().len()`
    /// values, channels-last): every layer but the last, `n × feature_count()`
    /// values, sample-major. Non-finite input or output is an error naming the
    /// sample.
    pub fn features(&self, x: &[f32]) -> Result<Vec<f32>> {
        let per_sample = self.feature_count()?;
        let n = self.check_input(x)?;
        let b = self.backend.as_ref();
        let mut cur = b.tensor(&self.input_dims().shape(n), x.to_vec())?;
        for layer in &self.layers[..self.layers.len() - 1] {
            cur = match &layer.op {
                Op::Conv(c) => b.conv2d(&cur, &c.weight, c.bias.as_ref(), &c.geometry)?,
                Op::Linear(l) => b.linear(&cur, &l.weight, l.bias.as_ref())?,
                Op::Silu | Op::Relu => {
                    let act = match layer.op {
                        Op::Silu => Activation::Silu,
                        _ => Activation::Relu,
                    };
                    b.activation_assign(&mut cur, act, false)?;
                    cur
                }
                Op::AvgPool { kernel } => b.avg_pool(&cur, *kernel)?,
                Op::Flatten => cur.reshape(&layer.output.shape(n))?,
            };
        }
        let mut features = b.to_host(&cur)?;
        ensure_finite("classifier features", &features, per_sample)?;
        if let Some(Dims::Flat {
            from: Some((h, w, c)),
            ..
        }) = self.layers.last().map(|layer| layer.input)
        {
            // A map flattened right before the last layer: put its values in
            // PyTorch's flatten order, as the config describes the network.
            features = to_pytorch_order(&features, h, w, c);
        }
        Ok(features)
    }
}

/// Samples of a channels-last map flattened as (y·W + x)·C + c, reordered to
/// PyTorch's c·H·W + y·W + x.
fn to_pytorch_order(values: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let per = h * w * c;
    let mut out = vec![0f32; values.len()];
    for (src, dst) in values.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
        for pixel in 0..h * w {
            for channel in 0..c {
                dst[channel * h * w + pixel] = src[pixel * c + channel];
            }
        }
    }
    out
}
