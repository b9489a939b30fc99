//! diffusers' `AutoencoderKL`, the VAE of Stable Diffusion pipelines, written once
//! against [`Backend`] with NHWC tensors: [`Vae::decode`] turns the sampler's latents
//! into images, [`Vae::encode`] turns images into a latent distribution (img2img).
//!
//! ```no_run
//! use diffsteer::backend::Backend;
//! use diffsteer::model::vae::{Vae, VaeParts};
//! use diffsteer::CpuBackend;
//! # fn main() -> diffsteer::Result<()> {
//! let backend = CpuBackend::new();
//! let vae = Vae::load_dir(&backend, "sd15/vae", VaeParts::EncoderAndDecoder)?;
//! # let latents = backend.tensor(&[1, 64, 64, 4], vec![0.0; 64 * 64 * 4])?;
//! // latents: [n, 64, 64, 4] as the sampler leaves them (scaled by 0.18215).
//! let image = vae.decode(&backend, &latents)?; // [n, 512, 512, 3], about [-1, 1]
//! let posterior = vae.encode(&backend, &image)?; // mean and std in the VAE's own space
//! let noise = vec![0.0; posterior.mean.len()]; // the engine's Philox noise, or zeros for the mode
//! let init_latents = posterior.latents(vae.config(), &noise)?; // scaling · (mean + std·noise − shift)
//! # let _ = init_latents;
//! # Ok(())
//! # }
//! ```
//!
//! Latent scaling: the sampler's latents are `scaling_factor · (z − shift_factor)`
//! of the VAE's `z` (SD 1.x/2.x: 0.18215 and no shift), so [`Vae::decode`] decodes
//! `latents / scaling_factor + shift_factor`, which is what diffusers'
//! `StableDiffusionPipeline` passes to `vae.decode` (its VAEs have no shift).
//!
//! Memory: [`Vae::decode`] and [`Vae::encode`] run one image at a time, so the
//! peak is that of a single image whatever the batch (SD's VAE at 512×512: 1.16 GiB
//! resident at the peak, weights included; see `README.md`, *Text-to-image*); every
//! activation is dropped as soon as the next one exists. Larger images can be
//! decoded in tiles with [`Vae::decode_tiled`] (diffusers' `enable_tiling()`,
//! bit-for-bit its blending), which bounds the peak to one tile's.
//!
//! `force_upcast` (set for SD 1.x/2.x's VAE): diffusers runs such a VAE in f32 even
//! in an f16 pipeline because it overflows f16; the engine leaves the choice of
//! backend to the caller, who should run it on an f32 backend when it is set.

pub mod blocks;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod preset;
pub mod tiling;

use std::path::Path;

pub use config::VaeConfig;
use decoder::Decoder;
use encoder::Encoder;
pub use tiling::TileSettings;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::weights::{Scope, WeightFile};
use crate::tensor::Tensor;

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Which halves to load (a text-to-image engine needs only the decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeParts {
    DecoderOnly,
    EncoderAndDecoder,
}

pub struct Vae {
    config: VaeConfig,
    encoder: Option<Encoder>,
    decoder: Decoder,
}

/// The VAE's posterior for a batch of images, on the host: per element the mean,
/// the log-variance (clamped to [-30, 20] as diffusers does) and the standard
/// deviation `exp(logvar / 2)`, all in the VAE's own (unscaled) space.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// `[n, h, w, latent_channels]`.
    pub shape: [usize; 4],
    pub mean: Vec<f32>,
    pub logvar: Vec<f32>,
    pub std: Vec<f32>,
}

impl LatentDistribution {
    /// Sampler-space latents `scaling · (mean + std·noise − shift)` for standard
    /// normal `noise` of the same length (zeros give the distribution's mode), as
    /// diffusers' img2img does with `vae.encode(image).latent_dist.sample()`.
    pub fn latents(&self, config: &VaeConfig, noise: &[f32]) -> Result<Vec<f32>> {
        if noise.len() != self.mean.len() {
            return Err(Error::invalid(
                "noise",
                format!("{} values for a latent of {}", noise.len(), self.mean.len()),
            ));
        }
        let (scale, shift) = (config.scaling_factor as f32, config.shift_factor as f32);
        Ok(self
            .mean
            .iter()
            .zip(&self.std)
            .zip(noise)
            .map(|((m, s), e)| scale * (m + s * e - shift))
            .collect())
    }
}

fn dims(t: &Tensor, what: &str, channels: usize) -> Result<(usize, usize, usize)> {
    let (n, h, w, c) = t.dims4(what)?;
    if c != channels || n == 0 || h == 0 || w == 0 {
        return Err(Error::invalid(
            what,
            format!(
                "shape {:?}, expected [n, h, w, {channels}] with n, h, w ≥ 1",
                t.shape()
            ),
        ));
    }
    Ok((n, h, w))
}

impl Vae {
    /// Loads `config.json` + `diffusion_pytorch_model.safetensors` from a pipeline's
    /// `vae/` folder.
    pub fn load_dir(b: &dyn Backend, dir: impl AsRef<Path>, parts: VaeParts) -> Result<Self> {
        let dir = dir.as_ref();
        let (config, weights) = (dir.join(CONFIG), dir.join(WEIGHTS));
        for (path, what) in [(&config, "the VAE config"), (&weights, "the VAE weights")] {
            if !path.is_file() {
                return Err(Error::io(
                    path,
                    format!("missing {what}"),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "a vae folder holds config.json and diffusion_pytorch_model.safetensors",
                    ),
                ));
            }
        }
        Self::load(
            b,
            VaeConfig::load(&config)?,
            &WeightFile::open(&weights)?,
            parts,
        )
    }

    /// The VAE of `config` with the weights of `file`. With `DecoderOnly` the
    /// encoder's tensors are neither read nor checked; every other tensor must be used.
    pub fn load(
        b: &dyn Backend,
        config: VaeConfig,
        file: &WeightFile,
        parts: VaeParts,
    ) -> Result<Self> {
        let root = Scope::root(file);
        let decoder = Decoder::load(b, &root, &config)?;
        let encoder = match parts {
            VaeParts::EncoderAndDecoder => Some(Encoder::load(b, &root, &config)?),
            VaeParts::DecoderOnly => {
                file.skip_prefix("encoder.");
                file.skip_prefix("quant_conv.");
                None
            }
        };
        file.ensure_all_used()?;
        Ok(Vae {
            config,
            encoder,
            decoder,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Images `[n, h·f, w·f, out_channels]` (about [-1, 1]; f = 2^(levels − 1)) of
    /// sampler-space `latents` `[n, h, w, latent_channels]`: decodes
    /// `latents / scaling_factor + shift_factor`, one image at a time.
    pub fn decode(&self, b: &dyn Backend, latents: &Tensor) -> Result<Tensor> {
        let (n, h, w) = dims(latents, "latents", self.config.latent_channels)?;
        let values = b.to_host(latents)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "latents",
                format!("element {i} is {} (NaN or Inf)", values[i]),
            ));
        }
        let (scale, shift) = (
            self.config.scaling_factor as f32,
            self.config.shift_factor as f32,
        );
        let per = h * w * self.config.latent_channels;
        let mut out = Vec::new();
        let mut out_shape = [n, 0, 0, 0];
        for sample in values.chunks(per) {
            let z: Vec<f32> = sample.iter().map(|v| v / scale + shift).collect();
            let z = b.tensor(&[1, h, w, self.config.latent_channels], z)?;
            let image = self.decoder.forward(b, &z)?;
            drop(z);
            let (_, ih, iw, ic) = image.dims4("VAE decoder output")?;
            out_shape[1..].copy_from_slice(&[ih, iw, ic]);
            if out.is_empty() {
                out.reserve_exact(n * ih * iw * ic);
            }
            out.extend(b.to_host(&image)?);
        }
        b.tensor(&out_shape, out)
    }

    /// [`Vae::decode`] as diffusers does it after `vae.enable_tiling()`: latents
    /// larger than a tile (`tiles.latent_size`; SD: 64, i.e. images over 512 pixels)
    /// are decoded tile by tile and blended (see [`tiling`]); others exactly as
    /// [`Vae::decode`]. [`TileSettings::for_config`] gives diffusers' tile sizes.
    pub fn decode_tiled(
        &self,
        b: &dyn Backend,
        latents: &Tensor,
        tiles: &TileSettings,
    ) -> Result<Tensor> {
        let (n, h, w) = dims(latents, "latents", self.config.latent_channels)?;
        if !tiles.applies(h, w) {
            return self.decode(b, latents);
        }
        if tiles.latent_size == 0 || tiles.stride() == 0 || tiles.row_limit() == 0 {
            return Err(Error::invalid(
                "tiles",
                format!("{tiles:?} leaves no room for a tile"),
            ));
        }
        let values = b.to_host(latents)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "latents",
                format!("element {i} is {} (NaN or Inf)", values[i]),
            ));
        }
        let c = self.config.latent_channels;
        let (scale, shift) = (
            self.config.scaling_factor as f32,
            self.config.shift_factor as f32,
        );
        let mut out = Vec::new();
        let mut out_shape = [n, 0, 0, 0];
        for sample in values.chunks(h * w * c) {
            let mut grid = Vec::new();
            for &i in &tiling::tile_starts(h, tiles.stride()) {
                let mut row = Vec::new();
                for &j in &tiling::tile_starts(w, tiles.stride()) {
                    let (th, tw) = (tiles.latent_size.min(h - i), tiles.latent_size.min(w - j));
                    let mut z = Vec::with_capacity(th * tw * c);
                    for y in i..i + th {
                        let start = (y * w + j) * c;
                        z.extend(
                            sample[start..start + tw * c]
                                .iter()
                                .map(|v| v / scale + shift),
                        );
                    }
                    let image = self.decoder.forward(b, &b.tensor(&[1, th, tw, c], z)?)?;
                    let (_, ih, iw, ic) = image.dims4("VAE decoder output")?;
                    row.push(tiling::Tile {
                        h: ih,
                        w: iw,
                        c: ic,
                        data: b.to_host(&image)?,
                    });
                }
                grid.push(row);
            }
            let c_out = grid[0][0].c;
            let (ih, iw, image) = tiling::assemble(grid, tiles);
            out_shape[1..].copy_from_slice(&[ih, iw, c_out]);
            out.extend(image);
        }
        b.tensor(&out_shape, out)
    }

    /// The latent distribution of NHWC `images` in [-1, 1], one image at a time.
    /// Needs a VAE loaded with [`VaeParts::EncoderAndDecoder`].
    pub fn encode(&self, b: &dyn Backend, images: &Tensor) -> Result<LatentDistribution> {
        let encoder = self.encoder.as_ref().ok_or_else(|| {
            Error::invalid("vae", "loaded without its encoder (VaeParts::DecoderOnly)")
        })?;
        let (n, h, w) = dims(images, "images", self.config.in_channels)?;
        let values = b.to_host(images)?;
        let per = h * w * self.config.in_channels;
        let latent = self.config.latent_channels;
        let mut dist = LatentDistribution {
            shape: [n, 0, 0, latent],
            mean: Vec::new(),
            logvar: Vec::new(),
            std: Vec::new(),
        };
        for sample in values.chunks(per) {
            let x = b.tensor(&[1, h, w, self.config.in_channels], sample.to_vec())?;
            let moments = encoder.forward(b, &x)?;
            let (_, lh, lw, _) = moments.dims4("VAE encoder output")?;
            dist.shape[1] = lh;
            dist.shape[2] = lw;
            for px in b.to_host(&moments)?.chunks(2 * latent) {
                let (mean, logvar) = px.split_at(latent);
                dist.mean.extend_from_slice(mean);
                for &lv in logvar {
                    let lv = lv.clamp(-30.0, 20.0);
                    dist.logvar.push(lv);
                    dist.std.push((0.5 * lv).exp());
                }
            }
        }
        Ok(dist)
    }
}
