//! diffsteer: a diffusion sampling engine that steers every denoising step.

pub mod backend;
pub mod error;
pub mod fsutil;
pub mod guidance;
pub mod image;
pub mod json_fields;
pub mod model;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod tensor;

pub use error::{Error, Result};
