//! A backend wrapper that counts the floating-point operations of the matrix-shaped
//! ops (convolutions, linear layers, attention), so benchmarks can report achieved
//! GFLOP/s next to their timings. Elementwise ops and norms are not counted: they
//! are memory-bound and small next to the GEMMs.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, Conv2dGeometry};
use crate::error::Result;
use crate::tensor::Tensor;

pub struct CountingBackend<'a> {
    inner: &'a dyn Backend,
    flops: AtomicU64,
}

impl<'a> CountingBackend<'a> {
    pub fn new(inner: &'a dyn Backend) -> Self {
        CountingBackend {
            inner,
            flops: AtomicU64::new(0),
        }
    }

    /// Operations counted since the last call (a multiply-add counts as 2).
    pub fn take_flops(&self) -> u64 {
        self.flops.swap(0, Ordering::Relaxed)
    }

    fn add(&self, flops: usize) {
        self.flops.fetch_add(flops as u64, Ordering::Relaxed);
    }
}

impl Backend for CountingBackend<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        self.inner.tensor(shape, data)
    }
    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.inner.to_host(x)
    }
    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
        let out = self.inner.conv2d(x, weight, bias, geometry)?;
        let k: usize = weight.shape()[..3].iter().product();
        self.add(2 * out.len() * k);
        Ok(out)
    }
    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let out = self.inner.linear(x, weight, bias)?;
        self.add(2 * out.len() * weight.shape()[0]);
        Ok(out)
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
        self.inner.group_norm(x, groups, gamma, beta, eps, silu)
    }
    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        self.inner.layer_norm(x, gamma, beta, eps)
    }
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let out = self.inner.attention(q, k, v, heads)?;
        // q·kᵀ and p·v: 2 · (2 · lq · lk · width) per batch element.
        let (lk, width) = (k.shape()[1], k.shape()[2]);
        self.add(4 * out.len() / width * lk * width);
        Ok(out)
    }
    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.geglu(x)
    }
    fn silu_assign(&self, x: &mut Tensor) -> Result<()> {
        self.inner.silu_assign(x)
    }
    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        self.inner.add_assign(x, y, scale)
    }
    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        self.inner.add_channel_bias_assign(x, bias)
    }
    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        self.inner.upsample_nearest(x, out_h, out_w)
    }
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.inner.concat_channels(a, b)
    }
}
