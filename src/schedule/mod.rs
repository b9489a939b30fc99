//! Noise schedulers, each a pure function of (x_t, model output, step) plus the
//! per-sample history a multistep solver needs. They mirror diffusers exactly:
//! a scheduler reads the fields it knows from a diffusers `scheduler_config.json`
//! (with diffusers' defaults for that class where a field is missing, as
//! `SomeScheduler.from_config(other_config)` does), ignores fields it does not know,
//! and refuses values it does not implement with an error naming the field.
//!
//! Everything here works on flat `f32` slices of ONE sample, so a batch may hold
//! samples at different steps or with different schedules.
//!
//! Numerics: the schedule set-up reproduces diffusers' float32 torch / float64
//! numpy arithmetic (see [`betas`]), and every step evaluates diffusers' float32
//! expressions in the same order, so results agree to rounding. What cannot be
//! reproduced is the last bit of torch's float32 `sqrt`, `log` and `exp` on CPU:
//! they go through MKL / vectorised kernels that are not correctly rounded (and
//! differ between CPUs), whereas this crate uses correctly rounded `sqrt` and the
//! platform `ln` / `exp`. The fixture test (`tests/schedulers.rs`) bounds the effect.

pub mod betas;
pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod linear;

pub use config::SchedulerConfig;
pub use linear::LinearStep;

use crate::error::{Error, Result};

/// The scheduler algorithms the engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddpm,
    Ddim,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 5] = [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
    ];

    /// The name used on the command line (`ddpm`, `ddim`, `euler`, `euler-a`, `dpm++2m`).
    pub fn cli_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "ddpm",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::DpmSolverMultistep => "dpm++2m",
        }
    }

    pub fn from_cli_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.cli_name() == name)
    }

    /// The diffusers class implementing this algorithm.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.class_name() == name)
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

impl PredictionType {
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }

    /// Reads `prediction_type` (default "epsilon"), accepting only what `kind` supports.
    pub fn from_config(config: &SchedulerConfig, kind: SchedulerKind) -> Result<Self> {
        let mut accepted = vec![
            ("epsilon", PredictionType::Epsilon),
            ("v_prediction", PredictionType::VPrediction),
        ];
        match kind {
            // diffusers raises NotImplementedError for "sample" in Euler ancestral.
            SchedulerKind::EulerAncestral => {}
            // EulerDiscreteScheduler also takes the older spelling.
            SchedulerKind::Euler => {
                accepted.push(("sample", PredictionType::Sample));
                accepted.push(("original_sample", PredictionType::Sample));
            }
            _ => accepted.push(("sample", PredictionType::Sample)),
        }
        config.choice("prediction_type", PredictionType::Epsilon, &accepted)
    }
}

/// Settings chosen per request rather than read from the scheduler config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleOptions {
    /// DDIM's eta in [0, 1] (0 = deterministic DDIM). Ignored by the other schedulers.
    pub eta: f64,
    /// Overrides the config's `use_karras_sigmas` (Euler, DPM-Solver++) when set;
    /// `Some(true)` is an error for the schedulers without Karras sigmas.
    pub karras: Option<bool>,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        ScheduleOptions {
            eta: 0.0,
            karras: None,
        }
    }
}

/// Per-sample history carried from one step to the next (multistep solvers keep
/// their previous model outputs here). Start each sample with [`Scheduler::new_state`].
#[derive(Debug, Clone, Default)]
pub struct StepState {
    pub history: Vec<Vec<f32>>,
    pub lower_order_nums: usize,
}

/// A scheduler fixed for a number of inference steps.
pub trait Scheduler: Send + Sync {
    fn kind(&self) -> SchedulerKind;
    fn num_steps(&self) -> usize;
    /// The timestep given to the model at `step` (0-based), as diffusers passes it.
    fn timestep(&self, step: usize) -> f32;
    /// x_T = noise × this.
    fn init_noise_sigma(&self) -> f32;
    /// The model sees x_t × this at `step` (diffusers' `scale_model_input`).
    fn input_scale(&self, step: usize) -> f32;
    /// The noise levels σ of the steps plus the one the last step lands on
    /// (`num_steps + 1` values) for the schedulers that work in σ (Euler, Euler
    /// ancestral, DPM-Solver++); `None` for DDPM and DDIM.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
    /// What the model output means.
    fn prediction_type(&self) -> PredictionType;
    /// ᾱ of the noise level the model sees at `step`: the model input
    /// x_t × [`Scheduler::input_scale`] is √ᾱ·x₀ + √(1−ᾱ)·ε. The default reads it
    /// from [`Scheduler::sigmas`]; schedulers without sigmas override it.
    fn alpha_bar(&self, step: usize) -> f32 {
        self.sigmas().map_or(1.0, |s| alpha_bar_of_sigma(s[step]))
    }
    /// ᾱ of the noise level `step` lands on (1 when it returns a clean sample).
    fn alpha_bar_after(&self, step: usize) -> f32 {
        self.sigmas()
            .map_or(1.0, |s| alpha_bar_of_sigma(s[step + 1]))
    }
    /// What `step`'s result is multiplied by to be √ᾱ·x₀ + √(1−ᾱ)·ε at the level it
    /// lands on (1 for the variance-preserving schedulers, 1/√(σ²+1) for Euler's).
    fn input_scale_after(&self, _step: usize) -> f32 {
        1.0
    }
    /// Whether `step` consumes fresh Gaussian noise (same shape as the sample).
    fn needs_noise(&self, step: usize) -> bool;
    fn new_state(&self) -> StepState {
        StepState::default()
    }
    /// x_{t-1} of one sample from x_t (`sample`) and the (guided) model output.
    /// `noise` must be `Some` exactly when [`Scheduler::needs_noise`] says so.
    fn step(
        &self,
        step: usize,
        state: &mut StepState,
        sample: &[f32],
        model_output: &[f32],
        noise: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()>;

    /// `step` as per-sample coefficients of one elementwise formula (see
    /// [`LinearStep`]), for the fused GPU step. `state` is the sample's state before
    /// the step; afterwards pass the step's x̂₀ to [`Scheduler::record_history`].
    fn linear_step(&self, step: usize, state: &StepState) -> Result<LinearStep>;

    /// Whether the next step reads this step's x̂₀ (multistep solvers).
    fn records_history(&self) -> bool {
        false
    }

    /// Updates `state` after a step taken through [`Scheduler::linear_step`], with
    /// that step's unclamped x̂₀: what [`Scheduler::step`] records itself.
    fn record_history(&self, _state: &mut StepState, _x0: Vec<f32>) {}
}

/// Refuses a step index past the schedule (for [`Scheduler::linear_step`]).
pub(crate) fn check_step_index(scheduler: &dyn Scheduler, step: usize) -> Result<()> {
    if step >= scheduler.num_steps() {
        return Err(Error::invalid(
            "step",
            format!(
                "step {step} of a {} schedule with {} steps",
                scheduler.kind(),
                scheduler.num_steps()
            ),
        ));
    }
    Ok(())
}

/// Builds the scheduler `kind` for `num_steps` inference steps from a diffusers
/// scheduler config, reading the fields diffusers' class for `kind` reads (with that
/// class's defaults), exactly as `Class.from_config(config).set_timesteps(num_steps)`.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_steps: usize,
    options: &ScheduleOptions,
) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        SchedulerKind::Ddpm => Box::new(ddpm::Ddpm::new(config, num_steps, options)?),
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, num_steps, options)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config, num_steps, options)?),
        SchedulerKind::EulerAncestral => Box::new(euler_ancestral::EulerAncestral::new(
            config, num_steps, options,
        )?),
        SchedulerKind::DpmSolverMultistep => Box::new(dpm_solver::DpmSolverMultistep::new(
            config, num_steps, options,
        )?),
    })
}

/// Refuses a step count of 0 or more than the training timesteps.
pub(crate) fn check_num_steps(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_steps: usize,
    num_train: usize,
) -> Result<()> {
    if num_steps == 0 || num_steps > num_train {
        return Err(Error::invalid(
            "num_steps",
            format!(
                "{num_steps} inference steps requested; {} with num_train_timesteps = {num_train} (from {}) takes 1 to {num_train}",
                kind.class_name(),
                config.origin().display()
            ),
        ));
    }
    Ok(())
}

/// Refuses `karras = Some(true)` for a scheduler without Karras sigmas.
pub(crate) fn refuse_karras(kind: SchedulerKind, options: &ScheduleOptions) -> Result<()> {
    if options.karras == Some(true) {
        return Err(Error::invalid(
            "karras",
            format!("Karras sigmas are only available for euler and dpm++2m, not {kind}"),
        ));
    }
    Ok(())
}

/// Reads `clip_sample` (default true) and `clip_sample_range` (default 1) of DDPM and
/// DDIM, and refuses `thresholding` (dynamic thresholding is not implemented).
pub(crate) fn clip_from_config(config: &SchedulerConfig) -> Result<Option<f32>> {
    let clip_sample = config.bool("clip_sample", true)?;
    let range = config.f64("clip_sample_range", 1.0)?;
    if !(range >= 0.0 && range.is_finite()) {
        return Err(config.error(
            "clip_sample_range",
            format!("found {range}; expected a finite number >= 0"),
        ));
    }
    config.require_bool(
        "thresholding",
        false,
        false,
        "dynamic thresholding is not implemented",
    )?;
    config.check_number("dynamic_thresholding_ratio")?;
    config.check_number("sample_max_value")?;
    Ok(clip_sample.then_some(range as f32))
}

/// Checks the arguments of [`Scheduler::step`] common to every scheduler.
pub(crate) fn check_step_args(
    scheduler: &dyn Scheduler,
    step: usize,
    sample: &[f32],
    model_output: &[f32],
    noise: Option<&[f32]>,
    out: &[f32],
) -> Result<()> {
    let kind = scheduler.kind();
    if step >= scheduler.num_steps() {
        return Err(Error::invalid(
            "step",
            format!(
                "step {step} of a {kind} schedule with {} steps (valid: 0 to {})",
                scheduler.num_steps(),
                scheduler.num_steps() - 1
            ),
        ));
    }
    let n = sample.len();
    if model_output.len() != n || out.len() != n {
        return Err(Error::shape(
            format!("{kind} step"),
            format!(
                "sample has {n} elements, model output {}, output buffer {}; all must be equal",
                model_output.len(),
                out.len()
            ),
        ));
    }
    match (scheduler.needs_noise(step), noise) {
        (true, None) => Err(Error::invalid(
            "noise",
            format!("{kind} step {step} adds fresh noise, but no noise slice was given"),
        )),
        (false, Some(_)) => Err(Error::invalid(
            "noise",
            format!("{kind} step {step} takes no noise, but a noise slice was given"),
        )),
        (true, Some(z)) if z.len() != n => Err(Error::shape(
            format!("{kind} step"),
            format!("noise has {} elements, sample {n}", z.len()),
        )),
        _ => Ok(()),
    }
}

/// ᾱ of the noise level σ of the schedulers that work in σ = √((1−ᾱ)/ᾱ).
#[inline]
pub(crate) fn alpha_bar_of_sigma(sigma: f32) -> f32 {
    1.0 / (sigma * sigma + 1.0)
}

/// The x0 prediction of the variance-preserving schedulers (DDPM, DDIM) from
/// sqrt(ᾱ_t) and sqrt(1 − ᾱ_t), elementwise as diffusers evaluates it.
#[inline]
pub(crate) fn vp_pred_original(
    prediction: PredictionType,
    sqrt_alpha: f32,
    sqrt_beta: f32,
    x: f32,
    m: f32,
) -> f32 {
    match prediction {
        PredictionType::Epsilon => (x - sqrt_beta * m) / sqrt_alpha,
        PredictionType::VPrediction => sqrt_alpha * x - sqrt_beta * m,
        PredictionType::Sample => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in SchedulerKind::ALL {
            assert_eq!(SchedulerKind::from_cli_name(kind.cli_name()), Some(kind));
            assert_eq!(
                SchedulerKind::from_class_name(kind.class_name()),
                Some(kind)
            );
        }
        assert_eq!(
            SchedulerKind::from_cli_name("dpm++2m"),
            Some(SchedulerKind::DpmSolverMultistep)
        );
        assert_eq!(SchedulerKind::from_cli_name("pndm"), None);
    }
}
