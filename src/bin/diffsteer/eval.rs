//! `diffsteer eval`: sweeps one alignment setting. For every value and every target
//! class D it samples `--count` images steered by `classifier:D` (plus any other
//! `--reward` terms), then reports per value: the final reward (mean, std), the
//! share the guiding classifier reads as D, diversity, model rows and wall time per
//! image. Writes eval.csv, eval.png (reward vs. time per image) and one grid per
//! value (a row per target).

use std::path::Path;
use std::time::Instant;

use diffsteer::fsutil::write_atomic;
use diffsteer::guidance::Guidance;
use diffsteer::image::Image8;
use diffsteer::model::ModelFolder;
use diffsteer::reward::SampleShape;
use diffsteer::sampler::{Condition, PhiloxNoise, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions};

use crate::align::{self, AlignmentSetup};
use crate::args::{
    AlignArgs, ClassArg, EvalArgs, PotentialArg, RewardFormArg, RhoScheduleArg, SchedulerArg,
    SteerArg,
};
use crate::eval_chart::{eval_chart_png, EvalChartPoint};
use crate::generate::{make_backend, resolve_model};
use crate::usage_error::{usage, CliError};

/// One row of the table.
struct Point {
    value: String,
    mean_reward: f64,
    std_reward: f64,
    target_share: f64,
    diversity: f64,
    rows_per_image: f64,
    seconds_per_image: f64,
}

/// The alignment flags with the swept setting replaced by `value`.
fn with_setting(base: &AlignArgs, key: &str, value: &str) -> Result<AlignArgs, CliError> {
    let mut a = base.clone();
    let bad = |what: &str| usage("--sweep", format!("{key}={value}: expected {what}"));
    let number = || {
        value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let count = || value.parse::<usize>().ok().filter(|&v| v >= 1);
    match key {
        "reward-scale" => {
            a.reward_scale = Some(number().ok_or_else(|| bad("a number ≥ 0"))? as f32)
        }
        "reward-iters" => a.reward_iters = Some(count().ok_or_else(|| bad("a whole number ≥ 1"))?),
        "recur" => a.recur = Some(count().ok_or_else(|| bad("a whole number ≥ 1"))?),
        "particles" => a.particles = count().ok_or_else(|| bad("a whole number ≥ 1"))?,
        "fk-lambda" => a.fk_lambda = Some(number().ok_or_else(|| bad("a number ≥ 0"))?),
        "fk-every" => a.fk_every = Some(count().ok_or_else(|| bad("a whole number ≥ 1"))?),
        "steer" => {
            a.steer = Some(match value {
                "best-of-n" => SteerArg::BestOfN,
                "fk" => SteerArg::Fk,
                _ => return Err(bad("best-of-n or fk")),
            })
        }
        "fk-potential" => {
            a.fk_potential = Some(match value {
                "diff" => PotentialArg::Diff,
                "max" => PotentialArg::Max,
                "sum" => PotentialArg::Sum,
                _ => return Err(bad("diff, max or sum")),
            })
        }
        "reward-schedule" => {
            a.reward_schedule = Some(match value {
                "constant" => RhoScheduleArg::Constant,
                "noise" => RhoScheduleArg::Noise,
                _ => return Err(bad("constant or noise")),
            })
        }
        "reward-form" => {
            a.reward_form = Some(match value {
                "x0" => RewardFormArg::X0,
                "eps" => RewardFormArg::Eps,
                _ => return Err(bad("x0 or eps")),
            })
        }
        _ => return Err(usage("--sweep", format!("unknown key {key:?}"))),
    }
    Ok(a)
}

/// The alignment flags of one target: `classifier:D` first, then the user's terms.
fn for_target(args: &AlignArgs, target: usize) -> AlignArgs {
    let mut a = args.clone();
    a.rewards.insert(0, format!("classifier:{target}"));
    a
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Mean pairwise root-mean-square distance between the samples of one group.
fn diversity(samples: &[Vec<f32>]) -> Option<f64> {
    let mut total = 0.0;
    let mut pairs = 0usize;
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let ss: f64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| ((x - y) as f64).powi(2))
                .sum();
            total += (ss / a.len().max(1) as f64).sqrt();
            pairs += 1;
        }
    }
    (pairs > 0).then(|| total / pairs as f64)
}

/// Model rows one image costs: per step, its repeats × particles × (1 + CFG).
fn rows_per_image(setup: &AlignmentSetup, steps: usize, cfg: bool) -> f64 {
    (0..steps)
        .map(|s| {
            let repeats = if setup.reward.is_some() {
                setup.guidance.repeats_at(s)
            } else {
                1
            };
            repeats * setup.steering.particles * (1 + cfg as usize)
        })
        .sum::<usize>() as f64
}

fn prepare_out(dir: &Path, overwrite: bool) -> Result<(), CliError> {
    if dir.join("eval.csv").exists() && !overwrite {
        return Err(usage(
            "--out",
            format!(
                "{} already holds eval.csv; choose another folder or pass --overwrite",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| usage("--out", format!("cannot create {}: {e}", dir.display())))
}

pub fn run(args: &EvalArgs) -> Result<(), CliError> {
    let model_dir = resolve_model(&args.model);
    let folder = ModelFolder::locate(&model_dir).map_err(|e| usage("--model", e))?;
    let scheduler_config = folder.load_scheduler_config()?;
    let scheduler_arg = args
        .scheduler
        .or_else(|| scheduler_config.class_kind().map(SchedulerArg::from_kind))
        .unwrap_or(SchedulerArg::Ddim);

    let backend = make_backend(&args.target)?;
    let unet = folder.load_unet(backend.as_ref())?;
    let (height, width) = unet
        .config()
        .sample_size
        .ok_or_else(|| usage("--model", "the model config has no sample_size"))?;
    let shape = SampleShape::new(height, width, unet.config().in_channels);

    let reward_ctx = align::reward_context(&args.align, &model_dir, &args.target)?;
    // Resolve every setting before any sampling, so bad input costs nothing.
    let first_target = args
        .targets
        .as_ref()
        .and_then(|t| t.0.first().copied())
        .unwrap_or(0);
    let mut settings = Vec::new();
    for value in &args.sweep.values {
        let flags = with_setting(&args.align, &args.sweep.key, value)?;
        let setup = align::resolve(&for_target(&flags, first_target), &reward_ctx, args.steps)?;
        let eta = align::resolve_eta(&setup, args.eta, scheduler_arg.kind())?;
        setup
            .alignment()
            .validate(shape, args.steps)
            .map_err(align::flag_error)?;
        settings.push((value.clone(), flags, eta));
    }
    let classifier = reward_ctx
        .classifier()
        .map_err(|e| usage("--classifier", e))?;
    let targets = args
        .targets
        .clone()
        .map(|t| t.0)
        .unwrap_or_else(|| (0..classifier.num_classes()).collect());
    if let Some(&t) = targets.iter().find(|&&t| t >= classifier.num_classes()) {
        return Err(usage(
            "--targets",
            format!(
                "{t} is not a class of the classifier in {} (0..={})",
                reward_ctx.classifier_dir.display(),
                classifier.num_classes() - 1
            ),
        ));
    }
    prepare_out(&args.out, args.overwrite)?;

    let condition = match args.class {
        ClassArg::Unconditional => Condition::Unconditional,
        ClassArg::Label(label) => Condition::Class(label),
    };
    let uses_cfg = matches!(condition, Condition::Class(_)) && args.cfg != 1.0;

    let mut points = Vec::new();
    for (p, (value, flags, eta)) in settings.iter().enumerate() {
        let scheduler = schedule::build(
            scheduler_arg.kind(),
            &scheduler_config,
            args.steps,
            &ScheduleOptions {
                eta: *eta,
                karras: None,
            },
        )
        .map_err(|e| usage("--steps", e))?;
        let sampler = Sampler::new(backend.as_ref(), &unet, scheduler.as_ref())?;
        let started = Instant::now();
        let mut rewards = Vec::new();
        let mut hits = 0usize;
        let mut diversities = Vec::new();
        let mut tiles = Vec::new();
        let mut rows = 0.0;
        for &target in &targets {
            let setup = align::resolve(&for_target(flags, target), &reward_ctx, args.steps)?;
            rows = rows_per_image(&setup, scheduler.num_steps(), uses_cfg);
            let alignment = setup.alignment();
            let specs: Vec<SampleSpec> = (0..args.count as u64)
                .map(|i| SampleSpec {
                    seed: args.seed.wrapping_add(i),
                    condition: condition.clone(),
                    guidance: Guidance::cfg(args.cfg),
                })
                .collect();
            let mut finals = Vec::new();
            for batch in specs.chunks(args.batch) {
                let outputs = sampler
                    .sample_aligned(batch, &PhiloxNoise, &alignment, &mut |_| {})
                    .map_err(align::flag_error)?;
                for o in outputs {
                    rewards.push(o.reward.unwrap_or(f32::NAN) as f64);
                    finals.push(o.data);
                }
            }
            let flat: Vec<f32> = finals.iter().flatten().copied().collect();
            hits += classifier
                .predict(&flat)?
                .iter()
                .filter(|&&c| c == target)
                .count();
            diversities.extend(diversity(&finals));
            for x in finals.iter().take(10) {
                tiles.push(Image8::from_model_space(
                    x,
                    shape.height,
                    shape.width,
                    shape.channels,
                )?);
            }
            if !args.quiet {
                eprintln!(
                    "[{}/{}] {}={value} target {target}: {} images, {:.1} s so far",
                    p + 1,
                    settings.len(),
                    args.sweep.key,
                    args.count,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let images = (targets.len() * args.count) as f64;
        let (mean_reward, std_reward) = mean_std(&rewards);
        points.push(Point {
            value: value.clone(),
            mean_reward,
            std_reward,
            target_share: hits as f64 / images,
            diversity: mean_std(&diversities).0,
            rows_per_image: rows,
            seconds_per_image: started.elapsed().as_secs_f64() / images,
        });
        let grid = Image8::grid(&tiles, args.count.min(10), 2, 2)?;
        write_atomic(
            &args
                .out
                .join(format!("grid-{}-{value}.png", args.sweep.key)),
            &grid.encode_png()?,
        )?;
    }

    print_table(&args.sweep.key, &points);
    write_atomic(
        &args.out.join("eval.csv"),
        csv(&args.sweep.key, &points).as_bytes(),
    )?;
    let chart: Vec<EvalChartPoint> = points
        .iter()
        .map(|p| EvalChartPoint {
            value: p.value.clone(),
            mean_reward: p.mean_reward,
            target_share: p.target_share,
            seconds_per_image: p.seconds_per_image,
        })
        .collect();
    write_atomic(
        &args.out.join("eval.png"),
        &eval_chart_png(&args.sweep.key, &chart)?,
    )?;
    if !args.quiet {
        eprintln!(
            "wrote {} and {} ({} targets × {} images per setting)",
            args.out.join("eval.csv").display(),
            args.out.join("eval.png").display(),
            targets.len(),
            args.count
        );
    }
    Ok(())
}

const COLUMNS: [&str; 8] = [
    "value",
    "reward_mean",
    "reward_std",
    "target_share",
    "diversity",
    "rows_per_image",
    "seconds_per_image",
    "images_per_second",
];

fn print_table(key: &str, points: &[Point]) {
    println!(
        "{key:>14} {:>11} {:>10} {:>12} {:>9} {:>10} {:>9}",
        "reward mean", "reward std", "target share", "diversity", "rows/image", "s/image"
    );
    for p in points {
        println!(
            "{:>14} {:>11.3} {:>10.3} {:>11.1}% {:>9.3} {:>10.0} {:>9.3}",
            p.value,
            p.mean_reward,
            p.std_reward,
            100.0 * p.target_share,
            p.diversity,
            p.rows_per_image,
            p.seconds_per_image
        );
    }
}

fn csv(key: &str, points: &[Point]) -> String {
    let mut out = format!("sweep_key,{}\n", COLUMNS.join(","));
    for p in points {
        out.push_str(&format!(
            "{key},{},{:.6},{:.6},{:.4},{:.6},{},{:.6},{:.4}\n",
            p.value,
            p.mean_reward,
            p.std_reward,
            p.target_share,
            p.diversity,
            p.rows_per_image,
            p.seconds_per_image,
            1.0 / p.seconds_per_image
        ));
    }
    out
}
