//! A diffusers Stable Diffusion pipeline folder: `model_index.json` naming the
//! pipeline class and its components, each in a subfolder (`unet/`, `text_encoder/`,
//! `tokenizer/`, `vae/`, `scheduler/`), as `StableDiffusionPipeline.save_pretrained`
//! writes it and the Hub's SD 1.x / 2.x repositories hold it.
//!
//! ```no_run
//! use diffsteer::model::pipeline_folder::PipelineFolder;
//! use diffsteer::model::vae::VaeParts;
//! use diffsteer::CpuBackend;
//! # fn main() -> diffsteer::Result<()> {
//! let backend = CpuBackend::new();
//! let folder = PipelineFolder::locate("stable-diffusion-v1-5")?; // files present, class supported
//! let configs = folder.check_components()?; // configs parsed and consistent with each other
//! let tokenizer = folder.load_tokenizer()?;
//! let text_encoder = folder.load_text_encoder(&backend)?;
//! let unet = folder.load_unet(&backend)?;
//! let vae = folder.load_vae(&backend, VaeParts::DecoderOnly)?;
//! # let _ = (configs, tokenizer, text_encoder, unet, vae);
//! # Ok(())
//! # }
//! ```
//!
//! [`PipelineFolder::locate`] checks what can be checked without loading weights:
//! the class, that every component the engine needs is named and present with its
//! config and a complete (not truncated) safetensors file, and that the tokenizer has
//! its files. [`PipelineFolder::check_components`] parses the configs and checks
//! that they fit together (token ids within the text encoder's vocabulary, text
//! width = the U-Net's cross-attention width, latent channels = the U-Net's
//! channels). A pipeline's `unet/` is also what [`ModelFolder`] finds in the same
//! folder, so everything that takes a model folder keeps working on it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::clip::{ClipTextConfig, ClipTokenizer, TextEncoder};
use super::config::UNetConfig;
use super::folder::ModelFolder;
use super::unet::UNet;
use super::vae::{Vae, VaeConfig, VaeParts};
use super::weights::WeightFile;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::schedule::SchedulerConfig;

const MODEL_INDEX: &str = "model_index.json";
/// `model_index.json` files larger than this are refused unread (SD's is 600 bytes).
const MAX_INDEX_BYTES: u64 = 1 << 20;

/// The pipeline classes whose folders this engine runs: both have the same five
/// components; the img2img one just starts from an encoded image.
pub const SUPPORTED_PIPELINES: &[&str] =
    &["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"];

/// What is wrong with a few well-known pipelines, for a more helpful refusal.
fn why_unsupported(class: &str) -> Option<&'static str> {
    Some(match class {
        "StableDiffusionXLPipeline"
        | "StableDiffusionXLImg2ImgPipeline"
        | "StableDiffusionXLInpaintPipeline" => {
            "SDXL has two text encoders and size/crop conditioning"
        }
        "StableDiffusion3Pipeline" | "StableDiffusion3Img2ImgPipeline" => {
            "SD3 is an MMDiT transformer with three text encoders, not a U-Net"
        }
        "FluxPipeline" | "FluxImg2ImgPipeline" => {
            "Flux is a flow-matching transformer with a T5 text encoder"
        }
        "StableDiffusionInpaintPipeline" => {
            "inpainting U-Nets take 9 input channels (latents, mask, masked image)"
        }
        "StableDiffusionUpscalePipeline" | "StableDiffusionLatentUpscalePipeline" => {
            "upscalers condition on a low-resolution image"
        }
        _ => return None,
    })
}

/// One component as `model_index.json` names it: `[library, class]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub library: String,
    pub class: String,
}

/// The parsed configs of a pipeline's components (no weights read).
#[derive(Debug, Clone)]
pub struct PipelineConfigs {
    pub unet: UNetConfig,
    pub text_encoder: ClipTextConfig,
    pub vae: VaeConfig,
    pub scheduler: SchedulerConfig,
}

#[derive(Debug, Clone)]
pub struct PipelineFolder {
    pub dir: PathBuf,
    /// `StableDiffusionPipeline` or `StableDiffusionImg2ImgPipeline`.
    pub class_name: String,
    /// The U-Net and scheduler, as [`ModelFolder`] finds them in this folder.
    pub unet: ModelFolder,
    pub text_encoder_dir: PathBuf,
    pub tokenizer_dir: PathBuf,
    pub vae_dir: PathBuf,
}

fn not_found(path: &Path, what: String, hint: &str) -> Error {
    Error::io(
        path,
        what,
        std::io::Error::new(std::io::ErrorKind::NotFound, hint.to_string()),
    )
}

/// The file `name` of `component`, which must exist; the error points at files that
/// are there instead (a variant like `.fp16.safetensors`, a `.bin`, a shard index).
fn component_file(dir: &Path, component: &str, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let stem = name.split('.').next().unwrap_or(name);
    let mut others: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(stem) && n != name)
                .collect()
        })
        .unwrap_or_default();
    others.sort();
    let hint = if others.is_empty() {
        format!("the `{component}` component of a diffusers pipeline folder holds {name}")
    } else {
        format!(
            "found {} instead; only the plain {name} is read (no variants, .bin files or shards)",
            others.join(", ")
        )
    };
    Err(not_found(
        &path,
        format!("missing {name} of the `{component}` component"),
        &hint,
    ))
}

/// Opens a safetensors file's header, which refuses a truncated file.
fn check_weights(path: &Path, component: &str) -> Result<()> {
    WeightFile::open(path).map(|_| ()).map_err(|e| match e {
        Error::Safetensors { path, message } => Error::Safetensors {
            path,
            message: format!("the `{component}` component's weights: {message}"),
        },
        other => other,
    })
}

impl PipelineFolder {
    /// Whether `dir` holds a `model_index.json` (a pipeline, not a bare model folder).
    pub fn is_pipeline(dir: impl AsRef<Path>) -> bool {
        dir.as_ref().join(MODEL_INDEX).is_file()
    }

    /// Reads `model_index.json`, refuses unsupported pipelines, and finds every
    /// component's files (see the module docs for what is checked).
    pub fn locate(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            let why = if dir.exists() {
                "is not a folder"
            } else {
                "does not exist"
            };
            return Err(not_found(
                &dir,
                format!("pipeline folder {why}"),
                "expected a diffusers pipeline folder",
            ));
        }
        let index_path = dir.join(MODEL_INDEX);
        let meta = std::fs::metadata(&index_path).map_err(|e| {
            Error::io(
                &index_path,
                "missing model_index.json (a diffusers pipeline folder names its pipeline and components there)",
                e,
            )
        })?;
        if meta.len() > MAX_INDEX_BYTES {
            return Err(Error::config(
                &index_path,
                "(file)",
                format!("{} bytes is not a model index", meta.len()),
            ));
        }
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| Error::io(&index_path, "cannot read", e))?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(&index_path, "(file)", format!("not valid JSON: {e}")))?;
        let class_name = index
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::config(&index_path, "_class_name", "missing: the pipeline class")
            })?
            .to_string();
        if !SUPPORTED_PIPELINES.contains(&class_name.as_str()) {
            let why = why_unsupported(&class_name)
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            return Err(Error::config(
                &index_path,
                "_class_name",
                format!(
                    "pipeline {class_name:?} is not supported{why}; supported: {}",
                    SUPPORTED_PIPELINES.join(", ")
                ),
            ));
        }
        let component = |key: &str, libraries: &[&str], classes: &[&str]| -> Result<Component> {
            let entry = index.get(key).and_then(Value::as_array);
            let pair = entry.and_then(|e| match &e[..] {
                [Value::String(l), Value::String(c)] => Some(Component {
                    library: l.clone(),
                    class: c.clone(),
                }),
                _ => None,
            });
            let Some(c) = pair else {
                return Err(Error::config(
                    &index_path,
                    key,
                    format!(
                        "missing or null: a {class_name} needs a `{key}` component ({})",
                        classes.first().copied().unwrap_or("a scheduler")
                    ),
                ));
            };
            if !libraries.contains(&c.library.as_str())
                || (!classes.is_empty() && !classes.contains(&c.class.as_str()))
            {
                return Err(Error::config(
                    &index_path,
                    key,
                    format!(
                        "[{:?}, {:?}] is not supported (supported: {})",
                        c.library,
                        c.class,
                        if classes.is_empty() {
                            "a diffusers scheduler".to_string()
                        } else {
                            classes.join(", ")
                        }
                    ),
                ));
            }
            Ok(c)
        };
        component("unet", &["diffusers"], &["UNet2DConditionModel"])?;
        component("text_encoder", &["transformers"], &["CLIPTextModel"])?;
        component(
            "tokenizer",
            &["transformers"],
            &["CLIPTokenizer", "CLIPTokenizerFast"],
        )?;
        component("vae", &["diffusers"], &["AutoencoderKL"])?;
        component("scheduler", &["diffusers"], &[])?;

        let sub = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if path.is_dir() {
                Ok(path)
            } else {
                Err(not_found(
                    &path,
                    format!("missing the `{name}` component folder named in model_index.json"),
                    "every component of a pipeline folder has a subfolder of its name",
                ))
            }
        };
        let unet_dir = sub("unet")?;
        component_file(&unet_dir, "unet", "config.json")?;
        check_weights(
            &component_file(&unet_dir, "unet", "diffusion_pytorch_model.safetensors")?,
            "unet",
        )?;
        let text_encoder_dir = sub("text_encoder")?;
        component_file(&text_encoder_dir, "text_encoder", "config.json")?;
        check_weights(
            &component_file(&text_encoder_dir, "text_encoder", "model.safetensors")?,
            "text_encoder",
        )?;
        let vae_dir = sub("vae")?;
        component_file(&vae_dir, "vae", "config.json")?;
        check_weights(
            &component_file(&vae_dir, "vae", "diffusion_pytorch_model.safetensors")?,
            "vae",
        )?;
        let tokenizer_dir = sub("tokenizer")?;
        component_file(&tokenizer_dir, "tokenizer", "tokenizer_config.json")?;
        if !tokenizer_dir.join("tokenizer.json").is_file() {
            component_file(&tokenizer_dir, "tokenizer", "vocab.json")?;
            component_file(&tokenizer_dir, "tokenizer", "merges.txt")?;
        }
        let scheduler_dir = sub("scheduler")?;
        component_file(&scheduler_dir, "scheduler", "scheduler_config.json")?;

        let unet = ModelFolder::locate(&dir)?;
        Ok(PipelineFolder {
            dir,
            class_name,
            unet,
            text_encoder_dir,
            tokenizer_dir,
            vae_dir,
        })
    }

    /// Parses every component's config and checks that they fit together.
    pub fn check_components(&self) -> Result<PipelineConfigs> {
        let unet = UNetConfig::load(&self.unet.config)?;
        let text_path = self.text_encoder_dir.join("config.json");
        let text_encoder = ClipTextConfig::load(&text_path)?;
        let vae_path = self.vae_dir.join("config.json");
        let vae = VaeConfig::load(&vae_path)?;
        let scheduler = self.unet.load_scheduler_config()?;
        let tokenizer = ClipTokenizer::load(&self.tokenizer_dir)?;

        let unet_path = &self.unet.config;
        if unet.cross_attention_dim != Some(text_encoder.hidden_size) {
            return Err(Error::config(
                unet_path,
                "cross_attention_dim",
                format!(
                    "{:?}, but the text encoder ({}) outputs {} features",
                    unet.cross_attention_dim,
                    text_path.display(),
                    text_encoder.hidden_size
                ),
            ));
        }
        if unet.in_channels != vae.latent_channels || unet.out_channels != vae.latent_channels {
            return Err(Error::config(
                unet_path,
                "in_channels",
                format!(
                    "the U-Net maps {} → {} channels, but the VAE ({}) has {} latent channels",
                    unet.in_channels,
                    unet.out_channels,
                    vae_path.display(),
                    vae.latent_channels
                ),
            ));
        }
        if tokenizer.vocab_size() > text_encoder.vocab_size {
            return Err(Error::config(
                &text_path,
                "vocab_size",
                format!(
                    "{}, but the tokenizer ({}) produces ids up to {}",
                    text_encoder.vocab_size,
                    self.tokenizer_dir.display(),
                    tokenizer.vocab_size() - 1
                ),
            ));
        }
        if tokenizer.max_length() > text_encoder.max_position_embeddings {
            return Err(Error::config(
                &text_path,
                "max_position_embeddings",
                format!(
                    "{}, but the tokenizer pads prompts to {} tokens",
                    text_encoder.max_position_embeddings,
                    tokenizer.max_length()
                ),
            ));
        }
        Ok(PipelineConfigs {
            unet,
            text_encoder,
            vae,
            scheduler,
        })
    }

    pub fn load_tokenizer(&self) -> Result<ClipTokenizer> {
        ClipTokenizer::load(&self.tokenizer_dir)
    }

    pub fn load_text_encoder(&self, b: &dyn Backend) -> Result<TextEncoder> {
        TextEncoder::load_dir(b, &self.text_encoder_dir)
    }

    pub fn load_unet(&self, b: &dyn Backend) -> Result<UNet> {
        self.unet.load_unet(b)
    }

    pub fn load_vae(&self, b: &dyn Backend, parts: VaeParts) -> Result<Vae> {
        Vae::load_dir(b, &self.vae_dir, parts)
    }

    pub fn load_scheduler_config(&self) -> Result<SchedulerConfig> {
        self.unet.load_scheduler_config()
    }
}
