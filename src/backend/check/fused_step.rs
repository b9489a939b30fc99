//! The fused guidance + scheduler step ([`Backend::guided_step`]) against the CPU
//! backend's, timed per call with its uploads and read-back.

use super::{rel_l2, CheckResult, References, Sizes, Subject};
use crate::backend::{Backend, SlotStep, StepBuffers};
use crate::error::Result;
use crate::rng::{normal_vec, NoiseStream};
use crate::step::LinearStep;

/// The fused guidance + scheduler step over latents of four channels (64×64 at
/// [`Sizes::Device`], SD's) for five slots that cover its branches: CFG with
/// rescale, plain CFG, a reward shift without CFG, a clamped x̂₀ with noise, and a
/// multistep history.
pub(super) fn check(refs: &References, subject: &dyn Subject, sizes: Sizes) -> Result<CheckResult> {
    let side = match sizes {
        Sizes::Device => 64,
        Sizes::Small => 8,
    };
    let per = 4 * side * side;
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
    let backend = subject.backend();
    let reference = result(refs.cpu)?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| result(plain))?;
    let out = result(backend.as_ref())?;
    let on_device = backend.tensor(&[rows, per], model.clone())?;
    let ms = subject.ms_per_call(10, &mut || {
        backend.guided_step(&on_device, &plan, &buffers).map(|_| ())
    })?;
    // Read: 3 model rows per slot at most, 4 f32 inputs; written: 2 f32 outputs.
    let bytes = slots * per * (3 * subject.precision().bytes_per_element() + 6 * 4);
    Ok(CheckResult {
        name: format!(
            "[{}] guided step (fused CFG + rescale + shift + update)",
            subject.precision()
        ),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}{slots} slots of {per}: {ms:.3} ms per call incl. uploads and read-back ({:.1} MB)",
            bytes as f64 / 1e6
        ),
    })
}
