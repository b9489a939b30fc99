//! Command-line flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use diffsteer::schedule::SchedulerKind;
use diffsteer::tensor::Precision;

#[derive(Parser)]
#[command(
    name = "diffsteer",
    version,
    about = "Diffusion sampling that steers every denoising step."
)]
pub struct Cli {
    /// CPU threads to use (default: one per core; also RAYON_NUM_THREADS).
    #[arg(long, global = true, value_parser = parse_threads, allow_negative_numbers = true)]
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
    /// Time a backend on a model: GEMM ceiling, U-Net forward, sampling per batch size.
    Bench(BenchArgs),
    /// Sweep an alignment setting, or compare methods (--methods), and report reward,
    /// target share, diversity and time per image as a table, CSV and plot.
    Eval(EvalArgs),
    /// Run a JSONL file of requests (one per line) with continuous batching:
    /// resumable, shardable, nothing lost.
    Batch(BatchArgs),
    /// Serve requests over HTTP with continuous batching across requests and steps.
    Serve(ServeArgs),
    /// Show how a pipeline's CLIP tokenizer splits a prompt: each token's id and
    /// text, then the padded ids as a JSON array on the last line.
    Tokenize(TokenizeArgs),
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

/// Most images of one `generate` or `eval` run (`generate` names its files with six
/// digits, 000000.png to 999999.png).
pub const MAX_IMAGES: usize = 1_000_000;
/// Most CPU threads `--threads` starts.
pub const MAX_THREADS: usize = 4096;
/// Largest `--grid-scale` (the grid's tiles are that many times the image size).
pub const MAX_GRID_SCALE: usize = 64;
/// Most target classes of one `eval` run.
pub const MAX_TARGETS: usize = 1024;

/// A whole number in `1..=max`.
fn parse_at_most(s: &str, max: usize) -> Result<usize, String> {
    match s.parse::<i128>() {
        Ok(n) if n >= 1 && n <= max as i128 => Ok(n as usize),
        Ok(n) if n < 1 => Err(format!("must be at least 1, got {n}")),
        Ok(n) => Err(format!("must be at most {max}, got {n}")),
        Err(_) => Err(format!("expected a whole number from 1 to {max}")),
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    parse_at_most(s, MAX_IMAGES)
}

fn parse_threads(s: &str) -> Result<usize, String> {
    parse_at_most(s, MAX_THREADS)
}

fn parse_grid_scale(s: &str) -> Result<usize, String> {
    parse_at_most(s, MAX_GRID_SCALE)
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

fn parse_unit_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
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

fn parse_non_negative_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
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

    /// The prompt (text-to-image pipeline folders).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,

    /// The prompt CFG steers away from (default: the empty prompt, as diffusers).
    #[arg(long = "negative-prompt", value_name = "TEXT")]
    pub negative_prompt: Option<String>,

    /// Image width in pixels (text pipelines; default: the U-Net's sample size × the
    /// VAE's factor).
    #[arg(long, value_name = "W", value_parser = parse_positive, allow_negative_numbers = true)]
    pub width: Option<usize>,

    /// Image height in pixels (text pipelines).
    #[arg(long, value_name = "H", value_parser = parse_positive, allow_negative_numbers = true)]
    pub height: Option<usize>,

    /// Text-encoder layer that conditions the U-Net, as other front ends count it:
    /// 1 = the last (default), 2 = the penultimate (diffusers' clip_skip=1), ...
    #[arg(long = "clip-skip", value_name = "N", value_parser = parse_positive, allow_negative_numbers = true)]
    pub clip_skip: Option<usize>,

    /// img2img: start from this PNG (its size must be the image size).
    #[arg(long = "init-image", value_name = "FILE.png")]
    pub init_image: Option<PathBuf>,

    /// img2img: the share of the schedule that reshapes the image, in (0, 1]
    /// (default 0.8, as diffusers).
    #[arg(long, value_name = "S", value_parser = parse_unit_f64, allow_negative_numbers = true)]
    pub strength: Option<f64>,

    /// Number of images (at most 1000000).
    #[arg(long, value_name = "N", default_value = "16", value_parser = parse_count, allow_negative_numbers = true)]
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

    /// DDIM eta: 0 is deterministic DDIM, 1 is DDPM-like. Default 0, or 1 with
    /// `--steer fk` (resampled particles need fresh noise to tell copies apart).
    #[arg(long, value_name = "ETA", value_parser = parse_non_negative, allow_negative_numbers = true)]
    pub eta: Option<f64>,

    /// Classifier-free guidance scale (1 = no guidance).
    #[arg(long, value_name = "S", default_value = "3", value_parser = parse_finite, allow_negative_numbers = true)]
    pub cfg: f32,

    /// Guidance rescale φ in [0, 1] (std-ratio rescale toward the conditional prediction).
    #[arg(long = "cfg-rescale", value_name = "PHI", default_value = "0", value_parser = parse_unit, allow_negative_numbers = true)]
    pub cfg_rescale: f32,

    /// Apply CFG only on steps START..STOP (0-based, STOP exclusive), e.g. 0:30.
    #[arg(long = "cfg-interval", value_name = "START:STOP", value_parser = parse_interval, allow_hyphen_values = true)]
    pub cfg_interval: Option<(usize, usize)>,

    /// How the predictions are combined: cfg, apg (adaptive projected guidance) or
    /// cfg-zero-star (CFG-Zero*), each as diffusers' guider of that name.
    #[arg(long, value_enum, value_name = "METHOD", default_value = "cfg")]
    pub guidance: GuidanceArg,

    /// APG: weight η of the update's part parallel to the conditional prediction
    /// (default 1; 0 drops it).
    #[arg(long = "apg-eta", value_name = "ETA", value_parser = parse_finite, allow_negative_numbers = true)]
    pub apg_eta: Option<f32>,

    /// APG: cap on the update's L2 norm over the sample (default 15; 0: none).
    #[arg(long = "apg-norm-threshold", value_name = "R", value_parser = parse_non_negative_f32, allow_negative_numbers = true)]
    pub apg_norm_threshold: Option<f32>,

    /// APG: momentum β of the update's running average (default 0: none; the APG
    /// paper uses −0.5).
    #[arg(long = "apg-momentum", value_name = "BETA", value_parser = parse_finite, allow_negative_numbers = true)]
    pub apg_momentum: Option<f32>,

    /// CFG-Zero*: steps whose prediction is zero (default 1).
    #[arg(long = "zero-init-steps", value_name = "N", value_parser = parse_whole, allow_negative_numbers = true)]
    pub zero_init_steps: Option<usize>,

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
    #[arg(long = "grid-scale", value_name = "N", default_value = "1", value_parser = parse_grid_scale, allow_negative_numbers = true)]
    pub grid_scale: usize,

    /// Replace results already in --out (otherwise a folder holding metadata.jsonl is refused).
    #[arg(long)]
    pub overwrite: bool,

    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,

    #[command(flatten)]
    pub target: TargetArgs,

    #[command(flatten)]
    pub align: AlignArgs,
}

/// Inference-time alignment: reward guidance and particle steering.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Alignment")]
pub struct AlignArgs {
    /// Reward to steer toward, NAME:ARG[@WEIGHT]; repeat to sum several.
    /// `classifier:D` = log p(D | x0) under --classifier; `avoid:D` = log(1 - p(D | x0));
    /// `ink:T` = mean ink fraction close to T in [0, 1]; `realism` = log-odds that x0 is
    /// real rather than the model's own (the discriminator `realism/` next to the
    /// classifier folder, else weights/realism). Turns on reward-gradient guidance.
    #[arg(long = "reward", value_name = "SPEC")]
    pub rewards: Vec<String>,

    /// Classifier folder (or ensemble folder) of `classifier:` and `avoid:` rewards.
    /// Default: the ensemble `digit-reward` next to the model folder, else
    /// `digit-classifier` there.
    #[arg(long, value_name = "DIR")]
    pub classifier: Option<PathBuf>,

    /// Guidance step size: ρ, the RMS change per pixel of x0 per step (x0 form), or
    /// s (eps form). 0 = no gradient (particles only). Default 0.6 (x0 form, with the
    /// `noise` schedule; the eps form needs it given).
    #[arg(long = "reward-scale", value_name = "S", value_parser = parse_non_negative_f32, allow_negative_numbers = true)]
    pub reward_scale: Option<f32>,

    /// Where the gradient enters: x0 (shift the x0 estimate) or eps (classifier guidance).
    #[arg(long = "reward-form", value_enum, value_name = "FORM")]
    pub reward_form: Option<RewardFormArg>,

    /// How the x0-form step follows the noise level: `noise` = ρ·√(1−ᾱ_t) (large while
    /// the estimate is blurry, small near the end; the default), `constant` = ρ.
    #[arg(long = "reward-schedule", value_enum, value_name = "S")]
    pub reward_schedule: Option<RhoScheduleArg>,

    /// Steps START:STOP (0-based, stop exclusive) where reward guidance acts.
    /// Default: all but the last tenth of the steps.
    #[arg(long = "reward-window", value_name = "START:STOP", value_parser = parse_interval, allow_hyphen_values = true)]
    pub reward_window: Option<(usize, usize)>,

    /// Gradient evaluations per step (x0 form). Default 1.
    #[arg(long = "reward-iters", value_name = "N", value_parser = parse_positive, allow_negative_numbers = true)]
    pub reward_iters: Option<usize>,

    /// Use the raw gradient instead of the RMS-normalised one (x0 form).
    #[arg(long = "reward-raw")]
    pub reward_raw: bool,

    /// Recurrence: take each guided step K times, re-noising in between. Default 1.
    #[arg(long, value_name = "K", value_parser = parse_positive, allow_negative_numbers = true)]
    pub recur: Option<usize>,

    /// Particles per image; each written image is the survivor of its own N.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_positive, allow_negative_numbers = true)]
    pub particles: usize,

    /// How particles are steered (default fk when --particles > 1).
    #[arg(long, value_enum, value_name = "METHOD")]
    pub steer: Option<SteerArg>,

    /// Feynman-Kac potential: diff (reward increase; the default), max (best so
    /// far), sum.
    #[arg(long = "fk-potential", value_enum, value_name = "P")]
    pub fk_potential: Option<PotentialArg>,

    /// Feynman-Kac λ: weights are exp(λ·Δφ). Default 10.
    #[arg(long = "fk-lambda", value_name = "L", value_parser = parse_non_negative, allow_negative_numbers = true)]
    pub fk_lambda: Option<f64>,

    /// Resample every K steps. Default 5.
    #[arg(long = "fk-every", value_name = "K", value_parser = parse_positive, allow_negative_numbers = true)]
    pub fk_every: Option<usize>,

    /// Steps START:STOP after which resampling may happen. Default: all.
    #[arg(long = "fk-window", value_name = "START:STOP", value_parser = parse_interval, allow_hyphen_values = true)]
    pub fk_window: Option<(usize, usize)>,

    /// Resample only when the effective sample size drops below N/2.
    #[arg(long = "fk-adaptive")]
    pub fk_adaptive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GuidanceArg {
    /// Classifier-free guidance: uncond + s·(cond − uncond).
    Cfg,
    /// Adaptive projected guidance (APG).
    Apg,
    /// CFG-Zero*: optimally scaled unconditional prediction, zero first steps.
    #[value(name = "cfg-zero-star")]
    CfgZeroStar,
}

fn parse_whole(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| "expected a whole number ≥ 0".to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RewardFormArg {
    /// Shift the x0 estimate along the reward gradient.
    X0,
    /// Classifier guidance: eps ← eps − s·√(1−ᾱ)·∇r.
    Eps,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RhoScheduleArg {
    /// ρ at every guided step.
    Constant,
    /// ρ·√(1−ᾱ_t).
    Noise,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SteerArg {
    /// Keep the particle with the best final reward.
    #[value(name = "best-of-n")]
    BestOfN,
    /// Feynman-Kac steering: resample by potential during sampling.
    Fk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PotentialArg {
    Diff,
    Max,
    Sum,
}

/// `--device cpu` or `--device cuda[:N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// The CPU backend (all cores).
    Cpu,
    /// GPU N through the CUDA backend (binaries built with `--features cuda`).
    Cuda(usize),
}

fn parse_device(s: &str) -> Result<DeviceArg, String> {
    match s {
        "cpu" => Ok(DeviceArg::Cpu),
        "cuda" => Ok(DeviceArg::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
            _ => Err(format!(
                "expected cpu, cuda or cuda:N (N = GPU index), got {s:?}"
            )),
        },
    }
}

fn parse_dtype(s: &str) -> Result<Precision, String> {
    Precision::parse(s).map_err(|_| format!("expected f32, f16 or bf16, got {s:?}"))
}

/// Where the model runs and the element type of its tensors.
#[derive(Args, Debug, Clone, Copy)]
pub struct TargetArgs {
    /// Where the model runs: `cpu` (all cores) or `cuda[:N]` (GPU N, default 0).
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceArg,

    /// Element type of the GPU's weights and activations: f32, f16 or bf16 (kernels
    /// and GEMMs accumulate in f32). The CPU backend computes in f32 only.
    #[arg(long, value_name = "f32|f16|bf16", default_value = "f32", value_parser = parse_dtype)]
    pub dtype: Precision,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// A Stable Diffusion pipeline folder (its `tokenizer/` is used) or a tokenizer
    /// folder.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// The prompt.
    #[arg(value_name = "TEXT", allow_hyphen_values = true)]
    pub text: String,
}

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// GPU to check against the CPU reference: `cuda` or `cuda:N`.
    #[arg(long, value_name = "cuda[:N]", default_value = "cuda", value_parser = parse_device)]
    pub device: DeviceArg,

    /// Element types whose kernels are checked, as a comma list.
    #[arg(long, value_name = "f32,f16,bf16", value_delimiter = ',', value_parser = parse_dtype, default_value = "f32,f16,bf16")]
    pub dtype: Vec<Precision>,

    /// Model folders whose whole U-Net forward is also compared, with a 20-step
    /// sample (class-conditional and unconditional models) and the reward classifier
    /// in a sibling `digit-classifier` folder, if any (repeatable).
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Jobs file: one JSON request per line, keys as `generate`'s long flags with
    /// `-` replaced by `_` (e.g. {"id": "sevens", "class": 7, "count": 100,
    /// "cfg_interval": "0:30"}), plus a required unique "id" and an optional "model".
    #[arg(value_name = "JOBS.jsonl")]
    pub jobs: PathBuf,

    /// Output folder: images/<id>/<index>.png and results.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Model of the jobs that name none.
    #[arg(long, value_name = "DIR", default_value = "weights/digits")]
    pub model: PathBuf,

    /// Most samples in one model call (each particle counts).
    #[arg(long, value_name = "N", default_value = "16", value_parser = parse_positive, allow_negative_numbers = true)]
    pub batch: usize,

    /// Take share K of N of the images (by a fixed hash of id and index), so N
    /// machines together make the whole set: 0/N..N-1/N or 1/N..N/N.
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    pub shard: Option<diffsteer::batch::Shard>,

    /// Run again the images an earlier run recorded as failed.
    #[arg(long = "retry-failed")]
    pub retry_failed: bool,

    /// Run the jobs one after the other, without packing samples of different jobs
    /// into one model call (to measure what packing gains).
    #[arg(long)]
    pub sequential: bool,

    /// Classifier folder (or ensemble folder) of `classifier:` and `avoid:` rewards.
    /// Default: the ensemble `digit-reward` next to the model folder, else
    /// `digit-classifier` there.
    #[arg(long, value_name = "DIR")]
    pub classifier: Option<PathBuf>,

    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,

    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model folder to serve.
    #[arg(long, value_name = "DIR", default_value = "weights/digits")]
    pub model: PathBuf,

    /// Address to listen on (loopback by default).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0: any free port; the log line says which).
    #[arg(long, value_name = "PORT", default_value = "8000")]
    pub port: u16,

    /// Most samples in one model call (each particle counts).
    #[arg(long, value_name = "N", default_value = "16", value_parser = parse_positive, allow_negative_numbers = true)]
    pub batch: usize,

    /// Most requests waiting to start; more are answered 429 with Retry-After.
    #[arg(long = "max-queue", value_name = "N", default_value = "64", value_parser = parse_positive, allow_negative_numbers = true)]
    pub max_queue: usize,

    /// Most images one request may ask for.
    #[arg(long = "max-count", value_name = "N", default_value = "64", value_parser = parse_positive_u64, allow_negative_numbers = true)]
    pub max_count: u64,

    /// Most steps one request may ask for.
    #[arg(long = "max-steps", value_name = "N", default_value = "500", value_parser = parse_positive, allow_negative_numbers = true)]
    pub max_steps: usize,

    /// Most particles per image one request may ask for.
    #[arg(long = "max-particles", value_name = "N", default_value = "16", value_parser = parse_positive, allow_negative_numbers = true)]
    pub max_particles: usize,

    /// Largest request body in bytes (larger: 413).
    #[arg(long = "max-body-bytes", value_name = "N", default_value = "1048576", value_parser = parse_positive, allow_negative_numbers = true)]
    pub max_body_bytes: usize,

    /// Classifier folder (or ensemble folder) of `classifier:` and `avoid:` rewards.
    /// Default: the ensemble `digit-reward` next to the model folder, else
    /// `digit-classifier` there.
    #[arg(long, value_name = "DIR")]
    pub classifier: Option<PathBuf>,

    #[command(flatten)]
    pub target: TargetArgs,
}

fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number ≥ 1".to_string()),
    }
}

fn parse_shard(s: &str) -> Result<diffsteer::batch::Shard, String> {
    diffsteer::batch::Shard::parse(s).map_err(|e| match e {
        diffsteer::Error::InvalidArgument { message, .. } => message,
        other => other.to_string(),
    })
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model to time: a diffusers model folder, or `sd15-shape` (a built-in U-Net
    /// with Stable Diffusion 1.5's architecture and deterministic random weights).
    #[arg(long, value_name = "DIR|sd15-shape", default_value = "weights/digits")]
    pub model: PathBuf,

    /// Images per sampling run, as a comma list: each is timed in turn (with CFG a
    /// model call has twice as many rows). The forward breakdown uses the largest.
    #[arg(long, value_name = "B1,B2,...", default_value = "1,4,16", value_parser = parse_batch_list)]
    pub batch: BatchList,

    /// Steps of each timed sampling run.
    #[arg(long, value_name = "N", default_value = "20", value_parser = parse_positive, allow_negative_numbers = true)]
    pub steps: usize,

    /// Scheduler of the timed sampling runs (default: the model's).
    #[arg(long, value_enum, value_name = "NAME")]
    pub scheduler: Option<SchedulerArg>,

    /// Timed repetitions (the median is reported; sampling runs at most 3).
    #[arg(long, value_name = "N", default_value = "10", value_parser = parse_positive, allow_negative_numbers = true)]
    pub iters: usize,

    /// Sample (latent) height and width. Default: the model's sample_size (64 for
    /// sd15-shape); smaller sizes make big models practical on CPUs.
    #[arg(long, value_name = "N", value_parser = parse_positive, allow_negative_numbers = true)]
    pub size: Option<usize>,

    /// Also write every number as JSON to this file (atomically).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub target: TargetArgs,
}

/// `--batch 1,4,16`: the batch sizes in the order given. A newtype, because clap
/// treats a `Vec<T>` value as repeated occurrences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchList(pub Vec<usize>);

fn parse_batch_list(s: &str) -> Result<BatchList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part.parse::<i64>() {
            Ok(n) if n >= 1 => out.push(n as usize),
            _ => {
                return Err(format!(
                    "{part:?} is not a whole number ≥ 1 (expected a comma list, e.g. 1,4,16)"
                ))
            }
        }
    }
    Ok(BatchList(out))
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// diffusers model folder.
    #[arg(long, value_name = "DIR", default_value = "weights/digits")]
    pub model: PathBuf,

    /// Class the model is conditioned on, or `none`.
    #[arg(long, value_name = "N|none", default_value = "none", value_parser = parse_class)]
    pub class: ClassArg,

    /// Target classes D of the `classifier:D` reward, e.g. `0-9` or `1,3,7`.
    /// Default: every class of the classifier.
    #[arg(long, value_name = "LIST", value_parser = parse_targets)]
    pub targets: Option<Targets>,

    /// The setting to sweep and its values, e.g. `reward-scale=0,0.05,0.1` or
    /// `particles=1,2,4`. Keys: reward-scale, reward-iters, recur, particles,
    /// steer, fk-lambda, fk-every, fk-potential, reward-form, reward-schedule.
    #[arg(long, value_name = "KEY=V1,V2,...", value_parser = parse_sweep, required_unless_present = "methods")]
    pub sweep: Option<Sweep>,

    /// Compare methods instead of sweeping one setting: a comma list of presets of
    /// `generate` flags, each run for every target D (writes methods.csv and
    /// methods.png, with a realism column). Presets (D = the target):
    /// cfg = --class D --cfg 3;
    /// apg = --class D --cfg 5 --guidance apg --apg-eta 0 --apg-norm-threshold 6 --apg-momentum -0.5;
    /// cfg-zero-star = --class D --cfg 3 --guidance cfg-zero-star --zero-init-steps 1;
    /// reward = --class none --reward classifier:D;
    /// fk4 = reward + --particles 4 --steer fk;
    /// best-of-4 = reward + --reward-scale 0 --particles 4 --steer best-of-n;
    /// avoid:K = --class none --reward avoid:K (count × targets images; its target
    /// share is the share not read as K); realism = cfg + --reward realism.
    #[arg(
        long,
        value_name = "M1,M2,...",
        value_parser = crate::eval_methods::parse_methods,
        conflicts_with_all = [
            "sweep", "class", "cfg", "rewards", "reward_scale", "reward_form",
            "reward_schedule", "reward_window", "reward_iters", "reward_raw", "recur",
            "particles", "steer", "fk_potential", "fk_lambda", "fk_every", "fk_window",
            "fk_adaptive",
        ]
    )]
    pub methods: Option<crate::eval_methods::MethodList>,

    /// Images per target and setting (seeds seed, seed+1, ...).
    #[arg(long, value_name = "N", default_value = "20", value_parser = parse_count, allow_negative_numbers = true)]
    pub count: usize,

    /// Images per model call.
    #[arg(long, value_name = "N", default_value = "20", value_parser = parse_positive, allow_negative_numbers = true)]
    pub batch: usize,

    /// Denoising steps.
    #[arg(long, value_name = "N", default_value = "50", value_parser = parse_positive, allow_negative_numbers = true)]
    pub steps: usize,

    /// Scheduler (default: the model's).
    #[arg(long, value_enum, value_name = "NAME")]
    pub scheduler: Option<SchedulerArg>,

    /// DDIM eta (default as in `generate`).
    #[arg(long, value_name = "ETA", value_parser = parse_non_negative, allow_negative_numbers = true)]
    pub eta: Option<f64>,

    /// Classifier-free guidance scale (with --class N).
    #[arg(long, value_name = "S", default_value = "3", value_parser = parse_finite, allow_negative_numbers = true)]
    pub cfg: f32,

    /// First seed.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_seed, allow_negative_numbers = true)]
    pub seed: u64,

    /// Folder for eval.csv, eval.png (methods.csv, methods.png with --methods) and
    /// one grid PNG per setting.
    #[arg(long, value_name = "DIR", default_value = "eval")]
    pub out: PathBuf,

    /// Replace results already in --out.
    #[arg(long)]
    pub overwrite: bool,

    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,

    #[command(flatten)]
    pub target: TargetArgs,

    #[command(flatten)]
    pub align: AlignArgs,
}

/// `--sweep KEY=V1,V2,...`.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub key: String,
    pub values: Vec<String>,
}

pub const SWEEP_KEYS: [&str; 10] = [
    "reward-scale",
    "reward-iters",
    "recur",
    "particles",
    "steer",
    "fk-lambda",
    "fk-every",
    "fk-potential",
    "reward-form",
    "reward-schedule",
];

fn parse_sweep(s: &str) -> Result<Sweep, String> {
    let (key, values) = s
        .split_once('=')
        .ok_or_else(|| "expected KEY=V1,V2,... e.g. reward-scale=0,0.1,0.2".to_string())?;
    if !SWEEP_KEYS.contains(&key) {
        return Err(format!(
            "unknown key {key:?} (accepted: {})",
            SWEEP_KEYS.join(", ")
        ));
    }
    let values: Vec<String> = values
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(format!("no values for {key}"));
    }
    Ok(Sweep {
        key: key.to_string(),
        values,
    })
}

/// `--targets`: class numbers in the order given.
#[derive(Debug, Clone)]
pub struct Targets(pub Vec<usize>);

/// `0-9`, `1,3,7` or a mix (`0-2,5`).
fn parse_targets(s: &str) -> Result<Targets, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad target {part:?}: expected N or A-B, e.g. 0-9 or 1,3,7");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (
                    a.trim().parse::<usize>().map_err(|_| bad())?,
                    b.trim().parse::<usize>().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                if b - a >= MAX_TARGETS {
                    return Err(format!("{part:?} names more than {MAX_TARGETS} targets"));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse::<usize>().map_err(|_| bad())?),
        }
        if out.len() > MAX_TARGETS {
            return Err(format!("more than {MAX_TARGETS} targets"));
        }
    }
    if out.is_empty() {
        return Err("no targets given".to_string());
    }
    Ok(Targets(out))
}
