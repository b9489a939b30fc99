//! Ancestral sampling with Euler steps, as diffusers'
//! `EulerAncestralDiscreteScheduler`: an Euler step down to σ_down followed by fresh
//! noise of scale σ_up, with σ_down² + σ_up² = σ_next².

use super::betas::{interp, spaced_timesteps, TimestepSpacing, TrainSchedule};
use super::config::SchedulerConfig;
use super::euler::{euler_linear, init_noise_sigma, pred_original, v_factors};
use super::{
    check_num_steps, check_step_args, check_step_index, refuse_karras, LinearStep, PredictionType,
    ScheduleOptions, Scheduler, SchedulerKind, StepState,
};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct EulerAncestral {
    timesteps: Vec<f32>,
    /// One per step plus the final 0.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    init_noise_sigma: f32,
}

impl EulerAncestral {
    pub fn new(
        config: &SchedulerConfig,
        num_steps: usize,
        options: &ScheduleOptions,
    ) -> Result<Self> {
        let kind = SchedulerKind::EulerAncestral;
        refuse_karras(kind, options)?;
        let train = TrainSchedule::from_config(config, kind)?;
        let prediction = PredictionType::from_config(config, kind)?;
        let spacing = TimestepSpacing::from_config(config, TimestepSpacing::Linspace)?;
        let steps_offset = config.usize("steps_offset", 0)?;

        check_num_steps(kind, config, num_steps, train.num_train_timesteps)?;
        let train_sigmas = train.sigmas();
        let timesteps: Vec<f32> = spaced_timesteps(
            spacing,
            train.num_train_timesteps,
            num_steps,
            steps_offset,
            false,
        )
        .into_iter()
        .map(|t| t as f32)
        .collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| interp(t as f64, &train_sigmas) as f32)
            .collect();
        sigmas.push(0.0);
        let init_noise_sigma = init_noise_sigma(&sigmas, spacing);
        Ok(EulerAncestral {
            timesteps,
            sigmas,
            prediction,
            init_noise_sigma,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
    }

    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, step: usize) -> f32 {
        self.timesteps[step]
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn input_scale(&self, step: usize) -> f32 {
        let sigma = self.sigmas[step];
        1.0 / (sigma * sigma + 1.0).sqrt()
    }

    fn input_scale_after(&self, step: usize) -> f32 {
        self.input_scale(step + 1)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn needs_noise(&self, _step: usize) -> bool {
        true
    }

    fn step(
        &self,
        step: usize,
        _state: &mut StepState,
        sample: &[f32],
        model_output: &[f32],
        noise: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        check_step_args(self, step, sample, model_output, noise, out)?;
        let (sigma, sigma_up, dt) = self.step_sigmas(step);
        let (v_out, v_skip) = v_factors(sigma);
        let noise = noise.unwrap_or(&[]);
        for (((o, &x), &m), &z) in out.iter_mut().zip(sample).zip(model_output).zip(noise) {
            let x0 = pred_original(self.prediction, sigma, v_out, v_skip, x, m);
            let derivative = (x - x0) / sigma;
            *o = (x + derivative * dt) + z * sigma_up;
        }
        Ok(())
    }

    fn linear_step(&self, step: usize, _state: &StepState) -> Result<LinearStep> {
        check_step_index(self, step)?;
        let (sigma, sigma_up, dt) = self.step_sigmas(step);
        Ok(euler_linear(self.prediction, sigma, dt, sigma_up))
    }
}

impl EulerAncestral {
    /// (σ, σ_up, dt = σ_down − σ) of `step`.
    fn step_sigmas(&self, step: usize) -> (f32, f32, f32) {
        let sigma = self.sigmas[step];
        let sigma_to = self.sigmas[step + 1];
        let (from2, to2) = (sigma * sigma, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        (sigma, sigma_up, sigma_down - sigma)
    }
}
