//! The sampling loop. Per step (and per repeat under recurrence): the batched model
//! call with CFG, reward evaluation and reward-gradient guidance on the x̂₀
//! estimates, each slot's scheduler step; then, at the steering points, the
//! resampling of each sample's particles. At the end each sample keeps its particle
//! with the best final reward.

use std::time::Instant;

use super::model_call::Slots;
use super::{
    check_finite, Condition, NoiseSource, SampleOutput, SampleSpec, Sampler, StepProgress,
};
use crate::backend::{run_busy, StepBuffers};
use crate::error::{Error, Result};
use crate::guidance::reward::{renoise, RewardGuidance};
use crate::reward::{Reward, SampleShape};
use crate::rng::{uniform, NoiseStream};
use crate::schedule::StepState;
use crate::steer::{resample_population, PotentialTrack, Steering};

/// Inference-time alignment of a run: a reward, how its gradient guides each step,
/// and how particles are steered by it.
#[derive(Clone, Copy)]
pub struct Alignment<'r> {
    /// Needed by reward guidance and by steering; without them it is only
    /// evaluated on the final samples (for [`SampleOutput::reward`]).
    pub reward: Option<&'r dyn Reward>,
    /// Reward-gradient guidance (scale 0 turns it off).
    pub guidance: RewardGuidance,
    pub steering: Steering,
}

impl Alignment<'_> {
    /// Plain sampling: no reward, no guidance, one particle.
    pub fn none() -> Self {
        Alignment {
            reward: None,
            guidance: RewardGuidance {
                scale: 0.0,
                ..RewardGuidance::default()
            },
            steering: Steering::NONE,
        }
    }

    /// Checks the settings against a run's sample shape and step count; sampling
    /// does this too, callers use it to refuse bad input before any side effect.
    pub fn validate(&self, shape: SampleShape, num_steps: usize) -> Result<()> {
        self.guidance.validate()?;
        self.steering.validate()?;
        match self.reward {
            Some(reward) => reward.check_shape(shape)?,
            None if self.guidance.scale > 0.0 => {
                return Err(Error::invalid(
                    "reward",
                    "reward guidance needs a reward to follow",
                ))
            }
            None if self.steering.is_active() => {
                return Err(Error::invalid(
                    "reward",
                    "particle steering needs a reward to select by",
                ))
            }
            None => {}
        }
        for (name, window) in [
            ("reward-window", self.guidance.window),
            ("fk-window", self.steering.window),
        ] {
            if window.stop != usize::MAX && window.stop > num_steps {
                return Err(Error::invalid(
                    name,
                    format!(
                        "{}:{} reaches past the last step; windows lie within 0:{num_steps}",
                        window.start, window.stop
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Sampler<'_> {
    /// Generates every sample of `specs` in one batch.
    pub fn sample(
        &self,
        specs: &[SampleSpec],
        noise: &dyn NoiseSource,
        progress: &mut dyn FnMut(StepProgress),
    ) -> Result<Vec<SampleOutput>> {
        self.sample_aligned(specs, noise, &Alignment::none(), progress)
    }

    /// Generates every sample of `specs` in one batch, with reward guidance and
    /// particle steering as `alignment` says. All particles of all samples share
    /// each step's model call. The loop runs inside
    /// [`Backend::with_busy_workers`](crate::backend::Backend::with_busy_workers).
    pub fn sample_aligned(
        &self,
        specs: &[SampleSpec],
        noise: &dyn NoiseSource,
        alignment: &Alignment,
        progress: &mut dyn FnMut(StepProgress),
    ) -> Result<Vec<SampleOutput>> {
        run_busy(self.backend, || {
            self.run_aligned(specs, noise, alignment, progress)
        })
    }

    fn run_aligned(
        &self,
        specs: &[SampleSpec],
        noise: &dyn NoiseSource,
        alignment: &Alignment,
        progress: &mut dyn FnMut(StepProgress),
    ) -> Result<Vec<SampleOutput>> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| self.rows_for(s, i))
            .collect::<Result<_>>()?;
        let tokens = self.embedding_tokens(specs)?;
        let channels = self.unet.config().in_channels;
        let shape = SampleShape::new(self.height, self.width, channels);
        let sched = self.scheduler;
        let steps = sched.num_steps();
        alignment.validate(shape, steps)?;
        let steering = alignment.steering;
        let guidance = alignment.guidance;
        let slots = Slots {
            samples: specs.len(),
            particles: steering.particles,
        };
        let per = shape.len();
        let seed_of = |slot: usize| specs[slots.sample_of(slot)].seed;
        let fill = |slot: usize, stream: NoiseStream, out: &mut [f32]| {
            let particle = slots.particle_of(slot) as u32;
            noise.fill(
                slots.sample_of(slot),
                seed_of(slot),
                stream.for_particle(particle),
                out,
            )
        };
        let started = Instant::now();

        let mut latents = vec![0f32; slots.len() * per];
        let sigma = sched.init_noise_sigma();
        for (k, x) in latents.chunks_exact_mut(per).enumerate() {
            fill(k, NoiseStream::Initial, x)?;
            x.iter_mut().for_each(|v| *v *= sigma);
        }
        let mut states: Vec<StepState> = (0..slots.len()).map(|_| sched.new_state()).collect();
        let mut tracks = vec![PotentialTrack::default(); slots.len()];
        let mut next = vec![0f32; per];
        let mut fresh = vec![0f32; per];
        let fused = self.fused_steps();

        for step in 0..steps {
            let timestep = sched.timestep(step);
            let reward = alignment
                .reward
                .filter(|_| guidance.active_at(step) || steering.resamples_after(step, steps));
            let repeats = if reward.is_some() {
                guidance.repeats_at(step)
            } else {
                1
            };
            let snapshot = (repeats > 1).then(|| states.clone());
            let mut step_rewards = None;
            for repeat in 0..repeats {
                if repeat > 0 {
                    for (k, x) in latents.chunks_exact_mut(per).enumerate() {
                        let stream = NoiseStream::Renoise {
                            step: step as u32,
                            repeat: repeat as u32,
                        };
                        fill(k, stream, &mut fresh)?;
                        renoise(sched, step, x, &fresh, &mut next);
                        x.copy_from_slice(&next);
                    }
                    if let Some(saved) = &snapshot {
                        states.clone_from(saved);
                    }
                }
                let step_noise = |k: usize, fresh: &mut [f32]| -> Result<bool> {
                    if !sched.needs_noise(step) {
                        return Ok(false);
                    }
                    let stream = if repeat == 0 {
                        NoiseStream::Step(step as u32)
                    } else {
                        NoiseStream::RepeatedStep {
                            step: step as u32,
                            repeat: repeat as u32,
                        }
                    };
                    fill(k, stream, fresh)?;
                    Ok(true)
                };
                if fused {
                    let call = self.model_call(step, specs, &rows, slots, &latents, tokens)?;
                    let shift = match reward {
                        Some(reward) => {
                            let outputs = self.guided_outputs(&call, step, specs, slots)?;
                            let (guided, shift) = guidance.output_shift(
                                reward,
                                shape,
                                sched,
                                step,
                                &latents,
                                &outputs,
                                &|k| slots.name(k),
                            )?;
                            step_rewards = Some(guided.rewards);
                            shift
                        }
                        None => None,
                    };
                    let noise = if sched.needs_noise(step) {
                        let mut all = vec![0f32; latents.len()];
                        for (k, z) in all.chunks_exact_mut(per).enumerate() {
                            step_noise(k, z)?;
                        }
                        Some(all)
                    } else {
                        None
                    };
                    let history = sched.records_history().then(|| {
                        let mut all = vec![0f32; latents.len()];
                        for (h, state) in all.chunks_exact_mut(per).zip(&states) {
                            if let Some(prev) = state.history.last().filter(|p| p.len() == per) {
                                h.copy_from_slice(prev);
                            }
                        }
                        all
                    });
                    let plan = (0..slots.len())
                        .map(|k| {
                            let update = sched.linear_step(step, &states[k])?;
                            let spec = &specs[slots.sample_of(k)];
                            Ok(call.slot_step(k, spec, shift.is_some(), update))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let result = self.backend.guided_step(
                        &call.output,
                        &plan,
                        &StepBuffers {
                            latents: &latents,
                            history: history.as_deref(),
                            noise: noise.as_deref(),
                            shift: shift.as_deref(),
                        },
                    )?;
                    for (k, (next, x0)) in result
                        .next
                        .chunks_exact(per)
                        .zip(result.x0.chunks_exact(per))
                        .enumerate()
                    {
                        check_finite(
                            next,
                            &|| format!("the fused step's output of {}", slots.name(k)),
                            step,
                            timestep,
                        )?;
                        if sched.records_history() {
                            sched.record_history(&mut states[k], x0.to_vec());
                        }
                    }
                    latents = result.next;
                    continue;
                }
                let mut outputs =
                    self.model_outputs(step, specs, &rows, slots, &latents, tokens)?;
                if let Some(reward) = reward {
                    let guided = guidance.guide(
                        reward,
                        shape,
                        sched,
                        step,
                        &latents,
                        &mut outputs,
                        &|k| slots.name(k),
                    )?;
                    step_rewards = Some(guided.rewards);
                }
                for (k, (x, output)) in latents
                    .chunks_exact_mut(per)
                    .zip(outputs.chunks_exact(per))
                    .enumerate()
                {
                    let drew = step_noise(k, &mut fresh)?;
                    let noise = drew.then_some(&fresh[..]);
                    sched.step(step, &mut states[k], x, output, noise, &mut next)?;
                    check_finite(
                        &next,
                        &|| format!("the scheduler output of {}", slots.name(k)),
                        step,
                        timestep,
                    )?;
                    x.copy_from_slice(&next);
                }
            }
            if let (true, Some(rewards)) = (steering.resamples_after(step, steps), step_rewards) {
                self.resample(
                    &steering,
                    slots,
                    specs,
                    step,
                    &rewards,
                    &mut latents,
                    &mut states,
                    &mut tracks,
                );
            }
            progress(StepProgress {
                step: step + 1,
                total: steps,
                elapsed: started.elapsed(),
            });
        }

        let final_rewards = match alignment.reward {
            Some(reward) => {
                let values = reward.evaluate(shape, &latents, None)?;
                if let Some(k) = values.iter().position(|r| !r.is_finite()) {
                    return Err(Error::NonFinite {
                        what: format!("the final reward of {}", slots.name(k)),
                        step: steps,
                        timestep: 0.0,
                    });
                }
                Some(values)
            }
            None => None,
        };
        Ok((0..slots.samples)
            .map(|i| {
                let group = i * slots.particles..(i + 1) * slots.particles;
                let best = match &final_rewards {
                    Some(r) => group
                        .clone()
                        .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
                        .unwrap_or(group.start),
                    None => group.start,
                };
                SampleOutput {
                    height: self.height,
                    width: self.width,
                    channels,
                    data: latents[best * per..(best + 1) * per].to_vec(),
                    reward: final_rewards.as_ref().map(|r| r[best]),
                    particle: best - group.start,
                }
            })
            .collect())
    }

    /// Folds `rewards` into each particle's potential and resamples every sample's
    /// population: children take their ancestor's latent, solver state and history.
    #[allow(clippy::too_many_arguments)]
    fn resample(
        &self,
        steering: &Steering,
        slots: Slots,
        specs: &[SampleSpec],
        step: usize,
        rewards: &[f32],
        latents: &mut [f32],
        states: &mut [StepState],
        tracks: &mut [PotentialTrack],
    ) {
        let per = latents.len() / slots.len();
        let n = slots.particles;
        for (track, &r) in tracks.iter_mut().zip(rewards) {
            track.observe(steering.potential, r as f64);
        }
        for (i, spec) in specs.iter().enumerate() {
            let group = i * n..(i + 1) * n;
            let log_weights: Vec<f64> = tracks[group.clone()]
                .iter()
                .map(|t| t.log_weight(steering.lambda))
                .collect();
            let u = uniform(spec.seed, NoiseStream::Resample { step: step as u32 }, 0);
            let Some(ancestors) = resample_population(steering, &log_weights, u) else {
                continue;
            };
            let old_latents = latents[group.start * per..group.end * per].to_vec();
            let old_states = states[group.clone()].to_vec();
            let old_tracks = tracks[group.clone()].to_vec();
            for (j, &a) in ancestors.iter().enumerate() {
                let k = group.start + j;
                latents[k * per..(k + 1) * per]
                    .copy_from_slice(&old_latents[a * per..(a + 1) * per]);
                states[k] = old_states[a].clone();
                tracks[k] = old_tracks[a];
                tracks[k].rebase();
            }
        }
    }

    /// The token count shared by every sample of an embedding-conditioned batch.
    fn embedding_tokens(&self, specs: &[SampleSpec]) -> Result<Option<usize>> {
        let tokens: Option<usize> = match specs.first().map(|s| &s.condition) {
            Some(Condition::Embedding { tokens, .. }) => Some(*tokens),
            _ => None,
        };
        if let Some(t) = tokens {
            if specs.iter().any(
                |s| !matches!(&s.condition, Condition::Embedding { tokens, .. } if *tokens == t),
            ) {
                return Err(Error::invalid(
                    "condition",
                    "all samples of one batch need embeddings with the same token count",
                ));
            }
        }
        Ok(tokens)
    }
}
