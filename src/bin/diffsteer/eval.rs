//! `diffsteer eval`: sweeps one alignment setting. For every value and every target
//! class D it samples `--count` images steered by `classifier:D` (plus any other
//! `--reward` terms), then reports per value: the final reward (mean, std), the
//! share the guiding classifier reads as D, diversity, model rows and wall time per
//! image. Writes eval.csv, eval.png (reward vs. time per image) and one grid per
//! value (a row per target).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use diffsteer::fsutil::write_atomic;
use diffsteer::image::Image8;
use diffsteer::pipeline::{drive, Engine, Feed, Plan, Request};

use crate::args::{AlignArgs, EvalArgs, PotentialArg, RewardFormArg, RhoScheduleArg, SteerArg};
use crate::engine_flags::{
    apply_alignment, check_classifier_flag, class_choice, engine_error, open_engine,
};
use crate::eval_chart::{eval_chart_png, EvalChartPoint};
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

pub(crate) fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Mean pairwise root-mean-square distance between the samples of one group.
pub(crate) fn diversity(samples: &[Vec<f32>]) -> Option<f64> {
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

/// Creates the output folder; one already holding `table` is refused without
/// `--overwrite`.
pub(crate) fn prepare_out(dir: &Path, table: &str, overwrite: bool) -> Result<(), CliError> {
    if dir.join(table).exists() && !overwrite {
        return Err(usage(
            "--out",
            format!(
                "{} already holds {table}; choose another folder or pass --overwrite",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| usage("--out", format!("cannot create {}: {e}", dir.display())))
}

pub fn run(args: &EvalArgs, threads: Option<usize>) -> Result<(), CliError> {
    if let Some(methods) = &args.methods {
        return crate::eval_methods::run(args, &methods.0, threads);
    }
    let sweep = args.sweep.as_ref().ok_or_else(|| {
        usage(
            "--sweep",
            "give --sweep KEY=V1,V2,... or --methods M1,M2,...",
        )
    })?;
    check_classifier_flag(&args.align)?;
    let engine = open_engine(
        &args.model,
        &args.target,
        threads,
        args.align.classifier.clone(),
    )?;
    let shape = engine.sample_shape();
    let classifier = engine
        .rewards()
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
                engine.rewards().classifier_dir.display(),
                classifier.num_classes() - 1
            ),
        ));
    }
    // Every setting and target is validated before any sampling, so bad input costs
    // nothing.
    let mut settings = Vec::new();
    for value in &sweep.values {
        let flags = with_setting(&args.align, &sweep.key, value)?;
        let plans = targets
            .iter()
            .map(|&target| {
                engine
                    .prepare(&request_for(args, &flags, target))
                    .map_err(engine_error)
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        settings.push((value.clone(), plans));
    }
    prepare_out(&args.out, "eval.csv", args.overwrite)?;

    let mut points = Vec::new();
    for (p, (value, plans)) in settings.iter().enumerate() {
        let sampled = sample_plans(&engine, plans, args.batch)?;
        let seconds = sampled.seconds;
        let mut rewards = Vec::new();
        let mut hits = 0usize;
        let mut diversities = Vec::new();
        let mut tiles = Vec::new();
        for (t, images) in sampled.images.into_iter().enumerate() {
            let samples: Vec<Vec<f32>> = images.iter().map(|(_, x)| x.clone()).collect();
            rewards.extend(images.iter().map(|(r, _)| *r as f64));
            let flat: Vec<f32> = samples.iter().flatten().copied().collect();
            hits += engine
                .install(|| classifier.predict(&flat))?
                .iter()
                .filter(|&&c| c == targets[t])
                .count();
            diversities.extend(diversity(&samples));
            for x in samples.iter().take(10) {
                tiles.push(Image8::from_model_space(
                    x,
                    shape.height,
                    shape.width,
                    shape.channels,
                )?);
            }
        }
        if !args.quiet {
            eprintln!(
                "[{}/{}] {}={value}: {} targets × {} images in {seconds:.1} s ({:.1} samples per model call)",
                p + 1,
                settings.len(),
                sweep.key,
                targets.len(),
                args.count,
                sampled.slots_per_call
            );
        }
        let images = (targets.len() * args.count) as f64;
        let (mean_reward, std_reward) = mean_std(&rewards);
        points.push(Point {
            value: value.clone(),
            mean_reward,
            std_reward,
            target_share: hits as f64 / images,
            diversity: mean_std(&diversities).0,
            rows_per_image: sampled.rows as f64 / images,
            seconds_per_image: seconds / images,
        });
        let grid = Image8::grid(&tiles, args.count.min(10), 2, 2)?;
        write_atomic(
            &args.out.join(format!("grid-{}-{value}.png", sweep.key)),
            &grid.encode_png()?,
        )?;
    }

    print_table(&sweep.key, &points);
    write_atomic(
        &args.out.join("eval.csv"),
        csv(&sweep.key, &points).as_bytes(),
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
        &eval_chart_png(&sweep.key, &chart)?,
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

/// What sampling a list of plans gave.
pub(crate) struct Sampled {
    /// Per plan, in image order: the final reward (NaN without one) and the sample.
    pub images: Vec<Vec<(f32, Vec<f32>)>>,
    /// Wall time of the sampling.
    pub seconds: f64,
    /// Model rows (CFG's unconditional rows and particles included).
    pub rows: u64,
    pub slots_per_call: f64,
}

/// Samples every image of `plans`, one plan after another, `batch` images (times
/// their particles) per model call.
pub(crate) fn sample_plans(
    engine: &Engine,
    plans: &[Arc<Plan>],
    batch: usize,
) -> Result<Sampled, CliError> {
    let particles = plans.iter().map(|plan| plan.particles()).max().unwrap_or(1);
    let mut runner = engine
        .runner::<usize>(batch.saturating_mul(particles))
        .map_err(engine_error)?;
    let started = Instant::now();
    let mut finals: Vec<Vec<(u64, f32, Vec<f32>)>> = vec![Vec::new(); plans.len()];
    let mut feed = PlansFeed::new(plans);
    engine
        .with_workers(|| {
            drive(
                &mut runner,
                &mut feed,
                &mut |done| {
                    let image = done.result?;
                    finals[done.tag].push((
                        done.index,
                        image.output.reward.unwrap_or(f32::NAN),
                        image.output.data,
                    ));
                    Ok(())
                },
                &mut |_| {},
            )
        })
        .map_err(engine_error)?;
    let seconds = started.elapsed().as_secs_f64();
    let images = finals
        .into_iter()
        .map(|mut images| {
            images.sort_by_key(|(index, _, _)| *index);
            images.into_iter().map(|(_, r, x)| (r, x)).collect()
        })
        .collect();
    Ok(Sampled {
        images,
        seconds,
        rows: runner.stats().rows,
        slots_per_call: runner.stats().mean_slots_per_call(),
    })
}

/// The request of one target under one setting: `classifier:D` first, then the
/// user's reward terms, with the sweep's alignment flags.
fn request_for(args: &EvalArgs, flags: &AlignArgs, target: usize) -> Request {
    let mut request = Request {
        count: args.count as u64,
        seed: args.seed,
        class: Some(class_choice(args.class)),
        steps: args.steps,
        scheduler: args.scheduler.map(|s| s.kind()),
        eta: args.eta,
        cfg: args.cfg,
        ..Request::default()
    };
    apply_alignment(&mut request, flags);
    request.reward.insert(0, format!("classifier:{target}"));
    request
}

/// The images of several plans, tagged with the plan's position, one plan after
/// another.
struct PlansFeed<'a> {
    plans: &'a [Arc<Plan>],
    current: usize,
    next: u64,
}

impl<'a> PlansFeed<'a> {
    fn new(plans: &'a [Arc<Plan>]) -> Self {
        PlansFeed {
            plans,
            current: 0,
            next: 0,
        }
    }
}

impl Feed<usize> for PlansFeed<'_> {
    fn next_sample(&mut self, free_slots: usize) -> Option<(Arc<Plan>, u64, usize)> {
        while let Some(plan) = self.plans.get(self.current) {
            if self.next < plan.count() {
                if plan.particles() > free_slots {
                    return None;
                }
                self.next += 1;
                return Some((plan.clone(), self.next - 1, self.current));
            }
            self.current += 1;
            self.next = 0;
        }
        None
    }
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
