//! The op checks' cases: every op of the [`Backend`] trait on random inputs of given
//! shapes, with the bytes or FLOPs one call moves or does, at [`Sizes::Device`]
//! (Stable Diffusion's shapes) or [`Sizes::Small`].

use super::{Op, Sizes, Work};
use crate::backend::embedding::sinusoidal_frequencies;
use crate::backend::{Activation, Backend, Conv2dGeometry, ConvEpilogue};
use crate::error::Result;
use crate::tensor::Tensor;

/// One op on inputs of given shapes.
pub(super) struct OpCase {
    pub name: String,
    pub shapes: Vec<Vec<usize>>,
    pub seed: u64,
    pub work: Work,
    pub op: Box<Op>,
}

impl OpCase {
    fn new(
        name: impl Into<String>,
        shapes: &[&[usize]],
        seed: u64,
        work: Work,
        op: impl Fn(&dyn Backend, &mut Vec<Tensor>) -> Result<Option<Tensor>> + 'static,
    ) -> Self {
        OpCase {
            name: name.into(),
            shapes: shapes.iter().map(|s| s.to_vec()).collect(),
            seed,
            work,
            op: Box::new(op),
        }
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A convolution with bias.
fn conv(name: &str, x: [usize; 4], w: [usize; 4], g: Conv2dGeometry) -> OpCase {
    let (oh, ow) = g.output_size(x[1], x[2], w[0], w[1]).unwrap_or((0, 0));
    let flops = 2 * x[0] * oh * ow * w[0] * w[1] * w[2] * w[3];
    OpCase::new(
        name,
        &[&x, &w, &[w[3]]],
        100,
        Work::Flops(flops as f64),
        move |b, t| b.conv2d(&t[0], &t[1], Some(&t[2]), &g).map(Some),
    )
}

/// A ResNet block's second convolution (3×3, stride 1, `c → c_out`): time-embedding
/// bias and skip connection applied as the output is written.
fn conv_epilogue(name: &str, x: [usize; 4], c_out: usize) -> OpCase {
    let [n, h, w, c] = x;
    OpCase::new(
        name,
        &[
            &x,
            &[3, 3, c, c_out],
            &[c_out],
            &[n, c_out],
            &[n, h, w, c_out],
        ],
        150,
        Work::Flops((2 * n * h * w * 9 * c * c_out) as f64),
        |b, t| {
            let epilogue = ConvEpilogue {
                sample_bias: Some(&t[3]),
                residual: Some((&t[4], 0.7)),
            };
            b.conv2d_epilogue(
                &t[0],
                &t[1],
                Some(&t[2]),
                &Conv2dGeometry::symmetric(1, 1),
                epilogue,
            )
            .map(Some)
        },
    )
}

fn linear(name: &str, x: [usize; 3], n: usize) -> OpCase {
    let k = x[2];
    OpCase::new(
        name,
        &[&x, &[k, n], &[n]],
        200,
        Work::Flops((2 * x[0] * x[1] * k * n) as f64),
        |b, t| b.linear(&t[0], &t[1], Some(&t[2])).map(Some),
    )
}

fn group_norm(name: &str, x: [usize; 4], groups: usize) -> OpCase {
    let c = x[3];
    OpCase::new(
        name,
        &[&x, &[c], &[c]],
        300,
        Work::Bytes((2 * 4 * numel(&x)) as f64),
        move |b, t| {
            b.group_norm(&t[0], groups, &t[1], &t[2], 1e-5, true)
                .map(Some)
        },
    )
}

fn layer_norm(name: &str, x: [usize; 3]) -> OpCase {
    let c = x[2];
    OpCase::new(
        name,
        &[&x, &[c], &[c]],
        400,
        Work::Bytes((2 * 4 * numel(&x)) as f64),
        |b, t| b.layer_norm(&t[0], &t[1], &t[2], 1e-5).map(Some),
    )
}

/// Batch-2 attention with `heads` heads of dimension `d`, `lq` queries, `lk` keys.
fn attention(heads: usize, d: usize, lq: usize, lk: usize) -> OpCase {
    let w = heads * d;
    OpCase::new(
        format!("attention d{d} {lq}×{lk}"),
        &[&[2, lq, w], &[2, lk, w], &[2, lk, w]],
        500 + d as u64,
        Work::Flops((4 * 2 * heads * lq * lk * d) as f64),
        move |b, t| b.attention(&t[0], &t[1], &t[2], heads).map(Some),
    )
}

fn geglu(name: &str, x: [usize; 3]) -> OpCase {
    let f = x[2] / 2;
    OpCase::new(
        name,
        &[&x],
        600,
        Work::Bytes((4 * 3 * x[0] * x[1] * f) as f64),
        |b, t| b.geglu(&t[0]).map(Some),
    )
}

/// SiLU, scaled add and per-sample channel bias, in place on NHWC `x`.
fn elementwise(x: [usize; 4]) -> [OpCase; 3] {
    let shapes: [&[usize]; 3] = [&x, &x, &[x[0], x[3]]];
    let bytes = (4 * numel(&x)) as f64;
    [
        OpCase::new(
            "silu (in place)",
            &shapes,
            700,
            Work::Bytes(bytes * 2.0),
            |b, t| {
                b.silu_assign(&mut t[0])?;
                Ok(None)
            },
        ),
        OpCase::new(
            "add ×0.7 (in place)",
            &shapes,
            700,
            Work::Bytes(bytes * 3.0),
            |b, t| {
                let (x, rest) = t.split_at_mut(1);
                b.add_assign(&mut x[0], &rest[0], 0.7)?;
                Ok(None)
            },
        ),
        OpCase::new(
            "channel bias (in place)",
            &shapes,
            700,
            Work::Bytes(bytes * 2.0),
            |b, t| {
                let (x, rest) = t.split_at_mut(1);
                b.add_channel_bias_assign(&mut x[0], &rest[1])?;
                Ok(None)
            },
        ),
    ]
}

fn upsample(name: &str, x: [usize; 4], out_h: usize, out_w: usize) -> OpCase {
    OpCase::new(
        name,
        &[&x],
        800,
        Work::Bytes((4 * numel(&x) * 5) as f64),
        move |b, t| b.upsample_nearest(&t[0], out_h, out_w).map(Some),
    )
}

/// `count` timesteps spread over 999…0, embedded in `dim` features.
fn timestep_embedding(count: usize, dim: usize) -> OpCase {
    let timesteps: Vec<f32> = (0..count).map(|i| 999.0 - 15.75 * i as f32).collect();
    let frequencies = sinusoidal_frequencies(dim, 1.0);
    OpCase::new(
        format!("timestep embedding {count}×{dim}"),
        &[&[1]],
        940,
        Work::Bytes((4 * count * dim) as f64),
        move |b, _| {
            b.timestep_embedding(&timesteps, &frequencies, dim, true)
                .map(Some)
        },
    )
}

/// The reward classifier's activations with their derivatives, and the product
/// its backward pass takes with them.
fn activations(x: [usize; 4]) -> [OpCase; 4] {
    let shapes: [&[usize]; 2] = [&x, &x];
    let bytes = (4 * numel(&x)) as f64;
    let derivative = |name: &str, kind: Activation| {
        OpCase::new(
            format!("{name} derivative"),
            &shapes,
            950,
            Work::Bytes(bytes * 3.0),
            move |b, t| b.activation_assign(&mut t[0], kind, true),
        )
    };
    [
        derivative("silu", Activation::Silu),
        derivative("relu", Activation::Relu),
        OpCase::new(
            "relu (in place)",
            &shapes,
            950,
            Work::Bytes(bytes * 2.0),
            |b, t| {
                b.activation_assign(&mut t[0], Activation::Relu, false)?;
                Ok(None)
            },
        ),
        OpCase::new(
            "mul (in place)",
            &shapes,
            950,
            Work::Bytes(bytes * 3.0),
            |b, t| {
                let (x, rest) = t.split_at_mut(1);
                b.mul_assign(&mut x[0], &rest[0])?;
                Ok(None)
            },
        ),
    ]
}

/// Average pooling by 2 of NHWC `x` and its backward (odd sides drop a row or column).
fn avg_pool(x: [usize; 4]) -> [OpCase; 2] {
    let [n, h, w, c] = x;
    let (oh, ow) = (h / 2, w / 2);
    let bytes = (4 * n * c * (h * w + oh * ow)) as f64;
    [
        OpCase::new(
            format!("avg_pool 2 ({h}×{w} → {oh}×{ow})"),
            &[&x],
            960,
            Work::Bytes(bytes),
            |b, t| b.avg_pool(&t[0], 2).map(Some),
        ),
        OpCase::new(
            "avg_pool backward",
            &[&[n, oh, ow, c]],
            970,
            Work::Bytes(bytes),
            move |b, t| b.avg_pool_backward(&t[0], 2, h, w).map(Some),
        ),
    ]
}

/// A 3×3 stride-2 convolution's patch gradients over an NHWC `input`.
fn col2im(input: [usize; 4]) -> OpCase {
    let [n, h, w, c] = input;
    let g = Conv2dGeometry::symmetric(2, 1);
    let (oh, ow) = g.output_size(h, w, 3, 3).unwrap_or((0, 0));
    OpCase::new(
        "col2im 3×3 s2 p1",
        &[&[n * oh * ow, 9 * c]],
        980,
        Work::Bytes((4 * n * (oh * ow * 9 * c + h * w * c)) as f64),
        move |b, t| b.col2im(&t[0], input, (3, 3), &g).map(Some),
    )
}

fn concat(a: [usize; 4], c_b: usize) -> OpCase {
    let [n, h, w, c_a] = a;
    OpCase::new(
        format!("concat {c_a}+{c_b}"),
        &[&a, &[n, h, w, c_b]],
        900,
        Work::Bytes((2 * 4 * n * h * w * (c_a + c_b)) as f64),
        |b, t| b.concat_channels(&t[0], &t[1]).map(Some),
    )
}

/// The ops the CLIP text encoder and the VAE add: causal attention over `tokens`
/// tokens with `heads` heads of `d` (a batch of 2 prompts), the GELU family with and
/// without derivatives on `[2, tokens, mlp]`, and the VAE mid block's single head of
/// `vae_d` over `vae_tokens` positions.
fn text_and_vae(
    (tokens, heads, d): (usize, usize, usize),
    mlp: usize,
    (vae_tokens, vae_d): (usize, usize),
) -> Vec<OpCase> {
    let w = heads * d;
    let mut cases = vec![OpCase::new(
        format!("causal attention d{d} {tokens}×{tokens}"),
        &[&[2, tokens, w], &[2, tokens, w], &[2, tokens, w]],
        1100,
        Work::Flops((2 * 2 * heads * tokens * (tokens + 1) * d) as f64),
        move |b, t| b.causal_attention(&t[0], &t[1], &t[2], heads).map(Some),
    )];
    let x = [2, tokens, mlp];
    let bytes = (4 * numel(&x)) as f64;
    for (name, act) in [
        ("gelu", Activation::Gelu),
        ("quick gelu", Activation::QuickGelu),
    ] {
        cases.push(OpCase::new(
            format!("{name} (in place)"),
            &[&x],
            1110,
            Work::Bytes(bytes * 2.0),
            move |b, t| {
                b.activation_assign(&mut t[0], act, false)?;
                Ok(None)
            },
        ));
        cases.push(OpCase::new(
            format!("{name} derivative"),
            &[&x],
            1110,
            Work::Bytes(bytes * 3.0),
            move |b, t| b.activation_assign(&mut t[0], act, true),
        ));
    }
    let v: &[usize] = &[1, vae_tokens, vae_d];
    cases.push(OpCase::new(
        format!("attention d{vae_d} {vae_tokens}×{vae_tokens} (VAE)"),
        &[v, v, v],
        1120,
        Work::Flops((4 * vae_tokens * vae_tokens * vae_d) as f64),
        |b, t| b.attention(&t[0], &t[1], &t[2], 1).map(Some),
    ));
    cases
}

/// Every op of the [`Backend`] trait (conv paths, attention head dims and the
/// reward classifier's forward and backward ops included), at `sizes`.
pub(super) fn op_cases(sizes: Sizes) -> Vec<OpCase> {
    let s = Conv2dGeometry::symmetric;
    // diffusers' Downsample2D with padding=0 pads only bottom and right.
    let pad_bottom_right = Conv2dGeometry {
        stride: 2,
        pad_top: 0,
        pad_bottom: 1,
        pad_left: 0,
        pad_right: 1,
    };
    let mut cases = Vec::new();
    match sizes {
        Sizes::Device => {
            cases.extend([
                conv(
                    "conv 3x3 s1 28²·32→64",
                    [16, 28, 28, 32],
                    [3, 3, 32, 64],
                    s(1, 1),
                ),
                conv(
                    "conv 3x3 s2 64²·320",
                    [2, 64, 64, 320],
                    [3, 3, 320, 320],
                    s(2, 1),
                ),
                conv(
                    "conv 3x3 s2 pad(0,1,0,1)",
                    [2, 15, 17, 8],
                    [3, 3, 8, 16],
                    pad_bottom_right,
                ),
                conv(
                    "conv 1x1 32²·640→320",
                    [2, 32, 32, 640],
                    [1, 1, 640, 320],
                    s(1, 0),
                ),
                conv(
                    "conv 3x3 s1 64²·4→320 (cin 4)",
                    [2, 64, 64, 4],
                    [3, 3, 4, 320],
                    s(1, 1),
                ),
                conv_epilogue("conv 3x3 32²·640 + epilogue", [2, 32, 32, 640], 640),
                linear("linear 8192×320→2560", [2, 4096, 320], 2560),
                group_norm("group_norm 32g + silu", [2, 64, 64, 320], 32),
                layer_norm("layer_norm 320", [2, 4096, 320]),
            ]);
            for (heads, d, lq, lk) in [
                (8, 8, 196, 196),
                (8, 40, 1024, 1024),
                (8, 40, 1024, 77),
                (8, 80, 256, 256),
                (8, 160, 64, 77),
                (4, 64, 300, 300),
                (8, 80, 4096, 4096),
            ] {
                cases.push(attention(heads, d, lq, lk));
            }
            cases.push(geglu("geglu 2560→1280", [2, 4096, 2560]));
            cases.extend(elementwise([2, 64, 64, 320]));
            cases.extend([
                upsample("upsample 64²→128²", [2, 64, 64, 320], 128, 128),
                upsample("upsample 64²→127×129", [2, 64, 64, 320], 127, 129),
                timestep_embedding(64, 320),
            ]);
            cases.extend(activations([32, 28, 28, 32]));
            cases.extend(avg_pool([32, 29, 27, 32]));
            cases.extend([col2im([32, 14, 14, 32]), concat([2, 32, 32, 320], 640)]);
            // CLIP ViT-L/14's shape; a 32×32 latent (256² images) keeps the plain
            // 16-bit VAE reference quick.
            cases.extend(text_and_vae((77, 12, 64), 3072, (1024, 512)));
        }
        Sizes::Small => {
            cases.extend([
                conv("conv 3x3 s1 9²·8→16", [2, 9, 9, 8], [3, 3, 8, 16], s(1, 1)),
                conv("conv 3x3 s2 10²·8", [2, 10, 10, 8], [3, 3, 8, 8], s(2, 1)),
                conv(
                    "conv 3x3 s2 pad(0,1,0,1)",
                    [2, 15, 17, 8],
                    [3, 3, 8, 16],
                    pad_bottom_right,
                ),
                conv("conv 1x1 6²·16→8", [2, 6, 6, 16], [1, 1, 16, 8], s(1, 0)),
                conv(
                    "conv 3x3 s1 8²·4→16 (cin 4)",
                    [2, 8, 8, 4],
                    [3, 3, 4, 16],
                    s(1, 1),
                ),
                conv_epilogue("conv 3x3 8²·16 + epilogue", [2, 8, 8, 16], 16),
                linear("linear 64×32→48", [2, 32, 32], 48),
                group_norm("group_norm 4g + silu", [2, 8, 8, 16], 4),
                layer_norm("layer_norm 32", [2, 16, 32]),
            ]);
            for (heads, d, lq, lk) in [(2, 8, 20, 20), (2, 40, 17, 7), (1, 64, 9, 33)] {
                cases.push(attention(heads, d, lq, lk));
            }
            cases.push(geglu("geglu 64→32", [2, 8, 64]));
            cases.extend(elementwise([2, 6, 6, 16]));
            cases.extend([
                upsample("upsample 6²→12²", [2, 6, 6, 8], 12, 12),
                upsample("upsample 6²→11×13", [2, 6, 6, 8], 11, 13),
                timestep_embedding(8, 32),
            ]);
            cases.extend(activations([4, 7, 7, 8]));
            cases.extend(avg_pool([4, 9, 7, 8]));
            cases.extend([col2im([4, 6, 6, 8]), concat([2, 4, 4, 8], 16)]);
            cases.extend(text_and_vae((9, 2, 8), 32, (16, 24)));
        }
    }
    cases
}
