//! `realism`: discriminator guidance (Kim et al., ICML 2023) on the x̂₀ estimate.
//!
//! A small time-conditioned discriminator d(x̂₀, ᾱ) ≈ P(real | x̂₀ at noise level ᾱ)
//! is trained (`tools/train_realism.py`) to tell the model's x̂₀ of noised real
//! digits from its x̂₀ of noised samples of the model itself. Its log-odds
//! log d/(1 − d) is the reward: where the model's samples differ from real data,
//! the gradient points from the one toward the other.
//!
//! The discriminator is a `diffsteer-classifier/1` layer list with two classes
//! (0 = the model's own samples, 1 = real) and one input channel more than the
//! samples: the last channel is a constant plane of √(1 − ᾱ), the share of noise in
//! x_t. So the classifier's loader, forward and hand-written backward run it as
//! they are; this file only builds that input and keeps the gradient of the image
//! channels.

use std::path::Path;
use std::sync::Arc;

use super::classifier::{Classifier, Readout};
use super::{check_gradient_buffer, Reward, SampleShape};
use crate::error::{Error, Result};

/// Where the shipped discriminator lives (relative to the repository).
pub const DEFAULT_REALISM_DIR: &str = "weights/realism";

/// The discriminator's class of the model's own samples.
pub const FAKE_CLASS: usize = 0;
/// The discriminator's class of real data.
pub const REAL_CLASS: usize = 1;

/// The share of a full normalised guidance step that `realism` takes (at weight 1).
/// Measured on class CFG 3 sampling of the digits model (README, "Realism:
/// discriminator guidance", 200 images, five independent readers): a full step
/// thins strokes but breaks them up and adds specks (Fréchet distance to real
/// digits 0.69 → 1.19); 0.3 of a step gave 0.65 at the same class accuracy.
pub const REALISM_STEP_SHARE: f32 = 0.3;

/// The log-odds that a sample is real rather than the model's own, read by a
/// time-conditioned discriminator (see the module docs).
pub struct RealismReward {
    discriminator: Arc<Classifier>,
}

impl RealismReward {
    /// An error unless `discriminator` has exactly two classes and at least two
    /// input channels (the image's and the noise-level plane).
    pub fn new(discriminator: Arc<Classifier>) -> Result<Self> {
        let dir = discriminator.dir().display().to_string();
        if discriminator.num_classes() != 2 {
            return Err(Error::invalid(
                "reward",
                format!(
                    "realism: the discriminator in {dir} has {} classes; it must have 2 \
                     ({FAKE_CLASS} = the model's samples, {REAL_CLASS} = real)",
                    discriminator.num_classes()
                ),
            ));
        }
        if discriminator.input_shape().channels < 2 {
            return Err(Error::invalid(
                "reward",
                format!(
                    "realism: the discriminator in {dir} reads {} channel(s); it must read the \
                     image's channels and one more, the noise level √(1 − ᾱ)",
                    discriminator.input_shape().channels
                ),
            ));
        }
        Ok(RealismReward { discriminator })
    }

    /// Loads the discriminator in `dir`; a folder that is missing, or holds no valid
    /// discriminator, is an error naming it.
    pub fn load(dir: &Path, backend: Arc<dyn crate::backend::Backend>) -> Result<Self> {
        let discriminator = Classifier::load_on(dir, backend).map_err(|e| {
            Error::invalid(
                "reward",
                format!(
                    "realism: cannot load the discriminator in {}: {e}",
                    dir.display()
                ),
            )
        })?;
        Self::new(Arc::new(discriminator))
    }

    pub fn discriminator(&self) -> &Arc<Classifier> {
        &self.discriminator
    }

    /// The sample shape this discriminator scores: its input less the level plane.
    pub fn sample_shape(&self) -> SampleShape {
        let input = self.discriminator.input_shape();
        SampleShape::new(input.height, input.width, input.channels - 1)
    }
}

/// The discriminator's input for `n` samples: each pixel's channels, then √(1 − ᾱ)
/// of its sample.
fn with_level_plane(shape: SampleShape, x0: &[f32], alpha_bars: &[f32]) -> Vec<f32> {
    let c = shape.channels;
    let mut input = Vec::with_capacity(x0.len() / c * (c + 1));
    for (sample, &alpha_bar) in x0.chunks_exact(shape.len()).zip(alpha_bars) {
        let level = (1.0 - alpha_bar).max(0.0).sqrt();
        for pixel in sample.chunks_exact(c) {
            input.extend_from_slice(pixel);
            input.push(level);
        }
    }
    input
}

impl Reward for RealismReward {
    fn name(&self) -> String {
        "realism".to_string()
    }

    fn check_shape(&self, shape: SampleShape) -> Result<()> {
        let expected = self.sample_shape();
        if shape == expected {
            return Ok(());
        }
        Err(Error::shape(
            self.name(),
            format!(
                "the discriminator in {} scores {expected} samples (H×W×C), the model makes {shape}",
                self.discriminator.dir().display()
            ),
        ))
    }

    /// Clean samples: the log-odds at ᾱ = 1.
    fn evaluate(
        &self,
        shape: SampleShape,
        x0: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let n = shape.count(x0, "realism reward")?;
        self.evaluate_at(shape, x0, &vec![1.0; n], grad)
    }

    fn evaluate_at(
        &self,
        shape: SampleShape,
        x0: &[f32],
        alpha_bars: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        self.check_shape(shape)?;
        let n = shape.count(x0, "realism reward")?;
        if alpha_bars.len() != n {
            return Err(Error::shape(
                self.name(),
                format!("{} noise levels for {n} samples", alpha_bars.len()),
            ));
        }
        if let Some(bad) = alpha_bars
            .iter()
            .find(|a| !(a.is_finite() && (0.0..=1.0).contains(*a)))
        {
            return Err(Error::invalid(
                "realism reward",
                format!("noise level ᾱ = {bad} is not in [0, 1]"),
            ));
        }
        check_gradient_buffer("realism gradient", x0, grad.as_deref())?;
        let input = with_level_plane(shape, x0, alpha_bars);
        let readouts = vec![Readout::LogOdds(REAL_CLASS, FAKE_CLASS); n];
        let Some(grad) = grad else {
            return self.discriminator.readout_and_grad(&input, &readouts, None);
        };
        let mut input_grad = vec![0f32; input.len()];
        let values =
            self.discriminator
                .readout_and_grad(&input, &readouts, Some(&mut input_grad))?;
        // The level plane is not the sample's: only the image channels' gradient is kept.
        let c = shape.channels;
        for (g, pixel) in grad.chunks_exact_mut(c).zip(input_grad.chunks_exact(c + 1)) {
            g.copy_from_slice(&pixel[..c]);
        }
        Ok(values)
    }

    /// A fixed share, [`REALISM_STEP_SHARE`], of each normalised step.
    fn step_gate(&self, value: f32, alpha_bar: f32) -> f32 {
        let _ = (value, alpha_bar);
        REALISM_STEP_SHARE
    }
}
