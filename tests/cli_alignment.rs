//! The alignment flags of `diffsteer generate` and the `diffsteer eval` sweep: what
//! they write, and one-line usage errors (exit code 2, nothing written) for bad
//! rewards, windows, particle counts and classifier folders.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::sync::Arc;

use common::{assert_usage_error, fixtures};
use diffsteer::reward::{ClassGoal, ClassifierEnsemble, ClassifierReward, Reward, SampleShape};
use diffsteer::rng::NoiseStream;
use diffsteer::schedule::{self, ScheduleOptions, SchedulerKind};
use diffsteer::{
    Alignment, Condition, CpuBackend, Guidance, Image8, ModelFolder, NoiseSource, PhiloxNoise,
    SampleOutput, SampleSpec, Sampler,
};

fn diffsteer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffsteer"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate(out: &Path, extra: &[&str]) -> Output {
    let mut cmd = diffsteer();
    cmd.arg("generate")
        .arg("--model")
        .arg(root().join("weights/digits"))
        .args(["--quiet", "--out"])
        .arg(out);
    if !extra.contains(&"--steps") {
        cmd.args(["--steps", "4"]);
    }
    cmd.args(extra).output().expect("runs")
}

fn rejects(args: &[&str], flag: &str, expected: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("never");
    let result = generate(&out, args);
    assert_usage_error(args, &result, &out, flag, expected);
}

#[test]
fn steered_generation_records_rewards_and_particles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let result = generate(
        &out,
        &[
            "--class",
            "none",
            "--reward",
            "classifier:3",
            "--reward",
            "ink:0.15@0.5",
            "--count",
            "2",
            "--particles",
            "3",
            "--steer",
            "fk",
            "--fk-every",
            "1",
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let metadata = std::fs::read_to_string(out.join("metadata.jsonl")).expect("metadata");
    let lines: Vec<serde_json::Value> = metadata
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let terms = &line["reward_terms"];
        let classifier = terms["classifier:3"].as_f64().expect("classifier term");
        let ink = terms["ink:0.15"].as_f64().expect("ink term");
        let total = line["reward_value"].as_f64().expect("total");
        assert!(classifier <= 0.0, "a log-probability: {classifier}");
        assert!((total - (classifier + 0.5 * ink)).abs() < 1e-4 * total.abs().max(1.0));
        assert!(line["particle"].as_u64().expect("particle") < 3);
        assert_eq!(line["steering"]["method"], "fk");
        // --class none: classifier-free guidance does not apply.
        assert!(line["cfg"].is_null(), "{line}");
        // Feynman-Kac on DDIM draws fresh noise by default.
        assert_eq!(line["eta"], 1.0);
    }
}

/// Gives a run with one particle per sample the noise streams of particle `.0` of a
/// steered run (see tests/alignment.rs).
struct AsParticle(u32);

impl NoiseSource for AsParticle {
    fn fill(
        &self,
        index: usize,
        seed: u64,
        stream: NoiseStream,
        out: &mut [f32],
    ) -> diffsteer::Result<()> {
        PhiloxNoise.fill(index, seed, stream.for_particle(self.0), out)
    }
}

/// `--steer best-of-n` writes the particle with the best final reward: each image's
/// 3 particles are run alone through the library, scored with the same classifier,
/// and the written PNG, `particle` and `reward_value` must be the best one's.
#[test]
fn best_of_n_writes_the_particle_with_the_best_final_reward() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let (count, particles, seed) = (4usize, 3usize, 20u64);
    let result = generate(
        &out,
        &[
            "--class",
            "none",
            "--reward",
            "classifier:3",
            "--reward-scale",
            "0",
            "--particles",
            "3",
            "--steer",
            "best-of-n",
            "--scheduler",
            "ddim",
            "--eta",
            "1",
            "--count",
            "4",
            "--seed",
            "20",
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let metadata = std::fs::read_to_string(out.join("metadata.jsonl")).expect("metadata");
    let lines: Vec<serde_json::Value> = metadata
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), count);

    // The same images through the library, one particle at a time.
    let backend = CpuBackend::new();
    let folder = ModelFolder::locate(root().join("weights/digits")).expect("model");
    let unet = folder.load_unet(&backend).expect("unet");
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &folder.load_scheduler_config().expect("scheduler config"),
        4,
        &ScheduleOptions {
            eta: 1.0,
            karras: None,
        },
    )
    .expect("scheduler");
    let sampler = Sampler::new(&backend, &unet, scheduler.as_ref()).expect("sampler");
    // `generate` without --classifier reads the shipped ensemble.
    let classifier = Arc::new(
        ClassifierEnsemble::load_on(
            &root().join("weights/digit-reward"),
            Arc::new(CpuBackend::new()),
        )
        .expect("the default reward model"),
    );
    let reward = ClassifierReward::of_ensemble(classifier, 3, ClassGoal::Target).expect("reward");
    let specs: Vec<SampleSpec> = (0..count as u64)
        .map(|i| SampleSpec {
            seed: seed + i,
            condition: Condition::Unconditional,
            guidance: Guidance::cfg(3.0),
        })
        .collect();
    let alone: Vec<Vec<SampleOutput>> = (0..particles)
        .map(|p| {
            sampler
                .sample_aligned(
                    &specs,
                    &AsParticle(p as u32),
                    &Alignment::none(),
                    &mut |_| {},
                )
                .expect("one particle")
        })
        .collect();
    let mut winners = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let rewards: Vec<f32> = (0..particles)
            .map(|p| {
                reward
                    .evaluate(SampleShape::new(28, 28, 1), &alone[p][i].data, None)
                    .expect("reward")[0]
            })
            .collect();
        let max = rewards.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let best = rewards.iter().position(|&r| r == max).expect("particles");
        assert_eq!(
            line["particle"].as_u64(),
            Some(best as u64),
            "image {i}: rewards {rewards:?}, {line}"
        );
        let written = line["reward_value"].as_f64().expect("reward_value");
        assert!(
            (written - max as f64).abs() <= 1e-6 * (max as f64).abs().max(1.0),
            "image {i}: reward_value {written}, best particle's {max}"
        );
        let s = &alone[best][i];
        let png = Image8::from_model_space(&s.data, s.height, s.width, s.channels)
            .and_then(|img| img.encode_png())
            .expect("png");
        let file = line["file"].as_str().expect("file");
        assert_eq!(
            std::fs::read(out.join(file)).expect("png written"),
            png,
            "image {i}: {file} is not the best particle's image"
        );
        winners.push(best);
    }
    // The seeds are such that the survivor is not always particle 0.
    assert!(winners.iter().any(|&w| w != 0), "winners {winners:?}");
}

#[test]
fn avoidance_composes_with_targets_weights_and_particles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let args = [
        "--class",
        "none",
        "--reward",
        "classifier:3",
        "--reward",
        "avoid:8@2",
        "--count",
        "2",
        "--particles",
        "2",
    ];
    let result = generate(&out, &args);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let metadata = std::fs::read_to_string(out.join("metadata.jsonl")).expect("metadata");
    for line in metadata.lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(
            line["reward"],
            serde_json::json!(["classifier:3", "avoid:8@2"])
        );
        let target = line["reward_terms"]["classifier:3"]
            .as_f64()
            .expect("target");
        let avoid = line["reward_terms"]["avoid:8"].as_f64().expect("avoid");
        let total = line["reward_value"].as_f64().expect("total");
        assert!(target <= 0.0 && avoid <= 0.0, "{line}");
        assert!((total - (target + 2.0 * avoid)).abs() < 1e-4 * total.abs().max(1.0));
        assert!(line["particle"].as_u64().expect("particle") < 2);
    }
}

#[test]
fn bad_alignment_flags_are_one_line_errors() {
    rejects(&["--reward", "aesthetic:1"], "--reward", "classifier:D");
    rejects(&["--reward", "classifier"], "--reward", "classifier:D");
    rejects(&["--reward", "classifier:12"], "--reward", "12");
    rejects(&["--reward", "avoid:10"], "--reward", "0..=9");
    rejects(&["--reward", "avoid:-3"], "--reward", "not a whole");
    rejects(&["--reward", "avoid:seven"], "--reward", "not a whole");
    rejects(&["--reward", "ink:2"], "--reward", "[0, 1]");
    rejects(&["--reward", "ink:0.2@nan"], "--reward", "weight");
    rejects(
        &["--particles", "0", "--reward", "classifier:1"],
        "--particles",
        "at least 1",
    );
    rejects(&["--particles", "2"], "--particles", "works on a reward");
    rejects(
        &["--reward-scale", "0.2"],
        "--reward-scale",
        "works on a reward",
    );
    rejects(
        &["--reward-scale", "-1", "--reward", "classifier:1"],
        "--reward-scale",
        "≥ 0",
    );
    rejects(
        &["--reward", "classifier:1", "--reward-window", "2:9"],
        "--reward-window",
        "0:4",
    );
    rejects(
        &["--reward", "classifier:1", "--reward-window", "3:3"],
        "--reward-window",
        "empty",
    );
    rejects(
        &[
            "--reward",
            "classifier:1",
            "--particles",
            "2",
            "--fk-window",
            "0:7",
        ],
        "--fk-window",
        "0:4",
    );
    rejects(
        &["--reward", "classifier:1", "--fk-lambda", "5"],
        "--fk-lambda",
        "particles > 1",
    );
    rejects(
        &[
            "--reward",
            "classifier:1",
            "--particles",
            "2",
            "--scheduler",
            "euler",
        ],
        "--steer",
        "fresh noise",
    );
    rejects(
        &[
            "--reward",
            "classifier:1",
            "--classifier",
            "/nonexistent/classifier",
        ],
        "--classifier",
        "/nonexistent/classifier",
    );
}

#[test]
fn a_classifier_with_a_missing_layer_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("classifier");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let shipped = root().join("weights/digit-classifier");
    std::fs::copy(
        shipped.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .expect("copy");
    let config = std::fs::read_to_string(shipped.join("config.json")).expect("config");
    // The config now names a layer the weight file does not hold.
    let renamed = config.replace("\"fc2\"", "\"fc9\"");
    assert_ne!(
        config, renamed,
        "the shipped config names its last layer fc2"
    );
    std::fs::write(dir.join("config.json"), renamed).expect("write");
    rejects(
        &[
            "--reward",
            "classifier:1",
            "--classifier",
            dir.to_str().expect("utf8"),
        ],
        "--classifier",
        "fc9",
    );
}

#[test]
fn a_reward_for_another_image_shape_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("never");
    let result = diffsteer()
        .arg("generate")
        .arg("--model")
        .arg(fixtures().join("models/unet2d_class"))
        .args([
            "--steps",
            "2",
            "--quiet",
            "--reward",
            "classifier:1",
            "--classifier",
        ])
        .arg(root().join("weights/digit-classifier"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--reward") && stderr.contains("28×28×1"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn eval_writes_a_table_csv_plot_and_grids() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("eval");
    let result = diffsteer()
        .arg("eval")
        .arg("--model")
        .arg(root().join("weights/digits"))
        .args([
            "--targets",
            "1,7",
            "--count",
            "3",
            "--steps",
            "4",
            "--quiet",
            "--sweep",
            "reward-scale=0,0.2",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("target share"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("eval.csv")).expect("csv");
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert_eq!(rows[0][1], "value");
    for row in &rows[1..] {
        let share: f64 = row[4].parse().expect("share");
        assert!((0.0..=1.0).contains(&share));
        // 4 steps, one particle, no CFG for --class none.
        assert_eq!(row[6], "4");
    }
    let reward = |r: &[&str]| r[2].parse::<f64>().expect("reward");
    assert!(
        reward(&rows[2]) > reward(&rows[1]),
        "guidance raised no reward: {csv}"
    );
    for file in [
        "eval.png",
        "grid-reward-scale-0.png",
        "grid-reward-scale-0.2.png",
    ] {
        let png = std::fs::read(out.join(file)).expect(file);
        assert_eq!(&png[1..4], b"PNG");
    }

    // A bad sweep is a usage error and writes nothing.
    let never = tmp.path().join("never");
    let bad = diffsteer()
        .args(["eval", "--sweep", "reward-scale=x", "--out"])
        .arg(&never)
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--sweep"));
    assert!(!never.exists());
}

/// The grey pixels of a `generate` PNG (one channel, 8 bits), in the model's [-1, 1].
fn read_png(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("png");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    assert_eq!(
        info.color_type,
        png::ColorType::Grayscale,
        "{}",
        path.display()
    );
    pixels.truncate(info.buffer_size());
    pixels.iter().map(|&v| v as f32 / 127.5 - 1.0).collect()
}

/// How many of the final images in `out` the shipped classifier reads as `class`.
fn read_as(out: &Path, count: usize, class: usize) -> usize {
    let classifier = diffsteer::reward::Classifier::load(&root().join("weights/digit-classifier"))
        .expect("the shipped classifier");
    let mut x = Vec::new();
    for i in 0..count {
        x.extend(read_png(&out.join(format!("{i:06}.png"))));
    }
    let predicted = classifier.predict(&x).expect("predict");
    predicted.iter().filter(|&&c| c == class).count()
}

#[test]
fn avoidance_removes_the_class_from_the_final_images() {
    // Unconditional samples with and without `avoid:D`, from the same noise, read
    // back from the written PNGs (not from the guided estimates) by the classifier.
    const D: usize = 6;
    const N: usize = 40;
    let tmp = tempfile::tempdir().expect("tmp");
    let common = [
        "--class", "none", "--count", "40", "--steps", "20", "--seed", "3",
    ];
    let plain = tmp.path().join("plain");
    let result = generate(&plain, &common);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let avoid = tmp.path().join("avoid");
    let spec = format!("avoid:{D}");
    let mut args = common.to_vec();
    args.extend(["--reward", &spec]);
    let result = generate(&avoid, &args);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let (before, after) = (read_as(&plain, N, D), read_as(&avoid, N, D));
    eprintln!("digit {D}: {before}/{N} unguided, {after}/{N} with {spec}");
    assert!(
        before >= 3,
        "the unguided base rate is too low to test: {before}/{N}"
    );
    assert!(
        after * 4 <= before,
        "{spec}: {after}/{N} vs {before}/{N} unguided"
    );
    // The metadata records the avoidance term: log(1 − p(D)) ≤ 0.
    let meta = std::fs::read_to_string(avoid.join("metadata.jsonl")).expect("metadata");
    for line in meta.lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("json");
        let r = line["reward_value"].as_f64().expect("reward_value");
        assert!(r <= 0.0, "{line}");
        assert_eq!(line["reward"][0], spec.as_str(), "{line}");
    }
}
