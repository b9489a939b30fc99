//! `diffsteer batch JOBS.jsonl --out DIR`: flags, the progress bar and the summary
//! around the library's batch runner (`diffsteer::batch`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use diffsteer::batch::{self, BatchError, BatchOptions, Progress, Shard};
use diffsteer::pipeline::EngineOptions;

use crate::args::BatchArgs;
use crate::engine_flags::{device_of, flag_for, resolve_model};
use crate::usage_error::CliError;

/// The progress bar: model calls done of all to do, with images as the message.
struct Bar {
    bar: ProgressBar,
    images: u64,
}

impl Progress for Bar {
    fn start(&mut self, calls: u64, images: u64) {
        self.bar.set_length(calls);
        self.images = images;
        self.bar.set_message(format!("0/{images} images"));
    }

    fn advance(&mut self, calls: u64, images: u64) {
        self.bar.set_position(calls);
        self.bar
            .set_message(format!("{images}/{} images", self.images));
    }
}

fn input_error(
    args: &BatchArgs,
    line: Option<usize>,
    field: Option<String>,
    message: String,
) -> CliError {
    let at = match (line, field) {
        (Some(line), Some(field)) => format!("{}:{line}: field `{field}`", args.jobs.display()),
        (Some(line), None) => format!("{}:{line}", args.jobs.display()),
        (None, Some(field)) => flag_for(&field)
            .or_else(|| (field == "out" || field == "shard").then(|| format!("--{field}")))
            .unwrap_or(field),
        (None, None) => args.jobs.display().to_string(),
    };
    CliError::Usage(format!("{at}: {message}"))
}

pub fn run(args: &BatchArgs, threads: Option<usize>) -> Result<(), CliError> {
    let options = BatchOptions {
        jobs: args.jobs.clone(),
        out: args.out.clone(),
        engine: EngineOptions {
            device: device_of(args.target.device),
            dtype: args.target.dtype,
            threads,
            classifier: args.classifier.clone(),
            ..EngineOptions::new(resolve_model(&args.model))
        },
        batch: args.batch,
        shard: args.shard.unwrap_or(Shard::ALL),
        retry_failed: args.retry_failed,
        sequential: args.sequential,
    };
    let fail = |e: BatchError| match e {
        BatchError::Input {
            line,
            field,
            message,
        } => input_error(args, line, field, message),
        BatchError::Run(e) => CliError::Runtime(e),
    };
    let prepared = batch::prepare(options).map_err(fail)?;
    let remaining = prepared.remaining();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
        ) {
            bar.set_style(style);
        }
        bar
    };
    let mut progress = Bar { bar, images: 0 };
    let summary = batch::run(prepared, &mut progress).map_err(fail)?;
    progress.bar.finish_and_clear();

    let failed_now = summary.failed.iter().filter(|f| !f.earlier).count();
    if !args.quiet {
        let rate = if summary.seconds > 0.0 {
            summary.written as f64 / summary.seconds
        } else {
            0.0
        };
        eprintln!(
            "{} images in {}{}: {} written now, {} done before, {} failed ({} of them now)",
            summary.images,
            args.out.display(),
            args.shard
                .map_or(String::new(), |s| format!(" (shard {s})")),
            summary.written,
            summary.done_before,
            summary.failed.len(),
            failed_now
        );
        eprintln!(
            "{:.1} s, {rate:.2} images/s, {} model calls, {:.2} mean samples per model call ({} of {remaining} images left to do at the start)",
            summary.seconds,
            summary.stats.model_calls,
            summary.stats.mean_slots_per_call(),
            summary.written + failed_now as u64,
        );
        for f in &summary.failed {
            eprintln!(
                "failed: {} image {}{}: {}",
                f.id,
                f.index,
                if f.earlier { " (earlier run)" } else { "" },
                f.reason
            );
        }
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Runtime(diffsteer::Error::invalid(
            "batch",
            format!(
                "{} of {} images failed (see {})",
                summary.failed.len(),
                summary.images,
                args.out.join(batch::RESULTS).display()
            ),
        )))
    }
}
