//! A Gaussian fitted to feature vectors: their mean and covariance, from samples or
//! from a safetensors file of precomputed statistics (`mean` [F], `cov` [F, F]).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub dim: usize,
    pub mean: Vec<f64>,
    /// Row-major `dim × dim`, symmetric.
    pub cov: Vec<f64>,
}

impl Gaussian {
    /// The mean and the unbiased covariance (divided by n − 1, as `numpy.cov`) of
    /// the `n = values.len() / dim` rows of `values`. Needs at least two finite rows.
    pub fn from_samples(values: &[f32], dim: usize) -> Result<Gaussian> {
        if dim == 0 || !values.len().is_multiple_of(dim) {
            return Err(Error::shape(
                "feature statistics",
                format!("{} values are not rows of {dim} features", values.len()),
            ));
        }
        let n = values.len() / dim;
        if n < 2 {
            return Err(Error::invalid(
                "feature statistics",
                format!("{n} sample(s): a covariance needs at least 2"),
            ));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid("feature statistics", "a non-finite feature"));
        }
        let mut mean = vec![0f64; dim];
        for row in values.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0f64; dim * dim];
        for row in values.chunks_exact(dim) {
            let centred: Vec<f64> = row.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
            for i in 0..dim {
                for j in i..dim {
                    cov[i * dim + j] += centred[i] * centred[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let c = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = c;
                cov[j * dim + i] = c;
            }
        }
        Ok(Gaussian { dim, mean, cov })
    }

    /// Reads `mean` ([F]) and `cov` ([F, F], symmetric) from a safetensors file
    /// (f32 or f64), e.g. the real-digit statistics shipped beside a classifier.
    pub fn load(path: &Path) -> Result<Gaussian> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(path, "cannot read feature statistics", e))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let view = file.tensor(name).map_err(|_| {
                Error::tensor(path, name, "missing (expected `mean` [F] and `cov` [F, F])")
            })?;
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
                other => {
                    return Err(Error::tensor(
                        path,
                        name,
                        format!("dtype {other:?}; expected F32 or F64"),
                    ))
                }
            };
            if values.iter().any(|v| !v.is_finite()) {
                return Err(Error::tensor(path, name, "holds a non-finite value"));
            }
            Ok((view.shape().to_vec(), values))
        };
        let (mean_shape, mean) = read("mean")?;
        let (cov_shape, cov) = read("cov")?;
        let dim = match mean_shape[..] {
            [d] if d > 0 => d,
            _ => {
                return Err(Error::tensor(
                    path,
                    "mean",
                    format!("shape {mean_shape:?}; expected [F]"),
                ))
            }
        };
        if cov_shape != [dim, dim] {
            return Err(Error::tensor(
                path,
                "cov",
                format!("shape {cov_shape:?}; expected [{dim}, {dim}] to match `mean`"),
            ));
        }
        let scale = cov.iter().fold(0f64, |m, v| m.max(v.abs()));
        for i in 0..dim {
            for j in i + 1..dim {
                if (cov[i * dim + j] - cov[j * dim + i]).abs() > 1e-5 * scale {
                    return Err(Error::tensor(
                        path,
                        "cov",
                        format!("not symmetric at ({i}, {j})"),
                    ));
                }
            }
        }
        Ok(Gaussian { dim, mean, cov })
    }
}
