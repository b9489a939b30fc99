//! The CUDA implementation of [`Backend`]: hand-written NVRTC kernels for norms,
//! attention and the elementwise ops, cuBLAS for the matrix products (convolutions
//! are im2col + cuBLAS). Every launch's result is checked; asynchronous faults
//! surface as an `Err` at the next synchronising call (`to_host`).

use std::collections::HashMap;
use std::sync::Mutex;

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use super::device::CudaDevice;
use super::kernels::{head_dim_define, KernelSource, ATTENTION, CONV, ELEMENTWISE, NORM};
use crate::backend::shapes::{self, ConvDims};
use crate::backend::{Backend, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const BLOCK: u32 = 256;
/// Enough blocks to fill an H100/H200-class GPU several times over; grid-stride
/// loops cover the rest.
const MAX_BLOCKS: u64 = 132 * 16;
/// im2col buffers are cut into pieces of at most this many floats (256 MiB).
const IM2COL_CHUNK_FLOATS: usize = 1 << 26;

pub struct CudaBackend {
    device: CudaDevice,
    functions: Mutex<HashMap<(String, Vec<String>), CudaFunction>>,
}

fn drv<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| Error::Cuda(format!("{what}: {e:?}")))
}

fn grid_for(n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as u64).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend {
            device: CudaDevice::open(ordinal)?,
            functions: Mutex::new(HashMap::new()),
        })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    fn function(
        &self,
        kernel: &KernelSource,
        defines: Vec<String>,
        name: &str,
    ) -> Result<CudaFunction> {
        let key = (name.to_string(), defines);
        let mut cache = self
            .functions
            .lock()
            .map_err(|_| Error::Cuda("kernel function cache lock poisoned".into()))?;
        if let Some(f) = cache.get(&key) {
            return Ok(f.clone());
        }
        let f = self.device.function(kernel, &key.1, name)?;
        cache.insert(key, f.clone());
        Ok(f)
    }

    /// A buffer every element of which the caller's kernel writes.
    fn output(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: callers only use this for buffers their next kernel fully overwrites.
        unsafe { self.device.stream().alloc::<f32>(len.max(1)) }
            .map_err(|e| self.allocation_error(len, e))
    }

    /// Names how much was asked for and how much the device has free, so an
    /// out-of-memory error says by how much the request missed.
    fn allocation_error(&self, len: usize, e: cudarc::driver::DriverError) -> Error {
        let asked = (len.max(1) * std::mem::size_of::<f32>()) as f64 / (1u64 << 20) as f64;
        let free = match self.device.memory() {
            Ok((free, total)) => format!(
                "{:.1} MiB of {:.1} MiB free",
                free as f64 / (1u64 << 20) as f64,
                total as f64 / (1u64 << 20) as f64
            ),
            Err(_) => "free memory unknown".to_string(),
        };
        Error::Cuda(format!(
            "allocating {asked:.1} MiB of device memory failed ({free}): {e:?}"
        ))
    }

    /// Row-major `c[m, n] = a[m, k] · b[k, n] + beta · c` through cuBLAS (which is
    /// column-major: it computes cᵀ = bᵀ · aᵀ).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &CudaSlice<f32>,
        a_offset: usize,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
        c_offset: usize,
        beta: f32,
    ) -> Result<()> {
        let too_big = |v: usize| v > i32::MAX as usize;
        if too_big(m) || too_big(n) || too_big(k) {
            return Err(Error::Cuda(format!(
                "GEMM {m}×{k}×{n} exceeds cuBLAS' 32-bit sizes"
            )));
        }
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: n as i32,
            ldb: k as i32,
            beta,
            ldc: n as i32,
        };
        let a_view = a.slice(a_offset..a_offset + m * k);
        let mut c_view = c.slice_mut(c_offset..c_offset + m * n);
        // SAFETY: the views hold exactly m·k, k·n (checked by the callers' shapes)
        // and m·n floats, matching the configuration.
        unsafe { self.device.blas().gemm(cfg, b, &a_view, &mut c_view) }
            .map_err(|e| Error::Cuda(format!("cuBLAS sgemm {m}×{k}×{n}: {e:?}")))
    }

    /// Every `cols`-wide row of `out` ← `row` (the bias a GEMM then accumulates onto).
    fn fill_rows(
        &self,
        out: &mut CudaSlice<f32>,
        row: &CudaSlice<f32>,
        cols: usize,
        total: u64,
    ) -> Result<()> {
        let f = self.function(&ELEMENTWISE, Vec::new(), "fill_rows_f32")?;
        let cols = cols as u32;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(out).arg(row).arg(&cols).arg(&total);
        // SAFETY: out holds `total` floats, row holds `cols`.
        drv("launching fill_rows_f32", unsafe {
            l.launch(grid_for(total))
        })
        .map(|_| ())
    }

    /// `out[rows, n] = x[rows, k] · w[k, n] + bias`.
    fn matmul_bias(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        k: usize,
        w: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<CudaSlice<f32>> {
        // A linear weight is [k, n], a 1×1 convolution's [1, 1, k, n]: the same matrix.
        let n = w.shape().last().copied().unwrap_or(0);
        if w.len() != k * n {
            return Err(Error::shape(
                "matmul",
                format!("weight {:?} is not a [{k}, n] matrix", w.shape()),
            ));
        }
        let mut out = self.output(rows * n)?;
        let beta = match bias {
            Some(b) => {
                shapes::vector("matmul", "bias", b, n)?;
                self.fill_rows(&mut out, b.cuda_data()?, n, (rows * n) as u64)?;
                1.0
            }
            None => 0.0,
        };
        self.gemm(rows, n, k, x, 0, w.cuda_data()?, &mut out, 0, beta)?;
        Ok(out)
    }

    /// A general convolution: im2col patches (in bounded pieces, so a large input
    /// never needs more than one such buffer), each multiplied by the weight matrix.
    fn im2col_conv(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeometry,
        d: &ConvDims,
    ) -> Result<Tensor> {
        let (rows, k, cout) = (d.rows(), d.patch_len(), d.out_channels);
        let rows_per_chunk = (IM2COL_CHUNK_FLOATS / k).clamp(1, rows);
        let mut patches = self.output(rows_per_chunk * k)?;
        let mut out = self.output(rows * cout)?;
        if let Some(b) = bias {
            self.fill_rows(&mut out, b.cuda_data()?, cout, (rows * cout) as u64)?;
        }
        let im2col = self.function(&CONV, Vec::new(), "im2col_f32")?;
        let dims = [
            d.height,
            d.width,
            d.in_channels,
            d.kernel_h,
            d.kernel_w,
            g.stride,
            g.pad_top,
            g.pad_left,
            d.out_height,
            d.out_width,
        ]
        .map(|v| v as u32);
        let mut first = 0usize;
        while first < rows {
            let count = rows_per_chunk.min(rows - first);
            let total = (count * k) as u64;
            let first_pixel = first as u64;
            {
                let mut l = self.device.stream().launch_builder(&im2col);
                l.arg(&mut patches).arg(x.cuda_data()?);
                for v in &dims {
                    l.arg(v);
                }
                l.arg(&first_pixel).arg(&total);
                // SAFETY: patches holds ≥ count·k floats; x holds n·h·w·c_in; indices are bounded by the dims.
                drv("launching im2col_f32", unsafe { l.launch(grid_for(total)) })?;
            }
            let beta = if bias.is_some() { 1.0 } else { 0.0 };
            self.gemm(
                count,
                cout,
                k,
                &patches,
                0,
                weight.cuda_data()?,
                &mut out,
                first * cout,
                beta,
            )?;
            first += count;
        }
        Tensor::from_cuda(&d.out_shape(), out)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda:{}", self.device.ordinal())
    }

    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "shape {shape:?} needs {expected} elements, got {}",
                    data.len()
                ),
            ));
        }
        let slice = self
            .device
            .stream()
            .clone_htod(&data)
            .map_err(|e| self.allocation_error(data.len(), e))?;
        Tensor::from_cuda(shape, slice)
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        drv(
            "copying from the GPU",
            self.device.stream().clone_dtoh(x.cuda_data()?),
        )
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        let d = shapes::conv2d(x, weight, bias, g)?;
        let (rows, k) = (d.rows(), d.patch_len());
        let pointwise = d.kernel_h == 1
            && d.kernel_w == 1
            && g.stride == 1
            && g.pad_top + g.pad_bottom + g.pad_left + g.pad_right == 0;
        if pointwise {
            let out = self.matmul_bias(x.cuda_data()?, rows, k, weight, bias)?;
            return Tensor::from_cuda(&d.out_shape(), out);
        }
        self.im2col_conv(x, weight, bias, g, &d)
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (rows, k, n) = shapes::linear(x, weight, bias)?;
        let out = self.matmul_bias(x.cuda_data()?, rows, k, weight, bias)?;
        Tensor::from_cuda(&shapes::with_last_dim(x.shape(), n), out)
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
        let (n, h, w, c) = shapes::group_norm(x, groups, gamma, beta)?;
        let stream = self.device.stream();
        let mut affine = self.output(n * 2 * c)?;
        let stats = self.function(&NORM, Vec::new(), "group_norm_affine_f32")?;
        let (pixels, c32, g32) = ((h * w) as u32, c as u32, groups as u32);
        let mut l = stream.launch_builder(&stats);
        l.arg(&mut affine)
            .arg(x.cuda_data()?)
            .arg(gamma.cuda_data()?)
            .arg(beta.cuda_data()?)
            .arg(&pixels)
            .arg(&c32)
            .arg(&g32)
            .arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: ((n * groups) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block per (sample, group); affine holds n·2c floats.
        drv("launching group_norm_affine_f32", unsafe { l.launch(cfg) })?;
        let total = x.len() as u64;
        let mut out = self.output(x.len())?;
        let apply = self.function(&NORM, Vec::new(), "apply_affine_f32")?;
        let per_sample = (h * w * c) as u64;
        let silu = i32::from(silu);
        let mut l = stream.launch_builder(&apply);
        l.arg(&mut out)
            .arg(x.cuda_data()?)
            .arg(&affine)
            .arg(&per_sample)
            .arg(&c32)
            .arg(&silu)
            .arg(&total);
        // SAFETY: out and x hold `total` floats, affine n·2c.
        drv("launching apply_affine_f32", unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(x.shape(), out)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let (rows, c) = shapes::layer_norm(x, gamma, beta)?;
        let mut out = self.output(x.len())?;
        let f = self.function(&NORM, Vec::new(), "layer_norm_f32")?;
        let (cols, rows64) = (c as u32, rows as u64);
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out)
            .arg(x.cuda_data()?)
            .arg(gamma.cuda_data()?)
            .arg(beta.cuda_data()?)
            .arg(&cols)
            .arg(&rows64)
            .arg(&eps);
        let warps_per_block = 4u64;
        let cfg = LaunchConfig {
            grid_dim: (rows64.div_ceil(warps_per_block).max(1) as u32, 1, 1),
            block_dim: (32 * warps_per_block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one warp per row; out and x hold rows·c floats.
        drv("launching layer_norm_f32", unsafe { l.launch(cfg) })?;
        Tensor::from_cuda(x.shape(), out)
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let d = shapes::attention(q, k, v, heads)?;
        let f = self.function(&ATTENTION, head_dim_define(d.head_dim), "attention_f32")?;
        let mut out = self.output(q.len())?;
        let (b32, lq32, lk32, h32) = (
            d.batch as u32,
            d.q_len as u32,
            d.kv_len as u32,
            d.heads as u32,
        );
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out)
            .arg(q.cuda_data()?)
            .arg(k.cuda_data()?)
            .arg(v.cuda_data()?)
            .arg(&b32)
            .arg(&lq32)
            .arg(&lk32)
            .arg(&h32)
            .arg(&scale);
        let warps = (d.batch * d.heads * d.q_len) as u64;
        let cfg = LaunchConfig {
            grid_dim: (warps.div_ceil(4) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one warp per (batch, head, query); buffers match the checked shapes.
        drv("launching attention_f32", unsafe { l.launch(cfg) })?;
        Tensor::from_cuda(q.shape(), out)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, half) = shapes::geglu(x)?;
        let total = (rows * half) as u64;
        let mut out = self.output(rows * half)?;
        let f = self.function(&ELEMENTWISE, Vec::new(), "geglu_f32")?;
        let half32 = half as u32;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out).arg(x.cuda_data()?).arg(&half32).arg(&total);
        // SAFETY: out holds rows·half floats, x rows·2·half.
        drv("launching geglu_f32", unsafe { l.launch(grid_for(total)) })?;
        Tensor::from_cuda(&shapes::with_last_dim(x.shape(), half), out)
    }

    fn silu_assign(&self, x: &mut Tensor) -> Result<()> {
        let total = x.len() as u64;
        let f = self.function(&ELEMENTWISE, Vec::new(), "silu_f32")?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(x.cuda_data_mut()?).arg(&total);
        // SAFETY: x holds `total` floats.
        drv("launching silu_f32", unsafe { l.launch(grid_for(total)) }).map(|_| ())
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        shapes::same_shape("add", x, y)?;
        let total = x.len() as u64;
        let f = self.function(&ELEMENTWISE, Vec::new(), "add_scaled_f32")?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(x.cuda_data_mut()?)
            .arg(y.cuda_data()?)
            .arg(&scale)
            .arg(&total);
        // SAFETY: x and y hold `total` floats.
        drv("launching add_scaled_f32", unsafe {
            l.launch(grid_for(total))
        })
        .map(|_| ())
    }

    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        let (_, h, w, c) = shapes::channel_bias(x, bias)?;
        let total = x.len() as u64;
        let per_sample = (h * w * c) as u64;
        let c32 = c as u32;
        let f = self.function(&ELEMENTWISE, Vec::new(), "channel_bias_f32")?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(x.cuda_data_mut()?)
            .arg(bias.cuda_data()?)
            .arg(&per_sample)
            .arg(&c32)
            .arg(&total);
        // SAFETY: x holds n·h·w·c floats, bias n·c.
        drv("launching channel_bias_f32", unsafe {
            l.launch(grid_for(total))
        })
        .map(|_| ())
    }

    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let (n, h, w, c) = shapes::upsample(x, out_h, out_w)?;
        let total = (n * out_h * out_w * c) as u64;
        let mut out = self.output(total as usize)?;
        let f = self.function(&ELEMENTWISE, Vec::new(), "upsample_nearest_f32")?;
        let dims = [h, w, c, out_h, out_w].map(|v| v as u32);
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out).arg(x.cuda_data()?);
        for d in &dims {
            l.arg(d);
        }
        l.arg(&total);
        // SAFETY: out holds n·out_h·out_w·c floats; source indices are clamped to the input.
        drv("launching upsample_nearest_f32", unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(&[n, out_h, out_w, c], out)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, w, ca, cb) = shapes::concat(a, b)?;
        let total = (n * h * w * (ca + cb)) as u64;
        let mut out = self.output(total as usize)?;
        let f = self.function(&ELEMENTWISE, Vec::new(), "concat_channels_f32")?;
        let (ca32, cb32) = (ca as u32, cb as u32);
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out)
            .arg(a.cuda_data()?)
            .arg(b.cuda_data()?)
            .arg(&ca32)
            .arg(&cb32)
            .arg(&total);
        // SAFETY: out holds n·h·w·(ca+cb) floats, a and b their own sizes.
        drv("launching concat_channels_f32", unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(&[n, h, w, ca + cb], out)
    }
}
