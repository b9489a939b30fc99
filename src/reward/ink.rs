//! The ink reward: steers how much of the image is "ink" (bright), a simple,
//! model-free target that needs no classifier and shows reward guidance at work.

use super::{check_gradient_buffer, Reward, SampleShape};
use crate::error::{Error, Result};

/// The width σ of the ink reward's Gaussian: an ink fraction 0.05 off the target
/// costs 0.5 (as much as a log-probability falling from 1 to 0.6).
pub const INK_SIGMA: f32 = 0.05;

/// r(x₀) = −(m − T)² / (2σ²) with m the sample's mean of (x₀ + 1)/2 over all pixels
/// and channels — the ink fraction in the [-1, 1] pixel space — and σ = [`INK_SIGMA`]:
/// the log-likelihood (up to a constant) of m under N(T, σ²), so that its scale is
/// comparable to a classifier's log-probabilities. Accepts any sample shape.
#[derive(Debug, Clone, Copy)]
pub struct InkReward {
    target: f32,
}

impl InkReward {
    /// An error unless `target` is a finite fraction in [0, 1].
    pub fn new(target: f32) -> Result<Self> {
        if !(target.is_finite() && (0.0..=1.0).contains(&target)) {
            return Err(Error::invalid(
                "reward",
                format!("ink:{target}: the ink target must be a fraction in [0, 1]"),
            ));
        }
        Ok(InkReward { target })
    }

    pub fn target(&self) -> f32 {
        self.target
    }
}

impl Reward for InkReward {
    fn name(&self) -> String {
        format!("ink:{}", self.target)
    }

    fn check_shape(&self, shape: SampleShape) -> Result<()> {
        if shape.is_empty() {
            return Err(Error::shape(
                self.name(),
                format!("cannot score empty {shape} samples"),
            ));
        }
        Ok(())
    }

    /// Non-finite pixels are an error naming the sample, never a NaN reward.
    fn evaluate(
        &self,
        shape: SampleShape,
        x0: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        self.check_shape(shape)?;
        let n = shape.count(x0, "ink reward")?;
        check_gradient_buffer("ink reward", x0, grad.as_deref())?;
        let per = shape.len();
        let var = (INK_SIGMA as f64).powi(2);
        let mut rewards = Vec::with_capacity(n);
        let mut slopes = Vec::with_capacity(n);
        for (i, sample) in x0.chunks_exact(per).enumerate() {
            let sum: f64 = sample.iter().map(|&v| v as f64).sum();
            let m = (sum / per as f64 + 1.0) / 2.0;
            if !m.is_finite() {
                return Err(Error::invalid(
                    "ink reward",
                    format!("sample {i} holds non-finite pixel values (NaN or Inf)"),
                ));
            }
            let diff = m - self.target as f64;
            rewards.push((-diff * diff / (2.0 * var)) as f32);
            // ∂r/∂x_j = −(m − T)/σ² · ∂m/∂x_j, and ∂m/∂x_j = 1 / (2·len).
            slopes.push((-diff / var / (2.0 * per as f64)) as f32);
        }
        if let Some(g) = grad {
            for (gs, &slope) in g.chunks_exact_mut(per).zip(&slopes) {
                gs.fill(slope);
            }
        }
        Ok(rewards)
    }
}
