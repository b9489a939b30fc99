//! What a sample carries through sampling besides its seed, condition and CFG
//! settings: its scheduler, its reward, how the reward's gradient guides each step
//! and how its particles are steered. The samples of one request share one
//! [`SampleSettings`] (behind an `Arc`); samples of other requests in the same model
//! call have their own, at other steps of other schedules.

use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::guidance::reward::RewardGuidance;
use crate::reward::{Reward, SampleShape};
use crate::schedule::Scheduler;
use crate::steer::Steering;

/// A value that is either borrowed for `'r` or shared by reference count: the
/// library's one-shot calls borrow the caller's scheduler and reward, while a
/// long-lived engine owns them.
pub enum Shared<'r, T: ?Sized> {
    Borrowed(&'r T),
    Owned(Arc<T>),
}

impl<T: ?Sized> Deref for Shared<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Shared::Borrowed(r) => r,
            Shared::Owned(a) => a,
        }
    }
}

impl<T: ?Sized> Clone for Shared<'_, T> {
    fn clone(&self) -> Self {
        match self {
            Shared::Borrowed(r) => Shared::Borrowed(*r),
            Shared::Owned(a) => Shared::Owned(a.clone()),
        }
    }
}

impl<T: ?Sized> Shared<'_, T> {
    /// Whether both point at the same value (rows of the same reward are evaluated
    /// in one batch).
    pub fn same(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self.deref() as *const T, other.deref() as *const T)
    }
}

/// The per-sample settings beyond seed, condition and CFG.
#[derive(Clone)]
pub struct SampleSettings<'r> {
    pub scheduler: Shared<'r, dyn Scheduler + 'r>,
    /// Needed by reward guidance and by steering; without them it is only
    /// evaluated on the final sample (for [`super::SampleOutput::reward`]).
    pub reward: Option<Shared<'r, dyn Reward + 'r>>,
    /// Reward-gradient guidance (scale 0 turns it off).
    pub reward_guidance: RewardGuidance,
    pub steering: Steering,
}

impl<'r> SampleSettings<'r> {
    /// Plain sampling with `scheduler`: no reward, no guidance, one particle.
    pub fn plain(scheduler: Shared<'r, dyn Scheduler + 'r>) -> Self {
        SampleSettings {
            scheduler,
            reward: None,
            reward_guidance: RewardGuidance {
                scale: 0.0,
                ..RewardGuidance::default()
            },
            steering: Steering::NONE,
        }
    }

    /// Checks the settings against a sample shape and the schedule's step count.
    pub fn validate(&self, shape: SampleShape) -> Result<()> {
        check_alignment(
            self.reward.as_deref(),
            &self.reward_guidance,
            &self.steering,
            shape,
            self.scheduler.num_steps(),
        )
    }

    /// Whether the reward is evaluated during `step` (to guide it or to weigh the
    /// particles after it).
    pub fn evaluates_reward_at(&self, step: usize) -> bool {
        self.reward.is_some()
            && (self.reward_guidance.active_at(step)
                || self
                    .steering
                    .resamples_after(step, self.scheduler.num_steps()))
    }

    /// How many times `step` is taken (recurrence repeats guided steps).
    pub fn repeats_at(&self, step: usize) -> usize {
        if self.evaluates_reward_at(step) {
            self.reward_guidance.repeats_at(step)
        } else {
            1
        }
    }

    /// Model calls (rows per particle) one sample costs over its whole schedule,
    /// not counting the unconditional rows of CFG.
    pub fn calls_per_particle(&self) -> usize {
        (0..self.scheduler.num_steps())
            .map(|s| self.repeats_at(s))
            .sum()
    }
}

/// Checks a reward, its guidance and steering against a sample shape and a
/// schedule of `num_steps` steps.
pub(crate) fn check_alignment(
    reward: Option<&dyn Reward>,
    guidance: &RewardGuidance,
    steering: &Steering,
    shape: SampleShape,
    num_steps: usize,
) -> Result<()> {
    guidance.validate()?;
    steering.validate()?;
    match reward {
        Some(reward) => reward.check_shape(shape)?,
        None if guidance.scale > 0.0 => {
            return Err(Error::invalid(
                "reward",
                "reward guidance needs a reward to follow",
            ))
        }
        None if steering.is_active() => {
            return Err(Error::invalid(
                "reward",
                "particle steering needs a reward to select by",
            ))
        }
        None => {}
    }
    for (name, window) in [
        ("reward-window", guidance.window),
        ("fk-window", steering.window),
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
