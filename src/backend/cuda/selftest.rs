//! `diffsteer selftest --device cuda`: every CUDA op against the CPU backend on fresh
//! random inputs (never zeros), whole U-Net forwards against the CPU, and timings
//! with the bytes or FLOPs behind each (in the manner of ggml's test-backend-ops).
//!
//! Each precision is checked in turn. f32 results must agree with the CPU to 1e-5
//! (relative L2). An f16 or bf16 result may miss the f32 CPU result by at most twice
//! what a plain implementation in that precision misses it by ([`RoundingBackend`]:
//! the CPU backend with every stored tensor rounded). Every output buffer starts as
//! NaN, so an element a kernel never writes fails its check.

use std::path::Path;
use std::time::Instant;

use cudarc::driver::CudaEvent;

use super::backend::CudaBackend;
use super::device::{compile_ptx, library_presence};
use super::kernels::{
    compile_options, elem_define, head_dim_define, ALL, ATTENTION_MMA, ATTENTION_MMA_HEAD_DIMS,
    TENSOR_CORE_ONLY,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::rounding::RoundingBackend;
use crate::backend::shapes;
use crate::backend::{Activation, Backend, Conv2dGeometry, ConvEpilogue};
use crate::error::{Error, Result};
use crate::model::{ModelFolder, UNetInputs};
use crate::rng::{normal_vec, NoiseStream};
use crate::tensor::{Precision, Tensor};

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

    fn info(name: impl Into<String>, note: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            rel_l2: None,
            tolerance: None,
            note: note.into(),
        }
    }
}

fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() {
        return f64::NAN;
    }
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

fn timing_event(gpu: &CudaBackend) -> Result<CudaEvent> {
    drv(
        "creating an event",
        gpu.device()
            .stream()
            .context()
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)),
    )
}

/// Milliseconds per call of `f` on the GPU stream (after one warm-up call).
fn gpu_ms(gpu: &CudaBackend, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let (start, end) = (timing_event(gpu)?, timing_event(gpu)?);
    drv("recording", start.record(gpu.device().stream()))?;
    for _ in 0..iters {
        f()?;
    }
    drv("recording", end.record(gpu.device().stream()))?;
    gpu.device().synchronize()?;
    Ok(drv("reading the timer", start.elapsed_ms(&end))? as f64 / iters as f64)
}

fn cpu_ms(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / iters as f64)
}

/// Random host inputs, uploaded to each backend.
struct Inputs {
    shapes: Vec<Vec<usize>>,
    data: Vec<Vec<f32>>,
}

impl Inputs {
    fn random(shapes: &[&[usize]], seed: u64) -> Self {
        let shapes: Vec<Vec<usize>> = shapes.iter().map(|s| s.to_vec()).collect();
        let data = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                normal_vec(
                    seed + i as u64,
                    NoiseStream::Custom(1 << 57),
                    s.iter().product(),
                )
            })
            .collect();
        Inputs { shapes, data }
    }

    fn on(&self, b: &dyn Backend) -> Result<Vec<Tensor>> {
        self.shapes
            .iter()
            .zip(&self.data)
            .map(|(s, d)| b.tensor(s, d.clone()))
            .collect()
    }
}

/// An op under test: returns its output, or `None` when it updated `inputs[0]` in place.
type Op = dyn Fn(&dyn Backend, &mut Vec<Tensor>) -> Result<Option<Tensor>>;

/// What one call of an op does, for the rate printed beside its time.
#[derive(Clone, Copy)]
enum Work {
    Flops(f64),
    Bytes(f64),
}

impl Work {
    fn describe(self, gpu_ms: f64, gemm_ceiling: Option<f64>) -> String {
        match self {
            Work::Flops(f) => {
                let rate = f / gpu_ms / 1e9;
                let share = gemm_ceiling
                    .map(|c| format!(", {:.0}% of the GEMM ceiling", 100.0 * rate / c))
                    .unwrap_or_default();
                format!("{:.2} GFLOP, {rate:.1} TFLOP/s on the GPU{share}", f / 1e9)
            }
            Work::Bytes(b) => format!(
                "{:.1} MB moved, {:.0} GB/s on the GPU",
                b / 1e6,
                b / gpu_ms / 1e6
            ),
        }
    }
}

/// The references a GPU result is held to.
struct References<'a> {
    cpu: &'a CpuBackend,
    /// The plain same-precision implementation, for f16 and bf16.
    plain: Option<RoundingBackend>,
    /// The GEMM rate of this precision on the GPU (TFLOP/s), for the FLOP-bound ops.
    gemm_ceiling: Option<f64>,
}

impl References<'_> {
    /// The error bound for a GPU result given the f32 reference, computing the plain
    /// implementation's error where the precision has one.
    fn tolerance(
        &self,
        reference: &[f32],
        plain_result: impl FnOnce(&RoundingBackend) -> Result<Vec<f32>>,
    ) -> Result<(f64, String)> {
        match &self.plain {
            None => Ok((1e-5, String::new())),
            Some(plain) => {
                let plain_err = rel_l2(&plain_result(plain)?, reference);
                Ok((2.0 * plain_err, format!("plain {plain_err:.1e}; ")))
            }
        }
    }
}

/// Runs `op` on the GPU and the references, compares, and times it.
fn check_op(
    refs: &References,
    gpu: &CudaBackend,
    name: &str,
    inputs: &Inputs,
    work: Work,
    op: &Op,
) -> Result<CheckResult> {
    let result = |b: &dyn Backend| -> Result<Vec<f32>> {
        let mut t = inputs.on(b)?;
        match op(b, &mut t)? {
            Some(out) => b.to_host(&out),
            None => b.to_host(&t[0]),
        }
    };
    let reference = result(refs.cpu)?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| result(plain))?;
    let out = result(gpu)?;
    let err = rel_l2(&out, &reference);
    let mut on_gpu = inputs.on(gpu)?;
    let g = gpu_ms(gpu, 10, || op(gpu, &mut on_gpu).map(|_| ()))?;
    let cpu_note = if refs.plain.is_none() {
        let mut on_cpu = inputs.on(refs.cpu)?;
        let c = cpu_ms(2, || op(refs.cpu, &mut on_cpu).map(|_| ()))?;
        format!(", cpu {c:.1} ms")
    } else {
        String::new()
    };
    Ok(CheckResult {
        name: format!("[{}] {name}", gpu.precision()),
        rel_l2: Some(err),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}gpu {g:.3} ms{cpu_note} ({})",
            work.describe(g, refs.gemm_ceiling)
        ),
    })
}

fn gb(bytes: usize, ms: f64) -> f64 {
    bytes as f64 / ms / 1e6
}

/// Runs every check on GPU `ordinal` for each of `precisions`, calling `report`
/// after each one.
pub fn run(
    ordinal: usize,
    precisions: &[Precision],
    models: &[&Path],
    mut report: impl FnMut(&CheckResult),
) -> Result<Vec<CheckResult>> {
    let mut results = Vec::new();
    let mut push = |r: CheckResult| {
        report(&r);
        results.push(r);
    };
    let cpu = CpuBackend::new();
    for (index, &precision) in precisions.iter().enumerate() {
        let gpu = CudaBackend::new(ordinal, precision)?.poison_outputs(true);
        let device = gpu.device();
        if index == 0 {
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
            push(bandwidth(&gpu)?);
        }
        let mut builds: Vec<_> = ALL
            .iter()
            .map(|k| (k, vec![elem_define(precision)]))
            .collect();
        if precision != Precision::F32 && device.compute_capability().0 >= 8 {
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
        let (ceiling, ceiling_line) = gemm_ceiling(&gpu)?;
        push(ceiling_line);
        let refs = References {
            cpu: &cpu,
            plain: (precision != Precision::F32).then(|| RoundingBackend::new(precision)),
            gemm_ceiling: Some(ceiling),
        };
        for r in op_checks(&refs, &gpu)? {
            push(r);
        }
        push(guided_step_check(&refs, &gpu)?);
        if precision != Precision::F32 && device.compute_capability().0 >= 8 {
            for r in conv_path_timings(&gpu)? {
                push(r);
            }
        }
        for model in models {
            if let Some(r) = classifier_check(&refs, ordinal, precision, model)? {
                push(r);
            }
            push(unet_check(&refs, &gpu, model)?);
            if let Some(r) = sample_check(&refs, &gpu, model)? {
                push(r);
            }
        }
    }
    Ok(results)
}

/// A device-to-device copy: the memory-bandwidth ceiling for the elementwise kernels.
fn bandwidth(gpu: &CudaBackend) -> Result<CheckResult> {
    let n = 1usize << 28;
    let stream = gpu.device().stream();
    let src = drv("alloc", stream.alloc_zeros::<f32>(n))?;
    let mut dst = drv("alloc", stream.alloc_zeros::<f32>(n))?;
    let ms = gpu_ms(gpu, 10, || drv("copy", stream.memcpy_dtod(&src, &mut dst)))?;
    Ok(CheckResult::info(
        "copy 1 GiB d2d",
        format!(
            "{ms:.3} ms = {:.0} GB/s read+write (bandwidth ceiling)",
            gb(2 * 4 * n, ms)
        ),
    ))
}

/// A large GEMM through the backend's own path (cuBLAS GemmEx in its precision,
/// f32 accumulation): the ceiling the FLOP-bound ops are measured against.
fn gemm_ceiling(gpu: &CudaBackend) -> Result<(f64, CheckResult)> {
    let n = 8192usize;
    let a = gpu.tensor(&[n, n], normal_vec(23, NoiseStream::Custom(1 << 57), n * n))?;
    let b = gpu.tensor(&[n, n], normal_vec(24, NoiseStream::Custom(1 << 57), n * n))?;
    let ms = gpu_ms(gpu, 5, || gpu.linear(&a, &b, None).map(|_| ()))?;
    let tflops = 2.0 * (n as f64).powi(3) / ms / 1e9;
    let line = CheckResult::info(
        format!("[{}] cuBLAS GEMM 8192³", gpu.precision()),
        format!("{ms:.2} ms = {tflops:.1} TFLOP/s with f32 accumulation (GEMM ceiling)"),
    );
    Ok((tflops, line))
}

fn op_checks(refs: &References, gpu: &CudaBackend) -> Result<Vec<CheckResult>> {
    let mut out = Vec::new();
    let conv = |name: &str, x: &[usize], w: &[usize], g: Conv2dGeometry| -> Result<CheckResult> {
        let inputs = Inputs::random(&[x, w, &[w[3]]], 100);
        let (oh, ow) = g.output_size(x[1], x[2], w[0], w[1]).unwrap_or((0, 0));
        let flops = 2 * x[0] * oh * ow * w[0] * w[1] * w[2] * w[3];
        check_op(
            refs,
            gpu,
            name,
            &inputs,
            Work::Flops(flops as f64),
            &move |b, t| b.conv2d(&t[0], &t[1], Some(&t[2]), &g).map(Some),
        )
    };
    out.push(conv(
        "conv 3x3 s1 28²·32→64",
        &[16, 28, 28, 32],
        &[3, 3, 32, 64],
        Conv2dGeometry::symmetric(1, 1),
    )?);
    out.push(conv(
        "conv 3x3 s2 64²·320",
        &[2, 64, 64, 320],
        &[3, 3, 320, 320],
        Conv2dGeometry::symmetric(2, 1),
    )?);
    out.push(conv(
        "conv 3x3 s2 pad(0,1,0,1)",
        &[2, 15, 17, 8],
        &[3, 3, 8, 16],
        Conv2dGeometry {
            stride: 2,
            pad_top: 0,
            pad_bottom: 1,
            pad_left: 0,
            pad_right: 1,
        },
    )?);
    out.push(conv(
        "conv 1x1 32²·640→320",
        &[2, 32, 32, 640],
        &[1, 1, 640, 320],
        Conv2dGeometry::symmetric(1, 0),
    )?);

    out.push(conv(
        "conv 3x3 s1 64²·4→320 (cin 4)",
        &[2, 64, 64, 4],
        &[3, 3, 4, 320],
        Conv2dGeometry::symmetric(1, 1),
    )?);
    // A ResNet block's second convolution: time-embedding bias and skip connection
    // applied as the output is written.
    let resnet = Inputs::random(
        &[
            &[2, 32, 32, 640],
            &[3, 3, 640, 640],
            &[640],
            &[2, 640],
            &[2, 32, 32, 640],
        ],
        150,
    );
    out.push(check_op(
        refs,
        gpu,
        "conv 3x3 32²·640 + epilogue",
        &resnet,
        Work::Flops(2.0 * 2.0 * 32.0 * 32.0 * 9.0 * 640.0 * 640.0),
        &|b, t| {
            let epilogue = ConvEpilogue {
                sample_bias: Some(&t[3]),
                residual: Some((&t[4], 0.7)),
            };
            b.conv2d_epilogue(
                &t[0],
                &t[1],
                Some(&t[2]),
                &Conv2dGeometry::symmetric(1, 1),
                epilogue,
            )
            .map(Some)
        },
    )?);

    let linear = Inputs::random(&[&[2, 4096, 320], &[320, 2560], &[2560]], 200);
    out.push(check_op(
        refs,
        gpu,
        "linear 8192×320→2560",
        &linear,
        Work::Flops(2.0 * 8192.0 * 320.0 * 2560.0),
        &|b, t| b.linear(&t[0], &t[1], Some(&t[2])).map(Some),
    )?);

    let gn = Inputs::random(&[&[2, 64, 64, 320], &[320], &[320]], 300);
    let bytes = 2 * 4 * 2 * 64 * 64 * 320;
    out.push(check_op(
        refs,
        gpu,
        "group_norm 32g + silu",
        &gn,
        Work::Bytes(bytes as f64),
        &|b, t| b.group_norm(&t[0], 32, &t[1], &t[2], 1e-5, true).map(Some),
    )?);
    let ln = Inputs::random(&[&[2, 4096, 320], &[320], &[320]], 400);
    out.push(check_op(
        refs,
        gpu,
        "layer_norm 320",
        &ln,
        Work::Bytes(bytes as f64),
        &|b, t| b.layer_norm(&t[0], &t[1], &t[2], 1e-5).map(Some),
    )?);

    for (heads, d, lq, lk) in [
        (8usize, 8usize, 196usize, 196usize),
        (8, 40, 1024, 1024),
        (8, 40, 1024, 77),
        (8, 80, 256, 256),
        (8, 160, 64, 77),
        (4, 64, 300, 300),
        (8, 80, 4096, 4096),
    ] {
        let w = heads * d;
        let inputs = Inputs::random(&[&[2, lq, w], &[2, lk, w], &[2, lk, w]], 500 + d as u64);
        let flops = 4 * 2 * heads * lq * lk * d;
        out.push(check_op(
            refs,
            gpu,
            &format!("attention d{d} {lq}×{lk}"),
            &inputs,
            Work::Flops(flops as f64),
            &move |b, t| b.attention(&t[0], &t[1], &t[2], heads).map(Some),
        )?);
    }

    let gg = Inputs::random(&[&[2, 4096, 2560]], 600);
    out.push(check_op(
        refs,
        gpu,
        "geglu 2560→1280",
        &gg,
        Work::Bytes(4.0 * 3.0 * 2.0 * 4096.0 * 1280.0),
        &|b, t| b.geglu(&t[0]).map(Some),
    )?);
    let ew = Inputs::random(&[&[2, 64, 64, 320], &[2, 64, 64, 320], &[2, 320]], 700);
    let ew_bytes = 4.0 * 2.0 * 64.0 * 64.0 * 320.0;
    out.push(check_op(
        refs,
        gpu,
        "silu (in place)",
        &ew,
        Work::Bytes(ew_bytes * 2.0),
        &|b, t| {
            b.silu_assign(&mut t[0])?;
            Ok(None)
        },
    )?);
    out.push(check_op(
        refs,
        gpu,
        "add ×0.7 (in place)",
        &ew,
        Work::Bytes(ew_bytes * 3.0),
        &|b, t| {
            let (x, rest) = t.split_at_mut(1);
            b.add_assign(&mut x[0], &rest[0], 0.7)?;
            Ok(None)
        },
    )?);
    out.push(check_op(
        refs,
        gpu,
        "channel bias (in place)",
        &ew,
        Work::Bytes(ew_bytes * 2.0),
        &|b, t| {
            let (x, rest) = t.split_at_mut(1);
            b.add_channel_bias_assign(&mut x[0], &rest[1])?;
            Ok(None)
        },
    )?);
    let up = Inputs::random(&[&[2, 64, 64, 320]], 800);
    out.push(check_op(
        refs,
        gpu,
        "upsample 64²→128²",
        &up,
        Work::Bytes(ew_bytes * 5.0),
        &|b, t| b.upsample_nearest(&t[0], 128, 128).map(Some),
    )?);
    out.push(check_op(
        refs,
        gpu,
        "upsample 64²→127×129",
        &up,
        Work::Bytes(ew_bytes * 5.0),
        &|b, t| b.upsample_nearest(&t[0], 127, 129).map(Some),
    )?);
    let timesteps: Vec<f32> = (0..64).map(|i| 999.0 - 15.75 * i as f32).collect();
    let frequencies = crate::backend::embedding::sinusoidal_frequencies(320, 1.0);
    out.push(check_op(
        refs,
        gpu,
        "timestep embedding 64×320",
        &Inputs::random(&[&[1]], 940),
        Work::Bytes(4.0 * 64.0 * 320.0),
        &move |b, _| {
            b.timestep_embedding(&timesteps, &frequencies, 320, true)
                .map(Some)
        },
    )?);

    // The reward classifier's ops (forward and backward).
    let act = Inputs::random(&[&[32, 28, 28, 32], &[32, 28, 28, 32]], 950);
    let act_bytes = 4.0 * 32.0 * 28.0 * 28.0 * 32.0;
    for (name, kind) in [("silu", Activation::Silu), ("relu", Activation::Relu)] {
        out.push(check_op(
            refs,
            gpu,
            &format!("{name} derivative"),
            &act,
            Work::Bytes(act_bytes * 3.0),
            &move |b, t| b.activation_assign(&mut t[0], kind, true),
        )?);
    }
    out.push(check_op(
        refs,
        gpu,
        "relu (in place)",
        &act,
        Work::Bytes(act_bytes * 2.0),
        &|b, t| {
            b.activation_assign(&mut t[0], Activation::Relu, false)?;
            Ok(None)
        },
    )?);
    out.push(check_op(
        refs,
        gpu,
        "mul (in place)",
        &act,
        Work::Bytes(act_bytes * 3.0),
        &|b, t| {
            let (x, rest) = t.split_at_mut(1);
            b.mul_assign(&mut x[0], &rest[0])?;
            Ok(None)
        },
    )?);
    let pool_in = Inputs::random(&[&[32, 29, 27, 32]], 960);
    out.push(check_op(
        refs,
        gpu,
        "avg_pool 2 (29×27 → 14×13)",
        &pool_in,
        Work::Bytes(4.0 * 32.0 * 32.0 * (29.0 * 27.0 + 14.0 * 13.0)),
        &|b, t| b.avg_pool(&t[0], 2).map(Some),
    )?);
    let pool_grad = Inputs::random(&[&[32, 14, 13, 32]], 970);
    out.push(check_op(
        refs,
        gpu,
        "avg_pool backward",
        &pool_grad,
        Work::Bytes(4.0 * 32.0 * 32.0 * (29.0 * 27.0 + 14.0 * 13.0)),
        &|b, t| b.avg_pool_backward(&t[0], 2, 29, 27).map(Some),
    )?);
    // A 3×3 stride-2 convolution's patch gradients over a 32×14×14×32 input.
    let col = Inputs::random(&[&[32 * 7 * 7, 9 * 32]], 980);
    out.push(check_op(
        refs,
        gpu,
        "col2im 3×3 s2 p1",
        &col,
        Work::Bytes(4.0 * 32.0 * (49.0 * 288.0 + 196.0 * 32.0)),
        &|b, t| {
            b.col2im(
                &t[0],
                [32, 14, 14, 32],
                (3, 3),
                &Conv2dGeometry::symmetric(2, 1),
            )
            .map(Some)
        },
    )?);

    out.extend(text_and_vae_op_checks(refs, gpu)?);

    let cat = Inputs::random(&[&[2, 32, 32, 320], &[2, 32, 32, 640]], 900);
    out.push(check_op(
        refs,
        gpu,
        "concat 320+640",
        &cat,
        Work::Bytes(2.0 * 4.0 * 2.0 * 32.0 * 32.0 * 960.0),
        &|b, t| b.concat_channels(&t[0], &t[1]).map(Some),
    )?);
    Ok(out)
}

/// The ops the CLIP text encoder and the VAE add: causal attention at CLIP's shape
/// (77 tokens, 12 heads of 64, a batch of 2 prompts), the GELU family with and
/// without derivatives, and the VAE mid block's single 512-wide head.
fn text_and_vae_op_checks(refs: &References, gpu: &CudaBackend) -> Result<Vec<CheckResult>> {
    let mut out = Vec::new();
    let (l, heads, d) = (77usize, 12usize, 64usize);
    let w = heads * d;
    let inputs = Inputs::random(&[&[2, l, w], &[2, l, w], &[2, l, w]], 1100);
    out.push(check_op(
        refs,
        gpu,
        "causal attention d64 77×77",
        &inputs,
        Work::Flops((2 * 2 * heads * l * (l + 1) * d) as f64),
        &move |b, t| b.causal_attention(&t[0], &t[1], &t[2], heads).map(Some),
    )?);
    let mlp = Inputs::random(&[&[2, l, 3072]], 1110);
    let mlp_bytes = 4.0 * 2.0 * 77.0 * 3072.0;
    for (name, act) in [
        ("gelu", Activation::Gelu),
        ("quick gelu", Activation::QuickGelu),
    ] {
        out.push(check_op(
            refs,
            gpu,
            &format!("{name} (in place)"),
            &mlp,
            Work::Bytes(mlp_bytes * 2.0),
            &move |b, t| {
                b.activation_assign(&mut t[0], act, false)?;
                Ok(None)
            },
        )?);
        out.push(check_op(
            refs,
            gpu,
            &format!("{name} derivative"),
            &mlp,
            Work::Bytes(mlp_bytes * 3.0),
            &move |b, t| b.activation_assign(&mut t[0], act, true),
        )?);
    }
    // A 32×32 latent (256² images): the plain 16-bit reference stays quick.
    let vae = Inputs::random(&[&[1, 1024, 512], &[1, 1024, 512], &[1, 1024, 512]], 1120);
    out.push(check_op(
        refs,
        gpu,
        "attention d512 1024×1024 (VAE)",
        &vae,
        Work::Flops(4.0 * 1024.0 * 1024.0 * 512.0),
        &|b, t| b.attention(&t[0], &t[1], &t[2], 1).map(Some),
    )?);
    Ok(out)
}

/// A whole U-Net forward on both backends at batch 4 with random inputs.
fn unet_check(refs: &References, gpu: &CudaBackend, dir: &Path) -> Result<CheckResult> {
    let folder = ModelFolder::locate(dir)?;
    let on_cpu = folder.load_unet(refs.cpu)?;
    let on_gpu = folder.load_unet(gpu)?;
    let config = on_cpu.config();
    let (h, w) = config.sample_size.unwrap_or((32, 32));
    let batch = 4;
    let shape = [batch, h, w, config.in_channels];
    let x = normal_vec(1000, NoiseStream::Custom(1 << 57), shape.iter().product());
    let timesteps: Vec<f32> = vec![999.0, 640.5, 250.0, 3.0];
    let labels: Option<Vec<usize>> = on_cpu
        .num_classes()
        .map(|c| (0..batch).map(|i| (3 * i) % c).collect());
    let states = config.cross_attention_dim.map(|d| {
        (
            vec![batch, 7, d],
            normal_vec(1001, NoiseStream::Custom(1 << 57), batch * 7 * d),
        )
    });
    let run =
        |b: &dyn Backend, unet: &crate::model::UNet, iters: usize| -> Result<(Vec<f32>, f64)> {
            let xt = b.tensor(&shape, x.clone())?;
            let enc = states
                .as_ref()
                .map(|(s, v)| b.tensor(s, v.clone()))
                .transpose()?;
            let inputs = UNetInputs {
                timesteps: &timesteps,
                class_labels: labels.as_deref(),
                encoder_hidden_states: enc.as_ref(),
            };
            let out = b.to_host(&unet.forward(b, &xt, &inputs)?)?;
            let t = Instant::now();
            for _ in 0..iters {
                b.to_host(&unet.forward(b, &xt, &inputs)?)?;
            }
            Ok((out, t.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64))
        };
    let (reference, cpu_ms) = run(refs.cpu, &on_cpu, 5)?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| {
        let on_plain = folder.load_unet(plain)?;
        Ok(run(plain, &on_plain, 0)?.0)
    })?;
    let (out, gpu_ms) = run(gpu, &on_gpu, 5)?;
    Ok(CheckResult {
        name: format!(
            "[{}] unet {}",
            gpu.precision(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        ),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!("{plain_note}batch {batch} {h}×{w}: gpu {gpu_ms:.2} ms, cpu {cpu_ms:.1} ms per forward (incl. copy back)"),
    })
}

/// A 20-step DDIM sample with CFG (scale 3) of four images on the GPU against the
/// same run on the references, for models conditioned on a class or on nothing (a
/// text-conditioned model's forward is checked by [`unet_check`]). f32 must agree
/// to 1e-4, DESIGN.md's bound for whole trajectories.
fn sample_check(refs: &References, gpu: &CudaBackend, dir: &Path) -> Result<Option<CheckResult>> {
    use crate::guidance::{Guidance, GuidanceInterval};
    use crate::sampler::{Condition, PhiloxNoise, SampleSpec, Sampler};
    use crate::schedule::{self, ScheduleOptions, SchedulerKind};

    let folder = ModelFolder::locate(dir)?;
    let config = folder.load_scheduler_config()?;
    let steps = 20;
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &config,
        steps,
        &ScheduleOptions::default(),
    )?;
    let run = |b: &dyn Backend| -> Result<Option<(Vec<f32>, f64)>> {
        let unet = folder.load_unet(b)?;
        if unet.config().cross_attention_dim.is_some() {
            return Ok(None);
        }
        let classes = unet.num_classes();
        let specs: Vec<SampleSpec> = (0..4)
            .map(|i| SampleSpec {
                seed: i as u64,
                condition: match classes {
                    // The last class is the null class.
                    Some(c) if c > 1 => Condition::Class((3 * i) % (c - 1)),
                    _ => Condition::Unconditional,
                },
                guidance: Guidance {
                    scale: 3.0,
                    rescale: 0.0,
                    interval: GuidanceInterval::ALWAYS,
                },
            })
            .collect();
        let sampler = Sampler::new(b, &unet, scheduler.as_ref())?;
        let started = Instant::now();
        let outputs = sampler.sample(&specs, &PhiloxNoise, &mut |_| {})?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(Some((
            outputs.into_iter().flat_map(|o| o.data).collect(),
            ms,
        )))
    };
    let Some((reference, cpu_ms)) = run(refs.cpu)? else {
        return Ok(None);
    };
    let (tolerance, plain_note) = match &refs.plain {
        None => (1e-4, String::new()),
        Some(_) => refs.tolerance(&reference, |plain| {
            run(plain)?
                .map(|(v, _)| v)
                .ok_or_else(|| Error::Cuda("the plain reference skipped the model".into()))
        })?,
    };
    let Some((out, gpu_ms)) = run(gpu)? else {
        return Ok(None);
    };
    Ok(Some(CheckResult {
        name: format!(
            "[{}] sample {} (DDIM {steps}, CFG 3)",
            gpu.precision(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        ),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}4 images: gpu {gpu_ms:.1} ms, cpu {cpu_ms:.0} ms (incl. model load)"
        ),
    }))
}

/// The fused guidance + scheduler step over SD-sized latents (4×64×64) of five slots
/// that cover its branches: CFG with rescale, plain CFG, a reward shift without CFG,
/// a clamped x̂₀ with noise, and a multistep history.
fn guided_step_check(refs: &References, gpu: &CudaBackend) -> Result<CheckResult> {
    use crate::backend::{SlotStep, StepBuffers};
    use crate::schedule::LinearStep;

    let per = 4 * 64 * 64;
    let (rows, slots) = (7usize, 5usize);
    let random = |seed: u64, n: usize| normal_vec(seed, NoiseStream::Custom(1 << 57), n);
    let model = random(1100, rows * per);
    let latents = random(1101, slots * per);
    let history = random(1102, slots * per);
    let noise = random(1103, slots * per);
    let shift: Vec<f32> = random(1104, slots * per).iter().map(|v| 0.05 * v).collect();
    let update = LinearStep {
        x0_from_sample: 1.3,
        x0_from_output: -0.8,
        clip: None,
        sample: 0.4,
        output: 0.1,
        x0: 0.6,
        history: 0.0,
        noise: 0.0,
    };
    let slot = |uncond_row, cond_row, cfg_rescale, shifted, update| SlotStep {
        uncond_row,
        cond_row,
        cfg_scale: 4.5,
        cfg_rescale,
        shifted,
        update,
    };
    let plan = [
        slot(Some(0), 2, 0.7, false, update),
        slot(Some(1), 3, 0.0, true, update),
        slot(None, 4, 0.0, true, update),
        slot(
            None,
            5,
            0.0,
            false,
            LinearStep {
                clip: Some(1.0),
                noise: 0.3,
                ..update
            },
        ),
        slot(
            Some(0),
            6,
            0.0,
            false,
            LinearStep {
                history: -0.2,
                ..update
            },
        ),
    ];
    let buffers = StepBuffers {
        latents: &latents,
        history: Some(&history),
        noise: Some(&noise),
        shift: Some(&shift),
    };
    let result = |b: &dyn Backend| -> Result<Vec<f32>> {
        let out = b.tensor(&[rows, per], model.clone())?;
        let r = b.guided_step(&out, &plan, &buffers)?;
        Ok(r.next.into_iter().chain(r.x0).collect())
    };
    let reference = result(refs.cpu)?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| result(plain))?;
    let out = result(gpu)?;
    let on_gpu = gpu.tensor(&[rows, per], model.clone())?;
    let ms = gpu_ms(gpu, 10, || {
        gpu.guided_step(&on_gpu, &plan, &buffers).map(|_| ())
    })?;
    // Read: 3 model rows per slot at most, 4 f32 inputs; written: 2 f32 outputs.
    let bytes = slots * per * (3 * gpu.precision().bytes_per_element() + 6 * 4);
    Ok(CheckResult {
        name: format!("[{}] guided step (fused CFG + rescale + shift + update)", gpu.precision()),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}{slots} slots of {per}: {ms:.3} ms per call incl. uploads and read-back ({:.1} MB)",
            bytes as f64 / 1e6
        ),
    })
}

/// The reward classifier next to a model folder (`../digit-classifier`, as
/// `generate` finds it), loaded on the GPU: log-probabilities and their input
/// gradients for 64 random images against the CPU.
fn classifier_check(
    refs: &References,
    ordinal: usize,
    precision: Precision,
    model: &Path,
) -> Result<Option<CheckResult>> {
    use crate::reward::classifier::Classifier;
    use std::sync::Arc;

    let dir = model.with_file_name("digit-classifier");
    if !dir.join("config.json").is_file() {
        return Ok(None);
    }
    let n = 64;
    let run = |backend: Arc<dyn Backend>| -> Result<Vec<f32>> {
        let classifier = Classifier::load_on(&dir, backend)?;
        let per = classifier.input_shape().len();
        let x: Vec<f32> = normal_vec(1200, NoiseStream::Custom(1 << 57), n * per)
            .iter()
            .map(|v| 0.5 * v)
            .collect();
        let classes: Vec<usize> = (0..n).map(|i| i % classifier.num_classes()).collect();
        let mut grad = vec![0f32; x.len()];
        let log_probs = classifier.log_prob_and_grad(&x, &classes, Some(&mut grad))?;
        Ok(log_probs.into_iter().chain(grad).collect())
    };
    let reference = run(Arc::new(CpuBackend::new()))?;
    let (tolerance, plain_note) = match &refs.plain {
        None => (1e-5, String::new()),
        Some(_) => {
            let plain = run(Arc::new(RoundingBackend::new(precision)))?;
            let err = rel_l2(&plain, &reference);
            (2.0 * err, format!("plain {err:.1e}; "))
        }
    };
    let started = Instant::now();
    let out = run(Arc::new(CudaBackend::new(ordinal, precision)?))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(Some(CheckResult {
        name: format!("[{precision}] reward classifier fwd + bwd"),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}{n} images: log p and ∂/∂x, {ms:.1} ms incl. load and kernel compiles"
        ),
    }))
}

/// Both convolution paths on SD1.5's 3×3 shapes at batch 2 (implicit GEMM on tensor
/// cores vs im2col + cuBLAS), for tuning which the backend picks: informational.
fn conv_path_timings(gpu: &CudaBackend) -> Result<Vec<CheckResult>> {
    let mut out = Vec::new();
    for (hw, c, stride) in [
        (64, 320, 1),
        (64, 320, 2),
        (32, 640, 1),
        (16, 1280, 1),
        (8, 1280, 1),
    ] {
        let inputs = Inputs::random(&[&[2, hw, hw, c], &[3, 3, c, c], &[c]], 1300);
        let t = inputs.on(gpu)?;
        let g = Conv2dGeometry::symmetric(stride, 1);
        let d = shapes::conv2d(&t[0], &t[1], Some(&t[2]), &g)?;
        let flops = 2.0 * (d.rows() * d.patch_len() * d.out_channels) as f64;
        let mma = gpu_ms(gpu, 10, || {
            gpu.conv_mma(&t[0], &t[1], Some(&t[2]), &g, &d, ConvEpilogue::default())
                .map(|_| ())
        })?;
        let gemm = gpu_ms(gpu, 10, || {
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
        out.push(CheckResult::info(
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
    Ok(out)
}
