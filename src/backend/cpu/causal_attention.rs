//! Self-attention under a causal mask on the CPU (CLIP's text encoder: 77 tokens,
//! head dimension 64): query `i` attends to keys `0..=i`. One task per (image, head,
//! block of query rows); each row's scores over its visible keys are computed,
//! soft-maxed and applied to the values directly, since at these lengths a score
//! row is a few hundred bytes and no blocking or GEMM would pay off.

use rayon::prelude::*;

use super::shared_out::SharedOut;
use crate::backend::shapes::AttentionDims;

/// Query rows per task: 77 tokens × 12 heads gives 24 tasks per image.
const ROWS_PER_TASK: usize = 40;

pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], s: &AttentionDims) -> Vec<f32> {
    let width = s.heads * s.head_dim;
    let d = s.head_dim;
    let len = s.q_len;
    let mut out = crate::tensor::pool::zeroed(s.batch * len * width);
    let blocks = len.div_ceil(ROWS_PER_TASK);
    let shared = SharedOut::new(&mut out);
    let scale = 1.0 / (d as f32).sqrt();
    (0..s.batch * s.heads * blocks)
        .into_par_iter()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, acc): &mut (Vec<f32>, Vec<f32>), task| {
                let block = task % blocks;
                let head = (task / blocks) % s.heads;
                let b = task / (blocks * s.heads);
                let col = head * d;
                let row_of = |i: usize| (b * len + i) * width + col;
                for i in block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(len) {
                    let qi = &q[row_of(i)..row_of(i) + d];
                    scores.clear();
                    scores.extend((0..=i).map(|j| {
                        let kj = &k[row_of(j)..row_of(j) + d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                    }));
                    super::vmath::softmax(scores);
                    acc.clear();
                    acc.resize(d, 0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        let vj = &v[row_of(j)..row_of(j) + d];
                        acc.iter_mut().zip(vj).for_each(|(a, x)| *a += p * x);
                    }
                    let offset = row_of(i);
                    debug_assert!(offset + d <= shared.len());
                    // SAFETY: this task alone writes row i, columns col..col + d of
                    // image b (the tasks' (image, head, row block) never overlap).
                    unsafe {
                        std::ptr::copy_nonoverlapping(acc.as_ptr(), shared.ptr().add(offset), d)
                    };
                }
            },
        );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 softmax over each row's visible keys.
    #[test]
    fn each_query_sees_only_its_prefix() {
        let (batch, len, heads, d) = (2, 45, 3, 8);
        let w = heads * d;
        let n = batch * len * w;
        let gen = |seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
                .collect()
        };
        let (q, k, v) = (gen(1), gen(7), gen(13));
        let dims = AttentionDims {
            batch,
            q_len: len,
            kv_len: len,
            heads,
            head_dim: d,
        };
        let out = causal_attention(&q, &k, &v, &dims);
        let mut worst = 0f64;
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..len {
                    let at =
                        |t: &[f32], j: usize, e: usize| t[(b * len + j) * w + h * d + e] as f64;
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..d).map(|e| at(&q, i, e) * at(&k, j, e)).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for e in 0..d {
                        let want: f64 = scores
                            .iter()
                            .enumerate()
                            .map(|(j, s)| (s - m).exp() / z * at(&v, j, e))
                            .sum();
                        let got = out[(b * len + i) * w + h * d + e] as f64;
                        worst = worst.max((got - want).abs());
                    }
                }
            }
        }
        assert!(worst < 1e-5, "worst absolute error {worst:e}");
    }
}
