//! The CPU backend: the reference implementation of every op and the default
//! device. Work is split across the rayon pool (set its size with
//! `RAYON_NUM_THREADS`); matrix products use the `gemm` crate's SIMD kernels.

mod attention;
mod conv;
pub mod elementwise;
pub mod matmul;
mod norm;
pub mod vmath;

use crate::backend::{Backend, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

fn vector_of_len<'a>(op: &str, what: &str, t: &'a Tensor, len: usize) -> Result<&'a [f32]> {
    if t.shape() != [len] {
        return Err(Error::shape(
            op,
            format!("{what} must have shape [{len}], got {:?}", t.shape()),
        ));
    }
    t.cpu_data()
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_vec(shape, data)
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.cpu_data()?.to_vec())
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
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
        let bias = bias
            .map(|b| vector_of_len("conv2d", "bias", b, cout))
            .transpose()?;
        let shape = conv::ConvShape {
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
        let out = conv::conv2d(x.cpu_data()?, weight.cpu_data()?, bias, &shape, geometry);
        Tensor::from_vec(&[n, out_h, out_w, cout], out)
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (rows, k) = x.rows_cols("linear")?;
        let (wk, n) = match weight.shape()[..] {
            [wk, n] => (wk, n),
            _ => {
                return Err(Error::shape(
                    "linear",
                    format!("weight must be [in, out], got {:?}", weight.shape()),
                ))
            }
        };
        if wk != k {
            return Err(Error::shape(
                "linear",
                format!("input has {k} features, weight expects {wk}"),
            ));
        }
        // A linear layer is a 1×1 convolution over `rows` pixels.
        let as_pixels = conv::ConvShape {
            batch: rows,
            height: 1,
            width: 1,
            in_channels: k,
            kernel_h: 1,
            kernel_w: 1,
            out_channels: n,
            out_height: 1,
            out_width: 1,
        };
        let bias = bias
            .map(|b| vector_of_len("linear", "bias", b, n))
            .transpose()?;
        let out = conv::conv2d(
            x.cpu_data()?,
            weight.cpu_data()?,
            bias,
            &as_pixels,
            &Conv2dGeometry::symmetric(1, 0),
        );
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        Tensor::from_vec(&shape, out)
    }

    fn group_norm(
        &self,
        x: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        silu: bool,
    ) -> Result<Tensor> {
        let dims = x.dims4("group_norm")?;
        let c = dims.3;
        if groups == 0 || c % groups != 0 {
            return Err(Error::shape(
                "group_norm",
                format!("{c} channels cannot be split into {groups} groups"),
            ));
        }
        let gamma = vector_of_len("group_norm", "gamma", gamma, c)?;
        let beta = vector_of_len("group_norm", "beta", beta, c)?;
        let out = norm::group_norm(x.cpu_data()?, dims, groups, gamma, beta, eps, silu);
        Tensor::from_vec(x.shape(), out)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let (_, c) = x.rows_cols("layer_norm")?;
        let gamma = vector_of_len("layer_norm", "gamma", gamma, c)?;
        let beta = vector_of_len("layer_norm", "beta", beta, c)?;
        let out = norm::layer_norm(x.cpu_data()?, c, gamma, beta, eps);
        Tensor::from_vec(x.shape(), out)
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, lq, width) = match q.shape()[..] {
            [b, l, w] => (b, l, w),
            _ => {
                return Err(Error::shape(
                    "attention",
                    format!("q must be [b, l, heads·d], got {:?}", q.shape()),
                ))
            }
        };
        let lk = match k.shape()[..] {
            [kb, l, kw] if kb == b && kw == width => l,
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
        let shape = attention::AttentionShape {
            batch: b,
            q_len: lq,
            kv_len: lk,
            heads,
            head_dim: width / heads,
        };
        if lk == 0 {
            return Err(Error::shape("attention", "keys and values are empty"));
        }
        let out = attention::attention(q.cpu_data()?, k.cpu_data()?, v.cpu_data()?, &shape);
        Tensor::from_vec(q.shape(), out)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        let (_, cols) = x.rows_cols("geglu")?;
        if cols % 2 != 0 {
            return Err(Error::shape(
                "geglu",
                format!("last dimension {cols} is odd"),
            ));
        }
        let out = elementwise::geglu(x.cpu_data()?, cols / 2);
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = cols / 2;
        }
        Tensor::from_vec(&shape, out)
    }

    fn silu_assign(&self, x: &mut Tensor) -> Result<()> {
        elementwise::silu_assign(x.cpu_data_mut()?);
        Ok(())
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        same_shape("add", x, y)?;
        elementwise::add_assign(x.cpu_data_mut()?, y.cpu_data()?, scale);
        Ok(())
    }

    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        let (n, h, w, c) = x.dims4("add_channel_bias")?;
        if bias.shape() != [n, c] {
            return Err(Error::shape(
                "add_channel_bias",
                format!("bias must be [{n}, {c}], got {:?}", bias.shape()),
            ));
        }
        let bias = bias.cpu_data()?.to_vec();
        elementwise::add_channel_bias_assign(x.cpu_data_mut()?, &bias, h * w, c);
        Ok(())
    }

    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let dims = x.dims4("upsample_nearest")?;
        if dims.1 == 0 || dims.2 == 0 {
            return Err(Error::shape("upsample_nearest", "empty input"));
        }
        let out = elementwise::upsample_nearest(x.cpu_data()?, dims, out_h, out_w);
        Tensor::from_vec(&[dims.0, out_h, out_w, dims.3], out)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, w, ca) = a.dims4("concat_channels")?;
        let (bn, bh, bw, cb) = b.dims4("concat_channels")?;
        if (n, h, w) != (bn, bh, bw) {
            return Err(Error::shape(
                "concat_channels",
                format!("{:?} vs {:?}", a.shape(), b.shape()),
            ));
        }
        let out = elementwise::concat_channels(a.cpu_data()?, ca, b.cpu_data()?, cb, n * h * w);
        Tensor::from_vec(&[n, h, w, ca + cb], out)
    }
}
