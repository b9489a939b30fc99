//! What is recorded with every image: the resolved settings that made it (seed,
//! class, schedule, CFG, and with a reward the reward's terms, guidance and
//! steering), as typed serde records. `generate` writes one per line of
//! `metadata.jsonl` (after the image's `file`), `batch` one per line of
//! `results.jsonl` (after `id`, `index` and `file`), `serve` one per image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::guidance::reward::RewardGuidance;
use crate::guidance::GuidanceInterval;
use crate::steer::Steering;

use super::request::{reward_form_name, rho_schedule_name};

/// The settings one image was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    pub seed: u64,
    /// The class label, `null` for unconditional samples and models without classes.
    pub class: Option<usize>,
    pub steps: usize,
    pub scheduler: String,
    /// `null` where CFG does not apply (unconditional samples).
    pub cfg: Option<f32>,
    pub cfg_rescale: Option<f32>,
    /// `[start, stop]` of the steps with CFG; `null` for every step.
    pub cfg_interval: Option<[usize; 2]>,
    /// The guidance method (`cfg`, `apg`, `cfg-zero-star`); `null` where no
    /// guidance applies.
    pub guidance: Option<String>,
    /// APG's settings, with `guidance: "apg"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apg: Option<ApgMetadata>,
    /// CFG-Zero*'s zero-initialised steps, with `guidance: "cfg-zero-star"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_init_steps: Option<usize>,
    pub eta: f64,
    pub karras: bool,
    pub model: String,
    /// The prompts, image size and text-encoder layer of a text-to-image image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<usize>,
    /// img2img: the image it started from and the strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// Present with a reward.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<AlignmentMetadata>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApgMetadata {
    pub eta: f32,
    pub norm_threshold: f32,
    pub momentum: f32,
}

/// The reward side of an image's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignmentMetadata {
    /// The reward specs as given.
    pub reward: Vec<String>,
    /// The weighted total on the image.
    pub reward_value: f32,
    /// Each term's own (unweighted) value on the image, by spec.
    pub reward_terms: BTreeMap<String, f32>,
    pub reward_guidance: RewardGuidanceMetadata,
    pub steering: SteeringMetadata,
    /// Which of the image's particles survived.
    pub particle: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardGuidanceMetadata {
    pub form: String,
    pub scale: f32,
    pub schedule: String,
    pub normalize: bool,
    pub iterations: usize,
    pub window: Option<[usize; 2]>,
    pub recurrence: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringMetadata {
    pub particles: usize,
    pub method: String,
    pub potential: String,
    pub lambda: f64,
    pub every: usize,
    pub window: Option<[usize; 2]>,
    pub adaptive: bool,
}

/// `[start, stop]`, or `None` for every step.
pub fn window_field(w: GuidanceInterval) -> Option<[usize; 2]> {
    (w != GuidanceInterval::ALWAYS).then_some([w.start, w.stop])
}

impl From<&RewardGuidance> for RewardGuidanceMetadata {
    fn from(g: &RewardGuidance) -> Self {
        RewardGuidanceMetadata {
            form: reward_form_name(g.form).to_string(),
            scale: g.scale,
            schedule: rho_schedule_name(g.schedule).to_string(),
            normalize: g.normalize,
            iterations: g.iterations,
            window: window_field(g.window),
            recurrence: g.recurrence,
        }
    }
}

impl From<&Steering> for SteeringMetadata {
    fn from(s: &Steering) -> Self {
        SteeringMetadata {
            particles: s.particles,
            method: s.method.cli_name().to_string(),
            potential: s.potential.cli_name().to_string(),
            lambda: s.lambda,
            every: s.every,
            window: window_field(s.window),
            adaptive: s.adaptive,
        }
    }
}
