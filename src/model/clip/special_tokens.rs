//! The special and added tokens of a tokenizer folder, resolved the way transformers
//! (5.x) resolves them for CLIPTokenizer, because the result decides how literal
//! token text in a prompt is treated:
//!
//! * Every added token is matched in the prompt before anything else and becomes
//!   its id directly. A token with `normalized: false` is matched in the raw text
//!   (case-sensitive); one with `normalized: true` in the normalised (lower-cased)
//!   text.
//! * The named tokens (`bos_token`, `eos_token`, `unk_token`, `sep_token`,
//!   `pad_token`, `cls_token`, `mask_token`, then `additional_special_tokens`) are
//!   registered in that order and the last registration of a text wins. A name given
//!   as a plain string registers `normalized: false`; one given as an object
//!   (`{"content": ..., "normalized": ...}`) registers its own flag.
//! * Where the named values come from: with `added_tokens_decoder` in
//!   `tokenizer_config.json`, its entries are the added tokens and a named token
//!   whose text is among them takes that entry's flags. Without it (the older
//!   format of Stable Diffusion's folders), `special_tokens_map.json` overrides
//!   `tokenizer_config.json` name by name, and the added tokens of `tokenizer.json`
//!   (when the folder has one) play the role of `added_tokens_decoder`.
//!
//! The consequences are real: Stable Diffusion 2's folders name `pad_token: "!"`,
//! so `!` is a special token there and `wow!!` is `wow</w>`, `!`, `!` (ids …, 0, 0),
//! not `wow</w>`, `!!</w>`; SD 1.x's plain-string pad `<|endoftext|>` makes that
//! token case-sensitive while `<|STARTOFTEXT|>` still matches.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// One token matched in the prompt before normalisation and word splitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    pub id: u32,
    /// Matched in the normalised text (true) or in the raw text (false).
    pub normalized: bool,
}

/// A token as a tokenizer file states it, before it gets its id.
#[derive(Debug, Clone)]
struct Spec {
    content: String,
    normalized: bool,
    /// The id `tokenizer.json` / `added_tokens_decoder` gives it, if any.
    id: Option<u32>,
}

/// The resolved added tokens plus the ids of the named ones the encoder uses.
#[derive(Debug, Clone)]
pub struct SpecialTokens {
    pub added: Vec<AddedToken>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub unk: Option<u32>,
}

const NAMED: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// CLIPTokenizer's defaults for names a folder leaves out.
fn clip_default(name: &str) -> Option<&'static str> {
    match name {
        "bos_token" => Some("<|startoftext|>"),
        "eos_token" | "unk_token" | "pad_token" => Some("<|endoftext|>"),
        _ => None,
    }
}

/// One token as a string or an object; `field` names it in errors.
fn parse_spec(path: &Path, field: &str, value: &Value, default_special: bool) -> Result<Spec> {
    match value {
        Value::String(s) => Ok(Spec {
            content: s.clone(),
            normalized: false,
            id: None,
        }),
        Value::Object(o) => {
            let content = o.get("content").and_then(Value::as_str).ok_or_else(|| {
                Error::config(path, field, "an added token needs a string `content`")
            })?;
            for flag in ["lstrip", "rstrip", "single_word"] {
                if o.get(flag).and_then(Value::as_bool) == Some(true) {
                    return Err(Error::config(
                        path,
                        format!("{field}.{flag}"),
                        format!("true is not supported for CLIP's tokenizer (token {content:?}); expected false"),
                    ));
                }
            }
            let special = o
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(default_special);
            let normalized = match o.get("normalized") {
                None | Some(Value::Null) => !special,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(Error::config(
                        path,
                        format!("{field}.normalized"),
                        format!("expected true or false, found {other}"),
                    ))
                }
            };
            let id = match o.get("id") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .ok_or_else(|| {
                            Error::config(
                                path,
                                format!("{field}.id"),
                                format!("expected a token id, found {v}"),
                            )
                        })?,
                ),
            };
            Ok(Spec {
                content: content.to_string(),
                normalized,
                id,
            })
        }
        other => Err(Error::config(
            path,
            field,
            format!("expected a token string or object, found {other}"),
        )),
    }
}

/// Where the special tokens of one folder are stated.
pub struct Sources<'a> {
    pub config_path: &'a Path,
    pub config: &'a Value,
    /// `special_tokens_map.json`, when present.
    pub special_map: Option<(&'a Path, &'a Value)>,
    /// `tokenizer.json`'s `added_tokens`, when the vocabulary comes from it.
    pub json_added: Option<(&'a Path, &'a Value)>,
}

/// Resolves the tokens; `vocab` gives the ids of those stated without one.
pub fn resolve(src: &Sources, vocab: &HashMap<String, u32>) -> Result<SpecialTokens> {
    let mut base: Vec<Spec> = Vec::new();
    let decoder = src.config.get("added_tokens_decoder");
    match decoder {
        Some(Value::Object(entries)) => {
            let mut by_id: Vec<(u32, &Value)> = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let id = key.parse::<u32>().map_err(|_| {
                    Error::config(
                        src.config_path,
                        "added_tokens_decoder",
                        format!("key {key:?} is not a token id"),
                    )
                })?;
                by_id.push((id, value));
            }
            by_id.sort_by_key(|(id, _)| *id);
            for (id, value) in by_id {
                let mut spec = parse_spec(
                    src.config_path,
                    &format!("added_tokens_decoder.{id}"),
                    value,
                    false,
                )?;
                spec.id = Some(id);
                base.push(spec);
            }
        }
        Some(Value::Null) | None => {
            if let Some((path, Value::Array(items))) = src.json_added {
                for (i, value) in items.iter().enumerate() {
                    base.push(parse_spec(
                        path,
                        &format!("added_tokens.{i}"),
                        value,
                        false,
                    )?);
                }
            } else if let Some((path, other)) = src.json_added {
                if !other.is_null() {
                    return Err(Error::config(path, "added_tokens", "expected a list"));
                }
            }
        }
        Some(other) => {
            return Err(Error::config(
                src.config_path,
                "added_tokens_decoder",
                format!("expected an object of id → token, found {other}"),
            ))
        }
    }
    let legacy = decoder.is_none_or(Value::is_null);

    // The named tokens, in registration order, from the file that states them last.
    let mut named: Vec<(String, Spec)> = Vec::new();
    let mut names: Vec<String> = NAMED.iter().map(|s| s.to_string()).collect();
    let extra_key = "additional_special_tokens";
    // (file, value, whether an object there defaults to special): transformers reads
    // special_tokens_map.json's objects as special tokens (so `normalized` defaults
    // to false) and tokenizer_config.json's as plain added tokens (default true).
    let stated = |key: &str| -> Option<(&Path, &Value, bool)> {
        let from_map = if legacy {
            src.special_map
                .and_then(|(p, m)| m.get(key).filter(|v| !v.is_null()).map(|v| (p, v, true)))
        } else {
            None
        };
        from_map.or_else(|| {
            src.config
                .get(key)
                .filter(|v| !v.is_null())
                .map(|v| (src.config_path, v, false))
        })
    };
    if let Some((path, list, _)) = stated(extra_key) {
        let items = list
            .as_array()
            .ok_or_else(|| Error::config(path, extra_key, "expected a list"))?;
        for i in 0..items.len() {
            names.push(format!("{extra_key}.{i}"));
        }
    }
    for name in &names {
        let spec = if let Some(index) = name.strip_prefix(&format!("{extra_key}.")) {
            let Some((path, list, special)) = stated(extra_key) else {
                continue;
            };
            let i: usize = index.parse().unwrap_or(usize::MAX);
            match list.as_array().and_then(|l| l.get(i)) {
                Some(v) => parse_spec(path, name, v, special)?,
                None => continue,
            }
        } else {
            match stated(name) {
                Some((path, value, special)) => parse_spec(path, name, value, special)?,
                None => match clip_default(name) {
                    Some(text) => Spec {
                        content: text.to_string(),
                        normalized: false,
                        id: None,
                    },
                    None => continue,
                },
            }
        };
        // A named token whose text is among the stated added tokens takes their flags.
        let spec = base
            .iter()
            .find(|b| b.content == spec.content)
            .cloned()
            .unwrap_or(spec);
        named.push((name.clone(), spec));
    }

    // Registration: the added tokens, then the named ones; the last flags of a text win.
    let mut added: Vec<AddedToken> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    for spec in base.iter().chain(named.iter().map(|(_, s)| s)) {
        let id = match spec.id.or_else(|| vocab.get(&spec.content).copied()) {
            Some(id) => id,
            None => {
                return Err(Error::config(
                    src.config_path,
                    "special tokens",
                    format!(
                        "token {:?} is not in the vocabulary (the text encoder would have no embedding for it)",
                        spec.content
                    ),
                ))
            }
        };
        ids.insert(spec.content.clone(), id);
        let token = AddedToken {
            content: spec.content.clone(),
            id,
            normalized: spec.normalized,
        };
        match added.iter_mut().find(|t| t.content == spec.content) {
            Some(existing) => *existing = token,
            None => added.push(token),
        }
    }
    let named_id = |name: &str| -> Option<u32> {
        named
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| ids.get(&s.content).copied())
    };
    let required = |name: &str| {
        named_id(name).ok_or_else(|| {
            Error::config(src.config_path, name, "missing: CLIP's tokenizer needs it")
        })
    };
    Ok(SpecialTokens {
        bos: required("bos_token")?,
        eos: required("eos_token")?,
        pad: required("pad_token")?,
        unk: named_id("unk_token"),
        added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vocab() -> HashMap<String, u32> {
        [
            ("!", 0u32),
            ("<|startoftext|>", 49406),
            ("<|endoftext|>", 49407),
        ]
        .map(|(s, i)| (s.to_string(), i))
        .into_iter()
        .collect()
    }

    fn token(content: &str, id: u32, normalized: bool) -> AddedToken {
        AddedToken {
            content: content.to_string(),
            id,
            normalized,
        }
    }

    fn object(content: &str) -> Value {
        json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false})
    }

    #[test]
    fn sd1_legacy_folder_pads_with_a_case_sensitive_end_token() {
        let config = json!({"bos_token": object("<|startoftext|>"), "eos_token": object("<|endoftext|>"),
                            "unk_token": object("<|endoftext|>"), "pad_token": "<|endoftext|>", "model_max_length": 77});
        let path = Path::new("tokenizer_config.json");
        let map_path = Path::new("special_tokens_map.json");
        let map = config.clone();
        let src = Sources {
            config_path: path,
            config: &config,
            special_map: Some((map_path, &map)),
            json_added: None,
        };
        let s = resolve(&src, &vocab()).unwrap();
        assert_eq!(
            (s.bos, s.eos, s.pad, s.unk),
            (49406, 49407, 49407, Some(49407))
        );
        assert_eq!(
            s.added,
            vec![
                token("<|startoftext|>", 49406, true),
                token("<|endoftext|>", 49407, false)
            ]
        );
    }

    #[test]
    fn sd2_pad_makes_the_exclamation_mark_special() {
        let config = json!({"bos_token": object("<|startoftext|>"), "eos_token": object("<|endoftext|>"),
                            "unk_token": object("<|endoftext|>"), "pad_token": "!"});
        let src = Sources {
            config_path: Path::new("c"),
            config: &config,
            special_map: None,
            json_added: None,
        };
        let s = resolve(&src, &vocab()).unwrap();
        assert_eq!(s.pad, 0);
        assert!(s.added.contains(&token("!", 0, false)));
        assert!(s.added.contains(&token("<|endoftext|>", 49407, true)));
    }

    #[test]
    fn added_tokens_decoder_flags_win_over_plain_names() {
        let config = json!({"added_tokens_decoder": {"49407": {"content": "<|endoftext|>", "normalized": true, "special": true},
                                                      "49406": {"content": "<|startoftext|>", "normalized": false, "special": true}},
                            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"});
        let src = Sources {
            config_path: Path::new("c"),
            config: &config,
            special_map: None,
            json_added: None,
        };
        let s = resolve(&src, &vocab()).unwrap();
        assert_eq!(
            s.added,
            vec![
                token("<|startoftext|>", 49406, false),
                token("<|endoftext|>", 49407, true)
            ]
        );
    }

    #[test]
    fn unsupported_flags_and_unknown_tokens_are_refused() {
        let config = json!({"pad_token": {"content": "!", "lstrip": true}});
        let src = Sources {
            config_path: Path::new("tokenizer_config.json"),
            config: &config,
            special_map: None,
            json_added: None,
        };
        let e = resolve(&src, &vocab()).unwrap_err().to_string();
        assert!(e.contains("pad_token.lstrip"), "{e}");
        let config = json!({"pad_token": "<pad>"});
        let src = Sources {
            config: &config,
            ..src
        };
        let e = resolve(&src, &vocab()).unwrap_err().to_string();
        assert!(e.contains("\"<pad>\" is not in the vocabulary"), "{e}");
    }
}
