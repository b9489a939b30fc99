//! `diffsteer tokenize`: the split, the padded ids as JSON on the last line (the ids
//! transformers gives, from the tokenizer corpus), the truncation warning, and
//! one-line errors for folders without a (complete) tokenizer.

mod common;

use std::process::{Command, Output};

use common::fixtures;

fn tokenize(model: &std::path::Path, text: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffsteer"))
        .args(["tokenize", "--model"])
        .arg(model)
        .arg(text)
        .output()
        .expect("runs")
}

fn last_line_ids(out: &Output) -> Vec<u32> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a last line");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line {last:?} is not a JSON id list: {e}"))
}

#[test]
fn prints_the_split_and_the_padded_ids() {
    let out = tokenize(
        &fixtures().join("clip-tokenizer"),
        "A photograph of an astronaut riding a horse",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = last_line_ids(&out);
    assert_eq!(ids.len(), 77);
    assert_eq!(
        &ids[..10],
        &[49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8853  photograph</w>"), "{stdout}");
    assert!(
        stdout.contains("<|startoftext|>") && stdout.contains("<|endoftext|>"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty(), "no warning for a short prompt");
}

#[test]
fn pipeline_folders_use_their_tokenizer_and_long_prompts_warn() {
    let cases =
        std::fs::read_to_string(fixtures().join("text/tokenizer_cases.json")).expect("cases");
    let cases: serde_json::Value = serde_json::from_str(&cases).expect("json");
    let long = cases["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["sd2_tiny"]["full_length"].as_u64().unwrap_or(0) > 77)
        .expect("a truncated case");
    let prompt = long["prompt"].as_str().expect("prompt");
    let out = tokenize(&fixtures().join("pipelines/sd2_tiny"), prompt);
    assert_eq!(out.status.code(), Some(0));
    let mut want: Vec<u32> = long["sd2_tiny"]["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    want.resize(77, 0);
    assert_eq!(last_line_ids(&out), want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning: the prompt is") && stderr.contains("is cut"),
        "{stderr}"
    );
}

#[test]
fn folders_without_a_tokenizer_are_usage_errors() {
    let one_line = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr
    };
    let out = tokenize(std::path::Path::new("/nonexistent/model"), "x");
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out).contains("--model"));

    let out = tokenize(&fixtures().join("models/unet_cond"), "x");
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out).contains("no tokenizer/ folder"));

    let tmp = tempfile::tempdir().expect("tmp");
    for name in ["vocab.json", "tokenizer_config.json"] {
        std::fs::copy(
            fixtures().join("clip-tokenizer").join(name),
            tmp.path().join(name),
        )
        .expect("copy");
    }
    let out = tokenize(tmp.path(), "x");
    assert_eq!(out.status.code(), Some(2));
    let e = one_line(&out);
    assert!(e.contains("--model") && e.contains("merges.txt"), "{e}");
    assert!(out.stdout.is_empty());

    // A tokenizer whose files are there but broken fails while running: exit 1.
    std::fs::copy(
        fixtures().join("clip-tokenizer/merges.txt"),
        tmp.path().join("merges.txt"),
    )
    .expect("copy");
    std::fs::write(tmp.path().join("vocab.json"), "{").expect("write");
    let out = tokenize(tmp.path(), "x");
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("vocab.json"));
}
