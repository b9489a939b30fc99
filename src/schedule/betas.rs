//! The arithmetic every scheduler shares: the training noise schedule (betas and
//! alphas_cumprod), the spacing of inference timesteps, and the sigma helpers
//! (interpolation over the training sigmas, sigma → timestep, Karras sigmas).
//!
//! diffusers does this set-up with float32 torch tensors and float64 numpy arrays,
//! and the rounding of each step shows in the results, so every function below
//! reproduces the precision and the order of operations of the library call it
//! stands for:
//! * `torch.linspace(float32)` on CPU evaluates `start + step·i` (first half) and
//!   `end − step·(n−1−i)` (second half) with one fused multiply-add each;
//! * `torch.cumprod(float32)` on CPU accumulates in float64 and rounds each output;
//! * `np.linspace` computes `start + i·step` in float64 and stores `stop` last;
//! * `np.arange(start, 0, −r)` has `ceil(start / r)` entries `start + i·Δ` with
//!   `Δ = (start − r) − start`;
//! * `np.round` rounds half to even;
//! * `np.interp` evaluates `(f[j+1] − f[j])·(x − j) + f[j]` in float64.

use super::config::SchedulerConfig;
use super::SchedulerKind;
use crate::error::Result;

/// How the training betas were defined (`beta_schedule`, or `trained_betas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
    /// Only DDPMScheduler knows it.
    Laplace,
}

impl BetaSchedule {
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
            BetaSchedule::Laplace => "laplace",
        }
    }
}

/// The most training timesteps a scheduler config may declare (diffusers' models use
/// 1000, a few 4000): the schedule's tables are allocated at this length.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// The training noise schedule of a scheduler config.
#[derive(Debug, Clone)]
pub struct TrainSchedule {
    pub num_train_timesteps: usize,
    /// `beta_schedule` as configured (diffusers consults it even when
    /// `trained_betas` overrides the betas).
    pub beta_schedule: BetaSchedule,
    pub alphas_cumprod: Vec<f32>,
}

impl TrainSchedule {
    /// Reads `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`,
    /// `trained_betas` and `rescale_betas_zero_snr` as diffusers' class `kind` does.
    pub fn from_config(config: &SchedulerConfig, kind: SchedulerKind) -> Result<Self> {
        let n = config.usize("num_train_timesteps", 1000)?;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
            return Err(config.error(
                "num_train_timesteps",
                format!("found {n}; must be 2 to {MAX_TRAIN_TIMESTEPS}"),
            ));
        }
        let beta_start = config.f64("beta_start", 0.0001)?;
        let beta_end = config.f64("beta_end", 0.02)?;
        let mut schedules = vec![
            ("linear", BetaSchedule::Linear),
            ("scaled_linear", BetaSchedule::ScaledLinear),
            ("squaredcos_cap_v2", BetaSchedule::SquaredCosCapV2),
        ];
        if kind == SchedulerKind::Ddpm {
            schedules.push(("laplace", BetaSchedule::Laplace));
        }
        let schedule = config.choice("beta_schedule", BetaSchedule::Linear, &schedules)?;
        let trained = config.opt_f64_array("trained_betas")?;
        let zero_snr = config.bool("rescale_betas_zero_snr", false)?;

        let (betas, field) = match trained {
            Some(values) => {
                if values.len() != n {
                    return Err(config.error(
                        "trained_betas",
                        format!(
                            "found {} values; expected num_train_timesteps = {n}",
                            values.len()
                        ),
                    ));
                }
                (
                    values.iter().map(|&b| b as f32).collect::<Vec<f32>>(),
                    "trained_betas",
                )
            }
            None => {
                for (field, value) in [("beta_start", beta_start), ("beta_end", beta_end)] {
                    if !(0.0..1.0).contains(&value) {
                        return Err(config
                            .error(field, format!("found {value}; expected a number in [0, 1)")));
                    }
                }
                let betas = match schedule {
                    BetaSchedule::Linear => torch_linspace_f32(beta_start, beta_end, n),
                    BetaSchedule::ScaledLinear => {
                        torch_linspace_f32(beta_start.powf(0.5), beta_end.powf(0.5), n)
                            .into_iter()
                            .map(|x| x * x)
                            .collect()
                    }
                    BetaSchedule::SquaredCosCapV2 => betas_for_alpha_bar(n, cosine_alpha_bar),
                    BetaSchedule::Laplace => betas_for_alpha_bar(n, laplace_alpha_bar),
                };
                (betas, "beta_schedule")
            }
        };
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(0.0..1.0).contains(*b))
        {
            return Err(config.error(
                field,
                format!("beta {i} is {b}; every beta must lie in [0, 1)"),
            ));
        }
        let betas = if zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = cumprod(&alphas);
        if zero_snr && kind != SchedulerKind::Ddpm && kind != SchedulerKind::Ddim {
            // Euler, Euler ancestral and DPM-Solver keep the last sigma finite.
            alphas_cumprod[n - 1] = 2f32.powi(-24);
        }
        Ok(TrainSchedule {
            num_train_timesteps: n,
            beta_schedule: schedule,
            alphas_cumprod,
        })
    }

    /// The training sigmas `sqrt((1 − ᾱ) / ᾱ)`, in float32 as torch computes them.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU.
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if steps == 1 {
        return vec![s];
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, e)
            }
        })
        .collect()
}

/// `torch.cumprod` of a float32 tensor on CPU (float64 accumulator).
pub fn cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

fn cosine_alpha_bar(t: f64) -> f64 {
    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
        .cos()
        .powi(2)
}

fn laplace_alpha_bar(t: f64) -> f64 {
    let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
    let snr = lmb.exp();
    (snr / (1.0 + snr)).sqrt()
}

/// diffusers' `betas_for_alpha_bar` (float64 Python arithmetic, max_beta 0.999).
fn betas_for_alpha_bar(n: usize, alpha_bar: fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv 2305.08891, algorithm 1), float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_bar: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let first = sqrt_bar[0];
    let last = sqrt_bar[sqrt_bar.len() - 1];
    let scale = first / (first - last);
    for s in &mut sqrt_bar {
        *s = (*s - last) * scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|s| s * s).collect();
    (0..bar.len())
        .map(|i| {
            let alpha = if i == 0 { bar[0] } else { bar[i] / bar[i - 1] };
            1.0 - alpha
        })
        .collect()
}

/// diffusers' `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

impl TimestepSpacing {
    pub fn from_config(config: &SchedulerConfig, default: TimestepSpacing) -> Result<Self> {
        config.choice(
            "timestep_spacing",
            default,
            &[
                ("linspace", TimestepSpacing::Linspace),
                ("leading", TimestepSpacing::Leading),
                ("trailing", TimestepSpacing::Trailing),
            ],
        )
    }
}

/// `np.linspace(start, stop, num)` (float64, endpoint included).
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    y[num - 1] = stop;
    y
}

/// `np.arange(start, 0, -ratio)` for positive `start` and `ratio` (float64).
pub fn np_arange_down_to_zero(start: f64, ratio: f64) -> Vec<f64> {
    let len = (start / ratio).ceil().max(0.0) as usize;
    let delta = (start - ratio) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start - ratio,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// The inference timesteps of DDPM, DDIM, Euler and Euler ancestral, largest first,
/// before each class's cast: `round_linspace` is true for the integer schedulers
/// (`np.linspace(...).round()`), false for the Euler family (float timesteps).
///
/// `trailing` with some step counts makes numpy's `arange` return one entry too
/// many (1000 / (1000 / 61) rounds up to 62 entries), so diffusers would append a
/// bogus timestep −1. This keeps the first `n` and drops that extra entry.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
    round_linspace: bool,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (num_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| {
                if round_linspace {
                    t.round_ties_even()
                } else {
                    t
                }
            })
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n)
                .rev()
                // Summed in f64: exact for every real offset, and an absurd one
                // (up to 2^64 − 1) cannot overflow; callers refuse timesteps
                // past the training schedule.
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            np_arange_down_to_zero(num_train as f64, num_train as f64 / n as f64)
                .into_iter()
                .take(n)
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// `np.interp(x, np.arange(len(fp)), fp)` with float32 `fp`, in float64.
pub fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j] as f64;
    }
    let (lo, hi) = (fp[j] as f64, fp[j + 1] as f64);
    (hi - lo) * (x - j as f64) + lo
}

/// `np.log` of the float32 training sigmas (the `log_sigmas` of diffusers), rounded
/// to float32. (numpy's SIMD float32 log is off by one ulp for some inputs; this
/// rounds the exact logarithm, which moves an interpolated timestep by < 1e-6.)
pub fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| (s as f64).ln() as f32).collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`, linear in
/// log-sigma between the two neighbouring training sigmas.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let count = log_sigmas.len();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(count - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    // `low - high` is a float32 difference in numpy; the rest is float64.
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// The Karras et al. (2022) sigmas, rho = 7, from `sigma_max` down to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_shape() {
        assert_eq!(np_linspace(0.0, 999.0, 1), vec![0.0]);
        let y = np_linspace(0.0, 999.0, 4);
        assert_eq!(y, vec![0.0, 333.0, 666.0, 999.0]);
    }

    #[test]
    fn arange_has_numpys_length() {
        assert_eq!(np_arange_down_to_zero(1000.0, 1000.0 / 7.0).len(), 7);
        // The numpy quirk: 1000 / (1000 / 61) > 61.
        assert_eq!(np_arange_down_to_zero(1000.0, 1000.0 / 61.0).len(), 62);
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Trailing, 1000, 61, 0, true).len(),
            61
        );
    }

    #[test]
    fn spacing_examples() {
        let lead = spaced_timesteps(TimestepSpacing::Leading, 1000, 4, 1, true);
        assert_eq!(lead, vec![751.0, 501.0, 251.0, 1.0]);
        let trail = spaced_timesteps(TimestepSpacing::Trailing, 1000, 4, 0, true);
        assert_eq!(trail, vec![999.0, 749.0, 499.0, 249.0]);
        let lin = spaced_timesteps(TimestepSpacing::Linspace, 1000, 4, 0, true);
        assert_eq!(lin, vec![999.0, 666.0, 333.0, 0.0]);
    }

    #[test]
    fn cumprod_accumulates_in_f64() {
        let v = vec![0.9f32; 100];
        let c = cumprod(&v);
        assert_eq!(c[99], (0.9f32 as f64).powi(100) as f32);
    }

    #[test]
    fn sigma_to_t_hits_grid_points() {
        let sigmas: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        let logs = log_sigmas(&sigmas);
        // Exact up to the float32 rounding of log_sigmas (as in diffusers).
        assert!(sigma_to_t(1.0, &logs).abs() < 1e-6);
        assert!((sigma_to_t(10.0, &logs) - 9.0).abs() < 1e-6);
        assert_eq!(sigma_to_t(100.0, &logs), 9.0);
        assert_eq!(sigma_to_t(0.01, &logs), 0.0);
        let t = sigma_to_t(2.5, &logs);
        assert!(t > 1.0 && t < 2.0);
    }
}
