//! diffsteer: a diffusion sampling engine that steers every denoising step.

pub mod backend;
pub mod error;
pub mod rng;
pub mod schedule;

pub use error::{Error, Result};
