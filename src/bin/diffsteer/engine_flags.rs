//! From flags to the engine: opening it from `--model`, `--device`, `--dtype`,
//! `--threads` and `--classifier`, building a request from `generate`'s flags, and
//! mapping the engine's errors (which name a request field or engine option) back
//! to the flag that sets it.

use std::path::{Path, PathBuf};

use diffsteer::pipeline::request::REQUEST_KEYS;
use diffsteer::pipeline::{ClassChoice, Device, Engine, EngineOptions, Request, StepWindow};
use diffsteer::Error;

use crate::args::{
    AlignArgs, ClassArg, DeviceArg, PotentialArg, RewardFormArg, RhoScheduleArg, SteerArg,
    TargetArgs,
};
use crate::usage_error::{usage, CliError};

const DEFAULT_MODEL: &str = "weights/digits";

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

/// Engine options that are flags of their own.
const OPTION_FLAGS: [&str; 6] = ["model", "device", "dtype", "threads", "classifier", "batch"];

/// The flag that sets the request field or engine option `field`, if any.
pub fn flag_for(field: &str) -> Option<String> {
    (REQUEST_KEYS.contains(&field) || OPTION_FLAGS.contains(&field))
        .then(|| format!("--{}", field.replace('_', "-")))
}

/// An engine error as the CLI reports it: a bad request field or option is a usage
/// error on its flag (exit code 2), anything else a runtime failure (exit code 1).
pub fn engine_error(e: Error) -> CliError {
    match e {
        Error::InvalidArgument { name, message } => match flag_for(&name) {
            Some(flag) => usage(&flag, message),
            None => CliError::Runtime(Error::InvalidArgument { name, message }),
        },
        other => CliError::Runtime(other),
    }
}

pub fn device_of(arg: DeviceArg) -> Device {
    match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda(n) => Device::Cuda(n),
    }
}

/// Opens the engine for a command.
pub fn open_engine(
    model: &Path,
    target: &TargetArgs,
    threads: Option<usize>,
    classifier: Option<PathBuf>,
) -> Result<Engine, CliError> {
    let options = EngineOptions {
        device: device_of(target.device),
        dtype: target.dtype,
        threads,
        classifier,
        ..EngineOptions::new(resolve_model(model))
    };
    Engine::open(options).map_err(engine_error)
}

pub fn window(w: Option<(usize, usize)>) -> Option<StepWindow> {
    w.map(|(start, stop)| StepWindow { start, stop })
}

/// The request fields the alignment flags set.
pub fn apply_alignment(request: &mut Request, a: &AlignArgs) {
    request.reward = a.rewards.clone();
    request.reward_scale = a.reward_scale;
    request.reward_form = a.reward_form.map(|f| match f {
        RewardFormArg::X0 => diffsteer::guidance::reward::RewardForm::X0,
        RewardFormArg::Eps => diffsteer::guidance::reward::RewardForm::Eps,
    });
    request.reward_schedule = a.reward_schedule.map(|s| match s {
        RhoScheduleArg::Constant => diffsteer::guidance::reward::RhoSchedule::Constant,
        RhoScheduleArg::Noise => diffsteer::guidance::reward::RhoSchedule::NoiseLevel,
    });
    request.reward_window = window(a.reward_window);
    request.reward_iters = a.reward_iters;
    request.reward_raw = a.reward_raw;
    request.recur = a.recur;
    request.particles = a.particles;
    request.steer = a.steer.map(|s| match s {
        SteerArg::BestOfN => diffsteer::steer::SteerMethod::BestOfN,
        SteerArg::Fk => diffsteer::steer::SteerMethod::FeynmanKac,
    });
    request.fk_potential = a.fk_potential.map(|p| match p {
        PotentialArg::Diff => diffsteer::steer::Potential::Difference,
        PotentialArg::Max => diffsteer::steer::Potential::Max,
        PotentialArg::Sum => diffsteer::steer::Potential::Sum,
    });
    request.fk_lambda = a.fk_lambda;
    request.fk_every = a.fk_every;
    request.fk_window = window(a.fk_window);
    request.fk_adaptive = a.fk_adaptive;
}

/// `--classifier` is an engine option; without a reward it has nothing to load.
pub fn check_classifier_flag(a: &AlignArgs) -> Result<(), CliError> {
    if a.classifier.is_some() && a.rewards.is_empty() {
        return Err(usage(
            "--classifier",
            "works on a reward: add --reward SPEC (e.g. --reward classifier:3)",
        ));
    }
    Ok(())
}

pub fn class_choice(arg: ClassArg) -> ClassChoice {
    match arg {
        ClassArg::Label(n) => ClassChoice::Label(n),
        ClassArg::Unconditional => ClassChoice::Unconditional,
    }
}
