//! Continuous batching: a [`Runner`] holds the samples in flight (each with all of
//! its particles, a slot each) and takes them all one step at a time in a single
//! model call, whatever their request, step, scheduler, guidance or steering.
//! Samples are admitted between any two steps while slots are free, leave as soon
//! as they are done (or fail, or are cancelled), and come out as images with their
//! metadata. [`drive`] runs a runner from a [`Feed`] of waiting samples until
//! both are empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::image::Image8;
use crate::reward::SampleShape;
use crate::sampler::{PhiloxNoise, SampleOutput, SampleRun, SlotSampler};

use super::engine::Engine;
use super::metadata::ImageMetadata;
use super::plan::Plan;

/// A finished image: the sample in the model's space and its metadata.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub output: SampleOutput,
    pub metadata: ImageMetadata,
}

impl GeneratedImage {
    /// The image in 8 bits per channel.
    pub fn image8(&self) -> Result<Image8> {
        let o = &self.output;
        Image8::from_model_space(&o.data, o.height, o.width, o.channels)
    }

    /// The image as PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>> {
        self.image8()?.encode_png()
    }
}

/// A sample that left the runner: done, failed or cancelled.
pub struct Finished<T> {
    pub tag: T,
    pub plan: Arc<Plan>,
    /// The image's index in its request.
    pub index: u64,
    pub result: Result<GeneratedImage>,
}

/// Counters since the runner was made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunnerStats {
    /// Engine steps taken.
    pub steps: u64,
    pub model_calls: u64,
    /// Slots (particles) summed over the model calls: `slots / model_calls` is the
    /// mean occupancy of a call.
    pub slots: u64,
    /// Model rows (slots plus CFG's unconditional rows) summed over the calls.
    pub rows: u64,
    pub images: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Time spent in [`Runner::step`].
    pub busy: Duration,
}

impl RunnerStats {
    /// Mean slots per model call (0 before the first call).
    pub fn mean_slots_per_call(&self) -> f64 {
        if self.model_calls == 0 {
            0.0
        } else {
            self.slots as f64 / self.model_calls as f64
        }
    }
}

struct Owner<T> {
    tag: T,
    plan: Arc<Plan>,
    index: u64,
}

/// Samples in flight on one engine; see the module docs.
pub struct Runner<'e, T> {
    engine: &'e Engine,
    sampler: SlotSampler<'e>,
    capacity: usize,
    runs: Vec<SampleRun<'static>>,
    owners: Vec<Owner<T>>,
    stats: RunnerStats,
}

impl<'e, T> Runner<'e, T> {
    pub(crate) fn new(engine: &'e Engine, sampler: SlotSampler<'e>, capacity: usize) -> Self {
        Runner {
            engine,
            sampler,
            capacity,
            runs: Vec::new(),
            owners: Vec::new(),
            stats: RunnerStats::default(),
        }
    }

    /// Most slots in one model call.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn used_slots(&self) -> usize {
        self.runs.iter().map(SampleRun::slots).sum()
    }

    pub fn free_slots(&self) -> usize {
        self.capacity.saturating_sub(self.used_slots())
    }

    /// Samples in flight.
    pub fn active(&self) -> usize {
        self.runs.len()
    }

    pub fn is_idle(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn stats(&self) -> RunnerStats {
        self.stats
    }

    /// Model calls (per particle) the samples in flight still take part in.
    pub fn calls_left(&self) -> u64 {
        self.runs.iter().map(|r| r.calls_left() as u64).sum()
    }

    /// Each sample in flight's tag and the model calls it still takes part in.
    pub fn calls_left_by_tag(&self) -> impl Iterator<Item = (&T, u64)> {
        self.owners
            .iter()
            .zip(&self.runs)
            .map(|(o, r)| (&o.tag, r.calls_left() as u64))
    }

    /// The tags of the samples in flight.
    pub fn tags(&self) -> impl Iterator<Item = &T> {
        self.owners.iter().map(|o| &o.tag)
    }

    /// Starts image `index` of `plan`; it joins the next step. An error when it
    /// needs more slots than are free or the index is past the request's count.
    pub fn admit(&mut self, plan: &Arc<Plan>, index: u64, tag: T) -> Result<()> {
        let needed = plan.particles();
        if needed > self.free_slots() {
            return Err(Error::invalid(
                "batch",
                format!(
                    "an image with {needed} particles needs {needed} slots; {} of {} are free",
                    self.free_slots(),
                    self.capacity
                ),
            ));
        }
        if index >= plan.count() {
            return Err(Error::invalid(
                "index",
                format!("image {index} of a request for {}", plan.count()),
            ));
        }
        let noise_index = usize::try_from(index).unwrap_or(usize::MAX);
        let (spec, start) = self.engine.sample_start(plan, index)?;
        let run = self.sampler.start_with(
            spec,
            plan.settings().clone(),
            noise_index,
            &PhiloxNoise,
            start,
        )?;
        self.runs.push(run);
        self.owners.push(Owner {
            tag,
            plan: plan.clone(),
            index,
        });
        Ok(())
    }

    /// Takes every sample in flight one step (one model call per sample shape)
    /// and returns those that left: finished or failed.
    pub fn step(&mut self) -> Vec<Finished<T>> {
        if self.runs.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let report = self.sampler.advance(&mut self.runs, &PhiloxNoise);
        self.stats.steps += 1;
        self.stats.model_calls += report.model_calls as u64;
        self.stats.slots += report.slots as u64;
        self.stats.rows += report.rows as u64;

        let mut finished = Vec::new();
        let mut failures: Vec<(usize, Error)> = report.failed;
        failures.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, error) in failures {
            if i >= self.runs.len() {
                continue;
            }
            self.runs.remove(i);
            let owner = self.owners.remove(i);
            self.stats.failed += 1;
            finished.push(Finished {
                tag: owner.tag,
                plan: owner.plan,
                index: owner.index,
                result: Err(error),
            });
        }
        finished.reverse();

        let mut done_runs = Vec::new();
        let mut done_owners = Vec::new();
        let mut i = 0;
        while i < self.runs.len() {
            if self.runs[i].is_done() {
                done_runs.push(self.runs.remove(i));
                done_owners.push(self.owners.remove(i));
            } else {
                i += 1;
            }
        }
        if !done_runs.is_empty() {
            let outputs = self.sampler.finish_all(done_runs);
            let terms = self.reward_terms(&done_owners, &outputs);
            for ((owner, output), terms) in done_owners.into_iter().zip(outputs).zip(terms) {
                let result = output.and_then(|mut output| {
                    let terms = terms?;
                    let metadata = owner.plan.metadata(owner.index, &output, &terms);
                    self.engine.decode(&owner.plan, &mut output)?;
                    Ok(GeneratedImage { output, metadata })
                });
                match result {
                    Ok(_) => self.stats.images += 1,
                    Err(_) => self.stats.failed += 1,
                }
                finished.push(Finished {
                    tag: owner.tag,
                    plan: owner.plan,
                    index: owner.index,
                    result,
                });
            }
        }
        self.stats.busy += started.elapsed();
        finished
    }

    /// Each reward term's value on each finished image (one evaluation per plan).
    fn reward_terms(
        &self,
        owners: &[Owner<T>],
        outputs: &[Result<SampleOutput>],
    ) -> Vec<Result<Vec<f32>>> {
        let mut terms: Vec<Option<Result<Vec<f32>>>> = vec![None; owners.len()];
        for i in 0..owners.len() {
            if terms[i].is_some() {
                continue;
            }
            let plan = &owners[i].plan;
            let Some(reward) = plan.reward() else {
                terms[i] = Some(Ok(Vec::new()));
                continue;
            };
            let members: Vec<usize> = (i..owners.len())
                .filter(|&j| Arc::ptr_eq(&owners[j].plan, plan) && outputs[j].is_ok())
                .collect();
            let mut data = Vec::new();
            let mut shape = self.engine.sample_shape();
            for &j in &members {
                if let Ok(o) = &outputs[j] {
                    shape = SampleShape::new(o.height, o.width, o.channels);
                    data.extend_from_slice(&o.data);
                }
            }
            let evaluated = if data.is_empty() {
                Ok((Vec::new(), Vec::new()))
            } else {
                reward.evaluate_terms(shape, &data)
            };
            for (position, &j) in members.iter().enumerate() {
                terms[j] = Some(match &evaluated {
                    Ok((_, per_term)) => Ok(per_term.iter().map(|t| t[position]).collect()),
                    Err(e) => Err(e.clone()),
                });
            }
            if terms[i].is_none() {
                terms[i] = Some(Ok(Vec::new()));
            }
        }
        terms
            .into_iter()
            .map(|t| t.unwrap_or_else(|| Ok(Vec::new())))
            .collect()
    }

    /// Drops every sample whose tag `which` selects (at a step boundary: this is
    /// only called between steps) and returns how many were dropped.
    pub fn cancel(&mut self, mut which: impl FnMut(&T) -> bool) -> usize {
        let mut dropped = 0;
        let mut i = 0;
        while i < self.runs.len() {
            if which(&self.owners[i].tag) {
                self.runs.remove(i);
                self.owners.remove(i);
                dropped += 1;
            } else {
                i += 1;
            }
        }
        self.stats.cancelled += dropped as u64;
        dropped
    }
}

/// Waiting samples, handed to a runner as slots free up.
pub trait Feed<T> {
    /// The next sample to admit that needs at most `free_slots` slots (its
    /// particles), or `None` when no waiting sample fits (or none is left).
    fn next_sample(&mut self, free_slots: usize) -> Option<(Arc<Plan>, u64, T)>;
}

/// Runs `runner` until it and `feed` are empty: before every step, waiting
/// samples fill the free slots; every sample that leaves goes to `on_finished`
/// (an `Err` from it stops the run and is returned); `after_step` sees the runner
/// after every step (progress). Call it inside [`Engine::with_workers`].
pub fn drive<T>(
    runner: &mut Runner<'_, T>,
    feed: &mut dyn Feed<T>,
    on_finished: &mut dyn FnMut(Finished<T>) -> Result<()>,
    after_step: &mut dyn FnMut(&Runner<'_, T>),
) -> Result<()> {
    loop {
        while let Some((plan, index, tag)) = feed.next_sample(runner.free_slots()) {
            if plan.particles() > runner.free_slots() {
                return Err(Error::invalid(
                    "batch",
                    format!(
                        "the feed handed over an image with {} particles for {} free slots",
                        plan.particles(),
                        runner.free_slots()
                    ),
                ));
            }
            // The plan checked everything admission could refuse but the noise
            // source, which cannot fail for the engine's Philox noise.
            runner.admit(&plan, index, tag).map_err(|error| {
                Error::invalid(
                    "request",
                    format!(
                        "image {index} of {} could not start: {error}",
                        plan.id().unwrap_or("the request")
                    ),
                )
            })?;
        }
        if runner.is_idle() {
            return Ok(());
        }
        for finished in runner.step() {
            on_finished(finished)?;
        }
        after_step(runner);
    }
}

/// A feed of one plan's images `0..count` in order.
pub struct PlanFeed {
    plan: Arc<Plan>,
    next: u64,
}

impl PlanFeed {
    pub fn new(plan: Arc<Plan>) -> Self {
        PlanFeed { plan, next: 0 }
    }
}

impl Feed<()> for PlanFeed {
    fn next_sample(&mut self, free_slots: usize) -> Option<(Arc<Plan>, u64, ())> {
        if self.next >= self.plan.count() || self.plan.particles() > free_slots {
            return None;
        }
        self.next += 1;
        Some((self.plan.clone(), self.next - 1, ()))
    }
}
