//! Turns the alignment flags into the library's reward, guidance and steering
//! settings, with the defaults documented in the README, and maps the library's
//! argument errors back to the flags that set them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use diffsteer::backend::Backend;
use diffsteer::guidance::reward::{RewardForm, RewardGuidance, RhoSchedule};
use diffsteer::guidance::GuidanceInterval;
use diffsteer::reward::{parse_reward_specs, RewardContext, WeightedSum};
use diffsteer::schedule::SchedulerKind;
use diffsteer::steer::{Potential, SteerMethod, Steering};
use diffsteer::Error;

use crate::args::{AlignArgs, PotentialArg, RewardFormArg, RhoScheduleArg, SteerArg, TargetArgs};
use crate::usage_error::{usage, CliError};

/// The resolved alignment of a run.
pub struct AlignmentSetup {
    pub reward: Option<WeightedSum>,
    pub guidance: RewardGuidance,
    pub steering: Steering,
}

impl AlignmentSetup {
    pub fn alignment(&self) -> diffsteer::Alignment<'_> {
        diffsteer::Alignment {
            reward: self
                .reward
                .as_ref()
                .map(|r| r as &dyn diffsteer::reward::Reward),
            guidance: self.guidance,
            steering: self.steering,
        }
    }

    /// Whether sampling draws fresh noise that tells resampled copies apart.
    fn needs_stochastic_steps(&self) -> bool {
        self.steering.is_active() && self.steering.method == SteerMethod::FeynmanKac
    }
}

/// `digit-classifier` next to the model folder, else the shipped one.
pub fn default_classifier_dir(model_dir: &Path) -> PathBuf {
    let sibling = model_dir
        .parent()
        .map(|p| p.join("digit-classifier"))
        .filter(|p| p.is_dir());
    sibling.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(diffsteer::reward::spec::DEFAULT_CLASSIFIER_DIR)
    })
}

/// Library argument errors name their setting; the flag has the same name.
pub fn flag_error(e: Error) -> CliError {
    match e {
        Error::InvalidArgument { name, message }
            if [
                "reward",
                "reward-scale",
                "reward-iters",
                "reward-window",
                "recur",
                "particles",
                "fk-lambda",
                "fk-every",
                "fk-window",
            ]
            .contains(&name.as_str()) =>
        {
            usage(&format!("--{name}"), message)
        }
        other => CliError::Runtime(other),
    }
}

fn interval(window: Option<(usize, usize)>) -> GuidanceInterval {
    window
        .map(|(start, stop)| GuidanceInterval { start, stop })
        .unwrap_or(GuidanceInterval::ALWAYS)
}

/// Where `classifier:` rewards load from: `--classifier`, else the default next to
/// the model folder. One context loads the classifier once for every resolve. With
/// rewards on a GPU run, the classifier runs on that GPU too.
pub fn reward_context(
    args: &AlignArgs,
    model_dir: &Path,
    target: &TargetArgs,
) -> Result<RewardContext, CliError> {
    let ctx = RewardContext::new(
        args.classifier
            .clone()
            .unwrap_or_else(|| default_classifier_dir(model_dir)),
    );
    if args.rewards.is_empty() {
        return Ok(ctx);
    }
    Ok(ctx.with_backend(classifier_backend(target)?))
}

/// The backend a reward classifier runs on for `target`: the same device, in f32
/// whatever `--dtype` (its gradient steers every step; it is small).
pub fn classifier_backend(target: &TargetArgs) -> Result<Arc<dyn Backend>, CliError> {
    let f32_target = TargetArgs {
        dtype: diffsteer::tensor::Precision::F32,
        ..*target
    };
    Ok(Arc::from(crate::generate::make_backend(&f32_target)?))
}

/// Resolves the alignment flags of a run with `num_steps` steps.
pub fn resolve(
    args: &AlignArgs,
    ctx: &RewardContext,
    num_steps: usize,
) -> Result<AlignmentSetup, CliError> {
    let reward = if args.rewards.is_empty() {
        let needs_reward = [
            ("--reward-scale", args.reward_scale.is_some()),
            ("--reward-form", args.reward_form.is_some()),
            ("--reward-schedule", args.reward_schedule.is_some()),
            ("--reward-window", args.reward_window.is_some()),
            ("--reward-iters", args.reward_iters.is_some()),
            ("--reward-raw", args.reward_raw),
            ("--recur", args.recur.is_some()),
            ("--particles", args.particles > 1),
            ("--steer", args.steer.is_some()),
            ("--classifier", args.classifier.is_some()),
        ];
        if let Some((flag, _)) = needs_reward.iter().find(|(_, given)| *given) {
            return Err(usage(
                flag,
                "works on a reward: add --reward SPEC (e.g. --reward classifier:3)",
            ));
        }
        None
    } else {
        Some(parse_reward_specs(&args.rewards, ctx).map_err(|e| match e {
            Error::InvalidArgument { message, .. } => usage("--reward", message),
            other => usage(
                "--classifier",
                format!(
                    "cannot load the classifier in {}: {other}",
                    ctx.classifier_dir.display()
                ),
            ),
        })?)
    };

    let defaults = RewardGuidance::recommended(num_steps);
    let guidance = RewardGuidance {
        form: match args.reward_form {
            Some(RewardFormArg::Eps) => RewardForm::Eps,
            Some(RewardFormArg::X0) | None => RewardForm::X0,
        },
        scale: if reward.is_some() {
            args.reward_scale.unwrap_or(defaults.scale)
        } else {
            0.0
        },
        schedule: match args.reward_schedule {
            Some(RhoScheduleArg::Constant) => RhoSchedule::Constant,
            Some(RhoScheduleArg::Noise) => RhoSchedule::NoiseLevel,
            None => defaults.schedule,
        },
        normalize: !args.reward_raw,
        iterations: args.reward_iters.unwrap_or(defaults.iterations),
        window: args
            .reward_window
            .map_or(defaults.window, |w| interval(Some(w))),
        recurrence: args.recur.unwrap_or(defaults.recurrence),
    };
    if guidance.form == RewardForm::Eps && args.reward_scale.is_none() && reward.is_some() {
        return Err(usage(
            "--reward-form",
            "eps takes its own scale: give --reward-scale S as well",
        ));
    }

    let method = match args.steer {
        Some(SteerArg::BestOfN) => SteerMethod::BestOfN,
        Some(SteerArg::Fk) | None => SteerMethod::FeynmanKac,
    };
    let base = Steering::new(args.particles, method);
    let steering = Steering {
        potential: match args.fk_potential {
            Some(PotentialArg::Diff) => Potential::Difference,
            Some(PotentialArg::Max) => Potential::Max,
            Some(PotentialArg::Sum) => Potential::Sum,
            None => base.potential,
        },
        lambda: args.fk_lambda.unwrap_or(base.lambda),
        every: args.fk_every.unwrap_or(base.every),
        window: args.fk_window.map_or(base.window, |w| interval(Some(w))),
        adaptive: args.fk_adaptive,
        ..base
    };
    let fk_flags = [
        ("--fk-potential", args.fk_potential.is_some()),
        ("--fk-lambda", args.fk_lambda.is_some()),
        ("--fk-every", args.fk_every.is_some()),
        ("--fk-window", args.fk_window.is_some()),
        ("--fk-adaptive", args.fk_adaptive),
    ];
    if let Some((flag, _)) = fk_flags.iter().find(|(_, given)| *given) {
        if !(steering.is_active() && steering.method == SteerMethod::FeynmanKac) {
            return Err(usage(
                flag,
                "sets Feynman-Kac steering: add --particles N (N > 1) and --steer fk",
            ));
        }
    }
    let setup = AlignmentSetup {
        reward,
        guidance,
        steering,
    };
    setup.guidance.validate().map_err(flag_error)?;
    setup.steering.validate().map_err(flag_error)?;
    Ok(setup)
}

/// DDIM's eta for the run: the flag, else 1 under Feynman-Kac steering (resampled
/// copies of a particle must draw different noise to diverge), else 0. Refuses
/// Feynman-Kac steering on a run with no fresh noise at all.
pub fn resolve_eta(
    setup: &AlignmentSetup,
    eta: Option<f64>,
    kind: SchedulerKind,
) -> Result<f64, CliError> {
    let stochastic_needed = setup.needs_stochastic_steps()
        && (setup.guidance.recurrence == 1 || setup.guidance.scale == 0.0);
    let eta = match (eta, kind) {
        (Some(eta), _) => eta,
        (None, SchedulerKind::Ddim) if stochastic_needed => 1.0,
        (None, _) => 0.0,
    };
    let deterministic = match kind {
        SchedulerKind::Ddim => eta == 0.0,
        SchedulerKind::Euler | SchedulerKind::DpmSolverMultistep => true,
        SchedulerKind::Ddpm | SchedulerKind::EulerAncestral => false,
    };
    if stochastic_needed && deterministic {
        return Err(usage(
            "--steer",
            format!(
                "fk resamples particles, and copies of one particle only diverge with fresh noise, which {kind} with these settings never draws: use ddpm, euler-a or ddim with --eta > 0, or add --recur K"
            ),
        ));
    }
    Ok(eta)
}

fn window_json(w: GuidanceInterval) -> serde_json::Value {
    if w == GuidanceInterval::ALWAYS {
        serde_json::Value::Null
    } else {
        serde_json::json!([w.start, w.stop])
    }
}

/// The reward-guidance settings as written into `metadata.jsonl`.
pub fn guidance_json(g: &RewardGuidance) -> serde_json::Value {
    serde_json::json!({
        "form": match g.form { RewardForm::X0 => "x0", RewardForm::Eps => "eps" },
        "scale": g.scale,
        "schedule": match g.schedule { RhoSchedule::Constant => "constant", RhoSchedule::NoiseLevel => "noise" },
        "normalize": g.normalize,
        "iterations": g.iterations,
        "window": window_json(g.window),
        "recurrence": g.recurrence,
    })
}

/// The steering settings as written into `metadata.jsonl`.
pub fn steering_json(s: &Steering) -> serde_json::Value {
    serde_json::json!({
        "particles": s.particles,
        "method": s.method.cli_name(),
        "potential": s.potential.cli_name(),
        "lambda": s.lambda,
        "every": s.every,
        "window": window_json(s.window),
        "adaptive": s.adaptive,
    })
}
