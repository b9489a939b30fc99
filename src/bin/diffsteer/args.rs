//! Command-line flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use diffsteer::schedule::SchedulerKind;

#[derive(Parser)]
#[command(
    name = "diffsteer",
    version,
    about = "Diffusion sampling that steers every denoising step."
)]
pub struct Cli {
    /// CPU threads to use (default: one per core; also RAYON_NUM_THREADS).
    #[arg(long, global = true, value_parser = parse_positive, allow_negative_numbers = true)]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate images from a diffusers model folder.
    Generate(GenerateArgs),
    /// Check a compute device against the CPU reference and time it.
    Selftest(SelftestArgs),
    /// Time the CPU backend on a model: GEMM ceiling, U-Net forward, sampling.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchedulerArg {
    /// DDIM (deterministic unless --eta > 0).
    Ddim,
    /// DDPM (ancestral, stochastic).
    Ddpm,
    /// Euler (Karras et al. 2022, deterministic).
    Euler,
    /// Euler ancestral (stochastic).
    #[value(name = "euler-a")]
    EulerA,
    /// DPM-Solver++ 2M (multistep, deterministic).
    #[value(name = "dpm++2m")]
    DpmPP2M,
}

impl SchedulerArg {
    pub fn kind(self) -> SchedulerKind {
        match self {
            SchedulerArg::Ddim => SchedulerKind::Ddim,
            SchedulerArg::Ddpm => SchedulerKind::Ddpm,
            SchedulerArg::Euler => SchedulerKind::Euler,
            SchedulerArg::EulerA => SchedulerKind::EulerAncestral,
            SchedulerArg::DpmPP2M => SchedulerKind::DpmSolverMultistep,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SchedulerArg::Ddim => "ddim",
            SchedulerArg::Ddpm => "ddpm",
            SchedulerArg::Euler => "euler",
            SchedulerArg::EulerA => "euler-a",
            SchedulerArg::DpmPP2M => "dpm++2m",
        }
    }

    pub fn from_kind(kind: SchedulerKind) -> Self {
        match kind {
            SchedulerKind::Ddim => SchedulerArg::Ddim,
            SchedulerKind::Ddpm => SchedulerArg::Ddpm,
            SchedulerKind::Euler => SchedulerArg::Euler,
            SchedulerKind::EulerAncestral => SchedulerArg::EulerA,
            SchedulerKind::DpmSolverMultistep => SchedulerArg::DpmPP2M,
        }
    }
}

/// `--class N` or `--class none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassArg {
    Label(usize),
    Unconditional,
}

fn parse_class(s: &str) -> Result<ClassArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(ClassArg::Unconditional);
    }
    s.parse::<i64>()
        .ok()
        .filter(|&n| n >= 0)
        .map(|n| ClassArg::Label(n as usize))
        .ok_or_else(|| "expected a class number (0, 1, ...) or `none`".to_string())
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n as usize),
        Ok(n) => Err(format!("must be at least 1, got {n}")),
        Err(_) => Err("expected a whole number ≥ 1".to_string()),
    }
}

fn parse_seed(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("expected a whole number in 0..={}", u64::MAX))
}

fn parse_finite(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err("expected a finite number".to_string()),
    }
}

fn parse_unit(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("expected a number in [0, 1]".to_string()),
    }
}

fn parse_non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a number ≥ 0".to_string()),
    }
}

/// `START:STOP` in steps (0-based, STOP exclusive; either side may be empty).
fn parse_interval(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| "expected START:STOP (steps, stop exclusive), e.g. 0:30".to_string())?;
    let start = if a.is_empty() {
        Ok(0)
    } else {
        a.parse::<usize>()
    }
    .map_err(|_| format!("bad start {a:?}"))?;
    let stop = if b.is_empty() {
        Ok(usize::MAX)
    } else {
        b.parse::<usize>()
    }
    .map_err(|_| format!("bad stop {b:?}"))?;
    if start > stop {
        return Err(format!("start {start} is after stop {stop}"));
    }
    Ok((start, stop))
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// diffusers model folder (config.json + diffusion_pytorch_model.safetensors,
    /// optional scheduler_config.json) or a pipeline folder with unet/.
    #[arg(long, value_name = "DIR", default_value = "weights/digits")]
    pub model: PathBuf,

    /// Class to generate, or `none` for unconditional samples. Default: cycle through
    /// all classes (sample i gets class i mod classes). Class models only.
    #[arg(long, value_name = "N|none", value_parser = parse_class)]
    pub class: Option<ClassArg>,

    /// Number of images.
    #[arg(long, value_name = "N", default_value = "16", value_parser = parse_positive, allow_negative_numbers = true)]
    pub count: usize,

    /// Images per model call (memory and speed only: results do not depend on it).
    #[arg(long, value_name = "N", default_value = "16", value_parser = parse_positive, allow_negative_numbers = true)]
    pub batch: usize,

    /// Denoising steps.
    #[arg(long, value_name = "N", default_value = "50", value_parser = parse_positive, allow_negative_numbers = true)]
    pub steps: usize,

    /// Scheduler. Default: the class named in the model's scheduler config, else ddim.
    /// Its settings (betas, prediction type, spacing...) always come from the config.
    #[arg(long, value_enum, value_name = "NAME")]
    pub scheduler: Option<SchedulerArg>,

    /// Use Karras sigmas (euler, dpm++2m), overriding the config's use_karras_sigmas.
    #[arg(long)]
    pub karras: bool,

    /// DDIM eta: 0 is deterministic DDIM, 1 is DDPM-like.
    #[arg(long, value_name = "ETA", default_value = "0", value_parser = parse_non_negative, allow_negative_numbers = true)]
    pub eta: f64,

    /// Classifier-free guidance scale (1 = no guidance).
    #[arg(long, value_name = "S", default_value = "3", value_parser = parse_finite, allow_negative_numbers = true)]
    pub cfg: f32,

    /// Guidance rescale φ in [0, 1] (std-ratio rescale toward the conditional prediction).
    #[arg(long = "cfg-rescale", value_name = "PHI", default_value = "0", value_parser = parse_unit, allow_negative_numbers = true)]
    pub cfg_rescale: f32,

    /// Apply CFG only on steps START..STOP (0-based, STOP exclusive), e.g. 0:30.
    #[arg(long = "cfg-interval", value_name = "START:STOP", value_parser = parse_interval)]
    pub cfg_interval: Option<(usize, usize)>,

    /// Seed of the first image; image i uses seed + i.
    #[arg(long, value_name = "N", default_value = "0", value_parser = parse_seed, allow_negative_numbers = true)]
    pub seed: u64,

    /// Output folder for NNNNNN.png and metadata.jsonl.
    #[arg(long, value_name = "DIR", default_value = "out")]
    pub out: PathBuf,

    /// Also write all images as one grid PNG.
    #[arg(long, value_name = "FILE.png")]
    pub grid: Option<PathBuf>,

    /// Magnification of the grid's tiles.
    #[arg(long = "grid-scale", value_name = "N", default_value = "1", value_parser = parse_positive, allow_negative_numbers = true)]
    pub grid_scale: usize,

    /// Replace results already in --out (otherwise a folder holding metadata.jsonl is refused).
    #[arg(long)]
    pub overwrite: bool,

    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,

    /// Where the model runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The CPU backend (all cores).
    Cpu,
    /// GPU 0 through the CUDA backend (binaries built with `--features cuda`).
    Cuda,
}

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// Device to check against the CPU reference.
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: DeviceArg,

    /// Model folders whose whole U-Net forward is also compared (repeatable).
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model folder to time (class-conditional or unconditional U-Nets).
    #[arg(long, value_name = "DIR", default_value = "weights/digits")]
    pub model: PathBuf,

    /// Batch of the timed U-Net forward (sampling uses half of it, doubled by CFG).
    #[arg(long, value_name = "N", default_value = "32", value_parser = parse_positive, allow_negative_numbers = true)]
    pub batch: usize,

    /// Steps of the timed sampling run.
    #[arg(long, value_name = "N", default_value = "20", value_parser = parse_positive, allow_negative_numbers = true)]
    pub steps: usize,

    /// Scheduler of the timed sampling run (default: the model's).
    #[arg(long, value_enum, value_name = "NAME")]
    pub scheduler: Option<SchedulerArg>,

    /// Timed repetitions (the median is reported).
    #[arg(long, value_name = "N", default_value = "10", value_parser = parse_positive, allow_negative_numbers = true)]
    pub iters: usize,
}
