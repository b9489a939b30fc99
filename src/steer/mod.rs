//! Particle steering: N particles per requested sample, weighted by the reward of
//! their x̂₀ estimates and resampled by one sequential-Monte-Carlo core ([`smc`]).
//! Best-of-N never resamples and keeps the particle with the best final reward;
//! Feynman-Kac steering resamples during sampling toward p(x)·exp(λ·φ_t)
//! ([`potential`]) and then keeps the best final particle as well.

pub mod potential;
pub mod smc;

pub use potential::{Potential, PotentialTrack};

use crate::error::{Error, Result};
use crate::guidance::GuidanceInterval;

/// How a sample's particles are steered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerMethod {
    /// N independent particles; the one with the highest final reward is kept.
    BestOfN,
    /// Feynman-Kac steering: resampling by potential during sampling.
    FeynmanKac,
}

impl SteerMethod {
    pub fn cli_name(self) -> &'static str {
        match self {
            SteerMethod::BestOfN => "best-of-n",
            SteerMethod::FeynmanKac => "fk",
        }
    }

    pub fn from_cli_name(name: &str) -> Option<Self> {
        [SteerMethod::BestOfN, SteerMethod::FeynmanKac]
            .into_iter()
            .find(|m| m.cli_name() == name)
    }
}

/// Particle steering settings, shared by every sample of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steering {
    /// Particles per requested sample; 1 turns steering off.
    pub particles: usize,
    pub method: SteerMethod,
    pub potential: Potential,
    /// λ of the tilted target exp(λ·φ).
    pub lambda: f64,
    /// Resample after every `every`-th step of the window.
    pub every: usize,
    /// Steps (0-based, stop exclusive) after which resampling may happen.
    pub window: GuidanceInterval,
    /// Resample only when the effective sample size falls below N/2; otherwise
    /// the weights keep accumulating.
    pub adaptive: bool,
}

impl Steering {
    /// One particle per sample: no steering.
    pub const NONE: Steering = Steering {
        particles: 1,
        method: SteerMethod::BestOfN,
        potential: Potential::Difference,
        lambda: 10.0,
        every: 5,
        window: GuidanceInterval::ALWAYS,
        adaptive: false,
    };

    /// `particles` particles with `method` and the defaults of `diffsteer generate`.
    pub fn new(particles: usize, method: SteerMethod) -> Self {
        Steering {
            particles,
            method,
            ..Steering::NONE
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.particles == 0 || self.particles > crate::rng::MAX_PARTICLES as usize {
            return Err(Error::invalid(
                "particles",
                format!(
                    "must be 1 to {}, got {}",
                    crate::rng::MAX_PARTICLES,
                    self.particles
                ),
            ));
        }
        if !self.lambda.is_finite() || self.lambda < 0.0 {
            return Err(Error::invalid(
                "fk-lambda",
                format!("must be a finite number >= 0, got {}", self.lambda),
            ));
        }
        if self.every == 0 {
            return Err(Error::invalid("fk-every", "must be at least 1"));
        }
        if self.window.start >= self.window.stop {
            return Err(Error::invalid(
                "fk-window",
                format!(
                    "{}:{} is empty; give A:B with A < B",
                    self.window.start, self.window.stop
                ),
            ));
        }
        Ok(())
    }

    pub fn is_active(&self) -> bool {
        self.particles > 1
    }

    /// Whether the population may be resampled after `step` of `num_steps`. Never
    /// after the last step: the final choice is by final reward.
    pub fn resamples_after(&self, step: usize, num_steps: usize) -> bool {
        self.is_active()
            && self.method == SteerMethod::FeynmanKac
            && step + 1 < num_steps
            && self.window.contains(step)
            && (step + 1 - self.window.start).is_multiple_of(self.every)
    }
}

/// Resamples one population in place: `log_weights` → ancestors. Returns the
/// ancestor of each slot, or `None` when the adaptive rule skips resampling.
pub fn resample_population(steering: &Steering, log_weights: &[f64], u: f64) -> Option<Vec<usize>> {
    let weights = smc::normalized_weights(log_weights);
    if steering.adaptive && smc::effective_sample_size(&weights) >= log_weights.len() as f64 / 2.0 {
        return None;
    }
    Some(smc::systematic_resample(&weights, u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_points_follow_every_and_window() {
        let s = Steering {
            every: 3,
            window: GuidanceInterval { start: 2, stop: 12 },
            ..Steering::new(4, SteerMethod::FeynmanKac)
        };
        let points: Vec<usize> = (0..20).filter(|&t| s.resamples_after(t, 20)).collect();
        assert_eq!(points, vec![4, 7, 10]);
        let best = Steering::new(4, SteerMethod::BestOfN);
        assert!((0..20).all(|t| !best.resamples_after(t, 20)));
        let fk = Steering::new(4, SteerMethod::FeynmanKac);
        assert!(!fk.resamples_after(19, 20));
    }

    #[test]
    fn adaptive_skips_balanced_populations() {
        let s = Steering {
            adaptive: true,
            ..Steering::new(4, SteerMethod::FeynmanKac)
        };
        assert_eq!(resample_population(&s, &[0.0; 4], 0.5), None);
        assert_eq!(
            resample_population(&s, &[0.0, -50.0, -50.0, -50.0], 0.5),
            Some(vec![0, 0, 0, 0])
        );
    }

    #[test]
    fn without_the_adaptive_rule_a_balanced_population_is_resampled() {
        let s = Steering::new(4, SteerMethod::FeynmanKac);
        // Equal weights, u = 0.5: the points 0.125, 0.375, … fall one per particle.
        assert_eq!(
            resample_population(&s, &[0.0; 4], 0.5),
            Some(vec![0, 1, 2, 3])
        );
    }

    #[test]
    fn cli_names_are_the_documented_ones_and_round_trip() {
        assert_eq!(SteerMethod::BestOfN.cli_name(), "best-of-n");
        assert_eq!(SteerMethod::FeynmanKac.cli_name(), "fk");
        for m in [SteerMethod::BestOfN, SteerMethod::FeynmanKac] {
            assert_eq!(SteerMethod::from_cli_name(m.cli_name()), Some(m));
        }
        assert_eq!(SteerMethod::from_cli_name("smc"), None);
        assert_eq!(SteerMethod::from_cli_name(""), None);
    }

    #[test]
    fn one_particle_is_no_steering() {
        assert!(!Steering::NONE.is_active());
        assert!(!Steering::new(1, SteerMethod::FeynmanKac).is_active());
        assert!(Steering::new(2, SteerMethod::BestOfN).is_active());
    }

    #[test]
    fn validate_accepts_the_edges_and_names_each_bad_setting() {
        let max = crate::rng::MAX_PARTICLES as usize;
        let with = |edit: &dyn Fn(&mut Steering)| {
            let mut s = Steering::new(4, SteerMethod::FeynmanKac);
            edit(&mut s);
            s.validate()
        };
        for ok in [
            with(&|_| {}),
            with(&|s| s.particles = 1),
            with(&|s| s.particles = max),
            with(&|s| s.lambda = 0.0),
            with(&|s| s.every = 1),
            with(&|s| s.window = GuidanceInterval { start: 3, stop: 4 }),
        ] {
            assert!(ok.is_ok(), "{ok:?}");
        }
        for (bad, want) in [
            (with(&|s| s.particles = 0), "particles"),
            (with(&|s| s.particles = max + 1), "particles"),
            (with(&|s| s.lambda = -1.0), "fk-lambda"),
            (with(&|s| s.lambda = f64::NAN), "fk-lambda"),
            (with(&|s| s.lambda = f64::INFINITY), "fk-lambda"),
            (with(&|s| s.every = 0), "fk-every"),
            (
                with(&|s| s.window = GuidanceInterval { start: 3, stop: 3 }),
                "fk-window",
            ),
        ] {
            match bad {
                Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, want),
                other => panic!("{want}: expected a refused argument, got {other:?}"),
            }
        }
    }
}
