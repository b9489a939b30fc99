//! Criterion benches of the reward models at sampling batch sizes, next to the U-Net
//! forward they ride along with: `cargo bench --bench reward`.
//!
//! The classifier reward runs once per denoising step on the x₀ estimates of a batch;
//! its forward + backward must stay a small fraction of the step's U-Net forward.
//! Throughput is set to images, so criterion prints images/s.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diffsteer::backend::Backend;
use diffsteer::model::{ModelFolder, UNetInputs};
use diffsteer::reward::{Classifier, InkReward, Reward, SampleShape};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::CpuBackend;

const BATCH: usize = 32;

fn rewards(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let classifier = Classifier::load(&root.join("weights/digit-classifier")).expect("classifier");
    let shape = classifier.input_shape();
    let x: Vec<f32> = normal_vec(5, NoiseStream::Custom(1 << 43), BATCH * shape.len())
        .into_iter()
        .map(|v| (0.6 * v).clamp(-1.0, 1.0))
        .collect();
    let classes: Vec<usize> = (0..BATCH).map(|i| i % classifier.num_classes()).collect();
    let mut grad = vec![0f32; x.len()];

    let mut group = c.benchmark_group("reward");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("classifier forward, batch 32 (images)", |b| {
        b.iter(|| classifier.logits(&x).expect("logits"))
    });
    group.bench_function("classifier forward+backward, batch 32 (images)", |b| {
        b.iter(|| {
            classifier
                .log_prob_and_grad(&x, &classes, Some(&mut grad))
                .expect("grad")
        })
    });
    let ink = InkReward::new(0.2).expect("ink");
    group.bench_function("ink value+gradient, batch 32 (images)", |b| {
        b.iter(|| {
            ink.evaluate(SampleShape::new(28, 28, 1), &x, Some(&mut grad))
                .expect("ink")
        })
    });

    // The yardstick: one U-Net forward of the shipped digits model at the same batch.
    let backend = CpuBackend::new();
    let unet = ModelFolder::locate(root.join("weights/digits"))
        .and_then(|f| f.load_unet(&backend))
        .expect("unet");
    let xt = backend
        .tensor(
            &[BATCH, 28, 28, 1],
            normal_vec(6, NoiseStream::Custom(1 << 44), x.len()),
        )
        .expect("tensor");
    let timesteps: Vec<f32> = (0..BATCH).map(|i| (999 - 31 * i) as f32).collect();
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 11).collect();
    let inputs = UNetInputs {
        timesteps: &timesteps,
        class_labels: Some(&labels),
        encoder_hidden_states: None,
    };
    group.sample_size(10);
    group.bench_function("digits unet forward, batch 32 (images)", |b| {
        b.iter(|| unet.forward(&backend, &xt, &inputs).expect("forward"))
    });
    group.finish();
}

criterion_group!(benches, rewards);
criterion_main!(benches);
