//! Adaptive projected guidance (APG; Sadat et al., "Eliminating Oversaturation and
//! Artifacts of High Guidance Scales in Diffusion Models", ICLR 2025), as diffusers'
//! `AdaptiveProjectedGuidance` guider computes it (`normalized_guidance` with its
//! `MomentumBuffer`): the CFG update `cond − uncond` is averaged with momentum over
//! the steps, its norm capped, split into the part parallel to the conditional
//! prediction and the part orthogonal to it, and the parallel part weighted by η
//! (η = 0 drops it: that part is what oversaturates). The projection runs in f64
//! and the rest in f32, in diffusers' order.

/// APG's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Apg {
    /// Weight of the update's component parallel to the conditional prediction.
    pub eta: f32,
    /// The update's L2 norm (over the whole sample) is capped at this; 0: no cap.
    pub norm_threshold: f32,
    /// The running average's momentum β: average ← update + β·average; 0: none.
    pub momentum: f32,
}

impl Default for Apg {
    /// diffusers' defaults: η = 1, norm threshold 15, no momentum.
    fn default() -> Self {
        Apg {
            eta: 1.0,
            norm_threshold: 15.0,
            momentum: 0.0,
        }
    }
}

impl Apg {
    /// `out = uncond + scale·(orthogonal + η·parallel)` of the (averaged, capped)
    /// update. `average` is the sample's momentum buffer (zeros before its first
    /// guided step), updated in place.
    pub fn guide(
        &self,
        uncond: &[f32],
        cond: &[f32],
        scale: f32,
        average: &mut [f32],
        out: &mut [f32],
    ) {
        let mut diff: Vec<f32> = cond.iter().zip(uncond).map(|(&c, &u)| c - u).collect();
        if self.momentum != 0.0 {
            for (a, &d) in average.iter_mut().zip(&diff) {
                *a = d + self.momentum * *a;
            }
            diff.copy_from_slice(average);
        }
        if self.norm_threshold > 0.0 {
            let norm = diff
                .iter()
                .map(|&d| d as f64 * d as f64)
                .sum::<f64>()
                .sqrt() as f32;
            let factor = (self.norm_threshold / norm).min(1.0);
            diff.iter_mut().for_each(|d| *d *= factor);
        }
        let cond_norm = cond
            .iter()
            .map(|&c| c as f64 * c as f64)
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let dot: f64 = diff
            .iter()
            .zip(cond)
            .map(|(&d, &c)| d as f64 * (c as f64 / cond_norm))
            .sum();
        for ((o, (&d, &c)), &u) in out.iter_mut().zip(diff.iter().zip(cond)).zip(uncond) {
            let parallel = dot * (c as f64 / cond_norm);
            let orthogonal = (d as f64 - parallel) as f32;
            let update = orthogonal + self.eta * parallel as f32;
            *o = u + scale * update;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_one_without_cap_or_momentum_is_plain_cfg() {
        let (u, c) = ([0.5f32, -1.0, 2.0], [1.0f32, 0.25, -0.5]);
        let mut out = [0f32; 3];
        let apg = Apg {
            eta: 1.0,
            norm_threshold: 0.0,
            momentum: 0.0,
        };
        apg.guide(&u, &c, 3.0, &mut [0.0; 3], &mut out);
        for i in 0..3 {
            assert!((out[i] - (u[i] + 3.0 * (c[i] - u[i]))).abs() < 1e-6);
        }
    }

    #[test]
    fn eta_zero_keeps_only_the_orthogonal_update() {
        // cond along x; the update (1, 1) loses its x part.
        let (u, c) = ([0.0f32, -1.0], [1.0f32, 0.0]);
        let mut out = [0f32; 2];
        let apg = Apg {
            eta: 0.0,
            norm_threshold: 0.0,
            momentum: 0.0,
        };
        apg.guide(&u, &c, 2.0, &mut [0.0; 2], &mut out);
        assert_eq!(out, [0.0, -1.0 + 2.0 * 1.0]);
    }

    #[test]
    fn the_cap_and_the_momentum_follow_diffusers() {
        // Update (3, 4) has norm 5; capped at 1 it is (0.6, 0.8).
        let apg = Apg {
            eta: 1.0,
            norm_threshold: 1.0,
            momentum: -0.5,
        };
        let mut average = [0f32; 2];
        let mut out = [0f32; 2];
        apg.guide(&[0.0, 0.0], &[3.0, 4.0], 1.0, &mut average, &mut out);
        assert_eq!(average, [3.0, 4.0]);
        assert!((out[0] - 0.6).abs() < 1e-6 && (out[1] - 0.8).abs() < 1e-6);
        // Second step: average = (1, 2) + (−0.5)·(3, 4) = (−0.5, 0); under the cap.
        apg.guide(&[0.0, 0.0], &[1.0, 2.0], 1.0, &mut average, &mut out);
        assert_eq!(average, [-0.5, 0.0]);
        assert!((out[0] + 0.5).abs() < 1e-6 && out[1].abs() < 1e-6);
    }

    #[test]
    fn a_partial_eta_weights_the_parallel_part_against_a_non_unit_cond() {
        // cond = (3, 4), |cond| = 5, unit (0.6, 0.8); update = (2, 3).
        // Parallel: (2·0.6 + 3·0.8)·(0.6, 0.8) = 3.6·(0.6, 0.8) = (2.16, 2.88);
        // orthogonal: (−0.16, 0.12); η = 0.5: (−0.16 + 1.08, 0.12 + 1.44) = (0.92, 1.56);
        // out = uncond + 2·that = (2.84, 4.12).
        let apg = Apg {
            eta: 0.5,
            norm_threshold: 0.0,
            momentum: 0.0,
        };
        let mut out = [0f32; 2];
        apg.guide(&[1.0, 1.0], &[3.0, 4.0], 2.0, &mut [0.0; 2], &mut out);
        assert!(
            (out[0] - 2.84).abs() < 1e-5 && (out[1] - 4.12).abs() < 1e-5,
            "{out:?}"
        );
    }
}
