//! `Tensor`: a shape plus storage on one device (f32 on the CPU; f32, f16 or bf16
//! on a GPU, see [`Precision`]). Activations are channels-last
//! (NHWC): a feature map is `[batch, height, width, channels]`, and attention tokens
//! are its `height·width` positions with `channels` features, so no transposes are
//! needed between convolutions and attention.

#[cfg(feature = "cuda")]
mod cuda_data;
pub mod dtype;
pub mod pool;
mod precision;

#[cfg(feature = "cuda")]
pub use cuda_data::CudaData;
pub use precision::Precision;

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Where a tensor's elements live.
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(CudaData),
}

#[cfg(feature = "cuda")]
fn on_gpu() -> Error {
    Error::Cuda("the tensor lives on the GPU; the CPU backend cannot read it (copy it with Backend::to_host)".into())
}

#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
    /// A backend's precomputed form of these values (the CPU backend keeps the
    /// Winograd transform of a 3×3 convolution weight here), made on first use and
    /// dropped whenever the values can change.
    derived: OnceLock<Vec<f32>>,
}

impl Tensor {
    /// A CPU tensor; `data.len()` must equal the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!(
                    "shape {shape:?} needs {expected} elements, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(data),
            derived: OnceLock::new(),
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type the values are stored in (always f32 on the CPU).
    pub fn precision(&self) -> Precision {
        match &self.storage {
            Storage::Cpu(_) => Precision::F32,
            #[cfg(feature = "cuda")]
            Storage::Cuda(data) => data.precision(),
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut Storage {
        self.derived.take();
        &mut self.storage
    }

    /// The derived form of this tensor's values that `make` computes, computed on
    /// the first call and kept until the values change. One tensor has one derived
    /// form: callers use this only for tensors with a single consumer (weights).
    pub fn derived(&self, make: impl FnOnce() -> Vec<f32>) -> &[f32] {
        self.derived.get_or_init(make)
    }

    /// The same elements under a new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        if count != self.len() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        self.derived.take();
        Ok(self)
    }

    /// `[n, h, w, c]` of a 4-D tensor, or an error naming `op`.
    pub fn dims4(&self, op: &str) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [n, h, w, c] => Ok((n, h, w, c)),
            _ => Err(Error::shape(
                op,
                format!("expected a 4-D NHWC tensor, got shape {:?}", self.shape),
            )),
        }
    }

    /// The size of the last dimension and the number of rows before it.
    pub fn rows_cols(&self, op: &str) -> Result<(usize, usize)> {
        match self.shape.split_last() {
            Some((&cols, rest)) if !rest.is_empty() || cols > 0 => {
                Ok((rest.iter().product(), cols))
            }
            _ => Err(Error::shape(
                op,
                format!("expected at least 1 dimension, got {:?}", self.shape),
            )),
        }
    }

    /// The elements, if this tensor lives on the CPU.
    pub fn cpu_data(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(on_gpu()),
        }
    }

    pub fn cpu_data_mut(&mut self) -> Result<&mut [f32]> {
        self.derived.take();
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(on_gpu()),
        }
    }

    /// Consumes a CPU tensor into its elements.
    pub fn into_cpu_vec(mut self) -> Result<Vec<f32>> {
        match &mut self.storage {
            Storage::Cpu(v) => Ok(std::mem::take(v)),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(on_gpu()),
        }
    }

    /// A tensor on a CUDA device; `data.len()` must equal the product of `shape`.
    #[cfg(feature = "cuda")]
    pub fn from_cuda(shape: &[usize], data: CudaData) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::shape(
                "Tensor::from_cuda",
                format!(
                    "shape {shape:?} needs {expected} elements, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda(data),
            derived: OnceLock::new(),
        })
    }

    #[cfg(feature = "cuda")]
    pub fn cuda_data(&self) -> Result<&CudaData> {
        match &self.storage {
            Storage::Cuda(v) => Ok(v),
            Storage::Cpu(_) => Err(Error::Cuda(
                "the tensor lives on the CPU, not on the GPU".into(),
            )),
        }
    }

    #[cfg(feature = "cuda")]
    pub fn cuda_data_mut(&mut self) -> Result<&mut CudaData> {
        self.derived.take();
        match &mut self.storage {
            Storage::Cuda(v) => Ok(v),
            Storage::Cpu(_) => Err(Error::Cuda(
                "the tensor lives on the CPU, not on the GPU".into(),
            )),
        }
    }
}

impl Drop for Tensor {
    #[allow(irrefutable_let_patterns)] // without the `cuda` feature
    fn drop(&mut self) {
        if let Storage::Cpu(v) = &mut self.storage {
            pool::recycle(std::mem::take(v));
        }
    }
}
