//! The CUDA backend: a cudarc context, kernels compiled at run time by NVRTC (see
//! [`kernels`]), and cuBLAS. The CUDA libraries are loaded dynamically, so a binary
//! built with the `cuda` feature still runs (on the CPU) where there is no driver.

pub mod backend;
pub mod device;
pub mod device_checks;
pub mod kernels;

pub use backend::CudaBackend;
pub use device::CudaDevice;
