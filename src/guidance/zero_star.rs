//! CFG-Zero* (Fan et al., "CFG-Zero*: Improved Classifier-Free Guidance for Flow
//! Matching Models", 2025), as diffusers' `ClassifierFreeZeroStarGuidance` guider
//! computes it: the unconditional prediction is first scaled by the optimal
//! s* = ⟨cond, uncond⟩ / (‖uncond‖² + 1e-8) (per sample), then CFG runs as usual;
//! and the prediction of the first `zero_init_steps` steps is zero.

/// `out = s*·uncond + scale·(cond − s*·uncond)` in f32, as diffusers (its sums in
/// f32 there, in f64 rounded to f32 here).
pub fn guide(uncond: &[f32], cond: &[f32], scale: f32, out: &mut [f32]) {
    let dot: f64 = cond
        .iter()
        .zip(uncond)
        .map(|(&c, &u)| c as f64 * u as f64)
        .sum();
    let squared: f64 = uncond.iter().map(|&u| u as f64 * u as f64).sum();
    let alpha = (dot as f32) / (squared as f32 + 1e-8);
    for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
        let scaled = u * alpha;
        *o = scaled + scale * (c - scaled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconditional_prediction_parallel_to_the_conditional_one_scales_to_it() {
        // uncond = 2·cond → s* = 1/2, so s*·uncond = cond and the update vanishes.
        let cond = [1.0f32, -2.0, 0.5];
        let uncond = cond.map(|c| 2.0 * c);
        let mut out = [0f32; 3];
        guide(&uncond, &cond, 7.0, &mut out);
        for (o, c) in out.iter().zip(cond) {
            assert!((o - c).abs() < 1e-6);
        }
    }

    #[test]
    fn the_epsilon_keeps_a_tiny_unconditional_prediction_finite() {
        // ‖uncond‖² = 1e-8, the size of the guard: s* = 1e-8 / (1e-8 + 1e-8) = 1/2
        // (a guard subtracted instead would divide by ~0); s*·uncond = (0.5e-4, 0);
        // out = 0.5e-4 + 2·(1e-4 − 0.5e-4) = 1.5e-4.
        let mut out = [0f32; 2];
        guide(&[1e-4, 0.0], &[1e-4, 0.0], 2.0, &mut out);
        assert!((out[0] - 1.5e-4).abs() < 1e-9, "{out:?}");
        assert_eq!(out[1], 0.0);
    }

    #[test]
    fn hand_derived_case() {
        // cond (1, 0), uncond (1, 1): s* = 1/2; s*·uncond = (0.5, 0.5);
        // out = (0.5, 0.5) + 2·((1, 0) − (0.5, 0.5)) = (1.5, −0.5).
        let mut out = [0f32; 2];
        guide(&[1.0, 1.0], &[1.0, 0.0], 2.0, &mut out);
        assert!((out[0] - 1.5).abs() < 1e-6 && (out[1] + 0.5).abs() < 1e-6);
    }
}
