//! Classifier-free guidance settings per sample: the scale of
//! `uncond + s·(cond − uncond)`, the rescale toward the conditional prediction's
//! standard deviation, and the step interval CFG applies in. The arithmetic itself
//! ([`combine`], [`rescale`]) is part of the fused step, in `crate::step`.

use crate::error::{Error, Result};
pub use crate::step::{combine, rescale};

/// Steps `start..stop` (0-based, stop exclusive) use CFG; the others use the
/// conditional prediction alone and skip the unconditional model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuidanceInterval {
    pub start: usize,
    pub stop: usize,
}

impl GuidanceInterval {
    pub const ALWAYS: GuidanceInterval = GuidanceInterval {
        start: 0,
        stop: usize::MAX,
    };

    pub fn contains(&self, step: usize) -> bool {
        self.start <= step && step < self.stop
    }
}

/// One sample's guidance settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    /// CFG scale `s`; 1 means the conditional prediction alone (no extra model call).
    pub scale: f32,
    /// `guidance_rescale` φ in [0, 1]; 0 disables the rescale.
    pub rescale: f32,
    pub interval: GuidanceInterval,
}

impl Default for Guidance {
    fn default() -> Self {
        Guidance {
            scale: 1.0,
            rescale: 0.0,
            interval: GuidanceInterval::ALWAYS,
        }
    }
}

impl Guidance {
    /// Plain CFG at `scale` on every step, no rescale.
    pub fn cfg(scale: f32) -> Self {
        Guidance {
            scale,
            ..Guidance::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.scale.is_finite() {
            return Err(Error::invalid(
                "cfg",
                format!("guidance scale must be finite, got {}", self.scale),
            ));
        }
        if !(0.0..=1.0).contains(&self.rescale) {
            return Err(Error::invalid(
                "cfg-rescale",
                format!("must be in [0, 1], got {}", self.rescale),
            ));
        }
        if self.interval.start > self.interval.stop {
            return Err(Error::invalid(
                "cfg-interval",
                format!(
                    "start {} is after stop {}",
                    self.interval.start, self.interval.stop
                ),
            ));
        }
        Ok(())
    }

    /// Whether `step` needs the unconditional prediction.
    pub fn active_at(&self, step: usize) -> bool {
        self.scale != 1.0 && self.interval.contains(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_half_open() {
        let g = Guidance {
            scale: 3.0,
            rescale: 0.0,
            interval: GuidanceInterval { start: 2, stop: 4 },
        };
        assert_eq!(
            (0..6).map(|s| g.active_at(s)).collect::<Vec<_>>(),
            [false, false, true, true, false, false]
        );
    }
}
