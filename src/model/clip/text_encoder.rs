//! transformers' `CLIPTextModel`, the text encoder of Stable Diffusion 1.x and 2.x,
//! written once against [`Backend`]: token + position embeddings, pre-LayerNorm
//! transformer layers with causal self-attention and a GELU / quick-GELU MLP, and the
//! final layer norm.
//!
//! ```no_run
//! use diffsteer::model::clip::{ClipTokenizer, TextEncoder};
//! use diffsteer::CpuBackend;
//! # fn main() -> diffsteer::Result<()> {
//! let backend = CpuBackend::new();
//! let tokenizer = ClipTokenizer::load("sd15/tokenizer")?;
//! let encoder = TextEncoder::load_dir(&backend, "sd15/text_encoder")?;
//! let rows = [tokenizer.encode("").ids, tokenizer.encode("a red fox").ids];
//! let states = encoder.encode(&backend, &rows)?; // [2, 77, 768]: [uncond; cond]
//! let skipped = encoder.encode_clip_skip(&backend, &rows, 1)?; // the penultimate layer
//! # let _ = (states, skipped);
//! # Ok(())
//! # }
//! ```
//!
//! What diffusers' `StableDiffusionPipeline.encode_prompt` feeds the U-Net is the
//! last hidden state after the final layer norm; with `clip_skip = N` it is the
//! output of layer `L − N` (of `L`) put through the same final layer norm
//! (`hidden_states[-(N + 1)]`), which [`TextEncoder::encode_clip_skip`] computes by
//! running only those layers. No attention mask beyond the causal one is used
//! (diffusers passes none unless the config sets `use_attention_mask`), so padding
//! tokens are encoded like any other.
//!
//! Stable Diffusion 2's "penultimate layer" convention needs nothing here: its
//! checkpoints ship OpenCLIP ViT-H/14's text tower with the last of its 24 layers
//! already removed (`num_hidden_layers: 23`), so the plain last hidden state *is*
//! the penultimate layer of the original model, and diffusers uses it as is (checked
//! against diffusers by `tests/text_encoder.rs` on the SD2-style tiny pipeline).

use std::path::Path;

use super::config::ClipTextConfig;
use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::model::layers::{LayerNorm, Linear};
use crate::model::weights::{Scope, WeightFile};
use crate::tensor::Tensor;

/// Most prompt rows one call encodes: the call's activations are this many rows of
/// `max_position_embeddings × hidden_size`.
pub const MAX_ROWS: usize = 4096;

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(b: &dyn Backend, s: &Scope, c: &ClipTextConfig) -> Result<Self> {
        let (d, inner) = (c.hidden_size, c.intermediate_size);
        let attn = s.sub("self_attn");
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(b, &s.sub("layer_norm1"), d, c.layer_norm_eps)?,
            q_proj: Linear::load(b, &attn.sub("q_proj"), (d, d), true)?,
            k_proj: Linear::load(b, &attn.sub("k_proj"), (d, d), true)?,
            v_proj: Linear::load(b, &attn.sub("v_proj"), (d, d), true)?,
            out_proj: Linear::load(b, &attn.sub("out_proj"), (d, d), true)?,
            layer_norm2: LayerNorm::load(b, &s.sub("layer_norm2"), d, c.layer_norm_eps)?,
            fc1: Linear::load(b, &s.sub("mlp.fc1"), (d, inner), true)?,
            fc2: Linear::load(b, &s.sub("mlp.fc2"), (inner, d), true)?,
        })
    }

    /// `h ← h + attn(ln1(h))`, then `h ← h + mlp(ln2(h))`.
    fn forward(
        &self,
        b: &dyn Backend,
        h: &mut Tensor,
        heads: usize,
        act: Activation,
    ) -> Result<()> {
        let x = self.layer_norm1.forward(b, h)?;
        let (q, k, v) = (
            self.q_proj.forward(b, &x)?,
            self.k_proj.forward(b, &x)?,
            self.v_proj.forward(b, &x)?,
        );
        let attended = b.causal_attention(&q, &k, &v, heads)?;
        b.add_assign(h, &self.out_proj.forward(b, &attended)?, 1.0)?;
        let x = self.layer_norm2.forward(b, h)?;
        let mut x = self.fc1.forward(b, &x)?;
        b.activation_assign(&mut x, act, false)?;
        b.add_assign(h, &self.fc2.forward(b, &x)?, 1.0)
    }
}

pub struct TextEncoder {
    config: ClipTextConfig,
    /// `[vocab_size, hidden]` and `[max_positions, hidden]`, kept on the host: each
    /// call gathers its rows there and uploads only the sum.
    token_embedding: Vec<f32>,
    position_embedding: Vec<f32>,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl TextEncoder {
    /// Loads `config.json` + `model.safetensors` from a pipeline's `text_encoder/`.
    pub fn load_dir(b: &dyn Backend, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let (config, weights) = (dir.join(CONFIG), dir.join(WEIGHTS));
        for (path, what) in [
            (&config, "the text encoder config"),
            (&weights, "the text encoder weights"),
        ] {
            if !path.is_file() {
                return Err(Error::io(
                    path,
                    format!("missing {what}"),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "a text_encoder folder holds config.json and model.safetensors",
                    ),
                ));
            }
        }
        Self::load(
            b,
            ClipTextConfig::load(&config)?,
            &WeightFile::open(&weights)?,
        )
    }

    /// The model of `config` with the weights of `file`. Every tensor of the file
    /// must be used. Names are transformers': `text_model.embeddings.…` as the Hub's
    /// checkpoints (and transformers 4) have them, or without the `text_model.`
    /// prefix as transformers 5 saves a `CLIPTextModel`.
    pub fn load(b: &dyn Backend, config: ClipTextConfig, file: &WeightFile) -> Result<Self> {
        let root = if file.contains("text_model.embeddings.token_embedding.weight") {
            Scope::root(file).sub("text_model")
        } else {
            Scope::root(file)
        };
        let (d, positions) = (config.hidden_size, config.max_position_embeddings);
        let emb = root.sub("embeddings");
        let token_embedding = emb.take("token_embedding.weight", &[config.vocab_size, d])?;
        let position_embedding = emb.take("position_embedding.weight", &[positions, d])?;
        // Older checkpoints store the position ids; they must be 0, 1, 2, ...
        let ids_name = emb.name("position_ids");
        if file.contains(&ids_name) {
            let ids = file.take_i64(&ids_name, &[1, positions])?;
            if ids.iter().enumerate().any(|(i, &p)| p != i as i64) {
                return Err(Error::tensor(
                    file.path(),
                    ids_name,
                    "expected the positions 0, 1, 2, ... in order",
                ));
            }
        }
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::load(b, &root.sub(format!("encoder.layers.{i}")), &config))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            LayerNorm::load(b, &root.sub("final_layer_norm"), d, config.layer_norm_eps)?;
        file.ensure_all_used()?;
        Ok(TextEncoder {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The last hidden state after the final layer norm, `[rows, tokens, hidden]`,
    /// for rows of token ids of one length (the tokenizer's padded 77).
    pub fn encode<R: AsRef<[u32]>>(&self, b: &dyn Backend, rows: &[R]) -> Result<Tensor> {
        self.encode_clip_skip(b, rows, 0)
    }

    /// [`TextEncoder::encode`] with diffusers' `clip_skip`: the output of layer
    /// `num_hidden_layers − clip_skip` through the final layer norm (0 = the last
    /// hidden state; 1 = the penultimate layer; at most `num_hidden_layers`, which
    /// normalises the embeddings themselves).
    pub fn encode_clip_skip<R: AsRef<[u32]>>(
        &self,
        b: &dyn Backend,
        rows: &[R],
        clip_skip: usize,
    ) -> Result<Tensor> {
        let layers = self.config.num_hidden_layers;
        if clip_skip > layers {
            return Err(Error::invalid(
                "clip_skip",
                format!("{clip_skip} is more than the text encoder's {layers} layers"),
            ));
        }
        let h = self.embed(b, rows)?;
        let mut h = h;
        for layer in &self.layers[..layers - clip_skip] {
            layer.forward(
                b,
                &mut h,
                self.config.num_attention_heads,
                self.config.hidden_act,
            )?;
        }
        self.final_layer_norm.forward(b, &h)
    }

    /// Token plus position embeddings of `rows`, checked and uploaded.
    fn embed<R: AsRef<[u32]>>(&self, b: &dyn Backend, rows: &[R]) -> Result<Tensor> {
        let c = &self.config;
        let n = rows.len();
        if n == 0 || n > MAX_ROWS {
            return Err(Error::invalid(
                "token ids",
                format!("{n} rows; expected 1..={MAX_ROWS}"),
            ));
        }
        let len = rows[0].as_ref().len();
        if len == 0 || len > c.max_position_embeddings {
            return Err(Error::invalid(
                "token ids",
                format!(
                    "rows of {len} tokens; the text encoder takes 1..={}",
                    c.max_position_embeddings
                ),
            ));
        }
        let d = c.hidden_size;
        let mut x = Vec::with_capacity(n * len * d);
        for (r, row) in rows.iter().enumerate() {
            let row = row.as_ref();
            if row.len() != len {
                return Err(Error::invalid(
                    "token ids",
                    format!(
                        "row {r} has {} tokens, row 0 has {len}: pad every row to one length",
                        row.len()
                    ),
                ));
            }
            for (t, &id) in row.iter().enumerate() {
                let id = id as usize;
                if id >= c.vocab_size {
                    return Err(Error::invalid(
                        "token ids",
                        format!(
                            "row {r}, position {t}: id {id} is outside the text encoder's vocabulary of {} (tokenizer and text encoder do not match)",
                            c.vocab_size
                        ),
                    ));
                }
                let token = &self.token_embedding[id * d..(id + 1) * d];
                let position = &self.position_embedding[t * d..(t + 1) * d];
                x.extend(token.iter().zip(position).map(|(a, p)| a + p));
            }
        }
        b.tensor(&[n, len, d], x)
    }
}
