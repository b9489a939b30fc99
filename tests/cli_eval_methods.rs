//! `diffsteer eval --methods`: a row per preset with finite numbers and the compute
//! each preset should cost, its chart and grids, and usage errors (exit code 2,
//! nothing written) for unknown or malformed methods.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::assert_usage_error;

fn diffsteer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffsteer"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_methods_eval_writes_a_finite_row_per_method() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("methods");
    let result = diffsteer()
        .arg("eval")
        .arg("--model")
        .arg(root().join("weights/digits"))
        .args([
            "--methods",
            "cfg,apg,cfg-zero-star,reward,fk4,best-of-4,avoid:7",
            "--targets",
            "1,7",
            "--count",
            "1",
            "--steps",
            "4",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("FD"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("methods.csv")).expect("csv");
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][..3], ["method", "images", "target_share"]);
    let methods: Vec<&str> = rows[1..].iter().map(|r| r[0]).collect();
    assert_eq!(
        methods,
        [
            "cfg",
            "apg",
            "cfg-zero-star",
            "reward",
            "fk4",
            "best-of-4",
            "avoid:7"
        ]
    );
    for row in &rows[1..] {
        assert_eq!(row.len(), rows[0].len(), "{csv}");
        // Two targets × one image, or as many unconditional images for avoid:7.
        assert_eq!(row[1], "2", "{csv}");
        for (column, value) in rows[0].iter().zip(row).skip(2).take(8) {
            if *column == "diversity" {
                // Defined only for two images of one target (or, for avoid:7, of
                // one class): NaN here for the targets, never a made-up number.
                continue;
            }
            let v: f64 = value.parse().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "{}: {column} = {value}\n{csv}", row[0]);
        }
        if row[0] != "avoid:7" {
            assert_eq!(row[6], "NaN", "{csv}");
        }
        let share: f64 = row[2].parse().expect("share");
        assert!((0.0..=1.0).contains(&share));
        let reward: f64 = row[3].parse().expect("reward");
        assert!(reward <= 0.0, "a log-probability: {csv}");
        let fd: f64 = row[5].parse().expect("fd");
        assert!(
            fd > 0.0,
            "two 4-step samples are not the real digits: {csv}"
        );
    }
    // Model rows per image over 4 steps: CFG runs a conditional and an unconditional
    // row, --class none one, four particles four times as many.
    let rows_per_image = |m: &str| {
        rows.iter()
            .find(|r| r[0] == m)
            .map(|r| r[7].to_string())
            .expect(m)
    };
    for (method, rows) in [
        ("cfg", "8"),
        ("apg", "8"),
        ("reward", "4"),
        ("fk4", "16"),
        ("best-of-4", "16"),
        ("avoid:7", "4"),
    ] {
        assert_eq!(rows_per_image(method), rows, "{method}\n{csv}");
    }
    for file in [
        "methods.png",
        "grid-method-cfg.png",
        "grid-method-fk4.png",
        "grid-method-avoid-7.png",
    ] {
        let png = std::fs::read(out.join(file)).expect(file);
        assert_eq!(&png[1..4], b"PNG");
    }

    // A second run into the same folder is refused without --overwrite.
    let again = diffsteer()
        .args(["eval", "--methods", "cfg", "--quiet", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
}

#[test]
fn bad_methods_are_usage_errors_that_list_the_valid_ones() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("never");
    let out_s = out.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str, &str); 5] = [
        (
            &["--methods", "cfg,sharpest"],
            "--methods",
            "accepted: cfg, apg, cfg-zero-star, reward, fk4, best-of-4, avoid:K",
        ),
        (&["--methods", "avoid"], "--methods", "avoid:7"),
        (&["--methods", "avoid:12"], "--methods", "not a class"),
        (
            &["--methods", "cfg", "--sweep", "particles=1,2"],
            "--methods",
            "cannot be used with",
        ),
        (
            &["--methods", "reward", "--reward-scale", "2"],
            "--methods",
            "cannot be used with",
        ),
    ];
    for (flags, flag, expected) in cases {
        let mut args = vec!["eval", "--steps", "2", "--out", out_s];
        args.extend(flags);
        let result = diffsteer().args(&args).output().expect("runs");
        assert_usage_error(&args, &result, &out, flag, expected);
    }
}
