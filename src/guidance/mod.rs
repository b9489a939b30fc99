//! Guidance: how the model's predictions are combined before the scheduler step.

pub mod cfg;

pub use cfg::{Guidance, GuidanceInterval};
