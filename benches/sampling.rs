//! Criterion benches of whole-model work on the shipped digits model:
//! `cargo bench --bench sampling`.
//!
//! - one U-Net forward of `weights/digits` at batch 2 (one image under CFG) and
//!   batch 32 (16 images under CFG). Throughput is the forward's FLOPs (names end in
//!   "(flop)", so criterion's "elem/s" reads as FLOP/s), counted by running one
//!   forward through [`CountingBackend`]: 2 per multiply-add of every convolution,
//!   linear layer and attention product (q·kᵀ and p·v), as `diffsteer bench`
//!   reports them; norms, activations and elementwise ops count nothing.
//! - one full guided sample: DDIM 20 steps, CFG 3, reward-gradient guidance by the
//!   shipped digit classifier (`weights/digit-classifier`) at the defaults of
//!   `generate --reward` ([`RewardGuidance::recommended`]), no particle steering,
//!   for 1 image and for 16 images, every image class 3 steered toward 3.
//!   Throughput is images, so criterion prints images/s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use diffsteer::backend::counting::CountingBackend;
use diffsteer::backend::Backend;
use diffsteer::guidance::reward::RewardGuidance;
use diffsteer::model::UNetInputs;
use diffsteer::reward::{Classifier, ClassifierReward};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::schedule::{self, ScheduleOptions, SchedulerKind};
use diffsteer::steer::Steering;
use diffsteer::{
    Alignment, Condition, CpuBackend, Guidance, ModelFolder, PhiloxNoise, SampleSpec, Sampler, UNet,
};

const STEPS: usize = 20;
const CFG: f32 = 3.0;
const TARGET: usize = 3;

fn forward(c: &mut Criterion, backend: &CpuBackend, unet: &UNet) {
    let config = unet.config();
    let (h, w) = config.sample_size.expect("digits config has sample_size");
    let channels = config.in_channels;
    let classes = unet
        .num_classes()
        .expect("digits model is class-conditional");
    let counting = CountingBackend::new(backend);

    let mut group = c.benchmark_group("digits");
    group.sample_size(20);
    for rows in [2usize, 32] {
        let x = backend
            .tensor(
                &[rows, h, w, channels],
                normal_vec(1, NoiseStream::Custom(1 << 45), rows * h * w * channels),
            )
            .expect("tensor");
        let timesteps: Vec<f32> = (0..rows).map(|i| (999 - 31 * i) as f32).collect();
        // Conditional rows then null-class rows, as a CFG model call lays them out.
        let labels: Vec<usize> = (0..rows)
            .map(|i| {
                if i < rows / 2 {
                    i % (classes - 1)
                } else {
                    classes - 1
                }
            })
            .collect();
        let inputs = UNetInputs {
            timesteps: &timesteps,
            class_labels: Some(&labels),
            encoder_hidden_states: None,
        };
        counting.take_flops();
        unet.forward(&counting, &x, &inputs)
            .expect("counted forward");
        let flops = counting.take_flops();
        eprintln!(
            "digits unet forward, batch {rows}: {:.4} GFLOP",
            flops as f64 / 1e9
        );
        group.throughput(Throughput::Elements(flops));
        group.bench_function(format!("unet forward, batch {rows} (flop)"), |b| {
            b.iter(|| unet.forward(backend, &x, &inputs).expect("forward"))
        });
    }
    group.finish();
}

fn guided(c: &mut Criterion, backend: &CpuBackend, unet: &UNet, root: &Path) {
    let folder = ModelFolder::locate(root.join("weights/digits")).expect("model folder");
    let config = folder.load_scheduler_config().expect("scheduler config");
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &config,
        STEPS,
        &ScheduleOptions::default(),
    )
    .expect("scheduler");
    let sampler = Sampler::new(backend, unet, scheduler.as_ref()).expect("sampler");
    let classifier =
        Arc::new(Classifier::load(&root.join("weights/digit-classifier")).expect("classifier"));
    let reward = ClassifierReward::new(classifier, TARGET).expect("reward");
    let alignment = Alignment {
        reward: Some(&reward),
        guidance: RewardGuidance::recommended(STEPS),
        steering: Steering::NONE,
    };

    let mut group = c.benchmark_group("sample");
    // One iteration is a whole sampling run (about a second per 4 images on 2
    // cores): the fewest samples criterion allows, each a single run.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    for images in [1usize, 16] {
        let specs: Vec<SampleSpec> = (0..images)
            .map(|i| SampleSpec {
                seed: i as u64,
                condition: Condition::Class(TARGET),
                guidance: Guidance::cfg(CFG),
            })
            .collect();
        group.throughput(Throughput::Elements(images as u64));
        group.measurement_time(Duration::from_secs(if images == 1 { 5 } else { 30 }));
        group.bench_function(
            format!(
                "ddim {STEPS} steps, cfg 3, classifier guidance, {images} image{} (images)",
                if images == 1 { "" } else { "s" }
            ),
            |b| {
                b.iter(|| {
                    sampler
                        .sample_aligned(&specs, &PhiloxNoise, &alignment, &mut |_| {})
                        .expect("sample")
                })
            },
        );
    }
    group.finish();
}

fn sampling(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let backend = CpuBackend::new();
    let unet = ModelFolder::locate(root.join("weights/digits"))
        .and_then(|f| f.load_unet(&backend))
        .expect("unet");
    forward(c, &backend, &unet);
    guided(c, &backend, &unet, root);
}

criterion_group!(benches, sampling);
criterion_main!(benches);
