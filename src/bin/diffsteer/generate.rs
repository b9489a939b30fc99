//! `diffsteer generate`: sample images in batches, writing each image and the
//! metadata of everything written so far atomically after every batch, so an
//! error part-way loses nothing already generated.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use diffsteer::backend::cpu::CpuBackend;
use diffsteer::backend::Backend;
use diffsteer::fsutil::write_atomic;
use diffsteer::guidance::{Guidance, GuidanceInterval};
use diffsteer::image::Image8;
use diffsteer::model::ModelFolder;
use diffsteer::reward::SampleShape;
use diffsteer::sampler::{Condition, PhiloxNoise, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions};
use diffsteer::tensor::Precision;
use diffsteer::Error;

use crate::align;
use crate::args::{ClassArg, DeviceArg, GenerateArgs, SchedulerArg, TargetArgs};
use crate::usage_error::{usage, CliError};

const DEFAULT_MODEL: &str = "weights/digits";
const METADATA: &str = "metadata.jsonl";

/// The default model resolves against the working directory first, then the source
/// checkout the binary was built from, so `target/release/diffsteer generate` works
/// from anywhere in a clone.
pub fn resolve_model(arg: &Path) -> PathBuf {
    if arg == Path::new(DEFAULT_MODEL) && !arg.exists() {
        let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
        if built_from.exists() {
            return built_from;
        }
    }
    arg.to_path_buf()
}

fn image_name(index: usize) -> String {
    format!("{index:06}.png")
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

/// Maps the scheduler's errors about its arguments to the flags that set them.
fn as_flag_error(e: Error) -> CliError {
    match e {
        Error::InvalidArgument { name, message } => {
            let flag = match name.as_str() {
                "num_steps" => "--steps",
                "eta" => "--eta",
                "karras" => "--karras",
                _ => return CliError::Runtime(Error::InvalidArgument { name, message }),
            };
            usage(flag, message)
        }
        other => CliError::Runtime(other),
    }
}

/// The backend `--device` and `--dtype` name.
pub fn make_backend(target: &TargetArgs) -> Result<Box<dyn Backend>, CliError> {
    match target.device {
        DeviceArg::Cpu if target.dtype != Precision::F32 => Err(usage(
            "--dtype",
            format!(
                "the CPU backend computes in f32 only; --dtype {} needs --device cuda",
                target.dtype
            ),
        )),
        DeviceArg::Cpu => Ok(Box::new(CpuBackend::new())),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda(ordinal) => Ok(Box::new(diffsteer::backend::cuda::CudaBackend::new(
            ordinal,
            target.dtype,
        )?)),
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda(_) => Err(usage(
            "--device",
            "this binary was built without CUDA (accepted: cpu); rebuild with `cargo build --release --features cuda`",
        )),
    }
}

pub fn run(args: &GenerateArgs) -> Result<(), CliError> {
    let model_dir = resolve_model(&args.model);
    let folder = ModelFolder::locate(&model_dir).map_err(|e| usage("--model", e))?;
    if let Some(grid) = &args.grid {
        check_grid_path(grid, &args.out)?;
    }
    let scheduler_config = folder.load_scheduler_config()?;
    let scheduler_arg = args
        .scheduler
        .or_else(|| scheduler_config.class_kind().map(SchedulerArg::from_kind))
        .unwrap_or(SchedulerArg::Ddim);
    let rewards = align::reward_context(&args.align, &model_dir, &args.target)?;
    let setup = align::resolve(&args.align, &rewards, args.steps)?;
    let eta = align::resolve_eta(&setup, args.eta, scheduler_arg.kind())?;
    let options = ScheduleOptions {
        eta,
        karras: args.karras.then_some(true),
    };
    let scheduler = schedule::build(
        scheduler_arg.kind(),
        &scheduler_config,
        args.steps,
        &options,
    )
    .map_err(as_flag_error)?;

    let backend = make_backend(&args.target)?;
    let unet = folder.load_unet(backend.as_ref())?;
    let sampler = Sampler::new(backend.as_ref(), &unet, scheduler.as_ref())?;
    let alignment = setup.alignment();
    let shape = SampleShape::new(sampler.height(), sampler.width(), unet.config().in_channels);
    if let Some(reward) = alignment.reward {
        reward
            .check_shape(shape)
            .map_err(|e| usage("--reward", e))?;
    }
    alignment
        .validate(shape, scheduler.num_steps())
        .map_err(align::flag_error)?;

    let classes = sampler.conditional_classes();
    if unet.config().cross_attention_dim.is_some() {
        return Err(usage(
            "--model",
            "this is a text-conditioned model (UNet2DConditionModel); `generate` has no text encoder yet — use the library API with encoder hidden states",
        ));
    }
    let condition_of = |i: usize| -> Result<(Condition, Option<usize>), CliError> {
        match (args.class, classes) {
            (Some(ClassArg::Label(label)), Some(n)) if label < n => {
                Ok((Condition::Class(label), Some(label)))
            }
            (Some(ClassArg::Label(label)), Some(n)) => Err(usage(
                "--class",
                format!(
                    "{label} is out of range for this model (accepted: 0..={} or none)",
                    n - 1
                ),
            )),
            (Some(ClassArg::Label(_)), None) => Err(usage(
                "--class",
                format!(
                    "the model in {} has no class embedding; omit --class",
                    model_dir.display()
                ),
            )),
            (Some(ClassArg::Unconditional), _) => Ok((Condition::Unconditional, None)),
            (None, Some(n)) => Ok((Condition::Class(i % n), Some(i % n))),
            (None, None) => Ok((Condition::Unconditional, None)),
        }
    };

    let guidance = Guidance {
        scale: args.cfg,
        rescale: args.cfg_rescale,
        interval: args
            .cfg_interval
            .map(|(start, stop)| GuidanceInterval { start, stop })
            .unwrap_or(GuidanceInterval::ALWAYS),
    };
    let mut jobs = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let seed = args.seed.checked_add(i as u64).ok_or_else(|| {
            usage(
                "--seed",
                format!("seed + count overflows u64 (at image {i})"),
            )
        })?;
        let (condition, class) = condition_of(i)?;
        jobs.push((
            SampleSpec {
                seed,
                condition,
                guidance,
            },
            class,
        ));
    }
    prepare_out(&args.out, args.overwrite)?;

    let total_steps = (args.count * scheduler.num_steps()) as u64;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
        ) {
            bar.set_style(style);
        }
        bar
    };

    let started = Instant::now();
    let mut metadata = String::new();
    let mut images = Vec::new();
    for (batch_index, batch) in jobs.chunks(args.batch).enumerate() {
        let first = batch_index * args.batch;
        bar.set_message(format!(
            "images {}-{} of {}",
            first + 1,
            first + batch.len(),
            args.count
        ));
        let specs: Vec<SampleSpec> = batch.iter().map(|(s, _)| s.clone()).collect();
        let done_before = (first * scheduler.num_steps()) as u64;
        let outputs = sampler
            .sample_aligned(&specs, &PhiloxNoise, &alignment, &mut |p| {
                bar.set_position(done_before + (p.step * batch.len()) as u64);
            })
            .map_err(align::flag_error)?;
        let terms = match &setup.reward {
            Some(reward) => {
                let finals: Vec<f32> = outputs
                    .iter()
                    .flat_map(|o| o.data.iter().copied())
                    .collect();
                Some(reward.evaluate_terms(shape, &finals, None)?.1)
            }
            None => None,
        };
        for (k, (output, (spec, class))) in outputs.iter().zip(batch).enumerate() {
            let index = first + k;
            let image = Image8::from_model_space(
                &output.data,
                output.height,
                output.width,
                output.channels,
            )?;
            let file = image_name(index);
            write_atomic(&args.out.join(&file), &image.encode_png()?)?;
            // CFG needs a condition: an unconditional sample records none.
            let cfg_applies = !matches!(spec.condition, Condition::Unconditional);
            let mut line = json!({
                "file": file,
                "seed": spec.seed,
                "class": class,
                "steps": scheduler.num_steps(),
                "scheduler": scheduler_arg.name(),
                "cfg": cfg_applies.then_some(args.cfg),
                "cfg_rescale": cfg_applies.then_some(args.cfg_rescale),
                "eta": eta,
                "karras": args.karras,
                "model": model_dir.display().to_string(),
            });
            if let (Some(reward), Some(terms), Some(fields)) =
                (&setup.reward, &terms, line.as_object_mut())
            {
                let values: serde_json::Map<String, serde_json::Value> = reward
                    .term_names()
                    .into_iter()
                    .zip(terms)
                    .map(|(name, values)| (name, json!(values[k])))
                    .collect();
                fields.insert("reward".into(), json!(args.align.rewards));
                fields.insert("reward_value".into(), json!(output.reward));
                fields.insert("reward_terms".into(), values.into());
                fields.insert(
                    "reward_guidance".into(),
                    align::guidance_json(&setup.guidance),
                );
                fields.insert("steering".into(), align::steering_json(&setup.steering));
                fields.insert("particle".into(), json!(output.particle));
            }
            metadata.push_str(&line.to_string());
            metadata.push('\n');
            if args.grid.is_some() {
                images.push(image);
            }
        }
        write_atomic(&args.out.join(METADATA), metadata.as_bytes())?;
    }
    bar.finish_and_clear();

    if let Some(grid) = &args.grid {
        let columns = (images.len() as f64).sqrt().ceil() as usize;
        let picture = Image8::grid(&images, columns, 2 * args.grid_scale, args.grid_scale)?;
        write_atomic(grid, &picture.encode_png()?)?;
    }
    if !args.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "wrote {} images to {} in {secs:.1} s ({:.2} s/image, {} {} steps, cfg {})",
            args.count,
            args.out.display(),
            secs / args.count as f64,
            scheduler.num_steps(),
            scheduler_arg.name(),
            args.cfg
        );
    }
    Ok(())
}
