//! Attention for small heads (d = 8, 16, 24 or 32) with AVX2 + FMA intrinsics.
//!
//! A GEMM library is a poor fit when the inner dimension of `Q·Kᵀ` (and the output
//! width of `P·V`) is only 8 to 32: its packing costs more than the product. Here one
//! task packs its head's keys transposed (`[d][keys]`, so 8 keys are one vector)
//! and its values as `[keys][d]`, then takes queries four at a time (two for
//! d > 16): scores of 16 keys for all four queries accumulate in registers, the row
//! softmax runs in place, and `P·V` accumulates each query's output in registers.
//! The score rows are one block of queries long, so nothing grows with the square
//! of the sequence.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::shared_out::SharedOut;
use crate::backend::shapes::AttentionDims;

/// Queries per task.
const QUERY_BLOCK: usize = 64;
const LANES: usize = 8;

/// Whether [`attention`] handles these shapes on this CPU.
pub fn applies(s: &AttentionDims) -> bool {
    s.head_dim.is_multiple_of(LANES)
        && (LANES..=4 * LANES).contains(&s.head_dim)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
}

#[derive(Default)]
struct Scratch {
    keys_t: Vec<f32>,
    values: Vec<f32>,
    queries: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}

/// Multi-head attention over packed `[b, l, heads·d]` inputs; the caller checked
/// [`applies`].
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: &AttentionDims) -> Vec<f32> {
    let width = s.heads * s.head_dim;
    let mut out = crate::tensor::pool::for_overwrite(s.batch * s.q_len * width);
    let blocks = s.q_len.div_ceil(QUERY_BLOCK);
    let shared = SharedOut::new(&mut out);
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let d = s.head_dim;
    let keys_padded = s.kv_len.next_multiple_of(2 * LANES);

    // With enough (image, head) pairs to share out, a task takes all query blocks of
    // one pair and packs its keys and values once; otherwise each block is a task.
    let blocks_per_task = if s.batch * s.heads >= 4 * super::op_threads::op_threads() {
        blocks
    } else {
        1
    };
    let groups = blocks.div_ceil(blocks_per_task);

    let shape = TaskShape {
        s: *s,
        scale,
        keys_padded,
        blocks,
        blocks_per_task,
        groups,
    };
    (0..s.batch * s.heads * groups)
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, task| {
            // SAFETY: `applies` checked AVX2 and FMA and that d is 8, 16, 24 or 32.
            unsafe {
                match d / LANES {
                    1 => head_task::<1, 4>(q, k, v, &shape, task, scratch, shared),
                    2 => head_task::<2, 4>(q, k, v, &shape, task, scratch, shared),
                    3 => head_task::<3, 2>(q, k, v, &shape, task, scratch, shared),
                    _ => head_task::<4, 2>(q, k, v, &shape, task, scratch, shared),
                }
            }
        });
    out
}

/// What every task of one call shares.
struct TaskShape {
    s: AttentionDims,
    scale: f32,
    keys_padded: usize,
    blocks: usize,
    blocks_per_task: usize,
    groups: usize,
}

/// One task: pack one (image, head)'s keys and values, then run its query blocks.
/// The head width `NV·8` is a constant here, so every copy is a fixed-size move.
#[target_feature(enable = "avx2,fma")]
unsafe fn head_task<const NV: usize, const R: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &TaskShape,
    task: usize,
    scratch: &mut Scratch,
    shared: SharedOut,
) {
    let s = &shape.s;
    let d = NV * LANES;
    let width = s.heads * d;
    let keys_padded = shape.keys_padded;
    let group = task % shape.groups;
    let head = (task / shape.groups) % s.heads;
    let b = task / (shape.groups * s.heads);
    let col = head * d;

    // Keys transposed and zero-padded to whole vectors; values row-major.
    scratch.keys_t.clear();
    scratch.keys_t.resize(d * keys_padded, 0.0);
    scratch.values.clear();
    scratch.values.resize(s.kv_len * d, 0.0);
    for j in 0..s.kv_len {
        let src = (b * s.kv_len + j) * width + col;
        for (c, &x) in k[src..src + d].iter().enumerate() {
            scratch.keys_t[c * keys_padded + j] = x;
        }
        scratch.values[j * d..(j + 1) * d].copy_from_slice(&v[src..src + d]);
    }
    scratch.scores.resize(4 * keys_padded, 0.0);

    let first_block = group * shape.blocks_per_task;
    for block in first_block..shape.blocks.min(first_block + shape.blocks_per_task) {
        let q0 = block * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(s.q_len - q0);
        // Queries, pre-scaled, padded to a whole number of register rows.
        let rows_padded = rows.next_multiple_of(4);
        scratch.queries.clear();
        scratch.queries.resize(rows_padded * d, 0.0);
        for r in 0..rows {
            let src = (b * s.q_len + q0 + r) * width + col;
            for (dst, &x) in scratch.queries[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&q[src..src + d])
            {
                *dst = x * shape.scale;
            }
        }
        scratch.out.resize(rows_padded * d, 0.0);
        block_rows::<NV, R>(scratch, s.kv_len, keys_padded, rows_padded);
        for r in 0..rows {
            let offset = (b * s.q_len + q0 + r) * width + col;
            debug_assert!(offset + d <= shared.len());
            // SAFETY: this task alone writes query row q0 + r, columns col .. col + d
            // of batch b, inside `out`.
            std::ptr::copy_nonoverlapping(
                scratch.out[r * d..].as_ptr(),
                shared.ptr().add(offset),
                d,
            );
        }
    }
}

/// All query rows of one task, `R` at a time; `NV` vectors per head. Every loop
/// keeps at least eight independent accumulator chains so that FMA latency, not
/// just throughput, is covered.
#[target_feature(enable = "avx2,fma")]
unsafe fn block_rows<const NV: usize, const R: usize>(
    scratch: &mut Scratch,
    kv_len: usize,
    keys_padded: usize,
    rows_padded: usize,
) {
    let d = NV * LANES;
    let keys_t = scratch.keys_t.as_ptr();
    let values = scratch.values.as_ptr();
    let queries = scratch.queries.as_ptr();
    let scores = scratch.scores.as_mut_ptr();
    let out = scratch.out.as_mut_ptr();
    debug_assert!(scratch.keys_t.len() >= d * keys_padded && keys_padded.is_multiple_of(2 * LANES));
    debug_assert!(scratch.scores.len() >= R * keys_padded);
    debug_assert!(scratch.queries.len() >= rows_padded * d && scratch.out.len() >= rows_padded * d);
    let mut r0 = 0;
    while r0 < rows_padded {
        let q = queries.add(r0 * d);
        // Scores: R queries × 16 keys per register tile.
        for jb in (0..keys_padded).step_by(2 * LANES) {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for c in 0..d {
                let k0 = _mm256_loadu_ps(keys_t.add(c * keys_padded + jb));
                let k1 = _mm256_loadu_ps(keys_t.add(c * keys_padded + jb + LANES));
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_broadcast_ss(&*q.add(r * d + c));
                    a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(scores.add(r * keys_padded + jb), a[0]);
                _mm256_storeu_ps(scores.add(r * keys_padded + jb + LANES), a[1]);
            }
        }
        // Unnormalised probabilities; each output row is divided by its sum at the end.
        let mut inv_sums = [0f32; R];
        for (r, inv) in inv_sums.iter_mut().enumerate() {
            let row = std::slice::from_raw_parts_mut(scores.add(r * keys_padded), kv_len);
            *inv = 1.0 / super::vmath::exp_shifted_sum(row, super::vmath::max(row));
        }
        // Outputs: R rows × NV vectors, with keys taken two at a time when that is
        // what it takes to have eight chains.
        let mut even = [[_mm256_setzero_ps(); NV]; R];
        let mut odd = [[_mm256_setzero_ps(); NV]; R];
        let pairs = if R * NV < 8 { kv_len / 2 } else { 0 };
        for pair in 0..pairs {
            let j = 2 * pair;
            for l in 0..NV {
                let v0 = _mm256_loadu_ps(values.add(j * d + l * LANES));
                let v1 = _mm256_loadu_ps(values.add((j + 1) * d + l * LANES));
                for r in 0..R {
                    let p0 = _mm256_broadcast_ss(&*scores.add(r * keys_padded + j));
                    let p1 = _mm256_broadcast_ss(&*scores.add(r * keys_padded + j + 1));
                    even[r][l] = _mm256_fmadd_ps(p0, v0, even[r][l]);
                    odd[r][l] = _mm256_fmadd_ps(p1, v1, odd[r][l]);
                }
            }
        }
        for j in 2 * pairs..kv_len {
            for l in 0..NV {
                let v0 = _mm256_loadu_ps(values.add(j * d + l * LANES));
                for (r, row) in even.iter_mut().enumerate() {
                    let p0 = _mm256_broadcast_ss(&*scores.add(r * keys_padded + j));
                    row[l] = _mm256_fmadd_ps(p0, v0, row[l]);
                }
            }
        }
        for (r, &inv) in inv_sums.iter().enumerate() {
            let inv = _mm256_set1_ps(inv);
            for l in 0..NV {
                let sum = _mm256_mul_ps(_mm256_add_ps(even[r][l], odd[r][l]), inv);
                _mm256_storeu_ps(out.add((r0 + r) * d + l * LANES), sum);
            }
        }
        r0 += R;
    }
}
