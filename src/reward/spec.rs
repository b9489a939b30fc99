//! Reward specs as written on the command line: `NAME:ARG[@WEIGHT]`, e.g.
//! `classifier:3`, `ink:0.2@0.5`. Parsing builds the rewards, loading the classifier
//! at most once however many `classifier:` specs there are. `realism` takes no
//! argument: `realism` or `realism@WEIGHT`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::classifier::{ClassGoal, Classifier, ClassifierEnsemble, ClassifierReward};
use super::ink::InkReward;
use super::realism::{RealismReward, DEFAULT_REALISM_DIR};
use super::sum::WeightedSum;
use super::Reward;
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::error::{Error, Result};

/// Where the classifier the CLI uses by default lives (relative to the repository):
/// an ensemble of the shipped digit classifiers (`weights/README.md`).
pub const DEFAULT_CLASSIFIER_DIR: &str = "weights/digit-reward";

/// The accepted spec forms, for error messages and help texts.
pub const REWARD_SPEC_FORMS: &str =
    "classifier:D (log p(digit D), D a class of the classifier), avoid:D (log(1 - p(digit D))), \
     ink:T (ink fraction T in [0, 1]), realism (log-odds real vs the model's own samples), \
     each optionally followed by @WEIGHT (default 1)";

/// What building rewards from specs may need, loaded lazily: a run without a
/// `classifier:` spec never touches the classifier folder.
pub struct RewardContext {
    pub classifier_dir: PathBuf,
    /// Where a loaded classifier runs (the CPU unless [`RewardContext::with_backend`]).
    backend: Arc<dyn Backend>,
    classifier: OnceLock<Arc<ClassifierEnsemble>>,
    /// The discriminator of `realism`: `realism/` next to `classifier_dir`, else the
    /// shipped one.
    pub realism_dir: PathBuf,
    realism: OnceLock<Arc<Classifier>>,
}

impl RewardContext {
    pub fn new(classifier_dir: impl Into<PathBuf>) -> Self {
        let classifier_dir = classifier_dir.into();
        let realism_dir = classifier_dir
            .parent()
            .map(|p| p.join("realism"))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_REALISM_DIR));
        RewardContext {
            classifier_dir,
            backend: Arc::new(CpuBackend::new()),
            classifier: OnceLock::new(),
            realism_dir,
            realism: OnceLock::new(),
        }
    }

    /// Reads `realism` from the discriminator in `dir`.
    pub fn with_realism_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.realism_dir = dir.into();
        self.realism = OnceLock::new();
        self
    }

    /// The `realism` reward, its discriminator loaded on first use and shared after.
    pub fn realism(&self) -> Result<RealismReward> {
        if let Some(d) = self.realism.get() {
            return RealismReward::new(d.clone());
        }
        let loaded = RealismReward::load(&self.realism_dir, self.backend.clone())?;
        let shared = self
            .realism
            .get_or_init(|| loaded.discriminator().clone())
            .clone();
        RealismReward::new(shared)
    }

    /// Runs the classifier on `backend` (e.g. the GPU the sampler uses).
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = backend;
        self
    }

    /// The classifier (or ensemble of classifiers) in `classifier_dir`, loaded on
    /// first use and shared after.
    pub fn classifier(&self) -> Result<Arc<ClassifierEnsemble>> {
        if let Some(c) = self.classifier.get() {
            return Ok(c.clone());
        }
        let loaded = Arc::new(ClassifierEnsemble::load_on(
            &self.classifier_dir,
            self.backend.clone(),
        )?);
        // If another thread won the race, use its copy (both are the same file).
        Ok(self.classifier.get_or_init(|| loaded).clone())
    }
}

impl Default for RewardContext {
    fn default() -> Self {
        RewardContext::new(DEFAULT_CLASSIFIER_DIR)
    }
}

fn bad(spec: &str, message: impl std::fmt::Display) -> Error {
    Error::invalid(
        "reward",
        format!("{spec:?}: {message} (accepted: {REWARD_SPEC_FORMS})"),
    )
}

/// Parses one `NAME:ARG[@WEIGHT]` spec into its weight and reward.
pub fn parse_reward_spec(spec: &str, ctx: &RewardContext) -> Result<(f32, Box<dyn Reward>)> {
    let text = spec.trim();
    let (body, weight) = match text.split_once('@') {
        None => (text, 1.0),
        Some((body, w)) => {
            let weight: f32 = w
                .trim()
                .parse()
                .map_err(|_| bad(spec, format!("weight {w:?} is not a number")))?;
            if !weight.is_finite() {
                return Err(bad(spec, format!("weight {w:?} is not a finite number")));
            }
            (body, weight)
        }
    };
    if body.trim() == "realism" {
        return Ok((weight, Box::new(ctx.realism()?)));
    }
    let Some((name, arg)) = body.split_once(':') else {
        return Err(bad(
            spec,
            "missing `:` between the reward name and its argument",
        ));
    };
    let (name, arg) = (name.trim(), arg.trim());
    let reward: Box<dyn Reward> = match name {
        "classifier" | "avoid" => {
            let class: usize = arg.parse().map_err(|_| {
                bad(
                    spec,
                    format!("class {arg:?} is not a whole non-negative number"),
                )
            })?;
            let goal = if name == "avoid" {
                ClassGoal::Avoid
            } else {
                ClassGoal::Target
            };
            Box::new(ClassifierReward::of_ensemble(
                ctx.classifier()?,
                class,
                goal,
            )?)
        }
        "ink" => {
            let target: f32 = arg
                .parse()
                .map_err(|_| bad(spec, format!("ink target {arg:?} is not a number")))?;
            if !(target.is_finite() && (0.0..=1.0).contains(&target)) {
                return Err(bad(
                    spec,
                    format!("ink target {arg} is not a fraction in [0, 1]"),
                ));
            }
            Box::new(InkReward::new(target)?)
        }
        "realism" => return Err(bad(spec, "realism takes no argument: write `realism`")),
        other => return Err(bad(spec, format!("unknown reward {other:?}"))),
    };
    Ok((weight, reward))
}

/// Parses every spec (in order) into one weighted sum; an empty list is an error.
pub fn parse_reward_specs(specs: &[String], ctx: &RewardContext) -> Result<WeightedSum> {
    let terms = specs
        .iter()
        .map(|s| parse_reward_spec(s, ctx))
        .collect::<Result<Vec<_>>>()?;
    WeightedSum::new(terms)
}
