//! The `diffsteer generate` command line: outputs, metadata, determinism, and
//! one-line usage errors with exit code 2 that leave nothing behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_usage_error, fixtures};

fn diffsteer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffsteer"))
}

fn model() -> String {
    fixtures().join("models/unet2d_class").display().to_string()
}

fn generate(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = diffsteer();
    cmd.args(["generate", "--model", &model(), "--quiet", "--out"])
        .arg(out);
    if !extra.contains(&"--steps") {
        cmd.args(["--steps", "3"]);
    }
    cmd.args(extra).output().expect("runs")
}

#[test]
fn generate_writes_images_and_metadata() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    // Inside the --out folder, which does not exist yet: the README's quick start.
    let grid = out.join("grid.png");
    let result = generate(
        &out,
        &[
            "--count",
            "3",
            "--batch",
            "2",
            "--class",
            "7",
            "--seed",
            "40",
            "--scheduler",
            "euler-a",
            "--cfg",
            "2.5",
            "--grid",
            grid.to_str().expect("utf8"),
        ],
    );
    assert!(
        result.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    for i in 0..3 {
        let png = std::fs::read(out.join(format!("{i:06}.png"))).expect("png");
        assert_eq!(&png[1..4], b"PNG");
    }
    assert!(std::fs::read(&grid).expect("grid").starts_with(b"\x89PNG"));
    let metadata = std::fs::read_to_string(out.join("metadata.jsonl")).expect("metadata");
    let lines: Vec<serde_json::Value> = metadata
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["file"], format!("{i:06}.png"));
        assert_eq!(line["seed"], 40 + i as u64);
        assert_eq!(line["class"], 7);
        assert_eq!(line["steps"], 3);
        assert_eq!(line["scheduler"], "euler-a");
        assert_eq!(line["cfg"], 2.5);
    }
}

#[test]
fn same_seed_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        let r = generate(dir, &["--count", "2", "--seed", "9", "--scheduler", "ddpm"]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    for i in 0..2 {
        let name = format!("{i:06}.png");
        assert_eq!(
            std::fs::read(a.join(&name)).expect("a"),
            std::fs::read(b.join(&name)).expect("b")
        );
    }
    // A different seed gives a different image.
    let c = tmp.path().join("c");
    assert!(
        generate(&c, &["--count", "1", "--seed", "10", "--scheduler", "ddpm"])
            .status
            .success()
    );
    assert_ne!(
        std::fs::read(a.join("000001.png")).expect("a"),
        std::fs::read(c.join("000000.png")).expect("c")
    );
}

/// Runs a bad command line; checks exit code 2, a single error line naming `flag`
/// and containing `expected`, and that `--out` was not created.
fn rejects(args: &[&str], flag: &str, expected: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("never");
    let result = generate(&out, args);
    assert_usage_error(args, &result, &out, flag, expected);
}

#[test]
fn bad_flags_are_one_line_errors_with_exit_code_2() {
    rejects(
        &["--scheduler", "heun"],
        "--scheduler",
        "ddim, ddpm, euler, euler-a, dpm++2m",
    );
    rejects(&["--count", "0"], "--count", "at least 1");
    rejects(&["--count", "-3"], "--count", "at least 1");
    rejects(&["--steps", "0"], "--steps", "at least 1");
    rejects(&["--steps", "-1"], "--steps", "at least 1");
    rejects(&["--batch", "0"], "--batch", "at least 1");
    rejects(&["--steps", "1001"], "--steps", "1 to 1000");
    rejects(&["--class", "10"], "--class", "0..=9 or none");
    rejects(&["--class", "seven"], "--class", "none");
    rejects(&["--cfg-rescale", "1.5"], "--cfg-rescale", "[0, 1]");
    rejects(&["--cfg-interval", "9:3"], "--cfg-interval", "after stop");
    rejects(&["--eta", "-1"], "--eta", "≥ 0");
    rejects(&["--karras"], "--karras", "euler and dpm++2m");
    rejects(
        &["--grid", "/nonexistent-dir/grid.png"],
        "--grid",
        "does not exist",
    );
    rejects(&["--device", "gpu"], "--device", "cpu, cuda or cuda:N");
    rejects(&["--device", "cuda:x"], "--device", "cpu, cuda or cuda:N");
    rejects(&["--dtype", "fp8"], "--dtype", "f32, f16 or bf16");
    rejects(&["--dtype", "f16"], "--dtype", "computes in f32 only");
    rejects(
        &["--device", "cpu", "--dtype", "bf16"],
        "--dtype",
        "needs a cuda device",
    );
}

#[test]
fn class_on_a_model_without_classes_is_rejected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("plain");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // The condition model fixture has no class embedding.
    let src = fixtures().join("models/unet_cond");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy");
    }
    let out = tmp.path().join("never");
    let result = diffsteer()
        .args([
            "generate",
            "--model",
            dir.to_str().expect("utf8"),
            "--class",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("runs");
    assert_eq!(result.status.code(), Some(2));
    assert!(!out.exists());
}

#[test]
fn missing_model_and_unwritable_out_are_usage_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let result = diffsteer()
        .args(["generate", "--model", "/nonexistent/model", "--out"])
        .arg(tmp.path().join("o"))
        .output()
        .expect("runs");
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("--model"));

    // A file where the output folder should be.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"x").expect("write");
    let result = generate(&blocker, &["--count", "1"]);
    assert_eq!(result.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("--out") && stderr.contains("not a folder"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&blocker).expect("untouched"), b"x");
}

#[test]
fn existing_results_are_not_overwritten_without_the_flag() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    assert!(generate(&out, &["--count", "1"]).status.success());
    let before = std::fs::read(out.join("000000.png")).expect("png");
    let again = generate(&out, &["--count", "1", "--seed", "5"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    assert_eq!(std::fs::read(out.join("000000.png")).expect("png"), before);
}
