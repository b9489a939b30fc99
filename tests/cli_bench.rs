//! The `diffsteer bench` command line: batch lists, the JSON report, the built-in
//! `sd15-shape` model, and one-line usage errors before any timing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::assert_usage_error;

fn diffsteer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffsteer"))
}

fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/digits")
}

fn bench(args: &[&str]) -> std::process::Output {
    diffsteer()
        .args(["--threads", "2", "bench"])
        .args(args)
        .output()
        .expect("runs")
}

fn positive(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"));
    assert!(x.is_finite() && x > 0.0, "{key} = {x} in {v}");
    x
}

#[test]
fn bench_writes_json_with_one_entry_per_batch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let json = tmp.path().join("bench.json");
    let model = digits().display().to_string();
    let json_arg = json.display().to_string();
    let result = bench(&[
        "--model", &model, "--iters", "1", "--steps", "2", "--batch", "1,2", "--json", &json_arg,
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("GFLOP/s (ceiling)"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    positive(&report["machine"], "ceiling_gflops");
    positive(&report["machine"], "threads");
    positive(&report["forward"], "gflops");
    assert!(!report["forward"]["ops"].as_array().expect("ops").is_empty());
    // The whole-pipeline stages are sd15-shape's alone.
    assert!(report["model"]["pipeline"].is_null(), "{report}");
    let batches = report["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 2, "{report}");
    for (entry, batch) in batches.iter().zip([1, 2]) {
        assert_eq!(entry["batch"], batch);
        assert_eq!(entry["rows_per_call"], 2 * batch, "CFG doubles the rows");
        assert!(entry["pipeline"].is_null(), "{entry}");
        for key in ["ms_per_step", "images_per_s", "gflops", "share_of_ceiling"] {
            positive(entry, key);
        }
        // VmHWM exists on Linux; elsewhere the field is null.
        if Path::new("/proc/self/status").exists() {
            positive(entry, "peak_rss_mib");
        }
    }
}

#[test]
fn bench_rejects_bad_flags_before_timing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let never = tmp.path().join("never.json");
    let never_arg = never.display().to_string();
    for (args, flag, expected) in [
        (
            vec!["--batch", "0", "--json", &never_arg],
            "--batch",
            "whole number",
        ),
        (
            vec!["--batch", "1,x", "--json", &never_arg],
            "--batch",
            "whole number",
        ),
        (
            vec!["--json", "/nonexistent-dir/x.json"],
            "--json",
            "does not exist",
        ),
    ] {
        let result = bench(&args);
        assert_usage_error(&args, &result, &never, flag, expected);
        assert!(
            result.stdout.is_empty(),
            "{args:?}: timing started: {}",
            String::from_utf8_lossy(&result.stdout)
        );
    }
}

/// The built-in SD 1.5-shaped pipeline (U-Net, text encoder and VAE: 1.07B random
/// parameters) at a tiny latent size: whole text-to-image runs, timed per stage.
#[test]
fn bench_runs_the_sd15_shape_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    let json = tmp.path().join("bench.json");
    let json_arg = json.display().to_string();
    let result = bench(&[
        "--model",
        "sd15-shape",
        "--size",
        "8",
        "--batch",
        "1",
        "--steps",
        "1",
        "--iters",
        "1",
        "--json",
        &json_arg,
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("859.5M parameters"), "{stdout}");
    assert!(
        stdout.contains("123.1M parameters"),
        "text encoder: {stdout}"
    );
    assert!(stdout.contains("83.7M parameters"), "VAE: {stdout}");
    assert!(stdout.contains("attention"), "per-op breakdown: {stdout}");
    assert!(stdout.contains("whole text-to-image runs"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let model = &report["model"]["pipeline"];
    assert_eq!(model["text_encoder_parameters"], 123_060_480, "{report}");
    assert_eq!(model["vae_parameters"], 83_653_863, "{report}");
    assert_eq!(model["image_height"], 64, "latent 8 is 64 pixels");
    assert_eq!(model["image_width"], 64);
    let batches = report["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 1, "{report}");
    let stages = &batches[0]["pipeline"];
    let total = positive(stages, "total_s");
    let parts = positive(stages, "text_encode_ms") / 1e3
        + positive(stages, "sampling_s")
        + positive(stages, "vae_decode_s");
    assert!(parts <= total * 1.001, "stages {parts} s > total {total} s");
    assert_eq!(positive(stages, "seconds_per_image"), total, "one image");
}
