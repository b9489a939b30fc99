//! DPM-Solver++(2M) (Lu et al., 2022), as diffusers' `DPMSolverMultistepScheduler`
//! with `algorithm_type="dpmsolver++"` and `solver_order=2`: a second-order
//! multistep solver in log-SNR time on the data prediction x0.
//!
//! The previous step's x0 prediction lives in the caller's [`StepState`] (one per
//! sample), so samples of one batch may be at different steps.

use super::betas::{
    interp, karras_sigmas, log_sigmas, np_arange_down_to_zero, np_linspace, sigma_to_t,
    BetaSchedule, TimestepSpacing, TrainSchedule,
};
use super::config::SchedulerConfig;
use super::euler::{refuse_other_sigma_schedules, use_karras, FinalSigma};
use super::{
    check_num_steps, check_step_args, check_step_index, LinearStep, PredictionType,
    ScheduleOptions, Scheduler, SchedulerKind, StepState,
};
use crate::error::{Error, Result};

/// How the second-order term is formed (`solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
}

#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    /// Integer timesteps, largest first.
    timesteps: Vec<i64>,
    /// One per step plus the final one.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    solver: SolverType,
    /// Whether the last step is first order (`lower_order_final` with fewer than 15
    /// steps, `euler_at_final`, or `final_sigmas_type="zero"`).
    first_order_final: bool,
}

impl DpmSolverMultistep {
    pub fn new(
        config: &SchedulerConfig,
        num_steps: usize,
        options: &ScheduleOptions,
    ) -> Result<Self> {
        let kind = SchedulerKind::DpmSolverMultistep;
        let train = TrainSchedule::from_config(config, kind)?;
        let prediction = PredictionType::from_config(config, kind)?;
        let order = config.usize("solver_order", 2)?;
        if order != 2 {
            return Err(config.error(
                "solver_order",
                format!("found {order}; accepted: 2 (only DPM-Solver++(2M) is implemented)"),
            ));
        }
        // diffusers maps the DEIS and UniPC names onto DPM-Solver++ / midpoint.
        config.choice("algorithm_type", (), &[("dpmsolver++", ()), ("deis", ())])?;
        let solver = config.choice(
            "solver_type",
            SolverType::Midpoint,
            &[
                ("midpoint", SolverType::Midpoint),
                ("heun", SolverType::Heun),
                ("logrho", SolverType::Midpoint),
                ("bh1", SolverType::Midpoint),
                ("bh2", SolverType::Midpoint),
            ],
        )?;
        config.require_bool(
            "thresholding",
            false,
            false,
            "dynamic thresholding is not implemented",
        )?;
        config.check_number("dynamic_thresholding_ratio")?;
        config.check_number("sample_max_value")?;
        let lower_order_final = config.bool("lower_order_final", true)?;
        let euler_at_final = config.bool("euler_at_final", false)?;
        let karras = use_karras(config, options)?;
        refuse_other_sigma_schedules(config)?;
        config.require_bool(
            "use_lu_lambdas",
            false,
            false,
            "Lu lambdas are not implemented",
        )?;
        config.require_bool(
            "use_flow_sigmas",
            false,
            false,
            "flow-matching sigmas are not implemented",
        )?;
        config.require_bool(
            "use_dynamic_shifting",
            false,
            false,
            "dynamic shifting is not implemented",
        )?;
        config.check_number("flow_shift")?;
        config.check_string("time_shift_type")?;
        // diffusers only acts on the learned variants (it drops the model output's
        // variance channels); any other value, such as DDPM's "fixed_small" in a config
        // shared between schedulers, has no effect on this solver.
        let variance_type = config.str("variance_type", "")?;
        if matches!(variance_type, "learned" | "learned_range") {
            return Err(config.error(
                "variance_type",
                format!("found \"{variance_type}\"; learned variances are not implemented (accepted: null or a fixed type)"),
            ));
        }
        let final_sigma = FinalSigma::from_config(config)?;
        let lambda_min_clipped = config.f64("lambda_min_clipped", f64::NEG_INFINITY)?;
        // Not in the class signature, but diffusers reads them from the config when
        // they are there (the "hidden" config of a compatible class).
        let sigma_min = config.opt_f64("sigma_min")?;
        let sigma_max = config.opt_f64("sigma_max")?;
        let spacing = TimestepSpacing::from_config(config, TimestepSpacing::Linspace)?;
        let steps_offset = config.usize("steps_offset", 0)?;

        let n_train = train.num_train_timesteps;
        check_num_steps(kind, config, num_steps, n_train)?;
        if lambda_min_clipped.is_nan() {
            return Err(config.error(
                "lambda_min_clipped",
                "found NaN; expected a number or -Infinity",
            ));
        }
        let last_timestep = n_train - clipped_count(&train.alphas_cumprod, lambda_min_clipped);
        if last_timestep == 0 {
            return Err(config.error(
                "lambda_min_clipped",
                format!("{lambda_min_clipped} clips every training timestep"),
            ));
        }
        let timesteps = dpm_timesteps(spacing, n_train, last_timestep, num_steps, steps_offset);
        let train_sigmas = train.sigmas();
        let (sigmas, timesteps): (Vec<f64>, Vec<i64>) = if karras {
            let lo = sigma_min.unwrap_or(train_sigmas[0] as f64);
            let hi = sigma_max.unwrap_or(train_sigmas[n_train - 1] as f64);
            let sigmas = karras_sigmas(lo, hi, num_steps);
            let logs = log_sigmas(&train_sigmas);
            let timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &logs);
                    // diffusers rounds, except for squaredcos_cap_v2 where the cast to
                    // int64 truncates.
                    let t = if train.beta_schedule == BetaSchedule::SquaredCosCapV2 {
                        t
                    } else {
                        t.round_ties_even()
                    };
                    t as i64
                })
                .collect();
            (sigmas, timesteps)
        } else {
            let sigmas = timesteps
                .iter()
                .map(|&t| interp(t, &train_sigmas))
                .collect();
            (sigmas, timesteps.iter().map(|&t| t as i64).collect())
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(final_sigma.value(&train_sigmas));
        let n = timesteps.len();
        // Repeated noise levels make diffusers divide by zero (h = 0 inside the
        // multistep history): "leading" or "linspace" spacing with as many steps as
        // training timesteps, or sigma_min >= sigma_max.
        let decreasing =
            |i: usize| sigmas[i + 1].partial_cmp(&sigmas[i]) == Some(std::cmp::Ordering::Less);
        if let Some(i) = (0..n - 1).find(|&i| !decreasing(i)) {
            return Err(Error::invalid(
                "num_steps",
                format!(
                    "{num_steps} DPM-Solver++ steps with this config ({}) give noise levels that do not decrease \
                     (sigma {} at step {i}, {} at step {}); use fewer steps",
                    config.origin().display(),
                    sigmas[i],
                    sigmas[i + 1],
                    i + 1
                ),
            ));
        }
        let first_order_final =
            euler_at_final || (lower_order_final && n < 15) || final_sigma == FinalSigma::Zero;
        Ok(DpmSolverMultistep {
            timesteps,
            sigmas,
            prediction,
            solver,
            first_order_final,
        })
    }
}

/// How many training timesteps (from t = N−1 down) `lambda_min_clipped` cuts off:
/// diffusers' `searchsorted(flip(λ_t), lambda_min_clipped)`.
fn clipped_count(alphas_cumprod: &[f32], lambda_min_clipped: f64) -> usize {
    if lambda_min_clipped == f64::NEG_INFINITY {
        return 0;
    }
    alphas_cumprod
        .iter()
        .rev()
        .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .take_while(|&l| l < lambda_min_clipped as f32)
        .count()
}

/// DPM-Solver's own timestep spacing (float64, before the cast to int64).
fn dpm_timesteps(
    spacing: TimestepSpacing,
    n_train: usize,
    last: usize,
    n: usize,
    offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<f64> = np_linspace(0.0, (last - 1) as f64, n + 1)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            t.reverse();
            t.truncate(n);
            t
        }
        TimestepSpacing::Leading => {
            let ratio = last / (n + 1);
            // In f64, as `spaced_timesteps`: no overflow for any offset.
            (1..=n)
                .rev()
                .map(|i| (i * ratio) as f64 + offset as f64)
                .collect()
        }
        // See `spaced_timesteps` for the extra entry numpy can produce here.
        TimestepSpacing::Trailing => np_arange_down_to_zero(last as f64, n_train as f64 / n as f64)
            .into_iter()
            .take(n)
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    }
}

/// (α_t, σ_t) of the variance-preserving process at noise level `sigma`.
#[inline]
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

#[inline]
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// The per-step scalars of a DPM-Solver++(2M) step.
struct DpmScalars {
    alpha_s0: f32,
    sigma_s0: f32,
    ratio: f32,
    exp_m1: f32,
    /// 1/r₀ and the second-order coefficient; 0 for a first-order step.
    inv_r0: f32,
    d1_coeff: f32,
}

impl DpmSolverMultistep {
    /// Whether `step` uses the previous step's x̂₀.
    fn second_order(&self, step: usize, state: &StepState) -> bool {
        let last = self.timesteps.len() - 1;
        state.lower_order_nums >= 1 && !(step == last && self.first_order_final)
    }

    fn scalars(&self, step: usize, second_order: bool) -> DpmScalars {
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step]);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let exp_m1 = alpha_t * ((-h).exp() - 1.0);
        let (inv_r0, d1_coeff) = if second_order && step > 0 {
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
            let lambda_s1 = lambda(alpha_s1, sigma_s1);
            let r0 = (lambda_s0 - lambda_s1) / h;
            let d1_coeff = match self.solver {
                SolverType::Midpoint => 0.5 * exp_m1,
                // h = 0 (the step does not move: Karras sigmas ending at sigma_min
                // with final_sigmas_type "sigma_min") makes diffusers' 0/0 a NaN;
                // the coefficient's limit is 0, and the step is the identity.
                SolverType::Heun if h == 0.0 => 0.0,
                SolverType::Heun => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
            };
            (1.0 / r0, d1_coeff)
        } else {
            (0.0, 0.0)
        };
        DpmScalars {
            alpha_s0,
            sigma_s0,
            ratio: sigma_t / sigma_s0,
            exp_m1,
            inv_r0,
            d1_coeff,
        }
    }
}

impl Scheduler for DpmSolverMultistep {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::DpmSolverMultistep
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

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    fn needs_noise(&self, _step: usize) -> bool {
        false
    }

    fn step(
        &self,
        step: usize,
        state: &mut StepState,
        sample: &[f32],
        model_output: &[f32],
        noise: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        check_step_args(self, step, sample, model_output, noise, out)?;
        let n = sample.len();
        let second_order = self.second_order(step, state);
        if second_order {
            if step == 0 {
                return Err(Error::invalid(
                    "state",
                    "a DPM-Solver++ state with history was given for step 0; start each sample with new_state()",
                ));
            }
            match state.history.last() {
                Some(prev) if prev.len() == n => {}
                Some(prev) => {
                    return Err(Error::shape(
                        "dpm++2m step",
                        format!(
                            "the state holds a previous output of {} elements, the sample has {n}",
                            prev.len()
                        ),
                    ))
                }
                None => {
                    return Err(Error::invalid(
                        "state",
                        "lower_order_nums says a previous step was taken but the history is empty",
                    ))
                }
            }
        }

        // The data prediction x0 at this step (diffusers' convert_model_output).
        let c = self.scalars(step, second_order);
        let (alpha_s0, sigma_s0) = (c.alpha_s0, c.sigma_s0);
        let x0: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| match self.prediction {
                PredictionType::Epsilon => (x - sigma_s0 * m) / alpha_s0,
                PredictionType::VPrediction => alpha_s0 * x - sigma_s0 * m,
                PredictionType::Sample => m,
            })
            .collect();
        let (ratio, exp_m1) = (c.ratio, c.exp_m1);

        if second_order {
            let prev = state.history.last().map(Vec::as_slice).unwrap_or(&[]);
            let (inv_r0, d1_coeff) = (c.inv_r0, c.d1_coeff);
            for (((o, &x), &m0), &m1) in out.iter_mut().zip(sample).zip(&x0).zip(prev) {
                let d1 = inv_r0 * (m0 - m1);
                *o = match self.solver {
                    SolverType::Midpoint => ratio * x - exp_m1 * m0 - d1_coeff * d1,
                    SolverType::Heun => ratio * x - exp_m1 * m0 + d1_coeff * d1,
                };
            }
        } else {
            for ((o, &x), &m0) in out.iter_mut().zip(sample).zip(&x0) {
                *o = ratio * x - exp_m1 * m0;
            }
        }

        state.history.clear();
        state.history.push(x0);
        state.lower_order_nums = (state.lower_order_nums + 1).min(2);
        Ok(())
    }

    fn linear_step(&self, step: usize, state: &StepState) -> Result<LinearStep> {
        check_step_index(self, step)?;
        let second_order = self.second_order(step, state);
        if second_order && state.history.is_empty() {
            return Err(Error::invalid(
                "state",
                "lower_order_nums says a previous step was taken but the history is empty",
            ));
        }
        let c = self.scalars(step, second_order);
        let (x0_from_sample, x0_from_output) = match self.prediction {
            PredictionType::Epsilon => (1.0 / c.alpha_s0, -c.sigma_s0 / c.alpha_s0),
            PredictionType::VPrediction => (c.alpha_s0, -c.sigma_s0),
            PredictionType::Sample => (0.0, 1.0),
        };
        // out = ratio·x − exp_m1·x̂₀ ∓ d1_coeff·inv_r0·(x̂₀ − h): minus for the
        // midpoint solver, plus for Heun's.
        let sign = match self.solver {
            SolverType::Midpoint => -1.0,
            SolverType::Heun => 1.0,
        };
        let d1 = if second_order {
            sign * c.d1_coeff * c.inv_r0
        } else {
            0.0
        };
        Ok(LinearStep {
            x0_from_sample,
            x0_from_output,
            clip: None,
            sample: c.ratio,
            output: 0.0,
            x0: -c.exp_m1 + d1,
            history: -d1,
            noise: 0.0,
        })
    }

    fn records_history(&self) -> bool {
        true
    }

    fn record_history(&self, state: &mut StepState, x0: Vec<f32>) {
        state.history.clear();
        state.history.push(x0);
        state.lower_order_nums = (state.lower_order_nums + 1).min(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str, n: usize) -> DpmSolverMultistep {
        let config = SchedulerConfig::from_json_str(json, "test.json").unwrap();
        DpmSolverMultistep::new(&config, n, &ScheduleOptions::default()).unwrap()
    }

    fn run(s: &DpmSolverMultistep) -> Vec<Vec<f32>> {
        let mut state = s.new_state();
        let mut x: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
        let mut outs = Vec::new();
        for i in 0..s.num_steps() {
            let m: Vec<f32> = x.iter().map(|v| 0.3 * v + 0.1 * i as f32).collect();
            let mut out = vec![0.0; x.len()];
            s.step(i, &mut state, &x, &m, None, &mut out).unwrap();
            outs.push(out.clone());
            x = out;
        }
        outs
    }

    #[test]
    fn heun_step_of_zero_length_is_the_identity() {
        // Karras sigmas end at sigma_min, and so does the final sigma: the last step
        // has h = 0 and is second order (20 >= 15 steps).
        let s = build(
            r#"{"use_karras_sigmas": true, "solver_type": "heun", "final_sigmas_type": "sigma_min"}"#,
            20,
        );
        assert_eq!(s.sigmas[19], s.sigmas[20]);
        let outs = run(&s);
        assert!(outs.iter().flatten().all(|v| v.is_finite()));
        assert_eq!(outs[19], outs[18]);
    }

    #[test]
    fn lower_order_final_rule() {
        assert!(build("{}", 20).first_order_final, "final sigma zero");
        assert!(build(r#"{"final_sigmas_type": "sigma_min"}"#, 14).first_order_final);
        assert!(!build(r#"{"final_sigmas_type": "sigma_min"}"#, 15).first_order_final);
        assert!(
            build(
                r#"{"final_sigmas_type": "sigma_min", "euler_at_final": true}"#,
                30
            )
            .first_order_final
        );
        assert!(
            !build(
                r#"{"final_sigmas_type": "sigma_min", "lower_order_final": false}"#,
                5
            )
            .first_order_final
        );
    }

    #[test]
    fn lambda_min_clipped_shortens_the_schedule() {
        let full = build(r#"{"beta_schedule": "squaredcos_cap_v2"}"#, 10);
        let clipped = build(
            r#"{"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}"#,
            10,
        );
        assert_eq!(full.timestep(0), 999.0);
        assert!(clipped.timestep(0) < 999.0);
    }
}
