//! Whole 20-step sampling runs with classifier-free guidance against diffusers
//! (tests/fixtures/trajectories, made by tools/make_model_fixtures.py): every model ×
//! scheduler × prediction type, the modern CFG family (APG, CFG-Zero*) as diffusers'
//! guiders compute it, plus the shipped digits model with its own scheduler config,
//! final sample within relative L2 1e-4. The fixture's
//! own noise is fed in, so stochastic schedulers are compared exactly too.

mod common;

use std::path::Path;

use common::{fixtures, nchw_to_nhwc, nhwc_to_nchw, rel_l2};
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::guidance::{Apg, Guidance, GuidanceInterval, GuidanceMethod};
use diffsteer::model::weights::WeightFile;
use diffsteer::model::{ModelFolder, UNet};
use diffsteer::rng::NoiseStream;
use diffsteer::sampler::{Condition, NoiseSource, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};

const TOLERANCE: f64 = 1e-4;

/// Per sample: the initial noise and the noise of every step, NHWC.
struct FixtureNoise {
    initial: Vec<Vec<f32>>,
    steps: Vec<Vec<Vec<f32>>>,
}

impl NoiseSource for FixtureNoise {
    fn fill(
        &self,
        index: usize,
        _seed: u64,
        stream: NoiseStream,
        out: &mut [f32],
    ) -> diffsteer::Result<()> {
        let source = match stream {
            NoiseStream::Initial => &self.initial[index],
            NoiseStream::Step(s) => self
                .steps
                .get(s as usize)
                .map(|per_sample| &per_sample[index])
                .unwrap_or_else(|| {
                    panic!("the scheduler asked for noise at step {s}, but the fixture has none")
                }),
            other => panic!("unexpected noise stream {other:?}"),
        };
        out.copy_from_slice(source);
        Ok(())
    }
}

fn split_samples(shape: &[usize], data: &[f32]) -> Vec<Vec<f32>> {
    let (nhwc_shape, nhwc) = nchw_to_nhwc(data, shape);
    let per = nhwc_shape[1..].iter().product::<usize>();
    nhwc.chunks(per).map(<[f32]>::to_vec).collect()
}

fn meta<'a>(fx: &'a WeightFile, key: &str) -> &'a str {
    fx.user_metadata(key)
        .unwrap_or_else(|| panic!("{}: metadata `{key}` missing", fx.path().display()))
}

/// The guider of a case (metadata `guider`: cfg, apg or cfg_zero_star; plain CFG for
/// fixtures made before guiders were recorded).
fn guidance_method(fx: &WeightFile) -> Result<GuidanceMethod, String> {
    let number = |key: &str| -> Result<f32, String> {
        meta(fx, key)
            .parse::<f32>()
            .map_err(|e| format!("{key}: {e}"))
    };
    Ok(match fx.user_metadata("guider").unwrap_or("cfg") {
        "cfg" => GuidanceMethod::Cfg,
        "apg" => GuidanceMethod::Apg(Apg {
            eta: number("apg_eta")?,
            norm_threshold: number("apg_norm_threshold")?,
            momentum: number("apg_momentum")?,
        }),
        "cfg_zero_star" => GuidanceMethod::CfgZeroStar {
            zero_init_steps: meta(fx, "zero_init_steps")
                .parse()
                .map_err(|e| format!("zero_init_steps: {e}"))?,
        },
        other => return Err(format!("unknown guider {other}")),
    })
}

fn run_case(path: &Path, unet: &UNet, backend: &CpuBackend) -> Result<f64, String> {
    let fx = WeightFile::open(path).map_err(|e| e.to_string())?;
    let kind = SchedulerKind::from_class_name(meta(&fx, "scheduler_class"))
        .ok_or_else(|| format!("unknown scheduler class {}", meta(&fx, "scheduler_class")))?;
    let config = SchedulerConfig::from_json_str(meta(&fx, "scheduler_config"), path)
        .map_err(|e| e.to_string())?;
    let steps: usize = meta(&fx, "num_steps")
        .parse()
        .map_err(|e| format!("num_steps: {e}"))?;
    let options = ScheduleOptions {
        eta: meta(&fx, "eta").parse().map_err(|e| format!("eta: {e}"))?,
        karras: None,
    };
    let scheduler = schedule::build(kind, &config, steps, &options).map_err(|e| e.to_string())?;
    let rescale: f32 = meta(&fx, "guidance_rescale")
        .parse()
        .map_err(|e| format!("rescale: {e}"))?;
    let method = guidance_method(&fx)?;
    let interval = GuidanceInterval {
        start: meta(&fx, "interval_start")
            .parse()
            .map_err(|e| format!("interval: {e}"))?,
        stop: meta(&fx, "interval_stop")
            .parse()
            .map_err(|e| format!("interval: {e}"))?,
    };

    let read = |name: &str| fx.read_f32(name).map_err(|e| e.to_string());
    let (noise_shape, initial) = read("initial_noise")?;
    let initial = split_samples(&noise_shape, &initial);
    let steps_noise = if fx.contains("step_noise") {
        let (shape, all) = read("step_noise")?;
        let per_step = shape[1..].iter().product::<usize>();
        all.chunks(per_step)
            .map(|s| split_samples(&shape[1..], s))
            .collect()
    } else {
        Vec::new()
    };
    let (_, scales) = read("guidance_scale")?;
    let (_, timesteps) = read("timesteps")?;
    for (i, &t) in timesteps.iter().enumerate() {
        let ours = scheduler.timestep(i);
        if (ours - t).abs() > 1e-3 * t.abs().max(1.0) {
            return Err(format!("timestep {i}: ours {ours}, diffusers {t}"));
        }
    }

    let n = scales.len();
    let conditions: Vec<Condition> = if fx.contains("class_labels_cond") {
        let (_, labels) = fx
            .read_i64("class_labels_cond")
            .map_err(|e| e.to_string())?;
        labels
            .iter()
            .map(|&l| Condition::Class(l as usize))
            .collect()
    } else {
        let (shape, cond) = read("encoder_hidden_states_cond")?;
        let (_, uncond) = read("encoder_hidden_states_uncond")?;
        let per = shape[1] * shape[2];
        (0..n)
            .map(|i| Condition::Embedding {
                cond: cond[i * per..(i + 1) * per].to_vec(),
                uncond: uncond[i * per..(i + 1) * per].to_vec(),
                tokens: shape[1],
            })
            .collect()
    };
    let specs: Vec<SampleSpec> = conditions
        .into_iter()
        .zip(&scales)
        .map(|(condition, &scale)| SampleSpec {
            seed: 0,
            condition,
            guidance: Guidance {
                scale,
                rescale,
                interval,
                method,
            },
        })
        .collect();
    let noise = FixtureNoise {
        initial,
        steps: steps_noise,
    };
    let sampler = Sampler::new(backend, unet, scheduler.as_ref()).map_err(|e| e.to_string())?;
    let out = sampler
        .sample(&specs, &noise, &mut |_| {})
        .map_err(|e| e.to_string())?;
    let (h, w, c) = (out[0].height, out[0].width, out[0].channels);
    let flat: Vec<f32> = out.iter().flat_map(|o| o.data.iter().copied()).collect();
    let ours = nhwc_to_nchw(&flat, &[n, h, w, c]);
    let (_, expected) = read("output")?;
    let err = rel_l2(&ours, &expected);
    if err.is_finite() && err <= TOLERANCE {
        Ok(err)
    } else {
        Err(format!(
            "final sample relative L2 {err:.3e} > {TOLERANCE:.0e}"
        ))
    }
}

/// Runs every `<model>__*.safetensors` case; `model` is a fixture model, or a shipped
/// one under `weights/` when no fixture folder has its name.
fn check_model(model: &str, min_cases: usize) {
    let backend = CpuBackend::new();
    let fixture_dir = fixtures().join("models").join(model);
    let model_dir = if fixture_dir.is_dir() {
        fixture_dir
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("weights")
            .join(model)
    };
    let unet = ModelFolder::locate(&model_dir)
        .and_then(|f| f.load_unet(&backend))
        .unwrap_or_else(|e| panic!("loading {model}: {e}"));
    let dir = fixtures().join("trajectories");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("trajectory fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{model}__")) && n.ends_with(".safetensors")
            })
        })
        .collect();
    cases.sort();
    assert!(
        cases.len() >= min_cases,
        "{model}: expected at least {min_cases} trajectory cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        match run_case(case, &unet, &backend) {
            Ok(err) => eprintln!("{name}: relative L2 {err:.2e}"),
            Err(message) => failures.push(format!("{name}: {message}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn class_conditional_unet2d_trajectories_match_diffusers() {
    check_model("unet2d_class", 18);
}

#[test]
fn sd1_style_condition_unet_trajectories_match_diffusers() {
    check_model("unet_cond", 22);
}

#[test]
fn sd2_style_linear_projection_trajectories_match_diffusers() {
    check_model("unet_cond_linear", 18);
}

/// The shipped model with its own scheduler config (v-prediction, trailing spacing),
/// as `diffsteer generate` runs it: DDIM, DDPM, Euler, Euler ancestral, DPM-Solver++.
#[test]
fn shipped_digits_model_trajectories_match_diffusers() {
    check_model("digits", 9);
}
