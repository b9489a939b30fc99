//! `diffsteer eval --methods`: one table of the trade-offs between alignment methods.
//! Each method is a preset of `generate` flags (one line of [`METHODS`]), run for
//! every target class D with the same seeds; every method's final images are then
//! judged alike, whatever steered them: the share read as the target and the reward
//! log p(D | x) by the shipped classifier, a realism number (the Fréchet distance of
//! the classifier's penultimate features to those of real digits, shipped beside it
//! as `real-features.safetensors`), diversity, and compute (model rows and seconds
//! per image). Writes methods.csv, methods.png and one grid per method.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use diffsteer::frechet::{frechet_distance, Gaussian};
use diffsteer::fsutil::write_atomic;
use diffsteer::image::Image8;
use diffsteer::pipeline::{Plan, Request};
use diffsteer::reward::classifier::Readout;
use diffsteer::reward::Classifier;

use crate::args::{Cli, Command, EvalArgs};
use crate::engine_flags::{engine_error, open_engine};
use crate::eval::{diversity, mean_std, prepare_out, sample_plans};
use crate::eval_methods_chart::{methods_chart_png, MethodPoint};
use crate::usage_error::{usage, CliError};

/// What a method is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Drawing the target class D (`{D}` in the flags), once per target.
    Reach,
    /// Not drawing class K (`NAME:K`; `{K}` in the flags): unconditional samples.
    Avoid,
}

/// A named preset of `generate` flags.
#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub goal: Goal,
    pub flags: &'static str,
}

const fn method(name: &'static str, goal: Goal, flags: &'static str) -> Method {
    Method { name, goal, flags }
}

/// The presets; adding one is one line (and a line of `--methods`' help).
pub const METHODS: &[Method] = &[
    method("cfg", Goal::Reach, "--class {D} --cfg 3"),
    method(
        "apg",
        Goal::Reach,
        "--class {D} --cfg 5 --guidance apg --apg-eta 0 --apg-norm-threshold 6 --apg-momentum -0.5",
    ),
    method(
        "cfg-zero-star",
        Goal::Reach,
        "--class {D} --cfg 3 --guidance cfg-zero-star --zero-init-steps 1",
    ),
    method(
        "reward",
        Goal::Reach,
        "--class none --reward classifier:{D}",
    ),
    method(
        "fk4",
        Goal::Reach,
        "--class none --reward classifier:{D} --particles 4 --steer fk",
    ),
    method(
        "best-of-4",
        Goal::Reach,
        "--class none --reward classifier:{D} --reward-scale 0 --particles 4 --steer best-of-n",
    ),
    method("avoid", Goal::Avoid, "--class none --reward avoid:{K}"),
    method(
        "realism",
        Goal::Reach,
        "--class {D} --cfg 3 --reward realism",
    ),
];

/// One entry of `--methods`: a preset and, for an avoiding one, its class.
#[derive(Debug, Clone)]
pub struct MethodSpec {
    pub method: &'static Method,
    pub class: Option<usize>,
}

impl MethodSpec {
    /// As written on the command line (`avoid:7`).
    pub fn label(&self) -> String {
        match self.class {
            Some(k) => format!("{}:{k}", self.method.name),
            None => self.method.name.to_string(),
        }
    }

    /// The preset's flags for target `d` (ignored by an avoiding method).
    fn flags_for(&self, d: usize) -> String {
        let k = self.class.map_or_else(String::new, |k| k.to_string());
        self.method
            .flags
            .replace("{D}", &d.to_string())
            .replace("{K}", &k)
    }
}

/// `--methods`: the list as given, every name a preset.
#[derive(Debug, Clone)]
pub struct MethodList(pub Vec<MethodSpec>);

fn method_names() -> String {
    METHODS
        .iter()
        .map(|m| match m.goal {
            Goal::Reach => m.name.to_string(),
            Goal::Avoid => format!("{}:K", m.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn parse_methods(s: &str) -> Result<MethodList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, arg) = match part.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (part, None),
        };
        let method = METHODS
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| format!("unknown method {part:?} (accepted: {})", method_names()))?;
        let class = match (method.goal, arg) {
            (Goal::Reach, None) => None,
            (Goal::Reach, Some(_)) => {
                return Err(format!("{name} takes no argument (in {part:?})"));
            }
            (Goal::Avoid, Some(k)) => Some(k.parse::<usize>().map_err(|_| {
                format!("{part:?}: expected {name}:K with K a class number, e.g. {name}:7")
            })?),
            (Goal::Avoid, None) => {
                return Err(format!("{name} needs the class to avoid, e.g. {name}:7"));
            }
        };
        out.push(MethodSpec { method, class });
    }
    if out.is_empty() {
        return Err(format!("no methods given (accepted: {})", method_names()));
    }
    Ok(MethodList(out))
}

/// The request of `generate` with a preset's flags for target `d`, eval's count,
/// seed, steps, scheduler and eta, and `count` images.
fn request_for(
    args: &EvalArgs,
    spec: &MethodSpec,
    d: usize,
    count: usize,
) -> Result<Request, CliError> {
    let mut argv: Vec<String> = ["diffsteer", "generate"].map(String::from).to_vec();
    argv.extend(spec.flags_for(d).split_whitespace().map(String::from));
    argv.extend([
        "--count".into(),
        count.to_string(),
        "--seed".into(),
        args.seed.to_string(),
        "--steps".into(),
        args.steps.to_string(),
    ]);
    if let Some(scheduler) = args.scheduler.and_then(|s| s.to_possible_value()) {
        argv.extend(["--scheduler".into(), scheduler.get_name().to_string()]);
    }
    if let Some(eta) = args.eta {
        argv.extend(["--eta".into(), eta.to_string()]);
    }
    match Cli::try_parse_from(&argv) {
        Ok(Cli {
            command: Command::Generate(generate),
            ..
        }) => Ok(crate::generate::request_of(&generate)),
        Ok(_) => Err(usage(
            "--methods",
            "internal error: a preset is not a generate command",
        )),
        Err(e) => Err(usage(
            "--methods",
            format!(
                "{}: the preset {:?} does not parse: {e}",
                spec.label(),
                argv[2..].join(" ")
            ),
        )),
    }
}

/// One row of the table.
struct Row {
    label: String,
    flags: String,
    images: usize,
    target_share: f64,
    mean_reward: f64,
    std_reward: f64,
    realism_fd: f64,
    diversity: f64,
    rows_per_image: f64,
    seconds_per_image: f64,
}

/// Where the real-digit feature statistics live: beside the feature classifier.
pub const REAL_FEATURES: &str = "real-features.safetensors";

pub fn run(
    args: &EvalArgs,
    methods: &[MethodSpec],
    threads: Option<usize>,
) -> Result<(), CliError> {
    let engine = open_engine(
        &args.model,
        &args.target,
        threads,
        args.align.classifier.clone(),
    )?;
    let shape = engine.sample_shape();
    // Target shares and rewards are read by the reward model (an ensemble by
    // default); realism by the features of its first member, whose real-digit
    // statistics are shipped beside it.
    let reward_model = engine
        .rewards()
        .classifier()
        .map_err(|e| usage("--classifier", e))?;
    let classifier = reward_model
        .members()
        .first()
        .cloned()
        .ok_or_else(|| usage("--classifier", "the reward model lists no classifier"))?;
    let classes = reward_model.num_classes();
    let targets = args
        .targets
        .clone()
        .map(|t| t.0)
        .unwrap_or_else(|| (0..classes).collect());
    if let Some(&t) = targets.iter().find(|&&t| t >= classes) {
        return Err(usage(
            "--targets",
            format!("{t} is not a class of the classifier (0..={})", classes - 1),
        ));
    }
    if let Some(spec) = methods
        .iter()
        .find(|m| m.class.is_some_and(|k| k >= classes))
    {
        return Err(usage(
            "--methods",
            format!(
                "{}: not a class of the classifier (0..={})",
                spec.label(),
                classes - 1
            ),
        ));
    }
    let stats_path: PathBuf = classifier.dir().join(REAL_FEATURES);
    let real = Gaussian::load(&stats_path).map_err(|e| {
        usage(
            "--classifier",
            format!(
                "the realism column needs the real-image feature statistics beside the \
                 classifier (tools/make_digit_feature_stats.py writes them): {e}"
            ),
        )
    })?;
    let features = classifier.feature_count()?;
    if features != real.dim {
        return Err(usage(
            "--classifier",
            format!(
                "{} holds statistics of {} features; the classifier has {features}",
                stats_path.display(),
                real.dim
            ),
        ));
    }
    // Every preset is built and validated before any sampling.
    let mut runs = Vec::new();
    for spec in methods {
        let requests = match spec.method.goal {
            Goal::Reach => targets
                .iter()
                .map(|&d| Ok((Some(d), request_for(args, spec, d, args.count)?)))
                .collect::<Result<Vec<_>, CliError>>()?,
            // As many images as a reaching method makes, from one unconditional run.
            Goal::Avoid => vec![(
                None,
                request_for(args, spec, 0, args.count * targets.len())?,
            )],
        };
        let plans = requests
            .iter()
            .map(|(_, r)| engine.prepare(r).map_err(engine_error))
            .collect::<Result<Vec<Arc<Plan>>, CliError>>()?;
        let goals: Vec<Option<usize>> = requests.iter().map(|(d, _)| *d).collect();
        runs.push((spec, goals, plans));
    }
    prepare_out(&args.out, "methods.csv", args.overwrite)?;

    let mut rows = Vec::new();
    for (m, (spec, goals, plans)) in runs.iter().enumerate() {
        let sampled = sample_plans(&engine, plans, args.batch)?;
        let mut all = Vec::new();
        let mut hits = 0usize;
        let mut rewards = Vec::new();
        let mut groups: Vec<Vec<Vec<f32>>> = Vec::new();
        let mut tiles = Vec::new();
        for (goal, images) in goals.iter().zip(&sampled.images) {
            let samples: Vec<Vec<f32>> = images
                .iter()
                .map(|(_, x)| clamp_to_input(&classifier, x))
                .collect();
            let flat: Vec<f32> = samples.iter().flatten().copied().collect();
            let predicted = engine.install(|| reward_model.predict(&flat))?;
            let readouts: Vec<Readout> = match (goal, spec.class) {
                (Some(d), _) => vec![Readout::LogProb(*d); samples.len()],
                (None, Some(k)) => vec![Readout::LogNotProb(k); samples.len()],
                (None, None) => Vec::new(),
            };
            let values =
                engine.install(|| reward_model.readout_and_grad(&flat, &readouts, None))?;
            rewards.extend(values.iter().map(|&v| v as f64));
            match (goal, spec.class) {
                (Some(d), _) => {
                    hits += predicted.iter().filter(|&&c| c == *d).count();
                    groups.push(samples.clone());
                }
                (None, k) => {
                    hits += predicted.iter().filter(|&&c| Some(c) != k).count();
                    // Diversity among images of the same class, as for the targets.
                    for c in 0..classes {
                        groups.push(
                            samples
                                .iter()
                                .zip(&predicted)
                                .filter(|(_, &p)| p == c)
                                .map(|(x, _)| x.clone())
                                .collect(),
                        );
                    }
                }
            }
            // Ten per target; a single unconditional run shows ten rows of ten.
            let shown = if goals.len() > 1 { 10 } else { 100 };
            for x in samples.iter().take(shown) {
                tiles.push(Image8::from_model_space(
                    x,
                    shape.height,
                    shape.width,
                    shape.channels,
                )?);
            }
            all.extend(flat);
        }
        let images = all.len() / shape.len().max(1);
        let feats = engine.install(|| classifier.features(&all))?;
        let realism_fd = frechet_distance(&Gaussian::from_samples(&feats, features)?, &real)?;
        let diversities: Vec<f64> = groups.iter().filter_map(|g| diversity(g)).collect();
        let (mean_reward, std_reward) = mean_std(&rewards);
        let row = Row {
            label: spec.label(),
            flags: spec.method.flags.replace("{D}", "D").replace(
                "{K}",
                &spec.class.map_or_else(String::new, |k| k.to_string()),
            ),
            images,
            target_share: hits as f64 / images.max(1) as f64,
            mean_reward,
            std_reward,
            realism_fd,
            // Undefined where no two images share a target (or a class).
            diversity: if diversities.is_empty() {
                f64::NAN
            } else {
                mean_std(&diversities).0
            },
            rows_per_image: sampled.rows as f64 / images.max(1) as f64,
            seconds_per_image: sampled.seconds / images.max(1) as f64,
        };
        if !args.quiet {
            eprintln!(
                "[{}/{}] {}: {images} images in {:.1} s, target share {:.1}%, FD {:.2}",
                m + 1,
                runs.len(),
                row.label,
                sampled.seconds,
                100.0 * row.target_share,
                row.realism_fd
            );
        }
        let per_row = if goals.len() > 1 {
            args.count.min(10)
        } else {
            10
        };
        let grid = Image8::grid(&tiles, per_row.max(1), 2, 2)?;
        write_atomic(
            &args
                .out
                .join(format!("grid-method-{}.png", row.label.replace(':', "-"))),
            &grid.encode_png()?,
        )?;
        rows.push(row);
    }

    print_table(&rows);
    write_atomic(&args.out.join("methods.csv"), csv(&rows).as_bytes())?;
    let points: Vec<MethodPoint> = rows
        .iter()
        .map(|r| MethodPoint {
            label: r.label.clone(),
            mean_reward: r.mean_reward,
            target_share: r.target_share,
            realism_fd: r.realism_fd,
            seconds_per_image: r.seconds_per_image,
        })
        .collect();
    write_atomic(&args.out.join("methods.png"), &methods_chart_png(&points)?)?;
    if !args.quiet {
        eprintln!(
            "wrote {} and {}",
            args.out.join("methods.csv").display(),
            args.out.join("methods.png").display()
        );
    }
    Ok(())
}

/// The sample as its PNG shows it: clamped to the classifier's input range (the
/// model overshoots it slightly), so the numbers judge what a user sees.
fn clamp_to_input(classifier: &Classifier, x: &[f32]) -> Vec<f32> {
    match classifier.input_range() {
        Some((lo, hi)) => x.iter().map(|v| v.clamp(lo, hi)).collect(),
        None => x.to_vec(),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:>14} {:>12} {:>11} {:>10} {:>8} {:>9} {:>10} {:>9}",
        "method",
        "target share",
        "reward mean",
        "reward std",
        "FD",
        "diversity",
        "rows/image",
        "s/image"
    );
    for r in rows {
        println!(
            "{:>14} {:>11.1}% {:>11.3} {:>10.3} {:>8.3} {:>9.3} {:>10.0} {:>9.3}",
            r.label,
            100.0 * r.target_share,
            r.mean_reward,
            r.std_reward,
            r.realism_fd,
            r.diversity,
            r.rows_per_image,
            r.seconds_per_image
        );
    }
}

const COLUMNS: [&str; 11] = [
    "method",
    "images",
    "target_share",
    "reward_mean",
    "reward_std",
    "realism_fd",
    "diversity",
    "rows_per_image",
    "seconds_per_image",
    "images_per_second",
    "flags",
];

fn csv(rows: &[Row]) -> String {
    let mut out = format!("{}\n", COLUMNS.join(","));
    for r in rows {
        out.push_str(&format!(
            "{},{},{:.4},{:.6},{:.6},{:.6},{:.6},{},{:.6},{:.4},{}\n",
            r.label,
            r.images,
            r.target_share,
            r.mean_reward,
            r.std_reward,
            r.realism_fd,
            r.diversity,
            r.rows_per_image,
            r.seconds_per_image,
            1.0 / r.seconds_per_image,
            r.flags
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_a_valid_generate_command() {
        for m in METHODS {
            let spec = MethodSpec {
                method: m,
                class: (m.goal == Goal::Avoid).then_some(7),
            };
            let flags = spec.flags_for(3);
            assert!(!flags.contains('{'), "{flags}");
            let argv: Vec<&str> = ["diffsteer", "generate"]
                .into_iter()
                .chain(flags.split_whitespace())
                .collect();
            assert!(Cli::try_parse_from(&argv).is_ok(), "{}: {flags}", m.name);
        }
    }

    #[test]
    fn method_lists_parse_and_unknown_names_list_the_valid_ones() {
        let list = parse_methods("cfg, fk4,avoid:7").expect("parses");
        let labels: Vec<String> = list.0.iter().map(MethodSpec::label).collect();
        assert_eq!(labels, ["cfg", "fk4", "avoid:7"]);
        let message = parse_methods("cfg,sharpest").expect_err("unknown");
        assert!(message.contains("\"sharpest\""), "{message}");
        for name in [
            "cfg",
            "apg",
            "cfg-zero-star",
            "reward",
            "fk4",
            "best-of-4",
            "avoid:K",
        ] {
            assert!(message.contains(name), "{name} missing: {message}");
        }
        assert!(parse_methods("avoid").is_err());
        assert!(parse_methods("avoid:x").is_err());
        assert!(parse_methods("cfg:3").is_err());
        assert!(parse_methods(",").is_err());
    }
}
