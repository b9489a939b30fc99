//! The fused step's arithmetic, per element of one sample: the classifier-free
//! guidance combine and rescale, then the scheduler update as one linear formula.
//! It is a leaf (it imports nothing of the crate), so the backends that run the step
//! (`backend::guided_step`, `kernels/guided_step.cu`), the schedulers that choose its
//! coefficients (`schedule::Scheduler::linear_step`) and the guidance that chooses
//! its scales all build on it without importing one another.
//!
//! Every scheduler step is written as the same per-element formula with per-sample
//! coefficients, so one fused GPU kernel can run any scheduler (the host decides
//! the coefficients):
//!
//! ```text
//! x̂₀   = x0_from_sample·x + x0_from_output·m        (clamped to ±clip when set)
//! x'   = sample·x + output·m + x0·x̂₀ + history·h + noise·z
//! ```
//! with x the sample, m the (guided) model output, h the previous step's unclamped
//! x̂₀ (DPM-Solver++'s second order) and z fresh noise. The schedulers compute the
//! scalars with the same f32 expressions as their `step`; the per-element
//! arithmetic groups differently, so results agree with `step` to rounding (tested
//! in `schedule::linear` for every scheduler), not bit for bit.
//!
//! The guided output m is `uncond + s·(cond − uncond)` ([`combine`]), optionally
//! rescaled toward the conditional prediction's standard deviation ([`rescale`]:
//! Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4,
//! as diffusers' `rescale_noise_cfg`).

/// One sample's scheduler update as the coefficients of the formula above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearStep {
    pub x0_from_sample: f32,
    pub x0_from_output: f32,
    /// Clamp x̂₀ to [−clip, clip] before it enters the update (DDPM/DDIM `clip_sample`).
    pub clip: Option<f32>,
    pub sample: f32,
    pub output: f32,
    pub x0: f32,
    /// Weight of the previous step's x̂₀; 0 when the step does not use it.
    pub history: f32,
    /// Weight of fresh noise; 0 when the step draws none.
    pub noise: f32,
}

impl LinearStep {
    /// x̂₀ before clamping (what DPM-Solver++ keeps as history).
    #[inline]
    pub fn x0_of(&self, x: f32, m: f32) -> f32 {
        self.x0_from_sample * x + self.x0_from_output * m
    }

    /// The next sample from one element's inputs; returns (x', unclamped x̂₀).
    #[inline]
    pub fn apply(&self, x: f32, m: f32, h: f32, z: f32) -> (f32, f32) {
        let x0 = self.x0_of(x, m);
        let used = match self.clip {
            Some(r) => x0.clamp(-r, r),
            None => x0,
        };
        let next =
            self.sample * x + self.output * m + self.x0 * used + self.history * h + self.noise * z;
        (next, x0)
    }
}

/// `out = uncond + scale·(cond − uncond)`, in f32 in that order (as diffusers).
pub fn combine(uncond: &[f32], cond: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, &u), &c) in out.iter_mut().zip(uncond).zip(cond) {
        *o = u + scale * (c - u);
    }
}

/// Unbiased standard deviation over all elements (torch's default `std`).
fn std_unbiased(x: &[f32]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let ss = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
    (ss / (n - 1.0)).sqrt()
}

/// `guided ← φ·guided·(σ_cond/σ_guided) + (1 − φ)·guided`.
pub fn rescale(guided: &mut [f32], cond: &[f32], phi: f32) {
    if phi == 0.0 || guided.len() < 2 {
        return;
    }
    let ratio = (std_unbiased(cond) / std_unbiased(guided)) as f32;
    for g in guided.iter_mut() {
        let rescaled = *g * ratio;
        *g = phi * rescaled + (1.0 - phi) * *g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_is_the_cfg_formula() {
        let mut out = [0f32; 2];
        combine(&[1.0, -2.0], &[3.0, 2.0], 2.5, &mut out);
        assert_eq!(out, [1.0 + 2.5 * 2.0, -2.0 + 2.5 * 4.0]);
    }

    #[test]
    fn full_rescale_matches_the_conditional_std() {
        let cond = [1.0f32, -1.0, 2.0, 0.5];
        let mut guided = [4.0f32, -3.0, 7.0, 1.0];
        rescale(&mut guided, &cond, 1.0);
        assert!((std_unbiased(&guided) - std_unbiased(&cond)).abs() < 1e-6);
        // φ = 0 leaves the prediction untouched.
        let mut untouched = [4.0f32, -3.0];
        rescale(&mut untouched, &[1.0, 2.0], 0.0);
        assert_eq!(untouched, [4.0, -3.0]);
    }

    #[test]
    fn the_clamp_applies_to_the_update_but_not_to_the_returned_estimate() {
        let step = LinearStep {
            x0_from_sample: 1.0,
            x0_from_output: 1.0,
            clip: Some(1.0),
            sample: 0.5,
            output: 0.0,
            x0: 2.0,
            history: 0.25,
            noise: 0.125,
        };
        let (next, x0) = step.apply(2.0, 1.0, 4.0, 8.0);
        assert_eq!(x0, 3.0);
        assert_eq!(next, 0.5 * 2.0 + 2.0 * 1.0 + 0.25 * 4.0 + 0.125 * 8.0);
    }
}
