//! diffsteer: a diffusion sampling engine that steers every denoising step.
//!
//! Load a diffusers model folder, pick a scheduler from its config, and sample:
//!
//! ```no_run
//! use diffsteer::{Condition, CpuBackend, Guidance, Image8, ModelFolder, PhiloxNoise, SampleSpec, Sampler};
//! use diffsteer::schedule::{self, ScheduleOptions, SchedulerKind};
//!
//! # fn main() -> diffsteer::Result<()> {
//! let backend = CpuBackend::new();
//! let folder = ModelFolder::locate("weights/digits")?;
//! let unet = folder.load_unet(&backend)?;
//! let config = folder.load_scheduler_config()?;
//! let scheduler = schedule::build(SchedulerKind::Ddim, &config, 50, &ScheduleOptions::default())?;
//! let sampler = Sampler::new(&backend, &unet, scheduler.as_ref())?;
//! let spec = SampleSpec { seed: 1, condition: Condition::Class(7), guidance: Guidance::cfg(3.0) };
//! let samples = sampler.sample(&[spec], &PhiloxNoise, &mut |p| eprintln!("{}/{}", p.step, p.total))?;
//! let s = &samples[0];
//! let png = Image8::from_model_space(&s.data, s.height, s.width, s.channels)?.encode_png()?;
//! # let _ = png;
//! # Ok(())
//! # }
//! ```

pub mod backend;
pub mod batch;
pub mod error;
pub mod frechet;
pub mod fsutil;
pub mod guidance;
pub mod image;
pub mod image_input;
pub mod json_fields;
pub mod model;
pub mod pipeline;
pub mod reward;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod selftest;
pub mod serve;
pub mod steer;
pub mod step;
pub mod tensor;

pub use backend::cpu::CpuBackend;
pub use backend::Backend;
pub use error::{Error, Result};
pub use guidance::{Guidance, GuidanceInterval};
pub use image::Image8;
pub use model::clip::{ClipTokenizer, TextEncoder};
pub use model::vae::{Vae, VaeParts};
pub use model::{ModelFolder, PipelineFolder, UNet};
pub use sampler::{
    Alignment, Condition, NoiseSource, PhiloxNoise, SampleOutput, SampleSpec, Sampler, StepPath,
    StepProgress,
};
pub use schedule::{ScheduleOptions, Scheduler, SchedulerConfig, SchedulerKind};
pub use tensor::Precision;
