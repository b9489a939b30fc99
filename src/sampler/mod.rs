//! The sampling loop — the only place that knows the model, the guidance, the
//! scheduler and the steering together. It works on *slots*: every sample (every
//! particle of it) carries its own schedule position, scheduler, CFG, reward and
//! steering settings ([`SampleRun`]). Each engine step
//! ([`SlotSampler::advance`]) packs all samples in flight — at different steps of
//! different schedules — into one batched U-Net call on `[uncond ; cond]` (the
//! unconditional rows only for samples whose CFG is active at their step), then
//! applies each sample's own guided step. Samples join between any two steps and
//! leave when done, and a sample's result depends only on its own seed and
//! settings, never on what it was batched with or when it joined.
//!
//! [`Sampler`] is the one-shot form: a list of samples with one scheduler and one
//! alignment, run to the end together.

mod advance;
mod model_call;
mod run;
mod settings;
mod slot;

pub use advance::StepReport;
pub use run::Alignment;
pub use settings::{SampleSettings, Shared};
pub use slot::SampleRun;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::guidance::cfg::Guidance;
use crate::model::UNet;
use crate::reward::SampleShape;
use crate::rng::{fill_normal, NoiseStream};
use crate::schedule::Scheduler;

/// What a sample is conditioned on.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// No condition: the null class of a class-conditional model, or nothing for an
    /// unconditional one. CFG does not apply.
    Unconditional,
    /// A class label of a class-conditional model.
    Class(usize),
    /// Encoder hidden states `[tokens, dim]` (row-major) for a condition model, with
    /// the unconditional ("negative") states of the same shape.
    Embedding {
        cond: Vec<f32>,
        uncond: Vec<f32>,
        tokens: usize,
    },
}

/// One sample to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    pub seed: u64,
    pub condition: Condition,
    pub guidance: Guidance,
}

/// Where Gaussian noise comes from. The default is [`PhiloxNoise`]; tests feed the
/// exact noise a reference implementation used.
pub trait NoiseSource: Sync {
    /// Fills `out` (one sample, NHWC) with the noise of `stream` for sample `index`
    /// of the batch, whose seed is `seed`.
    fn fill(&self, index: usize, seed: u64, stream: NoiseStream, out: &mut [f32]) -> Result<()>;
}

/// Counter-based Philox noise addressed by (seed, stream, element): see [`crate::rng`].
pub struct PhiloxNoise;

impl NoiseSource for PhiloxNoise {
    fn fill(&self, _index: usize, seed: u64, stream: NoiseStream, out: &mut [f32]) -> Result<()> {
        fill_normal(seed, stream, 0, out);
        Ok(())
    }
}

/// Where a sample starts: its size (the sampler's when `None`), and for img2img an
/// encoded image.
#[derive(Debug, Clone, Default)]
pub struct Start {
    pub size: Option<(usize, usize)>,
    pub from: Option<FromImage>,
}

/// An image's latent distribution in the sampler's space (per element a mean and a
/// standard deviation) and the step it enters the schedule at.
#[derive(Debug, Clone)]
pub struct FromImage {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub step: usize,
}

/// Reported after every step.
#[derive(Debug, Clone, Copy)]
pub struct StepProgress {
    /// Steps finished so far (1..=total).
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
}

/// The result for one sample: the final x_0 in the model's space, NHWC.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
    /// The reward of `data`, when the run had one.
    pub reward: Option<f32>,
    /// Which of the sample's particles this is (0 without steering).
    pub particle: usize,
}

/// The model side of sampling: the backend, the U-Net and the sample size, over
/// which any mix of [`SampleRun`]s is advanced step by step.
pub struct SlotSampler<'a> {
    backend: &'a dyn Backend,
    unet: &'a UNet,
    null_class: Option<usize>,
    height: usize,
    width: usize,
    step_path: StepPath,
    /// Set after the first model call, which computes the weights' derived forms
    /// (the CPU backend's Winograd transforms); model calls are cut into
    /// concurrent parts only after it (see `model_call`).
    weights_ready: AtomicBool,
}

/// One-shot sampling: every sample of a list with one scheduler and one
/// alignment, in one batch, run to the end.
pub struct Sampler<'a> {
    slots: SlotSampler<'a>,
    scheduler: &'a dyn Scheduler,
}

/// Where each step's guidance and scheduler update run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepPath {
    /// [`StepPath::Fused`] on backends that prefer it (CUDA), else [`StepPath::Host`].
    #[default]
    Auto,
    /// The model output is read back; CFG, rescale, reward shift and the scheduler's
    /// own `step` run on the host in diffusers' exact f32 order.
    Host,
    /// One [`Backend::guided_step`] per step from the scheduler's
    /// [`crate::schedule::LinearStep`] coefficients: the model output stays where
    /// it is (it is read back only on steps that evaluate a reward). Agrees with
    /// `Host` to rounding.
    Fused,
}

/// How one sample enters the model call of one step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows {
    cond_label: Option<usize>,
    uncond_label: Option<usize>,
    uses_cfg: bool,
}

impl<'a> SlotSampler<'a> {
    /// A sampler for `unet` on `backend`. Class-conditional models take their LAST
    /// class index as the null (unconditional) class.
    pub fn new(backend: &'a dyn Backend, unet: &'a UNet) -> Result<Self> {
        let (height, width) = unet.config().sample_size.ok_or_else(|| {
            Error::invalid(
                "size",
                "the model config has no sample_size; set the image size explicitly",
            )
        })?;
        Ok(SlotSampler {
            backend,
            unet,
            null_class: unet.num_classes().map(|n| n - 1),
            height,
            width,
            step_path: StepPath::Auto,
            weights_ready: AtomicBool::new(false),
        })
    }

    /// Chooses where the guidance and scheduler update of each step run.
    pub fn with_step_path(mut self, path: StepPath) -> Self {
        self.step_path = path;
        self
    }

    fn fused_steps(&self) -> bool {
        match self.step_path {
            StepPath::Auto => self.backend.prefers_fused_step(),
            StepPath::Host => false,
            StepPath::Fused => true,
        }
    }

    pub fn with_size(mut self, height: usize, width: usize) -> Result<Self> {
        if height == 0 || width == 0 {
            return Err(Error::invalid("size", format!("{height}×{width} is empty")));
        }
        self.height = height;
        self.width = width;
        Ok(self)
    }

    /// Overrides the null class used for unconditional predictions.
    pub fn with_null_class(mut self, null_class: usize) -> Result<Self> {
        match self.unet.num_classes() {
            Some(n) if null_class < n => {
                self.null_class = Some(null_class);
                Ok(self)
            }
            Some(n) => Err(Error::invalid(
                "null-class",
                format!("{null_class} is out of range 0..{n}"),
            )),
            None => Err(Error::invalid(
                "null-class",
                "the model has no class embedding",
            )),
        }
    }

    /// The size of the samples (the model's `sample_size` unless overridden).
    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Labels a user may ask for: every class except the null class.
    pub fn conditional_classes(&self) -> Option<usize> {
        self.null_class
    }

    pub fn backend(&self) -> &'a dyn Backend {
        self.backend
    }

    pub fn unet(&self) -> &'a UNet {
        self.unet
    }

    /// The shape of one sample (one particle).
    pub fn sample_shape(&self) -> SampleShape {
        SampleShape::new(self.height, self.width, self.unet.config().in_channels)
    }

    /// Checks that `spec` and `settings` can run on this model, with no side effect
    /// (what [`SlotSampler::start`] refuses, without its allocations).
    pub fn validate(&self, spec: &SampleSpec, settings: &SampleSettings) -> Result<()> {
        self.rows_for(spec, 0)?;
        settings.validate(self.sample_shape())
    }

    /// A sample ready to join the next step: its particles start from their own
    /// initial noise (stream [`NoiseStream::Initial`] of `spec.seed`, particle k
    /// drawing its own copy), scaled by the scheduler's initial σ. `index` names the
    /// sample for `noise` and in messages.
    pub fn start<'r>(
        &self,
        spec: SampleSpec,
        settings: Arc<SampleSettings<'r>>,
        index: usize,
        noise: &dyn NoiseSource,
    ) -> Result<SampleRun<'r>> {
        self.start_with(spec, settings, index, noise, Start::default())
    }

    /// [`SlotSampler::start`] at another sample size, or from an encoded image.
    pub fn start_with<'r>(
        &self,
        spec: SampleSpec,
        settings: Arc<SampleSettings<'r>>,
        index: usize,
        noise: &dyn NoiseSource,
        start: Start,
    ) -> Result<SampleRun<'r>> {
        let rows = self.rows_for(&spec, index)?;
        let (height, width) = start.size.unwrap_or((self.height, self.width));
        let shape = SampleShape::new(height, width, self.unet.config().in_channels);
        settings.validate(shape)?;
        let scheduler = &*settings.scheduler;
        let particles = settings.steering.particles;
        let first_step = match &start.from {
            Some(from) => {
                if from.mean.len() != shape.len() || from.std.len() != shape.len() {
                    return Err(Error::shape(
                        "initial image",
                        format!(
                            "a latent of {} values for samples of {shape} ({} values)",
                            from.mean.len(),
                            shape.len()
                        ),
                    ));
                }
                if from.step >= scheduler.num_steps() {
                    return Err(Error::invalid(
                        "strength",
                        format!(
                            "the image would enter at step {} of {}",
                            from.step,
                            scheduler.num_steps()
                        ),
                    ));
                }
                from.step
            }
            None => 0,
        };
        let mut run = SampleRun {
            spec,
            settings: settings.clone(),
            index,
            rows,
            height,
            width,
            step: first_step,
            repeat: 0,
            particles: Vec::with_capacity(particles),
            snapshot: None,
            step_rewards: None,
        };
        for k in 0..particles {
            let mut latent = vec![0f32; shape.len()];
            run.draw(noise, k, NoiseStream::Initial, &mut latent)?;
            match &start.from {
                None => {
                    let sigma = scheduler.init_noise_sigma();
                    latent.iter_mut().for_each(|v| *v *= sigma);
                }
                Some(from) => {
                    // The image's latent, drawn from the encoder's distribution, then
                    // noised to the level of its first step: the model input there
                    // is √ᾱ·x₀ + √(1−ᾱ)·ε.
                    let mut encoded = vec![0f32; shape.len()];
                    run.draw(noise, k, NoiseStream::Encode, &mut encoded)?;
                    let alpha_bar = scheduler.alpha_bar(from.step);
                    let (a, b) = (alpha_bar.sqrt(), (1.0 - alpha_bar).max(0.0).sqrt());
                    let unscale = 1.0 / scheduler.input_scale(from.step);
                    for (((x, e), &m), &sd) in latent
                        .iter_mut()
                        .zip(&encoded)
                        .zip(&from.mean)
                        .zip(&from.std)
                    {
                        let z0 = m + sd * e;
                        *x = (a * z0 + b * *x) * unscale;
                    }
                }
            }
            run.particles.push(slot::Particle {
                latent,
                state: scheduler.new_state(),
                guidance: Default::default(),
                track: Default::default(),
            });
        }
        Ok(run)
    }

    fn rows_for(&self, spec: &SampleSpec, index: usize) -> Result<Rows> {
        let classes = self.unet.num_classes();
        let conditioned = self.unet.config().cross_attention_dim.is_some();
        let rows = match (&spec.condition, classes) {
            (Condition::Class(label), Some(n)) => {
                if *label >= n || Some(*label) == self.null_class {
                    let null = self
                        .null_class
                        .map_or("none".to_string(), |c| c.to_string());
                    return Err(Error::invalid(
                        "class",
                        format!(
                            "sample {index}: class {label} is not a conditional class of this model (labels 0..={}, of which {null} is the null class)",
                            n - 1
                        ),
                    ));
                }
                Rows {
                    cond_label: Some(*label),
                    uncond_label: self.null_class,
                    uses_cfg: true,
                }
            }
            (Condition::Class(_), None) => {
                return Err(Error::invalid(
                    "class",
                    "this model is not class-conditional (it has no class embedding)",
                ))
            }
            (Condition::Unconditional, n) => Rows {
                cond_label: n.and(self.null_class),
                uncond_label: None,
                uses_cfg: false,
            },
            (
                Condition::Embedding {
                    cond,
                    uncond,
                    tokens,
                },
                _,
            ) => {
                let dim = self.unet.config().cross_attention_dim.ok_or_else(|| {
                    Error::invalid("condition", "this model takes no encoder hidden states")
                })?;
                if cond.len() != tokens * dim || uncond.len() != tokens * dim || *tokens == 0 {
                    return Err(Error::invalid(
                        "condition",
                        format!("sample {index}: embeddings must be [{tokens}, {dim}] for cond and uncond"),
                    ));
                }
                Rows {
                    cond_label: None,
                    uncond_label: None,
                    uses_cfg: true,
                }
            }
        };
        if conditioned && !matches!(spec.condition, Condition::Embedding { .. }) {
            return Err(Error::invalid(
                "condition",
                "this model cross-attends to encoder hidden states: give an Embedding condition",
            ));
        }
        spec.guidance.validate()?;
        Ok(rows)
    }
}

impl<'a> Sampler<'a> {
    /// A sampler for `unet` with `scheduler`. Class-conditional models take their
    /// LAST class index as the null (unconditional) class.
    pub fn new(
        backend: &'a dyn Backend,
        unet: &'a UNet,
        scheduler: &'a dyn Scheduler,
    ) -> Result<Self> {
        Ok(Sampler {
            slots: SlotSampler::new(backend, unet)?,
            scheduler,
        })
    }

    /// Chooses where the guidance and scheduler update of each step run.
    pub fn with_step_path(mut self, path: StepPath) -> Self {
        self.slots = self.slots.with_step_path(path);
        self
    }

    pub fn with_size(mut self, height: usize, width: usize) -> Result<Self> {
        self.slots = self.slots.with_size(height, width)?;
        Ok(self)
    }

    /// Overrides the null class used for unconditional predictions.
    pub fn with_null_class(mut self, null_class: usize) -> Result<Self> {
        self.slots = self.slots.with_null_class(null_class)?;
        Ok(self)
    }

    /// The size of the samples (the model's `sample_size` unless overridden).
    pub fn height(&self) -> usize {
        self.slots.height()
    }

    pub fn width(&self) -> usize {
        self.slots.width()
    }

    /// Labels a user may ask for: every class except the null class.
    pub fn conditional_classes(&self) -> Option<usize> {
        self.slots.conditional_classes()
    }

    /// The slot sampler underneath, for mixing samples of other settings.
    pub fn slot_sampler(&self) -> &SlotSampler<'a> {
        &self.slots
    }
}

/// An error naming `whose` values (e.g. "the model output of sample 3") unless all
/// are finite.
pub(crate) fn check_finite(
    values: &[f32],
    whose: &dyn Fn() -> String,
    step: usize,
    timestep: f32,
) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(Error::NonFinite {
        what: whose(),
        step,
        timestep: timestep as f64,
    })
}
