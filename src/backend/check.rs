//! Any backend against the CPU backend, op by op, on fresh random inputs (never
//! zeros), each op timed with the bytes or FLOPs behind it (in the manner of ggml's
//! test-backend-ops and llm.c's napkin math). `diffsteer selftest` runs it for the
//! CUDA backend; `tests/backend_check.rs` runs it on the CPU for the plain 16-bit
//! backend and a deliberately wrong one, so the checker itself is tested without a
//! GPU.
//!
//! Bounds, in relative L2 against the f32 CPU result: an f32 backend within 1e-5;
//! an f16 or bf16 one within twice what a plain implementation in that precision
//! misses it by ([`RoundingBackend`]: the CPU backend with every stored tensor
//! rounded). A backend that can start every output buffer as NaN should do so for
//! the check (the CUDA backend's `poison_outputs`), so that an element an op never
//! writes fails.
//!
//! What only one device has (compiler reports, bandwidth and GEMM ceilings, its own
//! clock, timings of its internal paths) comes in through [`Subject`].

use std::sync::Arc;
use std::time::Instant;

mod cases;
mod fused_step;

use super::cpu::CpuBackend;
use super::rounding::RoundingBackend;
use super::Backend;
use crate::error::Result;
use crate::rng::{normal_vec, NoiseStream};
use crate::tensor::{Precision, Tensor};
use cases::{op_cases, OpCase};

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

    /// A line that reports without comparing (a device, a timing, a ceiling).
    pub fn info(name: impl Into<String>, note: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            rel_l2: None,
            tolerance: None,
            note: note.into(),
        }
    }
}

/// ‖out − reference‖ / ‖reference‖, NaN when the lengths differ.
pub fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
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

/// Milliseconds per call of `f` by the wall clock, after one warm-up call: right
/// for backends whose ops have finished when they return.
pub fn wall_ms(iters: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64)
}

/// Random host inputs, uploaded to each backend.
pub struct Inputs {
    shapes: Vec<Vec<usize>>,
    data: Vec<Vec<f32>>,
}

impl Inputs {
    /// Standard normal values, tensor i from Philox seed `seed + i`.
    pub fn random(shapes: &[&[usize]], seed: u64) -> Self {
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

    pub fn on(&self, b: &dyn Backend) -> Result<Vec<Tensor>> {
        self.shapes
            .iter()
            .zip(&self.data)
            .map(|(s, d)| b.tensor(s, d.clone()))
            .collect()
    }
}

/// An op under test: returns its output, or `None` when it updated `inputs[0]` in place.
pub type Op = dyn Fn(&dyn Backend, &mut Vec<Tensor>) -> Result<Option<Tensor>>;

/// What one call of an op does, for the rate printed beside its time.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
}

impl Work {
    /// The work and its rate at `ms` per call on `device` ("GPU"), FLOPs also as a
    /// share of the device's GEMM rate when known.
    pub fn describe(self, ms: f64, device: &str, gemm_ceiling: Option<f64>) -> String {
        match self {
            Work::Flops(f) => {
                let rate = f / ms / 1e9;
                let share = gemm_ceiling
                    .map(|c| format!(", {:.0}% of the GEMM ceiling", 100.0 * rate / c))
                    .unwrap_or_default();
                format!(
                    "{:.2} GFLOP, {rate:.1} TFLOP/s on the {device}{share}",
                    f / 1e9
                )
            }
            Work::Bytes(b) => format!(
                "{:.1} MB moved, {:.0} GB/s on the {device}",
                b / 1e6,
                b / ms / 1e6
            ),
        }
    }
}

/// The references a result is held to in one precision.
pub struct References<'a> {
    pub cpu: &'a CpuBackend,
    /// The plain same-precision implementation, for f16 and bf16.
    pub plain: Option<RoundingBackend>,
}

impl<'a> References<'a> {
    pub fn new(cpu: &'a CpuBackend, precision: Precision) -> Self {
        References {
            cpu,
            plain: (precision != Precision::F32).then(|| RoundingBackend::new(precision)),
        }
    }

    /// The error bound for a result given the f32 reference, computing the plain
    /// implementation's error where the precision has one; also the note that
    /// reports that error.
    pub fn tolerance(
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

/// A backend under check in one precision, with what its device adds to the
/// generic checks.
pub trait Subject {
    fn backend(&self) -> Arc<dyn Backend>;

    /// The precision the backend stores tensors in (its bound follows from it).
    fn precision(&self) -> Precision;

    /// The device as the report names it: "on the GPU"; lower-cased before a time.
    fn label(&self) -> String;

    /// Milliseconds per call of `f` on the device, after one warm-up call. The
    /// default is the wall clock, right where ops finish before they return.
    fn ms_per_call(&self, iters: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        wall_ms(iters, f)
    }

    /// Lines about the device, reported once before its first precision.
    fn describe_device(&self, push: &mut dyn FnMut(CheckResult)) -> Result<()> {
        let _ = push;
        Ok(())
    }

    /// The device's own checks before the op checks; returns its GEMM rate in
    /// TFLOP/s where it measured one (FLOP-bound ops are reported as a share of it).
    fn before_ops(&self, push: &mut dyn FnMut(CheckResult)) -> Result<Option<f64>> {
        let _ = push;
        Ok(None)
    }

    /// The device's own checks after the op checks.
    fn after_ops(&self, push: &mut dyn FnMut(CheckResult)) -> Result<()> {
        let _ = push;
        Ok(())
    }
}

/// A backend whose ops have finished when they return (CPU-side backends), with
/// no device checks of its own.
pub struct HostSubject {
    backend: Arc<dyn Backend>,
    precision: Precision,
    label: String,
}

impl HostSubject {
    pub fn new(backend: Arc<dyn Backend>, precision: Precision, label: impl Into<String>) -> Self {
        HostSubject {
            backend,
            precision,
            label: label.into(),
        }
    }
}

impl Subject for HostSubject {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// Which shapes the op checks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    /// Stable Diffusion's shapes (64×64×320 feature maps, 4096-token attention),
    /// for a GPU: the timings then mean something.
    Device,
    /// The same ops on shapes a CPU checks in seconds, for tests.
    Small,
}

/// Runs the subject's own checks, every op at `sizes` and the fused step against
/// the references, calling `push` with each line.
pub fn run(
    subject: &dyn Subject,
    refs: &References,
    sizes: Sizes,
    push: &mut dyn FnMut(CheckResult),
) -> Result<()> {
    let ceiling = subject.before_ops(push)?;
    for case in op_cases(sizes) {
        push(check_op(refs, subject, ceiling, &case)?);
    }
    push(fused_step::check(refs, subject, sizes)?);
    subject.after_ops(push)
}

/// Runs one op on the subject and the references, compares, and times it.
fn check_op(
    refs: &References,
    subject: &dyn Subject,
    gemm_ceiling: Option<f64>,
    case: &OpCase,
) -> Result<CheckResult> {
    let shapes: Vec<&[usize]> = case.shapes.iter().map(Vec::as_slice).collect();
    let inputs = Inputs::random(&shapes, case.seed);
    let op = &case.op;
    let result = |b: &dyn Backend| -> Result<Vec<f32>> {
        let mut t = inputs.on(b)?;
        match op(b, &mut t)? {
            Some(out) => b.to_host(&out),
            None => b.to_host(&t[0]),
        }
    };
    let backend = subject.backend();
    let device = subject.label();
    let reference = result(refs.cpu)?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| result(plain))?;
    let out = result(backend.as_ref())?;
    let err = rel_l2(&out, &reference);
    let mut on_device = inputs.on(backend.as_ref())?;
    let ms = subject.ms_per_call(10, &mut || op(backend.as_ref(), &mut on_device).map(|_| ()))?;
    let cpu_note = if refs.plain.is_none() {
        let mut on_cpu = inputs.on(refs.cpu)?;
        let c = wall_ms(2, &mut || op(refs.cpu, &mut on_cpu).map(|_| ()))?;
        format!(", cpu {c:.1} ms")
    } else {
        String::new()
    };
    Ok(CheckResult {
        name: format!("[{}] {}", subject.precision(), case.name),
        rel_l2: Some(err),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}{} {ms:.3} ms{cpu_note} ({})",
            device.to_lowercase(),
            case.work.describe(ms, &device, gemm_ceiling)
        ),
    })
}
