//! Guidance: how the model's predictions are combined before the scheduler step.

pub mod cfg;
pub mod reward;

pub use cfg::{Guidance, GuidanceInterval};
