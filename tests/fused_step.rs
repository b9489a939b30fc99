//! The fused guidance + scheduler step (`StepPath::Fused`, what the CUDA backend runs)
//! against the host path (`StepPath::Host`: CFG, rescale, reward shift and each
//! scheduler's own `step` in diffusers' f32 order), whole trajectories on the CPU
//! backend: every scheduler, CFG with rescale and intervals, reward guidance with
//! recurrence, and Feynman-Kac steering.

mod common;

use common::{fixtures, rel_l2, Quadratic};
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::backend::guided_step::guided_step_on_host;
use diffsteer::backend::{SlotStep, StepBuffers};
use diffsteer::guidance::reward::RewardGuidance;
use diffsteer::guidance::{Apg, Guidance, GuidanceInterval, GuidanceMethod};
use diffsteer::model::{ModelFolder, UNet};
use diffsteer::sampler::{
    Alignment, Condition, PhiloxNoise, SampleOutput, SampleSpec, Sampler, StepPath,
};
use diffsteer::schedule::{self, LinearStep, ScheduleOptions, SchedulerConfig, SchedulerKind};
use diffsteer::steer::{SteerMethod, Steering};

fn load(dir: impl AsRef<std::path::Path>, backend: &CpuBackend) -> (UNet, SchedulerConfig) {
    let folder = ModelFolder::locate(dir).expect("model folder");
    (
        folder.load_unet(backend).expect("model"),
        folder.load_scheduler_config().expect("scheduler config"),
    )
}

/// DESIGN.md's bound for whole trajectories that differ only in rounding: 1e-4.
fn compare(host: &[SampleOutput], fused: &[SampleOutput], what: &str) {
    assert_eq!(host.len(), fused.len());
    let mut worst = 0f64;
    for (i, (h, f)) in host.iter().zip(fused).enumerate() {
        assert_eq!(
            h.particle, f.particle,
            "{what} sample {i}: kept another particle"
        );
        let err = rel_l2(&f.data, &h.data);
        assert!(err <= 1e-4, "{what} sample {i}: fused vs host {err:.2e}");
        worst = worst.max(err);
    }
    eprintln!("{what}: fused vs host, largest relative L2 {worst:.2e}");
}

#[test]
fn fused_steps_follow_the_host_path_for_every_scheduler() {
    let backend = CpuBackend::new();
    let (unet, config) = load(fixtures().join("models/unet2d_class"), &backend);
    let specs: Vec<SampleSpec> = (0..4)
        .map(|i| SampleSpec {
            seed: 7 + i as u64,
            condition: if i == 3 {
                Condition::Unconditional
            } else {
                Condition::Class(i * 2)
            },
            guidance: Guidance {
                scale: 2.0 + i as f32,
                rescale: if i == 1 { 0.7 } else { 0.0 },
                interval: if i == 2 {
                    GuidanceInterval { start: 1, stop: 4 }
                } else {
                    GuidanceInterval::ALWAYS
                },
                ..Guidance::default()
            },
        })
        .collect();
    for (kind, eta) in [
        (SchedulerKind::Ddim, 0.0),
        (SchedulerKind::Ddim, 0.6),
        (SchedulerKind::Ddpm, 0.0),
        (SchedulerKind::Euler, 0.0),
        (SchedulerKind::EulerAncestral, 0.0),
        (SchedulerKind::DpmSolverMultistep, 0.0),
    ] {
        let options = ScheduleOptions { eta, karras: None };
        let scheduler = schedule::build(kind, &config, 6, &options).expect("scheduler");
        let run = |path| {
            Sampler::new(&backend, &unet, scheduler.as_ref())
                .expect("sampler")
                .with_step_path(path)
                .sample(&specs, &PhiloxNoise, &mut |_| {})
                .expect("sample")
        };
        compare(
            &run(StepPath::Host),
            &run(StepPath::Fused),
            &format!("{kind} eta {eta}"),
        );
    }
}

#[test]
fn fused_steps_follow_the_host_path_for_apg_and_cfg_zero_star() {
    let backend = CpuBackend::new();
    let (unet, config) = load(fixtures().join("models/unet2d_class"), &backend);
    let methods = [
        GuidanceMethod::Apg(Apg {
            eta: 0.0,
            norm_threshold: 2.0,
            momentum: -0.5,
        }),
        GuidanceMethod::CfgZeroStar { zero_init_steps: 2 },
        GuidanceMethod::Cfg,
    ];
    // Every method in one batch, one with a rescale and one with an interval.
    let specs: Vec<SampleSpec> = (0..6)
        .map(|i| SampleSpec {
            seed: 11 + i as u64,
            condition: Condition::Class(i),
            guidance: Guidance {
                scale: 3.0,
                rescale: if i == 3 { 0.5 } else { 0.0 },
                interval: if i == 4 {
                    GuidanceInterval { start: 1, stop: 5 }
                } else {
                    GuidanceInterval::ALWAYS
                },
                method: methods[i % 3],
            },
        })
        .collect();
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::EulerAncestral,
    ] {
        let scheduler =
            schedule::build(kind, &config, 6, &ScheduleOptions::default()).expect("scheduler");
        let run = |path| {
            Sampler::new(&backend, &unet, scheduler.as_ref())
                .expect("sampler")
                .with_step_path(path)
                .sample(&specs, &PhiloxNoise, &mut |_| {})
                .expect("sample")
        };
        compare(
            &run(StepPath::Host),
            &run(StepPath::Fused),
            &format!("{kind}, APG and CFG-Zero*"),
        );
    }
}

#[test]
fn fused_steps_follow_the_host_path_with_reward_guidance_recurrence_and_steering() {
    let backend = CpuBackend::new();
    let (unet, config) = load(
        concat!(env!("CARGO_MANIFEST_DIR"), "/weights/digits"),
        &backend,
    );
    let options = ScheduleOptions {
        eta: 1.0,
        karras: None,
    };
    let steps = 6;
    let scheduler =
        schedule::build(SchedulerKind::Ddim, &config, steps, &options).expect("scheduler");
    let specs: Vec<SampleSpec> = (0..2)
        .map(|i| SampleSpec {
            seed: 70 + i,
            condition: Condition::Class(3 + i as usize),
            guidance: Guidance::cfg(2.5),
        })
        .collect();
    let alignment = Alignment {
        reward: Some(&Quadratic { target: 0.3 }),
        guidance: RewardGuidance {
            window: GuidanceInterval { start: 0, stop: 5 },
            recurrence: 2,
            ..RewardGuidance::default()
        },
        steering: Steering {
            every: 2,
            lambda: 0.5,
            ..Steering::new(3, SteerMethod::FeynmanKac)
        },
    };
    let run = |path| {
        Sampler::new(&backend, &unet, scheduler.as_ref())
            .expect("sampler")
            .with_step_path(path)
            .sample_aligned(&specs, &PhiloxNoise, &alignment, &mut |_| {})
            .expect("sample")
    };
    let host = run(StepPath::Host);
    let fused = run(StepPath::Fused);
    compare(&host, &fused, "guided + steered");
    for (h, f) in host.iter().zip(&fused) {
        let (hr, fr) = (h.reward.expect("reward"), f.reward.expect("reward"));
        assert!(
            (hr - fr).abs() <= 1e-4 * hr.abs().max(1.0),
            "rewards {hr} vs {fr}"
        );
    }
}

#[test]
fn bad_fused_step_input_is_refused() {
    let update = LinearStep {
        x0_from_sample: 1.0,
        x0_from_output: -0.5,
        clip: None,
        sample: 0.2,
        output: 0.0,
        x0: 0.8,
        history: 0.0,
        noise: 0.1,
    };
    let slot = SlotStep {
        uncond_row: Some(0),
        cond_row: 1,
        cfg_scale: 3.0,
        cfg_rescale: 0.0,
        shifted: false,
        update,
    };
    let model = vec![0.5f32; 8];
    let latents = vec![1.0f32; 4];
    let noise = vec![0.25f32; 4];
    let buffers = |noise| StepBuffers {
        latents: &latents,
        history: None,
        noise,
        shift: None,
    };
    // Two rows of 4: the guided output is 0.5, x̂₀ = 1 − 0.25, x' = 0.2 + 0.8·0.75 + 0.1·0.25.
    let ok = guided_step_on_host(&model, 2, &[slot], &buffers(Some(&noise))).expect("step");
    assert_eq!(ok.x0, vec![0.75; 4]);
    let expected = 0.2f32 * 1.0 + 0.0 * 0.5 + 0.8 * 0.75 + 0.0 + 0.1 * 0.25;
    assert_eq!(ok.next, vec![expected; 4]);
    let errors = [
        guided_step_on_host(&model, 2, &[slot], &buffers(None)),
        guided_step_on_host(&model, 3, &[slot], &buffers(Some(&noise))),
        guided_step_on_host(&model[..6], 2, &[slot], &buffers(Some(&noise[..3]))),
        guided_step_on_host(
            &model,
            2,
            &[SlotStep {
                cond_row: 2,
                ..slot
            }],
            &buffers(Some(&noise)),
        ),
    ];
    for (i, e) in errors.into_iter().enumerate() {
        let message = e.expect_err("bad input must be refused").to_string();
        assert!(message.contains("guided_step"), "case {i}: {message}");
    }
}
