//! The engine every front end shares (`generate`, `eval`, `bench`, `batch`,
//! `serve` and library users): open a model once ([`Engine::open`]), validate a
//! [`Request`] into a [`Plan`] with no side effect ([`Engine::prepare`]; errors
//! name the request field at fault), and run the samples of any number of plans
//! together through a [`Runner`] — continuous batching, where samples at different
//! steps with different schedulers, guidance, rewards and steering share each
//! model call, join between any two steps and leave when done. Results stream out
//! one image at a time with typed [`ImageMetadata`]; nothing is held in proportion
//! to a request's `count`.
//!
//! ```no_run
//! use diffsteer::pipeline::{drive, Engine, EngineOptions, PlanFeed, Request};
//!
//! # fn main() -> diffsteer::Result<()> {
//! let engine = Engine::open(EngineOptions::new("weights/digits"))?;
//! let request = Request::from_json_str(r#"{"count": 4, "class": 7, "steps": 20}"#)?;
//! let plan = engine.prepare(&request)?;
//! let mut runner = engine.runner(16)?;
//! engine.with_workers(|| {
//!     drive(&mut runner, &mut PlanFeed::new(plan), &mut |done| {
//!         let image = done.result?;
//!         std::fs::write(format!("seven-{}.png", done.index), image.png()?)
//!             .map_err(|e| diffsteer::Error::io("seven.png", "cannot write", e))
//!     }, &mut |_| {})
//! })?;
//! # Ok(())
//! # }
//! ```

mod decoded_reward;
mod engine;
pub mod metadata;
mod options;
mod plan;
pub mod request;
mod runner;
mod service;
mod text;

pub use decoded_reward::{DecodedReward, TermReward};
pub use engine::{default_classifier_dir, make_backend, Engine, MAX_COUNT, MAX_IMAGE_SIDE};
pub use metadata::ImageMetadata;
pub use options::{Device, EngineOptions};
pub use plan::Plan;
pub use request::{ClassChoice, Request, StepWindow};
pub use runner::{drive, Feed, Finished, GeneratedImage, PlanFeed, Runner, RunnerStats};
pub use service::{
    CancelOnDrop, EventSink, Service, ServiceMetrics, ServiceOptions, SubmitError, Ticket,
    TicketEvent, STEP_SECONDS_BUCKETS,
};
