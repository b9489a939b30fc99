//! `diffsteer selftest`: a backend against the CPU backend, from single ops up to
//! whole models. Per precision it runs the backend checker
//! ([`crate::backend::check`]: every op and the fused step, with the device's own
//! reports), then for each model folder the checks that need more than a backend:
//! the reward classifier beside it ([`classifier`]), a U-Net forward ([`unet`]), a
//! pipeline's text encoder and VAE ([`text`]) and a 20-step sample ([`sample`]). Bounds as the op checks: f32 within 1e-5 of the
//! CPU (whole trajectories 1e-4), f16/bf16 within twice the plain same-precision
//! error.

pub mod classifier;
pub mod sample;
pub mod text;
pub mod unet;

use std::path::Path;

use crate::backend::check::{self, CheckResult, References, Sizes, Subject};
use crate::backend::cpu::CpuBackend;
use crate::error::Result;
use crate::tensor::Precision;

/// Opens the backend under check in one precision.
pub type Open<'a> = dyn Fn(Precision) -> Result<Box<dyn Subject>> + 'a;

/// Runs every check for each of `precisions` on the backends `open` gives, with the
/// models in `models`, calling `report` after each one; returns them all.
pub fn run(
    open: &Open,
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
        let subject = open(precision)?;
        if index == 0 {
            subject.describe_device(&mut push)?;
        }
        let refs = References::new(&cpu, precision);
        check::run(subject.as_ref(), &refs, Sizes::Device, &mut push)?;
        for model in models {
            if let Some(r) = classifier::check(&refs, subject.as_ref(), model)? {
                push(r);
            }
            push(unet::check(&refs, subject.as_ref(), model)?);
            for r in text::check(&refs, subject.as_ref(), model)? {
                push(r);
            }
            if let Some(r) = sample::check(&refs, subject.as_ref(), model)? {
                push(r);
            }
        }
    }
    Ok(results)
}

/// [`run`] on GPU `ordinal` (`diffsteer selftest --device cuda:N`).
#[cfg(feature = "cuda")]
pub fn cuda(
    ordinal: usize,
    precisions: &[Precision],
    models: &[&Path],
    report: impl FnMut(&CheckResult),
) -> Result<Vec<CheckResult>> {
    use crate::backend::cuda::device_checks::CudaSubject;
    let open = |precision| -> Result<Box<dyn Subject>> {
        Ok(Box::new(CudaSubject::open(ordinal, precision)?))
    };
    run(&open, precisions, models, report)
}

/// The folder's name for a report line.
fn folder_name(dir: &Path) -> &str {
    dir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
}
