//! CLIP's tokenizer, loaded from a diffusers pipeline's `tokenizer/` folder and
//! giving the same ids as transformers' `CLIPTokenizer` (5.x) with the call
//! diffusers makes: `tokenizer(prompt, padding="max_length",
//! max_length=tokenizer.model_max_length, truncation=True)`.
//!
//! ```no_run
//! use diffsteer::model::clip::ClipTokenizer;
//! # fn main() -> diffsteer::Result<()> {
//! let tokenizer = ClipTokenizer::load("sd15/tokenizer")?;
//! let e = tokenizer.encode("a photograph of an astronaut riding a horse");
//! assert_eq!(e.ids.len(), 77); // [49406, 320, 8853, ..., 49407, 49407, ...]
//! if e.truncated { eprintln!("only the first 75 tokens are used"); }
//! # Ok(())
//! # }
//! ```
//!
//! Files: `vocab.json` + `merges.txt` (Stable Diffusion's folders), or `tokenizer.json`
//! (what transformers 5 writes; preferred when present, as transformers does), plus
//! `tokenizer_config.json` (`model_max_length`, the special tokens) and, in the older
//! format, `special_tokens_map.json`. How special tokens are resolved is in
//! [`super::special_tokens`]; the text pipeline in [`super::pretokenize`]; the merges
//! in [`super::bpe`].
//!
//! Written by hand rather than on the `tokenizers` crate: that crate (without its C
//! regex engine) brings about 50 further crates and doubled a clean build here, for a
//! pipeline of a few hundred lines whose every step is pinned against transformers by
//! `tests/tokenizer.rs` (a corpus of tricky and random prompts, five tokenizer
//! folders). Its regex engine would be the same `regex` crate as here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::bpe::{symbol_bytes, Bpe, BpeError};
use super::pretokenize::PreTokenizer;
use super::special_tokens::{self, AddedToken, SpecialTokens};
use crate::error::{Error, Result};

/// Tokenizer files larger than this are refused before they are read (CLIP's
/// `tokenizer.json` is 3.6 MB).
const MAX_FILE_BYTES: u64 = 64 << 20;
/// The largest `model_max_length` accepted (CLIP's is 77).
const MAX_LENGTH_LIMIT: usize = 1 << 16;

const CONFIG: &str = "tokenizer_config.json";
const SPECIAL_MAP: &str = "special_tokens_map.json";
const VOCAB: &str = "vocab.json";
const MERGES: &str = "merges.txt";
const TOKENIZER_JSON: &str = "tokenizer.json";

pub struct ClipTokenizer {
    dir: PathBuf,
    pre: PreTokenizer,
    bpe: Bpe,
    special: SpecialTokens,
    max_length: usize,
    id_to_symbol: HashMap<u32, String>,
}

/// One prompt, as the text encoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// `model_max_length` ids: BOS, at most `model_max_length − 2` tokens, EOS, then
    /// the pad id.
    pub ids: Vec<u32>,
    /// Whether tokens were cut to fit.
    pub truncated: bool,
    /// The prompt's length in tokens before truncation, BOS and EOS included.
    pub full_length: usize,
}

/// A piece of a prompt on its way to ids.
enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Splits `text` at every occurrence of a token of `tokens`, leftmost first and the
/// longest among those starting at the same place (as `tokenizers` matches them).
fn split_on_tokens<'a>(text: &'a str, tokens: &[&AddedToken]) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    if tokens.is_empty() {
        out.push(Segment::Text(text));
        return out;
    }
    let (mut start, mut at) = (0, 0);
    while at < text.len() {
        let rest = &text[at..];
        let found = tokens
            .iter()
            .filter(|t| !t.content.is_empty() && rest.starts_with(t.content.as_str()))
            .max_by_key(|t| t.content.len());
        match found {
            Some(t) => {
                if start < at {
                    out.push(Segment::Text(&text[start..at]));
                }
                out.push(Segment::Token(t.id));
                at += t.content.len();
                start = at;
            }
            None => at += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        out.push(Segment::Text(&text[start..]));
    }
    out
}

fn read_limited(path: &Path, what: &str) -> Result<String> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(path, format!("cannot read {what}"), e))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::io(
            path,
            format!(
                "{what} is {} bytes, more than the {MAX_FILE_BYTES} accepted",
                meta.len()
            ),
            std::io::Error::new(std::io::ErrorKind::InvalidData, "file too large"),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, format!("cannot read {what}"), e))
}

fn read_json(path: &Path, what: &str) -> Result<Value> {
    let text = read_limited(path, what)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::config(path, "(file)", format!("not valid JSON: {e}")))
}

fn missing(path: &Path, what: &str) -> Error {
    Error::io(
        path,
        format!("missing {what}"),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "a CLIP tokenizer folder holds vocab.json + merges.txt (or tokenizer.json) and tokenizer_config.json",
        ),
    )
}

/// `vocab.json`'s (or `tokenizer.json`'s `model.vocab`) symbol → id map.
fn parse_vocab(path: &Path, field: &str, value: &Value) -> Result<HashMap<String, u32>> {
    let entries = value
        .as_object()
        .ok_or_else(|| Error::config(path, field, "expected an object of symbol → id"))?;
    let mut vocab = HashMap::with_capacity(entries.len());
    for (symbol, id) in entries {
        let id = id
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                Error::config(
                    path,
                    field,
                    format!("symbol {symbol:?} has id {id}, expected a token id"),
                )
            })?;
        vocab.insert(symbol.clone(), id);
    }
    if vocab.is_empty() {
        return Err(Error::config(path, field, "the vocabulary is empty"));
    }
    Ok(vocab)
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line.
fn parse_merges_txt(path: &Path, text: &str) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        match parts[..] {
            [a, b] if !a.is_empty() && !b.is_empty() => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(Error::config(
                    path,
                    format!("line {}", line_no + 1),
                    format!("expected two symbols separated by one space, found {line:?}"),
                ))
            }
        }
    }
    Ok(merges)
}

/// `tokenizer.json`'s `model.merges`: `"a b"` strings or `["a", "b"]` pairs.
fn parse_merges_json(path: &Path, value: &Value) -> Result<Vec<(String, String)>> {
    let items = value
        .as_array()
        .ok_or_else(|| Error::config(path, "model.merges", "expected a list"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let pair = match item {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(p) => match &p[..] {
                    [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            pair.filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
                .ok_or_else(|| {
                    Error::config(
                        path,
                        format!("model.merges.{i}"),
                        format!("expected \"a b\" or [a, b], found {item}"),
                    )
                })
        })
        .collect()
}

impl ClipTokenizer {
    /// Loads the tokenizer in `dir` (a pipeline's `tokenizer/` folder).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(missing(&dir, "tokenizer folder"));
        }
        let config_path = dir.join(CONFIG);
        if !config_path.is_file() {
            return Err(missing(
                &config_path,
                "the tokenizer config (it holds model_max_length)",
            ));
        }
        let config = read_json(&config_path, "the tokenizer config")?;
        if let Some(class) = config.get("tokenizer_class").and_then(Value::as_str) {
            if class != "CLIPTokenizer" && class != "CLIPTokenizerFast" {
                return Err(Error::config(
                    &config_path,
                    "tokenizer_class",
                    format!(
                        "{class:?} is not supported (supported: CLIPTokenizer, CLIPTokenizerFast)"
                    ),
                ));
            }
        }
        let max_length = match config.get("model_max_length") {
            Some(v) => v
                .as_f64()
                .filter(|&m| m.fract() == 0.0 && (2.0..=MAX_LENGTH_LIMIT as f64).contains(&m))
                .map(|m| m as usize)
                .ok_or_else(|| {
                    Error::config(
                        &config_path,
                        "model_max_length",
                        format!("{v} is not a length in 2..={MAX_LENGTH_LIMIT} (CLIP's is 77)"),
                    )
                })?,
            None => {
                return Err(Error::config(
                    &config_path,
                    "model_max_length",
                    "missing: the padded prompt length (77 for CLIP)",
                ))
            }
        };

        let json_path = dir.join(TOKENIZER_JSON);
        let (vocab, merges, json) = if json_path.is_file() {
            let json = read_json(&json_path, "tokenizer.json")?;
            let model = json
                .get("model")
                .ok_or_else(|| Error::config(&json_path, "model", "missing"))?;
            let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "BPE" {
                return Err(Error::config(
                    &json_path,
                    "model.type",
                    format!("{kind:?} is not CLIP's BPE"),
                ));
            }
            let suffix = model.get("end_of_word_suffix").and_then(Value::as_str);
            if suffix != Some(super::bpe::END_OF_WORD) {
                return Err(Error::config(
                    &json_path,
                    "model.end_of_word_suffix",
                    format!("{suffix:?}, expected \"</w>\" (CLIP's BPE)"),
                ));
            }
            let vocab = parse_vocab(
                &json_path,
                "model.vocab",
                model.get("vocab").unwrap_or(&Value::Null),
            )?;
            let merges =
                parse_merges_json(&json_path, model.get("merges").unwrap_or(&Value::Null))?;
            (vocab, merges, Some(json))
        } else {
            let vocab_path = dir.join(VOCAB);
            let merges_path = dir.join(MERGES);
            if !vocab_path.is_file() {
                return Err(missing(&vocab_path, "the tokenizer vocabulary"));
            }
            if !merges_path.is_file() {
                return Err(missing(&merges_path, "the tokenizer's BPE merges"));
            }
            let vocab = parse_vocab(
                &vocab_path,
                "(file)",
                &read_json(&vocab_path, "the vocabulary")?,
            )?;
            let merges =
                parse_merges_txt(&merges_path, &read_limited(&merges_path, "the merges")?)?;
            (vocab, merges, None)
        };

        let map_path = dir.join(SPECIAL_MAP);
        let special_map = if map_path.is_file() {
            Some(read_json(&map_path, "the special tokens map")?)
        } else {
            None
        };
        let special = special_tokens::resolve(
            &special_tokens::Sources {
                config_path: &config_path,
                config: &config,
                special_map: special_map.as_ref().map(|m| (map_path.as_path(), m)),
                json_added: json
                    .as_ref()
                    .and_then(|j| j.get("added_tokens"))
                    .map(|a| (json_path.as_path(), a)),
            },
            &vocab,
        )?;
        let merges_file = if json.is_some() {
            json_path.clone()
        } else {
            dir.join(MERGES)
        };
        let id_to_symbol = vocab.iter().map(|(s, &id)| (id, s.clone())).collect();
        let bpe = Bpe::new(vocab, &merges, special.unk).map_err(|e| match e {
            BpeError::MissingSymbol { index, symbol } => Error::config(
                &merges_file,
                format!("merge {}", index + 1),
                format!("symbol {symbol:?} is not in the vocabulary (vocabulary and merges do not match)"),
            ),
        })?;
        Ok(ClipTokenizer {
            dir,
            pre: PreTokenizer::new()?,
            bpe,
            special,
            max_length,
            id_to_symbol,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The padded length (`model_max_length`, 77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn bos_id(&self) -> u32 {
        self.special.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.special.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.special.pad
    }

    /// One more than the largest id (the text encoder's embedding table must have
    /// at least this many rows).
    pub fn vocab_size(&self) -> usize {
        let symbols = self.bpe.vocab().values().copied();
        let added = self.special.added.iter().map(|t| t.id);
        symbols.chain(added).max().map_or(0, |m| m as usize + 1)
    }

    /// The prompt's token ids, without BOS/EOS, untruncated.
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        let raw_tokens: Vec<&AddedToken> = self
            .special
            .added
            .iter()
            .filter(|t| !t.normalized)
            .collect();
        let normalized_tokens: Vec<&AddedToken> =
            self.special.added.iter().filter(|t| t.normalized).collect();
        let mut ids = Vec::new();
        for segment in split_on_tokens(text, &raw_tokens) {
            match segment {
                Segment::Token(id) => ids.push(id),
                Segment::Text(raw) => {
                    let normalized = self.pre.normalize(raw);
                    for piece in split_on_tokens(&normalized, &normalized_tokens) {
                        match piece {
                            Segment::Token(id) => ids.push(id),
                            Segment::Text(t) => {
                                for word in self.pre.words(t) {
                                    self.bpe.encode_word(&word, &mut ids);
                                }
                            }
                        }
                    }
                }
            }
        }
        ids
    }

    /// The ids the text encoder takes for `text`: BOS, the tokens (cut to
    /// `max_length − 2`), EOS, padding.
    pub fn encode(&self, text: &str) -> Encoding {
        let mut tokens = self.tokens(text);
        let room = self.max_length - 2;
        let full_length = tokens.len() + 2;
        let truncated = tokens.len() > room;
        tokens.truncate(room);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.special.bos);
        ids.extend_from_slice(&tokens);
        ids.push(self.special.eos);
        ids.resize(self.max_length, self.special.pad);
        Encoding {
            ids,
            truncated,
            full_length,
        }
    }

    /// A token's text for display: its vocabulary symbol with the byte symbols read
    /// back as UTF-8 (`photograph</w>`; a lone byte of a multi-byte character shows
    /// as U+FFFD).
    pub fn token_text(&self, id: u32) -> Option<String> {
        let symbol = self.id_to_symbol.get(&id)?;
        if self
            .special
            .added
            .iter()
            .any(|t| t.id == id && &t.content == symbol)
            && symbol.starts_with("<|")
        {
            return Some(symbol.clone());
        }
        let (body, end) = match symbol.strip_suffix(super::bpe::END_OF_WORD) {
            Some(body) => (body, super::bpe::END_OF_WORD),
            None => (symbol.as_str(), ""),
        };
        let back = symbol_bytes();
        let bytes: Vec<u8> = body.chars().filter_map(|c| back.get(&c).copied()).collect();
        Some(format!("{}{end}", String::from_utf8_lossy(&bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(content: &str, id: u32) -> AddedToken {
        AddedToken {
            content: content.to_string(),
            id,
            normalized: false,
        }
    }

    #[test]
    fn splits_on_tokens_leftmost_longest() {
        let (a, b) = (token("!", 0), token("<|endoftext|>", 7));
        let parts = split_on_tokens("hi!!<|endoftext|>x", &[&a, &b]);
        let shown: Vec<String> = parts
            .iter()
            .map(|p| match p {
                Segment::Text(t) => format!("T{t}"),
                Segment::Token(id) => format!("#{id}"),
            })
            .collect();
        assert_eq!(shown, ["Thi", "#0", "#0", "#7", "Tx"]);
        let ab = token("ab", 1);
        let abc = token("abc", 2);
        let parts = split_on_tokens("xabcab", &[&ab, &abc]);
        assert_eq!(parts.len(), 3);
        assert!(matches!(parts[1], Segment::Token(2)));
        assert!(matches!(parts[2], Segment::Token(1)));
    }

    #[test]
    fn merges_lines_are_checked() {
        let p = Path::new("merges.txt");
        assert_eq!(
            parse_merges_txt(p, "#version: 0.2\ni n\nt h\n")
                .unwrap()
                .len(),
            2
        );
        let e = parse_merges_txt(p, "#version: 0.2\ni n\nthree parts here\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }
}
