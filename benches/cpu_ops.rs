//! Criterion benches of the CPU backend's ops at the shapes of the shipped digits
//! U-Net under CFG (batch 32 = 16 images × 2): `cargo bench --bench cpu_ops`.
//! Each reports time per call; throughput is set to the FLOPs (matrix ops) or bytes
//! (memory-bound ops) the call performs, so criterion prints GFLOP/s or GB/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diffsteer::backend::{Backend, Conv2dGeometry};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::CpuBackend;

fn random(b: &CpuBackend, shape: &[usize], seed: u64) -> diffsteer::tensor::Tensor {
    let len = shape.iter().product();
    b.tensor(shape, normal_vec(seed, NoiseStream::Custom(1 << 42), len))
        .expect("tensor")
}

fn ops(c: &mut Criterion) {
    let b = CpuBackend::new();
    let mut group = c.benchmark_group("cpu");
    group.sample_size(20);

    let x = random(&b, &[32, 28, 28, 64], 1);
    let w = random(&b, &[3, 3, 64, 32], 2);
    let bias = random(&b, &[32], 3);
    group.throughput(Throughput::Elements(2 * 32 * 28 * 28 * 9 * 64 * 32));
    group.bench_function("conv3x3 32x28x28 64->32 (flop)", |bench| {
        bench.iter(|| {
            b.conv2d(&x, &w, Some(&bias), &Conv2dGeometry::symmetric(1, 1))
                .expect("conv")
        })
    });

    let gamma = random(&b, &[64], 4);
    let beta = random(&b, &[64], 5);
    group.throughput(Throughput::Bytes(3 * 4 * 32 * 28 * 28 * 64));
    group.bench_function("group_norm+silu 32x28x28x64 (bytes)", |bench| {
        bench.iter(|| b.group_norm(&x, 8, &gamma, &beta, 1e-5, true).expect("gn"))
    });

    let q = random(&b, &[32, 196, 64], 6);
    let k = random(&b, &[32, 196, 64], 7);
    let v = random(&b, &[32, 196, 64], 8);
    group.throughput(Throughput::Elements(4 * 32 * 196 * 196 * 64));
    group.bench_function("attention 32x196 8 heads d8 (flop)", |bench| {
        bench.iter(|| b.attention(&q, &k, &v, 8).expect("attention"))
    });
    group.throughput(Throughput::Elements(4 * 32 * 196 * 196 * 64));
    group.bench_function("attention 32x196 1 head d64 (flop)", |bench| {
        bench.iter(|| b.attention(&q, &k, &v, 1).expect("attention"))
    });
    group.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
