//! The input gradient of a convolution from its patch gradients (the transpose of
//! im2col): every input pixel sums the entries of the patches that cover it.
//! Parallel over input rows, so no two tasks write to the same place.

use rayon::prelude::*;

use crate::backend::shapes::ConvDims;
use crate::backend::Conv2dGeometry;

/// `dx` (`n·h·w·c_in`, every element overwritten) from `dpatches`
/// (`[n·oh·ow, kh·kw·c_in]`, rows in im2col order).
pub fn col2im(dpatches: &[f32], dx: &mut [f32], d: &ConvDims, g: &Conv2dGeometry) {
    let (h, w, cin) = (d.height, d.width, d.in_channels);
    let (oh, ow, kh, kw) = (d.out_height, d.out_width, d.kernel_h, d.kernel_w);
    let patch = d.patch_len();
    let s = g.stride;
    // The output index o whose window puts tap `t` on input index i: o·s + t − p = i.
    let source = |i: usize, t: usize, p: usize, limit: usize| {
        let q = (i + p).checked_sub(t)?;
        (q % s == 0 && q / s < limit).then_some(q / s)
    };
    dx.par_chunks_mut(w * cin)
        .enumerate()
        .for_each(|(row, dst)| {
            dst.fill(0.0);
            let (b, iy) = (row / h, row % h);
            for ky in 0..kh {
                let Some(oy) = source(iy, ky, g.pad_top, oh) else {
                    continue;
                };
                let patch_row = (b * oh + oy) * ow;
                for (ix, d) in dst.chunks_exact_mut(cin).enumerate() {
                    for kx in 0..kw {
                        let Some(ox) = source(ix, kx, g.pad_left, ow) else {
                            continue;
                        };
                        let at = (patch_row + ox) * patch + (ky * kw + kx) * cin;
                        d.iter_mut()
                            .zip(&dpatches[at..at + cin])
                            .for_each(|(d, g)| *d += g);
                    }
                }
            }
        });
}
