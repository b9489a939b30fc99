//! How an engine is opened: the model folder, the device and element type, the
//! CPU threads and the reward classifier.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::sampler::StepPath;
use crate::tensor::Precision;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU backend.
    #[default]
    Cpu,
    /// GPU `N` through the CUDA backend (builds with the `cuda` feature).
    Cuda(usize),
}

impl Device {
    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(Error::invalid(
                    "device",
                    format!("expected cpu, cuda or cuda:N (N = GPU index), got {s:?}"),
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What [`super::Engine::open`] needs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// A diffusers model folder (a U-Net folder, or a pipeline folder with `unet/`).
    pub model: PathBuf,
    pub device: Device,
    /// Element type of the GPU's weights and activations (the CPU computes in f32).
    pub dtype: Precision,
    /// CPU threads of the engine's pool; `None` is one per core.
    pub threads: Option<usize>,
    /// Folder of the classifier behind `classifier:` rewards; `None` is
    /// `digit-classifier` next to the model folder, else the shipped one.
    pub classifier: Option<PathBuf>,
    /// Where each step's guidance and scheduler update run.
    pub step_path: StepPath,
}

impl EngineOptions {
    /// The model in `model` on the CPU with every core, the default classifier.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        EngineOptions {
            model: model.into(),
            device: Device::Cpu,
            dtype: Precision::F32,
            threads: None,
            classifier: None,
            step_path: StepPath::Auto,
        }
    }
}
