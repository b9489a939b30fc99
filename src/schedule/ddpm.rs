//! DDPM (Ho et al., 2020), as diffusers' `DDPMScheduler`: ancestral sampling of the
//! posterior q(x_{t-1} | x_t, x0) with a fixed variance.

use super::betas::{spaced_timesteps, TimestepSpacing, TrainSchedule};
use super::config::SchedulerConfig;
use super::{
    check_num_steps, check_step_args, check_step_index, clip_from_config, refuse_karras,
    vp_pred_original, LinearStep, PredictionType, ScheduleOptions, Scheduler, SchedulerKind,
    StepState,
};
use crate::error::Result;

/// `variance_type` values the engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// The posterior variance β̃_t (clamped at 1e-20).
    FixedSmall,
    /// The same, as exp(½ log β̃_t).
    FixedSmallLog,
    /// β_t.
    FixedLarge,
}

#[derive(Debug, Clone)]
pub struct Ddpm {
    /// Integer timesteps, largest first.
    timesteps: Vec<usize>,
    /// The timestep after each step (diffusers' `previous_timestep`), `None` at the end.
    prev_timesteps: Vec<Option<usize>>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    variance: VarianceType,
    clip: Option<f32>,
}

impl Ddpm {
    pub fn new(
        config: &SchedulerConfig,
        num_steps: usize,
        options: &ScheduleOptions,
    ) -> Result<Self> {
        let kind = SchedulerKind::Ddpm;
        refuse_karras(kind, options)?;
        let train = TrainSchedule::from_config(config, kind)?;
        let prediction = PredictionType::from_config(config, kind)?;
        let variance = config.choice(
            "variance_type",
            VarianceType::FixedSmall,
            &[
                ("fixed_small", VarianceType::FixedSmall),
                ("fixed_small_log", VarianceType::FixedSmallLog),
                ("fixed_large", VarianceType::FixedLarge),
            ],
        )?;
        let clip = clip_from_config(config)?;
        let spacing = TimestepSpacing::from_config(config, TimestepSpacing::Leading)?;
        let steps_offset = config.usize("steps_offset", 0)?;

        let n_train = train.num_train_timesteps;
        check_num_steps(kind, config, num_steps, n_train)?;
        let timesteps = integer_timesteps(config, spacing, n_train, num_steps, steps_offset)?;
        let prev_timesteps = (0..timesteps.len())
            .map(|i| {
                // diffusers looks the timestep up (first match) and takes the next entry.
                let first = timesteps
                    .iter()
                    .position(|&t| t == timesteps[i])
                    .unwrap_or(i);
                timesteps.get(first + 1).copied()
            })
            .collect();
        Ok(Ddpm {
            timesteps,
            prev_timesteps,
            alphas_cumprod: train.alphas_cumprod,
            prediction,
            variance,
            clip,
        })
    }
}

/// The integer timesteps of DDPM/DDIM; each must index the training schedule.
pub(crate) fn integer_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    num_train: usize,
    num_steps: usize,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    let timesteps: Vec<usize> = spaced_timesteps(spacing, num_train, num_steps, steps_offset, true)
        .into_iter()
        .map(|t| t as usize)
        .collect();
    if let Some(&t) = timesteps.iter().find(|&&t| t >= num_train) {
        return Err(config.error(
            "steps_offset",
            format!(
                "steps_offset = {steps_offset} with {num_steps} \"leading\" steps gives timestep {t}, \
                 beyond the last training timestep {}",
                num_train - 1
            ),
        ));
    }
    Ok(timesteps)
}

impl Scheduler for Ddpm {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddpm
    }

    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, step: usize) -> f32 {
        self.timesteps[step] as f32
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn input_scale(&self, _step: usize) -> f32 {
        1.0
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    fn alpha_bar(&self, step: usize) -> f32 {
        self.alphas_cumprod[self.timesteps[step]]
    }

    fn alpha_bar_after(&self, step: usize) -> f32 {
        self.prev_timesteps[step].map_or(1.0, |p| self.alphas_cumprod[p])
    }

    fn needs_noise(&self, step: usize) -> bool {
        self.timesteps[step] > 0
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
        let DdpmScalars {
            sqrt_alpha,
            sqrt_beta,
            coeff_x0,
            coeff_xt,
            std,
        } = self.scalars(step);
        for ((o, &x), &m) in out.iter_mut().zip(sample).zip(model_output) {
            let mut x0 = vp_pred_original(self.prediction, sqrt_alpha, sqrt_beta, x, m);
            if let Some(r) = self.clip {
                x0 = x0.clamp(-r, r);
            }
            *o = coeff_x0 * x0 + coeff_xt * x;
        }

        if let Some(noise) = noise {
            for (o, &z) in out.iter_mut().zip(noise) {
                *o += std * z;
            }
        }
        Ok(())
    }

    fn linear_step(&self, step: usize, _state: &StepState) -> Result<LinearStep> {
        check_step_index(self, step)?;
        let c = self.scalars(step);
        let (x0_from_sample, x0_from_output) =
            LinearStep::vp_x0(self.prediction, c.sqrt_alpha, c.sqrt_beta);
        Ok(LinearStep {
            x0_from_sample,
            x0_from_output,
            clip: self.clip,
            sample: c.coeff_xt,
            output: 0.0,
            x0: c.coeff_x0,
            history: 0.0,
            noise: if self.needs_noise(step) { c.std } else { 0.0 },
        })
    }
}

/// The per-step scalars of a DDPM step.
struct DdpmScalars {
    sqrt_alpha: f32,
    sqrt_beta: f32,
    coeff_x0: f32,
    coeff_xt: f32,
    /// The standard deviation of the added noise (used where the step adds any).
    std: f32,
}

impl Ddpm {
    fn scalars(&self, step: usize) -> DdpmScalars {
        let t = self.timesteps[step];
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = self.prev_timesteps[step].map_or(1.0, |p| self.alphas_cumprod[p]);
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let current_alpha = alpha_t / alpha_prev;
        let current_beta = 1.0 - current_alpha;
        let posterior = (beta_prev / beta_t * current_beta).max(1e-20);
        DdpmScalars {
            sqrt_alpha: alpha_t.sqrt(),
            sqrt_beta: beta_t.sqrt(),
            coeff_x0: (alpha_prev.sqrt() * current_beta) / beta_t,
            coeff_xt: current_alpha.sqrt() * beta_prev / beta_t,
            std: match self.variance {
                VarianceType::FixedSmall => posterior.sqrt(),
                VarianceType::FixedSmallLog => (0.5 * posterior.ln()).exp(),
                VarianceType::FixedLarge => current_beta.sqrt(),
            },
        }
    }
}
