//! `diffsteer batch`: high-volume generation from a JSONL file of requests, on the
//! engine's continuous batching (samples of every job share each model call; when
//! one finishes, the next waiting sample takes its slot at the next step).
//!
//! Output: `DIR/images/<id>/<index:06>.png` and `DIR/results.jsonl`, one line per
//! image (`id`, `index`, `file`, `status`, the job's fingerprint and the image's
//! full metadata). Nothing is lost and nothing is made twice: each image is
//! written atomically and its line appended only after it is in place, so
//! re-running the same command after any interruption finishes exactly the rest;
//! a job whose settings changed since the earlier run is refused. `--shard K/N`
//! takes a fixed share of the images ([`shard`]), so N machines with the same
//! jobs file make the whole set with no coordination.

pub mod jobs;
pub mod results;
pub mod shard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::Error;
use crate::fsutil::write_atomic;
use crate::pipeline::{
    drive, Engine, EngineOptions, Feed, Finished, ImageMetadata, Plan, Runner, RunnerStats,
};

pub use jobs::{load_jobs, Job};
pub use results::{ResultRecord, ResultsFile, RESULTS};
pub use shard::Shard;

/// Why a batch run stopped.
#[derive(Debug)]
pub enum BatchError {
    /// Bad input (a jobs line, a flag, the output folder): nothing was generated.
    Input {
        /// The jobs file's line, when a line is at fault.
        line: Option<usize>,
        /// The request field or option at fault.
        field: Option<String>,
        message: String,
    },
    /// A failure while running (the output folder became unwritable, ...).
    Run(Error),
}

impl BatchError {
    /// An engine error about line `line`'s request.
    pub fn from_field(line: usize, e: Error) -> Self {
        match e {
            Error::InvalidArgument { name, message } => BatchError::Input {
                line: Some(line),
                field: Some(name),
                message,
            },
            other => BatchError::Input {
                line: Some(line),
                field: None,
                message: other.to_string(),
            },
        }
    }

    /// An engine error about an option of the run (the default model, the device).
    pub fn from_option(e: Error) -> Self {
        match e {
            Error::InvalidArgument { name, message } => BatchError::Input {
                line: None,
                field: Some(name),
                message,
            },
            other => BatchError::Run(other),
        }
    }
}

impl From<Error> for BatchError {
    fn from(e: Error) -> Self {
        BatchError::Run(e)
    }
}

/// What a batch run needs.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub jobs: PathBuf,
    pub out: PathBuf,
    /// Engine options; `model` is the model of jobs that name none.
    pub engine: EngineOptions,
    /// Most slots (samples × particles) in one model call.
    pub batch: usize,
    pub shard: Shard,
    /// Run again the images an earlier run recorded as failed.
    pub retry_failed: bool,
    /// One job at a time (no packing across jobs): the comparison for packing.
    pub sequential: bool,
}

/// One image that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedImage {
    pub id: String,
    pub index: u64,
    pub reason: String,
    /// Recorded by an earlier run (not retried).
    pub earlier: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Images of this shard across all jobs.
    pub images: u64,
    /// Images already in `results.jsonl` before this run.
    pub done_before: u64,
    /// Images written by this run.
    pub written: u64,
    pub failed: Vec<FailedImage>,
    pub seconds: f64,
    pub stats: RunnerStats,
}

/// Progress reports of a run (a progress bar).
pub trait Progress: Send {
    /// Before the first step: model calls (per particle) and images to make.
    fn start(&mut self, calls: u64, images: u64);
    /// After every step: calls and images done so far.
    fn advance(&mut self, calls: u64, images: u64);
}

/// No progress reports.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: u64, _: u64) {}
    fn advance(&mut self, _: u64, _: u64) {}
}

/// A validated batch: the jobs, their engines, the output folder claimed, and what
/// is left to do.
pub struct Prepared {
    options: BatchOptions,
    engines: Vec<Engine>,
    jobs: Vec<Job>,
    results: ResultsFile,
    /// Per job: the indices of this shard already recorded (sorted).
    recorded: Vec<Vec<u64>>,
    /// Per job: images of this shard.
    in_shard: Vec<u64>,
    failed_before: Vec<FailedImage>,
    _shard_lock: std::fs::File,
}

impl Prepared {
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// Images this run still has to make.
    pub fn remaining(&self) -> u64 {
        self.in_shard
            .iter()
            .zip(&self.recorded)
            .map(|(n, done)| n - done.len() as u64)
            .sum()
    }
}

fn input(field: &str, message: impl Into<String>) -> BatchError {
    BatchError::Input {
        line: None,
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// Claims `dir` for a run of `shard`: creates it, checks it can be written, and
/// takes the shard's lock (a second run of the same shard on the same folder is
/// refused while the first is alive).
fn claim_out(dir: &Path, shard: Shard) -> Result<std::fs::File, BatchError> {
    let shown = dir.display();
    if dir.exists() && !dir.is_dir() {
        return Err(input("out", format!("{shown} exists and is not a folder")));
    }
    std::fs::create_dir_all(dir.join("images"))
        .map_err(|e| input("out", format!("cannot create {shown}: {e}")))?;
    let lock_path = dir.join(format!(".lock-{}-of-{}", shard.index, shard.count));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| input("out", format!("cannot write to {shown}: {e}")))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(input(
            "out",
            format!("another batch run is writing shard {shard} into {shown}"),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(input(
            "out",
            format!("cannot lock {}: {e}", lock_path.display()),
        )),
    }
}

/// Validates everything (jobs, engines, output folder, earlier results) before
/// any image is made.
pub fn prepare(options: BatchOptions) -> Result<Prepared, BatchError> {
    if options.batch == 0 {
        return Err(input("batch", "must be at least 1"));
    }
    let (engines, jobs) = load_jobs(&options.jobs, &options.engine, options.batch)?;
    let shard_lock = claim_out(&options.out, options.shard)?;
    let results = ResultsFile::new(&options.out);
    let by_id: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id.as_str(), i))
        .collect();

    let records = results.load()?;
    for record in &records {
        let Some(&j) = by_id.get(record.id.as_str()) else {
            continue;
        };
        let job = &jobs[j];
        if record.fingerprint.as_deref() != Some(job.fingerprint.as_str()) {
            return Err(BatchError::Input {
                line: Some(job.line),
                field: Some("id".into()),
                message: format!(
                    "job {:?} changed since the earlier run into {} (line {} of {RESULTS} was made with other settings); give it a new id or use another --out folder",
                    job.id,
                    options.out.display(),
                    record.line
                ),
            });
        }
    }
    // Lines to drop: images that vanished, repeats, and failures to retry.
    let mut seen: HashMap<(String, u64), ()> = HashMap::new();
    let mut drop_lines = Vec::new();
    for record in &records {
        let key = (record.id.clone(), record.index);
        let ours =
            by_id.contains_key(record.id.as_str()) && options.shard.owns(&record.id, record.index);
        let vanished = !record.failed && !results.image_exists(record);
        let retried = record.failed && options.retry_failed && ours;
        if seen.contains_key(&key) || (ours && (vanished || retried)) {
            drop_lines.push(record.line);
        } else {
            seen.insert(key, ());
        }
    }
    if !drop_lines.is_empty() {
        results.retain(&|r| !drop_lines.contains(&r.line))?;
    }
    let mut recorded: Vec<Vec<u64>> = vec![Vec::new(); jobs.len()];
    let mut failed_before = Vec::new();
    for record in records.iter().filter(|r| !drop_lines.contains(&r.line)) {
        if let Some(&j) = by_id.get(record.id.as_str()) {
            if options.shard.owns(&record.id, record.index) && record.index < jobs[j].plan.count() {
                recorded[j].push(record.index);
                if record.failed {
                    failed_before.push(FailedImage {
                        id: record.id.clone(),
                        index: record.index,
                        reason: record.error.clone().unwrap_or_default(),
                        earlier: true,
                    });
                }
            }
        }
    }
    for done in &mut recorded {
        done.sort_unstable();
        done.dedup();
    }
    let in_shard = jobs
        .iter()
        .map(|job| {
            (0..job.plan.count())
                .filter(|&i| options.shard.owns(&job.id, i))
                .count() as u64
        })
        .collect();
    Ok(Prepared {
        options,
        engines,
        jobs,
        results,
        recorded,
        in_shard,
        failed_before,
        _shard_lock: shard_lock,
    })
}

/// One line of `results.jsonl`.
#[derive(Serialize)]
struct ResultLine<'a> {
    id: &'a str,
    index: u64,
    file: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    job_fingerprint: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a ImageMetadata>,
}

/// The images still to make, job by job: the jobs that cost the most calls per
/// image first (so the end of a run is short jobs, which keep the batch full),
/// then in file order; a job whose images need more slots than are free is passed
/// over until enough are.
struct JobsFeed<'a> {
    jobs: &'a [Job],
    recorded: &'a [Vec<u64>],
    shard: Shard,
    order: Vec<usize>,
    cursor: Vec<u64>,
    /// Model calls (per particle) of the images handed over so far.
    admitted_calls: &'a AtomicU64,
}

impl Feed<usize> for JobsFeed<'_> {
    fn next_sample(&mut self, free_slots: usize) -> Option<(Arc<Plan>, u64, usize)> {
        let mut k = 0;
        while k < self.order.len() {
            let j = self.order[k];
            let job = &self.jobs[j];
            if job.plan.particles() > free_slots {
                k += 1;
                continue;
            }
            let count = job.plan.count();
            while self.cursor[j] < count {
                let index = self.cursor[j];
                self.cursor[j] += 1;
                if self.shard.owns(&job.id, index)
                    && self.recorded[j].binary_search(&index).is_err()
                {
                    self.admitted_calls
                        .fetch_add(job.plan.calls_per_image() as u64, Ordering::Relaxed);
                    return Some((job.plan.clone(), index, j));
                }
            }
            self.order.remove(k);
        }
        None
    }
}

/// Runs what `prepared` left to do, reporting to `progress`.
pub fn run(prepared: Prepared, progress: &mut dyn Progress) -> Result<Summary, BatchError> {
    let started = Instant::now();
    let Prepared {
        options,
        engines,
        jobs,
        results,
        recorded,
        in_shard,
        failed_before,
        _shard_lock,
    } = prepared;
    let mut summary = Summary {
        images: in_shard.iter().sum(),
        done_before: recorded.iter().map(|r| r.len() as u64).sum(),
        failed: failed_before,
        ..Summary::default()
    };
    let total_calls: u64 = jobs
        .iter()
        .enumerate()
        .map(|(j, job)| {
            (in_shard[j] - recorded[j].len() as u64) * job.plan.calls_per_image() as u64
        })
        .sum();
    progress.start(total_calls, summary.images - summary.done_before);
    let admitted_calls = AtomicU64::new(0);
    let images_now = AtomicU64::new(0);
    for (e, engine) in engines.iter().enumerate() {
        let mut order: Vec<usize> = (0..jobs.len()).filter(|&j| jobs[j].engine == e).collect();
        if !options.sequential {
            order.sort_by_key(|&j| std::cmp::Reverse(jobs[j].plan.calls_per_image()));
        }
        // Packed: one feed over every job. Sequential: one feed per job.
        let feeds: Vec<Vec<usize>> = if options.sequential {
            order.into_iter().map(|j| vec![j]).collect()
        } else {
            vec![order]
        };
        let mut runner = engine
            .runner::<usize>(options.batch)
            .map_err(BatchError::from_option)?;
        for order in feeds {
            let mut feed = JobsFeed {
                jobs: &jobs,
                recorded: &recorded,
                shard: options.shard,
                order,
                cursor: vec![0; jobs.len()],
                admitted_calls: &admitted_calls,
            };
            let mut on_finished = |done: Finished<usize>| -> crate::Result<()> {
                let job = &jobs[done.tag];
                let line = match done.result {
                    Ok(image) => {
                        let file = format!("images/{}/{:06}.png", job.id, done.index);
                        let path = options.out.join(&file);
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent)
                                .map_err(|e| Error::io(parent, "cannot create", e))?;
                        }
                        write_atomic(&path, &image.png()?)?;
                        summary.written += 1;
                        line_json(&ResultLine {
                            id: &job.id,
                            index: done.index,
                            file: Some(file),
                            status: "ok",
                            error: None,
                            job_fingerprint: &job.fingerprint,
                            metadata: Some(&image.metadata),
                        })?
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        summary.failed.push(FailedImage {
                            id: job.id.clone(),
                            index: done.index,
                            reason: reason.clone(),
                            earlier: false,
                        });
                        line_json(&ResultLine {
                            id: &job.id,
                            index: done.index,
                            file: None,
                            status: "failed",
                            error: Some(reason),
                            job_fingerprint: &job.fingerprint,
                            metadata: None,
                        })?
                    }
                };
                results.append(&line)?;
                images_now.fetch_add(1, Ordering::Relaxed);
                Ok(())
            };
            let mut after_step = |r: &Runner<'_, usize>| {
                progress.advance(
                    admitted_calls
                        .load(Ordering::Relaxed)
                        .saturating_sub(r.calls_left()),
                    images_now.load(Ordering::Relaxed),
                )
            };
            engine.with_workers(|| {
                drive(&mut runner, &mut feed, &mut on_finished, &mut after_step)
            })?;
        }
        accumulate(&mut summary.stats, &runner.stats());
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn line_json(line: &ResultLine) -> crate::Result<String> {
    serde_json::to_string(line).map_err(|e| Error::invalid("results", e.to_string()))
}

fn accumulate(total: &mut RunnerStats, add: &RunnerStats) {
    total.steps += add.steps;
    total.model_calls += add.model_calls;
    total.slots += add.slots;
    total.rows += add.rows;
    total.images += add.images;
    total.failed += add.failed;
    total.cancelled += add.cancelled;
    total.busy += add.busy;
}
