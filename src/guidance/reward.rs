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
    /// steps: normalised x₀ steps of ρ_t = 0.6·√(1−ᾱ_t) (RMS change per pixel:
    /// large while the estimate is a blur and the sample's shape is decided, small
    /// once it is nearly clean and a step would mostly add texture the reward model
    /// likes and other readers do not) on every step except the last tenth, which
    /// the model takes unguided and so smooths away what texture is left. Measured
    /// against five independent readers (README, Alignment): 97.8% of `classifier:D`
    /// samples read as D on average (94.0–100% per reader) with a Fréchet distance
    /// of 0.66 to real digits, where the former default, a constant ρ = 0.4, gave
    /// 95.6% (90.5–99.0%) and 0.81, and class CFG 3 gives 99.4% and 0.69.
    pub fn recommended(num_steps: usize) -> Self {
        RewardGuidance {
            scale: 0.6,
            schedule: RhoSchedule::NoiseLevel,
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

/// Where one row of a batched reward evaluation stands in its own schedule: rows
/// of one model call may be at different steps of different schedulers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseLevel {
    pub prediction: PredictionType,
    /// ᾱ of the noise level the model saw.
    pub alpha_bar: f32,
    /// The model input is the latent × this.
    pub input_scale: f32,
    /// The row's step (0-based) and the timestep the model saw, for messages.
    pub step: usize,
    pub timestep: f32,
}

impl NoiseLevel {
    pub fn at(scheduler: &dyn Scheduler, step: usize) -> Self {
        NoiseLevel {
            prediction: scheduler.prediction_type(),
            alpha_bar: scheduler.alpha_bar(step),
            input_scale: scheduler.input_scale(step),
            step,
            timestep: scheduler.timestep(step),
        }
    }

    /// x̂₀ of one row from its latent and (guided) model output.
    pub fn x0_estimate(&self, latent: &[f32], output: &[f32], out: &mut [f32]) {
        for ((o, &l), &m) in out.iter_mut().zip(latent).zip(output) {
            *o = x0_estimate(self.prediction, self.alpha_bar, l * self.input_scale, m);
        }
    }
}

/// One row of a batched guided step: its noise level and its guidance settings.
#[derive(Debug, Clone, Copy)]
pub struct GuideRow<'g> {
    pub level: NoiseLevel,
    pub guidance: &'g RewardGuidance,
}

/// What guidance did to one row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowGuidance {
    /// The reward at the model's own estimate x̂₀, before any shift.
    pub reward: f32,
    /// What is added to the row's model output so that it predicts the shifted
    /// estimate; `None` outside the guidance window (the reward is only evaluated).
    pub shift: Option<Vec<f32>>,
}

/// Evaluates `reward` on the x̂₀ estimates of a batch of rows, each at its own noise
/// level with its own settings, and computes each guided row's output shift.
/// `latents` and `outputs` are rows of `shape.len()` values. Rows whose guidance is
/// active are evaluated (with gradients) apart from the others, so a row's numbers
/// depend only on its own inputs, never on what it is batched with.
///
/// A sum of rewards ([`Reward::terms`]) is stepped along term by term: with
/// normalised steps each term k moves x̂₀ by wₖ·ρ_t·gateₖ·ĝₖ, its own normalised
/// gradient scaled by its weight and by its [`Reward::step_gate`] at its value
/// (so terms of very different gradient scales mix by their weights, and each
/// stops pushing once it is satisfied); unnormalised steps (raw, or the ε form)
/// take the gradient of the weighted sum as it is.
///
/// The outer `Err` is a failure of the whole batch (a reward that cannot score
/// the shape); an inner `Err` a failure of one row (a non-finite reward or
/// gradient), named with `name_row`.
pub fn guide_rows(
    reward: &dyn Reward,
    shape: SampleShape,
    rows: &[GuideRow],
    latents: &[f32],
    outputs: &[f32],
    name_row: &dyn Fn(usize) -> String,
) -> Result<Vec<Result<RowGuidance>>> {
    let per = shape.len();
    if latents.len() != rows.len() * per || outputs.len() != rows.len() * per {
        return Err(Error::shape(
            "reward guidance",
            format!(
                "{} rows of {per} values, but {} latent and {} model output values",
                rows.len(),
                latents.len(),
                outputs.len()
            ),
        ));
    }
    let mut x0 = vec![0f32; latents.len()];
    for (r, row) in rows.iter().enumerate() {
        let range = r * per..(r + 1) * per;
        row.level.x0_estimate(
            &latents[range.clone()],
            &outputs[range.clone()],
            &mut x0[range],
        );
    }
    let levels = |members: &[usize]| -> Vec<f32> {
        members.iter().map(|&r| rows[r].level.alpha_bar).collect()
    };
    let mut results: Vec<Option<Result<RowGuidance>>> = vec![None; rows.len()];
    let (active, watched): (Vec<usize>, Vec<usize>) =
        (0..rows.len()).partition(|&r| rows[r].guidance.active_at(rows[r].level.step));

    if !watched.is_empty() {
        let values =
            reward.evaluate_at(shape, &gather(&x0, &watched, per), &levels(&watched), None)?;
        check_count(&values, watched.len())?;
        for (&r, &value) in watched.iter().zip(&values) {
            results[r] = Some(
                finite_reward(value, &rows[r].level, || name_row(r)).map(|reward| RowGuidance {
                    reward,
                    shift: None,
                }),
            );
        }
    }

    // The terms stepped along: a sum's own, or the reward itself.
    let terms: Vec<(f32, &dyn Reward)> = match reward.terms() {
        Some(terms) => terms.iter().map(|(w, r)| (*w, r.as_ref())).collect(),
        None => vec![(1.0, reward)],
    };
    let mut shifts: Vec<Vec<f32>> = active.iter().map(|_| vec![0f32; per]).collect();
    let mut first_rewards: Vec<Option<f32>> = vec![None; active.len()];
    let mut failed = vec![false; active.len()];
    let iterations = active
        .iter()
        .map(|&r| rows[r].guidance.iterations)
        .max()
        .unwrap_or(0);
    for iteration in 0..iterations {
        // Positions (in `active`) of the rows still iterating.
        let taking: Vec<usize> = (0..active.len())
            .filter(|&a| !failed[a] && iteration < rows[active[a]].guidance.iterations)
            .collect();
        if taking.is_empty() {
            break;
        }
        let members: Vec<usize> = taking.iter().map(|&a| active[a]).collect();
        let batch = gather(&x0, &members, per);
        let alpha_bars = levels(&members);
        // Every term's values and (for a non-zero weight) gradient at this batch.
        let mut term_values = Vec::with_capacity(terms.len());
        let mut term_grads = Vec::with_capacity(terms.len());
        for &(w, term) in &terms {
            let mut grad = (w != 0.0).then(|| vec![0f32; batch.len()]);
            let values = term.evaluate_at(shape, &batch, &alpha_bars, grad.as_deref_mut())?;
            check_count(&values, members.len())?;
            term_values.push(values);
            term_grads.push(grad);
        }
        for (j, (&a, &r)) in taking.iter().zip(&members).enumerate() {
            let row = &rows[r];
            let total: f32 = terms
                .iter()
                .zip(&term_values)
                .map(|(&(w, _), v)| w * v[j])
                .sum();
            let value = match finite_reward(total, &row.level, || name_row(r)) {
                Ok(v) => v,
                Err(e) => {
                    failed[a] = true;
                    results[r] = Some(Err(e));
                    continue;
                }
            };
            first_rewards[a].get_or_insert(value);
            let size = row.guidance.step_size(row.level.alpha_bar);
            let normalised = row.guidance.normalize && row.guidance.form == RewardForm::X0;
            let mut step = vec![0f32; per];
            let mut bad_gradient = false;
            for ((&(w, term), values), grad) in terms.iter().zip(&term_values).zip(&term_grads) {
                let Some(grad) = grad else { continue };
                let g = &grad[j * per..(j + 1) * per];
                if g.iter().any(|v| !v.is_finite()) {
                    bad_gradient = true;
                    break;
                }
                let factor = if normalised {
                    let mean_square =
                        g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / per as f64;
                    if mean_square == 0.0 {
                        continue;
                    }
                    w * size * term.step_gate(values[j], row.level.alpha_bar)
                        / mean_square.sqrt() as f32
                } else {
                    w * size
                };
                for (s, &gv) in step.iter_mut().zip(g) {
                    *s += factor * gv;
                }
            }
            if bad_gradient {
                failed[a] = true;
                results[r] = Some(Err(Error::NonFinite {
                    what: format!("the reward gradient of {}", name_row(r)),
                    step: row.level.step,
                    timestep: row.level.timestep as f64,
                }));
                continue;
            }
            let range = r * per..(r + 1) * per;
            for ((x, s), &d) in x0[range].iter_mut().zip(shifts[a].iter_mut()).zip(&step) {
                *x += d;
                *s += d;
            }
        }
    }
    for (a, mut shift) in shifts.into_iter().enumerate() {
        let r = active[a];
        if failed[a] {
            continue;
        }
        let level = rows[r].level;
        let coefficient = output_per_x0_shift(level.prediction, level.alpha_bar);
        for d in shift.iter_mut() {
            *d *= coefficient;
        }
        results[r] = Some(Ok(RowGuidance {
            reward: first_rewards[a].unwrap_or(f32::NAN),
            shift: Some(shift),
        }));
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Error::invalid(
                    "reward guidance",
                    "a row was left without a result",
                ))
            })
        })
        .collect())
}

/// The rows `members` of `data` (rows of `per` values), back to back.
fn gather(data: &[f32], members: &[usize], per: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(members.len() * per);
    for &r in members {
        out.extend_from_slice(&data[r * per..(r + 1) * per]);
    }
    out
}

fn check_count(values: &[f32], rows: usize) -> Result<()> {
    if values.len() != rows {
        return Err(Error::shape(
            "reward",
            format!("{} values for {rows} samples", values.len()),
        ));
    }
    Ok(())
}

fn finite_reward(value: f32, level: &NoiseLevel, name: impl Fn() -> String) -> Result<f32> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NonFinite {
            what: format!("the reward of {}", name()),
            step: level.step,
            timestep: level.timestep as f64,
        })
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
