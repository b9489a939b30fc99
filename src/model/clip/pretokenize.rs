//! What happens to prompt text before byte-pair encoding, as transformers'
//! CLIPTokenizer (a `tokenizers` pipeline) does it:
//!
//! 1. normalise: Unicode NFC, every run of whitespace (`\s+`) → one space, then
//!    lower-case character by character (`char::to_lowercase`, as `tokenizers` does:
//!    no context-dependent rules such as a word-final Greek sigma);
//! 2. split into words with CLIP's pattern
//!    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (runs of letters, single digits, runs of other non-space characters, English
//!    contractions), dropping everything between matches (the whitespace);
//! 3. split each word again with GPT-2's pattern (the `ByteLevel` pre-tokenizer's
//!    `use_regex`). Words hold no whitespace after step 2, so its whitespace
//!    alternatives (`\s+(?!\S)`, `\s+`, the optional leading space) can never match
//!    and the pattern reduces to `'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+`,
//!    which needs no look-ahead. It only ever splits a literal special-token text
//!    that the added-token matching left in place (`<|endoftext|>` → `<|`,
//!    `endoftext`, `|>`);
//! 4. spell each word's UTF-8 bytes with the byte symbols ([`super::bpe::byte_symbols`]).
//!
//! The original CLIP tokenizer (and transformers' old Python one) also ran
//! `ftfy.fix_text` and `html.unescape` twice; the `tokenizers` pipeline that
//! transformers runs today does neither, so `&amp;` stays `&amp;`.

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

const CLIP_WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const GPT2_WORDS_WITHOUT_SPACES: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

pub struct PreTokenizer {
    whitespace: Regex,
    clip_words: Regex,
    gpt2_words: Regex,
    byte_symbols: [char; 256],
}

impl PreTokenizer {
    pub fn new() -> Result<Self> {
        let compile = |pattern: &str| {
            Regex::new(pattern).map_err(|e| {
                Error::invalid(
                    "tokenizer",
                    format!("pattern {pattern:?} does not compile: {e}"),
                )
            })
        };
        Ok(PreTokenizer {
            whitespace: compile(r"\s+")?,
            clip_words: compile(CLIP_WORDS)?,
            gpt2_words: compile(GPT2_WORDS_WITHOUT_SPACES)?,
            byte_symbols: super::bpe::byte_symbols(),
        })
    }

    /// Step 1: NFC, whitespace runs to one space, per-character lower case.
    pub fn normalize(&self, text: &str) -> String {
        let composed: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&composed, " ");
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    /// Steps 2–4 on normalised text: the words, each spelled in byte symbols.
    pub fn words(&self, normalized: &str) -> Vec<String> {
        let mut out = Vec::new();
        for piece in self.clip_words.find_iter(normalized) {
            for word in self.gpt2_words.find_iter(piece.as_str()) {
                out.push(
                    word.as_str()
                        .bytes()
                        .map(|b| self.byte_symbols[b as usize])
                        .collect(),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let p = PreTokenizer::new().unwrap();
        p.words(&p.normalize(text))
    }

    #[test]
    fn splits_like_clip() {
        assert_eq!(
            words("A  Dog's\tLIFE, 2024!!"),
            ["a", "dog", "'s", "life", ",", "2", "0", "2", "4", "!!"]
        );
        assert_eq!(words("don't"), ["don", "'t"]);
        assert_eq!(words("   \n "), Vec::<String>::new());
    }

    #[test]
    fn composes_lowercases_per_character_and_spells_bytes() {
        // e + combining acute composes to é (two UTF-8 bytes → two byte symbols).
        assert_eq!(words("E\u{301}"), ["Ã©"]);
        // Per-character lower case: a final capital sigma becomes σ, not ς.
        let p = PreTokenizer::new().unwrap();
        assert_eq!(p.normalize("ΟΔΟΣ"), "οδοσ");
        // A special token's text left in place splits into three words.
        assert_eq!(words("<|endoftext|>"), ["<|", "endoftext", "|>"]);
    }
}
