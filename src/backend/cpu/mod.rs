//! The CPU backend: the reference implementation of every op and the default
//! device. Work is split across the rayon pool (set its size with
//! `RAYON_NUM_THREADS`); matrix products use the `gemm` crate's SIMD kernels.

mod attention;
mod attention_simd;
mod busy_workers;
mod causal_attention;
mod col2im;
mod conv;
pub mod elementwise;
mod epilogue;
pub mod matmul;
mod norm;
mod op_threads;
mod panel_conv;
mod pool2d;
mod shared_out;
pub mod small_gemm;
#[cfg(test)]
mod test_support;
mod thin_conv;
pub mod vmath;
mod winograd;

use crate::backend::shapes::{self, ConvDims};
use crate::backend::{Activation, Backend, Conv2dGeometry, ConvEpilogue};
use crate::error::Result;
use crate::tensor::Tensor;
use epilogue::Epilogue;

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn with_busy_workers(&self, work: &mut dyn FnMut()) {
        busy_workers::with_busy_workers(work)
    }

    fn concurrent_parts(&self, rows: usize) -> usize {
        op_threads::op_threads().min(rows).max(1)
    }

    /// The parts run as rayon tasks; each plans its ops for its share of the pool.
    fn run_parts(
        &self,
        parts: usize,
        part: &(dyn Fn(usize) -> Result<Tensor> + Sync),
    ) -> Vec<Result<Tensor>> {
        use rayon::prelude::*;
        let share = (op_threads::op_threads() / parts.max(1)).max(1);
        (0..parts)
            .into_par_iter()
            .map(|p| op_threads::with_op_threads(share, || part(p)))
            .collect()
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
        self.conv2d_epilogue(x, weight, bias, geometry, ConvEpilogue::default())
    }

    fn conv2d_epilogue(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: &Conv2dGeometry,
        epilogue: ConvEpilogue,
    ) -> Result<Tensor> {
        let dims = shapes::conv2d(x, weight, bias, geometry)?;
        let epilogue = Epilogue::new(&epilogue, &dims)?;
        let bias = bias.map(Tensor::cpu_data).transpose()?;
        let out = if winograd::applies(&dims, geometry) {
            winograd::conv2d(x.cpu_data()?, weight, bias, &dims, geometry, epilogue)?
        } else {
            let direct = if thin_conv::applies(&dims) {
                thin_conv::conv2d
            } else {
                conv::conv2d
            };
            direct(
                x.cpu_data()?,
                weight.cpu_data()?,
                bias,
                &dims,
                geometry,
                epilogue,
            )
        };
        Tensor::from_vec(&dims.out_shape(), out)
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (rows, k, n) = shapes::linear(x, weight, bias)?;
        let bias = bias.map(Tensor::cpu_data).transpose()?;
        let dims = ConvDims::matmul(rows, k, n);
        let out = conv::conv2d(
            x.cpu_data()?,
            weight.cpu_data()?,
            bias,
            &dims,
            &Conv2dGeometry::symmetric(1, 0),
            Epilogue::none(&dims),
        );
        Tensor::from_vec(&shapes::with_last_dim(x.shape(), n), out)
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
        let dims = shapes::group_norm(x, groups, gamma, beta)?;
        let out = norm::group_norm(
            x.cpu_data()?,
            dims,
            groups,
            gamma.cpu_data()?,
            beta.cpu_data()?,
            eps,
            silu,
        );
        Tensor::from_vec(x.shape(), out)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let (_, c) = shapes::layer_norm(x, gamma, beta)?;
        let out = norm::layer_norm(x.cpu_data()?, c, gamma.cpu_data()?, beta.cpu_data()?, eps);
        Tensor::from_vec(x.shape(), out)
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let dims = shapes::attention(q, k, v, heads)?;
        let out = attention::attention(q.cpu_data()?, k.cpu_data()?, v.cpu_data()?, &dims);
        Tensor::from_vec(q.shape(), out)
    }

    fn causal_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let dims = shapes::causal_attention(q, k, v, heads)?;
        let out =
            causal_attention::causal_attention(q.cpu_data()?, k.cpu_data()?, v.cpu_data()?, &dims);
        Tensor::from_vec(q.shape(), out)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        let (_, half) = shapes::geglu(x)?;
        let out = elementwise::geglu(x.cpu_data()?, half);
        Tensor::from_vec(&shapes::with_last_dim(x.shape(), half), out)
    }

    fn silu_assign(&self, x: &mut Tensor) -> Result<()> {
        elementwise::silu_assign(x.cpu_data_mut()?);
        Ok(())
    }

    fn activation_assign(
        &self,
        x: &mut Tensor,
        act: Activation,
        derivative: bool,
    ) -> Result<Option<Tensor>> {
        let shape = x.shape().to_vec();
        let data = x.cpu_data_mut()?;
        match (act, derivative) {
            (Activation::Silu, false) => {
                elementwise::silu_assign(data);
                Ok(None)
            }
            (Activation::Silu, true) => {
                let mut d = crate::tensor::pool::for_overwrite(data.len());
                elementwise::silu_with_derivative(data, &mut d);
                Tensor::from_vec(&shape, d).map(Some)
            }
            (Activation::Relu, false) => {
                elementwise::relu_assign(data, None);
                Ok(None)
            }
            (Activation::Relu, true) => {
                let mut d = crate::tensor::pool::for_overwrite(data.len());
                elementwise::relu_assign(data, Some(&mut d));
                Tensor::from_vec(&shape, d).map(Some)
            }
            (Activation::Gelu | Activation::QuickGelu, derivative) => {
                let apply = if act == Activation::Gelu {
                    elementwise::gelu_assign
                } else {
                    elementwise::quick_gelu_assign
                };
                if derivative {
                    let mut d = crate::tensor::pool::for_overwrite(data.len());
                    apply(data, Some(&mut d));
                    Tensor::from_vec(&shape, d).map(Some)
                } else {
                    apply(data, None);
                    Ok(None)
                }
            }
        }
    }

    fn mul_assign(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        shapes::same_shape("mul", x, y)?;
        elementwise::mul_assign(x.cpu_data_mut()?, y.cpu_data()?);
        Ok(())
    }

    fn avg_pool(&self, x: &Tensor, kernel: usize) -> Result<Tensor> {
        let d = shapes::avg_pool(x, kernel)?;
        let shape = d.out_shape();
        let mut out = crate::tensor::pool::for_overwrite(shape.iter().product());
        pool2d::avg_pool(x.cpu_data()?, &mut out, &d);
        Tensor::from_vec(&shape, out)
    }

    fn avg_pool_backward(
        &self,
        dy: &Tensor,
        kernel: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Tensor> {
        let d = shapes::avg_pool_backward(dy, kernel, in_h, in_w)?;
        let shape = d.in_shape();
        let mut dx = crate::tensor::pool::for_overwrite(shape.iter().product());
        pool2d::avg_pool_backward(dy.cpu_data()?, &mut dx, &d);
        Tensor::from_vec(&shape, dx)
    }

    fn col2im(
        &self,
        dpatches: &Tensor,
        input: [usize; 4],
        kernel: (usize, usize),
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
        let d = shapes::col2im(dpatches, input, kernel, geometry)?;
        let mut dx = crate::tensor::pool::for_overwrite(input.iter().product());
        col2im::col2im(dpatches.cpu_data()?, &mut dx, &d, geometry);
        Tensor::from_vec(&input, dx)
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        shapes::same_shape("add", x, y)?;
        elementwise::add_assign(x.cpu_data_mut()?, y.cpu_data()?, scale);
        Ok(())
    }

    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        let (_, h, w, c) = shapes::channel_bias(x, bias)?;
        elementwise::add_channel_bias_assign(x.cpu_data_mut()?, bias.cpu_data()?, h * w, c);
        Ok(())
    }

    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let dims = shapes::upsample(x, out_h, out_w)?;
        let out = elementwise::upsample_nearest(x.cpu_data()?, dims, out_h, out_w);
        Tensor::from_vec(&[dims.0, out_h, out_w, dims.3], out)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, w, ca, cb) = shapes::concat(a, b)?;
        let out = elementwise::concat_channels(a.cpu_data()?, ca, b.cpu_data()?, cb, n * h * w);
        Tensor::from_vec(&[n, h, w, ca + cb], out)
    }
}
