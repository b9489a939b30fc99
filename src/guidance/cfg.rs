//! Classifier-free guidance per sample: `uncond + s·(cond − uncond)`, optionally
//! rescaled toward the conditional prediction's standard deviation (Lin et al.,
//! "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4, as
//! diffusers' `rescale_noise_cfg`), and applied only inside a step interval.

use crate::error::{Error, Result};

/// Steps `start..stop` (0-based, stop exclusive) use CFG; the others use the
/// conditional prediction alone and skip the unconditional model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuidanceInterval {
    pub start: usize,
    pub stop: usize,
}

impl GuidanceInterval {
    pub const ALWAYS: GuidanceInterval = GuidanceInterval {
        start: 0,
        stop: usize::MAX,
    };

    pub fn contains(&self, step: usize) -> bool {
        self.start <= step && step < self.stop
    }
}

/// One sample's guidance settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    /// CFG scale `s`; 1 means the conditional prediction alone (no extra model call).
    pub scale: f32,
    /// `guidance_rescale` φ in [0, 1]; 0 disables the rescale.
    pub rescale: f32,
    pub interval: GuidanceInterval,
}

impl Default for Guidance {
    fn default() -> Self {
        Guidance {
            scale: 1.0,
            rescale: 0.0,
            interval: GuidanceInterval::ALWAYS,
        }
    }
}

impl Guidance {
    /// Plain CFG at `scale` on every step, no rescale.
    pub fn cfg(scale: f32) -> Self {
        Guidance {
            scale,
            ..Guidance::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.scale.is_finite() {
            return Err(Error::invalid(
                "cfg",
                format!("guidance scale must be finite, got {}", self.scale),
            ));
        }
        if !(0.0..=1.0).contains(&self.rescale) {
            return Err(Error::invalid(
                "cfg-rescale",
                format!("must be in [0, 1], got {}", self.rescale),
            ));
        }
        if self.interval.start > self.interval.stop {
            return Err(Error::invalid(
                "cfg-interval",
                format!(
                    "start {} is after stop {}",
                    self.interval.start, self.interval.stop
                ),
            ));
        }
        Ok(())
    }

    /// Whether `step` needs the unconditional prediction.
    pub fn active_at(&self, step: usize) -> bool {
        self.scale != 1.0 && self.interval.contains(step)
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
    fn interval_is_half_open() {
        let g = Guidance {
            scale: 3.0,
            rescale: 0.0,
            interval: GuidanceInterval { start: 2, stop: 4 },
        };
        assert_eq!(
            (0..6).map(|s| g.active_at(s)).collect::<Vec<_>>(),
            [false, false, true, true, false, false]
        );
    }
}
