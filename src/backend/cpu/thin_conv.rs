//! Direct convolution for layers with very few input or output channels: a U-Net's
//! first and last convolutions (1 to 4 image or latent channels).
//!
//! As im2col + GEMM these are the worst shapes there are: the patch buffer is
//! `kh·kw` times the input (1.8 MiB for the digits model's last layer at batch 2)
//! for a product with one output column, which no GEMM kernel runs well. Here each
//! output pixel is computed from its receptive field in place:
//! - few outputs: one dot product per output channel over the `kh·kw·c_in` field,
//!   against that channel's weights regrouped contiguously once per call;
//! - few inputs: each input value scales a contiguous row of `c_out` weights into
//!   the pixel's outputs.
//!
//! Every pixel is computed alone, so results do not depend on the batch or the
//! chunking.

use rayon::prelude::*;

use super::epilogue::Epilogue;
use crate::backend::shapes::ConvDims;
use crate::backend::Conv2dGeometry;

/// Channel counts up to which this direct path beats im2col + GEMM.
const THIN: usize = 4;
/// Output channels per register block of the few-inputs path (four AVX2 vectors).
const BLOCK: usize = 32;
/// Output pixels per task, about.
const PIXELS_PER_TASK: usize = 64;

/// Whether [`conv2d`] handles this convolution.
pub fn applies(s: &ConvDims) -> bool {
    s.in_channels <= THIN || s.out_channels <= THIN
}

/// The convolution of `x` (NHWC) with `weight` (`[kh, kw, c_in, c_out]`); the
/// caller checked [`applies`].
pub fn conv2d(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &ConvDims,
    g: &Conv2dGeometry,
    epilogue: Epilogue,
) -> Vec<f32> {
    let cout = s.out_channels;
    let mut out = crate::tensor::pool::for_overwrite(s.rows() * cout);
    if out.is_empty() {
        return out;
    }
    let field = s.kernel_h * s.kernel_w * s.in_channels;
    // Few outputs: each output channel's weights as one contiguous `[kh·kw·c_in]` row.
    let per_output: Vec<f32> = if cout <= THIN {
        (0..cout)
            .flat_map(|co| (0..field).map(move |i| weight[i * cout + co]))
            .collect()
    } else {
        Vec::new()
    };
    let kernel = Kernel {
        x,
        weight,
        per_output: &per_output,
        bias,
        s,
        g,
    };
    // Tasks are whole output rows, so a pixel's position is counted, not divided out.
    let rows_per_task = PIXELS_PER_TASK.div_ceil(s.out_width).max(1);
    out.par_chunks_mut(rows_per_task * s.out_width * cout)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let first_row = chunk * rows_per_task;
            for (r, row) in dst.chunks_exact_mut(s.out_width * cout).enumerate() {
                kernel.row_best(first_row + r, row);
            }
            epilogue.apply(dst, first_row * s.out_width);
        });
    out
}

struct Kernel<'a> {
    x: &'a [f32],
    weight: &'a [f32],
    per_output: &'a [f32],
    bias: Option<&'a [f32]>,
    s: &'a ConvDims,
    g: &'a Conv2dGeometry,
}

/// Where one output pixel's receptive field meets the image: the kernel rows
/// `ky` and columns `kx_lo..kx_hi` that fall inside it. Within one kernel row
/// those columns are contiguous both in the NHWC input (`(kx_hi − kx_lo)·c_in`
/// values from `x_at(ky)`) and in the `[kh, kw, c_in, ..]` weights (from
/// `tap_at(ky)`).
struct Field {
    /// First input element of the field's top-left pixel (may be outside `x`).
    origin: isize,
    kx_lo: usize,
    kx_hi: usize,
    ky_lo: usize,
    ky_hi: usize,
    /// Input elements between vertically adjacent pixels.
    row_stride: isize,
    cin: usize,
    kernel_w: usize,
}

impl Field {
    /// The field's first input element in kernel row `ky` (one inside the image:
    /// `ky` in `ky_lo..ky_hi`). Summed in `isize`: the row's start may lie before the
    /// image's first element when the field hangs over its top-left corner, which
    /// wrapped around `usize` (and panicked in builds with overflow checks).
    fn x_at(&self, ky: usize) -> usize {
        let at = self.origin + ky as isize * self.row_stride + (self.kx_lo * self.cin) as isize;
        debug_assert!(at >= 0, "kernel row {ky} lies outside the image");
        at as usize
    }
    fn tap_at(&self, ky: usize) -> usize {
        (ky * self.kernel_w + self.kx_lo) * self.cin
    }
    fn len(&self) -> usize {
        (self.kx_hi - self.kx_lo) * self.cin
    }
}

impl Kernel<'_> {
    /// The receptive field of output pixel `(b, oy, ox)`.
    #[inline(always)]
    fn field(&self, b: usize, oy: usize, ox: usize) -> Field {
        let (s, g) = (self.s, self.g);
        let iy0 = (oy * g.stride) as isize - g.pad_top as isize;
        let ix0 = (ox * g.stride) as isize - g.pad_left as isize;
        let clip = |start: isize, kernel: usize, size: usize| {
            let lo = (-start).clamp(0, kernel as isize) as usize;
            let hi = (size as isize - start).clamp(lo as isize, kernel as isize) as usize;
            (lo, hi)
        };
        let (ky_lo, ky_hi) = clip(iy0, s.kernel_h, s.height);
        let (kx_lo, kx_hi) = clip(ix0, s.kernel_w, s.width);
        let row_stride = (s.width * s.in_channels) as isize;
        Field {
            origin: (b * s.height * s.width * s.in_channels) as isize
                + iy0 * row_stride
                + ix0 * s.in_channels as isize,
            kx_lo,
            kx_hi,
            ky_lo,
            ky_hi,
            row_stride,
            cin: s.in_channels,
            kernel_w: s.kernel_w,
        }
    }

    fn row_best(&self, row: usize, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { self.row_avx2(row, dst) };
        }
        self.row_scalar(row, dst)
    }

    /// Output row `row` (image `row / out_height`) in plain Rust.
    fn row_scalar(&self, row: usize, dst: &mut [f32]) {
        let s = self.s;
        let cout = s.out_channels;
        let (b, oy) = (row / s.out_height, row % s.out_height);
        let field_len = s.kernel_h * s.kernel_w * s.in_channels;
        for (ox, out) in dst.chunks_exact_mut(cout).enumerate() {
            let f = self.field(b, oy, ox);
            match self.bias {
                Some(bias) => out.copy_from_slice(bias),
                None => out.fill(0.0),
            }
            for ky in f.ky_lo..f.ky_hi {
                let input = &self.x[f.x_at(ky)..][..f.len()];
                let tap = f.tap_at(ky);
                if cout <= THIN {
                    for (co, o) in out.iter_mut().enumerate() {
                        let w = &self.per_output[co * field_len + tap..][..f.len()];
                        *o += input.iter().zip(w).map(|(v, w)| v * w).sum::<f32>();
                    }
                } else {
                    for (j, &v) in input.iter().enumerate() {
                        let w = &self.weight[(tap + j) * cout..][..cout];
                        for (o, &w) in out.iter_mut().zip(w) {
                            *o += v * w;
                        }
                    }
                }
            }
        }
    }

    /// Output row `row` with AVX2 + FMA: accumulators stay in registers across the
    /// receptive field (two vectors of partial dot products per output channel, or
    /// four vectors of 32 output channels at a time).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn row_avx2(&self, row: usize, dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let s = self.s;
        let cout = s.out_channels;
        let (b, oy) = (row / s.out_height, row % s.out_height);
        let field_len = s.kernel_h * s.kernel_w * s.in_channels;
        let bias_of = |co: usize| self.bias.map_or(0.0, |b| b[co]);
        for (ox, out) in dst.chunks_exact_mut(cout).enumerate() {
            let f = self.field(b, oy, ox);
            let len = f.len();
            if cout <= THIN {
                for (co, o) in out.iter_mut().enumerate() {
                    let weights = &self.per_output[co * field_len..(co + 1) * field_len];
                    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    let mut tail = 0f32;
                    for ky in f.ky_lo..f.ky_hi {
                        let input = &self.x[f.x_at(ky)..][..len];
                        let w = &weights[f.tap_at(ky)..][..len];
                        let (xp, wp) = (input.as_ptr(), w.as_ptr());
                        let mut c = 0;
                        // SAFETY: every load reads 8 floats at c with c + 8 <= len,
                        // inside `input` and `w`.
                        unsafe {
                            while c + 16 <= len {
                                a0 = _mm256_fmadd_ps(
                                    _mm256_loadu_ps(xp.add(c)),
                                    _mm256_loadu_ps(wp.add(c)),
                                    a0,
                                );
                                a1 = _mm256_fmadd_ps(
                                    _mm256_loadu_ps(xp.add(c + 8)),
                                    _mm256_loadu_ps(wp.add(c + 8)),
                                    a1,
                                );
                                c += 16;
                            }
                            if c + 8 <= len {
                                a0 = _mm256_fmadd_ps(
                                    _mm256_loadu_ps(xp.add(c)),
                                    _mm256_loadu_ps(wp.add(c)),
                                    a0,
                                );
                                c += 8;
                            }
                        }
                        for (v, w) in input[c..].iter().zip(&w[c..]) {
                            tail = v.mul_add(*w, tail);
                        }
                    }
                    let mut lanes = [0f32; 8];
                    // SAFETY: `lanes` holds 8 floats.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1)) };
                    let sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
                        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
                    *o = bias_of(co) + (sum + tail);
                }
                continue;
            }
            let mut c0 = 0;
            while c0 < cout {
                let width = (cout - c0).min(BLOCK);
                let vectors = width / 8;
                let mut acc = [_mm256_setzero_ps(); BLOCK / 8];
                let mut rest = [0f32; 8];
                if let Some(bias) = self.bias {
                    let bias = &bias[c0..c0 + width];
                    for (k, a) in acc.iter_mut().enumerate().take(vectors) {
                        // SAFETY: 8·k + 8 <= width = bias.len().
                        *a = unsafe { _mm256_loadu_ps(bias.as_ptr().add(8 * k)) };
                    }
                    rest[..width - 8 * vectors].copy_from_slice(&bias[8 * vectors..]);
                }
                for ky in f.ky_lo..f.ky_hi {
                    let input = &self.x[f.x_at(ky)..][..len];
                    let tap = f.tap_at(ky);
                    for (j, &v) in input.iter().enumerate() {
                        let w = &self.weight[(tap + j) * cout + c0..][..width];
                        let vv = _mm256_set1_ps(v);
                        if vectors == BLOCK / 8 {
                            for (k, a) in acc.iter_mut().enumerate() {
                                // SAFETY: 8·k + 8 <= BLOCK = width = w.len().
                                let wv = unsafe { _mm256_loadu_ps(w.as_ptr().add(8 * k)) };
                                *a = _mm256_fmadd_ps(vv, wv, *a);
                            }
                        } else {
                            for (k, a) in acc.iter_mut().enumerate().take(vectors) {
                                // SAFETY: 8·k + 8 <= 8·vectors <= width = w.len().
                                let wv = unsafe { _mm256_loadu_ps(w.as_ptr().add(8 * k)) };
                                *a = _mm256_fmadd_ps(vv, wv, *a);
                            }
                            for (r, &w) in rest.iter_mut().zip(&w[8 * vectors..]) {
                                *r = v.mul_add(w, *r);
                            }
                        }
                    }
                }
                let block = &mut out[c0..c0 + width];
                for (k, a) in acc.iter().enumerate().take(vectors) {
                    // SAFETY: 8·k + 8 <= width = block.len().
                    unsafe { _mm256_storeu_ps(block.as_mut_ptr().add(8 * k), *a) };
                }
                block[8 * vectors..].copy_from_slice(&rest[..width - 8 * vectors]);
                c0 += width;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{pseudo_random, reference, rel_l2};
    use super::*;

    /// The top-left output pixel of a padded convolution: its field's rows start
    /// before the image (origin −12). Found by fuzzing the reward classifier: with
    /// overflow checks (debug builds, fuzz builds) this panicked.
    #[test]
    fn fields_over_the_top_left_corner_start_inside_the_image() {
        let (h, w, cin) = (5, 5, 2);
        let s = ConvDims {
            batch: 1,
            height: h,
            width: w,
            in_channels: cin,
            kernel_h: 3,
            kernel_w: 3,
            out_channels: 1,
            out_height: h,
            out_width: w,
        };
        let g = Conv2dGeometry::symmetric(1, 1);
        let kernel = Kernel {
            x: &[],
            weight: &[],
            per_output: &[],
            bias: None,
            s: &s,
            g: &g,
        };
        let f = kernel.field(0, 0, 0);
        assert_eq!(f.origin, -12);
        assert_eq!((f.ky_lo, f.ky_hi, f.kx_lo, f.kx_hi), (1, 3, 1, 3));
        // Rows 0 and 1 of the image, from column 0.
        assert_eq!((f.x_at(1), f.x_at(2)), (0, 10));
        // Pixel (0, 4) of image 0: columns 3 and 4 of rows 0 and 1.
        let f = kernel.field(0, 0, 4);
        assert_eq!((f.x_at(1), f.x_at(2), f.len()), (6, 16, 4));
    }

    #[test]
    fn matches_a_direct_convolution_for_thin_inputs_and_outputs() {
        // (batch, h, w, cin, cout, kernel, stride, pads t/b/l/r)
        let cases = [
            (2, 28, 28, 32, 1, 3, 1, [1, 1, 1, 1]),
            (2, 28, 28, 1, 32, 3, 1, [1, 1, 1, 1]),
            (1, 9, 7, 4, 320, 3, 1, [1, 1, 1, 1]),
            (1, 9, 7, 320, 4, 3, 1, [1, 1, 1, 1]),
            (3, 8, 10, 37, 3, 3, 2, [0, 1, 0, 1]),
            (1, 6, 5, 2, 2, 1, 1, [0, 0, 0, 0]),
            (1, 11, 11, 3, 17, 5, 2, [2, 2, 1, 3]),
        ];
        for (case, &(batch, h, w, cin, cout, k, stride, pads)) in cases.iter().enumerate() {
            let g = Conv2dGeometry {
                stride,
                pad_top: pads[0],
                pad_bottom: pads[1],
                pad_left: pads[2],
                pad_right: pads[3],
            };
            let (oh, ow) = g.output_size(h, w, k, k).expect("fits");
            let s = ConvDims {
                batch,
                height: h,
                width: w,
                in_channels: cin,
                kernel_h: k,
                kernel_w: k,
                out_channels: cout,
                out_height: oh,
                out_width: ow,
            };
            assert!(applies(&s));
            let x = pseudo_random(batch * h * w * cin, 3 + case as u32);
            let wt = pseudo_random(k * k * cin * cout, 17 + case as u32);
            let bias = pseudo_random(cout, 29);
            let got = conv2d(&x, &wt, Some(&bias), &s, &g, Epilogue::none(&s));
            let want = reference(&x, &wt, &bias, &s, &g);
            assert_eq!(got.len(), want.len(), "case {case}");
            let rel = rel_l2(&got, &want);
            assert!(rel < 1e-6, "case {case}: relative L2 error {rel:e}");
            let without_bias = conv2d(&x, &wt, None, &s, &g, Epilogue::none(&s));
            let shifted: Vec<f32> = without_bias
                .chunks(cout)
                .flat_map(|px| px.iter().zip(&bias).map(|(v, b)| v + b))
                .collect();
            assert!(rel_l2(&shifted, &want) < 1e-6, "case {case}: without bias");
        }
    }
}
