//! One requested sample in flight: its particles (each a *slot* of the model
//! call), where it stands in its own schedule, and what it needs between steps
//! (the states to restore under recurrence, the rewards to resample by). Samples
//! join a running batch between any two steps and leave when done; nothing here
//! depends on the other samples of the batch.

use std::sync::Arc;

use super::settings::SampleSettings;
use super::{NoiseSource, Rows, SampleSpec};
use crate::error::Result;
use crate::guidance::reward::renoise;
use crate::guidance::GuidanceState;
use crate::rng::{uniform, NoiseStream};
use crate::schedule::StepState;
use crate::steer::{resample_population, PotentialTrack};

/// One particle of a sample: a slot of the model call.
#[derive(Debug, Clone)]
pub(crate) struct Particle {
    /// x_t in the scheduler's space, NHWC.
    pub latent: Vec<f32>,
    pub state: StepState,
    /// What the guidance carries between steps (APG's momentum buffer).
    pub guidance: GuidanceState,
    pub track: PotentialTrack,
}

/// A sample being generated. Created by
/// [`SlotSampler::start`](super::SlotSampler::start), advanced one step at a time by
/// [`SlotSampler::advance`](super::SlotSampler::advance) together with any other
/// samples, and turned into its result by
/// [`SlotSampler::finish`](super::SlotSampler::finish) once [`SampleRun::is_done`].
pub struct SampleRun<'r> {
    pub(crate) spec: SampleSpec,
    pub(crate) settings: Arc<SampleSettings<'r>>,
    /// The sample's index for its [`NoiseSource`] and in messages.
    pub(crate) index: usize,
    pub(crate) rows: Rows,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) step: usize,
    pub(crate) repeat: usize,
    pub(crate) particles: Vec<Particle>,
    /// The solver and guidance states at the start of a repeated step, restored
    /// before each repeat.
    pub(crate) snapshot: Option<Vec<(StepState, GuidanceState)>>,
    /// The rewards of the particles' estimates during the current step.
    pub(crate) step_rewards: Option<Vec<f32>>,
}

impl SampleRun<'_> {
    pub fn spec(&self) -> &SampleSpec {
        &self.spec
    }

    /// The sample's index, as given to `start`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Slots (particles) the sample occupies in every model call.
    pub fn slots(&self) -> usize {
        self.particles.len()
    }

    /// Steps finished so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn num_steps(&self) -> usize {
        self.settings.scheduler.num_steps()
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.num_steps()
    }

    /// Model calls this sample still takes part in (repeats of guided steps count).
    pub fn calls_left(&self) -> usize {
        (self.step..self.num_steps())
            .map(|s| self.settings.repeats_at(s))
            .sum::<usize>()
            .saturating_sub(self.repeat)
    }

    /// "sample 3" or "sample 3, particle 1", for messages.
    pub(crate) fn name(&self, particle: usize) -> String {
        if self.particles.len() > 1 {
            format!("sample {}, particle {particle}", self.index)
        } else {
            format!("sample {}", self.index)
        }
    }

    /// Fills `out` with this sample's noise of `stream` for `particle`.
    pub(crate) fn draw(
        &self,
        noise: &dyn NoiseSource,
        particle: usize,
        stream: NoiseStream,
        out: &mut [f32],
    ) -> Result<()> {
        noise.fill(
            self.index,
            self.spec.seed,
            stream.for_particle(particle as u32),
            out,
        )
    }

    /// The stream of the scheduler's fresh noise in the current step and repeat.
    pub(crate) fn step_stream(&self) -> NoiseStream {
        if self.repeat == 0 {
            NoiseStream::Step(self.step as u32)
        } else {
            NoiseStream::RepeatedStep {
                step: self.step as u32,
                repeat: self.repeat as u32,
            }
        }
    }

    /// Keeps the solver states before the first take of a step that is repeated.
    pub(crate) fn snapshot_if_repeated(&mut self) {
        if self.repeat == 0 && self.settings.repeats_at(self.step) > 1 {
            self.snapshot = Some(
                self.particles
                    .iter()
                    .map(|p| (p.state.clone(), p.guidance.clone()))
                    .collect(),
            );
        }
    }

    /// After a step's update: either re-noise x_{t−1} back to x_t for the next
    /// repeat of the same step, or move on to the next step, resampling the
    /// particles first where the steering says so.
    pub(crate) fn end_step(&mut self, noise: &dyn NoiseSource) -> Result<()> {
        let settings = self.settings.clone();
        let scheduler = &*settings.scheduler;
        if self.repeat + 1 < settings.repeats_at(self.step) {
            let repeat = self.repeat + 1;
            let stream = NoiseStream::Renoise {
                step: self.step as u32,
                repeat: repeat as u32,
            };
            let per = self.particles.first().map_or(0, |p| p.latent.len());
            let (mut fresh, mut next) = (vec![0f32; per], vec![0f32; per]);
            for k in 0..self.particles.len() {
                self.draw(noise, k, stream, &mut fresh)?;
                let particle = &mut self.particles[k];
                renoise(scheduler, self.step, &particle.latent, &fresh, &mut next);
                particle.latent.copy_from_slice(&next);
                if let Some((state, guidance)) = self.snapshot.as_ref().map(|s| &s[k]) {
                    particle.state.clone_from(state);
                    particle.guidance.clone_from(guidance);
                }
            }
            self.repeat = repeat;
            return Ok(());
        }
        let step = self.step;
        self.step += 1;
        self.repeat = 0;
        self.snapshot = None;
        let rewards = self.step_rewards.take();
        if let (true, Some(rewards)) = (
            settings
                .steering
                .resamples_after(step, scheduler.num_steps()),
            rewards,
        ) {
            self.resample(step, &rewards);
        }
        Ok(())
    }

    /// Folds `rewards` into each particle's potential and resamples the
    /// population: children take their ancestor's latent, solver state and track.
    fn resample(&mut self, step: usize, rewards: &[f32]) {
        let steering = self.settings.steering;
        for (particle, &r) in self.particles.iter_mut().zip(rewards) {
            particle.track.observe(steering.potential, r as f64);
        }
        let log_weights: Vec<f64> = self
            .particles
            .iter()
            .map(|p| p.track.log_weight(steering.lambda))
            .collect();
        let u = uniform(
            self.spec.seed,
            NoiseStream::Resample { step: step as u32 },
            0,
        );
        let Some(ancestors) = resample_population(&steering, &log_weights, u) else {
            return;
        };
        let old = self.particles.clone();
        for (particle, &a) in self.particles.iter_mut().zip(&ancestors) {
            *particle = old[a].clone();
            particle.track.rebase();
        }
    }
}
