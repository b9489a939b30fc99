//! Guidance: how the model's predictions are combined before the scheduler step.

pub mod apg;
pub mod cfg;
pub mod reward;
pub mod zero_star;

pub use apg::Apg;
pub use cfg::{Guidance, GuidanceInterval, GuidanceMethod, GuidanceState};
