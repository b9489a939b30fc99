//! A convolution's epilogue on the CPU: the per-sample bias and the scaled residual
//! of [`crate::backend::ConvEpilogue`], applied to output pixels while they are
//! still in cache. The arithmetic is that of `add_channel_bias_assign` followed by
//! `add_assign`, so fused and unfused results are the same bits.

use crate::backend::shapes::{self, ConvDims};
use crate::backend::ConvEpilogue;
use crate::error::Result;

#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    sample_bias: Option<&'a [f32]>,
    residual: Option<(&'a [f32], f32)>,
    channels: usize,
    pixels_per_sample: usize,
}

impl<'a> Epilogue<'a> {
    /// Nothing to apply.
    pub fn none(s: &ConvDims) -> Self {
        Epilogue {
            sample_bias: None,
            residual: None,
            channels: s.out_channels,
            pixels_per_sample: s.out_height * s.out_width,
        }
    }

    /// `e`'s tensors as CPU slices, checked against the convolution's output shape.
    pub fn new(e: &ConvEpilogue<'a>, s: &ConvDims) -> Result<Self> {
        shapes::conv_epilogue(e, s)?;
        let mut out = Epilogue::none(s);
        out.sample_bias = e.sample_bias.map(|t| t.cpu_data()).transpose()?;
        if let Some((t, scale)) = e.residual {
            out.residual = Some((t.cpu_data()?, scale));
        }
        Ok(out)
    }

    /// Applies to `dst`: consecutive output pixels from flat pixel index `first`.
    pub fn apply(&self, dst: &mut [f32], first: usize) {
        if self.is_empty() {
            return;
        }
        for (i, px) in dst.chunks_exact_mut(self.channels).enumerate() {
            self.apply_pixel(px, first + i, 0);
        }
    }

    /// Whether applying changes nothing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.sample_bias.is_none() && self.residual.is_none()
    }

    /// Applies to `px`: channels `first_channel ..` of output pixel `pixel`.
    #[inline]
    pub fn apply_pixel(&self, px: &mut [f32], pixel: usize, first_channel: usize) {
        if self.is_empty() {
            return;
        }
        let c = self.channels;
        let channels = first_channel..first_channel + px.len();
        if let Some(bias) = self.sample_bias {
            let sample = pixel / self.pixels_per_sample;
            for (v, b) in px.iter_mut().zip(&bias[sample * c..][channels.clone()]) {
                *v += b;
            }
        }
        if let Some((residual, scale)) = self.residual {
            let r = &residual[pixel * c..][channels];
            if scale == 1.0 {
                px.iter_mut().zip(r).for_each(|(v, r)| *v += r);
            } else {
                px.iter_mut()
                    .zip(r)
                    .for_each(|(v, r)| *v = (*v + r) * scale);
            }
        }
    }
}
