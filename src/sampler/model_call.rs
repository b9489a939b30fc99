//! One denoising step's model call: a single batched U-Net forward over
//! `[uncond rows of CFG-active samples ; one cond row per slot]`, then CFG per slot.
//! A slot is one particle of one requested sample.

use std::ops::Range;
use std::sync::atomic::Ordering;

use super::{check_finite, Condition, Rows, SampleSpec, Sampler};
use crate::backend::SlotStep;
use crate::error::Result;
use crate::model::UNetInputs;
use crate::step::LinearStep;
use crate::tensor::Tensor;

/// The model output of one step on the backend, and whose rows are whose.
pub(crate) struct ModelCall {
    /// `[uncond rows of the CFG slots ; one cond row per slot, ..]`.
    pub output: Tensor,
    /// The unconditional row of each slot that uses CFG at this step.
    pub uncond_row: Vec<Option<usize>>,
    /// How many unconditional rows precede the conditional ones.
    pub cfg_rows: usize,
}

impl ModelCall {
    /// One slot's part of the fused step.
    pub fn slot_step(
        &self,
        slot: usize,
        spec: &SampleSpec,
        shifted: bool,
        update: LinearStep,
    ) -> SlotStep {
        SlotStep {
            uncond_row: self.uncond_row[slot],
            cond_row: self.cfg_rows + slot,
            cfg_scale: spec.guidance.scale,
            cfg_rescale: spec.guidance.rescale,
            shifted,
            update,
        }
    }
}

/// Who occupies the rows of a run: `particles` consecutive slots per sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slots {
    pub samples: usize,
    pub particles: usize,
}

impl Slots {
    pub fn len(&self) -> usize {
        self.samples * self.particles
    }

    pub fn sample_of(&self, slot: usize) -> usize {
        slot / self.particles
    }

    pub fn particle_of(&self, slot: usize) -> usize {
        slot % self.particles
    }

    /// "sample 3" or "sample 3, particle 1", for error messages.
    pub fn name(&self, slot: usize) -> String {
        if self.particles > 1 {
            format!(
                "sample {}, particle {}",
                self.sample_of(slot),
                self.particle_of(slot)
            )
        } else {
            format!("sample {}", self.sample_of(slot))
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
}

impl Sampler<'_> {
    /// The guided model outputs of every slot at `step`, rows of `per_sample`.
    pub(crate) fn model_outputs(
        &self,
        step: usize,
        specs: &[SampleSpec],
        rows: &[Rows],
        slots: Slots,
        latents: &[f32],
        tokens: Option<usize>,
    ) -> Result<Vec<f32>> {
        let call = self.model_call(step, specs, rows, slots, latents, tokens)?;
        self.guided_outputs(&call, step, specs, slots)
    }

    /// The batched model call of `step`, its output left on the backend.
    pub(crate) fn model_call(
        &self,
        step: usize,
        specs: &[SampleSpec],
        rows: &[Rows],
        slots: Slots,
        latents: &[f32],
        tokens: Option<usize>,
    ) -> Result<ModelCall> {
        let per_sample = latents.len() / slots.len();
        let sched = self.scheduler;
        let timestep = sched.timestep(step);
        let scale = sched.input_scale(step);
        let uses_cfg = |slot: usize| -> bool {
            let i = slots.sample_of(slot);
            rows[i].uses_cfg && specs[i].guidance.active_at(step)
        };
        let cfg_slots: Vec<usize> = (0..slots.len()).filter(|&k| uses_cfg(k)).collect();
        let order: Vec<(usize, bool)> = cfg_slots
            .iter()
            .map(|&k| (k, false))
            .chain((0..slots.len()).map(|k| (k, true)))
            .collect();
        let batch = order.len();

        let mut input = Vec::with_capacity(batch * per_sample);
        for &(k, _) in &order {
            input.extend(
                latents[k * per_sample..(k + 1) * per_sample]
                    .iter()
                    .map(|v| v * scale),
            );
        }
        let labels: Option<Vec<usize>> = self.unet.num_classes().map(|_| {
            order
                .iter()
                .map(|&(k, cond)| {
                    let r = &rows[slots.sample_of(k)];
                    if cond { r.cond_label } else { r.uncond_label }.unwrap_or(0)
                })
                .collect()
        });
        let states = match tokens {
            Some(t) => {
                let mut states = Vec::new();
                for &(k, cond) in &order {
                    if let Condition::Embedding {
                        cond: c, uncond: u, ..
                    } = &specs[slots.sample_of(k)].condition
                    {
                        states.extend_from_slice(if cond { c } else { u });
                    }
                }
                let dim = states.len() / (batch * t);
                Some((states, t, dim))
            }
            None => None,
        };
        let timesteps = vec![timestep; batch];
        let batch_inputs = BatchInputs {
            latents: &input,
            timesteps: &timesteps,
            labels: labels.as_deref(),
            states: states.as_ref().map(|(s, t, d)| (s.as_slice(), *t, *d)),
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
            &[n, self.height, self.width, channels],
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

    /// The model output of `call` read back, with CFG (and its rescale) applied per
    /// slot: one row of guided output per slot.
    pub(crate) fn guided_outputs(
        &self,
        call: &ModelCall,
        step: usize,
        specs: &[SampleSpec],
        slots: Slots,
    ) -> Result<Vec<f32>> {
        let timestep = self.scheduler.timestep(step);
        let out = self.backend.to_host(&call.output)?;
        let rows = call.cfg_rows + slots.len();
        let per_sample = out.len() / rows.max(1);
        let row = |r: usize| &out[r * per_sample..(r + 1) * per_sample];
        let mut outputs = vec![0f32; slots.len() * per_sample];
        for (k, guided) in outputs.chunks_exact_mut(per_sample).enumerate() {
            let cond = row(call.cfg_rows + k);
            match call.uncond_row[k] {
                Some(u) => {
                    let g = specs[slots.sample_of(k)].guidance;
                    crate::step::combine(row(u), cond, g.scale, guided);
                    crate::step::rescale(guided, cond, g.rescale);
                }
                None => guided.copy_from_slice(cond),
            }
            check_finite(
                guided,
                &|| format!("the model output of {}", slots.name(k)),
                step,
                timestep,
            )?;
        }
        Ok(outputs)
    }
}
