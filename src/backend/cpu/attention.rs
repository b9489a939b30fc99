//! Multi-head attention on the CPU. Queries are processed in blocks per (batch,
//! head) so the score matrix of one task stays small (block × lk) however long the
//! sequence; heads are read in place from the packed `[b, l, heads·d]` layout.

use rayon::prelude::*;

use super::matmul::{matmul, MatRef};
use super::shared_out::SharedOut;
use crate::backend::shapes::AttentionDims;

const QUERY_BLOCK: usize = 64;

pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: &AttentionDims) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::attention_simd::applies(s) {
        return super::attention_simd::attention(q, k, v, s);
    }
    let width = s.heads * s.head_dim;
    let mut out = crate::tensor::pool::zeroed(s.batch * s.q_len * width);
    let blocks = s.q_len.div_ceil(QUERY_BLOCK);
    let shared = SharedOut::new(&mut out);
    let scale = 1.0 / (s.head_dim as f32).sqrt();

    (0..s.batch * s.heads * blocks)
        .into_par_iter()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, block_out): &mut (Vec<f32>, Vec<f32>), task| {
                let block = task % blocks;
                let head = (task / blocks) % s.heads;
                let b = task / (blocks * s.heads);
                let q0 = block * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(s.q_len - q0);
                let col = head * s.head_dim;

                let q_base = (b * s.q_len + q0) * width + col;
                let kv_base = b * s.kv_len * width + col;
                let q_view = MatRef {
                    data: &q[q_base..],
                    rows,
                    cols: s.head_dim,
                    row_stride: width,
                    col_stride: 1,
                };
                let k_t = MatRef {
                    data: &k[kv_base..],
                    rows: s.kv_len,
                    cols: s.head_dim,
                    row_stride: width,
                    col_stride: 1,
                }
                .t();
                scores.clear();
                scores.resize(rows * s.kv_len, 0.0);
                matmul(scores, s.kv_len, q_view, k_t, scale, false);
                for row in scores.chunks_mut(s.kv_len) {
                    super::vmath::softmax(row);
                }
                let v_view = MatRef {
                    data: &v[kv_base..],
                    rows: s.kv_len,
                    cols: s.head_dim,
                    row_stride: width,
                    col_stride: 1,
                };
                block_out.resize(rows * s.head_dim, 0.0);
                matmul(
                    block_out,
                    s.head_dim,
                    MatRef::row_major(scores, rows, s.kv_len),
                    v_view,
                    1.0,
                    false,
                );
                for (r, src) in block_out[..rows * s.head_dim]
                    .chunks(s.head_dim)
                    .enumerate()
                {
                    let offset = (b * s.q_len + q0 + r) * width + col;
                    debug_assert!(offset + s.head_dim <= shared.len());
                    // SAFETY: this task alone writes row q0 + r, columns col..col + d of
                    // batch b, which lie inside `out` (q0 + r < q_len, col + d <= width).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            shared.ptr().add(offset),
                            s.head_dim,
                        )
                    };
                }
            },
        );
    out
}
