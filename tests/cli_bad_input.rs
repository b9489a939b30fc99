//! Bad command lines and failures part-way through `diffsteer generate`, through the
//! built binary: usage errors are one line naming the flag, exit code 2 and nothing
//! written; a failure while sampling exits with code 1 and keeps every batch finished
//! before it; `--overwrite` replaces earlier results and leaves nothing stale.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_usage_error, fixtures};

fn diffsteer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffsteer"))
}

fn fixture_model() -> PathBuf {
    fixtures().join("models/unet2d_class")
}

fn generate_with(model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = diffsteer();
    cmd.arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--quiet", "--out"])
        .arg(out);
    if !extra.contains(&"--steps") {
        cmd.args(["--steps", "2"]);
    }
    cmd.args(extra).output().expect("runs")
}

/// A bad `generate` command line on the digits model: exit code 2, one line naming
/// `flag` and containing `expected`, `--out` never created.
fn rejects(args: &[&str], flag: &str, expected: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("never");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/digits");
    let result = generate_with(&model, &out, args);
    assert_usage_error(args, &result, &out, flag, expected);
}

/// The names of the files in `dir`.
fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn metadata(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metadata.jsonl"))
        .expect("metadata")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn out_of_range_counts_and_sizes_are_usage_errors() {
    rejects(&["--threads", "0"], "--threads", "at least 1");
    rejects(&["--threads", "100000000"], "--threads", "at most 4096");
    rejects(&["--grid-scale", "0"], "--grid-scale", "at least 1");
    rejects(
        &["--grid-scale", "1000000000"],
        "--grid-scale",
        "at most 64",
    );
    rejects(&["--count", "1000001"], "--count", "at most 1000000");
    rejects(
        &["--count", "99999999999999999999999"],
        "--count",
        "at most 1000000",
    );
    rejects(
        &["--seed", "18446744073709551615", "--count", "2"],
        "--seed",
        "overflows",
    );
    rejects(
        &["--seed", "18446744073709551616"],
        "--seed",
        "18446744073709551615",
    );
    rejects(&["--seed", "-1"], "--seed", "whole number");
}

/// `eval`'s image and target counts are bounded before anything is allocated for them.
#[test]
fn eval_counts_are_bounded() {
    for (args, flag, expected) in [
        (
            ["--count", "1000000000000", "--sweep", "reward-scale=0"],
            "--count",
            "at most 1000000",
        ),
        (
            ["--targets", "0-1000000000000", "--sweep", "reward-scale=0"],
            "--targets",
            "more than 1024 targets",
        ),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("never");
        let result = diffsteer()
            .arg("eval")
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("runs");
        assert_usage_error(&args, &result, &out, flag, expected);
    }
}

#[test]
fn threads_is_checked_before_and_after_the_command() {
    for args in [
        ["--threads", "0", "generate"],
        ["generate", "--threads", "0"],
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("never");
        let result = diffsteer()
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("runs");
        assert_usage_error(&args, &result, &out, "--threads", "at least 1");
    }
}

#[test]
fn malformed_cfg_intervals_are_usage_errors() {
    rejects(&["--cfg-interval", "5"], "--cfg-interval", "START:STOP");
    rejects(
        &["--cfg-interval", "a:b"],
        "--cfg-interval",
        "bad start \"a\"",
    );
    rejects(
        &["--cfg-interval", "2:x"],
        "--cfg-interval",
        "bad stop \"x\"",
    );
    rejects(&["--cfg-interval", "-1:3"], "--cfg-interval", "bad start");
    rejects(
        &["--cfg-interval", "9:3"],
        "--cfg-interval",
        "start 9 is after stop 3",
    );
}

#[test]
fn zero_alignment_counts_are_usage_errors() {
    rejects(
        &[
            "--reward",
            "classifier:1",
            "--particles",
            "2",
            "--fk-every",
            "0",
        ],
        "--fk-every",
        "at least 1",
    );
    rejects(
        &["--reward", "classifier:1", "--reward-iters", "0"],
        "--reward-iters",
        "at least 1",
    );
    rejects(
        &["--reward", "classifier:1", "--recur", "0"],
        "--recur",
        "at least 1",
    );
}

#[test]
fn unknown_flags_and_commands_are_usage_errors() {
    rejects(&["--frobnicate"], "--frobnicate", "unexpected argument");
    rejects(&["--frobnicate=3"], "--frobnicate", "unexpected argument");
    // A near miss gets a suggestion.
    rejects(&["--overwrit"], "--overwrit", "--overwrite");
    let result = diffsteer().arg("frobnicate").output().expect("runs");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("frobnicate"),
        "{stderr}"
    );
}

/// Built without the `cuda` feature (the default build; CI runs this file so), a
/// CUDA device is a usage error that says how to get one.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_usage_error() {
    rejects(&["--device", "cuda"], "--device", "built without CUDA");
    rejects(&["--device", "cuda:1"], "--device", "--features cuda");
    let tmp = tempfile::tempdir().expect("tmp");
    let json = tmp.path().join("bench.json");
    let result = diffsteer()
        .args(["bench", "--device", "cuda", "--json"])
        .arg(&json)
        .output()
        .expect("runs");
    assert_usage_error(&["bench"], &result, &json, "--device", "built without CUDA");
}

#[test]
fn overwrite_replaces_every_earlier_result() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, fresh) = (tmp.path().join("out"), tmp.path().join("fresh"));
    let model = fixture_model();
    let first = generate_with(&model, &out, &["--count", "3", "--seed", "0"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let old_first_png = std::fs::read(out.join("000000.png")).expect("png");
    std::fs::write(out.join("notes.txt"), "the user's own file").expect("write");

    // Without --overwrite: refused, nothing touched.
    let refused = generate_with(&model, &out, &["--count", "2", "--seed", "50"]);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(metadata(&out).len(), 3);

    let again = generate_with(
        &model,
        &out,
        &["--count", "2", "--seed", "50", "--overwrite"],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Exactly the new run's results (000002.png of the old run is gone), and files
    // that are not results stay.
    let expected: BTreeSet<String> = ["000000.png", "000001.png", "metadata.jsonl", "notes.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(files(&out), expected);
    let lines = metadata(&out);
    let seeds: Vec<u64> = lines
        .iter()
        .map(|l| l["seed"].as_u64().expect("seed"))
        .collect();
    assert_eq!(seeds, [50, 51]);
    // The same bytes as the same run into an empty folder (metadata records no
    // output folder).
    let clean = generate_with(&model, &fresh, &["--count", "2", "--seed", "50"]);
    assert!(clean.status.success());
    for file in ["000000.png", "000001.png", "metadata.jsonl"] {
        let (a, b) = (
            std::fs::read(out.join(file)).expect("overwritten"),
            std::fs::read(fresh.join(file)).expect("fresh"),
        );
        assert_eq!(a, b, "{file}");
    }
    assert_ne!(
        std::fs::read(out.join("000000.png")).expect("png"),
        old_first_png,
        "seed 50 drew the same picture as seed 0"
    );
}

/// A copy of the fixture model whose class 9 embedding is NaN: every image of class 9
/// fails at its first step, the others sample normally.
fn model_with_a_broken_class(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let source = fixture_model();
    std::fs::copy(source.join("config.json"), dir.join("config.json")).expect("copy");
    let bytes = std::fs::read(source.join("diffusion_pytorch_model.safetensors")).expect("read");
    let (header_len, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).expect("a safetensors file");
    let info = meta
        .info("class_embedding.weight")
        .expect("class embedding");
    assert_eq!(info.shape, [11, 64]);
    assert_eq!(info.dtype, safetensors::Dtype::F32);
    let start = 8 + header_len + info.data_offsets.0 + 9 * 64 * 4;
    let mut bytes = bytes.clone();
    for v in bytes[start..start + 64 * 4].chunks_exact_mut(4) {
        v.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors"), bytes).expect("write");
}

#[test]
fn a_failure_part_way_keeps_the_batches_before_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, out) = (tmp.path().join("model"), tmp.path().join("out"));
    model_with_a_broken_class(&model);
    // Classes cycle 0..9: batches of 4 are classes 0-3, 4-7, then 8, 9, 0, 1.
    let result = generate_with(
        &model,
        &out,
        &["--count", "12", "--batch", "4", "--seed", "7"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("NaN") && lines[0].contains("step 0"),
        "{stderr}"
    );
    // The two finished batches: 8 images and their 8 metadata lines.
    let mut expected: BTreeSet<String> = (0..8).map(|i| format!("{i:06}.png")).collect();
    expected.insert("metadata.jsonl".into());
    assert_eq!(files(&out), expected);
    let meta = metadata(&out);
    assert_eq!(meta.len(), 8);
    for (i, line) in meta.iter().enumerate() {
        assert_eq!(line["file"], format!("{i:06}.png"));
        assert_eq!(line["seed"], 7 + i as u64);
        assert_eq!(line["class"], i as u64);
        let png = std::fs::read(out.join(format!("{i:06}.png"))).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    // The images kept are those of an undamaged run: the failure touched nothing.
    let clean_out = tmp.path().join("clean");
    let clean = generate_with(
        &fixture_model(),
        &clean_out,
        &["--count", "8", "--batch", "4", "--seed", "7"],
    );
    assert!(clean.status.success());
    for i in 0..8 {
        let name = format!("{i:06}.png");
        assert_eq!(
            std::fs::read(out.join(&name)).expect("kept"),
            std::fs::read(clean_out.join(&name)).expect("clean"),
            "{name}"
        );
    }
}
