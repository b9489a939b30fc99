//! diffusers and transformers models: config parsing, safetensors loading into the
//! engine's layouts, and the forward graphs, written once against
//! [`crate::backend::Backend`]: U-Nets, CLIP's tokenizer and text encoder
//! ([`clip`]), the VAE ([`vae`]), and Stable Diffusion pipeline folders
//! ([`pipeline_folder`]).

pub mod attention;
pub mod blocks;
pub mod clip;
pub mod config;
pub mod embeddings;
pub mod folder;
pub mod layers;
pub mod memory;
pub mod pipeline_folder;
pub mod preset;
pub mod resnet;
pub mod transformer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use config::{UNetClass, UNetConfig};
pub use folder::ModelFolder;
pub use pipeline_folder::PipelineFolder;
pub use unet::{UNet, UNetInputs};
