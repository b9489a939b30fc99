//! The engine: a model opened once on a device (backend, U-Net, scheduler config,
//! reward classifier and a thread pool), that validates requests into [`Plan`]s
//! with no side effect and runs their samples through a [`Runner`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::{run_busy, Backend};
use crate::error::{Error, Result};
use crate::guidance::reward::RewardForm;
use crate::guidance::Guidance;
use crate::model::memory::{available_memory_bytes, format_bytes};
use crate::model::PipelineFolder;
use crate::model::{ModelFolder, UNet};
use crate::reward::spec::DEFAULT_CLASSIFIER_DIR;
use crate::reward::{parse_reward_specs, Reward, RewardContext, SampleShape};
use crate::sampler::{
    Condition, FromImage, SampleOutput, SampleSettings, SampleSpec, Shared, SlotSampler, Start,
};
use crate::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};
use crate::steer::SteerMethod;
use crate::tensor::Precision;

use super::decoded_reward::{DecodedReward, TermReward};
use super::options::{Device, EngineOptions};
use super::plan::{self, ClassPlan, Plan, TextPlan};
use super::request::{ClassChoice, Request};
use super::runner::Runner;
use super::text::{PromptKey, TextStack};

/// Most images one request may ask for.
pub const MAX_COUNT: u64 = 1 << 32;
/// Largest image side a text-to-image request may ask for, in pixels.
pub const MAX_IMAGE_SIDE: usize = 8192;

/// A model opened for generation.
pub struct Engine {
    options: EngineOptions,
    folder: ModelFolder,
    backend: Arc<dyn Backend>,
    unet: UNet,
    /// The tokenizer, text encoder and VAE of a text-to-image pipeline folder.
    text: Option<Arc<TextStack>>,
    scheduler_config: SchedulerConfig,
    default_scheduler: SchedulerKind,
    rewards: RewardContext,
    pool: rayon::ThreadPool,
    height: usize,
    width: usize,
}

/// The backend `device` and `dtype` name.
pub fn make_backend(device: Device, dtype: Precision) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu if dtype != Precision::F32 => Err(Error::invalid(
            "dtype",
            format!("the CPU backend computes in f32 only; dtype {dtype} needs a cuda device"),
        )),
        Device::Cpu => Ok(Box::new(CpuBackend::new())),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => Ok(Box::new(crate::backend::cuda::CudaBackend::new(
            ordinal, dtype,
        )?)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::invalid(
            "device",
            "this binary was built without CUDA (accepted: cpu); rebuild with `cargo build --release --features cuda`",
        )),
    }
}

/// The reward classifier ensemble `digit-reward` next to the model folder, else a
/// single `digit-classifier` there, else the shipped ensemble.
pub fn default_classifier_dir(model_dir: &Path) -> PathBuf {
    let sibling = model_dir.parent().and_then(|p| {
        ["digit-reward", "digit-classifier"]
            .iter()
            .map(|name| p.join(name))
            .find(|dir| dir.is_dir())
    });
    sibling.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CLASSIFIER_DIR))
}

/// Library argument errors name their setting in the spelling of the layer that
/// raised them; requests name fields with `_`, and the scheduler says `num_steps`.
fn as_request_field(e: Error) -> Error {
    match e {
        Error::InvalidArgument { name, message } => {
            let field = match name.as_str() {
                "num_steps" => "steps".to_string(),
                "null-class" => "class".to_string(),
                other => other.replace('-', "_"),
            };
            Error::InvalidArgument {
                name: field,
                message,
            }
        }
        other => other,
    }
}

impl Engine {
    /// Opens the model of `options` on its device: loads the U-Net and the
    /// scheduler config and starts the thread pool. Bad options are
    /// [`Error::InvalidArgument`]s naming the option (`model`, `device`, `dtype`,
    /// `threads`).
    pub fn open(options: EngineOptions) -> Result<Self> {
        let folder = ModelFolder::locate(&options.model).map_err(|e| match e {
            Error::InvalidArgument { .. } => as_request_field(e),
            other => Error::invalid("model", other.to_string()),
        })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads.unwrap_or(0))
            .build()
            .map_err(|e| Error::invalid("threads", format!("cannot start the thread pool: {e}")))?;
        let backend: Arc<dyn Backend> = Arc::from(make_backend(options.device, options.dtype)?);
        let text = if PipelineFolder::is_pipeline(&options.model) {
            let pipeline = PipelineFolder::locate(&options.model)?;
            pipeline.check_components()?;
            Some(Arc::new(
                pool.install(|| TextStack::load(&pipeline, backend.as_ref()))?,
            ))
        } else {
            None
        };
        let scheduler_config = folder.load_scheduler_config()?;
        let default_scheduler = scheduler_config.class_kind().unwrap_or(SchedulerKind::Ddim);
        let unet = pool.install(|| folder.load_unet(backend.as_ref()))?;
        let (height, width) = unet.config().sample_size.ok_or_else(|| {
            Error::config(
                &folder.config,
                "sample_size",
                "missing: the engine needs the model's sample size",
            )
        })?;
        let classifier_dir = options
            .classifier
            .clone()
            .unwrap_or_else(|| default_classifier_dir(&options.model));
        let mut rewards = RewardContext::new(classifier_dir);
        if options.device != Device::Cpu {
            // The classifier steers every step: it runs in f32 on the same device.
            rewards =
                rewards.with_backend(Arc::from(make_backend(options.device, Precision::F32)?));
        }
        let engine = Engine {
            options,
            folder,
            backend,
            unet,
            text,
            scheduler_config,
            default_scheduler,
            rewards,
            pool,
            height,
            width,
        };
        engine.check_memory(1)?;
        Ok(engine)
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The model folder as given.
    pub fn model_dir(&self) -> &Path {
        &self.options.model
    }

    pub fn folder(&self) -> &ModelFolder {
        &self.folder
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// Whether the model is a text-to-image pipeline (requests take prompts).
    pub fn is_text_to_image(&self) -> bool {
        self.text.is_some()
    }

    /// Image pixels per latent pixel (1 for pixel-space models).
    pub fn vae_factor(&self) -> usize {
        self.text.as_ref().map_or(1, |t| t.factor)
    }

    /// The tokenizer of a text-to-image pipeline.
    pub fn tokenizer(&self) -> Option<&crate::model::clip::ClipTokenizer> {
        self.text.as_ref().map(|t| &t.tokenizer)
    }

    /// The shape of one image in the model's space.
    pub fn sample_shape(&self) -> SampleShape {
        SampleShape::new(self.height, self.width, self.unet.config().in_channels)
    }

    /// The scheduler a request gets when it names none.
    pub fn default_scheduler(&self) -> SchedulerKind {
        self.default_scheduler
    }

    /// Class labels a request may ask for (`0..n`), on a class-conditional model.
    pub fn conditional_classes(&self) -> Option<usize> {
        self.unet.num_classes().map(|n| n - 1)
    }

    /// Where `classifier:` rewards load their classifier from.
    pub fn rewards(&self) -> &RewardContext {
        &self.rewards
    }

    /// Runs `work` on the engine's thread pool, with its other threads kept
    /// polling for jobs until it returns (see
    /// [`Backend::with_busy_workers`](crate::backend::Backend::with_busy_workers)):
    /// wrap bursts of [`Runner::step`] calls in it, not waits for new work.
    pub fn with_workers<R: Send>(&self, work: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        self.pool.install(|| run_busy(self.backend.as_ref(), work))
    }

    /// Runs `work` on the engine's thread pool (no busy polling).
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.pool.install(work)
    }

    /// A runner packing up to `capacity` slots (samples × particles) into each
    /// model call; `tag`s identify whose samples are whose.
    pub fn runner<T>(&self, capacity: usize) -> Result<Runner<'_, T>> {
        if capacity == 0 {
            return Err(Error::invalid("batch", "must be at least 1"));
        }
        // With CFG, a call has up to twice as many rows as slots.
        self.check_memory(capacity.saturating_mul(2))
            .map_err(|e| match e {
                Error::InvalidArgument { message, .. } => Error::invalid("batch", message),
                other => other,
            })?;
        let sampler = SlotSampler::new(self.backend.as_ref(), &self.unet)?
            .with_step_path(self.options.step_path);
        Ok(Runner::new(self, sampler, capacity))
    }

    /// An error unless a model call of `rows` rows fits in the memory the system
    /// says is available.
    pub fn check_memory(&self, rows: usize) -> Result<()> {
        self.check_memory_at(rows, self.height, self.width)
    }

    /// [`Engine::check_memory`] for samples of `height × width` (latent) pixels.
    pub fn check_memory_at(&self, rows: usize, height: usize, width: usize) -> Result<()> {
        let needed = self
            .unet
            .config()
            .forward_bytes_estimate(rows, height, width);
        let Some(available) = available_memory_bytes() else {
            return Ok(());
        };
        if needed > available {
            return Err(Error::invalid(
                if rows <= 1 { "model" } else { "batch" },
                format!(
                    "a forward of {rows} row(s) of {}×{} samples ({}) needs about {} of activations; this machine has {} available",
                    height,
                    width,
                    self.folder.config.display(),
                    format_bytes(needed),
                    format_bytes(available)
                ),
            ));
        }
        Ok(())
    }

    /// Validates `request` against this engine's model and resolves every
    /// default: the one call a front end makes before any side effect. Errors are
    /// [`Error::InvalidArgument`]s naming the request field at fault (except a
    /// classifier that cannot be loaded: field `classifier`).
    pub fn prepare(&self, request: &Request) -> Result<Arc<Plan>> {
        self.plan(request).map(Arc::new).map_err(as_request_field)
    }

    fn plan(&self, r: &Request) -> Result<Plan> {
        if let Some(model) = &r.model {
            if !same_folder(Path::new(model), &self.options.model) {
                return Err(Error::invalid(
                    "model",
                    format!(
                        "this engine runs {}; a request for {model} needs an engine of its own",
                        self.options.model.display()
                    ),
                ));
            }
        }
        if self.unet.config().cross_attention_dim.is_some() && self.text.is_none() {
            return Err(Error::invalid(
                "model",
                "this is a bare text-conditioned U-Net (UNet2DConditionModel) without its pipeline: give the pipeline folder (model_index.json with text_encoder/, tokenizer/, vae/), or use the library's Sampler with encoder hidden states",
            ));
        }
        let text = self.text_plan(r)?;
        if r.count == 0 || r.count > MAX_COUNT {
            return Err(Error::invalid(
                "count",
                format!(
                    "{} images requested; one request takes 1 to {MAX_COUNT}",
                    r.count
                ),
            ));
        }
        if r.seed.checked_add(r.count - 1).is_none() {
            return Err(Error::invalid(
                "seed",
                format!(
                    "seed {} + count {} overflows u64 (image i uses seed + i)",
                    r.seed, r.count
                ),
            ));
        }
        let classes = if text.is_some() {
            ClassPlan::Text
        } else {
            self.class_plan(r.class)?
        };
        let guidance = Guidance {
            scale: r.cfg,
            rescale: r.cfg_rescale,
            interval: plan::interval(r.cfg_interval),
            method: plan::guidance_method(r)?,
        };
        guidance.validate()?;
        if let Some(w) = r
            .cfg_interval
            .filter(|w| w.stop != usize::MAX && w.stop > r.steps)
        {
            return Err(Error::invalid(
                "cfg_interval",
                format!(
                    "{w} reaches past the last step; windows lie within 0:{}",
                    r.steps
                ),
            ));
        }

        let latent = text
            .as_ref()
            .map_or((self.height, self.width), |t| t.latent);
        let shape = SampleShape::new(latent.0, latent.1, self.unet.config().in_channels);
        let reward = self.reward_of(r, shape)?;
        let reward_guidance = plan::reward_guidance(r, reward.is_some(), r.steps);
        if reward_guidance.form == RewardForm::Eps && r.reward_scale.is_none() && reward.is_some() {
            return Err(Error::invalid(
                "reward_form",
                "eps takes its own scale: give reward_scale as well",
            ));
        }
        let steering = plan::steering(r);
        let fk_given = [
            ("fk_potential", r.fk_potential.is_some()),
            ("fk_lambda", r.fk_lambda.is_some()),
            ("fk_every", r.fk_every.is_some()),
            ("fk_window", r.fk_window.is_some()),
            ("fk_adaptive", r.fk_adaptive),
        ];
        if let Some((field, _)) = fk_given.iter().find(|(_, given)| *given) {
            if !(steering.is_active() && steering.method == SteerMethod::FeynmanKac) {
                return Err(Error::invalid(
                    *field,
                    "sets Feynman-Kac steering: needs particles > 1 and steer fk",
                ));
            }
        }
        reward_guidance.validate()?;
        steering.validate()?;

        let kind = r.scheduler.unwrap_or(self.default_scheduler);
        let fk = steering.is_active() && steering.method == SteerMethod::FeynmanKac;
        let stochastic_needed =
            fk && (reward_guidance.recurrence == 1 || reward_guidance.scale == 0.0);
        let eta = match (r.eta, kind) {
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
            return Err(Error::invalid(
                "steer",
                format!(
                    "fk resamples particles, and copies of one particle only diverge with fresh noise, which {kind} with these settings never draws: use ddpm, euler-a or ddim with eta > 0, or add recur K"
                ),
            ));
        }
        let scheduler = schedule::build(
            kind,
            &self.scheduler_config,
            r.steps,
            &ScheduleOptions {
                eta,
                karras: r.karras.then_some(true),
            },
        )?;
        let scheduler: Arc<dyn crate::schedule::Scheduler> = Arc::from(scheduler);
        let from = match (&text, &r.init_image) {
            (Some(t), Some(path)) => Some(Arc::new(self.init_image(r, t, path, &*scheduler)?)),
            _ => None,
        };
        let settings = SampleSettings {
            scheduler: Shared::Owned(scheduler),
            reward: reward.clone().map(|w| {
                let w: Arc<dyn Reward> = w;
                Shared::Owned(w)
            }),
            reward_guidance,
            steering,
        };
        settings.validate(shape)?;
        let rows = steering.particles
            * if classes == ClassPlan::Unconditional {
                1
            } else {
                2
            };
        self.check_memory_at(rows, latent.0, latent.1)
            .map_err(|e| match e {
                Error::InvalidArgument { message, .. } if rows > 1 => {
                    Error::invalid("particles", message)
                }
                other => other,
            })?;
        Ok(Plan {
            request: r.clone(),
            classes,
            guidance,
            settings: Arc::new(settings),
            reward,
            scheduler: kind,
            eta,
            model: self.options.model.display().to_string(),
            text,
            latent,
            from,
        })
    }

    /// The prompt side of a request on a text-to-image pipeline (`None` on other
    /// models, which refuse the prompt fields).
    fn text_plan(&self, r: &Request) -> Result<Option<TextPlan>> {
        let Some(stack) = &self.text else {
            let given = [
                ("prompt", r.prompt.is_some()),
                ("negative_prompt", r.negative_prompt.is_some()),
                ("width", r.width.is_some()),
                ("height", r.height.is_some()),
                ("clip_skip", r.clip_skip.is_some()),
                ("init_image", r.init_image.is_some()),
                ("strength", r.strength.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, g)| *g) {
                return Err(Error::invalid(
                    *field,
                    format!(
                        "{} is not a text-to-image pipeline (it takes {}); prompts need a pipeline folder with model_index.json",
                        self.options.model.display(),
                        if self.unet.num_classes().is_some() { "classes" } else { "no condition" }
                    ),
                ));
            }
            return Ok(None);
        };
        if r.class.is_some() {
            return Err(Error::invalid(
                "class",
                "a text-to-image pipeline takes a prompt, not a class",
            ));
        }
        if r.strength.is_some() && r.init_image.is_none() {
            return Err(Error::invalid("strength", "sets img2img: add init_image"));
        }
        let factor = stack.factor;
        let down = 1usize
            << self
                .unet
                .config()
                .down_blocks
                .iter()
                .filter(|b| b.resample)
                .count();
        let multiple = factor * down;
        let mut size = [
            (self.height * factor, "height", r.height),
            (self.width * factor, "width", r.width),
        ];
        for (value, field, given) in size.iter_mut() {
            if let Some(v) = *given {
                if v % multiple != 0 || v > MAX_IMAGE_SIDE {
                    return Err(Error::invalid(
                        *field,
                        format!(
                            "{v} pixels: this pipeline takes multiples of {multiple} (the VAE's factor {factor} × the U-Net's downsampling {down}) up to {MAX_IMAGE_SIDE}"
                        ),
                    ));
                }
                *value = v;
            }
        }
        let (height, width) = (size[0].0, size[1].0);
        let layers = stack.layers();
        let clip_skip = r.clip_skip.unwrap_or(1);
        if clip_skip > layers {
            return Err(Error::invalid(
                "clip_skip",
                format!("{clip_skip}: the text encoder has {layers} layers (accepted: 1..={layers}; 1 = the last)"),
            ));
        }
        let key = |text: &str| PromptKey {
            ids: stack.tokenizer.encode(text).ids,
            skip: clip_skip - 1,
        };
        let prompt = r.prompt.clone().unwrap_or_default();
        let negative = r.negative_prompt.clone().unwrap_or_default();
        Ok(Some(TextPlan {
            truncated: stack.tokenizer.encode(&prompt).truncated,
            prompt: key(&prompt),
            negative: key(&negative),
            latent: (height / factor, width / factor),
            image: (height, width),
            clip_skip,
        }))
    }

    /// img2img: the image's latent distribution (sampler space) and the step it
    /// enters at, as diffusers' img2img pipeline: of `steps` steps it runs the last
    /// ⌊steps × strength⌋.
    fn init_image(
        &self,
        r: &Request,
        text: &TextPlan,
        path: &str,
        scheduler: &dyn crate::schedule::Scheduler,
    ) -> Result<FromImage> {
        let stack = self.text.as_ref().ok_or_else(|| {
            Error::invalid("init_image", "img2img needs a text-to-image pipeline")
        })?;
        let strength = r.strength.unwrap_or(0.8);
        let steps = scheduler.num_steps();
        let kept = ((steps as f64 * strength) as usize).min(steps);
        if kept == 0 {
            return Err(Error::invalid(
                "strength",
                format!("{strength} of {steps} steps runs none; raise strength or steps"),
            ));
        }
        let (height, width) = text.image;
        let channels = stack.vae.config().in_channels;
        let pixels =
            crate::image_input::read_png_as_model_space(Path::new(path), height, width, channels)
                .map_err(|e| Error::invalid("init_image", e.to_string()))?;
        let dist =
            self.install(|| stack.encode_image(self.backend.as_ref(), pixels, height, width))?;
        let config = stack.vae.config();
        let zeros = vec![0f32; dist.mean.len()];
        let mean = dist.latents(config, &zeros)?;
        let scale = config.scaling_factor as f32;
        let std = dist.std.iter().map(|s| s * scale).collect();
        Ok(FromImage {
            mean,
            std,
            step: steps - kept,
        })
    }

    /// What the sampler needs to start image `index` of `plan`: its spec (with the
    /// prompt embeddings of a text plan, from the cache or the text encoder) and
    /// where it starts.
    pub(crate) fn sample_start(&self, plan: &Plan, index: u64) -> Result<(SampleSpec, Start)> {
        let mut spec = plan.spec(index);
        let start = Start {
            size: Some(plan.latent),
            from: plan.from.as_deref().cloned(),
        };
        if let (Some(text), Some(stack)) = (&plan.text, &self.text) {
            let cond = stack.embed(self.backend.as_ref(), &text.prompt)?;
            let uncond = stack.embed(self.backend.as_ref(), &text.negative)?;
            spec.condition = Condition::Embedding {
                cond: cond.to_vec(),
                uncond: uncond.to_vec(),
                tokens: stack.embedding_shape().0,
            };
        }
        Ok((spec, start))
    }

    /// Turns a finished latent of `plan` into its image (identity for pixel models).
    pub(crate) fn decode(&self, plan: &Plan, output: &mut SampleOutput) -> Result<()> {
        match (&plan.text, &self.text) {
            (Some(_), Some(stack)) => stack.decode(self.backend.as_ref(), output),
            _ => Ok(()),
        }
    }

    fn class_plan(&self, class: Option<ClassChoice>) -> Result<ClassPlan> {
        let labels = self.conditional_classes();
        match (class, labels) {
            (Some(ClassChoice::Label(label)), Some(n)) if label < n => Ok(ClassPlan::Label(label)),
            (Some(ClassChoice::Label(label)), Some(n)) => Err(Error::invalid(
                "class",
                format!(
                    "{label} is out of range for this model (accepted: 0..={} or none)",
                    n - 1
                ),
            )),
            (Some(ClassChoice::Label(_)), None) => Err(Error::invalid(
                "class",
                format!(
                    "the model in {} has no class embedding; leave class out",
                    self.options.model.display()
                ),
            )),
            (Some(ClassChoice::Unconditional), _) | (None, None) => Ok(ClassPlan::Unconditional),
            (None, Some(n)) => Ok(ClassPlan::Cycle(n)),
        }
    }

    fn reward_of(&self, r: &Request, shape: SampleShape) -> Result<Option<Arc<dyn TermReward>>> {
        if r.reward.is_empty() {
            let needs_reward = [
                ("reward_scale", r.reward_scale.is_some()),
                ("reward_form", r.reward_form.is_some()),
                ("reward_schedule", r.reward_schedule.is_some()),
                ("reward_window", r.reward_window.is_some()),
                ("reward_iters", r.reward_iters.is_some()),
                ("reward_raw", r.reward_raw),
                ("recur", r.recur.is_some()),
                ("particles", r.particles > 1),
                ("steer", r.steer.is_some()),
            ];
            if let Some((field, _)) = needs_reward.iter().find(|(_, given)| *given) {
                return Err(Error::invalid(
                    *field,
                    "works on a reward: add a reward spec (e.g. classifier:3)",
                ));
            }
            return Ok(None);
        }
        let sum = parse_reward_specs(&r.reward, &self.rewards).map_err(|e| match e {
            Error::InvalidArgument { .. } => e,
            other => Error::invalid(
                "classifier",
                format!(
                    "cannot load the classifier in {}: {other}",
                    self.rewards.classifier_dir.display()
                ),
            ),
        })?;
        let reward: Arc<dyn TermReward> = match &self.text {
            Some(stack) => Arc::new(DecodedReward::new(sum, stack.clone(), self.backend.clone())),
            None => Arc::new(sum),
        };
        reward
            .check_shape(shape)
            .map_err(|e| Error::invalid("reward", e.to_string()))?;
        Ok(Some(reward))
    }
}

/// Whether two paths name the same folder (after resolving links, when both exist).
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
