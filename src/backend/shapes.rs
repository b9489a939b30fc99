//! Shape checks every backend applies before running an op, in one place so that all
//! devices accept and refuse exactly the same inputs with the same messages.

use super::{Conv2dGeometry, ConvEpilogue};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The sizes of a 2-D convolution of an NHWC input with a `[kh, kw, c_in, c_out]` weight.
#[derive(Debug, Clone, Copy)]
pub struct ConvDims {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub in_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub out_channels: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl ConvDims {
    /// Output pixels: rows of the im2col GEMM.
    pub fn rows(&self) -> usize {
        self.batch * self.out_height * self.out_width
    }

    /// `kh·kw·c_in`: the GEMM's inner dimension.
    pub fn patch_len(&self) -> usize {
        self.kernel_h * self.kernel_w * self.in_channels
    }

    pub fn out_shape(&self) -> [usize; 4] {
        [
            self.batch,
            self.out_height,
            self.out_width,
            self.out_channels,
        ]
    }

    /// A `[rows, k] × [k, n]` product seen as a 1×1 convolution over `rows` pixels.
    pub fn matmul(rows: usize, k: usize, n: usize) -> Self {
        ConvDims {
            batch: rows,
            height: 1,
            width: 1,
            in_channels: k,
            kernel_h: 1,
            kernel_w: 1,
            out_channels: n,
            out_height: 1,
            out_width: 1,
        }
    }
}

/// Multi-head attention sizes: q `[batch, q_len, heads·head_dim]`, k and v `[batch, kv_len, heads·head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Ops refuse tensors with a zero-sized dimension: no model produces them, and
/// refusing them keeps every kernel free of empty-work special cases.
fn non_empty(op: &str, t: &Tensor) -> Result<()> {
    if t.shape().contains(&0) {
        return Err(Error::shape(
            op,
            format!("empty tensor of shape {:?}", t.shape()),
        ));
    }
    Ok(())
}

pub fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

/// `t` must be a vector of `len` elements.
pub fn vector(op: &str, what: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.shape() != [len] {
        return Err(Error::shape(
            op,
            format!("{what} must have shape [{len}], got {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// `shape` with its last dimension replaced by `last`.
pub fn with_last_dim(shape: &[usize], last: usize) -> Vec<usize> {
    let mut out = shape.to_vec();
    if let Some(l) = out.last_mut() {
        *l = last;
    }
    out
}

pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: &Conv2dGeometry,
) -> Result<ConvDims> {
    let (n, h, w, cin) = x.dims4("conv2d")?;
    let (kh, kw, wcin, cout) = match weight.shape()[..] {
        [kh, kw, ci, co] => (kh, kw, ci, co),
        _ => {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "weight must be [kh, kw, c_in, c_out], got {:?}",
                    weight.shape()
                ),
            ))
        }
    };
    if wcin != cin {
        return Err(Error::shape(
            "conv2d",
            format!("input has {cin} channels, weight expects {wcin}"),
        ));
    }
    let (out_h, out_w) = geometry.output_size(h, w, kh, kw).ok_or_else(|| {
        Error::shape(
            "conv2d",
            format!("{kh}×{kw} kernel does not fit a {h}×{w} input with {geometry:?}"),
        )
    })?;
    if let Some(b) = bias {
        vector("conv2d", "bias", b, cout)?;
    }
    let dims = ConvDims {
        batch: n,
        height: h,
        width: w,
        in_channels: cin,
        kernel_h: kh,
        kernel_w: kw,
        out_channels: cout,
        out_height: out_h,
        out_width: out_w,
    };
    if dims.rows() == 0 || dims.patch_len() == 0 || cout == 0 {
        return Err(Error::shape(
            "conv2d",
            format!(
                "empty convolution: input {:?}, weight {:?}",
                x.shape(),
                weight.shape()
            ),
        ));
    }
    Ok(dims)
}

/// `[.., k] × [k, n]`: returns (rows, k, n).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let (rows, k) = x.rows_cols("linear")?;
    let n = match weight.shape()[..] {
        [wk, n] if wk == k => n,
        [wk, _] => {
            return Err(Error::shape(
                "linear",
                format!("input has {k} features, weight expects {wk}"),
            ))
        }
        _ => {
            return Err(Error::shape(
                "linear",
                format!("weight must be [in, out], got {:?}", weight.shape()),
            ))
        }
    };
    if let Some(b) = bias {
        vector("linear", "bias", b, n)?;
    }
    Ok((rows, k, n))
}

pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<(usize, usize, usize, usize)> {
    let dims = x.dims4("group_norm")?;
    non_empty("group_norm", x)?;
    let c = dims.3;
    if groups == 0 || c % groups != 0 {
        return Err(Error::shape(
            "group_norm",
            format!("{c} channels cannot be split into {groups} groups"),
        ));
    }
    vector("group_norm", "gamma", gamma, c)?;
    vector("group_norm", "beta", beta, c)?;
    Ok(dims)
}

/// Returns (rows, features).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<(usize, usize)> {
    let (rows, c) = x.rows_cols("layer_norm")?;
    non_empty("layer_norm", x)?;
    vector("layer_norm", "gamma", gamma, c)?;
    vector("layer_norm", "beta", beta, c)?;
    Ok((rows, c))
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<AttentionDims> {
    non_empty("attention", q)?;
    let (batch, q_len, width) = match q.shape()[..] {
        [b, l, w] => (b, l, w),
        _ => {
            return Err(Error::shape(
                "attention",
                format!("q must be [b, l, heads·d], got {:?}", q.shape()),
            ))
        }
    };
    let kv_len = match k.shape()[..] {
        [kb, l, kw] if kb == batch && kw == width => l,
        _ => {
            return Err(Error::shape(
                "attention",
                format!("k {:?} does not match q {:?}", k.shape(), q.shape()),
            ))
        }
    };
    same_shape("attention (k vs v)", k, v)?;
    if heads == 0 || width % heads != 0 {
        return Err(Error::shape(
            "attention",
            format!("width {width} is not divisible by {heads} heads"),
        ));
    }
    if kv_len == 0 {
        return Err(Error::shape("attention", "keys and values are empty"));
    }
    Ok(AttentionDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: width / heads,
    })
}

/// [`attention`] for self-attention under a causal mask: q, k and v of one shape.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<AttentionDims> {
    same_shape("causal_attention (q vs k)", q, k)?;
    attention(q, k, v, heads)
}

/// Returns (rows, half of the last dimension).
pub fn geglu(x: &Tensor) -> Result<(usize, usize)> {
    let (rows, cols) = x.rows_cols("geglu")?;
    non_empty("geglu", x)?;
    if cols % 2 != 0 {
        return Err(Error::shape(
            "geglu",
            format!("last dimension {cols} is odd"),
        ));
    }
    Ok((rows, cols / 2))
}

pub fn channel_bias(x: &Tensor, bias: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let (n, h, w, c) = x.dims4("add_channel_bias")?;
    non_empty("add_channel_bias", x)?;
    if bias.shape() != [n, c] {
        return Err(Error::shape(
            "add_channel_bias",
            format!("bias must be [{n}, {c}], got {:?}", bias.shape()),
        ));
    }
    Ok((n, h, w, c))
}

pub fn upsample(x: &Tensor, out_h: usize, out_w: usize) -> Result<(usize, usize, usize, usize)> {
    let dims = x.dims4("upsample_nearest")?;
    non_empty("upsample_nearest", x)?;
    if out_h == 0 || out_w == 0 {
        return Err(Error::shape(
            "upsample_nearest",
            format!("empty output size {out_h}×{out_w}"),
        ));
    }
    Ok(dims)
}

/// Returns (n, h, w, c_a, c_b).
pub fn concat(a: &Tensor, b: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, h, w, ca) = a.dims4("concat_channels")?;
    let (bn, bh, bw, cb) = b.dims4("concat_channels")?;
    non_empty("concat_channels", a)?;
    non_empty("concat_channels", b)?;
    if (n, h, w) != (bn, bh, bw) {
        return Err(Error::shape(
            "concat_channels",
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    Ok((n, h, w, ca, cb))
}

/// Sizes of an average pooling with window = stride = `kernel` over NHWC data.
#[derive(Debug, Clone, Copy)]
pub struct PoolDims {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub kernel: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl PoolDims {
    fn new(op: &str, [n, h, w, c]: [usize; 4], kernel: usize) -> Result<Self> {
        if kernel == 0 || kernel > h || kernel > w {
            return Err(Error::shape(
                op,
                format!("a {kernel}×{kernel} window does not fit a {h}×{w} map"),
            ));
        }
        Ok(PoolDims {
            batch: n,
            height: h,
            width: w,
            channels: c,
            kernel,
            out_height: h / kernel,
            out_width: w / kernel,
        })
    }

    pub fn in_shape(&self) -> [usize; 4] {
        [self.batch, self.height, self.width, self.channels]
    }

    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, self.out_height, self.out_width, self.channels]
    }
}

pub fn avg_pool(x: &Tensor, kernel: usize) -> Result<PoolDims> {
    let (n, h, w, c) = x.dims4("avg_pool")?;
    PoolDims::new("avg_pool", [n, h, w, c], kernel)
}

/// The pooling whose output gradient `dy` is, for an input of `in_h × in_w`.
pub fn avg_pool_backward(dy: &Tensor, kernel: usize, in_h: usize, in_w: usize) -> Result<PoolDims> {
    let op = "avg_pool_backward";
    let (n, oh, ow, c) = dy.dims4(op)?;
    let d = PoolDims::new(op, [n, in_h, in_w, c], kernel)?;
    if (d.out_height, d.out_width) != (oh, ow) {
        return Err(Error::shape(
            op,
            format!(
                "a {kernel}×{kernel} pooling of {in_h}×{in_w} gives {}×{}, the gradient is {oh}×{ow}",
                d.out_height, d.out_width
            ),
        ));
    }
    Ok(d)
}

/// The convolution whose patch gradients `dpatches` (`[n·oh·ow, kh·kw·c_in]`) are,
/// for an input of `input` = `[n, h, w, c_in]`.
pub fn col2im(
    dpatches: &Tensor,
    input: [usize; 4],
    (kernel_h, kernel_w): (usize, usize),
    g: &Conv2dGeometry,
) -> Result<ConvDims> {
    let op = "col2im";
    let [batch, height, width, in_channels] = input;
    let (out_height, out_width) = g
        .output_size(height, width, kernel_h, kernel_w)
        .filter(|_| kernel_h > 0 && kernel_w > 0 && in_channels > 0)
        .ok_or_else(|| {
            Error::shape(
                op,
                format!("a {kernel_h}×{kernel_w} kernel with {g:?} does not fit a {height}×{width} input"),
            )
        })?;
    let d = ConvDims {
        batch,
        height,
        width,
        in_channels,
        kernel_h,
        kernel_w,
        out_channels: 0,
        out_height,
        out_width,
    };
    let want = [d.rows(), d.patch_len()];
    if dpatches.shape() != want {
        return Err(Error::shape(
            op,
            format!(
                "patch gradients of shape {:?}; an input of {input:?} needs {want:?}",
                dpatches.shape()
            ),
        ));
    }
    Ok(d)
}

/// Refuses more frequencies than half the embedding width.
pub fn timestep_embedding(frequencies: &[f32], dim: usize) -> Result<()> {
    if 2 * frequencies.len() > dim {
        return Err(Error::shape(
            "timestep_embedding",
            format!(
                "{} frequencies need a width of at least {}, got {dim}",
                frequencies.len(),
                2 * frequencies.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a convolution epilogue's tensors against the output shape of `d`.
pub fn conv_epilogue(e: &ConvEpilogue, d: &ConvDims) -> Result<()> {
    if let Some(t) = e.sample_bias {
        if t.shape() != [d.batch, d.out_channels] {
            return Err(Error::shape(
                "conv2d_epilogue",
                format!(
                    "sample bias must be [{}, {}], got {:?}",
                    d.batch,
                    d.out_channels,
                    t.shape()
                ),
            ));
        }
    }
    if let Some((t, _)) = e.residual {
        if t.shape() != d.out_shape() {
            return Err(Error::shape(
                "conv2d_epilogue",
                format!(
                    "residual must be {:?} like the output, got {:?}",
                    d.out_shape(),
                    t.shape()
                ),
            ));
        }
    }
    Ok(())
}
