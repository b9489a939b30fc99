//! Helpers shared by the CPU backend's unit tests.

use crate::backend::shapes::ConvDims;
use crate::backend::Conv2dGeometry;

/// Direct convolution in f64.
pub fn reference(x: &[f32], w: &[f32], bias: &[f32], s: &ConvDims, g: &Conv2dGeometry) -> Vec<f64> {
    let (cin, cout) = (s.in_channels, s.out_channels);
    let mut out = vec![0f64; s.rows() * cout];
    for p in 0..s.rows() {
        let ox = p % s.out_width;
        let oy = (p / s.out_width) % s.out_height;
        let b = p / (s.out_width * s.out_height);
        for co in 0..cout {
            let mut acc = bias[co] as f64;
            for ky in 0..s.kernel_h {
                for kx in 0..s.kernel_w {
                    let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                    let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                    if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
                        continue;
                    }
                    let xi = ((b * s.height + iy as usize) * s.width + ix as usize) * cin;
                    for ci in 0..cin {
                        acc += x[xi + ci] as f64
                            * w[((ky * s.kernel_w + kx) * cin + ci) * cout + co] as f64;
                    }
                }
            }
            out[p * cout + co] = acc;
        }
    }
    out
}

/// Deterministic values in [-1, 1).
pub fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_left(13) ^ seed;
            (h % 20_011) as f32 / 10_005.5 - 1.0
        })
        .collect()
}

/// ‖got − want‖ / ‖want‖.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "rel_l2: lengths differ");
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|b| b * b).sum();
    (err / norm).sqrt()
}
