//! CLIP's text side as Stable Diffusion pipelines use it: the tokenizer (exactly
//! transformers' `CLIPTokenizer`) and the text encoder (`CLIPTextModel`).

pub mod bpe;
pub mod config;
pub mod preset;
pub mod pretokenize;
pub mod special_tokens;
pub mod text_encoder;
pub mod tokenizer;

pub use config::ClipTextConfig;
pub use text_encoder::TextEncoder;
pub use tokenizer::{ClipTokenizer, Encoding};
