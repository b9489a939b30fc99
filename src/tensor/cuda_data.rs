//! The device buffer of a GPU tensor in its element type. Half types travel as raw
//! 16-bit words: the kernels convert them with PTX `cvt` (kernels/prelude.cuh), so
//! no half type is needed on the Rust side.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchArgs, PushKernelArg, SyncOnDrop};

use super::Precision;

#[derive(Debug)]
pub enum CudaData {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
    BF16(CudaSlice<u16>),
}

impl CudaData {
    pub fn precision(&self) -> Precision {
        match self {
            CudaData::F32(_) => Precision::F32,
            CudaData::F16(_) => Precision::F16,
            CudaData::BF16(_) => Precision::BF16,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            CudaData::F32(s) => s.len(),
            CudaData::F16(s) | CudaData::BF16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device address of element `offset`, with the guard that orders later
    /// work on `stream` after its use (for library calls such as cuBLAS).
    pub fn device_ptr_at<'a>(
        &'a self,
        offset: usize,
        stream: &'a cudarc::driver::CudaStream,
    ) -> (u64, SyncOnDrop<'a>) {
        let bytes = (offset * self.precision().bytes_per_element()) as u64;
        let (ptr, guard) = match self {
            CudaData::F32(s) => s.device_ptr(stream),
            CudaData::F16(s) | CudaData::BF16(s) => s.device_ptr(stream),
        };
        (ptr + bytes, guard)
    }

    /// [`CudaData::device_ptr_at`] for a library call that writes the buffer.
    pub fn device_ptr_mut_at<'a>(
        &'a mut self,
        offset: usize,
        stream: &'a cudarc::driver::CudaStream,
    ) -> (u64, SyncOnDrop<'a>) {
        let bytes = (offset * self.precision().bytes_per_element()) as u64;
        let (ptr, guard) = match self {
            CudaData::F32(s) => s.device_ptr_mut(stream),
            CudaData::F16(s) | CudaData::BF16(s) => s.device_ptr_mut(stream),
        };
        (ptr + bytes, guard)
    }
}

// SAFETY: each arm forwards to cudarc's own implementation for the slice it holds,
// which pushes the device pointer and records the slice's events.
unsafe impl<'a, 'b: 'a> PushKernelArg<&'b CudaData> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b CudaData) -> &mut Self {
        match arg {
            CudaData::F32(s) => self.arg(s),
            CudaData::F16(s) | CudaData::BF16(s) => self.arg(s),
        }
    }
}

// SAFETY: as above, for a buffer the kernel writes.
unsafe impl<'a, 'b: 'a> PushKernelArg<&'b mut CudaData> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b mut CudaData) -> &mut Self {
        match arg {
            CudaData::F32(s) => self.arg(s),
            CudaData::F16(s) | CudaData::BF16(s) => self.arg(s),
        }
    }
}
