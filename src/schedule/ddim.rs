//! DDIM (Song et al., 2021), as diffusers' `DDIMScheduler`: deterministic for eta = 0,
//! with eta·σ_t of fresh noise otherwise.

use super::betas::{TimestepSpacing, TrainSchedule};
use super::config::SchedulerConfig;
use super::ddpm::integer_timesteps;
use super::{
    check_num_steps, check_step_args, check_step_index, clip_from_config, refuse_karras,
    vp_pred_original, LinearStep, PredictionType, ScheduleOptions, Scheduler, SchedulerKind,
    StepState,
};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Ddim {
    timesteps: Vec<usize>,
    /// `num_train_timesteps // num_steps`: diffusers' DDIM always steps back by this
    /// much, whatever the timestep spacing.
    step_ratio: usize,
    alphas_cumprod: Vec<f32>,
    /// ᾱ used past the first training timestep (1, or ᾱ_0 without `set_alpha_to_one`).
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    clip: Option<f32>,
    eta: f64,
}

impl Ddim {
    pub fn new(
        config: &SchedulerConfig,
        num_steps: usize,
        options: &ScheduleOptions,
    ) -> Result<Self> {
        let kind = SchedulerKind::Ddim;
        refuse_karras(kind, options)?;
        if !(0.0..=1.0).contains(&options.eta) {
            return Err(Error::invalid(
                "eta",
                format!("found {}; DDIM's eta must lie in [0, 1]", options.eta),
            ));
        }
        let train = TrainSchedule::from_config(config, kind)?;
        let prediction = PredictionType::from_config(config, kind)?;
        let clip = clip_from_config(config)?;
        let set_alpha_to_one = config.bool("set_alpha_to_one", true)?;
        let spacing = TimestepSpacing::from_config(config, TimestepSpacing::Leading)?;
        let steps_offset = config.usize("steps_offset", 0)?;

        let n_train = train.num_train_timesteps;
        check_num_steps(kind, config, num_steps, n_train)?;
        let timesteps = integer_timesteps(config, spacing, n_train, num_steps, steps_offset)?;
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            train.alphas_cumprod[0]
        };
        Ok(Ddim {
            timesteps,
            step_ratio: n_train / num_steps,
            alphas_cumprod: train.alphas_cumprod,
            final_alpha_cumprod,
            prediction,
            clip,
            eta: options.eta,
        })
    }
}

/// The per-step scalars of a DDIM step.
struct DdimScalars {
    sqrt_alpha: f32,
    sqrt_beta: f32,
    std: f32,
    direction_coeff: f32,
    sqrt_alpha_prev: f32,
}

impl Ddim {
    fn scalars(&self, step: usize) -> DdimScalars {
        let t = self.timesteps[step];
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = t
            .checked_sub(self.step_ratio)
            .map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        // diffusers multiplies the float32 variance by eta as a float32 scalar.
        let std = self.eta as f32 * variance.sqrt();
        DdimScalars {
            sqrt_alpha: alpha_t.sqrt(),
            sqrt_beta: beta_t.sqrt(),
            std,
            direction_coeff: (1.0 - alpha_prev - std * std).sqrt(),
            sqrt_alpha_prev: alpha_prev.sqrt(),
        }
    }
}

impl Scheduler for Ddim {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
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
        self.timesteps[step]
            .checked_sub(self.step_ratio)
            .map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p])
    }

    fn needs_noise(&self, _step: usize) -> bool {
        self.eta > 0.0
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
        let DdimScalars {
            sqrt_alpha,
            sqrt_beta,
            std,
            direction_coeff,
            sqrt_alpha_prev,
        } = self.scalars(step);

        for ((o, &x), &m) in out.iter_mut().zip(sample).zip(model_output) {
            let mut x0 = vp_pred_original(self.prediction, sqrt_alpha, sqrt_beta, x, m);
            let eps = match self.prediction {
                PredictionType::Epsilon => m,
                PredictionType::Sample => (x - sqrt_alpha * x0) / sqrt_beta,
                PredictionType::VPrediction => sqrt_alpha * m + sqrt_beta * x,
            };
            if let Some(r) = self.clip {
                x0 = x0.clamp(-r, r);
            }
            *o = sqrt_alpha_prev * x0 + direction_coeff * eps;
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
        // ε as a combination of (x, m); for sample prediction it comes from the
        // unclamped x̂₀ = m.
        let (eps_x, eps_m) = match self.prediction {
            PredictionType::Epsilon => (0.0, 1.0),
            PredictionType::Sample => (1.0 / c.sqrt_beta, -c.sqrt_alpha / c.sqrt_beta),
            PredictionType::VPrediction => (c.sqrt_beta, c.sqrt_alpha),
        };
        Ok(LinearStep {
            x0_from_sample,
            x0_from_output,
            clip: self.clip,
            sample: c.direction_coeff * eps_x,
            output: c.direction_coeff * eps_m,
            x0: c.sqrt_alpha_prev,
            history: 0.0,
            noise: if self.eta > 0.0 { c.std } else { 0.0 },
        })
    }
}
