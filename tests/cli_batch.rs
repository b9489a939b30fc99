//! `diffsteer batch`: every image the same bytes as `generate` run alone, nothing
//! lost or made twice across a `kill -9`, shards that together make exactly the
//! whole set, and bad input refused naming the line and field with nothing
//! written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn diffsteer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffsteer"))
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/digits")
}

fn write_jobs(dir: &Path, lines: &[&str]) -> PathBuf {
    let path = dir.join("jobs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("jobs file");
    path
}

fn batch(jobs: &Path, out: &Path, extra: &[&str]) -> Output {
    diffsteer()
        .arg("--threads")
        .arg("2")
        .arg("batch")
        .arg(jobs)
        .arg("--out")
        .arg(out)
        .arg("--model")
        .arg(model())
        .args(extra)
        .output()
        .expect("runs")
}

fn results(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .expect("results.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// (id, index) → the image's bytes, from results.jsonl; panics on a repeated image.
fn images(out: &Path) -> BTreeMap<(String, u64), Vec<u8>> {
    let mut map = BTreeMap::new();
    for line in results(out) {
        assert_eq!(line["status"], "ok", "{line}");
        let key = (
            line["id"].as_str().expect("id").to_string(),
            line["index"].as_u64().expect("index"),
        );
        let file = out.join(line["file"].as_str().expect("file"));
        let bytes = std::fs::read(&file).expect("the listed image exists");
        assert!(map.insert(key.clone(), bytes).is_none(), "{key:?} twice");
    }
    map
}

const MIXED: [&str; 6] = [
    r#"{"id": "ddim-7", "count": 3, "class": 7, "steps": 10, "scheduler": "ddim", "cfg": 3}"#,
    r#"{"id": "dpm-rescale", "count": 2, "steps": 8, "scheduler": "dpm++2m", "karras": true, "cfg": 4, "cfg_rescale": 0.5}"#,
    r#"{"id": "euler-a-interval", "count": 2, "steps": 14, "scheduler": "euler-a", "cfg_interval": "2:10", "seed": 40}"#,
    r#"{"id": "uncond-ddpm", "count": 2, "class": "none", "steps": 9, "scheduler": "ddpm"}"#,
    r#"{"id": "guided", "count": 2, "class": "none", "steps": 12, "reward": ["classifier:3"], "seed": 5}"#,
    r#"{"id": "fk", "count": 2, "class": "none", "steps": 10, "reward": "classifier:5", "particles": 3, "fk_every": 3, "scheduler": "ddpm"}"#,
];

/// The `generate` flags of each MIXED job.
fn generate_flags(id: &str) -> Vec<&'static str> {
    match id {
        "ddim-7" => vec![
            "--count",
            "3",
            "--class",
            "7",
            "--steps",
            "10",
            "--scheduler",
            "ddim",
            "--cfg",
            "3",
        ],
        "dpm-rescale" => vec![
            "--count",
            "2",
            "--steps",
            "8",
            "--scheduler",
            "dpm++2m",
            "--karras",
            "--cfg",
            "4",
            "--cfg-rescale",
            "0.5",
        ],
        "euler-a-interval" => vec![
            "--count",
            "2",
            "--steps",
            "14",
            "--scheduler",
            "euler-a",
            "--cfg-interval",
            "2:10",
            "--seed",
            "40",
        ],
        "uncond-ddpm" => vec![
            "--count",
            "2",
            "--class",
            "none",
            "--steps",
            "9",
            "--scheduler",
            "ddpm",
        ],
        "guided" => vec![
            "--count",
            "2",
            "--class",
            "none",
            "--steps",
            "12",
            "--reward",
            "classifier:3",
            "--seed",
            "5",
        ],
        "fk" => vec![
            "--count",
            "2",
            "--class",
            "none",
            "--steps",
            "10",
            "--reward",
            "classifier:5",
            "--particles",
            "3",
            "--fk-every",
            "3",
            "--scheduler",
            "ddpm",
        ],
        other => panic!("no flags for {other}"),
    }
}

#[test]
fn every_image_is_the_solo_generate_image_and_calls_are_packed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let jobs = write_jobs(tmp.path(), &MIXED);
    let out = tmp.path().join("out");
    let run = batch(&jobs, &out, &["--batch", "8"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let made = images(&out);
    assert_eq!(made.len(), 13);
    for line in results(&out) {
        // The full resolved metadata comes with every line.
        for key in [
            "seed",
            "class",
            "steps",
            "scheduler",
            "cfg",
            "eta",
            "karras",
            "model",
            "job_fingerprint",
        ] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
    for id in MIXED.iter().map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).expect("json");
        v["id"].as_str().expect("id").to_string()
    }) {
        let solo = tmp.path().join(format!("solo-{id}"));
        let r = diffsteer()
            .args(["--threads", "2", "generate", "-q", "--model"])
            .arg(model())
            .arg("--out")
            .arg(&solo)
            .args(generate_flags(&id))
            .output()
            .expect("generate");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        for ((job, index), bytes) in made.iter().filter(|((j, _), _)| *j == id) {
            let alone = std::fs::read(solo.join(format!("{index:06}.png"))).expect("solo png");
            assert!(
                &alone == bytes,
                "{job} image {index} differs from generate alone"
            );
        }
    }
    // The summary reports the packing: samples per model call, out of 8.
    let mean: f64 = stderr
        .split("model calls, ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no samples per call in {stderr}"));
    assert!(mean > 4.0 && mean <= 8.0, "{stderr}");
}

#[test]
fn a_killed_run_finishes_on_rerun_with_nothing_lost_or_repeated() {
    let tmp = tempfile::tempdir().expect("tmp");
    let jobs = write_jobs(
        tmp.path(),
        &[
            r#"{"id": "many", "count": 30, "steps": 20, "seed": 3}"#,
            r#"{"id": "few", "count": 4, "steps": 12, "class": "none", "scheduler": "euler-a"}"#,
        ],
    );
    let reference = tmp.path().join("reference");
    assert!(batch(&jobs, &reference, &["--batch", "4", "-q"])
        .status
        .success());
    let expected = images(&reference);

    let out = tmp.path().join("out");
    let mut child = diffsteer()
        .args(["--threads", "2", "batch"])
        .arg(&jobs)
        .arg("--out")
        .arg(&out)
        .arg("--model")
        .arg(model())
        .args(["--batch", "4", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    loop {
        let lines = std::fs::read_to_string(out.join("results.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= 5 || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9"); // SIGKILL on Unix
    let _ = child.wait();
    let partial = results(&out).len();
    assert!((5..34).contains(&partial), "killed after {partial} images");

    let rerun = batch(&jobs, &out, &["--batch", "4"]);
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(rerun.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{partial} done before")),
        "{stderr}"
    );
    assert_eq!(images(&out), expected);
    // A third run has nothing left to do and changes nothing.
    let again = batch(&jobs, &out, &["--batch", "4"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 written now"));
    assert_eq!(results(&out).len(), 34);
}

#[test]
fn three_shards_in_separate_processes_make_exactly_the_whole_set() {
    let tmp = tempfile::tempdir().expect("tmp");
    let jobs = write_jobs(
        tmp.path(),
        &[
            r#"{"id": "a", "count": 9, "steps": 4}"#,
            r#"{"id": "b", "count": 7, "steps": 5, "class": "none", "scheduler": "ddpm"}"#,
        ],
    );
    let whole = tmp.path().join("whole");
    assert!(batch(&jobs, &whole, &["-q"]).status.success());
    let expected = images(&whole);
    // Three processes at once into one folder (1-based numbering), and three into
    // folders of their own (0-based).
    let shared = tmp.path().join("shared");
    let children: Vec<_> = (1..=3)
        .map(|k| {
            diffsteer()
                .args(["--threads", "1", "batch"])
                .arg(&jobs)
                .arg("--out")
                .arg(&shared)
                .arg("--model")
                .arg(model())
                .args(["-q", "--shard", &format!("{k}/3")])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success());
    }
    assert_eq!(images(&shared), expected);
    let mut union = BTreeMap::new();
    let mut sizes = Vec::new();
    for k in 0..3 {
        let dir = tmp.path().join(format!("shard{k}"));
        assert!(batch(&jobs, &dir, &["-q", "--shard", &format!("{k}/3")])
            .status
            .success());
        let part = images(&dir);
        sizes.push(part.len());
        for (key, bytes) in part {
            assert!(union.insert(key, bytes).is_none(), "an image in two shards");
        }
    }
    assert_eq!(union, expected);
    assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");
}

/// A rejected jobs file: exit code 2, one line naming `at` and `field`, nothing
/// written.
fn refused(lines: &[&str], at: &str, field: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let jobs = write_jobs(tmp.path(), lines);
    let out = tmp.path().join("out");
    let r = batch(&jobs, &out, &[]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{lines:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(at) && stderr.contains(field),
        "{lines:?}: {stderr}"
    );
    assert!(!out.exists(), "{lines:?}: the output folder was created");
}

#[test]
fn bad_lines_are_refused_naming_the_line_and_field_with_nothing_written() {
    let ok = r#"{"id": "fine", "count": 1, "steps": 3}"#;
    refused(&[ok, r#"{"id": "x", "stesp": 3}"#], "jobs.jsonl:2", "stesp");
    refused(&[ok, ok], "jobs.jsonl:2", "`id`");
    refused(&[r#"{"count": 1}"#], "jobs.jsonl:1", "`id`");
    refused(
        &[ok, "", r#"{"id": "y", "steps": 0}"#],
        "jobs.jsonl:3",
        "`steps`",
    );
    refused(
        &[ok, r#"{"id": "y", "scheduler": "heun"}"#],
        "jobs.jsonl:2",
        "`scheduler`",
    );
    refused(
        &[ok, r#"{"id": "y", "cfg_interval": "9:3"}"#],
        "jobs.jsonl:2",
        "`cfg_interval`",
    );
    refused(
        &[ok, r#"{"id": "y", "class": 12}"#],
        "jobs.jsonl:2",
        "`class`",
    );
    refused(
        &[
            ok,
            r#"{"id": "y", "reward": "classifier:1", "particles": 20}"#,
        ],
        "jobs.jsonl:2",
        "`particles`",
    );
    refused(&[ok, r#"{"id": "../escape"}"#], "jobs.jsonl:2", "`id`");
    refused(
        &[r#"{"id": "z", "count": 99999999999999}"#],
        "jobs.jsonl:1",
        "`count`",
    );
    refused(
        &[ok, "{\"id\": \"broken\", "],
        "jobs.jsonl:2",
        "not valid JSON",
    );
    refused(&["[1, 2]"], "jobs.jsonl:1", "JSON object");
}

#[test]
fn a_job_changed_since_the_earlier_run_is_refused_naming_its_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let jobs = write_jobs(tmp.path(), &[r#"{"id": "j", "count": 2, "steps": 3}"#]);
    assert!(batch(&jobs, &out, &["-q"]).status.success());
    let jobs = write_jobs(tmp.path(), &[r#"{"id": "j", "count": 2, "steps": 4}"#]);
    let r = batch(&jobs, &out, &["-q"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"j\"") && stderr.contains("changed"),
        "{stderr}"
    );
    assert_eq!(results(&out).len(), 2);
}

#[test]
fn a_failing_job_is_reported_and_the_others_complete() {
    let tmp = tempfile::tempdir().expect("tmp");
    let jobs = write_jobs(
        tmp.path(),
        &[
            r#"{"id": "good", "count": 2, "steps": 4}"#,
            // This scale overflows the CFG combine to ±Inf at the first step.
            r#"{"id": "overflow", "count": 2, "steps": 4, "class": 0, "cfg": 3.4e38}"#,
        ],
    );
    let out = tmp.path().join("out");
    let r = batch(&jobs, &out, &[]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed: overflow image 0"), "{stderr}");
    let lines = results(&out);
    let by_status: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap_or("").to_string(),
                l["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_status,
        BTreeSet::from([
            ("good".into(), "ok".into()),
            ("overflow".into(), "failed".into())
        ])
    );
    assert_eq!(lines.len(), 4);
    assert!(lines
        .iter()
        .filter(|l| l["status"] == "failed")
        .all(|l| l["error"]
            .as_str()
            .is_some_and(|e| e.contains("non-finite"))));
    // Re-running does not repeat the failures (one line per image), unless asked.
    let again = batch(&jobs, &out, &["-q"]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(results(&out).len(), 4);
    let retried = batch(&jobs, &out, &["-q", "--retry-failed"]);
    assert_eq!(retried.status.code(), Some(1));
    assert_eq!(results(&out).len(), 4);
}

#[cfg(unix)]
#[test]
fn the_slurm_array_script_makes_the_whole_set() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let jobs = write_jobs(
        tmp.path(),
        &[
            r#"{"id": "a", "count": 5, "steps": 3}"#,
            r#"{"id": "b", "count": 4, "steps": 4, "class": "none"}"#,
        ],
    );
    let whole = tmp.path().join("whole");
    assert!(batch(&jobs, &whole, &["-q"]).status.success());
    // `srun` as a plain launcher: the script's own command runs as Slurm would.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let srun = bin.join("srun");
    std::fs::write(&srun, "#!/bin/sh\nexec \"$@\"\n").expect("srun");
    std::fs::set_permissions(&srun, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = tmp.path().join("shared");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-batch.sh");
    for task in 0..3 {
        let r = Command::new("bash")
            .arg(&script)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env("SLURM_CPUS_PER_TASK", "1")
            .env("JOBS", &jobs)
            .env("OUT_DIR", &out)
            .env("DIFFSTEER", env!("CARGO_BIN_EXE_diffsteer"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("bash");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert_eq!(images(&out), images(&whole));
}
