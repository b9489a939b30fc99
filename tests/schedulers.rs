//! The schedulers against diffusers: every case written by
//! `tools/make_scheduler_fixtures.py` (timesteps, sigmas, init_noise_sigma, input
//! scales and `step()` outputs), plus the errors a bad config or bad arguments give.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use diffsteer::schedule::{build, ScheduleOptions, SchedulerConfig, SchedulerKind};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// Relative L2 bound for one step (and for sigmas, scales, float timesteps).
const TOLERANCE: f64 = 1e-6;

/// Whether `out` is close enough to diffusers' `reference`: within 1e-6, or, where
/// the fixture holds diffusers' own step run in float64 (`exact`, stored where
/// diffusers' float32 result is off by more than 2e-7), no further from it than
/// twice diffusers' own error (see tools/make_scheduler_fixtures.py). Returns the
/// error against diffusers and whether the second rule was needed.
fn judge(out: &[f32], reference: &[f32], exact: Option<&[f32]>) -> Result<(f64, bool), String> {
    let err = rel_l2(out, reference);
    if err <= TOLERANCE {
        return Ok((err, false));
    }
    let Some(exact) = exact else {
        return Err(format!("relative L2 error {err:e} > {TOLERANCE:e}"));
    };
    let (ours, theirs) = (rel_l2(out, exact), rel_l2(reference, exact));
    if ours <= 2.0 * theirs {
        Ok((err, true))
    } else {
        Err(format!(
            "relative L2 error {err:e} > {TOLERANCE:e}, and {ours:e} against the float64 result, \
             more than twice diffusers' own {theirs:e}"
        ))
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers")
}

/// ‖out − ref‖ / ‖ref‖ (‖out − ref‖ when ref is all zeros); NaN stays NaN.
fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&o, &r) in out.iter().zip(reference) {
        diff += (o as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    if out.len() != reference.len() {
        return f64::NAN;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Relative difference of two scalars, with an absolute floor of 1.
fn rel_scalar(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1.0)
}

struct Tensors<'a>(SafeTensors<'a>);

impl Tensors<'_> {
    fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let t = self
            .0
            .tensor(name)
            .map_err(|e| format!("fixture tensor {name}: {e}"))?;
        if t.dtype() != Dtype::F32 {
            return Err(format!(
                "fixture tensor {name}: expected F32, found {:?}",
                t.dtype()
            ));
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Ok((t.shape().to_vec(), data))
    }

    fn f64(&self, name: &str) -> Result<Vec<f64>, String> {
        let t = self
            .0
            .tensor(name)
            .map_err(|e| format!("fixture tensor {name}: {e}"))?;
        if t.dtype() != Dtype::F64 {
            return Err(format!(
                "fixture tensor {name}: expected F64, found {:?}",
                t.dtype()
            ));
        }
        Ok(t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect())
    }

    fn i64(&self, name: &str) -> Result<Vec<i64>, String> {
        let t = self
            .0
            .tensor(name)
            .map_err(|e| format!("fixture tensor {name}: {e}"))?;
        if t.dtype() != Dtype::I64 {
            return Err(format!(
                "fixture tensor {name}: expected I64, found {:?}",
                t.dtype()
            ));
        }
        Ok(t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect())
    }

    fn has(&self, name: &str) -> bool {
        self.0.tensor(name).is_ok()
    }
}

/// The worst errors seen in one case.
#[derive(Default, Clone, Copy)]
struct Worst {
    step: f64,
    timestep: f64,
    sigma: f64,
    scale: f64,
    /// Values accepted by the float64 rule rather than the 1e-6 bound.
    relaxed: usize,
}

impl Worst {
    fn merge(&mut self, o: Worst) {
        self.step = self.step.max(o.step);
        self.timestep = self.timestep.max(o.timestep);
        self.sigma = self.sigma.max(o.sigma);
        self.scale = self.scale.max(o.scale);
        self.relaxed += o.relaxed;
    }
}

/// The float64 results stored for some rows of a case.
struct ExactRows {
    index: Vec<i64>,
    rows: Vec<f32>,
    len: usize,
}

impl ExactRows {
    fn load(tensors: &Tensors, name: &str, len: usize) -> Result<Self, String> {
        let index_name = format!("{name}/exact_index");
        if !tensors.has(&index_name) {
            return Ok(ExactRows {
                index: vec![],
                rows: vec![],
                len,
            });
        }
        let index = tensors.i64(&index_name)?;
        let (_, rows) = tensors.f32(&format!("{name}/exact"))?;
        Ok(ExactRows { index, rows, len })
    }

    fn row(&self, k: usize) -> Option<&[f32]> {
        let j = self.index.iter().position(|&i| i as usize == k)?;
        Some(&self.rows[j * self.len..(j + 1) * self.len])
    }
}

fn within(err: f64) -> bool {
    // NaN fails.
    err <= TOLERANCE
}

fn check_case(case: &Value, tensors: &Tensors) -> Result<(Worst, usize), String> {
    let name = case["name"].as_str().ok_or("case without a name")?;
    let kind_name = case["scheduler"]
        .as_str()
        .ok_or("case without a scheduler")?;
    let kind =
        SchedulerKind::from_cli_name(kind_name).ok_or(format!("unknown scheduler {kind_name}"))?;
    let config_text = case["config"].as_str().ok_or("config is not a JSON text")?;
    let config = SchedulerConfig::from_json_str(config_text, format!("fixture {name}"))
        .map_err(|e| e.to_string())?;
    let num_steps = case["num_steps"].as_u64().ok_or("num_steps")? as usize;
    let options = ScheduleOptions {
        eta: case["eta"].as_f64().unwrap_or(0.0),
        karras: case["karras"].as_bool(),
    };
    let sched =
        build(kind, &config, num_steps, &options).map_err(|e| format!("build failed: {e}"))?;
    if sched.kind() != kind {
        return Err(format!("kind() is {:?}", sched.kind()));
    }
    if sched.num_steps() != num_steps {
        return Err(format!(
            "num_steps() is {}, expected {num_steps}",
            sched.num_steps()
        ));
    }
    let mut worst = Worst::default();

    // Timesteps: integers exactly, Euler's float timesteps to 1e-6.
    let timesteps = tensors.f64(&format!("{name}/timesteps"))?;
    let float_timesteps = matches!(kind, SchedulerKind::Euler | SchedulerKind::EulerAncestral);
    for (i, &t) in timesteps.iter().enumerate() {
        let got = sched.timestep(i) as f64;
        let err = rel_scalar(got, t);
        worst.timestep = worst.timestep.max(err);
        if (float_timesteps && !within(err)) || (!float_timesteps && got != t) {
            return Err(format!("timestep {i}: got {got}, diffusers {t}"));
        }
    }

    let sigma_name = format!("{name}/sigmas");
    match (tensors.has(&sigma_name), sched.sigmas()) {
        (true, Some(got)) => {
            let (_, expected) = tensors.f32(&sigma_name)?;
            let exact_name = format!("{name}/sigmas_exact");
            let exact = if tensors.has(&exact_name) {
                Some(tensors.f32(&exact_name)?.1)
            } else {
                None
            };
            if got.len() != expected.len() {
                return Err(format!(
                    "{} sigmas, diffusers has {}",
                    got.len(),
                    expected.len()
                ));
            }
            for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                let x = exact.as_ref().map(|x| &x[i..i + 1]);
                let (err, relaxed) = judge(&[g], &[e], x)
                    .map_err(|m| format!("sigma {i}: got {g}, diffusers {e}: {m}"))?;
                worst.sigma = worst.sigma.max(err);
                worst.relaxed += relaxed as usize;
            }
        }
        (false, None) => {}
        (has, got) => {
            return Err(format!(
                "fixture has sigmas: {has}, scheduler has sigmas: {}",
                got.is_some()
            ))
        }
    }

    let (_, init) = tensors.f32(&format!("{name}/init_noise_sigma"))?;
    let err = rel_scalar(sched.init_noise_sigma() as f64, init[0] as f64);
    if !within(err) {
        return Err(format!(
            "init_noise_sigma: got {}, diffusers {}",
            sched.init_noise_sigma(),
            init[0]
        ));
    }
    let (_, scales) = tensors.f32(&format!("{name}/input_scales"))?;
    for (i, &s) in scales.iter().enumerate() {
        let err = rel_scalar(sched.input_scale(i) as f64, s as f64);
        worst.scale = worst.scale.max(err);
        if !within(err) {
            return Err(format!(
                "input_scale({i}): got {}, diffusers {s}",
                sched.input_scale(i)
            ));
        }
    }

    let mut steps_checked = 0;
    if kind == SchedulerKind::DpmSolverMultistep {
        // A whole trajectory: each step's sample is diffusers' previous output.
        let (_, mut sample) = tensors.f32(&format!("{name}/dpm_sample"))?;
        let (shape, rows) = tensors.f32(&format!("{name}/dpm_steps"))?;
        let e = shape[2];
        let exact = ExactRows::load(tensors, name, e)?;
        let mut state = sched.new_state();
        let mut out = vec![0.0f32; e];
        for i in 0..shape[0] {
            let row = &rows[i * 2 * e..(i + 1) * 2 * e];
            let (model_output, expected) = row.split_at(e);
            if sched.needs_noise(i) {
                return Err(format!("step {i}: needs_noise() is true"));
            }
            sched
                .step(i, &mut state, &sample, model_output, None, &mut out)
                .map_err(|err| format!("step {i}: {err}"))?;
            let (err, relaxed) =
                judge(&out, expected, exact.row(i)).map_err(|m| format!("step {i}: {m}"))?;
            worst.step = worst.step.max(err);
            worst.relaxed += relaxed as usize;
            sample = expected.to_vec();
            steps_checked += 1;
        }
    } else {
        let info = tensors.i64(&format!("{name}/step_info"))?;
        let (shape, rows) = tensors.f32(&format!("{name}/steps"))?;
        let e = shape[2];
        let exact = ExactRows::load(tensors, name, e)?;
        for (k, pair) in info.chunks_exact(2).enumerate() {
            let (i, needs) = (pair[0] as usize, pair[1] != 0);
            let row = &rows[k * 4 * e..(k + 1) * 4 * e];
            let (sample, rest) = row.split_at(e);
            let (model_output, rest) = rest.split_at(e);
            let (noise, expected) = rest.split_at(e);
            if sched.needs_noise(i) != needs {
                return Err(format!(
                    "step {i}: needs_noise() is {}, diffusers {needs}",
                    sched.needs_noise(i)
                ));
            }
            let mut out = vec![0.0f32; e];
            let mut state = sched.new_state();
            sched
                .step(
                    i,
                    &mut state,
                    sample,
                    model_output,
                    needs.then_some(noise),
                    &mut out,
                )
                .map_err(|err| format!("step {i}: {err}"))?;
            let (err, relaxed) =
                judge(&out, expected, exact.row(k)).map_err(|m| format!("step {i}: {m}"))?;
            worst.step = worst.step.max(err);
            worst.relaxed += relaxed as usize;
            steps_checked += 1;
        }
    }
    Ok((worst, steps_checked))
}

#[test]
fn schedulers_match_diffusers() {
    let dir = fixture_dir();
    let index_text = std::fs::read_to_string(dir.join("cases.json")).expect("read cases.json");
    let index: Value = serde_json::from_str(&index_text).expect("parse cases.json");
    let cases = index["cases"].as_array().expect("cases array");

    let mut files = BTreeMap::new();
    for kind in SchedulerKind::ALL {
        let path = dir.join(format!("{}.safetensors", kind.cli_name()));
        files.insert(
            kind.cli_name(),
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        );
    }
    let parsed: BTreeMap<&str, Tensors> = files
        .iter()
        .map(|(k, bytes)| {
            (
                *k,
                Tensors(SafeTensors::deserialize(bytes).expect("valid safetensors")),
            )
        })
        .collect();

    let mut failures = Vec::new();
    let mut worst: BTreeMap<&str, (Worst, usize, usize)> = BTreeMap::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let kind = case["scheduler"].as_str().unwrap_or("?");
        let Some(tensors) = parsed.get(kind) else {
            failures.push(format!("{name}: no fixture file for scheduler {kind}"));
            continue;
        };
        match check_case(case, tensors) {
            Ok((w, steps)) => {
                let entry = worst.entry(kind).or_default();
                entry.0.merge(w);
                entry.1 += 1;
                entry.2 += steps;
            }
            Err(msg) => failures.push(format!("{name} ({kind}): {msg}")),
        }
    }
    println!("scheduler   cases  steps  worst step rel-L2  worst timestep  worst sigma  worst input scale  over 1e-6");
    for (kind, (w, n, steps)) in &worst {
        println!(
            "{kind:<10} {n:>6} {steps:>6}  {:>17.3e}  {:>14.3e}  {:>11.3e}  {:>17.3e}  {:>9}",
            w.step, w.timestep, w.sigma, w.scale, w.relaxed
        );
    }
    assert!(cases.len() > 100, "only {} fixture cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} scheduler cases differ from diffusers:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Errors

fn config(text: &str) -> SchedulerConfig {
    SchedulerConfig::from_json_str(text, "scheduler_config.json").expect("valid JSON")
}

fn build_err(kind: SchedulerKind, text: &str, steps: usize, options: ScheduleOptions) -> String {
    match build(kind, &config(text), steps, &options) {
        Ok(_) => panic!("{kind} with {text} and {steps} steps should fail"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "error message lacks {p:?}: {message}");
    }
}

#[test]
fn wrong_json_type_names_field_and_value() {
    let o = ScheduleOptions::default();
    let e = build_err(SchedulerKind::Ddim, r#"{"clip_sample": "false"}"#, 10, o);
    assert_mentions(
        &e,
        &[
            "scheduler_config.json",
            "clip_sample",
            "\"false\"",
            "true or false",
        ],
    );
    let e = build_err(
        SchedulerKind::Euler,
        r#"{"num_train_timesteps": 1000.5}"#,
        10,
        o,
    );
    assert_mentions(&e, &["num_train_timesteps", "1000.5", "integer"]);
    let e = build_err(
        SchedulerKind::DpmSolverMultistep,
        r#"{"beta_start": [1]}"#,
        10,
        o,
    );
    assert_mentions(&e, &["beta_start", "[1]", "number"]);
    let e = build_err(
        SchedulerKind::Ddpm,
        r#"{"trained_betas": [0.1, "x"]}"#,
        10,
        o,
    );
    assert_mentions(&e, &["trained_betas", "\"x\""]);
    let e = build_err(
        SchedulerKind::EulerAncestral,
        r#"{"timestep_spacing": 3}"#,
        10,
        o,
    );
    assert_mentions(
        &e,
        &[
            "timestep_spacing",
            "3",
            "\"linspace\", \"leading\" or \"trailing\"",
        ],
    );
}

#[test]
fn unsupported_values_name_field_value_and_accepted() {
    let o = ScheduleOptions::default();
    let cases: &[(SchedulerKind, &str, &[&str])] = &[
        (
            SchedulerKind::Ddpm,
            r#"{"thresholding": true}"#,
            &["thresholding", "true", "false"],
        ),
        (
            SchedulerKind::Ddpm,
            r#"{"variance_type": "learned"}"#,
            &["variance_type", "\"learned\"", "\"fixed_small\""],
        ),
        (
            SchedulerKind::Ddpm,
            r#"{"beta_schedule": "sigmoid"}"#,
            &["beta_schedule", "\"sigmoid\"", "\"laplace\""],
        ),
        (
            SchedulerKind::Ddim,
            r#"{"beta_schedule": "laplace"}"#,
            &["beta_schedule", "\"laplace\"", "\"squaredcos_cap_v2\""],
        ),
        (
            SchedulerKind::Ddim,
            r#"{"clip_sample_range": -1}"#,
            &["clip_sample_range", "-1"],
        ),
        (
            SchedulerKind::Euler,
            r#"{"interpolation_type": "log_linear"}"#,
            &["interpolation_type", "\"log_linear\"", "\"linear\""],
        ),
        (
            SchedulerKind::Euler,
            r#"{"use_exponential_sigmas": true}"#,
            &["use_exponential_sigmas", "true"],
        ),
        (
            SchedulerKind::Euler,
            r#"{"final_sigmas_type": "one"}"#,
            &["final_sigmas_type", "\"one\"", "\"sigma_min\""],
        ),
        (
            SchedulerKind::EulerAncestral,
            r#"{"prediction_type": "sample"}"#,
            &["prediction_type", "\"sample\"", "\"v_prediction\""],
        ),
        (
            SchedulerKind::DpmSolverMultistep,
            r#"{"solver_order": 3}"#,
            &["solver_order", "3", "2"],
        ),
        (
            SchedulerKind::DpmSolverMultistep,
            r#"{"algorithm_type": "sde-dpmsolver++"}"#,
            &["algorithm_type", "\"sde-dpmsolver++\"", "\"dpmsolver++\""],
        ),
        (
            SchedulerKind::DpmSolverMultistep,
            r#"{"solver_type": "bh3"}"#,
            &["solver_type", "\"bh3\"", "\"heun\""],
        ),
        (
            SchedulerKind::DpmSolverMultistep,
            r#"{"variance_type": "learned_range"}"#,
            &["variance_type", "\"learned_range\""],
        ),
        (
            SchedulerKind::DpmSolverMultistep,
            r#"{"use_lu_lambdas": true}"#,
            &["use_lu_lambdas", "true"],
        ),
        (
            SchedulerKind::DpmSolverMultistep,
            r#"{"prediction_type": "flow_prediction"}"#,
            &["prediction_type", "\"flow_prediction\""],
        ),
        (
            SchedulerKind::Euler,
            r#"{"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}"#,
            &["trained_betas", "2 values", "3"],
        ),
        (
            SchedulerKind::Ddim,
            r#"{"beta_end": 1.5}"#,
            &["beta_end", "1.5"],
        ),
        (
            SchedulerKind::Ddpm,
            r#"{"num_train_timesteps": 0}"#,
            &["num_train_timesteps", "0"],
        ),
    ];
    for (kind, text, parts) in cases {
        let e = build_err(*kind, text, 3, o);
        assert_mentions(&e, parts);
        assert_mentions(&e, &["scheduler_config.json"]);
    }
}

#[test]
fn step_counts_out_of_range() {
    let o = ScheduleOptions::default();
    for kind in SchedulerKind::ALL {
        let e = build_err(kind, "{}", 0, o);
        assert_mentions(&e, &["num_steps", "0", "1000"]);
        let e = build_err(kind, r#"{"num_train_timesteps": 100}"#, 101, o);
        assert_mentions(&e, &["num_steps", "101", "100", kind.class_name()]);
        if kind != SchedulerKind::DpmSolverMultistep {
            assert!(
                build(kind, &config("{}"), 1000, &o).is_ok(),
                "{kind}: 1000 steps"
            );
        }
    }
    let e = build_err(
        SchedulerKind::Ddim,
        r#"{"timestep_spacing": "leading", "steps_offset": 1}"#,
        1000,
        o,
    );
    assert_mentions(&e, &["steps_offset", "1000"]);
    // DPM-Solver++ with as many steps as training timesteps repeats timesteps.
    let e = build_err(SchedulerKind::DpmSolverMultistep, "{}", 1000, o);
    assert_mentions(&e, &["num_steps", "1000", "decrease"]);
    assert!(build(SchedulerKind::DpmSolverMultistep, &config("{}"), 999, &o).is_ok());
}

#[test]
fn bad_options() {
    let karras = ScheduleOptions {
        eta: 0.0,
        karras: Some(true),
    };
    for kind in [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim,
        SchedulerKind::EulerAncestral,
    ] {
        assert_mentions(
            &build_err(kind, "{}", 10, karras),
            &["karras", kind.cli_name()],
        );
    }
    let eta = ScheduleOptions {
        eta: -0.5,
        karras: None,
    };
    assert_mentions(
        &build_err(SchedulerKind::Ddim, "{}", 10, eta),
        &["eta", "-0.5"],
    );
    let eta = ScheduleOptions {
        eta: f64::NAN,
        karras: None,
    };
    assert_mentions(
        &build_err(SchedulerKind::Ddim, "{}", 10, eta),
        &["eta", "NaN"],
    );
}

#[test]
fn load_names_the_file() {
    let e = SchedulerConfig::load("/nonexistent/scheduler_config.json")
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["/nonexistent/scheduler_config.json"]);
    let path = std::env::temp_dir().join(format!("diffsteer-sched-{}.json", std::process::id()));
    std::fs::write(
        &path,
        r#"{"_class_name": "DDIMScheduler", "prediction_type": "x0"}"#,
    )
    .unwrap();
    let c = SchedulerConfig::load(&path).unwrap();
    assert_eq!(c.class_kind(), Some(SchedulerKind::Ddim));
    let e = build(SchedulerKind::Ddim, &c, 10, &ScheduleOptions::default())
        .err()
        .expect("x0 is refused")
        .to_string();
    std::fs::remove_file(&path).ok();
    assert_mentions(&e, &[path.to_str().unwrap(), "prediction_type", "\"x0\""]);
}

#[test]
fn step_argument_errors() {
    let o = ScheduleOptions {
        eta: 0.5,
        karras: None,
    };
    let c = SchedulerConfig::empty();
    let x = vec![0.5f32; 8];
    let mut out = vec![0.0f32; 8];
    for kind in SchedulerKind::ALL {
        let s = build(kind, &c, 5, &o).unwrap();
        let noise = s.needs_noise(0).then_some(&x[..]);
        let mut st = s.new_state();
        // Length mismatches.
        let e = s
            .step(0, &mut st, &x, &x[..7], noise, &mut out)
            .unwrap_err()
            .to_string();
        assert_mentions(&e, &["8", "7"]);
        let e = s
            .step(0, &mut st, &x, &x, noise, &mut out[..4])
            .unwrap_err()
            .to_string();
        assert_mentions(&e, &["8", "4"]);
        // Step out of range.
        let e = s
            .step(5, &mut st, &x, &x, noise, &mut out)
            .unwrap_err()
            .to_string();
        assert_mentions(&e, &["step", "5"]);
        // Noise missing, superfluous or of the wrong length.
        let wrong = if s.needs_noise(0) { None } else { Some(&x[..]) };
        let e = s
            .step(0, &mut st, &x, &x, wrong, &mut out)
            .unwrap_err()
            .to_string();
        assert_mentions(&e, &["noise"]);
        if s.needs_noise(0) {
            let e = s
                .step(0, &mut st, &x, &x, Some(&x[..3]), &mut out)
                .unwrap_err()
                .to_string();
            assert_mentions(&e, &["noise", "3"]);
        }
        s.step(0, &mut st, &x, &x, noise, &mut out).unwrap();
        assert!(out.iter().all(|v| v.is_finite()), "{kind}");
    }
    // DPM-Solver++: a history of the wrong length.
    let s = build(SchedulerKind::DpmSolverMultistep, &c, 5, &o).unwrap();
    let mut st = s.new_state();
    s.step(0, &mut st, &x, &x, None, &mut out).unwrap();
    let short = vec![0.5f32; 4];
    let mut out4 = vec![0.0f32; 4];
    let e = s
        .step(1, &mut st, &short, &short, None, &mut out4)
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["8", "4"]);
}

#[test]
fn dpm_state_is_per_sample() {
    // Two samples stepped interleaved with their own states give the same results
    // as each stepped alone.
    let s = build(
        SchedulerKind::DpmSolverMultistep,
        &SchedulerConfig::empty(),
        6,
        &ScheduleOptions::default(),
    )
    .unwrap();
    let a0: Vec<f32> = (0..6).map(|i| i as f32 * 0.3 - 0.7).collect();
    let b0: Vec<f32> = (0..6).map(|i| 1.1 - i as f32 * 0.2).collect();
    let model = |x: &[f32], step: usize| -> Vec<f32> {
        x.iter().map(|v| v * 0.5 + step as f32 * 0.01).collect()
    };
    let run_alone = |x0: &[f32]| {
        let mut st = s.new_state();
        let mut x = x0.to_vec();
        for i in 0..s.num_steps() {
            let mut out = vec![0.0; x.len()];
            s.step(i, &mut st, &x, &model(&x, i), None, &mut out)
                .unwrap();
            x = out;
        }
        x
    };
    let (ea, eb) = (run_alone(&a0), run_alone(&b0));
    let (mut sa, mut sb) = (s.new_state(), s.new_state());
    let (mut a, mut b) = (a0.clone(), b0.clone());
    // b runs two steps behind a, their steps interleaved.
    let n = s.num_steps();
    for tick in 0..n + 2 {
        if tick < n {
            let mut out = vec![0.0; 6];
            s.step(tick, &mut sa, &a, &model(&a, tick), None, &mut out)
                .unwrap();
            a = out;
        }
        if tick >= 2 {
            let i = tick - 2;
            let mut out = vec![0.0; 6];
            s.step(i, &mut sb, &b, &model(&b, i), None, &mut out)
                .unwrap();
            b = out;
        }
    }
    assert_eq!(a, ea);
    assert_eq!(b, eb);
}
