//! The sequential-Monte-Carlo core shared by every steering method: normalised
//! weights from log-weights, the effective sample size, and systematic resampling.

/// exp(log_w − max) / Σ, computed without overflow. Every weight is finite; −∞ log-
/// weights get weight 0. All −∞ (or an empty slice) gives uniform weights.
pub fn normalized_weights(log_weights: &[f64]) -> Vec<f64> {
    let max = log_weights
        .iter()
        .copied()
        .filter(|w| !w.is_nan())
        .fold(f64::NEG_INFINITY, f64::max);
    let n = log_weights.len();
    if !max.is_finite() {
        return vec![1.0 / n.max(1) as f64; n];
    }
    let mut w: Vec<f64> = log_weights
        .iter()
        .map(|&l| if l.is_nan() { 0.0 } else { (l - max).exp() })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= total);
    w
}

/// Kish's effective sample size 1 / Σ wᵢ² of normalised weights: N for equal
/// weights, 1 when one particle holds all the weight.
pub fn effective_sample_size(weights: &[f64]) -> f64 {
    let sum_sq: f64 = weights.iter().map(|w| w * w).sum();
    if sum_sq > 0.0 {
        1.0 / sum_sq
    } else {
        0.0
    }
}

/// Systematic resampling: N ancestors from normalised `weights` with one uniform
/// `u` in [0, 1): ancestor k is the particle whose cumulative weight interval holds
/// (k + u)/N. Particle i is drawn ⌊N·wᵢ⌋ or ⌈N·wᵢ⌉ times, and the ancestors come
/// out in increasing order.
pub fn systematic_resample(weights: &[f64], u: f64) -> Vec<usize> {
    let n = weights.len();
    let mut ancestors = Vec::with_capacity(n);
    if n == 0 {
        return ancestors;
    }
    let mut cumulative = weights[0];
    let mut i = 0;
    for k in 0..n {
        let point = (k as f64 + u) / n as f64;
        while point >= cumulative && i + 1 < n {
            i += 1;
            cumulative += weights[i];
        }
        ancestors.push(i);
    }
    ancestors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_normalised_and_overflow_free() {
        let w = normalized_weights(&[1000.0, 1000.0 + 2f64.ln(), f64::NEG_INFINITY]);
        assert!((w[0] - 1.0 / 3.0).abs() < 1e-12);
        assert!((w[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(w[2], 0.0);
        assert_eq!(normalized_weights(&[f64::NEG_INFINITY; 2]), [0.5, 0.5]);
    }

    #[test]
    fn nan_log_weights_get_weight_zero() {
        // A NaN reward must not poison the population: its particle gets weight 0
        // and the others are normalised among themselves.
        let w = normalized_weights(&[0.0, f64::NAN, 2f64.ln()]);
        assert!((w[0] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(w[1], 0.0);
        assert!((w[2] - 2.0 / 3.0).abs() < 1e-12);
        assert!(normalized_weights(&[]).is_empty());
    }

    #[test]
    fn ess_of_no_weight_is_zero() {
        // 1 / Σw² would be infinite; a population without weight has no
        // effective samples.
        assert_eq!(effective_sample_size(&[]), 0.0);
        assert_eq!(effective_sample_size(&[0.0; 3]), 0.0);
    }

    #[test]
    fn ess_spans_one_to_n() {
        assert!((effective_sample_size(&[0.25; 4]) - 4.0).abs() < 1e-12);
        assert!((effective_sample_size(&[1.0, 0.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((effective_sample_size(&[0.5, 0.5, 0.0, 0.0]) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn systematic_resampling_hand_derived() {
        // Points (k + 0.5)/4 = 0.125, 0.375, 0.625, 0.875 against cumulative
        // weights 0.1, 0.6, 0.6, 1.0.
        assert_eq!(
            systematic_resample(&[0.1, 0.5, 0.0, 0.4], 0.5),
            vec![1, 1, 3, 3]
        );
        // Equal weights keep every particle once, whatever u.
        assert_eq!(systematic_resample(&[0.25; 4], 0.99), vec![0, 1, 2, 3]);
        // All weight on one particle.
        assert_eq!(systematic_resample(&[0.0, 0.0, 1.0], 0.0), vec![2, 2, 2]);
    }

    #[test]
    fn weights_summing_below_a_point_keep_the_last_particle() {
        // Rounding can leave Σw a little under the last point (k + u)/N; the search
        // must stop at the last particle instead of running past the end. Here
        // Σw = 0.95 and the points are 0.225, 0.475, 0.725, 0.975.
        assert_eq!(
            systematic_resample(&[0.25, 0.25, 0.25, 0.2], 0.9),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn counts_are_floor_or_ceil_of_n_w() {
        let w = [0.05, 0.3, 0.15, 0.2, 0.3];
        for step in 0..50 {
            let u = step as f64 / 50.0;
            let ancestors = systematic_resample(&w, u);
            for (i, wi) in w.iter().enumerate() {
                let count = ancestors.iter().filter(|&&a| a == i).count() as f64;
                let expected = wi * w.len() as f64;
                assert!(count >= expected.floor() - 1e-9 && count <= expected.ceil() + 1e-9);
            }
        }
    }
}
