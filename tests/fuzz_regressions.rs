//! Parser inputs that aborted on an allocation, panicked or were accepted only to fail
//! later, found while writing and running the fuzz targets (fuzz/, `cargo +nightly
//! fuzz`), each now refused with an `Error` naming the file and field, with the
//! numbers. (The convolution overflow that fuzzing the reward classifier hit is
//! checked in `backend::cpu::thin_conv`'s unit tests; the CLI's in
//! tests/cli_bad_input.rs.)

use std::path::Path;

use diffsteer::json_fields::Fields;
use diffsteer::model::config::UNetConfig;
use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};
use diffsteer::Error;

const KINDS: [SchedulerKind; 5] = [
    SchedulerKind::Ddpm,
    SchedulerKind::Ddim,
    SchedulerKind::Euler,
    SchedulerKind::EulerAncestral,
    SchedulerKind::DpmSolverMultistep,
];

/// `err` is a config error of `file`, field `field`, whose message holds `parts`.
fn assert_config_error(err: Error, file: &str, field: &str, parts: &[&str]) {
    match err {
        Error::Config {
            path,
            field: f,
            message,
        } => {
            assert_eq!(path, Path::new(file));
            assert_eq!(f, field, "{message}");
            for part in parts {
                assert!(message.contains(part), "{message:?} lacks {part:?}");
            }
        }
        other => panic!("expected a config error about {field}, got {other}"),
    }
}

/// `num_train_timesteps: 1000000000000` made every scheduler allocate its training
/// tables at that length (4 TB): an abort.
#[test]
fn a_huge_training_schedule_is_refused() {
    let config =
        SchedulerConfig::from_json_str(r#"{"num_train_timesteps": 1000000000000}"#, "s.json")
            .expect("valid JSON");
    for kind in KINDS {
        let err = schedule::build(kind, &config, 10, &ScheduleOptions::default())
            .err()
            .expect("refused");
        assert_config_error(
            err,
            "s.json",
            "num_train_timesteps",
            &["1000000000000", "2 to 100000"],
        );
    }
}

/// `steps_offset: 2^64 − 1` with "leading" spacing overflowed `usize` (a panic where
/// overflow is checked, a wrapped timestep elsewhere).
#[test]
fn an_overflowing_steps_offset_is_refused() {
    let text = include_str!("../fuzz/corpus/scheduler_config/leading-steps-offset-u64-max.json");
    let config = SchedulerConfig::from_json_str(text, "s.json").expect("valid JSON");
    for kind in [SchedulerKind::Ddpm, SchedulerKind::Ddim] {
        let err = schedule::build(kind, &config, 10, &ScheduleOptions::default())
            .err()
            .expect("refused");
        assert_config_error(
            err,
            "s.json",
            "steps_offset",
            &[
                "18446744073709551615",
                "beyond the last training timestep 999",
            ],
        );
    }
    // The float-timestep schedulers clamp to the training range; they must not panic.
    for kind in [
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
    ] {
        let _ = schedule::build(kind, &config, 10, &ScheduleOptions::default());
    }
}

fn unet_config(edit: &str, value: serde_json::Value) -> diffsteer::Result<UNetConfig> {
    let text = include_str!("fixtures/models/unet2d_class/config.json");
    let mut config: serde_json::Value = serde_json::from_str(text).expect("json");
    config[edit] = value;
    Fields::parse(Path::new("config.json"), &config.to_string())
        .and_then(|f| UNetConfig::from_fields(&f))
}

/// `sample_size: 0` made the sampler panic on empty samples; `sample_size: 100000`
/// made it allocate 120 GB of latents (an abort).
#[test]
fn sample_sizes_are_bounded() {
    for (value, shown) in [
        (serde_json::json!(0), "0×0"),
        (serde_json::json!(100000), "100000×100000"),
        (serde_json::json!([16, 0]), "16×0"),
        (
            serde_json::json!(18446744073709551615u64),
            "18446744073709551615×",
        ),
    ] {
        let err = unet_config("sample_size", value).expect_err("refused");
        assert_config_error(
            err,
            "config.json",
            "sample_size",
            &[shown, "1 to 4096 per side"],
        );
    }
    let ok = unet_config("sample_size", serde_json::json!([4096, 3])).expect("in range");
    assert_eq!(ok.sample_size, Some((4096, 3)));
}

/// `norm_num_groups: 0` (or one that does not divide the channels) loaded, and failed
/// only when sampling, with a shape error that did not name the config.
#[test]
fn group_counts_must_divide_the_channels() {
    for groups in [0, 7] {
        let err = unet_config("norm_num_groups", serde_json::json!(groups)).expect_err("refused");
        assert_config_error(
            err,
            "config.json",
            "norm_num_groups",
            &[&format!("16 channels cannot be split into {groups} groups")],
        );
    }
    let err = unet_config("attn_norm_num_groups", serde_json::json!(3)).expect_err("refused");
    assert_config_error(
        err,
        "config.json",
        "attn_norm_num_groups",
        &["cannot be split into 3 groups"],
    );
    for eps in [0.0, -1.0] {
        let err = unet_config("norm_eps", serde_json::json!(eps)).expect_err("refused");
        assert_config_error(err, "config.json", "norm_eps", &["finite number > 0"]);
    }
}
