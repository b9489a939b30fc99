//! `diffsteer selftest --device cuda`: every kernel and cuBLAS against the CPU on fresh
//! random inputs, with timings and the bytes/FLOPs behind them.

use std::time::Instant;

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{CudaEvent, LaunchConfig, PushKernelArg};

use super::device::{compile_ptx, library_presence, CudaDevice};
use super::kernels::{compile_options, ALL, ELEMENTWISE};
use crate::error::{Error, Result};
use crate::rng::{normal_vec, NoiseStream};

/// One line of the report.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub rel_l2: Option<f64>,
    pub tolerance: Option<f64>,
    pub note: String,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        match (self.rel_l2, self.tolerance) {
            (Some(err), Some(tol)) => err.is_finite() && err <= tol,
            _ => true,
        }
    }
}

fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    let mut diff = 0f64;
    let mut norm = 0f64;
    for (&o, &r) in out.iter().zip(reference) {
        diff += (o as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    (diff / norm).sqrt()
}

fn drv<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| Error::Cuda(format!("{what}: {e:?}")))
}

fn timing_event(device: &CudaDevice) -> Result<CudaEvent> {
    drv(
        "creating an event",
        device
            .stream()
            .context()
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)),
    )
}

/// Runs every check, calling `report` after each one.
pub fn run(device: &CudaDevice, mut report: impl FnMut(&CheckResult)) -> Result<Vec<CheckResult>> {
    let mut results = Vec::new();
    let mut push = |r: CheckResult| {
        report(&r);
        results.push(r);
    };
    let libs = library_presence();
    let (free, total) = device.memory()?;
    push(CheckResult {
        name: "device".into(),
        rel_l2: None,
        tolerance: None,
        note: format!(
            "{} ({}), {:.1} GiB free of {:.1} GiB; libcuda {}, libnvrtc {}, libcublas {}",
            device.name()?,
            device.arch(),
            free as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64,
            libs.driver,
            libs.nvrtc,
            libs.cublas
        ),
    });

    for kernel in ALL {
        let started = Instant::now();
        let ptx = compile_ptx(kernel, &compile_options(device.arch(), &[]))?;
        push(CheckResult {
            name: format!("nvrtc {}.cu", kernel.name),
            rel_l2: None,
            tolerance: None,
            note: format!(
                "{} bytes of PTX in {:.0} ms",
                ptx.len(),
                started.elapsed().as_secs_f64() * 1e3
            ),
        });
    }

    push(check_axpby(device)?);
    push(check_sgemm(device)?);
    Ok(results)
}

fn check_axpby(device: &CudaDevice) -> Result<CheckResult> {
    let n: usize = 1 << 26;
    let x = normal_vec(11, NoiseStream::Custom(1 << 40), n);
    let y = normal_vec(12, NoiseStream::Custom(1 << 40), n);
    let (a, b) = (0.7f32, -1.3f32);
    let reference: Vec<f32> = x.iter().zip(&y).map(|(&x, &y)| a * x + b * y).collect();

    let stream = device.stream();
    let dx = drv("upload", stream.clone_htod(&x))?;
    let dy = drv("upload", stream.clone_htod(&y))?;
    let mut dout = drv("alloc", stream.alloc_zeros::<f32>(n))?;
    let func = device.function(&ELEMENTWISE, &[], "axpby_f32")?;
    let cfg = LaunchConfig {
        grid_dim: (132 * 8, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let n64 = n as u64;
    let launch = |out: &mut cudarc::driver::CudaSlice<f32>| -> Result<()> {
        let mut builder = stream.launch_builder(&func);
        builder.arg(out).arg(&dx).arg(&dy).arg(&a).arg(&b).arg(&n64);
        // SAFETY: the argument list matches the kernel's signature and every buffer holds n floats.
        drv("launching axpby_f32", unsafe { builder.launch(cfg) }).map(|_| ())
    };
    launch(&mut dout)?;
    let out = drv("download", stream.clone_dtoh(&dout))?;
    let err = rel_l2(&out, &reference);

    let iters = 20;
    let start = timing_event(device)?;
    let end = timing_event(device)?;
    drv("record", start.record(stream))?;
    for _ in 0..iters {
        launch(&mut dout)?;
    }
    drv("record", end.record(stream))?;
    device.synchronize()?;
    let ms = drv("elapsed", start.elapsed_ms(&end))? as f64 / iters as f64;
    let bytes = 12.0 * n as f64;
    Ok(CheckResult {
        name: "kernel axpby_f32".into(),
        rel_l2: Some(err),
        tolerance: Some(1e-6),
        note: format!(
            "{n} elements: {ms:.3} ms, {:.0} GB/s (12 B/element)",
            bytes / ms / 1e6
        ),
    })
}

fn check_sgemm(device: &CudaDevice) -> Result<CheckResult> {
    // Correctness at a size the CPU checks quickly, speed at one that fills the GPU.
    let check = 384usize;
    let a = normal_vec(21, NoiseStream::Custom(1 << 40), check * check);
    let b = normal_vec(22, NoiseStream::Custom(1 << 40), check * check);
    let mut reference = vec![0f32; check * check];
    for i in 0..check {
        for k in 0..check {
            let aik = a[i * check + k] as f64;
            for j in 0..check {
                reference[i * check + j] += (aik * b[k * check + j] as f64) as f32;
            }
        }
    }
    let stream = device.stream();
    let da = drv("upload", stream.clone_htod(&a))?;
    let db = drv("upload", stream.clone_htod(&b))?;
    let mut dc = drv("alloc", stream.alloc_zeros::<f32>(check * check))?;
    // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: pass B first.
    let cfg = |n: usize| GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: n as i32,
        k: n as i32,
        alpha: 1.0f32,
        lda: n as i32,
        ldb: n as i32,
        beta: 0.0f32,
        ldc: n as i32,
    };
    // SAFETY: all three buffers hold check² floats, matching the config.
    unsafe { device.blas().gemm(cfg(check), &db, &da, &mut dc) }
        .map_err(|e| Error::Cuda(format!("cuBLAS sgemm: {e:?}")))?;
    let out = drv("download", stream.clone_dtoh(&dc))?;
    let err = rel_l2(&out, &reference);

    let big = 8192usize;
    let ba = drv(
        "upload",
        stream.clone_htod(&normal_vec(23, NoiseStream::Custom(1 << 40), big * big)),
    )?;
    let bb = drv(
        "upload",
        stream.clone_htod(&normal_vec(24, NoiseStream::Custom(1 << 40), big * big)),
    )?;
    let mut bc = drv("alloc", stream.alloc_zeros::<f32>(big * big))?;
    let iters = 5;
    for _ in 0..2 {
        // SAFETY: as above, with big² floats.
        unsafe { device.blas().gemm(cfg(big), &bb, &ba, &mut bc) }
            .map_err(|e| Error::Cuda(format!("cuBLAS sgemm: {e:?}")))?;
    }
    let start = timing_event(device)?;
    let end = timing_event(device)?;
    drv("record", start.record(stream))?;
    for _ in 0..iters {
        // SAFETY: as above.
        unsafe { device.blas().gemm(cfg(big), &bb, &ba, &mut bc) }
            .map_err(|e| Error::Cuda(format!("cuBLAS sgemm: {e:?}")))?;
    }
    drv("record", end.record(stream))?;
    device.synchronize()?;
    let ms = drv("elapsed", start.elapsed_ms(&end))? as f64 / iters as f64;
    let flops = 2.0 * (big as f64).powi(3);
    Ok(CheckResult {
        name: "cuBLAS sgemm".into(),
        rel_l2: Some(err),
        tolerance: Some(1e-5),
        note: format!(
            "checked at {check}³; {big}³ in {ms:.2} ms = {:.1} TFLOP/s f32",
            flops / ms / 1e9
        ),
    })
}
