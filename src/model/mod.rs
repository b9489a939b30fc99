//! diffusers U-Nets: config parsing, safetensors loading into the engine's layouts,
//! and the forward graph, written once against [`crate::backend::Backend`].

pub mod attention;
pub mod blocks;
pub mod clip;
pub mod config;
pub mod embeddings;
pub mod folder;
pub mod layers;
pub mod preset;
pub mod resnet;
pub mod transformer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use config::{UNetClass, UNetConfig};
pub use folder::ModelFolder;
pub use unet::{UNet, UNetInputs};
