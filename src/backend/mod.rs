//! Compute backends.

#[cfg(feature = "cuda")]
pub mod cuda;
