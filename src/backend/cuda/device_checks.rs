//! What the CUDA backend adds to the backend checker ([`crate::backend::check`]):
//! its output buffers start as NaN, its ops are timed with CUDA events on its
//! stream, and around the op checks it reports the device and its libraries, the
//! copy-bandwidth ceiling, every kernel's NVRTC build, the cuBLAS GEMM ceiling the
//! FLOP-bound ops are measured against, and, on tensor-core GPUs in 16 bits, both
//! convolution paths' timings.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::CudaEvent;

use super::backend::CudaBackend;
use super::device::{compile_ptx, library_presence};
use super::kernels::{
    compile_options, elem_define, head_dim_define, ALL, ATTENTION_MMA, ATTENTION_MMA_HEAD_DIMS,
    TENSOR_CORE_ONLY,
};
use crate::backend::check::{rel_l2, CheckResult, Inputs, Subject};
use crate::backend::shapes;
use crate::backend::{Backend, Conv2dGeometry, ConvEpilogue};
use crate::error::{Error, Result};
use crate::rng::{normal_vec, NoiseStream};
use crate::tensor::Precision;

fn drv<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| Error::Cuda(format!("{what}: {e:?}")))
}

fn gb(bytes: usize, ms: f64) -> f64 {
    bytes as f64 / ms / 1e6
}

/// GPU `ordinal` in one precision, under check.
pub struct CudaSubject {
    gpu: Arc<CudaBackend>,
}

impl CudaSubject {
    /// Opens the GPU with every output buffer starting as NaN.
    pub fn open(ordinal: usize, precision: Precision) -> Result<Self> {
        let gpu = CudaBackend::new(ordinal, precision)?.poison_outputs(true);
        Ok(CudaSubject { gpu: Arc::new(gpu) })
    }

    fn tensor_cores_in_16_bits(&self) -> bool {
        self.gpu.precision() != Precision::F32 && self.gpu.device().compute_capability().0 >= 8
    }

    fn timing_event(&self) -> Result<CudaEvent> {
        drv(
            "creating an event",
            self.gpu
                .device()
                .stream()
                .context()
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)),
        )
    }

    /// A device-to-device copy: the memory-bandwidth ceiling for the elementwise kernels.
    fn bandwidth(&self) -> Result<CheckResult> {
        let n = 1usize << 28;
        let stream = self.gpu.device().stream();
        let src = drv("alloc", stream.alloc_zeros::<f32>(n))?;
        let mut dst = drv("alloc", stream.alloc_zeros::<f32>(n))?;
        let ms = self.ms_per_call(10, &mut || drv("copy", stream.memcpy_dtod(&src, &mut dst)))?;
        Ok(CheckResult::info(
            "copy 1 GiB d2d",
            format!(
                "{ms:.3} ms = {:.0} GB/s read+write (bandwidth ceiling)",
                gb(2 * 4 * n, ms)
            ),
        ))
    }

    /// Every kernel built with NVRTC for this precision (the tensor-core kernels and
    /// each attention head dimension where the GPU has tensor cores).
    fn kernel_builds(&self, push: &mut dyn FnMut(CheckResult)) -> Result<()> {
        let precision = self.gpu.precision();
        let device = self.gpu.device();
        let mut builds: Vec<_> = ALL
            .iter()
            .map(|k| (k, vec![elem_define(precision)]))
            .collect();
        if self.tensor_cores_in_16_bits() {
            builds.extend(
                TENSOR_CORE_ONLY
                    .iter()
                    .map(|k| (k, vec![elem_define(precision)])),
            );
            builds.extend(ATTENTION_MMA_HEAD_DIMS.iter().map(|&d| {
                let mut defines = head_dim_define(d);
                defines.push(elem_define(precision));
                (&ATTENTION_MMA, defines)
            }));
        }
        for (kernel, defines) in builds {
            let started = Instant::now();
            let ptx = compile_ptx(kernel, &compile_options(device.arch(), &defines))?;
            push(CheckResult::info(
                format!("nvrtc {}.cu {}", kernel.name, defines.join(" ")),
                format!(
                    "{} bytes of PTX in {:.0} ms",
                    ptx.len(),
                    started.elapsed().as_secs_f64() * 1e3
                ),
            ));
        }
        Ok(())
    }

    /// A large GEMM through the backend's own path (cuBLAS GemmEx in its precision,
    /// f32 accumulation): the ceiling the FLOP-bound ops are measured against.
    fn gemm_ceiling(&self) -> Result<(f64, CheckResult)> {
        let gpu = &self.gpu;
        let n = 8192usize;
        let a = gpu.tensor(&[n, n], normal_vec(23, NoiseStream::Custom(1 << 57), n * n))?;
        let b = gpu.tensor(&[n, n], normal_vec(24, NoiseStream::Custom(1 << 57), n * n))?;
        let ms = self.ms_per_call(5, &mut || gpu.linear(&a, &b, None).map(|_| ()))?;
        let tflops = 2.0 * (n as f64).powi(3) / ms / 1e9;
        let line = CheckResult::info(
            format!("[{}] cuBLAS GEMM 8192³", gpu.precision()),
            format!("{ms:.2} ms = {tflops:.1} TFLOP/s with f32 accumulation (GEMM ceiling)"),
        );
        Ok((tflops, line))
    }

    /// Both convolution paths on SD1.5's 3×3 shapes at batch 2 (implicit GEMM on
    /// tensor cores vs im2col + cuBLAS), for tuning which the backend picks:
    /// informational.
    fn conv_path_timings(&self, push: &mut dyn FnMut(CheckResult)) -> Result<()> {
        let gpu = &self.gpu;
        for (hw, c, stride) in [
            (64, 320, 1),
            (64, 320, 2),
            (32, 640, 1),
            (16, 1280, 1),
            (8, 1280, 1),
        ] {
            let inputs = Inputs::random(&[&[2, hw, hw, c], &[3, 3, c, c], &[c]], 1300);
            let t = inputs.on(gpu.as_ref())?;
            let g = Conv2dGeometry::symmetric(stride, 1);
            let d = shapes::conv2d(&t[0], &t[1], Some(&t[2]), &g)?;
            let flops = 2.0 * (d.rows() * d.patch_len() * d.out_channels) as f64;
            let mma = self.ms_per_call(10, &mut || {
                gpu.conv_mma(&t[0], &t[1], Some(&t[2]), &g, &d, ConvEpilogue::default())
                    .map(|_| ())
            })?;
            let gemm = self.ms_per_call(10, &mut || {
                gpu.gemm_conv(&t[0], &t[1], Some(&t[2]), &g, &d).map(|_| ())
            })?;
            let a = gpu.to_host(&gpu.conv_mma(
                &t[0],
                &t[1],
                Some(&t[2]),
                &g,
                &d,
                ConvEpilogue::default(),
            )?)?;
            let b = gpu.to_host(&gpu.gemm_conv(&t[0], &t[1], Some(&t[2]), &g, &d)?)?;
            push(CheckResult::info(
                format!("[{}] conv paths {hw}²·{c} s{stride}", gpu.precision()),
                format!(
                    "implicit GEMM {mma:.3} ms ({:.0} TFLOP/s), im2col + cuBLAS {gemm:.3} ms ({:.0} TFLOP/s); \
                     picked: {}; the two differ by {:.1e}",
                    flops / mma / 1e9,
                    flops / gemm / 1e9,
                    if gpu.tensor_core_conv(&d, &g) { "implicit GEMM" } else { "im2col" },
                    rel_l2(&a, &b)
                ),
            ));
        }
        Ok(())
    }
}

impl Subject for CudaSubject {
    fn backend(&self) -> Arc<dyn Backend> {
        self.gpu.clone()
    }

    fn precision(&self) -> Precision {
        self.gpu.precision()
    }

    fn label(&self) -> String {
        "GPU".into()
    }

    /// CUDA events around the calls on the backend's stream: the GPU's time, not the
    /// host's time to queue the launches.
    fn ms_per_call(&self, iters: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let stream = self.gpu.device().stream();
        f()?;
        let (start, end) = (self.timing_event()?, self.timing_event()?);
        drv("recording", start.record(stream))?;
        for _ in 0..iters {
            f()?;
        }
        drv("recording", end.record(stream))?;
        self.gpu.device().synchronize()?;
        Ok(drv("reading the timer", start.elapsed_ms(&end))? as f64 / iters as f64)
    }

    fn describe_device(&self, push: &mut dyn FnMut(CheckResult)) -> Result<()> {
        let device = self.gpu.device();
        let libs = library_presence();
        let (free, total) = device.memory()?;
        push(CheckResult::info(
            "device",
            format!(
                "{} ({}), {:.1} GiB free of {:.1} GiB; libcuda {}, libnvrtc {}, libcublas {}",
                device.name()?,
                device.arch(),
                free as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64,
                libs.driver,
                libs.nvrtc,
                libs.cublas
            ),
        ));
        push(self.bandwidth()?);
        Ok(())
    }

    fn before_ops(&self, push: &mut dyn FnMut(CheckResult)) -> Result<Option<f64>> {
        self.kernel_builds(push)?;
        let (ceiling, line) = self.gemm_ceiling()?;
        push(line);
        Ok(Some(ceiling))
    }

    fn after_ops(&self, push: &mut dyn FnMut(CheckResult)) -> Result<()> {
        if self.tensor_cores_in_16_bits() {
            self.conv_path_timings(push)?;
        }
        Ok(())
    }
}
