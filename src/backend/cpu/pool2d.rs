//! Average pooling (window = stride = k, PyTorch's floor mode) over NHWC data, and
//! its input gradient, parallel over output (or input) rows.

use rayon::prelude::*;

use crate::backend::shapes::PoolDims;

/// `out` (`n·oh·ow·c`, every element overwritten) ← the window means of `x`.
pub fn avg_pool(x: &[f32], out: &mut [f32], d: &PoolDims) {
    let (h, w, c, k) = (d.height, d.width, d.channels, d.kernel);
    let (oh, ow) = (d.out_height, d.out_width);
    let scale = 1.0 / (k * k) as f32;
    out.par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(row, dst)| {
            dst.fill(0.0);
            let (b, oy) = (row / oh, row % oh);
            for ky in 0..k {
                let src_row = ((b * h + oy * k + ky) * w) * c;
                for ox in 0..ow {
                    let d = &mut dst[ox * c..(ox + 1) * c];
                    for kx in 0..k {
                        let s = src_row + (ox * k + kx) * c;
                        d.iter_mut().zip(&x[s..s + c]).for_each(|(d, v)| *d += v);
                    }
                }
            }
            dst.iter_mut().for_each(|v| *v *= scale);
        });
}

/// `dx` (`n·h·w·c`, every element overwritten) ← each window's output gradient / k²
/// spread over the window; rows and columns no window covers get zero.
pub fn avg_pool_backward(dy: &[f32], dx: &mut [f32], d: &PoolDims) {
    let (h, w, c, k) = (d.height, d.width, d.channels, d.kernel);
    let (oh, ow) = (d.out_height, d.out_width);
    let scale = 1.0 / (k * k) as f32;
    dx.par_chunks_mut(w * c).enumerate().for_each(|(row, dst)| {
        dst.fill(0.0);
        let (b, iy) = (row / h, row % h);
        let oy = iy / k;
        if oy >= oh {
            return;
        }
        let src = (b * oh + oy) * ow * c;
        for ox in 0..ow {
            let g = &dy[src + ox * c..src + (ox + 1) * c];
            for kx in 0..k {
                let d = &mut dst[(ox * k + kx) * c..(ox * k + kx + 1) * c];
                d.iter_mut().zip(g).for_each(|(d, g)| *d = g * scale);
            }
        }
    });
}
