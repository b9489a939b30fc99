//! The text side of a Stable Diffusion pipeline folder for the engine: the CLIP
//! tokenizer and text encoder (prompt embeddings, cached per prompt), and the VAE
//! that turns finished latents into images (and images into latents, for img2img).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::clip::{ClipTokenizer, TextEncoder};
use crate::model::vae::{LatentDistribution, TileSettings, Vae, VaeParts};
use crate::model::PipelineFolder;
use crate::sampler::SampleOutput;

/// Prompt embeddings kept for reuse (a server sees the same prompts again).
const CACHED_PROMPTS: usize = 256;

/// Latents up to this side (SD: 512-pixel images) decode whole, as diffusers'
/// pipeline does by default; larger ones tile-by-tile, so memory stays bounded.
const MAX_WHOLE_DECODE_LATENT: usize = 64;

/// A prompt's token ids, and which layer of the text encoder is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PromptKey {
    pub ids: Vec<u32>,
    /// Layers skipped from the end (diffusers' `clip_skip`; 0 = the last hidden
    /// state).
    pub skip: usize,
}

/// Embeddings by prompt, and the order they came in (the oldest goes first).
type PromptCache = (HashMap<PromptKey, Arc<Vec<f32>>>, VecDeque<PromptKey>);

/// The tokenizer, text encoder and VAE of a pipeline folder.
pub(crate) struct TextStack {
    pub tokenizer: ClipTokenizer,
    pub encoder: TextEncoder,
    pub vae: Vae,
    /// Image pixels per latent pixel (2^(VAE levels − 1)).
    pub factor: usize,
    cache: Mutex<PromptCache>,
}

impl TextStack {
    pub fn load(folder: &PipelineFolder, backend: &dyn Backend) -> Result<Self> {
        let tokenizer = folder.load_tokenizer()?;
        let encoder = folder.load_text_encoder(backend)?;
        let vae = folder.load_vae(backend, VaeParts::EncoderAndDecoder)?;
        let levels = vae.config().block_out_channels.len();
        Ok(TextStack {
            tokenizer,
            encoder,
            factor: 1 << levels.saturating_sub(1),
            vae,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    /// Tokens per prompt (77) and features per token.
    pub fn embedding_shape(&self) -> (usize, usize) {
        (
            self.tokenizer.max_length(),
            self.encoder.config().hidden_size,
        )
    }

    pub fn layers(&self) -> usize {
        self.encoder.config().num_hidden_layers
    }

    /// The embeddings of `key`, `[tokens, hidden]` row-major, from the cache or the
    /// text encoder.
    pub fn embed(&self, backend: &dyn Backend, key: &PromptKey) -> Result<Arc<Vec<f32>>> {
        if let Some(hit) = self.lock_cache().0.get(key) {
            return Ok(hit.clone());
        }
        let tensor = self
            .encoder
            .encode_clip_skip(backend, &[&key.ids], key.skip)?;
        let values = Arc::new(backend.to_host(&tensor)?);
        let mut cache = self.lock_cache();
        let (map, order) = &mut *cache;
        if map.insert(key.clone(), values.clone()).is_none() {
            order.push_back(key.clone());
            while order.len() > CACHED_PROMPTS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Ok(values)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, PromptCache> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decodes a finished latent into the image, in place (pixels about [-1, 1]).
    pub fn decode(&self, backend: &dyn Backend, output: &mut SampleOutput) -> Result<()> {
        let latent = backend.tensor(
            &[1, output.height, output.width, output.channels],
            std::mem::take(&mut output.data),
        )?;
        let image = if output.height.max(output.width) > MAX_WHOLE_DECODE_LATENT {
            self.vae.decode_tiled(
                backend,
                &latent,
                &TileSettings::for_config(self.vae.config()),
            )?
        } else {
            self.vae.decode(backend, &latent)?
        };
        let shape = image.shape().to_vec();
        let [_, h, w, c] = shape[..] else {
            return Err(Error::shape(
                "VAE decode",
                format!("an image of shape {shape:?}, expected [1, h, w, c]"),
            ));
        };
        output.data = backend.to_host(&image)?;
        (output.height, output.width, output.channels) = (h, w, c);
        Ok(())
    }

    /// The latent distribution of one NHWC image in [-1, 1].
    pub fn encode_image(
        &self,
        backend: &dyn Backend,
        image: Vec<f32>,
        height: usize,
        width: usize,
    ) -> Result<LatentDistribution> {
        let channels = self.vae.config().in_channels;
        let tensor = backend.tensor(&[1, height, width, channels], image)?;
        self.vae.encode(backend, &tensor)
    }
}
