//! Compute backends. [`Backend`] is the complete list of tensor operations the
//! models need; model code is written once against it and never names a device.
//!
//! Layout conventions (see `tensor`): feature maps are NHWC; a linear weight is
//! `[in_features, out_features]`; a convolution weight is `[kh, kw, c_in, c_out]`
//! (row-major, so it is the `[kh·kw·c_in, c_out]` matrix of an im2col GEMM).

pub mod check;
pub mod counting;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod embedding;
pub mod guided_step;
pub mod rounding;
pub mod shapes;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
pub use guided_step::{SlotStep, StepBuffers, StepResult};

/// Elementwise work applied to a convolution's output as it is written, in this
/// order (see [`Backend::conv2d_epilogue`]).
#[derive(Clone, Copy, Default)]
pub struct ConvEpilogue<'a> {
    /// `[n, c_out]`: added to every pixel of sample n (a ResNet block's time
    /// embedding).
    pub sample_bias: Option<&'a Tensor>,
    /// A tensor of the output's shape and a scale: `out ← (out + residual) · scale`
    /// (a ResNet block's skip connection).
    pub residual: Option<(&'a Tensor, f32)>,
}

/// Elementwise activations (see [`Backend::activation_assign`]): the reward models'
/// SiLU and ReLU, and the CLIP text encoders' GELU (SD 2.x) and quick GELU (SD 1.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Relu,
    /// Exact GELU, `x·Φ(x)` with the erf-based normal CDF (PyTorch's `gelu`).
    Gelu,
    /// CLIP's `x·σ(1.702·x)` (transformers' `quick_gelu`).
    QuickGelu,
}

/// Stride and zero padding of a 2-D convolution (padding may be asymmetric, as
/// diffusers' `Downsample2D` with `padding=0` pads only bottom and right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub stride: usize,
    pub pad_top: usize,
    pub pad_bottom: usize,
    pub pad_left: usize,
    pub pad_right: usize,
}

impl Conv2dGeometry {
    pub fn symmetric(stride: usize, padding: usize) -> Self {
        Conv2dGeometry {
            stride,
            pad_top: padding,
            pad_bottom: padding,
            pad_left: padding,
            pad_right: padding,
        }
    }

    /// Output (height, width) for an input of `h × w` and a `kh × kw` kernel.
    pub fn output_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let ph = h + self.pad_top + self.pad_bottom;
        let pw = w + self.pad_left + self.pad_right;
        if self.stride == 0 || ph < kh || pw < kw {
            return None;
        }
        Some(((ph - kh) / self.stride + 1, (pw - kw) / self.stride + 1))
    }
}

pub trait Backend: Send + Sync {
    /// A short name for messages and reports ("cpu", "cuda:0").
    fn name(&self) -> String;

    /// A tensor on this backend holding `data` (row-major) with `shape`.
    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor>;

    /// The elements of `x`, row-major, on the host.
    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>>;

    /// 2-D convolution of NHWC `x` with weight `[kh, kw, c_in, c_out]` and optional
    /// bias `[c_out]`.
    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor>;

    /// [`Backend::conv2d`] with a ResNet block's elementwise work folded into the
    /// writing of its output, which saves passes over the activation. Equal to
    /// `conv2d`, then [`Backend::add_channel_bias_assign`] with `sample_bias`, then
    /// [`Backend::add_assign`] with the residual: the default does exactly that.
    fn conv2d_epilogue(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: &Conv2dGeometry,
        epilogue: ConvEpilogue,
    ) -> Result<Tensor> {
        let mut out = self.conv2d(x, weight, bias, geometry)?;
        if let Some(sample_bias) = epilogue.sample_bias {
            self.add_channel_bias_assign(&mut out, sample_bias)?;
        }
        if let Some((residual, scale)) = epilogue.residual {
            self.add_assign(&mut out, residual, scale)?;
        }
        Ok(out)
    }

    /// `x · weight + bias` over the last dimension: `[.., k] × [k, n] → [.., n]`.
    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor>;

    /// Group normalisation of NHWC `x` over `groups` channel groups (statistics per
    /// sample and group over H, W and the group's channels), then the per-channel
    /// affine `gamma`, `beta`, then SiLU when `silu` is set.
    fn group_norm(
        &self,
        x: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        silu: bool,
    ) -> Result<Tensor>;

    /// Layer normalisation over the last dimension with affine `gamma`, `beta`.
    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor>;

    /// Multi-head scaled dot-product attention, softmax(q·kᵀ/√d)·v per head.
    /// `q`: `[b, lq, heads·d]`, `k` and `v`: `[b, lk, heads·d]`; returns `[b, lq, heads·d]`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor>;

    /// [`Backend::attention`] with a causal mask, for self-attention over a token
    /// sequence (CLIP's text encoder): query `i` attends to keys `0..=i` only. `q`, `k`
    /// and `v` are all `[b, l, heads·d]`.
    fn causal_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor>;

    /// GEGLU: the last dimension `2f` splits into `[hidden, gate]`; returns
    /// `hidden · gelu(gate)` (exact, erf-based GELU) of size `f`.
    fn geglu(&self, x: &Tensor) -> Result<Tensor>;

    /// `x ← silu(x)`.
    fn silu_assign(&self, x: &mut Tensor) -> Result<()>;

    /// `x ← (x + y) · scale`; `x` and `y` have the same shape.
    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()>;

    /// `x[n, h, w, c] ← x[n, h, w, c] + bias[n, c]` for NHWC `x` (per-sample
    /// channel bias: the time embedding added inside a ResNet block).
    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()>;

    /// Nearest-neighbour resize of NHWC `x` to `out_h × out_w` (source index
    /// `floor(dst · in / out)`, as PyTorch's `nearest`).
    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor>;

    /// Concatenation of two NHWC tensors along channels: `[a, b]`.
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// The sinusoidal timestep embedding `[timesteps.len(), dim]` with the given
    /// `frequencies` (see [`embedding`]); the default computes it on the host.
    fn timestep_embedding(
        &self,
        timesteps: &[f32],
        frequencies: &[f32],
        dim: usize,
        flip_sin_to_cos: bool,
    ) -> Result<Tensor> {
        shapes::timestep_embedding(frequencies, dim)?;
        let rows = embedding::sinusoidal_embedding(timesteps, frequencies, dim, flip_sin_to_cos);
        self.tensor(&[timesteps.len(), dim], rows)
    }

    /// `x ← act(x)`; with `derivative`, also returns act′ at the old values (SiLU:
    /// σ(x)·(1 + x·(1 − σ(x))); ReLU: 1 where x > 0, else 0; GELU: Φ(x) + x·φ(x);
    /// quick GELU: s + 1.702·x·s·(1 − s) with s = σ(1.702·x)) for a backward pass.
    fn activation_assign(
        &self,
        x: &mut Tensor,
        act: Activation,
        derivative: bool,
    ) -> Result<Option<Tensor>>;

    /// `x ← x ⊙ y`, elementwise; `x` and `y` have the same shape.
    fn mul_assign(&self, x: &mut Tensor, y: &Tensor) -> Result<()>;

    /// Average pooling of NHWC `x` with window = stride = `kernel`; rows and columns
    /// that do not fill a window are dropped (PyTorch's default floor mode).
    fn avg_pool(&self, x: &Tensor, kernel: usize) -> Result<Tensor>;

    /// The input gradient of [`Backend::avg_pool`] over an `in_h × in_w` input, from
    /// the output gradient `dy`.
    fn avg_pool_backward(
        &self,
        dy: &Tensor,
        kernel: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Tensor>;

    /// The input gradient of a convolution from its patch gradients: `dpatches` is
    /// `[n·oh·ow, kh·kw·c_in]` (rows and columns in im2col order, the output gradient
    /// times the transposed weight matrix); every pixel of the `input` =
    /// `[n, h, w, c_in]` result sums the patch entries that cover it.
    fn col2im(
        &self,
        dpatches: &Tensor,
        input: [usize; 4],
        kernel: (usize, usize),
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor>;

    /// The fused guidance + scheduler step of one denoising step: for every slot,
    /// CFG over its rows of `model_out` (`[rows, ..]`), the rescale, the reward
    /// shift and the scheduler update, from host-side f32 latents, history and noise
    /// to the next latents and the x̂₀ estimates ([`guided_step`]). The default
    /// reads the model output back and runs [`guided_step::guided_step_on_host`].
    fn guided_step(
        &self,
        model_out: &Tensor,
        slots: &[SlotStep],
        buffers: &StepBuffers,
    ) -> Result<StepResult> {
        let rows = model_out.shape().first().copied().unwrap_or(0);
        guided_step::guided_step_on_host(&self.to_host(model_out)?, rows, slots, buffers)
    }

    /// Runs `work`, a burst of calls into this backend from the current thread (a
    /// sampling loop, a benchmark's repeated forwards), with the backend's worker
    /// threads ready for one short op after another. The CPU backend keeps the
    /// other threads of the current rayon pool polling for jobs (busy, not
    /// sleeping) until `work` returns; the default just runs `work`.
    fn with_busy_workers(&self, work: &mut dyn FnMut()) {
        work()
    }

    /// Into how many consecutive groups of rows to cut a model call of `rows` rows,
    /// to run as separate forwards at the same time (each on its own thread). The
    /// CPU backend: one per thread of the current rayon pool, at most `rows`; the
    /// default: 1 (one forward per call).
    fn concurrent_parts(&self, rows: usize) -> usize {
        let _ = rows;
        1
    }

    /// Runs `part(p)` for every `p < parts` — at the same time where the backend
    /// can (the CPU backend: as rayon tasks, each planning its ops for its share of
    /// the pool) — and returns the results in order. The default runs them one
    /// after another.
    fn run_parts(
        &self,
        parts: usize,
        part: &(dyn Fn(usize) -> Result<Tensor> + Sync),
    ) -> Vec<Result<Tensor>> {
        (0..parts).map(part).collect()
    }

    /// Whether the sampler should step through [`Backend::guided_step`] instead of
    /// reading every model output back (true where the model output lives on a
    /// device and the step runs there).
    fn prefers_fused_step(&self) -> bool {
        false
    }
}

/// [`Backend::with_busy_workers`] around work that returns a result.
pub fn run_busy<T>(backend: &dyn Backend, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut work = Some(work);
    let mut outcome = None;
    backend.with_busy_workers(&mut || {
        if let Some(work) = work.take() {
            outcome = Some(work());
        }
    });
    outcome.unwrap_or_else(|| {
        Err(Error::invalid(
            "backend",
            format!("{} did not run the work it was given", backend.name()),
        ))
    })
}
