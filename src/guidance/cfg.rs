//! Classifier-free guidance settings per sample: the method (plain CFG
//! `uncond + s·(cond − uncond)`, APG or CFG-Zero*), its scale, the rescale toward
//! the conditional prediction's standard deviation, and the step interval guidance
//! applies in. Plain CFG's arithmetic ([`combine`], [`rescale`]) is elementwise and
//! part of the fused step, in `crate::step`; APG and CFG-Zero* need sums over the
//! whole sample and run on the host ([`Guidance::predict`]).

use crate::error::{Error, Result};
pub use crate::step::{combine, rescale};

use super::apg::Apg;
use super::zero_star;

/// How the conditional and unconditional predictions are combined.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum GuidanceMethod {
    /// `uncond + s·(cond − uncond)`.
    #[default]
    Cfg,
    /// Adaptive projected guidance.
    Apg(Apg),
    /// CFG-Zero*: optimal scaling of the unconditional prediction, and a zero
    /// prediction for the first `zero_init_steps` steps.
    CfgZeroStar { zero_init_steps: usize },
}

impl GuidanceMethod {
    /// `cfg`, `apg` or `cfg-zero-star`.
    pub fn name(&self) -> &'static str {
        match self {
            GuidanceMethod::Cfg => "cfg",
            GuidanceMethod::Apg(_) => "apg",
            GuidanceMethod::CfgZeroStar { .. } => "cfg-zero-star",
        }
    }
}

/// What a sample's guidance carries from one step to the next (APG's momentum
/// buffer), per particle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuidanceState {
    pub average: Vec<f32>,
}

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
    pub method: GuidanceMethod,
}

impl Default for Guidance {
    fn default() -> Self {
        Guidance {
            scale: 1.0,
            rescale: 0.0,
            interval: GuidanceInterval::ALWAYS,
            method: GuidanceMethod::Cfg,
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
        if let GuidanceMethod::Apg(apg) = self.method {
            for (name, value) in [
                ("apg-eta", apg.eta),
                ("apg-momentum", apg.momentum),
                ("apg-norm-threshold", apg.norm_threshold),
            ] {
                if !value.is_finite() {
                    return Err(Error::invalid(
                        name,
                        format!("must be a finite number, got {value}"),
                    ));
                }
            }
            if apg.norm_threshold < 0.0 {
                return Err(Error::invalid(
                    "apg-norm-threshold",
                    format!("must be ≥ 0 (0: no cap), got {}", apg.norm_threshold),
                ));
            }
        }
        Ok(())
    }

    /// Whether `step`'s prediction is set to zero (CFG-Zero*'s first steps).
    pub fn zeroes_at(&self, step: usize) -> bool {
        matches!(self.method, GuidanceMethod::CfgZeroStar { zero_init_steps } if step < zero_init_steps)
    }

    /// Whether `step` needs the unconditional prediction.
    pub fn active_at(&self, step: usize) -> bool {
        self.scale != 1.0 && self.interval.contains(step) && !self.zeroes_at(step)
    }

    /// Whether the guided prediction can be computed elementwise (in the fused
    /// step) at `step`: plain CFG, or no guidance at all.
    pub fn is_elementwise_at(&self, step: usize) -> bool {
        matches!(self.method, GuidanceMethod::Cfg)
            || (!self.active_at(step) && !self.zeroes_at(step))
    }

    /// The guided prediction of one sample at `step` from its conditional and (when
    /// [`Guidance::active_at`]) unconditional predictions, with the rescale, as
    /// diffusers' guiders compute it. `state` carries APG's momentum buffer.
    pub fn predict(
        &self,
        step: usize,
        uncond: Option<&[f32]>,
        cond: &[f32],
        state: &mut GuidanceState,
        out: &mut [f32],
    ) {
        if self.zeroes_at(step) {
            // The rescale of an all-zero prediction is undefined (0/0): left out.
            out.fill(0.0);
            return;
        }
        let Some(uncond) = uncond.filter(|_| self.active_at(step)) else {
            out.copy_from_slice(cond);
            return;
        };
        match self.method {
            GuidanceMethod::Cfg => combine(uncond, cond, self.scale, out),
            GuidanceMethod::Apg(apg) => {
                if state.average.len() != cond.len() {
                    state.average = vec![0.0; cond.len()];
                }
                apg.guide(uncond, cond, self.scale, &mut state.average, out)
            }
            GuidanceMethod::CfgZeroStar { .. } => zero_star::guide(uncond, cond, self.scale, out),
        }
        rescale(out, cond, self.rescale);
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
            ..Guidance::default()
        };
        assert_eq!(
            (0..6).map(|s| g.active_at(s)).collect::<Vec<_>>(),
            [false, false, true, true, false, false]
        );
    }
}
