//! The Euler method of Karras et al. (2022, algorithm 2) as diffusers'
//! `EulerDiscreteScheduler`, without churn (`s_churn = 0`, diffusers' default, so
//! the step is deterministic).

use super::betas::{
    interp, karras_sigmas, log_sigmas, sigma_to_t, spaced_timesteps, TimestepSpacing, TrainSchedule,
};
use super::config::SchedulerConfig;
use super::{
    check_num_steps, check_step_args, check_step_index, LinearStep, PredictionType,
    ScheduleOptions, Scheduler, SchedulerKind, StepState,
};
use crate::error::Result;

/// `final_sigmas_type`: where the last step lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigma {
    Zero,
    /// The smallest training sigma.
    SigmaMin,
}

impl FinalSigma {
    pub(crate) fn from_config(config: &SchedulerConfig) -> Result<Self> {
        config.choice(
            "final_sigmas_type",
            FinalSigma::Zero,
            &[
                ("zero", FinalSigma::Zero),
                ("sigma_min", FinalSigma::SigmaMin),
            ],
        )
    }

    pub(crate) fn value(self, train_sigmas: &[f32]) -> f32 {
        match self {
            FinalSigma::Zero => 0.0,
            FinalSigma::SigmaMin => train_sigmas[0],
        }
    }
}

/// Refuses the alternative sigma schedules the engine does not implement (Euler and
/// DPM-Solver both know these fields).
pub(crate) fn refuse_other_sigma_schedules(config: &SchedulerConfig) -> Result<()> {
    config.require_bool(
        "use_exponential_sigmas",
        false,
        false,
        "exponential sigmas are not implemented",
    )?;
    config.require_bool(
        "use_beta_sigmas",
        false,
        false,
        "beta sigmas are not implemented",
    )?;
    Ok(())
}

/// Whether Karras sigmas are used: the request's choice, else `use_karras_sigmas`.
pub(crate) fn use_karras(config: &SchedulerConfig, options: &ScheduleOptions) -> Result<bool> {
    let configured = config.bool("use_karras_sigmas", false)?;
    Ok(options.karras.unwrap_or(configured))
}

#[derive(Debug, Clone)]
pub struct Euler {
    timesteps: Vec<f32>,
    /// One per step plus the final one.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    init_noise_sigma: f32,
}

impl Euler {
    pub fn new(
        config: &SchedulerConfig,
        num_steps: usize,
        options: &ScheduleOptions,
    ) -> Result<Self> {
        let kind = SchedulerKind::Euler;
        let train = TrainSchedule::from_config(config, kind)?;
        let prediction = PredictionType::from_config(config, kind)?;
        config.choice("interpolation_type", (), &[("linear", ())])?;
        let karras = use_karras(config, options)?;
        refuse_other_sigma_schedules(config)?;
        let sigma_min = config.opt_f64("sigma_min")?;
        let sigma_max = config.opt_f64("sigma_max")?;
        let spacing = TimestepSpacing::from_config(config, TimestepSpacing::Linspace)?;
        let continuous = config.choice(
            "timestep_type",
            false,
            &[("discrete", false), ("continuous", true)],
        )?;
        let steps_offset = config.usize("steps_offset", 0)?;
        let final_sigma = FinalSigma::from_config(config)?;

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
        let interpolated: Vec<f64> = timesteps
            .iter()
            .map(|&t| interp(t as f64, &train_sigmas))
            .collect();
        let (sigmas, timesteps) = if karras {
            let lo = sigma_min.unwrap_or(interpolated[num_steps - 1]);
            let hi = sigma_max.unwrap_or(interpolated[0]);
            let sigmas = karras_sigmas(lo, hi, num_steps);
            let logs = log_sigmas(&train_sigmas);
            let timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &logs) as f32)
                .collect();
            (sigmas, timesteps)
        } else {
            (interpolated, timesteps)
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(final_sigma.value(&train_sigmas));
        let timesteps = if continuous && prediction == PredictionType::VPrediction {
            sigmas[..num_steps].iter().map(|s| 0.25 * s.ln()).collect()
        } else {
            timesteps
        };
        let init_noise_sigma = init_noise_sigma(&sigmas, spacing);
        Ok(Euler {
            timesteps,
            sigmas,
            prediction,
            init_noise_sigma,
        })
    }
}

/// diffusers' `init_noise_sigma` of the Euler family: the largest sigma, or
/// sqrt(σ_max² + 1) with "leading" spacing.
pub(crate) fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// x0 from the model output at noise level `sigma` (Euler and Euler ancestral).
#[inline]
pub(crate) fn pred_original(
    prediction: PredictionType,
    sigma: f32,
    v_out: f32,
    v_skip: f32,
    x: f32,
    m: f32,
) -> f32 {
    match prediction {
        PredictionType::Epsilon => x - sigma * m,
        PredictionType::VPrediction => m * v_out + x / v_skip,
        PredictionType::Sample => m,
    }
}

/// The v-prediction factors at `sigma`: (−σ / sqrt(σ² + 1), σ² + 1).
pub(crate) fn v_factors(sigma: f32) -> (f32, f32) {
    let s2p1 = sigma * sigma + 1.0;
    (-sigma / s2p1.sqrt(), s2p1)
}

impl Scheduler for Euler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
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
        false
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
        // With s_churn = 0, gamma = 0 and sigma_hat = sigma.
        let sigma = self.sigmas[step];
        let dt = self.sigmas[step + 1] - sigma;
        let (v_out, v_skip) = v_factors(sigma);
        for ((o, &x), &m) in out.iter_mut().zip(sample).zip(model_output) {
            let x0 = pred_original(self.prediction, sigma, v_out, v_skip, x, m);
            let derivative = (x - x0) / sigma;
            *o = x + derivative * dt;
        }
        Ok(())
    }

    fn linear_step(&self, step: usize, _state: &StepState) -> Result<LinearStep> {
        check_step_index(self, step)?;
        let sigma = self.sigmas[step];
        let dt = self.sigmas[step + 1] - sigma;
        Ok(euler_linear(self.prediction, sigma, dt, 0.0))
    }
}

/// x + (x − x̂₀)/σ · dt + noise·z as a [`LinearStep`] (Euler and Euler ancestral).
pub(crate) fn euler_linear(
    prediction: PredictionType,
    sigma: f32,
    dt: f32,
    noise: f32,
) -> LinearStep {
    let (v_out, v_skip) = v_factors(sigma);
    let (x0_from_sample, x0_from_output) = match prediction {
        PredictionType::Epsilon => (1.0, -sigma),
        PredictionType::VPrediction => (1.0 / v_skip, v_out),
        PredictionType::Sample => (0.0, 1.0),
    };
    let slope = dt / sigma;
    LinearStep {
        x0_from_sample,
        x0_from_output,
        clip: None,
        sample: 1.0 + slope,
        output: 0.0,
        x0: -slope,
        history: 0.0,
        noise,
    }
}
