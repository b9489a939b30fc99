//! The Fréchet distance between two Gaussians fitted to feature vectors — FID's
//! measure, here on the digit classifier's penultimate features — for judging how
//! real a set of samples looks:
//! FD = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁Σ₂)^½.
//!
//! tr (Σ₁Σ₂)^½ is computed as tr (Σ₁^½ Σ₂ Σ₁^½)^½: the two matrices are similar, and
//! the second is symmetric positive semi-definite, so both square roots come from
//! symmetric eigendecompositions ([`sym_eigen`]) with real, non-negative
//! eigenvalues (rounding's tiny negative ones are clamped to 0).

mod gaussian;
pub mod sym_eigen;

pub use gaussian::Gaussian;

use crate::error::{Error, Result};
use sym_eigen::SymEigen;

/// The Fréchet distance between `a` and `b` (same dimension), ≥ 0.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    if a.dim != b.dim {
        return Err(Error::shape(
            "Fréchet distance",
            format!("{} features against {}", a.dim, b.dim),
        ));
    }
    let n = a.dim;
    let root_a = SymEigen::new(&a.cov, n)?.map(|l| l.max(0.0).sqrt());
    let product = multiply(&multiply(&root_a, &b.cov, n), &root_a, n);
    let cross: f64 = SymEigen::new(&product, n)?
        .values
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    let shift: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let trace = |m: &[f64]| (0..n).map(|i| m[i * n + i]).sum::<f64>();
    // Rounding can take a distance of zero slightly below it.
    Ok((shift + trace(&a.cov) + trace(&b.cov) - 2.0 * cross).max(0.0))
}

fn multiply(x: &[f64], y: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let xik = x[i * n + k];
            for j in 0..n {
                out[i * n + j] += xik * y[k * n + j];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagonal(mean: &[f64], variances: &[f64]) -> Gaussian {
        let n = mean.len();
        let mut cov = vec![0f64; n * n];
        for (i, v) in variances.iter().enumerate() {
            cov[i * n + i] = *v;
        }
        Gaussian {
            dim: n,
            mean: mean.to_vec(),
            cov,
        }
    }

    #[test]
    fn diagonal_covariances_give_the_closed_form() {
        // Diagonal Σ₁, Σ₂: FD = |μ₁ − μ₂|² + Σ_i (σ₁ᵢ − σ₂ᵢ)².
        // μ: (1, 2, 3) vs (0, 0, 1) → 1 + 4 + 4 = 9; σ: (1, 2, 3) vs (2, 2, 0.5) → 1 + 0 + 6.25.
        let a = diagonal(&[1.0, 2.0, 3.0], &[1.0, 4.0, 9.0]);
        let b = diagonal(&[0.0, 0.0, 1.0], &[4.0, 4.0, 0.25]);
        let fd = frechet_distance(&a, &b).expect("fd");
        assert!((fd - 16.25).abs() < 1e-12, "{fd}");
        assert!((frechet_distance(&b, &a).expect("fd") - 16.25).abs() < 1e-12);
    }

    #[test]
    fn a_rotated_covariance_gives_the_same_distance_as_its_diagonal_form() {
        // Σ₂ = R·diag(4, 1)·Rᵀ with R a 30° rotation, Σ₁ = I: FD = (2 − 1)² + (1 − 1)² = 1
        // whatever R is, since Σ₁ commutes with everything.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let cov = vec![
            4.0 * c * c + s * s,
            (4.0 - 1.0) * c * s,
            (4.0 - 1.0) * c * s,
            4.0 * s * s + c * c,
        ];
        let a = diagonal(&[0.0, 0.0], &[1.0, 1.0]);
        let b = Gaussian {
            dim: 2,
            mean: vec![0.0, 0.0],
            cov,
        };
        assert!((frechet_distance(&a, &b).expect("fd") - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_set_against_itself_is_zero_and_a_shift_adds_its_square() {
        let rows: Vec<f32> = (0..60)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) / 5.0)
            .collect();
        let a = Gaussian::from_samples(&rows, 3).expect("stats");
        assert!(frechet_distance(&a, &a).expect("fd") < 1e-9);
        let shifted: Vec<f32> = rows.iter().map(|v| v + 0.5).collect();
        let b = Gaussian::from_samples(&shifted, 3).expect("stats");
        // Same covariance, means 0.5 apart in each of 3 features: 3 · 0.25.
        let fd = frechet_distance(&a, &b).expect("fd");
        assert!((fd - 0.75).abs() < 1e-5, "{fd}");
    }

    #[test]
    fn mismatched_or_too_few_samples_are_errors() {
        assert!(Gaussian::from_samples(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(Gaussian::from_samples(&[1.0, 2.0], 2).is_err());
        let a = diagonal(&[0.0], &[1.0]);
        let b = diagonal(&[0.0, 0.0], &[1.0, 1.0]);
        assert!(frechet_distance(&a, &b).is_err());
    }
}
