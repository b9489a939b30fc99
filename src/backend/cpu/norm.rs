//! Group and layer normalisation. Statistics are accumulated in f64 so that large
//! feature maps lose no precision; the normalisation itself is one fused
//! multiply-add per element (`x·a_c + b_c`, with a per-sample, per-channel `a`, `b`).

use rayon::prelude::*;

/// Pixels per statistics task: enough work per task, bounded partial-sum memory.
const STAT_CHUNK_PIXELS: usize = 1024;

#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    apply_silu: bool,
) -> Vec<f32> {
    let pixels = h * w;
    let per_group = c / groups;
    let mut out = crate::tensor::pool::for_overwrite(x.len());
    if n >= super::op_threads::op_threads() {
        // One task per sample: its statistics and its normalisation back to back,
        // while the sample is still in this core's cache, and one parallel region
        // per call instead of two. The sums are combined in the same chunk order as
        // below, so both paths give the same bits.
        out.par_chunks_mut(pixels * c)
            .zip(x.par_chunks(pixels * c))
            .for_each(|(dst, src)| {
                let mut sums = vec![0f64; 2 * c];
                for chunk in src.chunks(STAT_CHUNK_PIXELS * c) {
                    for (s, p) in sums.iter_mut().zip(super::vmath::channel_sums(chunk, c)) {
                        *s += p;
                    }
                }
                let mut affine = vec![0f32; 2 * c];
                sample_affine(&sums, &mut affine, (pixels, per_group), gamma, beta, eps);
                let (a, b) = affine.split_at(c);
                super::vmath::affine_rows(dst, src, a, b, apply_silu);
            });
        return out;
    }

    let chunks_per_sample = pixels.div_ceil(STAT_CHUNK_PIXELS).max(1);
    // Per (sample, chunk): per-channel sum and sum of squares.
    let partials: Vec<Vec<f64>> = (0..n * chunks_per_sample)
        .into_par_iter()
        .map(|task| {
            let sample = task / chunks_per_sample;
            let chunk = task % chunks_per_sample;
            let start = chunk * STAT_CHUNK_PIXELS;
            let end = ((chunk + 1) * STAT_CHUNK_PIXELS).min(pixels);
            let base = sample * pixels * c;
            super::vmath::channel_sums(&x[base + start * c..base + end * c], c)
        })
        .collect();

    // Per sample: the per-channel scale and shift.
    let mut affine = vec![0f32; n * 2 * c];
    for sample in 0..n {
        let mut sums = vec![0f64; 2 * c];
        for part in &partials[sample * chunks_per_sample..(sample + 1) * chunks_per_sample] {
            for (s, p) in sums.iter_mut().zip(part) {
                *s += p;
            }
        }
        sample_affine(
            &sums,
            &mut affine[sample * 2 * c..(sample + 1) * 2 * c],
            (pixels, per_group),
            gamma,
            beta,
            eps,
        );
    }

    out.par_chunks_mut(STAT_CHUNK_PIXELS * c)
        .zip(x.par_chunks(STAT_CHUNK_PIXELS * c))
        .enumerate()
        .for_each(|(chunk, (dst, src))| {
            // Runs of pixels within one sample share the affine.
            let first = chunk * STAT_CHUNK_PIXELS;
            let count = dst.len() / c;
            let mut p = 0;
            while p < count {
                let sample = (first + p) / pixels;
                let run = ((sample + 1) * pixels - (first + p)).min(count - p);
                let (a, b) = affine[sample * 2 * c..(sample + 1) * 2 * c].split_at(c);
                super::vmath::affine_rows(
                    &mut dst[p * c..(p + run) * c],
                    &src[p * c..(p + run) * c],
                    a,
                    b,
                    apply_silu,
                );
                p += run;
            }
        });
    out
}

/// One sample's per-channel scale and shift (`[a; b]`, `y = x·a + b`) from its
/// per-channel sums and sums of squares (`[sums; squares]`, f64).
fn sample_affine(
    sums: &[f64],
    affine: &mut [f32],
    (pixels, per_group): (usize, usize),
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let c = gamma.len();
    let count = (pixels * per_group) as f64;
    for g in 0..c / per_group {
        let chans = g * per_group..(g + 1) * per_group;
        let sum: f64 = sums[chans.clone()].iter().sum();
        let sum_sq: f64 = sums[c + chans.start..c + chans.end].iter().sum();
        let mean = sum / count;
        let var = (sum_sq / count - mean * mean).max(0.0);
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for ch in chans {
            let a = gamma[ch] as f64 * rstd;
            affine[ch] = a as f32;
            affine[c + ch] = (beta[ch] as f64 - mean * a) as f32;
        }
    }
}

pub fn layer_norm(x: &[f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let mut out = crate::tensor::pool::for_overwrite(x.len());
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .for_each(|(d, s)| {
            let mean = s.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for i in 0..cols {
                d[i] = (((s[i] as f64 - mean) * rstd) as f32) * gamma[i] + beta[i];
            }
        });
    out
}
