//! Elementwise and data-movement ops on the CPU, parallel over fixed-size chunks.

use rayon::prelude::*;

/// Elements per rayon task for cheap elementwise work.
pub const CHUNK: usize = 1 << 14;

/// Exact (erf-based) GELU, as PyTorch's default `gelu`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's derivative Φ(x) + x·φ(x).
#[inline]
fn gelu_derivative(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
        + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
}

/// CLIP's quick GELU factor: σ(1.702·x), as transformers computes it.
#[inline]
fn quick_gelu_gate(x: f32) -> f32 {
    1.0 / (1.0 + (-1.702 * x).exp())
}

/// `x ← gelu(x)` (exact); with `derivative`, also GELU′ at the old values.
pub fn gelu_assign(x: &mut [f32], derivative: Option<&mut [f32]>) {
    match derivative {
        None => x
            .par_chunks_mut(CHUNK)
            .for_each(|x| x.iter_mut().for_each(|v| *v = gelu(*v))),
        Some(d) => x
            .par_chunks_mut(CHUNK)
            .zip(d.par_chunks_mut(CHUNK))
            .for_each(|(x, d)| {
                for (v, d) in x.iter_mut().zip(d) {
                    *d = gelu_derivative(*v);
                    *v = gelu(*v);
                }
            }),
    }
}

/// `x ← x·σ(1.702·x)`; with `derivative`, also s + 1.702·x·s·(1 − s) at the old values.
pub fn quick_gelu_assign(x: &mut [f32], derivative: Option<&mut [f32]>) {
    match derivative {
        None => x
            .par_chunks_mut(CHUNK)
            .for_each(|x| x.iter_mut().for_each(|v| *v *= quick_gelu_gate(*v))),
        Some(d) => x
            .par_chunks_mut(CHUNK)
            .zip(d.par_chunks_mut(CHUNK))
            .for_each(|(x, d)| {
                for (v, d) in x.iter_mut().zip(d) {
                    let s = quick_gelu_gate(*v);
                    *d = s + 1.702 * *v * s * (1.0 - s);
                    *v *= s;
                }
            }),
    }
}

pub fn silu_assign(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(super::vmath::silu_slice);
}

/// `x ← silu(x)` (bit-identical to [`silu_assign`]) and `d ← silu'(x)` of the old values.
pub fn silu_with_derivative(x: &mut [f32], d: &mut [f32]) {
    x.par_chunks_mut(CHUNK)
        .zip(d.par_chunks_mut(CHUNK))
        .for_each(|(x, d)| super::vmath::silu_with_derivative(x, d));
}

/// `x ← max(x, 0)`; with `derivative`, also 1 where the old value was positive, else 0.
pub fn relu_assign(x: &mut [f32], derivative: Option<&mut [f32]>) {
    match derivative {
        None => x
            .par_chunks_mut(CHUNK)
            .for_each(|x| x.iter_mut().for_each(|v| *v = v.max(0.0))),
        Some(d) => x
            .par_chunks_mut(CHUNK)
            .zip(d.par_chunks_mut(CHUNK))
            .for_each(|(x, d)| {
                for (v, d) in x.iter_mut().zip(d) {
                    *d = if *v > 0.0 { 1.0 } else { 0.0 };
                    *v = v.max(0.0);
                }
            }),
    }
}

pub fn mul_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a *= b));
}

pub fn add_assign(x: &mut [f32], y: &[f32], scale: f32) {
    x.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(a, b)| {
            if scale == 1.0 {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            } else {
                a.iter_mut().zip(b).for_each(|(a, b)| *a = (*a + b) * scale);
            }
        });
}

/// `x[n, p, c] += bias[n, c]` with `pixels` positions per sample.
pub fn add_channel_bias_assign(x: &mut [f32], bias: &[f32], pixels: usize, c: usize) {
    let per_sample = pixels * c;
    x.par_chunks_mut(per_sample)
        .enumerate()
        .for_each(|(n, sample)| {
            let b = &bias[n * c..(n + 1) * c];
            for px in sample.chunks_mut(c) {
                px.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        });
}

pub fn geglu(x: &[f32], f: usize) -> Vec<f32> {
    let rows = x.len() / (2 * f);
    let mut out = crate::tensor::pool::for_overwrite(rows * f);
    let rows_per_task = (CHUNK / f).max(1);
    out.par_chunks_mut(rows_per_task * f)
        .zip(x.par_chunks(rows_per_task * 2 * f))
        .for_each(|(dst, src)| {
            for (d, s) in dst.chunks_mut(f).zip(src.chunks(2 * f)) {
                let (hidden, gate) = s.split_at(f);
                for i in 0..f {
                    d[i] = hidden[i] * gelu(gate[i]);
                }
            }
        });
    out
}

pub fn upsample_nearest(
    x: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let mut out = crate::tensor::pool::for_overwrite(n * out_h * out_w * c);
    // PyTorch's `nearest` with an explicit size: src = floor(dst · (in / out)) in f32.
    let sy = h as f32 / out_h as f32;
    let sx = w as f32 / out_w as f32;
    out.par_chunks_mut(out_w * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let b = row / out_h;
            let oy = row % out_h;
            let iy = ((oy as f32 * sy).floor() as usize).min(h - 1);
            for ox in 0..out_w {
                let ix = ((ox as f32 * sx).floor() as usize).min(w - 1);
                let src = ((b * h + iy) * w + ix) * c;
                dst[ox * c..(ox + 1) * c].copy_from_slice(&x[src..src + c]);
            }
        });
    out
}

pub fn concat_channels(a: &[f32], ca: usize, b: &[f32], cb: usize, pixels: usize) -> Vec<f32> {
    let c = ca + cb;
    let mut out = crate::tensor::pool::for_overwrite(pixels * c);
    let px_per_task = (CHUNK / c).max(1);
    out.par_chunks_mut(px_per_task * c)
        .enumerate()
        .for_each(|(task, dst)| {
            for (i, px) in dst.chunks_mut(c).enumerate() {
                let p = task * px_per_task + i;
                px[..ca].copy_from_slice(&a[p * ca..(p + 1) * ca]);
                px[ca..].copy_from_slice(&b[p * cb..(p + 1) * cb]);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU and quick GELU against f64 formulas, their derivatives against central
    /// differences of those formulas.
    #[test]
    fn gelu_family_values_and_derivatives() {
        let xs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.02).collect();
        let gelu64 = |x: f64| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        let quick64 = |x: f64| x / (1.0 + (-1.702 * x).exp());
        for (name, apply, f) in [
            (
                "gelu",
                gelu_assign as fn(&mut [f32], Option<&mut [f32]>),
                &gelu64 as &dyn Fn(f64) -> f64,
            ),
            ("quick_gelu", quick_gelu_assign, &quick64),
        ] {
            let mut values = xs.clone();
            let mut derivative = vec![f32::NAN; xs.len()];
            apply(&mut values, Some(&mut derivative));
            let mut plain = xs.clone();
            apply(&mut plain, None);
            assert_eq!(
                values, plain,
                "{name}: the value is the same with or without the derivative"
            );
            for ((&x, &v), &d) in xs.iter().zip(&values).zip(&derivative) {
                let x = x as f64;
                let h = 1e-4;
                let want_d = (f(x + h) - f(x - h)) / (2.0 * h);
                assert!(
                    (v as f64 - f(x)).abs() <= 1e-6 * f(x).abs().max(1.0),
                    "{name}({x}) = {v}"
                );
                assert!(
                    (d as f64 - want_d).abs() <= 1e-5,
                    "{name}'({x}) = {d}, want {want_d}"
                );
            }
        }
    }
}
