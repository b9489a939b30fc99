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

    use crate::reward::{InkReward, WeightedSum};
    use crate::schedule::{build, ScheduleOptions, SchedulerConfig, SchedulerKind};

    fn assert_close(what: &str, got: f32, want: f32, tolerance: f32) {
        assert!(
            (got - want).abs() <= tolerance,
            "{what}: got {got}, want {want}"
        );
    }

    /// The `name` of the argument a setting is refused under.
    fn refused_as(result: Result<()>) -> String {
        match result {
            Err(Error::InvalidArgument { name, .. }) => name,
            other => panic!("expected a refused argument, got {other:?}"),
        }
    }

    #[test]
    fn x0_estimate_and_output_shift_match_hand_derived_values() {
        // ᾱ = 0.64: √ᾱ = 0.8, √(1 − ᾱ) = 0.6; model input 0.5, output 0.75.
        let cases = [
            (
                PredictionType::Epsilon,
                (0.5 - 0.6 * 0.75) / 0.8,
                -0.8 / 0.6,
            ),
            (
                PredictionType::VPrediction,
                0.8 * 0.5 - 0.6 * 0.75,
                -1.0 / 0.6,
            ),
            (PredictionType::Sample, 0.75, 1.0),
        ];
        for (prediction, x0, per_shift) in cases {
            let what = format!("{prediction:?}");
            assert_close(&what, x0_estimate(prediction, 0.64, 0.5, 0.75), x0, 1e-6);
            assert_close(
                &what,
                output_per_x0_shift(prediction, 0.64),
                per_shift,
                1e-5,
            );
        }
    }

    #[test]
    fn step_size_follows_the_form_and_the_schedule() {
        let constant = RewardGuidance {
            scale: 0.5,
            ..RewardGuidance::default()
        };
        let noise_level = RewardGuidance {
            schedule: RhoSchedule::NoiseLevel,
            ..constant
        };
        let eps = RewardGuidance {
            form: RewardForm::Eps,
            ..constant
        };
        // ᾱ = 0.64: ρ; ρ·√(1 − ᾱ) = 0.5·0.6; s·(1 − ᾱ)/√ᾱ = 0.5·0.36/0.8.
        assert_close("constant", constant.step_size(0.64), 0.5, 1e-7);
        assert_close("noise level", noise_level.step_size(0.64), 0.3, 1e-6);
        assert_close("eps", eps.step_size(0.64), 0.225, 1e-6);
    }

    #[test]
    fn recommended_leaves_the_last_tenth_unguided() {
        let r = RewardGuidance::recommended(50);
        assert_eq!(
            r,
            RewardGuidance {
                form: RewardForm::X0,
                scale: 0.6,
                schedule: RhoSchedule::NoiseLevel,
                normalize: true,
                iterations: 1,
                window: GuidanceInterval { start: 0, stop: 45 },
                recurrence: 1,
            }
        );
        assert_eq!(RewardGuidance::recommended(1).window.stop, 1);
    }

    #[test]
    fn validate_accepts_the_edges_and_names_each_bad_setting() {
        let max = crate::rng::MAX_RENOISE_REPEATS as usize;
        let with = |edit: &dyn Fn(&mut RewardGuidance)| {
            let mut g = RewardGuidance::default();
            edit(&mut g);
            g.validate()
        };
        let eps = |iterations: usize| {
            move |g: &mut RewardGuidance| {
                g.form = RewardForm::Eps;
                g.iterations = iterations;
            }
        };
        for ok in [
            with(&|_| {}),
            with(&|g| g.scale = 0.0),
            with(&|g| g.iterations = 2),
            with(&eps(1)),
            with(&|g| g.recurrence = max),
            with(&|g| g.window = GuidanceInterval { start: 3, stop: 4 }),
        ] {
            assert!(ok.is_ok(), "{ok:?}");
        }
        for (bad, name) in [
            (with(&|g| g.scale = -0.1), "reward-scale"),
            (with(&|g| g.scale = f32::NAN), "reward-scale"),
            (with(&|g| g.scale = f32::INFINITY), "reward-scale"),
            (with(&|g| g.iterations = 0), "reward-iters"),
            (with(&eps(2)), "reward-iters"),
            (with(&|g| g.recurrence = 0), "recur"),
            (with(&|g| g.recurrence = max + 1), "recur"),
            (
                with(&|g| g.window = GuidanceInterval { start: 3, stop: 3 }),
                "reward-window",
            ),
        ] {
            assert_eq!(refused_as(bad), name);
        }
    }

    #[test]
    fn guidance_acts_inside_its_window_at_a_positive_scale() {
        let g = RewardGuidance {
            window: GuidanceInterval { start: 2, stop: 4 },
            recurrence: 3,
            ..RewardGuidance::default()
        };
        let (f, t) = (false, true);
        assert_eq!(
            (0..5).map(|s| g.active_at(s)).collect::<Vec<_>>(),
            [f, f, t, t, f]
        );
        assert_eq!(
            (0..5).map(|s| g.repeats_at(s)).collect::<Vec<_>>(),
            [1, 1, 3, 3, 1]
        );
        let off = RewardGuidance { scale: 0.0, ..g };
        assert!((0..5).all(|s| !off.active_at(s) && off.repeats_at(s) == 1));
    }

    fn euler(steps: usize) -> Box<dyn Scheduler> {
        let config = SchedulerConfig::from_json_str("{}", "test").expect("config");
        let options = ScheduleOptions {
            eta: 0.0,
            karras: None,
        };
        build(SchedulerKind::Euler, &config, steps, &options).expect("scheduler")
    }

    #[test]
    fn an_euler_level_estimates_x0_as_latent_minus_sigma_eps() {
        // Euler's input scale is 1/√(σ² + 1) = √ᾱ, so x̂₀ = x_t − σ·ε in σ space.
        let s = euler(10);
        let level = NoiseLevel::at(s.as_ref(), 3);
        assert_eq!(
            level,
            NoiseLevel {
                prediction: PredictionType::Epsilon,
                alpha_bar: s.alpha_bar(3),
                input_scale: s.input_scale(3),
                step: 3,
                timestep: s.timestep(3),
            }
        );
        let sigma = s.sigmas().expect("Euler has sigmas")[3];
        assert!(sigma > 1.0, "step 3 of 10 is noisy: σ = {sigma}");
        let (latent, eps) = ([1.0f32, -2.0], [0.5f32, 0.25]);
        let mut x0 = [0f32; 2];
        level.x0_estimate(&latent, &eps, &mut x0);
        for ((&got, &l), &e) in x0.iter().zip(&latent).zip(&eps) {
            assert_close("x0", got, l - sigma * e, 1e-5 * sigma.max(1.0));
        }
    }

    #[test]
    fn renoise_adds_the_variance_between_the_two_levels() {
        // In Euler's σ space a step from σ₃ lands on σ₄; going back keeps x₀ and adds
        // noise of variance σ₃² − σ₄².
        let s = euler(10);
        let sigmas = s.sigmas().expect("Euler has sigmas");
        let added = (sigmas[3] * sigmas[3] - sigmas[4] * sigmas[4]).sqrt();
        let (after, z) = ([0.5f32, -1.0, 0.25], [0.0f32, 0.0, 1.0]);
        let mut out = [0f32; 3];
        renoise(s.as_ref(), 3, &after, &z, &mut out);
        let want = [0.5, -1.0, 0.25 + added];
        for (&got, &want) in out.iter().zip(&want) {
            assert_close("renoised", got, want, 1e-4 * added.max(1.0));
        }
    }

    fn level(
        prediction: PredictionType,
        alpha_bar: f32,
        input_scale: f32,
        step: usize,
    ) -> NoiseLevel {
        NoiseLevel {
            prediction,
            alpha_bar,
            input_scale,
            step,
            timestep: 999.0 - step as f32,
        }
    }

    fn row_name(r: usize) -> String {
        format!("row {r}")
    }

    /// An `Ok` row's reward and shift (`None`: watched only).
    fn ok_row(result: &Result<RowGuidance>) -> (f32, Option<Vec<f32>>) {
        match result {
            Ok(row) => (row.reward, row.shift.clone()),
            Err(e) => panic!("expected a guided row, got {e}"),
        }
    }

    fn assert_row(r: usize, result: &Result<RowGuidance>, reward: f32, shift: Option<f32>) {
        let (got_reward, got_shift) = ok_row(result);
        assert_close(&format!("row {r} reward"), got_reward, reward, 1e-3);
        match (got_shift, shift) {
            (None, None) => {}
            (Some(got), Some(want)) => {
                assert_eq!(got.len(), 4, "row {r}");
                for v in got {
                    assert_close(&format!("row {r} shift"), v, want, 1e-4);
                }
            }
            (got, want) => panic!("row {r}: shift {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn guide_rows_steps_each_row_by_its_own_settings() {
        // ink:0.5 on 2×2 samples: r = −(m − 0.5)²/(2·0.05²) with m = (mean + 1)/2, and
        // ∂r/∂x = −(m − 0.5)/0.05²/8 = −50·(m − 0.5) on every pixel, so the
        // normalised gradient is ±1 everywhere. A pixel shift Δ moves m by Δ/2.
        let reward = InkReward::new(0.5).expect("ink");
        let shape = SampleShape::new(2, 2, 1);
        let window = GuidanceInterval { start: 0, stop: 5 };
        let normalised = RewardGuidance {
            scale: 0.5,
            schedule: RhoSchedule::NoiseLevel,
            window,
            ..RewardGuidance::default()
        };
        let raw = RewardGuidance {
            scale: 0.01,
            normalize: false,
            iterations: 2,
            window,
            ..RewardGuidance::default()
        };
        let eps = RewardGuidance {
            form: RewardForm::Eps,
            scale: 2.0,
            window,
            ..RewardGuidance::default()
        };
        use crate::schedule::PredictionType::{Epsilon, Sample};
        let rows = [
            // 0: step 9 is outside the window: evaluated only. x̂₀ = the output,
            // mean 0.5, m = 0.75: r = −0.25²/0.005 = −12.5.
            GuideRow {
                level: level(Sample, 0.64, 1.0, 9),
                guidance: &normalised,
            },
            // 1: ε at ᾱ = 0.64 (√ᾱ = 0.8, √(1−ᾱ) = 0.6), input scale 0.5: x̂₀ =
            // (0.5·latent − 0.6·ε)/0.8 = (−0.5, 0.1, −0.2, −0.2), m = 0.4, r = −2.
            // Raw steps of 0.01·g: g = 5 gives Δ = 0.05 (m = 0.425), then g = 3.75
            // gives 0.0375; the output moves by 0.0875·(−0.8/0.6).
            GuideRow {
                level: level(Epsilon, 0.64, 0.5, 2),
                guidance: &raw,
            },
            // 2: ε at ᾱ = 0.36: x̂₀ = (0.8, 0.6, 1.0, 0.8), m = 0.9, r = −0.4²/0.005
            // = −32. One normalised step of ρ·√(1−ᾱ) = 0.5·0.8 = 0.4 down; the
            // output moves by −0.4·(−0.6/0.8) = 0.3.
            GuideRow {
                level: level(Epsilon, 0.36, 1.0, 0),
                guidance: &normalised,
            },
            // 3: the ε form at ᾱ = 0.64: x̂₀ = (−0.1, −0.3, 0.1, −0.1), m = 0.45,
            // r = −0.5, g = 2.5; Δ = 2·0.36/0.8·2.5 = 2.25, output −2.25·0.8/0.6 = −3
            // (= −s·√(1−ᾱ)·g, classifier guidance).
            GuideRow {
                level: level(Epsilon, 0.64, 1.0, 4),
                guidance: &eps,
            },
            // 4: x̂₀ = 1e20 everywhere: the reward overflows to −∞, an error of this
            // row alone.
            GuideRow {
                level: level(Sample, 0.64, 1.0, 1),
                guidance: &normalised,
            },
        ];
        #[rustfmt::skip]
        let latents = [
            0.3, -0.3, 0.1, 0.7,
            -0.68, -0.20, -0.08, -0.32,
            0.88, -0.04, 0.8, 0.48,
            0.04, -0.12, -0.04, -0.2,
            0.0, 0.0, 0.0, 0.0,
        ];
        #[rustfmt::skip]
        let outputs = [
            0.2, 0.4, 0.6, 0.8,
            0.1, -0.3, 0.2, 0.0,
            0.5, -0.5, 0.25, 0.0,
            0.2, 0.2, -0.2, -0.2,
            1e20, 1e20, 1e20, 1e20,
        ];
        let results =
            guide_rows(&reward, shape, &rows, &latents, &outputs, &row_name).expect("batch");
        assert_eq!(results.len(), 5);
        assert_row(0, &results[0], -12.5, None);
        assert_row(1, &results[1], -2.0, Some(0.0875 * -0.8 / 0.6));
        assert_row(2, &results[2], -32.0, Some(0.3));
        assert_row(3, &results[3], -0.5, Some(-3.0));
        match &results[4] {
            Err(e @ Error::NonFinite { step: 1, .. }) => {
                assert!(e.to_string().contains("the reward of row 4"), "{e}")
            }
            other => panic!("row 4: expected a non-finite reward, got {other:?}"),
        }
    }

    #[test]
    fn guide_rows_steps_a_sum_by_its_weighted_terms() {
        // 2·ink:0.5 + 0·ink:0.9: the zero-weight term is evaluated but does not
        // steer; the other moves x̂₀ by 2·ρ·ĝ, ĝ = ±1 (see the test above).
        let sum = WeightedSum::new(vec![
            (
                2.0,
                Box::new(InkReward::new(0.5).expect("ink")) as Box<dyn Reward>,
            ),
            (0.0, Box::new(InkReward::new(0.9).expect("ink"))),
        ])
        .expect("sum");
        let g = RewardGuidance {
            scale: 0.25,
            ..RewardGuidance::default()
        };
        let rows = [
            // m = 0.75: 2·(−12.5) + 0·(−0.15²/0.005); Δ = 2·0.25·(−1), output ×1.
            GuideRow {
                level: level(PredictionType::Sample, 0.64, 1.0, 0),
                guidance: &g,
            },
            // m = 0.45: 2·(−0.5); Δ = +0.5, output ×(−0.8/0.6).
            GuideRow {
                level: level(PredictionType::Epsilon, 0.64, 1.0, 3),
                guidance: &g,
            },
        ];
        let latents = [0.0, 0.0, 0.0, 0.0, 0.04, -0.12, -0.04, -0.2];
        let outputs = [0.2, 0.4, 0.6, 0.8, 0.2, 0.2, -0.2, -0.2];
        let shape = SampleShape::new(2, 2, 1);
        let results = guide_rows(&sum, shape, &rows, &latents, &outputs, &row_name).expect("batch");
        assert_eq!(results.len(), 2);
        assert_row(0, &results[0], -25.0, Some(-0.5));
        assert_row(1, &results[1], -1.0, Some(0.5 * -0.8 / 0.6));
    }

    #[test]
    fn a_gated_normalised_step_is_scaled_by_the_gate() {
        // `avoid:` on the test fixture classifier: at ᾱ = 0.1 (√(1−ᾱ) ≈ 0.95, above
        // where `avoid:` stops) its gate is 0.7·√p, neither 0 nor 1. The x̂₀ shift must
        // be ρ·gate·g/rms(g), from the reward's own value, gradient and gate.
        use crate::reward::{Classifier, ClassifierReward};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/rewards/classifier");
        let classifier = std::sync::Arc::new(Classifier::load(&dir).expect("fixture"));
        let reward = ClassifierReward::avoid(classifier, 2).expect("avoid");
        let shape = SampleShape::new(11, 13, 3);
        let per = shape.len();
        let x0: Vec<f32> = (0..per)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let alpha_bar = 0.1;
        let mut g = vec![0f32; per];
        let value = reward
            .evaluate_at(shape, &x0, &[alpha_bar], Some(&mut g))
            .expect("eval")[0];
        let gate = reward.step_gate(value, alpha_bar);
        assert!(gate > 0.01 && gate < 0.99, "gate {gate}");
        let rms = (g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / per as f64).sqrt();
        let guidance = RewardGuidance {
            scale: 0.5,
            ..RewardGuidance::default()
        };
        let rows = [GuideRow {
            level: level(PredictionType::Sample, alpha_bar, 1.0, 0),
            guidance: &guidance,
        }];
        let results = guide_rows(&reward, shape, &rows, &x0, &x0, &row_name).expect("batch");
        let (got_reward, shift) = ok_row(&results[0]);
        assert_close("reward", got_reward, value, 1e-6);
        let shift = shift.expect("guided");
        let biggest = g.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for (i, (&s, &gi)) in shift.iter().zip(&g).enumerate() {
            let want = (0.5 * gate as f64 * gi as f64 / rms) as f32;
            let tolerance = (1e-5 * 0.5 * biggest / rms) as f32;
            assert_close(&format!("shift[{i}]"), s, want, tolerance);
        }
    }

    #[test]
    fn guide_rows_refuses_buffers_of_the_wrong_length() {
        let reward = InkReward::new(0.5).expect("ink");
        let g = RewardGuidance::default();
        let row = GuideRow {
            level: level(PredictionType::Sample, 0.64, 1.0, 0),
            guidance: &g,
        };
        let shape = SampleShape::new(2, 2, 1);
        let rows = [row, row];
        let (eight, seven) = ([0.1f32; 8], [0.1f32; 7]);
        for (latents, outputs) in [(&seven[..], &eight[..]), (&eight[..], &seven[..])] {
            match guide_rows(&reward, shape, &rows, latents, outputs, &row_name) {
                Err(Error::Shape { .. }) => {}
                other => panic!("expected a shape error, got {other:?}"),
            }
        }
        assert!(guide_rows(&reward, shape, &rows, &eight, &eight, &row_name).is_ok());
    }
}
