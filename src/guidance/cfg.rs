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

    /// The `name` of the argument a setting is refused under.
    fn refused_as(result: Result<()>) -> String {
        match result {
            Err(Error::InvalidArgument { name, .. }) => name,
            other => panic!("expected a refused argument, got {other:?}"),
        }
    }

    #[test]
    fn method_names_are_the_cli_ones() {
        assert_eq!(GuidanceMethod::Cfg.name(), "cfg");
        assert_eq!(GuidanceMethod::Apg(Apg::default()).name(), "apg");
        assert_eq!(
            GuidanceMethod::CfgZeroStar { zero_init_steps: 1 }.name(),
            "cfg-zero-star"
        );
    }

    #[test]
    fn cfg_sets_the_scale_and_keeps_the_defaults() {
        let g = Guidance::cfg(4.5);
        assert_eq!(g.scale, 4.5);
        assert_eq!(
            g,
            Guidance {
                scale: 4.5,
                ..Guidance::default()
            }
        );
    }

    #[test]
    fn validate_accepts_the_edges_and_names_each_bad_setting() {
        let with = |edit: &dyn Fn(&mut Guidance)| {
            let mut g = Guidance::cfg(3.0);
            edit(&mut g);
            g.validate()
        };
        let apg = |eta: f32, norm_threshold: f32, momentum: f32| {
            move |g: &mut Guidance| {
                g.method = GuidanceMethod::Apg(Apg {
                    eta,
                    norm_threshold,
                    momentum,
                })
            }
        };
        for ok in [
            with(&|_| {}),
            with(&|g| g.scale = -2.0),
            with(&|g| g.rescale = 1.0),
            with(&|g| g.interval = GuidanceInterval { start: 3, stop: 3 }),
            with(&apg(1.0, 15.0, 0.0)),
            with(&apg(0.0, 0.0, -0.5)),
        ] {
            assert!(ok.is_ok(), "{ok:?}");
        }
        for (bad, name) in [
            (with(&|g| g.scale = f32::NAN), "cfg"),
            (with(&|g| g.scale = f32::INFINITY), "cfg"),
            (with(&|g| g.rescale = -0.1), "cfg-rescale"),
            (with(&|g| g.rescale = 1.1), "cfg-rescale"),
            (with(&|g| g.rescale = f32::NAN), "cfg-rescale"),
            (
                with(&|g| g.interval = GuidanceInterval { start: 4, stop: 3 }),
                "cfg-interval",
            ),
            (with(&apg(f32::NAN, 15.0, 0.0)), "apg-eta"),
            (with(&apg(1.0, 15.0, f32::INFINITY)), "apg-momentum"),
            (with(&apg(1.0, f32::NAN, 0.0)), "apg-norm-threshold"),
            (with(&apg(1.0, -1.0, 0.0)), "apg-norm-threshold"),
        ] {
            assert_eq!(refused_as(bad), name);
        }
    }

    #[test]
    fn zero_init_steps_skip_guidance_and_the_fused_step() {
        // CFG-Zero* zeroes steps 0 and 1; the interval 1..5 guides 2, 3 and 4.
        let g = Guidance {
            scale: 3.0,
            interval: GuidanceInterval { start: 1, stop: 5 },
            method: GuidanceMethod::CfgZeroStar { zero_init_steps: 2 },
            ..Guidance::default()
        };
        let each = |f: &dyn Fn(usize) -> bool| (0..6).map(f).collect::<Vec<_>>();
        let (f, t) = (false, true);
        assert_eq!(each(&|s| g.zeroes_at(s)), [t, t, f, f, f, f]);
        assert_eq!(each(&|s| g.active_at(s)), [f, f, t, t, t, f]);
        // Only the step that is neither zeroed nor guided can run elementwise.
        assert_eq!(each(&|s| g.is_elementwise_at(s)), [f, f, f, f, f, t]);
        // Plain CFG is elementwise on guided and unguided steps alike.
        let cfg = Guidance {
            method: GuidanceMethod::Cfg,
            ..g
        };
        assert_eq!(each(&|s| cfg.zeroes_at(s)), [f; 6]);
        assert_eq!(each(&|s| cfg.is_elementwise_at(s)), [t; 6]);
        // Scale 1 is the conditional prediction alone.
        let unit = Guidance { scale: 1.0, ..cfg };
        assert_eq!(each(&|s| unit.active_at(s)), [f; 6]);
    }

    #[test]
    fn predict_zeroes_guides_or_passes_the_conditional_prediction() {
        let (uncond, cond) = ([1.0f32, -2.0], [3.0f32, 2.0]);
        let mut state = GuidanceState::default();
        let mut out = [9f32; 2];
        let g = Guidance {
            scale: 2.5,
            interval: GuidanceInterval { start: 1, stop: 3 },
            method: GuidanceMethod::CfgZeroStar { zero_init_steps: 1 },
            ..Guidance::default()
        };
        g.predict(0, Some(&uncond[..]), &cond, &mut state, &mut out);
        assert_eq!(out, [0.0, 0.0]);
        g.predict(3, Some(&uncond[..]), &cond, &mut state, &mut out);
        assert_eq!(out, cond);
        let cfg = Guidance {
            method: GuidanceMethod::Cfg,
            ..g
        };
        cfg.predict(1, Some(&uncond[..]), &cond, &mut state, &mut out);
        assert_eq!(out, [1.0 + 2.5 * 2.0, -2.0 + 2.5 * 4.0]);
    }

    #[test]
    fn predict_keeps_the_apg_momentum_from_step_to_step() {
        let apg = Apg {
            eta: 1.0,
            norm_threshold: 0.0,
            momentum: 0.5,
        };
        let g = Guidance {
            scale: 1.5,
            method: GuidanceMethod::Apg(apg),
            ..Guidance::default()
        };
        let mut state = GuidanceState::default();
        let mut out = [0f32; 2];
        // Step 0: average = (1, 2); η = 1 keeps the whole update.
        g.predict(0, Some(&[0.0, 0.0][..]), &[1.0, 2.0], &mut state, &mut out);
        assert_eq!(state.average, [1.0, 2.0]);
        // The projection onto cond = (1, 2) runs through √5, so allow rounding.
        assert!(
            (out[0] - 1.5).abs() < 1e-6 && (out[1] - 3.0).abs() < 1e-6,
            "{out:?}"
        );
        // Step 1: average = (1, 0) + 0.5·(1, 2) = (1.5, 1).
        g.predict(1, Some(&[0.0, 0.0][..]), &[1.0, 0.0], &mut state, &mut out);
        assert_eq!(state.average, [1.5, 1.0]);
        assert_eq!(out, [2.25, 1.5]);
    }
}
