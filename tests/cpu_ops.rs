//! The CPU backend's ops against direct, hand-written f64 references on random inputs
//! (including geometries no fixture model exercises: asymmetric padding, odd sizes,
//! non-integer resize ratios), and refusal of malformed or empty inputs.

mod common;

use common::rel_l2;
use diffsteer::backend::{Backend, Conv2dGeometry};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::tensor::Tensor;
use diffsteer::CpuBackend;

fn random(shape: &[usize], seed: u64) -> (Vec<usize>, Vec<f32>) {
    (
        shape.to_vec(),
        normal_vec(seed, NoiseStream::Custom(1 << 58), shape.iter().product()),
    )
}

fn tensor(b: &CpuBackend, (shape, data): &(Vec<usize>, Vec<f32>)) -> Tensor {
    b.tensor(shape, data.clone()).expect("tensor")
}

#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f32],
    (n, h, w, cin): (usize, usize, usize, usize),
    wt: &[f32],
    (kh, kw, cout): (usize, usize, usize),
    bias: &[f32],
    g: &Conv2dGeometry,
) -> Vec<f32> {
    let (oh, ow) = g.output_size(h, w, kh, kw).expect("fits");
    let mut out = vec![0f32; n * oh * ow * cout];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..cout {
                    let mut acc = bias[co] as f64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                            let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for ci in 0..cin {
                                let xv =
                                    x[((b * h + iy as usize) * w + ix as usize) * cin + ci] as f64;
                                acc += xv * wt[((ky * kw + kx) * cin + ci) * cout + co] as f64;
                            }
                        }
                    }
                    out[((b * oh + oy) * ow + ox) * cout + co] = acc as f32;
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_matches_a_direct_convolution_for_every_geometry() {
    let b = CpuBackend::new();
    let cases = [
        ((2, 9, 7, 5), (3, 3, 6), Conv2dGeometry::symmetric(1, 1)),
        ((2, 9, 7, 5), (3, 3, 4), Conv2dGeometry::symmetric(2, 1)),
        (
            (1, 9, 7, 3),
            (3, 3, 4),
            Conv2dGeometry {
                stride: 2,
                pad_top: 0,
                pad_bottom: 1,
                pad_left: 0,
                pad_right: 1,
            },
        ),
        ((3, 4, 5, 8), (1, 1, 3), Conv2dGeometry::symmetric(1, 0)),
        ((1, 6, 6, 2), (5, 5, 3), Conv2dGeometry::symmetric(1, 2)),
    ];
    for (i, (xd, (kh, kw, cout), g)) in cases.into_iter().enumerate() {
        let x = random(&[xd.0, xd.1, xd.2, xd.3], 10 + i as u64);
        let w = random(&[kh, kw, xd.3, cout], 20 + i as u64);
        let bias = random(&[cout], 30 + i as u64);
        let out = b
            .conv2d(
                &tensor(&b, &x),
                &tensor(&b, &w),
                Some(&tensor(&b, &bias)),
                &g,
            )
            .expect("conv");
        let reference = naive_conv(&x.1, xd, &w.1, (kh, kw, cout), &bias.1, &g);
        let (oh, ow) = g.output_size(xd.1, xd.2, kh, kw).expect("fits");
        assert_eq!(out.shape(), [xd.0, oh, ow, cout]);
        let err = rel_l2(&b.to_host(&out).expect("host"), &reference);
        assert!(err < 1e-6, "case {i}: relative L2 {err:e}");
    }
}

#[test]
fn upsample_uses_pytorch_nearest_indices() {
    let b = CpuBackend::new();
    let x = random(&[1, 3, 5, 2], 40);
    let out = b
        .to_host(
            &b.upsample_nearest(&tensor(&b, &x), 7, 11)
                .expect("upsample"),
        )
        .expect("host");
    for oy in 0..7 {
        for ox in 0..11 {
            let iy = ((oy as f32 * (3.0 / 7.0)).floor() as usize).min(2);
            let ix = ((ox as f32 * (5.0 / 11.0)).floor() as usize).min(4);
            for c in 0..2 {
                assert_eq!(out[(oy * 11 + ox) * 2 + c], x.1[(iy * 5 + ix) * 2 + c]);
            }
        }
    }
}

#[test]
fn group_norm_matches_per_group_statistics() {
    let b = CpuBackend::new();
    let (n, h, w, c, groups) = (2, 5, 3, 8, 4);
    let mut x = random(&[n, h, w, c], 50);
    // An offset several standard deviations large checks that the statistics keep
    // their precision. (Like PyTorch's kernel, the normalisation is applied as
    // x·a + b, which loses digits only when |mean| ≫ std, e.g. 1000×.)
    x.1.iter_mut().for_each(|v| *v += 5.0);
    let gamma = random(&[c], 51);
    let beta = random(&[c], 52);
    let out = b
        .to_host(
            &b.group_norm(
                &tensor(&b, &x),
                groups,
                &tensor(&b, &gamma),
                &tensor(&b, &beta),
                1e-5,
                true,
            )
            .expect("group norm"),
        )
        .expect("host");
    let per = c / groups;
    let mut reference = vec![0f32; x.1.len()];
    for s in 0..n {
        for g in 0..groups {
            let vals: Vec<f64> = (0..h * w)
                .flat_map(|p| (0..per).map(move |j| (p, g * per + j)))
                .map(|(p, ch)| x.1[(s * h * w + p) * c + ch] as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            for p in 0..h * w {
                for ch in g * per..(g + 1) * per {
                    let i = (s * h * w + p) * c + ch;
                    let y = (x.1[i] as f64 - mean) / (var + 1e-5).sqrt() * gamma.1[ch] as f64
                        + beta.1[ch] as f64;
                    reference[i] = (y / (1.0 + (-y).exp())) as f32;
                }
            }
        }
    }
    let err = rel_l2(&out, &reference);
    assert!(err < 1e-5, "relative L2 {err:e}");
}

#[test]
fn attention_matches_softmax_attention() {
    // Head dims of the GEMM path (5, 40) and of the small-head SIMD path (8 to 32),
    // with query and key counts that are not whole blocks or vectors.
    for (case, &(batch, lq, lk, heads, d)) in [
        (2, 70, 9, 3, 5),
        (2, 70, 9, 3, 8),
        (1, 131, 196, 2, 8),
        (2, 5, 49, 8, 8),
        (1, 67, 23, 2, 16),
        (1, 9, 77, 2, 24),
        (1, 66, 13, 1, 32),
        (1, 33, 77, 2, 40),
    ]
    .iter()
    .enumerate()
    {
        attention_case(case as u64, batch, lq, lk, heads, d);
    }
}

fn attention_case(case: u64, batch: usize, lq: usize, lk: usize, heads: usize, d: usize) {
    let b = CpuBackend::new();
    let q = random(&[batch, lq, heads * d], 60 + 3 * case);
    let k = random(&[batch, lk, heads * d], 61 + 3 * case);
    let v = random(&[batch, lk, heads * d], 62 + 3 * case);
    let out = b
        .to_host(
            &b.attention(&tensor(&b, &q), &tensor(&b, &k), &tensor(&b, &v), heads)
                .expect("attention"),
        )
        .expect("host");
    let w = heads * d;
    let mut reference = vec![0f32; out.len()];
    for bb in 0..batch {
        for h in 0..heads {
            for i in 0..lq {
                let scores: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..d)
                            .map(|e| {
                                q.1[(bb * lq + i) * w + h * d + e] as f64
                                    * k.1[(bb * lk + j) * w + h * d + e] as f64
                            })
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for dd in 0..d {
                    let o: f64 = (0..lk)
                        .map(|j| e[j] / z * v.1[(bb * lk + j) * w + h * d + dd] as f64)
                        .sum();
                    reference[(bb * lq + i) * w + h * d + dd] = o as f32;
                }
            }
        }
    }
    let err = rel_l2(&out, &reference);
    assert!(err < 1e-6, "case {case} (d = {d}): relative L2 {err:e}");
}

#[test]
fn malformed_and_empty_inputs_are_errors_not_panics() {
    let b = CpuBackend::new();
    let x = tensor(&b, &random(&[1, 4, 4, 3], 70));
    let empty = b.tensor(&[1, 0, 4, 3], Vec::new()).expect("empty tensor");
    let gamma = tensor(&b, &random(&[3], 71));
    let w_bad = tensor(&b, &random(&[3, 3, 2, 4], 72));
    let errors = [
        b.conv2d(&x, &w_bad, None, &Conv2dGeometry::symmetric(1, 1))
            .err(),
        b.conv2d(
            &empty,
            &tensor(&b, &random(&[3, 3, 3, 4], 73)),
            None,
            &Conv2dGeometry::symmetric(1, 1),
        )
        .err(),
        b.group_norm(&x, 2, &gamma, &gamma, 1e-5, false).err(),
        b.group_norm(&empty, 3, &gamma, &gamma, 1e-5, false).err(),
        b.upsample_nearest(&x, 0, 8).err(),
        b.upsample_nearest(&empty, 2, 2).err(),
        b.concat_channels(&x, &empty).err(),
        b.geglu(&tensor(&b, &random(&[2, 5], 74))).err(),
        b.layer_norm(
            &b.tensor(&[2, 0], Vec::new()).expect("t"),
            &gamma,
            &gamma,
            1e-5,
        )
        .err(),
        b.linear(&x, &tensor(&b, &random(&[4, 2], 75)), None).err(),
    ];
    for (i, e) in errors.iter().enumerate() {
        let message = e
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("case {i} was accepted"));
        assert!(message.contains("shape mismatch"), "case {i}: {message}");
    }
    // More frequencies than half the embedding width.
    let freqs = diffsteer::backend::embedding::sinusoidal_frequencies(8, 0.0);
    assert!(b.timestep_embedding(&[1.0], &freqs, 7, false).is_err());
    let ok = b
        .timestep_embedding(&[0.0, 2.0], &freqs, 9, false)
        .expect("odd width pads");
    let values = b.to_host(&ok).expect("host");
    // t = 0: sin 0 = 0 then cos 0 = 1, and the padding column is zero.
    assert_eq!(&values[..9], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
    assert_eq!(values[9], 2f32.sin());
}

#[test]
fn silu_with_derivative_matches_f64_and_silu_slice() {
    use diffsteer::backend::cpu::vmath;
    // Wide range, including the clamped tails of the polynomial exp.
    let x: Vec<f32> = (0..20_001).map(|i| (i as f32 - 10_000.0) * 0.012).collect();
    let mut y = x.clone();
    let mut d = vec![0f32; x.len()];
    vmath::silu_with_derivative(&mut y, &mut d);
    let mut plain = x.clone();
    vmath::silu_slice(&mut plain);
    assert_eq!(y, plain, "values must equal silu_slice bit for bit");
    for ((&x, &y), &d) in x.iter().zip(&y).zip(&d) {
        let s = 1.0 / (1.0 + (-(x as f64)).exp());
        let (want_y, want_d) = (x as f64 * s, s * (1.0 + x as f64 * (1.0 - s)));
        assert!(
            (y as f64 - want_y).abs() <= 1e-6 * want_y.abs().max(1e-3),
            "silu({x})"
        );
        // silu' crosses zero near x = −1.28, where 1 + x·(1 − σ) cancels: an
        // absolute floor at a tenth of its scale (~1).
        assert!(
            (d as f64 - want_d).abs() <= 1e-6 * want_d.abs().max(0.1),
            "silu'({x}) = {d}, want {want_d}"
        );
    }
}

#[test]
fn conv_epilogue_equals_the_separate_ops_bit_for_bit() {
    use diffsteer::backend::ConvEpilogue;
    let b = CpuBackend::new();
    // (input shape, weight shape, stride, padding, residual scale): a Winograd 3×3,
    // a strided 3×3 and a 1×1 (both im2col / GEMM), and a scale other than 1.
    type Case<'a> = (&'a [usize], &'a [usize], usize, usize, f32);
    let cases: [Case; 4] = [
        (&[2, 9, 7, 16], &[3, 3, 16, 24], 1, 1, 1.0),
        (&[3, 8, 8, 8], &[3, 3, 8, 16], 2, 1, 1.0),
        (&[2, 5, 6, 12], &[1, 1, 12, 20], 1, 0, 1.0),
        (&[1, 12, 12, 32], &[3, 3, 32, 32], 1, 1, 0.5),
    ];
    for (case, &(xs, ws, stride, pad, scale)) in cases.iter().enumerate() {
        let seed = 300 + 10 * case as u64;
        let g = Conv2dGeometry::symmetric(stride, pad);
        let x = tensor(&b, &random(xs, seed));
        let w = tensor(&b, &random(ws, seed + 1));
        let bias = tensor(&b, &random(&[ws[3]], seed + 2));
        let plain = b.conv2d(&x, &w, Some(&bias), &g).expect("conv");
        let sample_bias = tensor(&b, &random(&[xs[0], ws[3]], seed + 3));
        let residual = tensor(&b, &random(plain.shape(), seed + 4));

        let mut want = b.conv2d(&x, &w, Some(&bias), &g).expect("conv");
        b.add_channel_bias_assign(&mut want, &sample_bias)
            .expect("bias");
        b.add_assign(&mut want, &residual, scale).expect("add");
        let got = b
            .conv2d_epilogue(
                &x,
                &w,
                Some(&bias),
                &g,
                ConvEpilogue {
                    sample_bias: Some(&sample_bias),
                    residual: Some((&residual, scale)),
                },
            )
            .expect("fused");
        assert_eq!(
            b.to_host(&got).expect("host"),
            b.to_host(&want).expect("host"),
            "case {case}"
        );

        // A residual or sample bias of the wrong shape is an error, not a panic.
        let wrong = tensor(&b, &random(&[xs[0] + 1, ws[3]], seed + 5));
        for (what, bad) in [
            (
                "sample bias",
                ConvEpilogue {
                    sample_bias: Some(&wrong),
                    residual: None,
                },
            ),
            (
                "residual",
                ConvEpilogue {
                    sample_bias: None,
                    residual: Some((&sample_bias, 1.0)),
                },
            ),
        ] {
            let err = b.conv2d_epilogue(&x, &w, Some(&bias), &g, bad);
            assert!(err.is_err(), "case {case}: a wrong {what} was accepted");
        }
    }
}

/// The packed-GEMM path at sizes where it splits its work: patches of more than one
/// block (rows × K above 4 Mi floats), several row tiles with a ragged last one,
/// and a ragged last column panel; and a 1×1 product with K over 2,048. Checked
/// against the direct f64 convolution, the fused epilogue against the separate ops
/// bit for bit, and a one-thread pool against the full pool bit for bit.
#[test]
fn large_packed_convolutions_match_the_direct_one_on_any_thread_count() {
    use diffsteer::backend::ConvEpilogue;
    let b = CpuBackend::new();
    type Case = (
        (usize, usize, usize, usize),
        (usize, usize, usize),
        Conv2dGeometry,
    );
    let cases: [Case; 2] = [
        (
            (2, 63, 64, 256),
            (3, 3, 136),
            Conv2dGeometry::symmetric(2, 1),
        ),
        (
            (1, 9, 23, 2100),
            (1, 1, 40),
            Conv2dGeometry::symmetric(1, 0),
        ),
    ];
    for (i, (xd, (kh, kw, cout), g)) in cases.into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        let x = random(&[xd.0, xd.1, xd.2, xd.3], seed);
        let w = random(&[kh, kw, xd.3, cout], seed + 1);
        let bias = random(&[cout], seed + 2);
        let (xt, wt, bt) = (tensor(&b, &x), tensor(&b, &w), tensor(&b, &bias));
        let out = b.conv2d(&xt, &wt, Some(&bt), &g).expect("conv");
        let got = b.to_host(&out).expect("host");
        let reference = naive_conv(&x.1, xd, &w.1, (kh, kw, cout), &bias.1, &g);
        let err = rel_l2(&got, &reference);
        assert!(err < 1e-6, "case {i}: relative L2 {err:e}");

        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let single = one_thread.install(|| b.conv2d(&xt, &wt, Some(&bt), &g).expect("conv"));
        assert!(
            b.to_host(&single).expect("host") == got,
            "case {i}: one thread gave other bits"
        );

        let sample_bias = tensor(&b, &random(&[xd.0, cout], seed + 3));
        let residual = tensor(&b, &random(out.shape(), seed + 4));
        let mut want = out;
        b.add_channel_bias_assign(&mut want, &sample_bias)
            .expect("bias");
        b.add_assign(&mut want, &residual, 0.5).expect("add");
        let fused = b
            .conv2d_epilogue(
                &xt,
                &wt,
                Some(&bt),
                &g,
                ConvEpilogue {
                    sample_bias: Some(&sample_bias),
                    residual: Some((&residual, 0.5)),
                },
            )
            .expect("fused");
        assert!(
            b.to_host(&fused).expect("host") == b.to_host(&want).expect("host"),
            "case {i}: the fused epilogue differs from the separate ops"
        );
    }
}
