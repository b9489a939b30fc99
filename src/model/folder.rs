//! Finding the files of a diffusers model folder: either a U-Net folder
//! (`config.json` + `diffusion_pytorch_model.safetensors`) or a pipeline folder
//! holding one in `unet/`; the scheduler config next to it, if any.

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::schedule::SchedulerConfig;

use super::config::UNetConfig;
use super::unet::UNet;
use super::weights::WeightFile;

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const SCHEDULER_CONFIG: &str = "scheduler_config.json";

#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub unet_dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
    /// `scheduler/scheduler_config.json` or `scheduler_config.json`, when present.
    pub scheduler_config: Option<PathBuf>,
}

impl ModelFolder {
    pub fn locate(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            let why = if dir.exists() {
                "is not a folder"
            } else {
                "does not exist"
            };
            return Err(Error::io(
                dir,
                format!("model folder {why}"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "expected a diffusers model folder",
                ),
            ));
        }
        let unet_dir = if !dir.join(CONFIG).is_file() && dir.join("unet").join(CONFIG).is_file() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        };
        let config = unet_dir.join(CONFIG);
        let weights = unet_dir.join(WEIGHTS);
        for (path, what) in [
            (&config, "the U-Net config"),
            (&weights, "the U-Net weights"),
        ] {
            if !path.is_file() {
                return Err(Error::io(
                    path,
                    format!("missing {what}"),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "a diffusers model folder holds config.json and diffusion_pytorch_model.safetensors"),
                ));
            }
        }
        let candidates = [
            unet_dir.join("scheduler").join(SCHEDULER_CONFIG),
            unet_dir.join(SCHEDULER_CONFIG),
            dir.join("scheduler").join(SCHEDULER_CONFIG),
            dir.join(SCHEDULER_CONFIG),
        ];
        let scheduler_config = candidates.into_iter().find(|p| p.is_file());
        Ok(ModelFolder {
            unet_dir,
            config,
            weights,
            scheduler_config,
        })
    }

    /// The folder's scheduler config, or diffusers' defaults when it has none.
    pub fn load_scheduler_config(&self) -> Result<SchedulerConfig> {
        match &self.scheduler_config {
            Some(path) => SchedulerConfig::load(path),
            None => Ok(SchedulerConfig::empty()),
        }
    }

    pub fn load_unet(&self, backend: &dyn Backend) -> Result<UNet> {
        let config = UNetConfig::load(&self.config)?;
        let weights = WeightFile::open(&self.weights)?;
        UNet::load(backend, config, &weights)
    }
}
