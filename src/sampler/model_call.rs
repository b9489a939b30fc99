//! One engine step's model call: a single batched U-Net forward over
//! `[uncond rows of the CFG-active slots ; one cond row per slot]`, every row at
//! its own timestep, then CFG per slot. A slot is one particle of one sample.

use std::ops::Range;
use std::sync::atomic::Ordering;

use super::{Condition, SampleRun, SlotSampler};
use crate::backend::SlotStep;
use crate::error::{Error, Result};
use crate::model::UNetInputs;
use crate::step::LinearStep;
use crate::tensor::Tensor;

/// A slot of a model call: particle `particle` of run `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub run: usize,
    pub particle: usize,
}

/// The model output of one call on the backend, and whose rows are whose.
pub(crate) struct ModelCall {
    /// `[uncond rows of the CFG slots ; one cond row per slot]`.
    pub output: Tensor,
    /// The unconditional row of each slot that uses CFG at its step.
    pub uncond_row: Vec<Option<usize>>,
    /// How many unconditional rows precede the conditional ones.
    pub cfg_rows: usize,
}

impl ModelCall {
    /// Slot `k`'s part of the fused step.
    pub fn slot_step(
        &self,
        k: usize,
        run: &SampleRun,
        shifted: bool,
        update: LinearStep,
    ) -> SlotStep {
        SlotStep {
            uncond_row: self.uncond_row[k],
            cond_row: self.cfg_rows + k,
            cfg_scale: run.spec.guidance.scale,
            cfg_rescale: run.spec.guidance.rescale,
            shifted,
            update,
        }
    }
}

/// A model call's inputs on the host, row-major by model row.
struct BatchInputs<'a> {
    latents: &'a [f32],
    timesteps: &'a [f32],
    labels: Option<&'a [usize]>,
    /// Encoder hidden states, tokens per row and their width.
    states: Option<(&'a [f32], usize, usize)>,
    height: usize,
    width: usize,
}

/// Whether `run` uses CFG at its current step.
pub(crate) fn uses_cfg(run: &SampleRun) -> bool {
    run.rows.uses_cfg && run.spec.guidance.active_at(run.step)
}

impl SlotSampler<'_> {
    /// The batched model call for `slots` of `runs` (all of one sample shape and
    /// token count), its output left on the backend.
    pub(crate) fn model_call(&self, runs: &[SampleRun], slots: &[Slot]) -> Result<ModelCall> {
        let first = slots
            .first()
            .map(|s| &runs[s.run])
            .ok_or_else(|| Error::invalid("slots", "a model call needs at least one slot"))?;
        let (height, width) = (first.height, first.width);
        let cfg_slots: Vec<usize> = (0..slots.len())
            .filter(|&k| uses_cfg(&runs[slots[k].run]))
            .collect();
        let order: Vec<(usize, bool)> = cfg_slots
            .iter()
            .map(|&k| (k, false))
            .chain((0..slots.len()).map(|k| (k, true)))
            .collect();
        let batch = order.len();
        let per_sample = first.particles[0].latent.len();

        let mut input = Vec::with_capacity(batch * per_sample);
        let mut timesteps = Vec::with_capacity(batch);
        for &(k, _) in &order {
            let slot = slots[k];
            let run = &runs[slot.run];
            let scheduler = &*run.settings.scheduler;
            let scale = scheduler.input_scale(run.step);
            input.extend(
                run.particles[slot.particle]
                    .latent
                    .iter()
                    .map(|v| v * scale),
            );
            timesteps.push(scheduler.timestep(run.step));
        }
        let labels: Option<Vec<usize>> = self.unet.num_classes().map(|_| {
            order
                .iter()
                .map(|&(k, cond)| {
                    let rows = &runs[slots[k].run].rows;
                    if cond {
                        rows.cond_label
                    } else {
                        rows.uncond_label
                    }
                    .unwrap_or(0)
                })
                .collect()
        });
        let mut states = Vec::new();
        let mut tokens = None;
        for &(k, cond) in &order {
            if let Condition::Embedding {
                cond: c,
                uncond: u,
                tokens: t,
            } = &runs[slots[k].run].spec.condition
            {
                states.extend_from_slice(if cond { c } else { u });
                tokens = Some(*t);
            }
        }
        let states = tokens.map(|t| {
            let dim = states.len() / (batch * t).max(1);
            (states.as_slice(), t, dim)
        });
        let batch_inputs = BatchInputs {
            latents: &input,
            timesteps: &timesteps,
            labels: labels.as_deref(),
            states,
            height,
            width,
        };
        let parts = if self.weights_ready.load(Ordering::Acquire) {
            self.backend.concurrent_parts(batch).clamp(1, batch.max(1))
        } else {
            1
        };
        let out = if parts > 1 {
            self.forward_in_parts(&batch_inputs, parts)?
        } else {
            self.forward_rows(&batch_inputs, 0..batch)?
        };
        self.weights_ready.store(true, Ordering::Release);
        let mut uncond_row = vec![None; slots.len()];
        for (r, &k) in cfg_slots.iter().enumerate() {
            uncond_row[k] = Some(r);
        }
        Ok(ModelCall {
            output: out,
            uncond_row,
            cfg_rows: cfg_slots.len(),
        })
    }

    /// One forward over rows `rows` of a model call's inputs.
    fn forward_rows(&self, inputs: &BatchInputs, rows: Range<usize>) -> Result<Tensor> {
        let channels = self.unet.config().in_channels;
        let per_row = inputs.latents.len() / inputs.timesteps.len().max(1);
        let n = rows.len();
        let x = self.backend.tensor(
            &[n, inputs.height, inputs.width, channels],
            inputs.latents[rows.start * per_row..rows.end * per_row].to_vec(),
        )?;
        let encoder = match inputs.states {
            Some((states, tokens, dim)) => Some(self.backend.tensor(
                &[n, tokens, dim],
                states[rows.start * tokens * dim..rows.end * tokens * dim].to_vec(),
            )?),
            None => None,
        };
        self.unet.forward(
            self.backend,
            &x,
            &UNetInputs {
                timesteps: &inputs.timesteps[rows.clone()],
                class_labels: inputs.labels.map(|l| &l[rows.clone()]),
                encoder_hidden_states: encoder.as_ref(),
            },
        )
    }

    /// The model call cut into `parts` consecutive groups of rows that run at the
    /// same time ([`Backend::run_parts`](crate::backend::Backend::run_parts): on the
    /// CPU each on its own thread, its ops still parallel so that an idle thread
    /// helps a busy one), joined on the host. On the 2-core
    /// development machine a digits forward of 2 rows went from 4.45 to 4.23 ms,
    /// of 8 rows from 15.6 to 14.6 ms and of 32 rows from 65 to 61.5 ms: a small
    /// batch's ops are too short to keep two threads busy each, and half as many
    /// synchronisations are waited for. Results are the same bits: no op's
    /// arithmetic depends on the rest of its batch.
    ///
    /// Only after the first model call: computing a weight's derived form inside a
    /// part could make a thread that waits for its share of that work pick up
    /// another part's forward, which would ask for the same weight again.
    fn forward_in_parts(&self, inputs: &BatchInputs, parts: usize) -> Result<Tensor> {
        let batch = inputs.timesteps.len();
        let per_part = batch.div_ceil(parts);
        let outputs = self.backend.run_parts(batch.div_ceil(per_part), &|p| {
            self.forward_rows(inputs, p * per_part..((p + 1) * per_part).min(batch))
        });
        let parts = outputs.into_iter().collect::<Result<Vec<Tensor>>>()?;
        let mut data = Vec::new();
        for part in &parts {
            data.extend(self.backend.to_host(part)?);
        }
        // Every part has the shape of the whole call but for its rows.
        let mut shape = parts
            .first()
            .map(|p| p.shape().to_vec())
            .unwrap_or_default();
        if let Some(rows) = shape.first_mut() {
            *rows = batch;
        }
        self.backend.tensor(&shape, data)
    }
}

/// The guided output of slot `k` (CFG or another method of the sample's
/// guidance, with its rescale), from the model call's output read back to the host
/// (`out`, rows of `guided.len()` values). Unconditional samples take their only
/// prediction as it is.
pub(crate) fn guided_output(
    call: &ModelCall,
    out: &[f32],
    k: usize,
    run: &mut SampleRun,
    particle: usize,
    guided: &mut [f32],
) {
    let per = guided.len();
    let row = |r: usize| &out[r * per..(r + 1) * per];
    let cond = row(call.cfg_rows + k);
    if !run.rows.uses_cfg {
        guided.copy_from_slice(cond);
        return;
    }
    let uncond = call.uncond_row[k].map(row);
    let guidance = run.spec.guidance;
    guidance.predict(
        run.step,
        uncond,
        cond,
        &mut run.particles[particle].guidance,
        guided,
    );
}

/// Whether slot `k`'s guided output needs the host (a guidance method that sums
/// over the whole sample), whatever the step path.
pub(crate) fn guidance_needs_host(run: &SampleRun) -> bool {
    run.rows.uses_cfg && !run.spec.guidance.is_elementwise_at(run.step)
}
