//! Noise schedulers, each a pure function of (x_t, model output, step) plus the
//! per-sample history a multistep solver needs. They mirror diffusers exactly:
//! a scheduler reads the fields it knows from a diffusers `scheduler_config.json`
//! (with diffusers' defaults for that class where a field is missing, as
//! `SomeScheduler.from_config(other_config)` does), ignores fields it does not know,
//! and refuses values it does not implement with an error naming the field.
//!
//! Everything here works on flat `f32` slices of ONE sample, so a batch may hold
//! samples at different steps or with different schedules.

use crate::error::Result;

/// The scheduler algorithms the engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddpm,
    Ddim,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// Settings chosen per request rather than read from the scheduler config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleOptions {
    /// DDIM's eta (0 = deterministic DDIM). Ignored by the other schedulers.
    pub eta: f64,
    /// Overrides the config's `use_karras_sigmas` (Euler, DPM-Solver++) when set.
    pub karras: Option<bool>,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        ScheduleOptions { eta: 0.0, karras: None }
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
}
