//! Rewards of images on a latent model. A text-to-image pipeline samples latents;
//! its rewards score the decoded image. The value is the image reward of the
//! VAE's decoding of the latent. Its gradient reaches the latent through the VAE's
//! **encoder** rather than a backward pass through the decoder: for the image
//! gradient g at the decoding x, the latent direction is the change of the
//! encoder's mean when x moves a small step along g,
//! (E(x + ε·ĝ) − E(x)) / ε · ‖g‖ with ĝ = g/‖g‖ in root-mean-square units and
//! ε = 0.05 (2.5% of the pixel range). Where the encoder inverts the decoder, that is
//! the latent change that makes the image change by g: a Gauss-Newton step in the
//! latent rather than plain gradient ascent, which is what reward guidance (whose
//! x̂₀ steps are normalised) needs, and it costs two encoder passes per guided
//! sample instead of a decoder backward through every layer. Every image reward
//! works this way (`ink:T`, and the classifier where its input size is the image's).

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::reward::{Reward, SampleShape, WeightedSum};

use super::text::TextStack;

/// Pixel step of the encoder's finite difference, in RMS units of the [-1, 1] range.
const PULLBACK_STEP: f32 = 0.05;

/// A reward whose terms can be reported one by one (for metadata).
pub trait TermReward: Reward {
    fn term_names(&self) -> Vec<String>;
    /// The weighted total and each term's own value, per sample.
    fn evaluate_terms(&self, shape: SampleShape, x0: &[f32]) -> Result<(Vec<f32>, Vec<Vec<f32>>)>;
}

impl TermReward for WeightedSum {
    fn term_names(&self) -> Vec<String> {
        WeightedSum::term_names(self)
    }

    fn evaluate_terms(&self, shape: SampleShape, x0: &[f32]) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        WeightedSum::evaluate_terms(self, shape, x0, None)
    }
}

/// Image rewards on latents, through the pipeline's VAE (see the module docs).
pub struct DecodedReward {
    inner: WeightedSum,
    text: Arc<TextStack>,
    backend: Arc<dyn Backend>,
    /// The decoded image's shape for a latent shape (channels and factor).
    image_channels: usize,
    factor: usize,
}

impl DecodedReward {
    pub(crate) fn new(inner: WeightedSum, text: Arc<TextStack>, backend: Arc<dyn Backend>) -> Self {
        let image_channels = text.vae.config().out_channels;
        let factor = text.factor;
        DecodedReward {
            inner,
            text,
            backend,
            image_channels,
            factor,
        }
    }

    fn image_shape(&self, latent: SampleShape) -> SampleShape {
        SampleShape::new(
            latent.height * self.factor,
            latent.width * self.factor,
            self.image_channels,
        )
    }

    /// The decoding of every latent of `z`, back to back.
    fn decode_all(&self, shape: SampleShape, z: &[f32]) -> Result<Vec<f32>> {
        let b = self.backend.as_ref();
        let mut images = Vec::new();
        for latent in z.chunks_exact(shape.len()) {
            let t = b.tensor(
                &[1, shape.height, shape.width, shape.channels],
                latent.to_vec(),
            )?;
            let image = self.text.vae.decode(b, &t)?;
            images.extend(b.to_host(&image)?);
        }
        Ok(images)
    }

    /// The encoder's mean of one image, in the sampler's latent space.
    fn encoded_mean(&self, image: &[f32], shape: SampleShape) -> Result<Vec<f32>> {
        let dist = self.text.encode_image(
            self.backend.as_ref(),
            image.to_vec(),
            shape.height,
            shape.width,
        )?;
        let config = self.text.vae.config();
        let zeros = vec![0f32; dist.mean.len()];
        dist.latents(config, &zeros)
    }
}

impl Reward for DecodedReward {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn check_shape(&self, shape: SampleShape) -> Result<()> {
        self.inner.check_shape(self.image_shape(shape))
    }

    fn evaluate(
        &self,
        shape: SampleShape,
        z: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let n = shape.count(z, "decoded reward")?;
        let image_shape = self.image_shape(shape);
        let images = self.decode_all(shape, z)?;
        let Some(grad) = grad else {
            return self.inner.evaluate(image_shape, &images, None);
        };
        if grad.len() != z.len() {
            return Err(Error::shape(
                "decoded reward",
                format!(
                    "a gradient buffer of {} values for {} latent values",
                    grad.len(),
                    z.len()
                ),
            ));
        }
        let mut image_grad = vec![0f32; images.len()];
        let values = self
            .inner
            .evaluate(image_shape, &images, Some(&mut image_grad))?;
        let per_image = image_shape.len();
        let per_latent = shape.len();
        for i in 0..n {
            let x = &images[i * per_image..(i + 1) * per_image];
            let g = &image_grad[i * per_image..(i + 1) * per_image];
            let out = &mut grad[i * per_latent..(i + 1) * per_latent];
            let rms =
                (g.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / per_image as f64).sqrt();
            if rms == 0.0 || !rms.is_finite() {
                out.fill(0.0);
                continue;
            }
            let moved: Vec<f32> = x
                .iter()
                .zip(g)
                .map(|(&xv, &gv)| xv + PULLBACK_STEP * (gv as f64 / rms) as f32)
                .collect();
            let base = self.encoded_mean(x, image_shape)?;
            let shifted = self.encoded_mean(&moved, image_shape)?;
            let scale = rms as f32 / PULLBACK_STEP;
            for ((o, s), b) in out.iter_mut().zip(&shifted).zip(&base) {
                *o = (s - b) * scale;
            }
        }
        Ok(values)
    }
}

impl TermReward for DecodedReward {
    fn term_names(&self) -> Vec<String> {
        self.inner.term_names()
    }

    fn evaluate_terms(&self, shape: SampleShape, z: &[f32]) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let images = self.decode_all(shape, z)?;
        self.inner
            .evaluate_terms(self.image_shape(shape), &images, None)
    }
}
