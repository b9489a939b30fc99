//! Several classifiers read as one: the reward of an ensemble is the MEAN of its
//! members' readouts (for `classifier:D` the mean of their log p(D | x), for
//! `avoid:D` the mean of their log(1 − p(D | x))), and its gradient the mean of
//! their gradients.
//!
//! Why: guidance climbs the reward model's gradient, and part of what it climbs is
//! the model's own blind spots — directions that raise its score without making the
//! image more of a digit. Networks of different architectures have different blind
//! spots, so a step that fools one of them rarely fools another, and the mean only
//! rises along what they agree on (README, "The default against independent
//! readers").
//!
//! An ensemble folder holds only a `config.json`:
//!
//! ```json
//! {"format": "diffsteer-classifier-ensemble/1",
//!  "members": ["../digit-classifier", "../digit-classifier-strided"]}
//! ```
//!
//! Each member is a classifier folder (relative paths are relative to the ensemble
//! folder); every member must read the same input shape and have the same classes.
//! A plain classifier folder loads as an ensemble of one, which reads exactly as
//! that classifier does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{Classifier, Readout, CLASSIFIER_FORMAT};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::reward::{check_gradient_buffer, SampleShape};

/// The `format` field of an ensemble folder's `config.json`.
pub const ENSEMBLE_FORMAT: &str = "diffsteer-classifier-ensemble/1";

/// One or more classifiers whose readouts are averaged.
pub struct ClassifierEnsemble {
    dir: PathBuf,
    members: Vec<Arc<Classifier>>,
}

impl ClassifierEnsemble {
    /// The ensemble of one classifier: it reads exactly as the classifier.
    pub fn single(classifier: Arc<Classifier>) -> Self {
        ClassifierEnsemble {
            dir: classifier.dir().to_path_buf(),
            members: vec![classifier],
        }
    }

    /// An ensemble of `members`, named by `dir` in messages; an error unless there
    /// is at least one member and all of them read the same input and classes.
    pub fn new(dir: impl Into<PathBuf>, members: Vec<Arc<Classifier>>) -> Result<Self> {
        let dir = dir.into();
        let Some(first) = members.first() else {
            return Err(Error::config(
                dir.join("config.json"),
                "members",
                "an ensemble needs at least one classifier",
            ));
        };
        for m in &members[1..] {
            if m.input_shape() != first.input_shape() || m.num_classes() != first.num_classes() {
                return Err(Error::config(
                    dir.join("config.json"),
                    "members",
                    format!(
                        "{} reads {} samples (H×W×C) into {} classes, {} reads {} into {}: \
                         the members of an ensemble must agree on both",
                        first.dir().display(),
                        first.input_shape(),
                        first.num_classes(),
                        m.dir().display(),
                        m.input_shape(),
                        m.num_classes()
                    ),
                ));
            }
        }
        Ok(ClassifierEnsemble { dir, members })
    }

    /// Loads `dir` onto `backend`: an ensemble folder (format [`ENSEMBLE_FORMAT`])
    /// loads all its members, a classifier folder an ensemble of one.
    pub fn load_on(dir: &Path, backend: Arc<dyn Backend>) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| Error::io(&config_path, "cannot read classifier config", e))?;
        let Some(members) = ensemble_members(&config_path, &text)? else {
            return Ok(Self::single(Arc::new(Classifier::load_on(dir, backend)?)));
        };
        let members = members
            .iter()
            .map(|m| {
                let path = dir.join(m);
                if is_ensemble_folder(&path) {
                    return Err(Error::config(
                        &config_path,
                        "members",
                        format!(
                            "{} is itself an ensemble; list its classifiers instead",
                            path.display()
                        ),
                    ));
                }
                Classifier::load_on(&path, backend.clone()).map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(dir, members)
    }

    /// The folder it was loaded from (a single classifier's own folder).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn members(&self) -> &[Arc<Classifier>] {
        &self.members
    }

    /// The shape of one input sample, channels-last (the same for every member).
    pub fn input_shape(&self) -> SampleShape {
        self.members[0].input_shape()
    }

    pub fn num_classes(&self) -> usize {
        self.members[0].num_classes()
    }

    /// The mean over the members of [`Classifier::readout_and_grad`]: the value of
    /// `readouts[i]` on sample i, and with `grad` (same length as `x`) the mean of
    /// the members' gradients. Errors as there; nothing is written to `grad` then.
    pub fn readout_and_grad(
        &self,
        x: &[f32],
        readouts: &[Readout],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        if let [only] = self.members.as_slice() {
            return only.readout_and_grad(x, readouts, grad);
        }
        check_gradient_buffer("classifier gradient", x, grad.as_deref())?;
        let share = 1.0 / self.members.len() as f64;
        let mut sum = vec![0f64; readouts.len()];
        let mut grad_sum = grad.as_ref().map(|_| vec![0f64; x.len()]);
        let mut member_grad = grad.as_ref().map(|_| vec![0f32; x.len()]);
        for m in &self.members {
            let values = m.readout_and_grad(x, readouts, member_grad.as_deref_mut())?;
            sum.iter_mut()
                .zip(&values)
                .for_each(|(s, &v)| *s += v as f64);
            if let (Some(total), Some(g)) = (grad_sum.as_mut(), member_grad.as_ref()) {
                total.iter_mut().zip(g).for_each(|(s, &v)| *s += v as f64);
            }
        }
        if let (Some(out), Some(total)) = (grad, grad_sum) {
            out.iter_mut()
                .zip(&total)
                .for_each(|(o, &s)| *o = (s * share) as f32);
        }
        Ok(sum.into_iter().map(|s| (s * share) as f32).collect())
    }

    /// The class of every sample with the highest mean log-probability over the
    /// members (the argmax of their normalised geometric mean).
    pub fn predict(&self, x: &[f32]) -> Result<Vec<usize>> {
        if let [only] = self.members.as_slice() {
            return only.predict(x);
        }
        let k = self.num_classes();
        let mut mean_log_p: Option<Vec<f64>> = None;
        for m in &self.members {
            let logits = m.logits(x)?;
            let mut log_p = Vec::with_capacity(logits.len());
            for row in logits.chunks_exact(k) {
                let top = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = top
                    + row
                        .iter()
                        .map(|&v| (v as f64 - top).exp())
                        .sum::<f64>()
                        .ln();
                log_p.extend(row.iter().map(|&v| v as f64 - lse));
            }
            match mean_log_p.as_mut() {
                None => mean_log_p = Some(log_p),
                Some(acc) => acc.iter_mut().zip(&log_p).for_each(|(a, b)| *a += b),
            }
        }
        Ok(mean_log_p
            .unwrap_or_default()
            .chunks_exact(k)
            .map(|row| {
                let mut best = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = i;
                    }
                }
                best
            })
            .collect())
    }

    /// An error unless every class `readout` names is one of the members'.
    pub fn check_readout(&self, readout: Readout) -> Result<()> {
        self.members[0].check_readout(readout)
    }
}

/// Whether `dir` holds an ensemble `config.json` (false for anything unreadable:
/// loading it then reports what is wrong).
pub fn is_ensemble_folder(dir: &Path) -> bool {
    let path = dir.join("config.json");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| ensemble_members(&path, &text).ok().flatten())
        .is_some()
}

/// The member folders of an ensemble config, `None` for any other format (a
/// classifier config; its own parser then checks it).
fn ensemble_members(path: &Path, text: &str) -> Result<Option<Vec<PathBuf>>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::config(path, "(file)", format!("not valid JSON: {e}")))?;
    if value.get("format").and_then(Value::as_str) != Some(ENSEMBLE_FORMAT) {
        return Ok(None);
    }
    if let Some(obj) = value.as_object() {
        if let Some(k) = obj
            .keys()
            .find(|k| !["format", "members"].contains(&k.as_str()))
        {
            return Err(Error::config(
                path,
                k.as_str(),
                "unknown key for an ensemble (accepted: format, members)",
            ));
        }
    }
    let members = value
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::config(
                path,
                "members",
                format!("expected a list of classifier folders ({CLASSIFIER_FORMAT})"),
            )
        })?;
    if members.is_empty() {
        return Err(Error::config(
            path,
            "members",
            "an ensemble needs at least one classifier",
        ));
    }
    members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.as_str().map(PathBuf::from).ok_or_else(|| {
                Error::config(
                    path,
                    format!("members[{i}]"),
                    format!("expected a folder path (a string), found {m}"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
