//! Criterion benches of the CPU backend's ops: `cargo bench --bench cpu_ops`.
//!
//! - group `cpu`: a square GEMM (the ceiling every matrix op is measured against),
//!   then the ops at the shapes of the shipped digits U-Net under CFG (batch 32 =
//!   16 images × 2);
//! - group `sd15`: Stable Diffusion 1.5's first-level shapes (320 channels, 8 heads
//!   of width 40, 77 text tokens, groups of 32) under CFG for one image (batch 2),
//!   scaled to a 32×32 latent (a 256×256 image) so one call stays well under a
//!   second on a 2-core CPU, plus a deep convolution and linear (1280 and 5120
//!   input channels).
//!
//! Each reports time per call; throughput is set to the FLOPs (matrix ops: names end
//! in "(flop)", so criterion's "elem/s" reads as FLOP/s) or bytes (memory-bound ops:
//! "(bytes)", read as B/s) the call performs. FLOPs are counted analytically, a
//! multiply-add as 2: 2·M·N·K for a product, 2·N·H·W·kh·kw·Cin·Cout for a
//! convolution, 4·B·Lq·Lk·(heads·d) for attention (q·kᵀ and p·v; softmax not
//! counted). Group norm + SiLU reads its input twice and writes once: 3·4 bytes per
//! element.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diffsteer::backend::cpu::matmul::{matmul, MatRef};
use diffsteer::backend::{Backend, Conv2dGeometry};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::tensor::Tensor;
use diffsteer::CpuBackend;

fn random(b: &CpuBackend, shape: &[usize], seed: u64) -> Tensor {
    let len = shape.iter().product();
    b.tensor(shape, normal_vec(seed, NoiseStream::Custom(1 << 42), len))
        .expect("tensor")
}

/// 2·N·H·W·9·Cin·Cout: a 3×3 convolution with "same" padding.
fn conv3x3_flops(n: usize, h: usize, w: usize, cin: usize, cout: usize) -> u64 {
    (2 * n * h * w * 9 * cin * cout) as u64
}

/// 2·M·N·K.
fn gemm_flops(m: usize, k: usize, n: usize) -> u64 {
    (2 * m * k * n) as u64
}

/// 4·B·Lq·Lk·width: q·kᵀ and p·v, each 2·Lq·Lk·d per head.
fn attention_flops(batch: usize, lq: usize, lk: usize, width: usize) -> u64 {
    (4 * batch * lq * lk * width) as u64
}

/// Group norm (+ SiLU) traffic: read twice (statistics, then normalise), write once.
fn group_norm_bytes(elements: usize) -> u64 {
    (3 * 4 * elements) as u64
}

fn ops(c: &mut Criterion) {
    let b = CpuBackend::new();
    let mut group = c.benchmark_group("cpu");
    group.sample_size(20);

    // The GEMM ceiling: 1024³ through `Backend::linear` (the path every linear layer
    // and 1×1 convolution takes, split over all threads), and through the bare
    // single-threaded `matmul` that every CPU op's inner products end in.
    let (m, k, n) = (1024, 1024, 1024);
    let a = random(&b, &[m, k], 10);
    let wt = random(&b, &[k, n], 11);
    group.throughput(Throughput::Elements(gemm_flops(m, k, n)));
    group.bench_function("gemm 1024x1024x1024 linear (flop)", |bench| {
        bench.iter(|| b.linear(&a, &wt, None).expect("linear"))
    });
    let (a_host, w_host) = (b.to_host(&a).expect("a"), b.to_host(&wt).expect("w"));
    let mut dst = vec![0f32; m * n];
    group.bench_function("gemm 1024x1024x1024 matmul 1 thread (flop)", |bench| {
        bench.iter(|| {
            matmul(
                &mut dst,
                n,
                MatRef::row_major(&a_host, m, k),
                MatRef::row_major(&w_host, k, n),
                1.0,
                false,
            )
        })
    });
    drop((a, wt, a_host, w_host, dst));

    let x = random(&b, &[32, 28, 28, 64], 1);
    let w = random(&b, &[3, 3, 64, 32], 2);
    let bias = random(&b, &[32], 3);
    group.throughput(Throughput::Elements(conv3x3_flops(32, 28, 28, 64, 32)));
    group.bench_function("conv3x3 32x28x28 64->32 (flop)", |bench| {
        bench.iter(|| {
            b.conv2d(&x, &w, Some(&bias), &Conv2dGeometry::symmetric(1, 1))
                .expect("conv")
        })
    });

    let gamma = random(&b, &[64], 4);
    let beta = random(&b, &[64], 5);
    group.throughput(Throughput::Bytes(group_norm_bytes(32 * 28 * 28 * 64)));
    group.bench_function("group_norm+silu 32x28x28x64 (bytes)", |bench| {
        bench.iter(|| b.group_norm(&x, 8, &gamma, &beta, 1e-5, true).expect("gn"))
    });

    let q = random(&b, &[32, 196, 64], 6);
    let k = random(&b, &[32, 196, 64], 7);
    let v = random(&b, &[32, 196, 64], 8);
    group.throughput(Throughput::Elements(attention_flops(32, 196, 196, 64)));
    group.bench_function("attention 32x196 8 heads d8 (flop)", |bench| {
        bench.iter(|| b.attention(&q, &k, &v, 8).expect("attention"))
    });
    group.bench_function("attention 32x196 1 head d64 (flop)", |bench| {
        bench.iter(|| b.attention(&q, &k, &v, 1).expect("attention"))
    });

    // The attention block's to_q / to_k / to_v / to_out projections: 64 → 64 over
    // every token of the 14×14 level.
    let tokens = random(&b, &[32 * 196, 64], 9);
    let proj = random(&b, &[64, 64], 12);
    let proj_bias = random(&b, &[64], 13);
    group.throughput(Throughput::Elements(gemm_flops(32 * 196, 64, 64)));
    group.bench_function("linear 6272x64->64 (flop)", |bench| {
        bench.iter(|| b.linear(&tokens, &proj, Some(&proj_bias)).expect("linear"))
    });
    group.finish();
}

/// SD 1.5's highest-resolution level (320 channels) at a 32×32 latent, batch 2
/// (one image under CFG).
fn sd15(c: &mut Criterion) {
    const N: usize = 2;
    const HW: usize = 32;
    const C: usize = 320;
    const HEADS: usize = 8; // SD 1.5: attention_head_dim 8, so d = 320 / 8 = 40
    const TEXT: usize = 77;
    let l = HW * HW;
    let b = CpuBackend::new();
    let mut group = c.benchmark_group("sd15");
    group.sample_size(10);

    let x = random(&b, &[N, HW, HW, C], 20);
    let w = random(&b, &[3, 3, C, C], 21);
    let bias = random(&b, &[C], 22);
    group.throughput(Throughput::Elements(conv3x3_flops(N, HW, HW, C, C)));
    group.bench_function("conv3x3 2x32x32 320->320 (flop)", |bench| {
        bench.iter(|| {
            b.conv2d(&x, &w, Some(&bias), &Conv2dGeometry::symmetric(1, 1))
                .expect("conv")
        })
    });

    // The transformer's proj_in / proj_out (1×1 convolutions in SD 1.5).
    let w1 = random(&b, &[1, 1, C, C], 23);
    group.throughput(Throughput::Elements(gemm_flops(N * l, C, C)));
    group.bench_function("conv1x1 2x32x32 320->320 (flop)", |bench| {
        bench.iter(|| {
            b.conv2d(&x, &w1, Some(&bias), &Conv2dGeometry::symmetric(1, 0))
                .expect("conv")
        })
    });

    let gamma = random(&b, &[C], 24);
    let beta = random(&b, &[C], 25);
    group.throughput(Throughput::Bytes(group_norm_bytes(N * l * C)));
    group.bench_function("group_norm+silu 32 groups 2x32x32x320 (bytes)", |bench| {
        bench.iter(|| b.group_norm(&x, 32, &gamma, &beta, 1e-5, true).expect("gn"))
    });

    // The feed-forward's GEGLU projection, 320 → 2·1280, over every token.
    let tokens = random(&b, &[N, l, C], 26);
    let ff = random(&b, &[C, 8 * C], 27);
    let ff_bias = random(&b, &[8 * C], 28);
    group.throughput(Throughput::Elements(gemm_flops(N * l, C, 8 * C)));
    group.bench_function("linear 2x1024 320->2560 (flop)", |bench| {
        bench.iter(|| b.linear(&tokens, &ff, Some(&ff_bias)).expect("linear"))
    });
    drop((ff, ff_bias));

    let q = random(&b, &[N, l, C], 29);
    let k = random(&b, &[N, l, C], 30);
    let v = random(&b, &[N, l, C], 31);
    group.throughput(Throughput::Elements(attention_flops(N, l, l, C)));
    group.bench_function("self-attention 2x1024 8 heads d40 (flop)", |bench| {
        bench.iter(|| b.attention(&q, &k, &v, HEADS).expect("attention"))
    });

    // Cross-attention to the 77 text tokens (k, v already projected 768 → 320).
    let kx = random(&b, &[N, TEXT, C], 32);
    let vx = random(&b, &[N, TEXT, C], 33);
    group.throughput(Throughput::Elements(attention_flops(N, l, TEXT, C)));
    group.bench_function("cross-attention 2x1024x77 8 heads d40 (flop)", |bench| {
        bench.iter(|| b.attention(&q, &kx, &vx, HEADS).expect("attention"))
    });
    drop((q, k, v, kx, vx));

    // The deep layers, where K = 9·c_in runs to 23,040 and the packed GEMM's row
    // blocks and tiles (panel_conv.rs) matter: an up block's first convolution at
    // 16×16 (1280 = 640 + 640 skip channels in, 640 out) and the feed-forward's
    // output projection at the 8×8 level (5120 → 1280 over 2 × 64 tokens).
    let x_deep = random(&b, &[N, 16, 16, 2 * 640], 34);
    let w_deep = random(&b, &[3, 3, 2 * 640, 640], 35);
    let bias_deep = random(&b, &[640], 36);
    group.throughput(Throughput::Elements(conv3x3_flops(N, 16, 16, 1280, 640)));
    group.bench_function("conv3x3 2x16x16 1280->640 (flop)", |bench| {
        bench.iter(|| {
            b.conv2d(
                &x_deep,
                &w_deep,
                Some(&bias_deep),
                &Conv2dGeometry::symmetric(1, 1),
            )
            .expect("conv")
        })
    });
    let tokens_deep = random(&b, &[N, 64, 4 * 1280], 37);
    let w_out = random(&b, &[4 * 1280, 1280], 38);
    group.throughput(Throughput::Elements(gemm_flops(N * 64, 4 * 1280, 1280)));
    group.bench_function("linear 2x64 5120->1280 (flop)", |bench| {
        bench.iter(|| b.linear(&tokens_deep, &w_out, None).expect("linear"))
    });
    group.finish();
}

criterion_group!(benches, ops, sd15);
criterion_main!(benches);
