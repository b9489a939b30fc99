//! Eigenvalues and eigenvectors of a small symmetric matrix by the cyclic Jacobi
//! method: each rotation zeroes one off-diagonal pair, and sweeps over all pairs
//! repeat until the off-diagonal part is negligible. O(n³) per sweep with a handful
//! of sweeps; meant for the 64–256 dimensions of feature covariances, where it is
//! accurate to a few ulps of the largest eigenvalue and needs no dependency.

use crate::error::{Error, Result};

/// A symmetric matrix as `values` (row-major `n × n`) = V·diag(λ)·Vᵀ.
#[derive(Debug, Clone, PartialEq)]
pub struct SymEigen {
    pub n: usize,
    /// λ, in no particular order.
    pub values: Vec<f64>,
    /// Row-major `n × n`; column j is the unit eigenvector of `values[j]`.
    pub vectors: Vec<f64>,
}

/// Sweeps before giving up; Jacobi converges quadratically, so a symmetric matrix
/// of a few hundred rows needs about ten.
const MAX_SWEEPS: usize = 60;

impl SymEigen {
    /// Decomposes the symmetric `n × n` matrix `a` (row-major; only its upper
    /// triangle is read). Errors on a wrong length or a non-finite entry.
    pub fn new(a: &[f64], n: usize) -> Result<SymEigen> {
        if a.len() != n * n {
            return Err(Error::shape(
                "symmetric eigendecomposition",
                format!("{} values for a {n}×{n} matrix", a.len()),
            ));
        }
        if a.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "matrix",
                "a non-finite entry: no eigendecomposition",
            ));
        }
        let mut m = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                m[i * n + j] = a[i * n + j];
                m[j * n + i] = a[i * n + j];
            }
        }
        let mut v = vec![0f64; n * n];
        for i in 0..n {
            v[i * n + i] = 1.0;
        }
        let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
        for _ in 0..MAX_SWEEPS {
            let off: f64 = (0..n)
                .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| m[i * n + j] * m[i * n + j])
                .sum::<f64>()
                .sqrt();
            if off <= 1e-15 * scale || off == 0.0 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    rotate(&mut m, &mut v, n, p, q);
                }
            }
        }
        Ok(SymEigen {
            n,
            values: (0..n).map(|i| m[i * n + i]).collect(),
            vectors: v,
        })
    }

    /// V·diag(f(λ))·Vᵀ, row-major: a function of the matrix (f = √ for its square
    /// root).
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let n = self.n;
        let fl: Vec<f64> = self.values.iter().map(|&l| f(l)).collect();
        let mut out = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let s: f64 = (0..n)
                    .map(|k| self.vectors[i * n + k] * fl[k] * self.vectors[j * n + k])
                    .sum();
                out[i * n + j] = s;
                out[j * n + i] = s;
            }
        }
        out
    }
}

/// One Jacobi rotation in the (p, q) plane that zeroes m[p][q]; V accumulates it.
fn rotate(m: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = m[p * n + q];
    if apq == 0.0 {
        return;
    }
    let (app, aqq) = (m[p * n + p], m[q * n + q]);
    // tan of the rotation angle: the smaller root of t² + 2θt − 1 = 0 (stable form).
    let theta = (aqq - app) / (2.0 * apq);
    // (f64::signum(0.0) is 1: a 45° rotation when the diagonal entries are equal.)
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    for k in 0..n {
        let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
        m[k * n + p] = c * mkp - s * mkq;
        m[k * n + q] = s * mkp + c * mkq;
    }
    for k in 0..n {
        let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
        m[p * n + k] = c * mpk - s * mqk;
        m[q * n + k] = s * mpk + c * mqk;
    }
    m[p * n + q] = 0.0;
    m[q * n + p] = 0.0;
    for k in 0..n {
        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
        v[k * n + p] = c * vkp - s * vkq;
        v[k * n + q] = s * vkp + c * vkq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_by_two_has_its_closed_form_eigenvalues() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3, eigenvectors (1, ∓1)/√2.
        let e = SymEigen::new(&[2.0, 1.0, 1.0, 2.0], 2).expect("decomposes");
        let mut values = e.values.clone();
        values.sort_by(f64::total_cmp);
        assert!((values[0] - 1.0).abs() < 1e-14 && (values[1] - 3.0).abs() < 1e-14);
        let back = e.map(|l| l);
        for (got, want) in back.iter().zip([2.0, 1.0, 1.0, 2.0]) {
            assert!((got - want).abs() < 1e-14, "{back:?}");
        }
    }

    #[test]
    fn the_square_root_squares_back_to_the_matrix() {
        // A = B·Bᵀ + I for a fixed B: symmetric positive definite, 7×7.
        let n = 7;
        let b: Vec<f64> = (0..n * n)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let root = SymEigen::new(&a, n).expect("decomposes").map(f64::sqrt);
        for i in 0..n {
            for j in 0..n {
                let sq: f64 = (0..n).map(|k| root[i * n + k] * root[k * n + j]).sum();
                assert!(
                    (sq - a[i * n + j]).abs() < 1e-11,
                    "({i}, {j}): {sq} vs {}",
                    a[i * n + j]
                );
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(SymEigen::new(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(SymEigen::new(&[1.0, f64::NAN, f64::NAN, 1.0], 2).is_err());
    }
}
