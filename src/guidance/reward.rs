//! Reward-gradient guidance inside the denoising loop, on any scheduler.
//!
//! At a step with model input x = x_t·`input_scale` = √ᾱ·x₀ + √(1−ᾱ)·ε, the (CFG-
//! combined) model output m gives the estimate x̂₀. Guidance moves x̂₀ along the
//! reward gradient, x̂₀ ← x̂₀ + Δ, and then rewrites m so that, with x held fixed,
//! it predicts exactly the shifted x̂₀ (and the ε that goes with it). The scheduler
//! then steps as usual, so every scheduler stays consistent without knowing about
//! the reward. With x fixed, the output that predicts x̂₀ + Δ is
//!
//! * ε-prediction: m − √ᾱ/√(1−ᾱ) · Δ
//! * v-prediction: m − Δ/√(1−ᾱ)
//! * sample-prediction: m + Δ
//!
//! Two forms set Δ from the gradient g = ∂r/∂x̂₀:
//! * [`RewardForm::X0`]: Δ = ρ_t·g (or ρ_t·ĝ, ĝ = g/rms(g), when normalised, so ρ_t
//!   is the root-mean-square change per pixel), repeated for several inner
//!   iterations with the gradient re-evaluated at the shifted x̂₀;
//! * [`RewardForm::Eps`], classifier guidance: ε ← ε − s·√(1−ᾱ)·g, which is the x̂₀
//!   shift Δ = s·(1−ᾱ)/√ᾱ · g.

use crate::error::{Error, Result};
use crate::guidance::GuidanceInterval;
use crate::reward::{Reward, SampleShape};
use crate::schedule::{PredictionType, Scheduler};

/// Where the reward gradient enters the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardForm {
    /// Shift the x̂₀ estimate: no backpropagation through the U-Net.
    X0,
    /// Classifier guidance on ε.
    Eps,
}

/// How the x₀-form step size ρ_t follows the noise level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RhoSchedule {
    /// ρ_t = ρ at every guided step.
    Constant,
    /// ρ_t = ρ·√(1−ᾱ_t): large steps while the estimate is blurry, small ones once
    /// the sample is nearly clean and a step would only add texture.
    NoiseLevel,
}

/// Reward-gradient guidance settings, shared by every sample of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardGuidance {
    pub form: RewardForm,
    /// ρ of the x₀ form or s of the ε form. 0 turns the gradient off (the reward is
    /// still evaluated, e.g. for particle steering).
    pub scale: f32,
    pub schedule: RhoSchedule,
    /// Divide the gradient by its root-mean-square over the sample (x₀ form).
    pub normalize: bool,
    /// Gradient evaluations per step (x₀ form; the ε form takes one).
    pub iterations: usize,
    /// Steps (0-based, stop exclusive) where guidance acts.
    pub window: GuidanceInterval,
    /// How many times each step inside the window is taken: after each but the
    /// last, x_{t−1} is re-noised back to x_t ("time travel"). 1 = no recurrence.
    pub recurrence: usize,
}

impl Default for RewardGuidance {
    /// The x₀ form with ρ = 0.4 on every step; [`RewardGuidance::recommended`] also
    /// leaves the last steps unguided.
    fn default() -> Self {
        RewardGuidance {
            form: RewardForm::X0,
            scale: 0.4,
            schedule: RhoSchedule::Constant,
            normalize: true,
            iterations: 1,
            window: GuidanceInterval::ALWAYS,
            recurrence: 1,
        }
    }
}

impl RewardGuidance {
    /// The defaults of `diffsteer generate --reward` for a run of `num_steps`
    /// steps: normalised x₀ steps of ρ = 0.4 (RMS change per pixel) on every step
    /// except the last tenth, which the model takes unguided and so smooths away
    /// any texture the gradient left (measured in the README's alignment table).
    pub fn recommended(num_steps: usize) -> Self {
        RewardGuidance {
            window: GuidanceInterval {
                start: 0,
                stop: (num_steps - num_steps / 10).max(1),
            },
            ..RewardGuidance::default()
        }
    }
}

impl RewardGuidance {
    pub fn validate(&self) -> Result<()> {
        if !self.scale.is_finite() || self.scale < 0.0 {
            return Err(Error::invalid(
                "reward-scale",
                format!("must be a finite number >= 0, got {}", self.scale),
            ));
        }
        if self.iterations == 0 {
            return Err(Error::invalid("reward-iters", "must be at least 1"));
        }
        if self.form == RewardForm::Eps && self.iterations != 1 {
            return Err(Error::invalid(
                "reward-iters",
                "the eps (classifier-guidance) form takes one gradient per step",
            ));
        }
        if self.recurrence == 0 || self.recurrence > crate::rng::MAX_RENOISE_REPEATS as usize {
            return Err(Error::invalid(
                "recur",
                format!(
                    "must be 1 to {}, got {}",
                    crate::rng::MAX_RENOISE_REPEATS,
                    self.recurrence
                ),
            ));
        }
        if self.window.start >= self.window.stop {
            return Err(Error::invalid(
                "reward-window",
                format!(
                    "{}:{} is empty; give A:B with A < B",
                    self.window.start, self.window.stop
                ),
            ));
        }
        Ok(())
    }

    /// Whether the gradient acts at `step`.
    pub fn active_at(&self, step: usize) -> bool {
        self.scale > 0.0 && self.window.contains(step)
    }

    /// How many times `step` is taken.
    pub fn repeats_at(&self, step: usize) -> usize {
        if self.active_at(step) {
            self.recurrence
        } else {
            1
        }
    }

    /// The factor of the gradient (or normalised gradient) in Δ at noise level ᾱ.
    fn step_size(&self, alpha_bar: f32) -> f32 {
        match self.form {
            RewardForm::X0 => match self.schedule {
                RhoSchedule::Constant => self.scale,
                RhoSchedule::NoiseLevel => self.scale * (1.0 - alpha_bar).max(0.0).sqrt(),
            },
            RewardForm::Eps => self.scale * (1.0 - alpha_bar) / alpha_bar.sqrt(),
        }
    }
}

/// x̂₀ of one value from the model input x (= x_t·input_scale) and output m.
#[inline]
pub fn x0_estimate(prediction: PredictionType, alpha_bar: f32, x: f32, m: f32) -> f32 {
    let (sa, sb) = (alpha_bar.sqrt(), (1.0 - alpha_bar).max(0.0).sqrt());
    match prediction {
        PredictionType::Epsilon => (x - sb * m) / sa,
        PredictionType::VPrediction => sa * x - sb * m,
        PredictionType::Sample => m,
    }
}

/// d m / d x̂₀ with the model input held fixed (see the module docs).
pub fn output_per_x0_shift(prediction: PredictionType, alpha_bar: f32) -> f32 {
    let sb = (1.0 - alpha_bar).max(f32::MIN_POSITIVE).sqrt();
    match prediction {
        PredictionType::Epsilon => -alpha_bar.sqrt() / sb,
        PredictionType::VPrediction => -1.0 / sb,
        PredictionType::Sample => 1.0,
    }
}

/// The x̂₀ estimates of a batch at `step`: `latents` and `outputs` are rows of
/// `shape.len()` values.
pub fn x0_estimates(
    scheduler: &dyn Scheduler,
    step: usize,
    latents: &[f32],
    outputs: &[f32],
) -> Vec<f32> {
    let scale = scheduler.input_scale(step);
    let alpha_bar = scheduler.alpha_bar(step);
    let prediction = scheduler.prediction_type();
    latents
        .iter()
        .zip(outputs)
        .map(|(&l, &m)| x0_estimate(prediction, alpha_bar, l * scale, m))
        .collect()
}

/// What one guided step did, per row.
#[derive(Debug, Clone)]
pub struct GuidedStep {
    /// The reward at the model's own estimate x̂₀, before any shift.
    pub rewards: Vec<f32>,
}

impl RewardGuidance {
    /// Evaluates `reward` on the x̂₀ estimates of a batch at `step` and, where the
    /// guidance is active, rewrites `outputs` to predict the shifted estimates.
    /// `name_row` names a row for error messages.
    #[allow(clippy::too_many_arguments)]
    pub fn guide(
        &self,
        reward: &dyn Reward,
        shape: SampleShape,
        scheduler: &dyn Scheduler,
        step: usize,
        latents: &[f32],
        outputs: &mut [f32],
        name_row: &dyn Fn(usize) -> String,
    ) -> Result<GuidedStep> {
        let (guided, shift) =
            self.output_shift(reward, shape, scheduler, step, latents, outputs, name_row)?;
        if let Some(shift) = shift {
            for (m, &d) in outputs.iter_mut().zip(&shift) {
                *m += d;
            }
        }
        Ok(guided)
    }

    /// What [`RewardGuidance::guide`] adds to `outputs`, per element (`None` on a
    /// step outside the guidance window, where the reward is only evaluated), for
    /// a fused step that applies it where the model output lives.
    #[allow(clippy::too_many_arguments)]
    pub fn output_shift(
        &self,
        reward: &dyn Reward,
        shape: SampleShape,
        scheduler: &dyn Scheduler,
        step: usize,
        latents: &[f32],
        outputs: &[f32],
        name_row: &dyn Fn(usize) -> String,
    ) -> Result<(GuidedStep, Option<Vec<f32>>)> {
        let per = shape.len();
        let rows = shape.count(outputs, "reward guidance")?;
        if latents.len() != outputs.len() {
            return Err(Error::shape(
                "reward guidance",
                format!(
                    "{} latent values for {} model output values",
                    latents.len(),
                    outputs.len()
                ),
            ));
        }
        let timestep = scheduler.timestep(step) as f64;
        let mut x0 = x0_estimates(scheduler, step, latents, outputs);
        if !self.active_at(step) {
            let rewards = reward.evaluate(shape, &x0, None)?;
            check_rewards(&rewards, rows, name_row, step, timestep)?;
            return Ok((GuidedStep { rewards }, None));
        }

        let alpha_bar = scheduler.alpha_bar(step);
        let size = self.step_size(alpha_bar);
        let mut shift = vec![0f32; x0.len()];
        let mut grad = vec![0f32; x0.len()];
        let mut first_rewards = None;
        for _ in 0..self.iterations {
            let rewards = reward.evaluate(shape, &x0, Some(&mut grad))?;
            check_rewards(&rewards, rows, name_row, step, timestep)?;
            for row in 0..rows {
                let g = &grad[row * per..(row + 1) * per];
                if g.iter().any(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        what: format!("the reward gradient of {}", name_row(row)),
                        step,
                        timestep,
                    });
                }
                let factor = if self.normalize && self.form == RewardForm::X0 {
                    let mean_square =
                        g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / per as f64;
                    if mean_square == 0.0 {
                        continue;
                    }
                    size / mean_square.sqrt() as f32
                } else {
                    size
                };
                let range = row * per..(row + 1) * per;
                for ((x, s), &gv) in x0[range.clone()].iter_mut().zip(&mut shift[range]).zip(g) {
                    let d = factor * gv;
                    *x += d;
                    *s += d;
                }
            }
            first_rewards.get_or_insert(rewards);
        }
        let coefficient = output_per_x0_shift(scheduler.prediction_type(), alpha_bar);
        for d in shift.iter_mut() {
            *d *= coefficient;
        }
        let guided = GuidedStep {
            rewards: first_rewards.unwrap_or_default(),
        };
        Ok((guided, Some(shift)))
    }
}

fn check_rewards(
    rewards: &[f32],
    rows: usize,
    name_row: &dyn Fn(usize) -> String,
    step: usize,
    timestep: f64,
) -> Result<()> {
    if rewards.len() != rows {
        return Err(Error::shape(
            "reward",
            format!("{} values for {rows} samples", rewards.len()),
        ));
    }
    match rewards.iter().position(|r| !r.is_finite()) {
        None => Ok(()),
        Some(row) => Err(Error::NonFinite {
            what: format!("the reward of {}", name_row(row)),
            step,
            timestep,
        }),
    }
}

/// Takes a result of `step` (x_{t−1}) back to the noise level of `step` (x_t) with
/// fresh noise `z`: in the variance-preserving form x = √ᾱ·x₀ + √(1−ᾱ)·ε,
/// x_t = √(ᾱ_t/ᾱ_{t−1})·x_{t−1} + √(1 − ᾱ_t/ᾱ_{t−1})·z.
pub fn renoise(scheduler: &dyn Scheduler, step: usize, after: &[f32], z: &[f32], out: &mut [f32]) {
    let ratio = (scheduler.alpha_bar(step) / scheduler.alpha_bar_after(step)).min(1.0);
    let keep = ratio.sqrt();
    let add = (1.0 - ratio).sqrt();
    let to_vp = scheduler.input_scale_after(step);
    let from_vp = 1.0 / scheduler.input_scale(step);
    for ((o, &a), &n) in out.iter_mut().zip(after).zip(z) {
        *o = (keep * a * to_vp + add * n) * from_vp;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_output_predicts_the_shifted_estimate() {
        let (alpha_bar, x, m, delta) = (0.3f32, 0.7f32, -0.4f32, 0.25f32);
        for prediction in [
            PredictionType::Epsilon,
            PredictionType::VPrediction,
            PredictionType::Sample,
        ] {
            let before = x0_estimate(prediction, alpha_bar, x, m);
            let shifted = m + output_per_x0_shift(prediction, alpha_bar) * delta;
            let after = x0_estimate(prediction, alpha_bar, x, shifted);
            assert!(
                (after - before - delta).abs() < 1e-6,
                "{prediction:?}: {before} -> {after}"
            );
        }
    }

    #[test]
    fn eps_form_equals_classifier_guidance_on_eps() {
        // ε ← ε − s·√(1−ᾱ)·g must move x̂₀ by s·(1−ᾱ)/√ᾱ·g.
        let (alpha_bar, x, eps, g, s) = (0.6f32, 0.2f32, 0.5f32, 0.8f32, 2.0f32);
        let guided = RewardGuidance {
            form: RewardForm::Eps,
            scale: s,
            ..RewardGuidance::default()
        };
        let moved = x0_estimate(
            PredictionType::Epsilon,
            alpha_bar,
            x,
            eps - s * (1.0 - alpha_bar).sqrt() * g,
        ) - x0_estimate(PredictionType::Epsilon, alpha_bar, x, eps);
        assert!((moved - guided.step_size(alpha_bar) * g).abs() < 1e-6);
    }
}
