//! `diffsteer tokenize --model DIR TEXT`: how a pipeline's CLIP tokenizer splits a
//! prompt. One line per token (position, id, text) up to the end token, a warning on
//! stderr when the prompt is cut to fit, and the padded ids the text encoder gets as
//! a JSON array on the last line of stdout.

use std::io::Write;
use std::path::{Path, PathBuf};

use diffsteer::model::clip::ClipTokenizer;

use crate::args::TokenizeArgs;
use crate::usage_error::{usage, CliError};

/// The tokenizer folder of `model`: a pipeline's `tokenizer/`, or `model` itself
/// when it is a tokenizer folder.
fn tokenizer_dir(model: &Path) -> Result<PathBuf, CliError> {
    let shown = model.display();
    if !model.is_dir() {
        return Err(usage(
            "--model",
            format!("{shown} is not a folder (expected a diffusers pipeline folder)"),
        ));
    }
    let sub = model.join("tokenizer");
    if sub.is_dir() {
        return Ok(sub);
    }
    if model.join("tokenizer_config.json").is_file() {
        return Ok(model.to_path_buf());
    }
    Err(usage(
        "--model",
        format!("{shown} has no tokenizer/ folder (expected a Stable Diffusion pipeline folder, or a tokenizer folder)"),
    ))
}

pub fn run(args: &TokenizeArgs) -> Result<(), CliError> {
    let dir = tokenizer_dir(&args.model)?;
    let tokenizer = ClipTokenizer::load(&dir).map_err(|e| match &e {
        // Files that are not there: the folder given is not a complete tokenizer.
        diffsteer::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            usage("--model", e)
        }
        _ => CliError::Runtime(e),
    })?;
    let encoding = tokenizer.encode(&args.text);
    let kept = encoding.full_length.min(tokenizer.max_length());
    let mut out = std::io::stdout().lock();
    let write_err =
        |e: std::io::Error| CliError::Runtime(diffsteer::Error::io("<stdout>", "cannot write", e));
    for (position, &id) in encoding.ids[..kept].iter().enumerate() {
        let text = tokenizer
            .token_text(id)
            .unwrap_or_else(|| "<unknown id>".to_string());
        writeln!(out, "{position:>4} {id:>7}  {text}").map_err(write_err)?;
    }
    let pad = tokenizer.pad_id();
    let pad_text = tokenizer.token_text(pad).unwrap_or_default();
    writeln!(
        out,
        "{} tokens with start and end, padded to {} with {pad} ({pad_text})",
        kept,
        tokenizer.max_length()
    )
    .map_err(write_err)?;
    if encoding.truncated {
        let all = tokenizer.tokens(&args.text);
        let room = tokenizer.max_length() - 2;
        // The cut-off text as words again: each `</w>` ends a word.
        let first_cut: String = all[room..]
            .iter()
            .take(8)
            .filter_map(|&id| tokenizer.token_text(id))
            .collect::<String>()
            .replace("</w>", " ");
        eprintln!(
            "warning: the prompt is {} tokens long; the text encoder takes {room} (plus start and end): everything from \"{}…\" on is cut",
            all.len(),
            first_cut.trim_end()
        );
    }
    let json = serde_json::to_string(&encoding.ids).map_err(|e| {
        CliError::Runtime(diffsteer::Error::invalid(
            "ids",
            format!("cannot write JSON: {e}"),
        ))
    })?;
    writeln!(out, "{json}").map_err(write_err)?;
    Ok(())
}
