//! Sampler guarantees from DESIGN.md: same seed and settings ⇒ same bytes, and a
//! sample's result does not depend on the batch it runs in (within 1e-5).

mod common;

use common::{fixtures, rel_l2};
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::guidance::{Guidance, GuidanceInterval};
use diffsteer::model::ModelFolder;
use diffsteer::sampler::{Condition, PhiloxNoise, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};

fn specs() -> Vec<SampleSpec> {
    (0..4)
        .map(|i| SampleSpec {
            seed: 100 + i as u64,
            condition: if i == 3 {
                Condition::Unconditional
            } else {
                Condition::Class(i * 3)
            },
            guidance: Guidance {
                scale: 1.5 + i as f32,
                rescale: if i == 1 { 0.5 } else { 0.0 },
                interval: if i == 2 {
                    GuidanceInterval { start: 1, stop: 3 }
                } else {
                    GuidanceInterval::ALWAYS
                },
                ..Guidance::default()
            },
        })
        .collect()
}

#[test]
fn results_do_not_depend_on_batch_composition_and_repeat_exactly() {
    let backend = CpuBackend::new();
    let unet = ModelFolder::locate(fixtures().join("models/unet2d_class"))
        .and_then(|f| f.load_unet(&backend))
        .expect("model");
    for kind in [
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
    ] {
        let scheduler = schedule::build(
            kind,
            &SchedulerConfig::empty(),
            5,
            &ScheduleOptions::default(),
        )
        .expect("scheduler");
        let sampler = Sampler::new(&backend, &unet, scheduler.as_ref()).expect("sampler");
        let specs = specs();
        let together = sampler
            .sample(&specs, &PhiloxNoise, &mut |_| {})
            .expect("batch");
        let again = sampler
            .sample(&specs, &PhiloxNoise, &mut |_| {})
            .expect("batch again");
        for (a, b) in together.iter().zip(&again) {
            assert_eq!(
                a.data, b.data,
                "{kind:?}: same seed and settings must give the same bytes"
            );
        }
        for (i, spec) in specs.iter().enumerate() {
            let alone = sampler
                .sample(std::slice::from_ref(spec), &PhiloxNoise, &mut |_| {})
                .expect("single");
            let err = rel_l2(&alone[0].data, &together[i].data);
            assert!(
                err <= 1e-5,
                "{kind:?} sample {i}: batch vs alone differ by {err:.2e}"
            );
        }
        // Different seeds give different samples.
        assert!(rel_l2(&together[0].data, &together[1].data) > 0.1);
    }
}

#[test]
fn progress_is_reported_once_per_step() {
    let backend = CpuBackend::new();
    let unet = ModelFolder::locate(fixtures().join("models/unet2d_class"))
        .and_then(|f| f.load_unet(&backend))
        .expect("model");
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &SchedulerConfig::empty(),
        4,
        &ScheduleOptions::default(),
    )
    .expect("scheduler");
    let sampler = Sampler::new(&backend, &unet, scheduler.as_ref()).expect("sampler");
    let mut seen = Vec::new();
    sampler
        .sample(&specs()[..1], &PhiloxNoise, &mut |p| {
            seen.push((p.step, p.total))
        })
        .expect("sample");
    assert_eq!(seen, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
}

/// A model call is cut into one concurrent part per thread (CPU backend); no op's
/// arithmetic depends on the rest of its batch, so the thread count changes no bit.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let backend = CpuBackend::new();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/digits");
    for dir in [
        fixtures().join("models/unet2d_class"),
        fixtures().join("models/unet_cond"),
        shipped,
    ] {
        let unet = ModelFolder::locate(&dir)
            .and_then(|f| f.load_unet(&backend))
            .expect("model");
        let scheduler = schedule::build(
            SchedulerKind::Ddim,
            &SchedulerConfig::empty(),
            4,
            &ScheduleOptions::default(),
        )
        .expect("scheduler");
        let sampler = Sampler::new(&backend, &unet, scheduler.as_ref()).expect("sampler");
        let specs: Vec<SampleSpec> = match unet.config().cross_attention_dim {
            None => specs(),
            Some(dim) => (0..3)
                .map(|i| {
                    let tokens = 5;
                    let embedding = |shift: f32| -> Vec<f32> {
                        (0..tokens * dim)
                            .map(|j| (j as f32 * 0.37 + shift + i as f32).sin())
                            .collect()
                    };
                    SampleSpec {
                        seed: 40 + i as u64,
                        condition: Condition::Embedding {
                            cond: embedding(0.5),
                            uncond: embedding(2.0),
                            tokens,
                        },
                        guidance: Guidance {
                            scale: 2.0 + i as f32,
                            ..Guidance::default()
                        },
                    }
                })
                .collect(),
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| sampler.sample(&specs, &PhiloxNoise, &mut |_| {}))
                .expect("sample")
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            for (i, (a, b)) in one.iter().zip(run(threads)).enumerate() {
                assert!(
                    a.data == b.data,
                    "{}, sample {i}: {threads} threads differ from 1 by {:.2e}",
                    dir.display(),
                    rel_l2(&b.data, &a.data)
                );
            }
        }
    }
}
