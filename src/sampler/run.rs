//! One-shot sampling over the slot sampler: every sample of a list, with one
//! scheduler and one alignment, started together and advanced until all are done.
//! At the end each sample keeps its particle with the best final reward.

use std::sync::Arc;
use std::time::Instant;

use super::settings::{check_alignment, SampleSettings, Shared};
use super::{Condition, NoiseSource, SampleOutput, SampleRun, SampleSpec, Sampler, StepProgress};
use crate::backend::run_busy;
use crate::error::{Error, Result};
use crate::guidance::reward::RewardGuidance;
use crate::reward::{Reward, SampleShape};
use crate::steer::Steering;

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
        check_alignment(
            self.reward,
            &self.guidance,
            &self.steering,
            shape,
            num_steps,
        )
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
    /// The first failure (in sample order) is returned.
    pub fn sample_aligned(
        &self,
        specs: &[SampleSpec],
        noise: &dyn NoiseSource,
        alignment: &Alignment,
        progress: &mut dyn FnMut(StepProgress),
    ) -> Result<Vec<SampleOutput>> {
        run_busy(self.slots.backend(), || {
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
        self.embedding_tokens(specs)?;
        let settings = Arc::new(SampleSettings {
            scheduler: Shared::Borrowed(self.scheduler),
            reward: alignment.reward.map(Shared::Borrowed),
            reward_guidance: alignment.guidance,
            steering: alignment.steering,
        });
        settings.validate(self.slots.sample_shape())?;
        let mut runs = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| self.slots.start(spec.clone(), settings.clone(), i, noise))
            .collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        let total = self.scheduler.num_steps();
        while runs.iter().any(|r| !r.is_done()) {
            let before = runs.iter().map(SampleRun::steps_done).min().unwrap_or(0);
            let report = self.slots.advance(&mut runs, noise);
            if let Some((_, e)) = report.failed.into_iter().min_by_key(|(i, _)| *i) {
                return Err(e);
            }
            let after = runs.iter().map(SampleRun::steps_done).min().unwrap_or(0);
            if after > before {
                progress(StepProgress {
                    step: after,
                    total,
                    elapsed: started.elapsed(),
                });
            }
        }
        self.slots.finish_all(runs).into_iter().collect()
    }

    /// Refuses embedding-conditioned samples with different token counts.
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
