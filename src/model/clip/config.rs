//! A transformers `CLIPTextConfig` (`text_encoder/config.json`), with transformers'
//! defaults for absent fields.

use std::path::Path;

use crate::backend::Activation;
use crate::error::Result;
use crate::json_fields::Fields;

#[derive(Debug, Clone)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP, SD 1.x) or `gelu` (OpenCLIP, SD 2.x).
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

/// Sizes past these are refused before any weight is read: a config that claims
/// them is not a CLIP text encoder (the largest, OpenCLIP bigG, has 1280 × 32 layers).
const MAX_HIDDEN: usize = 1 << 14;
const MAX_LAYERS: usize = 256;
const MAX_POSITIONS: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 24;

impl ClipTextConfig {
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_fields(&Fields::load(path)?)
    }

    pub fn from_fields(f: &Fields) -> Result<Self> {
        if let Some(Some(arch)) = f.get("architectures").map(|v| v.as_array()) {
            let names: Vec<&str> = arch.iter().filter_map(|v| v.as_str()).collect();
            if !names.contains(&"CLIPTextModel") {
                return Err(f.error(
                    "architectures",
                    format!(
                        "{names:?} is not supported (supported: CLIPTextModel, the text encoder of SD 1.x and 2.x)"
                    ),
                ));
            }
        }
        f.choice("model_type", &["clip_text_model"])?;
        let hidden_act = match f.choice("hidden_act", &["quick_gelu", "gelu"])?.as_str() {
            "gelu" => Activation::Gelu,
            _ => Activation::QuickGelu,
        };
        let bounded = |key: &str, default: usize, max: usize| -> Result<usize> {
            let v = f.usize(key, default)?;
            if v == 0 || v > max {
                return Err(f.error(key, format!("{v} is outside 1..={max}")));
            }
            Ok(v)
        };
        let hidden_size = bounded("hidden_size", 512, MAX_HIDDEN)?;
        let num_attention_heads = bounded("num_attention_heads", 8, MAX_HIDDEN)?;
        if !hidden_size.is_multiple_of(num_attention_heads) {
            return Err(f.error(
                "num_attention_heads",
                format!(
                    "hidden_size {hidden_size} is not divisible by {num_attention_heads} heads"
                ),
            ));
        }
        Ok(ClipTextConfig {
            vocab_size: bounded("vocab_size", 49408, MAX_VOCAB)?,
            hidden_size,
            intermediate_size: bounded("intermediate_size", 2048, 8 * MAX_HIDDEN)?,
            num_hidden_layers: bounded("num_hidden_layers", 12, MAX_LAYERS)?,
            num_attention_heads,
            max_position_embeddings: bounded("max_position_embeddings", 77, MAX_POSITIONS)?,
            hidden_act,
            layer_norm_eps: f.f64("layer_norm_eps", 1e-5)?,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
