//! A validated request ([`Plan`]): its scheduler built, its reward parsed, its
//! guidance and steering resolved with `generate`'s defaults, and every limit
//! checked, so that running it can only fail on what happens while sampling. A
//! plan hands out its samples one index at a time ([`Plan::spec`]): nothing is
//! proportional to `count`.

use std::sync::Arc;

use crate::guidance::reward::{RewardForm, RewardGuidance};
use crate::guidance::{Apg, Guidance, GuidanceInterval, GuidanceMethod};
use crate::sampler::{Condition, FromImage, SampleOutput, SampleSettings, SampleSpec};
use crate::schedule::SchedulerKind;
use crate::steer::{SteerMethod, Steering};

use super::decoded_reward::TermReward;
use super::metadata::{window_field, AlignmentMetadata, ApgMetadata, ImageMetadata};
use super::request::{GuidanceKind, Request, StepWindow};
use super::text::PromptKey;

/// How a plan's images get their class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClassPlan {
    /// Every image the same label.
    Label(usize),
    /// Image `i` gets label `i mod classes`.
    Cycle(usize),
    /// The unconditional prediction (the null class, or a model without classes).
    Unconditional,
    /// A text-to-image pipeline: prompt and negative prompt.
    Text,
}

/// The prompt side of a request on a text-to-image pipeline.
#[derive(Debug, Clone)]
pub(crate) struct TextPlan {
    pub prompt: PromptKey,
    pub negative: PromptKey,
    /// Whether the prompt was cut to the tokenizer's length.
    pub truncated: bool,
    /// Latent and image sizes (height, width).
    pub latent: (usize, usize),
    pub image: (usize, usize),
    /// As the request gives it: 1 = the last layer.
    pub clip_skip: usize,
}

/// A request ready to run.
pub struct Plan {
    pub(crate) request: Request,
    pub(crate) classes: ClassPlan,
    pub(crate) guidance: Guidance,
    pub(crate) settings: Arc<SampleSettings<'static>>,
    pub(crate) reward: Option<Arc<dyn TermReward>>,
    pub(crate) scheduler: SchedulerKind,
    pub(crate) eta: f64,
    pub(crate) model: String,
    pub(crate) text: Option<TextPlan>,
    /// The sample (latent) size.
    pub(crate) latent: (usize, usize),
    /// img2img: the encoded image and the step it enters at.
    pub(crate) from: Option<Arc<FromImage>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("request", &self.request)
            .field("scheduler", &self.scheduler)
            .field("eta", &self.eta)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// The request as given.
    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn id(&self) -> Option<&str> {
        self.request.id.as_deref()
    }

    /// Images the request asks for.
    pub fn count(&self) -> u64 {
        self.request.count
    }

    /// Slots one image occupies in every model call (its particles).
    pub fn particles(&self) -> usize {
        self.settings.steering.particles
    }

    /// Model calls one particle of an image takes part in (steps, plus repeats;
    /// img2img skips the steps before its image enters).
    pub fn calls_per_image(&self) -> usize {
        let first = self.from.as_ref().map_or(0, |f| f.step);
        (first..self.settings.scheduler.num_steps())
            .map(|s| self.settings.repeats_at(s))
            .sum()
    }

    /// Whether the prompt was longer than the tokenizer takes (and was cut).
    pub fn prompt_truncated(&self) -> bool {
        self.text.as_ref().is_some_and(|t| t.truncated)
    }

    /// Image `index`'s seed (`seed + index`; the plan checked it cannot overflow).
    pub fn seed_of(&self, index: u64) -> u64 {
        self.request.seed.wrapping_add(index)
    }

    /// Image `index`'s class label, where it has one.
    pub fn class_of(&self, index: u64) -> Option<usize> {
        match self.classes {
            ClassPlan::Label(label) => Some(label),
            ClassPlan::Cycle(n) => Some((index % n as u64) as usize),
            ClassPlan::Unconditional | ClassPlan::Text => None,
        }
    }

    /// What the sampler needs for image `index`.
    pub fn spec(&self, index: u64) -> SampleSpec {
        SampleSpec {
            seed: self.seed_of(index),
            condition: match self.class_of(index) {
                Some(label) => Condition::Class(label),
                None => Condition::Unconditional,
            },
            guidance: self.guidance,
        }
    }

    pub(crate) fn settings(&self) -> &Arc<SampleSettings<'static>> {
        &self.settings
    }

    /// The reward the plan's images are scored by, if any.
    pub fn reward(&self) -> Option<&Arc<dyn TermReward>> {
        self.reward.as_ref()
    }

    /// The metadata of image `index`, made from `output` (its final reward and
    /// surviving particle) and `terms`, each reward term's value on it.
    pub fn metadata(&self, index: u64, output: &SampleOutput, terms: &[f32]) -> ImageMetadata {
        let class = self.class_of(index);
        let cfg_applies = self.classes != ClassPlan::Unconditional;
        let alignment = self.reward.as_ref().map(|reward| AlignmentMetadata {
            reward: self.request.reward.clone(),
            reward_value: output.reward.unwrap_or(f32::NAN),
            reward_terms: reward
                .term_names()
                .into_iter()
                .zip(terms.iter().copied())
                .collect(),
            reward_guidance: (&self.settings.reward_guidance).into(),
            steering: (&self.settings.steering).into(),
            particle: output.particle,
        });
        ImageMetadata {
            seed: self.seed_of(index),
            class,
            steps: self.settings.scheduler.num_steps(),
            scheduler: self.scheduler.cli_name().to_string(),
            cfg: cfg_applies.then_some(self.guidance.scale),
            cfg_rescale: cfg_applies.then_some(self.guidance.rescale),
            cfg_interval: if cfg_applies {
                window_field(self.guidance.interval)
            } else {
                None
            },
            guidance: cfg_applies.then(|| self.guidance.method.name().to_string()),
            apg: match self.guidance.method {
                GuidanceMethod::Apg(apg) if cfg_applies => Some(ApgMetadata {
                    eta: apg.eta,
                    norm_threshold: apg.norm_threshold,
                    momentum: apg.momentum,
                }),
                _ => None,
            },
            zero_init_steps: match self.guidance.method {
                GuidanceMethod::CfgZeroStar { zero_init_steps } if cfg_applies => {
                    Some(zero_init_steps)
                }
                _ => None,
            },
            eta: self.eta,
            karras: self.request.karras,
            model: self.model.clone(),
            prompt: self
                .text
                .as_ref()
                .map(|_| self.request.prompt.clone().unwrap_or_default()),
            negative_prompt: self
                .text
                .as_ref()
                .map(|_| self.request.negative_prompt.clone().unwrap_or_default()),
            width: self.text.as_ref().map(|t| t.image.1),
            height: self.text.as_ref().map(|t| t.image.0),
            clip_skip: self.text.as_ref().map(|t| t.clip_skip),
            init_image: self.request.init_image.clone(),
            strength: self
                .from
                .as_ref()
                .map(|_| self.request.strength.unwrap_or(0.8)),
            alignment,
        }
    }
}

/// The guidance method a request names, with diffusers' defaults for its
/// settings; settings of another method are refused.
pub(crate) fn guidance_method(r: &Request) -> crate::Result<GuidanceMethod> {
    let apg_given = [
        ("apg_eta", r.apg_eta.is_some()),
        ("apg_norm_threshold", r.apg_norm_threshold.is_some()),
        ("apg_momentum", r.apg_momentum.is_some()),
    ];
    if r.guidance != GuidanceKind::Apg {
        if let Some((field, _)) = apg_given.iter().find(|(_, given)| *given) {
            return Err(crate::Error::invalid(
                *field,
                "sets adaptive projected guidance: add guidance apg",
            ));
        }
    }
    if r.guidance != GuidanceKind::CfgZeroStar && r.zero_init_steps.is_some() {
        return Err(crate::Error::invalid(
            "zero_init_steps",
            "sets CFG-Zero*: add guidance cfg-zero-star",
        ));
    }
    Ok(match r.guidance {
        GuidanceKind::Cfg => GuidanceMethod::Cfg,
        GuidanceKind::Apg => {
            let defaults = Apg::default();
            GuidanceMethod::Apg(Apg {
                eta: r.apg_eta.unwrap_or(defaults.eta),
                norm_threshold: r.apg_norm_threshold.unwrap_or(defaults.norm_threshold),
                momentum: r.apg_momentum.unwrap_or(defaults.momentum),
            })
        }
        GuidanceKind::CfgZeroStar => {
            let zero_init_steps = r.zero_init_steps.unwrap_or(1);
            if zero_init_steps > r.steps {
                return Err(crate::Error::invalid(
                    "zero_init_steps",
                    format!("{zero_init_steps} of {} steps", r.steps),
                ));
            }
            GuidanceMethod::CfgZeroStar { zero_init_steps }
        }
    })
}

pub(crate) fn interval(window: Option<StepWindow>) -> GuidanceInterval {
    window.map_or(GuidanceInterval::ALWAYS, |w| GuidanceInterval {
        start: w.start,
        stop: w.stop,
    })
}

/// Reward guidance with `generate`'s defaults for `num_steps` steps, where the
/// request leaves a setting out.
pub(crate) fn reward_guidance(r: &Request, has_reward: bool, num_steps: usize) -> RewardGuidance {
    let defaults = RewardGuidance::recommended(num_steps);
    RewardGuidance {
        form: r.reward_form.unwrap_or(RewardForm::X0),
        scale: if has_reward {
            r.reward_scale.unwrap_or(defaults.scale)
        } else {
            0.0
        },
        schedule: r.reward_schedule.unwrap_or(defaults.schedule),
        normalize: !r.reward_raw,
        iterations: r.reward_iters.unwrap_or(defaults.iterations),
        window: r
            .reward_window
            .map_or(defaults.window, |w| interval(Some(w))),
        recurrence: r.recur.unwrap_or(defaults.recurrence),
    }
}

/// Particle steering with `generate`'s defaults where the request leaves a
/// setting out.
pub(crate) fn steering(r: &Request) -> Steering {
    let base = Steering::new(r.particles, r.steer.unwrap_or(SteerMethod::FeynmanKac));
    Steering {
        potential: r.fk_potential.unwrap_or(base.potential),
        lambda: r.fk_lambda.unwrap_or(base.lambda),
        every: r.fk_every.unwrap_or(base.every),
        window: r.fk_window.map_or(base.window, |w| interval(Some(w))),
        adaptive: r.fk_adaptive,
        ..base
    }
}
