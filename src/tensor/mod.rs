//! `Tensor`: a shape plus f32 storage on one device. Activations are channels-last
//! (NHWC): a feature map is `[batch, height, width, channels]`, and attention tokens
//! are its `height·width` positions with `channels` features, so no transposes are
//! needed between convolutions and attention.

pub mod dtype;

use crate::error::{Error, Result};

/// Where a tensor's elements live.
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaSlice<f32>),
}

#[cfg(feature = "cuda")]
fn on_gpu() -> Error {
    Error::Cuda("the tensor lives on the GPU; the CPU backend cannot read it (copy it with Backend::to_host)".into())
}

#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
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

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
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
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(on_gpu()),
        }
    }

    /// Consumes a CPU tensor into its elements.
    pub fn into_cpu_vec(self) -> Result<Vec<f32>> {
        match self.storage {
            Storage::Cpu(v) => Ok(v),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(on_gpu()),
        }
    }

    /// A tensor on a CUDA device; `data.len()` must equal the product of `shape`.
    #[cfg(feature = "cuda")]
    pub fn from_cuda(shape: &[usize], data: cudarc::driver::CudaSlice<f32>) -> Result<Tensor> {
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
        })
    }

    #[cfg(feature = "cuda")]
    pub fn cuda_data(&self) -> Result<&cudarc::driver::CudaSlice<f32>> {
        match &self.storage {
            Storage::Cuda(v) => Ok(v),
            Storage::Cpu(_) => Err(Error::Cuda(
                "the tensor lives on the CPU, not on the GPU".into(),
            )),
        }
    }

    #[cfg(feature = "cuda")]
    pub fn cuda_data_mut(&mut self) -> Result<&mut cudarc::driver::CudaSlice<f32>> {
        match &mut self.storage {
            Storage::Cuda(v) => Ok(v),
            Storage::Cpu(_) => Err(Error::Cuda(
                "the tensor lives on the CPU, not on the GPU".into(),
            )),
        }
    }
}
