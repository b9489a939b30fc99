//! The CPU backend with every tensor it makes rounded to f16 or bf16: a *plain*
//! same-precision implementation, the yardstick of DESIGN.md's rule for 16-bit
//! kernels (error against f32 at most 2× that of a plain implementation). Each op
//! computes in f32 on 16-bit inputs and stores its result in 16 bits; attention
//! also rounds its scores and probabilities, as a plain `softmax(q·kᵀ)·v` in that
//! precision does. It is slow and for checks only (`diffsteer selftest`, tests).

use rayon::prelude::*;

use super::cpu::CpuBackend;
use super::{shapes, Activation, Backend, Conv2dGeometry};
use crate::error::Result;
use crate::tensor::{Precision, Tensor};

pub struct RoundingBackend {
    inner: CpuBackend,
    precision: Precision,
}

impl RoundingBackend {
    pub fn new(precision: Precision) -> Self {
        RoundingBackend {
            inner: CpuBackend::new(),
            precision,
        }
    }

    fn round_all(&self, values: &mut [f32]) {
        let p = self.precision;
        if p != Precision::F32 {
            values.par_iter_mut().for_each(|v| *v = p.round(*v));
        }
    }

    fn rounded(&self, t: Result<Tensor>) -> Result<Tensor> {
        let mut t = t?;
        self.round_all(t.cpu_data_mut()?);
        Ok(t)
    }

    fn round_in_place(&self, t: &mut Tensor) -> Result<()> {
        self.round_all(t.cpu_data_mut()?);
        Ok(())
    }
}

impl RoundingBackend {
    /// A plain `softmax(q·kᵀ/√d)·v` with scores, probabilities and outputs rounded
    /// to the precision; with `causal`, query `i` sees keys `0..=i` only.
    fn rounded_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d: &shapes::AttentionDims,
        causal: bool,
    ) -> Result<Tensor> {
        let (qd, kd, vd) = (q.cpu_data()?, k.cpu_data()?, v.cpu_data()?);
        let p = self.precision;
        let width = d.heads * d.head_dim;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let mut out = vec![0f32; q.len()];
        // One task per (image, query row); each computes every head of that row.
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(row_index, out_row)| {
                let b = row_index / d.q_len;
                let q_row = &qd[row_index * width..(row_index + 1) * width];
                let visible = if causal {
                    row_index % d.q_len + 1
                } else {
                    d.kv_len
                };
                let mut probs = vec![0f32; visible];
                for h in 0..d.heads {
                    let cols = h * d.head_dim..(h + 1) * d.head_dim;
                    let qh = &q_row[cols.clone()];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in probs.iter_mut().enumerate() {
                        let k_row = &kd[(b * d.kv_len + j) * width..][cols.clone()];
                        let dot: f32 = qh.iter().zip(k_row).map(|(a, b)| a * b).sum();
                        *s = p.round(dot * scale);
                        max = max.max(*s);
                    }
                    let mut sum = 0f32;
                    for s in probs.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    for s in probs.iter_mut() {
                        *s = p.round(*s / sum);
                    }
                    let o = &mut out_row[cols.clone()];
                    o.fill(0.0);
                    for (j, &pj) in probs.iter().enumerate() {
                        let v_row = &vd[(b * d.kv_len + j) * width..][cols.clone()];
                        for (o, &vv) in o.iter_mut().zip(v_row) {
                            *o += pj * vv;
                        }
                    }
                    for o in o.iter_mut() {
                        *o = p.round(*o);
                    }
                }
            });
        Tensor::from_vec(q.shape(), out)
    }
}

impl Backend for RoundingBackend {
    fn name(&self) -> String {
        format!("cpu (rounded to {})", self.precision)
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

    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        self.rounded(self.inner.tensor(shape, data))
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
        self.rounded(self.inner.conv2d(x, weight, bias, geometry))
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.rounded(self.inner.linear(x, weight, bias))
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
        self.rounded(self.inner.group_norm(x, groups, gamma, beta, eps, silu))
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        self.rounded(self.inner.layer_norm(x, gamma, beta, eps))
    }

    /// Scores, then probabilities, then the output, each rounded to the precision.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let d = shapes::attention(q, k, v, heads)?;
        self.rounded_attention(q, k, v, &d, false)
    }

    fn causal_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let d = shapes::causal_attention(q, k, v, heads)?;
        self.rounded_attention(q, k, v, &d, true)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        self.rounded(self.inner.geglu(x))
    }

    fn silu_assign(&self, x: &mut Tensor) -> Result<()> {
        self.inner.silu_assign(x)?;
        self.round_in_place(x)
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        self.inner.add_assign(x, y, scale)?;
        self.round_in_place(x)
    }

    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        self.inner.add_channel_bias_assign(x, bias)?;
        self.round_in_place(x)
    }

    fn activation_assign(
        &self,
        x: &mut Tensor,
        act: Activation,
        derivative: bool,
    ) -> Result<Option<Tensor>> {
        let d = self.inner.activation_assign(x, act, derivative)?;
        self.round_in_place(x)?;
        d.map(|d| self.rounded(Ok(d))).transpose()
    }

    fn mul_assign(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        self.inner.mul_assign(x, y)?;
        self.round_in_place(x)
    }

    fn avg_pool(&self, x: &Tensor, kernel: usize) -> Result<Tensor> {
        self.rounded(self.inner.avg_pool(x, kernel))
    }

    fn avg_pool_backward(
        &self,
        dy: &Tensor,
        kernel: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Tensor> {
        self.rounded(self.inner.avg_pool_backward(dy, kernel, in_h, in_w))
    }

    fn col2im(
        &self,
        dpatches: &Tensor,
        input: [usize; 4],
        kernel: (usize, usize),
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
        self.rounded(self.inner.col2im(dpatches, input, kernel, geometry))
    }

    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        self.inner.upsample_nearest(x, out_h, out_w)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.inner.concat_channels(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{normal_vec, NoiseStream};

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let diff: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum();
        let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (diff / norm).sqrt()
    }

    #[test]
    fn rounding_backend_stores_16_bit_values_and_attention_matches_f32_to_their_precision() {
        let (batch, lq, lk, heads, dim) = (2, 9, 13, 2, 8);
        let w = heads * dim;
        let q = normal_vec(1, NoiseStream::Custom(1 << 57), batch * lq * w);
        let k = normal_vec(2, NoiseStream::Custom(1 << 57), batch * lk * w);
        let v = normal_vec(3, NoiseStream::Custom(1 << 57), batch * lk * w);
        let cpu = CpuBackend::new();
        let reference = {
            let (q, k, v) = (
                cpu.tensor(&[batch, lq, w], q.clone()).unwrap(),
                cpu.tensor(&[batch, lk, w], k.clone()).unwrap(),
                cpu.tensor(&[batch, lk, w], v.clone()).unwrap(),
            );
            cpu.to_host(&cpu.attention(&q, &k, &v, heads).unwrap())
                .unwrap()
        };
        for (precision, lo, hi) in [
            (Precision::F32, 0.0, 1e-6),
            (Precision::F16, 1e-4, 3e-3),
            (Precision::BF16, 1e-3, 2e-2),
        ] {
            let rb = RoundingBackend::new(precision);
            let qt = rb.tensor(&[batch, lq, w], q.clone()).unwrap();
            for &x in qt.cpu_data().unwrap() {
                assert_eq!(x, precision.round(x));
            }
            let kt = rb.tensor(&[batch, lk, w], k.clone()).unwrap();
            let vt = rb.tensor(&[batch, lk, w], v.clone()).unwrap();
            let out = rb
                .to_host(&rb.attention(&qt, &kt, &vt, heads).unwrap())
                .unwrap();
            let err = rel_l2(&out, &reference);
            assert!(
                (lo..=hi).contains(&err),
                "{precision}: rel L2 {err:.3e} outside [{lo:e}, {hi:e}]"
            );
        }
    }
}
