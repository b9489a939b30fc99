//! im2col + packed GEMM for the products that are too large for `conv.rs`'s
//! register-tiled kernel: convolutions and linears with big weights or many rows
//! (Stable Diffusion's layers, the digits model at large batches).
//!
//! Cutting the output into row chunks small enough that one chunk's patches stay in
//! cache, as `conv.rs` does, leaves 16 to 50 rows per chunk for SD's 640- to
//! 2560-channel convolutions (K = 9·c_in), and every chunk then repacks the whole
//! weight matrix (up to 110 MiB) for those few rows: the product ran at memory
//! speed, a fifth of the GEMM ceiling. Here the rows are taken in blocks of up to
//! [`BLOCK_FLOATS`] of patches, gathered once by all threads, and each block's
//! product is cut into tiles of [`TILE_ROWS`] rows × [`PANEL_COLS`] output channels,
//! one task each, so a packed weight panel serves hundreds of rows and a small batch
//! (SD's 8×8 and 4×4 levels) still has a task for every thread.
//!
//! Every output element is one `gemm` call's sum over the whole K in the order the
//! `gemm` crate's K blocking fixes (it depends on K and the caches only), and blocks
//! and tiles follow from the shapes alone, so results do not depend on the thread
//! count, nor on the tiling: the digits model's images are the same bytes as with
//! the chunks this replaced.

use rayon::prelude::*;

use super::conv::gather_patches;
use super::epilogue::Epilogue;
use super::matmul::{matmul_tile, MatRef};
use super::shared_out::SharedOut;
use crate::backend::shapes::ConvDims;
use crate::backend::Conv2dGeometry;

/// Patch floats one block may hold (16 MiB), which bounds the extra memory.
const BLOCK_FLOATS: usize = 1 << 22;
/// Rows per tile: enough that packing a weight panel is a small share of its use.
const TILE_ROWS: usize = 192;
/// Output channels per tile (a multiple of the AVX-512 register tile's width).
const PANEL_COLS: usize = 128;
/// Patch rows one gathering task fills.
const GATHER_ROWS: usize = 32;

/// The convolution `conv::conv2d` describes (`pointwise`: a 1×1, stride-1, unpadded
/// one, whose input rows are its patches), bias and epilogue included.
pub fn conv2d(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &ConvDims,
    g: &Conv2dGeometry,
    epilogue: Epilogue,
    pointwise: bool,
) -> Vec<f32> {
    let rows = s.batch * s.out_height * s.out_width;
    let k = s.kernel_h * s.kernel_w * s.in_channels;
    let cout = s.out_channels;
    let mut out = crate::tensor::pool::for_overwrite(rows * cout);
    if rows == 0 || cout == 0 {
        return out;
    }
    let w = MatRef::row_major(weight, k, cout);
    let max_block = if pointwise {
        rows
    } else {
        (BLOCK_FLOATS / k.max(1)).max(TILE_ROWS)
    };
    let blocks = rows.div_ceil(max_block);
    let block_rows = rows.div_ceil(blocks);
    let mut patches = Vec::new();
    for first in (0..rows).step_by(block_rows) {
        let n_rows = block_rows.min(rows - first);
        let lhs: &[f32] = if pointwise {
            &x[first * k..(first + n_rows) * k]
        } else {
            patches.resize(n_rows * k, 0.0);
            patches[..n_rows * k]
                .par_chunks_mut(GATHER_ROWS * k)
                .enumerate()
                .for_each(|(i, chunk)| {
                    gather_patches(x, s, g, first + i * GATHER_ROWS, chunk.len() / k, chunk)
                });
            &patches[..n_rows * k]
        };
        let dst = &mut out[first * cout..(first + n_rows) * cout];
        if let Some(b) = bias {
            dst.par_chunks_mut(GATHER_ROWS * cout).for_each(|rows| {
                for row in rows.chunks_mut(cout) {
                    row.copy_from_slice(b);
                }
            });
        }
        let shared = SharedOut::new(dst);
        let panels = cout.div_ceil(PANEL_COLS);
        let tiles = n_rows.div_ceil(TILE_ROWS) * panels;
        (0..tiles).into_par_iter().for_each(|tile| {
            let r0 = tile / panels * TILE_ROWS;
            let c0 = tile % panels * PANEL_COLS;
            let lhs = MatRef::row_major(&lhs[r0 * k..], TILE_ROWS.min(n_rows - r0), k);
            let rhs = MatRef {
                data: &w.data[c0..],
                rows: k,
                cols: PANEL_COLS.min(cout - c0),
                row_stride: cout,
                col_stride: 1,
            };
            // SAFETY: tiles are disjoint row × column ranges of `dst`, one task each.
            unsafe { matmul_tile(shared, r0 * cout + c0, cout, lhs, rhs, 1.0, bias.is_some()) };
        });
        if !epilogue.is_empty() {
            dst.par_chunks_mut(GATHER_ROWS * cout)
                .enumerate()
                .for_each(|(i, rows)| epilogue.apply(rows, first + i * GATHER_ROWS));
        }
    }
    out
}
