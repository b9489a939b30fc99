//! 2-D convolution on NHWC tensors as im2col + GEMM. Small products run here:
//! output rows (pixels) are cut into chunks; each rayon task gathers its chunk's
//! patches into a `[rows, kh·kw·c_in]` buffer and multiplies it by the
//! `[kh·kw·c_in, c_out]` weight matrix with the register-tiled kernel. Larger ones
//! go to the packed GEMM in `panel_conv.rs`.

use rayon::prelude::*;

use super::epilogue::Epilogue;
use super::small_gemm::small_matmul;
use crate::backend::shapes::ConvDims;
use crate::backend::Conv2dGeometry;

/// Bytes of patch buffer per task that keep the packed operand cache-friendly.
const PATCH_BUFFER_FLOATS: usize = 1 << 17;
/// Weight matrices up to this many floats (256 KiB) stay in L2 between rows.
const SMALL_WEIGHT_FLOATS: usize = 1 << 16;
/// Output rows (pixels) up to which packing the operands does not pay off.
const SMALL_ROWS: usize = 4096;

pub fn conv2d(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &ConvDims,
    g: &Conv2dGeometry,
    epilogue: Epilogue,
) -> Vec<f32> {
    let rows = s.batch * s.out_height * s.out_width;
    let k = s.kernel_h * s.kernel_w * s.in_channels;
    let cout = s.out_channels;
    let pointwise = s.kernel_h == 1
        && s.kernel_w == 1
        && g.stride == 1
        && g.pad_top + g.pad_bottom + g.pad_left + g.pad_right == 0;
    // Small products (a small batch, weights that stay in L2) go through the
    // register-tiled kernel, which needs no packing and sums every output in the
    // same order whatever its chunk, so the chunks can follow the thread count (four
    // per thread, for balance) and keep every core busy. Larger ones go to the
    // packed GEMM, which is faster once packing pays off.
    let unpacked = cout.is_multiple_of(8) && k * cout <= SMALL_WEIGHT_FLOATS && rows <= SMALL_ROWS;
    if !unpacked {
        return super::panel_conv::conv2d(x, weight, bias, s, g, epilogue, pointwise);
    }
    let mut out = crate::tensor::pool::for_overwrite(rows * cout);
    if rows == 0 || cout == 0 {
        return out;
    }
    let chunk_rows = (PATCH_BUFFER_FLOATS / k.max(1))
        .clamp(16, 512)
        .min(rows.div_ceil(4 * super::op_threads::op_threads()).max(8));
    out.par_chunks_mut(chunk_rows * cout)
        .enumerate()
        .for_each_init(Vec::new, |patches: &mut Vec<f32>, (chunk, dst)| {
            let first_row = chunk * chunk_rows;
            let n_rows = dst.len() / cout;
            let lhs: &[f32] = if pointwise {
                &x[first_row * k..(first_row + n_rows) * k]
            } else {
                patches.resize(n_rows * k, 0.0);
                gather_patches(x, s, g, first_row, n_rows, patches);
                &patches[..n_rows * k]
            };
            small_matmul(dst, cout, lhs, k, weight, cout, n_rows, k, cout);
            if let Some(b) = bias {
                for row in dst.chunks_mut(cout) {
                    for (v, b) in row.iter_mut().zip(b) {
                        *v += b;
                    }
                }
            }
            epilogue.apply(dst, first_row);
        });
    out
}

/// Writes the receptive fields of output pixels `first_row .. first_row + n_rows`
/// into `patches` as rows of `kh·kw·c_in` values (zeros where the kernel overhangs).
pub(super) fn gather_patches(
    x: &[f32],
    s: &ConvDims,
    g: &Conv2dGeometry,
    first_row: usize,
    n_rows: usize,
    patches: &mut [f32],
) {
    let cin = s.in_channels;
    let k = s.kernel_h * s.kernel_w * cin;
    let patches = &mut patches[..n_rows * k];
    patches.fill(0.0);
    for r in 0..n_rows {
        let pixel = first_row + r;
        let ox = pixel % s.out_width;
        let oy = (pixel / s.out_width) % s.out_height;
        let b = pixel / (s.out_width * s.out_height);
        let row = &mut patches[r * k..(r + 1) * k];
        for ky in 0..s.kernel_h {
            let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
            if iy < 0 || iy >= s.height as isize {
                continue;
            }
            for kx in 0..s.kernel_w {
                let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                if ix < 0 || ix >= s.width as isize {
                    continue;
                }
                let src = ((b * s.height + iy as usize) * s.width + ix as usize) * cin;
                let dst = (ky * s.kernel_w + kx) * cin;
                row[dst..dst + cin].copy_from_slice(&x[src..src + cin]);
            }
        }
    }
}
