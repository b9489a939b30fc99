//! Reading a classifier's `model.safetensors` and converting PyTorch's weights to the
//! engine's channels-last layouts, once, at load time.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use safetensors::SafeTensors;

use super::config::LayerSpec;
use super::{Conv, Dims, Linear};
use crate::backend::{Backend, Conv2dGeometry};
use crate::error::{Error, Result};

/// The classifier's safetensors file, read whole (it is small), with a record of
/// which tensors the config used.
///
/// (`model::weights::WeightFile` does the same for U-Nets, but DESIGN.md keeps
/// `reward/` independent of `model/`.)
pub(super) struct Weights<'a> {
    path: &'a Path,
    file: SafeTensors<'a>,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Weights<'a> {
    pub(super) fn parse(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: format!(
                "{e} (the file may be truncated or not a safetensors file; it is {} bytes)",
                bytes.len()
            ),
        })?;
        Ok(Weights {
            path,
            file,
            used: Default::default(),
        })
    }

    /// Reads `name` as f32, requiring PyTorch shape `shape` and finite values.
    fn take(&self, name: &str, shape: &[usize], layer: usize) -> Result<Vec<f32>> {
        let view = self.file.tensor(name).map_err(|_| {
            let mut names: Vec<&str> = self.file.names();
            names.sort_unstable();
            Error::tensor(
                self.path,
                name,
                format!(
                    "missing from the file (layer {layer} of the config needs it; the file holds: {})",
                    names.join(", ")
                ),
            )
        })?;
        if view.shape() != shape {
            return Err(Error::tensor(
                self.path,
                name,
                format!(
                    "has shape {:?}, expected {shape:?} from layer {layer} of the config",
                    view.shape()
                ),
            ));
        }
        let bytes = view.data();
        let values: Vec<f32> = crate::tensor::dtype::float_values_as_f32(bytes, view.dtype())
            .ok_or_else(|| {
                Error::tensor(
                    self.path,
                    name,
                    format!(
                        "dtype {:?} is not supported (expected F32, F16 or BF16)",
                        view.dtype()
                    ),
                )
            })?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(
                self.path,
                name,
                format!("element {i} is not finite ({})", values[i]),
            ));
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(values)
    }

    pub(super) fn ensure_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        let mut unused: Vec<&str> = self
            .file
            .names()
            .into_iter()
            .filter(|n| !used.contains(*n))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort_unstable();
        Err(Error::tensor(
            self.path,
            unused.join(", "),
            "unexpected: no layer of the config uses these tensors (config and weights do not match)",
        ))
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn load_conv(
    backend: &dyn Backend,
    weights: &Weights,
    spec: &LayerSpec,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
) -> Result<Conv> {
    let pt = weights.take(&format!("{name}.weight"), &[cout, cin, k, k], spec.index)?;
    let bias = if bias {
        let v = weights.take(&format!("{name}.bias"), &[cout], spec.index)?;
        Some(backend.tensor(&[cout], v)?)
    } else {
        None
    };
    // PyTorch [co, ci, ky, kx] → [ky, kx, ci, co] (the [K, c_out] im2col matrix, K =
    // k·k·c_in), and its transpose [c_out, K] for the input gradient.
    let patch = k * k * cin;
    let mut weight = vec![0f32; pt.len()];
    let mut weight_t = vec![0f32; pt.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..k {
                for kx in 0..k {
                    let v = pt[((co * cin + ci) * k + ky) * k + kx];
                    let row = (ky * k + kx) * cin + ci;
                    weight[row * cout + co] = v;
                    weight_t[co * patch + row] = v;
                }
            }
        }
    }
    Ok(Conv {
        weight: backend.tensor(&[k, k, cin, cout], weight)?,
        bias,
        geometry: Conv2dGeometry::symmetric(stride, padding),
        weight_t: backend.tensor(&[cout, patch], weight_t)?,
        kernel: k,
    })
}

pub(super) fn load_linear(
    backend: &dyn Backend,
    weights: &Weights,
    spec: &LayerSpec,
    name: &str,
    fin: usize,
    fout: usize,
    bias: bool,
) -> Result<Linear> {
    let pt = weights.take(&format!("{name}.weight"), &[fout, fin], spec.index)?;
    let bias = if bias {
        let v = weights.take(&format!("{name}.bias"), &[fout], spec.index)?;
        Some(backend.tensor(&[fout], v)?)
    } else {
        None
    };
    // Engine input index of PyTorch input index j: identity, unless the input was
    // flattened from a map, where j = c·H·W + y·W + x sits at (y·W + x)·C + c.
    let engine_row = |j: usize| match spec.input {
        Dims::Flat {
            from: Some((h, w, c)),
            ..
        } => {
            let (ch, rest) = (j / (h * w), j % (h * w));
            rest * c + ch
        }
        _ => j,
    };
    let mut weight = vec![0f32; pt.len()];
    let mut weight_t = vec![0f32; pt.len()];
    for o in 0..fout {
        for j in 0..fin {
            let v = pt[o * fin + j];
            let r = engine_row(j);
            weight[r * fout + o] = v;
            weight_t[o * fin + r] = v;
        }
    }
    Ok(Linear {
        weight: backend.tensor(&[fin, fout], weight)?,
        bias,
        weight_t: backend.tensor(&[fout, fin], weight_t)?,
    })
}
