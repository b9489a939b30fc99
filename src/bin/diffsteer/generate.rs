//! `diffsteer generate`: one request through the engine. The flags become a
//! [`Request`]; each image is written atomically as it finishes, and its metadata
//! line appended to `metadata.jsonl` right after, so an error part-way loses
//! nothing already generated.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use diffsteer::fsutil::write_atomic;
use diffsteer::image::Image8;
use diffsteer::pipeline::request::GuidanceKind;
use diffsteer::pipeline::{drive, ImageMetadata, PlanFeed, Request};
use diffsteer::Error;

use crate::args::{GenerateArgs, GuidanceArg};
use crate::engine_flags::{
    apply_alignment, check_classifier_flag, class_choice, engine_error, open_engine, window,
};
use crate::usage_error::{usage, CliError};

const METADATA: &str = "metadata.jsonl";
/// Most images a `--grid` picture takes (the grid is built in memory).
const MAX_GRID_IMAGES: u64 = 10_000;

/// One line of `metadata.jsonl`.
#[derive(Serialize)]
struct MetadataLine<'a> {
    file: String,
    #[serde(flatten)]
    metadata: &'a ImageMetadata,
}

/// Makes sure `--out` can take results before any work is done.
fn prepare_out(dir: &Path, overwrite: bool) -> Result<(), CliError> {
    let shown = dir.display();
    if dir.exists() && !dir.is_dir() {
        return Err(usage(
            "--out",
            format!("{shown} exists and is not a folder"),
        ));
    }
    if dir.join(METADATA).exists() && !overwrite {
        return Err(usage(
            "--out",
            format!("{shown} already holds results ({METADATA}); choose another folder or pass --overwrite"),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| usage("--out", format!("cannot create {shown}: {e}")))?;
    let probe = dir.join(format!(".diffsteer-write-test.{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| usage("--out", format!("cannot write to {shown}: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    if overwrite {
        for entry in std::fs::read_dir(dir)
            .map_err(|e| usage("--out", format!("cannot list {shown}: {e}")))?
        {
            let path = entry.map_err(|e| usage("--out", e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let is_result = name == METADATA
                || (name.len() == 10
                    && name.ends_with(".png")
                    && name[..6].bytes().all(|b| b.is_ascii_digit()));
            if is_result {
                std::fs::remove_file(&path).map_err(|e| {
                    usage("--out", format!("cannot replace {}: {e}", path.display()))
                })?;
            }
        }
    }
    Ok(())
}

/// The grid's folder must exist and be writable; the `--out` folder itself counts as
/// existing, since `generate` creates it (`--out out --grid out/grid.png`).
fn check_grid_path(grid: &Path, out: &Path) -> Result<(), CliError> {
    let parent = grid
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent == out && !parent.exists() {
        return Ok(());
    }
    if !parent.is_dir() {
        return Err(usage(
            "--grid",
            format!("folder {} does not exist", parent.display()),
        ));
    }
    let probe = parent.join(format!(".diffsteer-write-test.{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        usage(
            "--grid",
            format!("cannot write to {}: {e}", parent.display()),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The request `generate`'s flags describe.
pub(crate) fn request_of(args: &GenerateArgs) -> Request {
    let mut request = Request {
        count: args.count as u64,
        seed: args.seed,
        class: args.class.map(class_choice),
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width,
        height: args.height,
        clip_skip: args.clip_skip,
        init_image: args.init_image.as_ref().map(|p| p.display().to_string()),
        strength: args.strength,
        steps: args.steps,
        scheduler: args.scheduler.map(|s| s.kind()),
        karras: args.karras,
        eta: args.eta,
        cfg: args.cfg,
        cfg_rescale: args.cfg_rescale,
        cfg_interval: window(args.cfg_interval),
        guidance: match args.guidance {
            GuidanceArg::Cfg => GuidanceKind::Cfg,
            GuidanceArg::Apg => GuidanceKind::Apg,
            GuidanceArg::CfgZeroStar => GuidanceKind::CfgZeroStar,
        },
        apg_eta: args.apg_eta,
        apg_norm_threshold: args.apg_norm_threshold,
        apg_momentum: args.apg_momentum,
        zero_init_steps: args.zero_init_steps,
        ..Request::default()
    };
    apply_alignment(&mut request, &args.align);
    request
}

pub fn run(args: &GenerateArgs, threads: Option<usize>) -> Result<(), CliError> {
    check_classifier_flag(&args.align)?;
    if let Some(grid) = &args.grid {
        check_grid_path(grid, &args.out)?;
        if args.count as u64 > MAX_GRID_IMAGES {
            return Err(usage(
                "--grid",
                format!(
                    "a grid takes at most {MAX_GRID_IMAGES} images; --count is {}",
                    args.count
                ),
            ));
        }
    }
    let engine = open_engine(
        &args.model,
        &args.target,
        threads,
        args.align.classifier.clone(),
    )?;
    let plan = engine.prepare(&request_of(args)).map_err(engine_error)?;
    let particles = plan.particles();
    let mut runner = engine
        .runner::<()>(args.batch.saturating_mul(particles))
        .map_err(engine_error)?;
    prepare_out(&args.out, args.overwrite)?;
    let metadata_path = args.out.join(METADATA);
    let mut metadata = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metadata_path)
        .map_err(|e| Error::io(&metadata_path, "cannot open", e))?;

    let calls_per_image = plan.calls_per_image() as u64;
    let total = plan.count() * calls_per_image;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
        ) {
            bar.set_style(style);
        }
        bar
    };

    let started = Instant::now();
    let mut images: Vec<Image8> = Vec::new();
    let mut written = 0u64;
    let mut feed = PlanFeed::new(plan.clone());
    let admitted = AtomicU64::new(0);
    engine
        .with_workers(|| {
            drive(
                &mut runner,
                &mut CountingFeed {
                    inner: &mut feed,
                    admitted: &admitted,
                },
                &mut |done| {
                    let generated = done.result?;
                    let image = generated.image8()?;
                    let file = format!("{:06}.png", done.index);
                    write_atomic(&args.out.join(&file), &image.encode_png()?)?;
                    let mut line = serde_json::to_string(&MetadataLine {
                        file,
                        metadata: &generated.metadata,
                    })
                    .map_err(|e| Error::invalid("metadata", e.to_string()))?;
                    line.push('\n');
                    metadata
                        .write_all(line.as_bytes())
                        .and_then(|()| metadata.flush())
                        .map_err(|e| Error::io(&metadata_path, "cannot append to", e))?;
                    written += 1;
                    bar.set_message(format!("{written} of {} images written", plan.count()));
                    if args.grid.is_some() {
                        images.push(image);
                    }
                    Ok(())
                },
                &mut |runner| {
                    let admitted_calls = admitted.load(Ordering::Relaxed) * calls_per_image;
                    bar.set_position(admitted_calls.saturating_sub(runner.calls_left()));
                },
            )
        })
        .map_err(engine_error)?;
    bar.finish_and_clear();
    metadata
        .sync_all()
        .map_err(|e| Error::io(&metadata_path, "cannot sync", e))?;

    if let Some(grid) = &args.grid {
        let columns = (images.len() as f64).sqrt().ceil() as usize;
        let picture = Image8::grid(&images, columns, 2 * args.grid_scale, args.grid_scale)?;
        write_atomic(grid, &picture.encode_png()?)?;
    }
    if !args.quiet {
        let secs = started.elapsed().as_secs_f64();
        let stats = runner.stats();
        eprintln!(
            "wrote {} images to {} in {secs:.1} s ({:.2} s/image, {} {} steps, cfg {}; {} model calls, {:.1} samples per call)",
            args.count,
            args.out.display(),
            secs / args.count as f64,
            args.steps,
            plan.request().scheduler.unwrap_or(engine.default_scheduler()),
            args.cfg,
            stats.model_calls,
            stats.mean_slots_per_call(),
        );
    }
    Ok(())
}

/// Counts the samples a feed hands over (for the progress bar).
struct CountingFeed<'a, F> {
    inner: &'a mut F,
    admitted: &'a AtomicU64,
}

impl<F: diffsteer::pipeline::Feed<()>> diffsteer::pipeline::Feed<()> for CountingFeed<'_, F> {
    fn next_sample(
        &mut self,
        free_slots: usize,
    ) -> Option<(std::sync::Arc<diffsteer::pipeline::Plan>, u64, ())> {
        let next = self.inner.next_sample(free_slots);
        if next.is_some() {
            self.admitted.fetch_add(1, Ordering::Relaxed);
        }
        next
    }
}
