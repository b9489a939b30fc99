//! CLIP's text side as Stable Diffusion pipelines use it: the tokenizer (exactly
//! transformers' `CLIPTokenizer`) and the text encoder (`CLIPTextModel`).

pub mod bpe;
pub mod pretokenize;
pub mod special_tokens;
pub mod tokenizer;

pub use tokenizer::{ClipTokenizer, Encoding};
