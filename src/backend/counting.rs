//! A backend wrapper that measures what a model asks of its backend: the time spent
//! in each kind of op, how often it ran, and the floating-point operations of the
//! matrix-shaped ones (convolutions, linear layers, attention), so benchmarks can
//! report achieved GFLOP/s and where the time goes. Elementwise ops and norms count
//! no FLOPs: they are memory-bound.
//!
//! Times are wall-clock around each call, which is exact for the synchronous CPU
//! backend; for an asynchronous device they measure launch cost only.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Activation, Backend, Conv2dGeometry, ConvEpilogue, SlotStep, StepBuffers, StepResult};
use crate::error::Result;
use crate::tensor::Tensor;

/// Totals for one kind of op.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpStats {
    pub calls: u64,
    pub time: Duration,
    pub flops: u64,
}

pub struct CountingBackend<'a> {
    inner: &'a dyn Backend,
    stats: Mutex<BTreeMap<&'static str, OpStats>>,
}

impl<'a> CountingBackend<'a> {
    pub fn new(inner: &'a dyn Backend) -> Self {
        CountingBackend {
            inner,
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    /// The totals per op kind since the last call, and resets them.
    pub fn take_stats(&self) -> BTreeMap<&'static str, OpStats> {
        match self.stats.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Operations counted since the last call (a multiply-add counts as 2).
    pub fn take_flops(&self) -> u64 {
        self.take_stats().values().map(|s| s.flops).sum()
    }

    fn record<T>(
        &self,
        op: &'static str,
        flops: impl FnOnce(&T) -> usize,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let out = f()?;
        let elapsed = start.elapsed();
        let counted = flops(&out) as u64;
        if let Ok(mut stats) = self.stats.lock() {
            let entry = stats.entry(op).or_default();
            entry.calls += 1;
            entry.time += elapsed;
            entry.flops += counted;
        }
        Ok(out)
    }
}

fn none<T>(_: &T) -> usize {
    0
}

impl Backend for CountingBackend<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        self.record("upload", none, || self.inner.tensor(shape, data))
    }
    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.record("download", none, || self.inner.to_host(x))
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
        let k: usize = weight.shape().iter().take(3).product();
        let pointwise = weight.shape().first() == Some(&1) && weight.shape().get(1) == Some(&1);
        let name = if pointwise { "conv2d 1x1" } else { "conv2d" };
        self.record(
            name,
            |out: &Tensor| 2 * out.len() * k,
            || {
                self.inner
                    .conv2d_epilogue(x, weight, bias, geometry, epilogue)
            },
        )
    }
    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let k = weight.shape().first().copied().unwrap_or(0);
        self.record(
            "linear",
            |out: &Tensor| 2 * out.len() * k,
            || self.inner.linear(x, weight, bias),
        )
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
        let name = if silu {
            "group_norm+silu"
        } else {
            "group_norm"
        };
        self.record(name, none, || {
            self.inner.group_norm(x, groups, gamma, beta, eps, silu)
        })
    }
    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        self.record("layer_norm", none, || {
            self.inner.layer_norm(x, gamma, beta, eps)
        })
    }
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        // q·kᵀ and p·v: 2 · (2 · lq · lk · width) per batch element.
        let lk = k.shape().get(1).copied().unwrap_or(0);
        self.record(
            "attention",
            |out: &Tensor| 4 * out.len() * lk,
            || self.inner.attention(q, k, v, heads),
        )
    }
    fn causal_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        // About half the scores of full attention are computed.
        let lk = k.shape().get(1).copied().unwrap_or(0);
        self.record(
            "causal attention",
            |out: &Tensor| 2 * out.len() * (lk + 1),
            || self.inner.causal_attention(q, k, v, heads),
        )
    }
    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        self.record("geglu", none, || self.inner.geglu(x))
    }
    fn silu_assign(&self, x: &mut Tensor) -> Result<()> {
        self.record("silu", none, || self.inner.silu_assign(x))
    }
    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        self.record("add", none, || self.inner.add_assign(x, y, scale))
    }
    fn activation_assign(
        &self,
        x: &mut Tensor,
        act: Activation,
        derivative: bool,
    ) -> Result<Option<Tensor>> {
        self.record("activation", none, || {
            self.inner.activation_assign(x, act, derivative)
        })
    }
    fn timestep_embedding(
        &self,
        timesteps: &[f32],
        frequencies: &[f32],
        dim: usize,
        flip_sin_to_cos: bool,
    ) -> Result<Tensor> {
        self.record("timestep embedding", none, || {
            self.inner
                .timestep_embedding(timesteps, frequencies, dim, flip_sin_to_cos)
        })
    }
    fn mul_assign(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        self.record("mul", none, || self.inner.mul_assign(x, y))
    }
    fn avg_pool(&self, x: &Tensor, kernel: usize) -> Result<Tensor> {
        self.record("avg_pool", none, || self.inner.avg_pool(x, kernel))
    }
    fn avg_pool_backward(
        &self,
        dy: &Tensor,
        kernel: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Tensor> {
        self.record("avg_pool backward", none, || {
            self.inner.avg_pool_backward(dy, kernel, in_h, in_w)
        })
    }
    fn col2im(
        &self,
        dpatches: &Tensor,
        input: [usize; 4],
        kernel: (usize, usize),
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
        self.record("col2im", none, || {
            self.inner.col2im(dpatches, input, kernel, geometry)
        })
    }
    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        self.record("channel bias", none, || {
            self.inner.add_channel_bias_assign(x, bias)
        })
    }
    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        self.record("upsample", none, || {
            self.inner.upsample_nearest(x, out_h, out_w)
        })
    }
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.record("concat", none, || self.inner.concat_channels(a, b))
    }

    fn guided_step(
        &self,
        model_out: &Tensor,
        slots: &[SlotStep],
        buffers: &StepBuffers,
    ) -> Result<StepResult> {
        self.record(
            "guided_step",
            |_| 0,
            || self.inner.guided_step(model_out, slots, buffers),
        )
    }

    fn prefers_fused_step(&self) -> bool {
        self.inner.prefers_fused_step()
    }

    fn with_busy_workers(&self, work: &mut dyn FnMut()) {
        self.inner.with_busy_workers(work)
    }

    fn concurrent_parts(&self, rows: usize) -> usize {
        self.inner.concurrent_parts(rows)
    }

    fn run_parts(
        &self,
        parts: usize,
        part: &(dyn Fn(usize) -> Result<Tensor> + Sync),
    ) -> Vec<Result<Tensor>> {
        self.inner.run_parts(parts, part)
    }
}
