//! Every scheduler step as a [`LinearStep`] (the fused step's per-element formula,
//! defined in the leaf `crate::step` so that backends need not import schedulers):
//! the variance-preserving x̂₀ coefficients the DDPM and DDIM plans share, and the
//! test that every scheduler's plan equals its `step` to rounding.

pub use crate::step::LinearStep;

use super::PredictionType;

impl LinearStep {
    /// The variance-preserving x̂₀ (DDPM, DDIM) from √ᾱ_t and √(1 − ᾱ_t):
    /// (x0_from_sample, x0_from_output).
    pub(crate) fn vp_x0(prediction: PredictionType, sqrt_alpha: f32, sqrt_beta: f32) -> (f32, f32) {
        match prediction {
            PredictionType::Epsilon => (1.0 / sqrt_alpha, -sqrt_beta / sqrt_alpha),
            PredictionType::VPrediction => (sqrt_alpha, -sqrt_beta),
            PredictionType::Sample => (0.0, 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{build, PredictionType, ScheduleOptions, SchedulerConfig, SchedulerKind};
    use super::LinearStep;
    use crate::rng::{normal_vec, NoiseStream};

    /// Runs `steps` steps of `kind` twice, with `step` and with the linear form, from
    /// the same inputs at every step, and returns the largest relative difference.
    fn worst_difference(kind: SchedulerKind, config: &str, options: ScheduleOptions) -> f64 {
        let steps = 12;
        let n = 257;
        let config = SchedulerConfig::from_json_str(config, "test").expect("config");
        let s = build(kind, &config, steps, &options).expect("scheduler");
        let mut state = s.new_state();
        let mut history = vec![0f32; n];
        let mut x = normal_vec(1, NoiseStream::Custom(1 << 57), n);
        x.iter_mut().for_each(|v| *v *= s.init_noise_sigma());
        let mut worst = 0f64;
        for step in 0..steps {
            let m = normal_vec(10 + step as u64, NoiseStream::Custom(1 << 57), n);
            let z = normal_vec(100 + step as u64, NoiseStream::Custom(1 << 57), n);
            let plan = s.linear_step(step, &state).expect("plan");
            let mut linear = vec![0f32; n];
            let mut x0 = vec![0f32; n];
            for i in 0..n {
                (linear[i], x0[i]) = plan.apply(x[i], m[i], history[i], z[i]);
            }
            if !s.needs_noise(step) {
                assert_eq!(plan.noise, 0.0, "{kind}: step {step} draws no noise");
            }
            let mut reference = vec![0f32; n];
            let noise = s.needs_noise(step).then_some(&z[..]);
            s.step(step, &mut state, &x, &m, noise, &mut reference)
                .expect("step");
            let norm = reference
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let diff = reference
                .iter()
                .zip(&linear)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            worst = worst.max(diff / norm);
            if s.records_history() {
                history.copy_from_slice(&x0);
            }
            x = reference;
        }
        worst
    }

    #[test]
    fn vp_x0_coefficients_are_the_hand_derived_ones() {
        // √ᾱ = 0.8, √(1 − ᾱ) = 0.6. ε: x̂₀ = (x − 0.6·m)/0.8; v: x̂₀ = 0.8·x − 0.6·m;
        // sample: x̂₀ = m.
        let cases = [
            (PredictionType::Epsilon, (1.25, -0.75)),
            (PredictionType::VPrediction, (0.8, -0.6)),
            (PredictionType::Sample, (0.0, 1.0)),
        ];
        for (prediction, (from_sample, from_output)) in cases {
            let (a, b) = LinearStep::vp_x0(prediction, 0.8, 0.6);
            assert!(
                (a - from_sample).abs() < 1e-6 && (b - from_output).abs() < 1e-6,
                "{prediction:?}: ({a}, {b})"
            );
        }
    }

    #[test]
    fn every_scheduler_step_equals_its_linear_form() {
        use SchedulerKind::*;
        let eta = |eta| ScheduleOptions { eta, karras: None };
        let cases: Vec<(SchedulerKind, &str, ScheduleOptions)> = vec![
            (Ddim, "{}", eta(0.0)),
            (Ddim, r#"{"prediction_type": "v_prediction"}"#, eta(0.5)),
            (
                Ddim,
                r#"{"prediction_type": "sample", "clip_sample": true}"#,
                eta(1.0),
            ),
            (
                Ddim,
                r#"{"clip_sample": true, "clip_sample_range": 0.5}"#,
                eta(0.0),
            ),
            (Ddpm, "{}", eta(0.0)),
            (
                Ddpm,
                r#"{"variance_type": "fixed_small_log", "prediction_type": "v_prediction"}"#,
                eta(0.0),
            ),
            (
                Ddpm,
                r#"{"variance_type": "fixed_large", "prediction_type": "sample"}"#,
                eta(0.0),
            ),
            (Euler, "{}", eta(0.0)),
            (
                Euler,
                r#"{"prediction_type": "v_prediction", "use_karras_sigmas": true}"#,
                eta(0.0),
            ),
            (Euler, r#"{"prediction_type": "sample"}"#, eta(0.0)),
            (EulerAncestral, "{}", eta(0.0)),
            (
                EulerAncestral,
                r#"{"prediction_type": "v_prediction"}"#,
                eta(0.0),
            ),
            (DpmSolverMultistep, "{}", eta(0.0)),
            (
                DpmSolverMultistep,
                r#"{"solver_type": "heun", "prediction_type": "v_prediction"}"#,
                eta(0.0),
            ),
            (
                DpmSolverMultistep,
                r#"{"lower_order_final": false, "prediction_type": "sample"}"#,
                eta(0.0),
            ),
            (
                DpmSolverMultistep,
                r#"{"use_karras_sigmas": true, "final_sigmas_type": "sigma_min"}"#,
                eta(0.0),
            ),
        ];
        for (kind, config, options) in cases {
            let worst = worst_difference(kind, config, options);
            eprintln!("{kind} {config}: largest relative difference {worst:.2e}");
            assert!(
                worst <= 5e-7,
                "{kind} {config}: linear form differs from step by {worst:.2e}"
            );
        }
    }
}
