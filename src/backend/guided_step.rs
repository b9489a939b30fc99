//! The fused guidance + scheduler step ([`super::Backend::guided_step`]): for each
//! slot (one particle of one sample), the CFG combine of its model-output rows, the
//! guidance rescale, the reward shift and the scheduler update, in one pass over the
//! latents. The host decides everything (rows, scales, [`LinearStep`] coefficients,
//! the shift); a backend only runs the arithmetic. [`guided_step_on_host`] is the
//! reference every backend is checked against, and the default implementation.

use crate::error::{Error, Result};
use crate::step::{self, LinearStep};

/// One slot's part of a fused step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotStep {
    /// The model-output row with the unconditional prediction when CFG applies.
    pub uncond_row: Option<usize>,
    /// The row with the conditional (or only) prediction.
    pub cond_row: usize,
    pub cfg_scale: f32,
    /// `guidance_rescale` φ (0: none).
    pub cfg_rescale: f32,
    /// Whether the slot's row of [`StepBuffers::shift`] is added to the guided output.
    pub shifted: bool,
    pub update: LinearStep,
}

/// The per-slot host data of a fused step, each `[slots, per_sample]` row-major f32.
#[derive(Debug, Clone, Copy)]
pub struct StepBuffers<'a> {
    pub latents: &'a [f32],
    /// The previous step's x̂₀ per slot, for updates with a history weight.
    pub history: Option<&'a [f32]>,
    /// Fresh noise per slot, for updates with a noise weight.
    pub noise: Option<&'a [f32]>,
    /// The reward guidance's change of the model output per slot.
    pub shift: Option<&'a [f32]>,
}

/// The next latents and each element's unclamped x̂₀, `[slots, per_sample]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub next: Vec<f32>,
    pub x0: Vec<f32>,
}

/// Checks that the buffers and the plan fit a model output of `rows` rows of
/// `per_sample` elements; returns `per_sample`.
pub fn check_step(
    model_len: usize,
    rows: usize,
    slots: &[SlotStep],
    buffers: &StepBuffers,
) -> Result<usize> {
    let op = "guided_step";
    if slots.is_empty() || rows == 0 || !model_len.is_multiple_of(rows) {
        return Err(Error::shape(
            op,
            format!(
                "{} slots over {rows} model-output rows of {model_len} values",
                slots.len()
            ),
        ));
    }
    let per = model_len / rows;
    let want = slots.len() * per;
    for (name, len) in [
        ("latents", Some(buffers.latents.len())),
        ("history", buffers.history.map(<[f32]>::len)),
        ("noise", buffers.noise.map(<[f32]>::len)),
        ("shift", buffers.shift.map(<[f32]>::len)),
    ] {
        if let Some(len) = len.filter(|&l| l != want) {
            return Err(Error::shape(
                op,
                format!(
                    "{name} has {len} values; {} slots of {per} need {want}",
                    slots.len()
                ),
            ));
        }
    }
    for (k, s) in slots.iter().enumerate() {
        let bad_row = s
            .uncond_row
            .into_iter()
            .chain([s.cond_row])
            .any(|r| r >= rows);
        let missing = (s.update.history != 0.0 && buffers.history.is_none())
            || (s.update.noise != 0.0 && buffers.noise.is_none())
            || (s.shifted && buffers.shift.is_none());
        if bad_row || missing {
            return Err(Error::invalid(
                "guided_step",
                format!("slot {k} names a row past {rows} or a buffer that was not given"),
            ));
        }
    }
    Ok(per)
}

/// Coefficients per slot in the table of [`kernel_tables`] (`GS_COEFFS` in
/// kernels/guided_step.cu).
pub const KERNEL_COEFFS_PER_SLOT: usize = 11;

/// The per-slot tables a GPU kernel of the fused step reads (kernels/guided_step.cu):
/// [`KERNEL_COEFFS_PER_SLOT`] coefficients per slot (CFG scale, rescale φ, the update's
/// x̂₀ and combination weights, the clip bound or −1 for none, shifted as 0 or 1) and
/// two rows per slot (the unconditional row or −1 without CFG, then the conditional
/// row).
pub fn kernel_tables(slots: &[SlotStep]) -> Result<(Vec<f32>, Vec<i32>)> {
    let mut coeffs = Vec::with_capacity(slots.len() * KERNEL_COEFFS_PER_SLOT);
    let mut rows = Vec::with_capacity(slots.len() * 2);
    let row_index = |r: usize| {
        i32::try_from(r).map_err(|_| {
            Error::invalid(
                "guided_step",
                format!("model-output row {r} exceeds 31 bits"),
            )
        })
    };
    for s in slots {
        let u = s.update;
        coeffs.extend_from_slice(&[
            s.cfg_scale,
            s.cfg_rescale,
            u.x0_from_sample,
            u.x0_from_output,
            u.clip.unwrap_or(-1.0),
            u.sample,
            u.output,
            u.x0,
            u.history,
            u.noise,
            if s.shifted { 1.0 } else { 0.0 },
        ]);
        rows.push(s.uncond_row.map_or(Ok(-1), row_index)?);
        rows.push(row_index(s.cond_row)?);
    }
    Ok((coeffs, rows))
}

/// The fused step on the host, from the model output's values `[rows, per_sample]`:
/// the same f32 operations, in the same order, as the sampler's unfused path
/// (`step::combine`, `step::rescale`, the reward shift, then [`LinearStep::apply`]).
pub fn guided_step_on_host(
    model_out: &[f32],
    rows: usize,
    slots: &[SlotStep],
    buffers: &StepBuffers,
) -> Result<StepResult> {
    let per = check_step(model_out.len(), rows, slots, buffers)?;
    let row = |r: usize| &model_out[r * per..(r + 1) * per];
    fn slot_of(b: Option<&[f32]>, k: usize, per: usize) -> Option<&[f32]> {
        b.map(|v| &v[k * per..(k + 1) * per])
    }
    let mut next = vec![0f32; slots.len() * per];
    let mut x0 = vec![0f32; slots.len() * per];
    let mut guided = vec![0f32; per];
    for (k, s) in slots.iter().enumerate() {
        let cond = row(s.cond_row);
        match s.uncond_row {
            Some(u) => {
                step::combine(row(u), cond, s.cfg_scale, &mut guided);
                step::rescale(&mut guided, cond, s.cfg_rescale);
            }
            None => guided.copy_from_slice(cond),
        }
        if let Some(shift) = slot_of(buffers.shift, k, per).filter(|_| s.shifted) {
            for (m, &d) in guided.iter_mut().zip(shift) {
                *m += d;
            }
        }
        let x = &buffers.latents[k * per..(k + 1) * per];
        let h = slot_of(buffers.history, k, per);
        let z = slot_of(buffers.noise, k, per);
        let out = &mut next[k * per..(k + 1) * per];
        let est = &mut x0[k * per..(k + 1) * per];
        for i in 0..per {
            let hi = h.map_or(0.0, |h| h[i]);
            let zi = z.map_or(0.0, |z| z[i]);
            (out[i], est[i]) = s.update.apply(x[i], guided[i], hi, zi);
        }
    }
    Ok(StepResult { next, x0 })
}
