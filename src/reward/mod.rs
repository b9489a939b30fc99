//! Rewards: a per-sample score r(x₀) of a clean image and its gradient ∂r/∂x₀, both
//! computed by hand-written backward passes. Reward guidance shifts each step's x₀
//! estimate along the gradient; particle steering weights particles by the value.
//!
//! Samples are in the model's pixel space (for the digits model [-1, 1], -1 = black),
//! channels-last, `n` samples back to back.

pub mod classifier;
pub mod ink;
pub mod realism;
pub mod spec;
pub mod sum;

pub use classifier::{
    ClassGoal, Classifier, ClassifierEnsemble, ClassifierReward, Readout, AVOID_STEP_SHARE,
    AVOID_UNTIL_NOISE,
};
pub use ink::InkReward;
pub use realism::{RealismReward, REALISM_STEP_SHARE};
pub use spec::{parse_reward_spec, parse_reward_specs, RewardContext};
pub use sum::WeightedSum;

use crate::error::{Error, Result};

/// The shape of ONE sample: height × width × channels, channels-last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleShape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl SampleShape {
    pub fn new(height: usize, width: usize, channels: usize) -> Self {
        SampleShape {
            height,
            width,
            channels,
        }
    }

    /// Elements per sample.
    pub fn len(&self) -> usize {
        self.height * self.width * self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many samples `data` holds; an error unless it is a whole, non-zero number.
    pub fn count(&self, data: &[f32], what: &str) -> Result<usize> {
        let per = self.len();
        if per == 0 || data.is_empty() || !data.len().is_multiple_of(per) {
            return Err(Error::shape(
                what,
                format!(
                    "{} values are not a whole number of {}×{}×{} samples",
                    data.len(),
                    self.height,
                    self.width,
                    self.channels
                ),
            ));
        }
        Ok(data.len() / per)
    }
}

/// An error unless a gradient buffer, when given, matches the samples it is for.
pub fn check_gradient_buffer(what: &str, x0: &[f32], grad: Option<&[f32]>) -> Result<()> {
    match grad {
        Some(g) if g.len() != x0.len() => Err(Error::shape(
            what,
            format!(
                "the gradient buffer holds {} values, the samples {}",
                g.len(),
                x0.len()
            ),
        )),
        _ => Ok(()),
    }
}

impl std::fmt::Display for SampleShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{}", self.height, self.width, self.channels)
    }
}

/// A differentiable score of clean samples. Higher is better.
pub trait Reward: Send + Sync {
    /// The spec that names this reward, e.g. `classifier:3`.
    fn name(&self) -> String;

    /// Refuses a sample shape this reward cannot score, naming both shapes.
    fn check_shape(&self, shape: SampleShape) -> Result<()>;

    /// The reward of every sample in `x0` (`n × shape.len()` values). When `grad`
    /// is given (same length as `x0`), ∂r/∂x₀ of each sample is written into it.
    fn evaluate(
        &self,
        shape: SampleShape,
        x0: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>>;

    /// [`Reward::evaluate`] of estimates made at known noise levels: `alpha_bars[i]`
    /// is ᾱ of the step whose x̂₀ estimate sample i is (1 for a clean sample; one
    /// value per sample). Guidance calls this; a reward that reads the noise level
    /// (a time-conditioned discriminator) overrides it, and `evaluate` is then this
    /// at ᾱ = 1. The default ignores the levels.
    fn evaluate_at(
        &self,
        shape: SampleShape,
        x0: &[f32],
        alpha_bars: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let _ = alpha_bars;
        self.evaluate(shape, x0, grad)
    }

    /// The share, in [0, 1], of a normalised guidance step that this reward still
    /// asks for at its value `value`, on an estimate made at noise level ᾱ =
    /// `alpha_bar`. Normalised steps have the same size however small the gradient
    /// is, so without a gate the push never stops; a reward that knows when it is
    /// satisfied says so here (see [`ClassifierReward`] for `avoid:`). The default,
    /// 1, is an ungated reward.
    fn step_gate(&self, value: f32, alpha_bar: f32) -> f32 {
        let _ = (value, alpha_bar);
        1.0
    }

    /// The weighted terms of a sum of rewards, which guidance steps along one by
    /// one (each normalised and gated on its own); `None` for a single reward.
    fn terms(&self) -> Option<&[(f32, Box<dyn Reward>)]> {
        None
    }
}

/// The gate of a log-probability reward r = log p: 1 − p, the probability still
/// missing (0 where p = 1, 1 where p = 0), computed as −expm1(r) so that it keeps
/// its precision where p is small.
pub fn log_probability_gate(value: f32) -> f32 {
    if value.is_nan() {
        return 1.0;
    }
    (-(value.min(0.0) as f64).exp_m1()).clamp(0.0, 1.0) as f32
}
