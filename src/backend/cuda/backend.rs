//! The CUDA implementation of [`Backend`]: hand-written NVRTC kernels for norms,
//! attention and the elementwise ops, cuBLAS for the matrix products (convolutions
//! are im2col + cuBLAS). Every launch's result is checked; asynchronous faults
//! surface as an `Err` at the next synchronising call (`to_host`).

use std::collections::HashMap;
use std::sync::Mutex;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::device::CudaDevice;
use super::kernels::{
    attention_mma_launch, attention_scalar_launch, causal_attention_defines, conv_geometry_args,
    conv_mma_launch, conv_mma_tiles, elem_define, grid_stride_launch, group_norm_stats_launch,
    guided_step_launch, head_dim_define, layer_norm_launch, pool_geometry_args, KernelSource,
    Launch, ATTENTION, ATTENTION_MMA, CONV, CONV_MMA, ELEMENTWISE, GUIDED_STEP, NORM, POOL,
};
use crate::backend::guided_step::{check_step, kernel_tables};
use crate::backend::shapes::{self, ConvDims};
use crate::backend::{
    Activation, Backend, Conv2dGeometry, ConvEpilogue, SlotStep, StepBuffers, StepResult,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaData, Precision, Tensor};

/// im2col buffers are cut into pieces of at most this many elements.
const IM2COL_CHUNK_ELEMENTS: usize = 1 << 26;
/// Below this many output tiles the implicit GEMM (no split-K) leaves most of an
/// H100/H200's 132 SMs idle, and cuBLAS (which can split K) on im2col is used
/// instead. A first guess, to be tuned on a GPU (`selftest` times both paths).
const CONV_MMA_MIN_TILES: usize = 64;

pub struct CudaBackend {
    device: CudaDevice,
    precision: Precision,
    /// Fill every new output with all-ones bytes (NaN in each precision) before its
    /// kernel runs, so `selftest` catches elements a kernel fails to write.
    poison_outputs: bool,
    functions: Mutex<HashMap<(String, Vec<String>), CudaFunction>>,
}

fn drv<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| Error::Cuda(format!("{what}: {e:?}")))
}

/// The launch configuration of `launch` (static shared memory only).
fn config(launch: Launch) -> LaunchConfig {
    LaunchConfig {
        grid_dim: launch.grid,
        block_dim: (launch.block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride kernel over `n` elements (see [`grid_stride_launch`]).
fn grid_for(n: u64) -> LaunchConfig {
    config(grid_stride_launch(n))
}

impl CudaBackend {
    /// Opens GPU `ordinal`; every tensor this backend makes is stored in `precision`.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        let device = CudaDevice::open(ordinal)?;
        let (major, _) = device.compute_capability();
        if precision == Precision::BF16 && major < 8 {
            return Err(Error::invalid(
                "dtype",
                format!(
                    "bf16 needs compute capability 8.0 (Ampere) or newer; GPU {ordinal} is {}; use --dtype f16 or f32",
                    device.arch()
                ),
            ));
        }
        Ok(CudaBackend {
            device,
            precision,
            poison_outputs: false,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Makes every output buffer start as NaN (see `selftest`); costs one memset each.
    pub fn poison_outputs(mut self, on: bool) -> Self {
        self.poison_outputs = on;
        self
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the tensor-core attention kernel (mma.sync, sm_80+) serves a head
    /// dimension in this backend's precision.
    fn tensor_core_attention(&self, head_dim: usize) -> bool {
        self.precision != Precision::F32
            && self.device.compute_capability().0 >= 8
            && super::kernels::ATTENTION_MMA_HEAD_DIMS.contains(&head_dim)
    }

    /// `kernel` compiled for this backend's element type plus `defines`.
    fn function(
        &self,
        kernel: &KernelSource,
        mut defines: Vec<String>,
        name: &str,
    ) -> Result<CudaFunction> {
        defines.push(elem_define(self.precision));
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

    /// The device buffer of `t`, which must be a GPU tensor in this backend's precision.
    fn data<'t>(&self, t: &'t Tensor) -> Result<&'t CudaData> {
        let data = t.cuda_data()?;
        self.check_precision(data)?;
        Ok(data)
    }

    fn data_mut<'t>(&self, t: &'t mut Tensor) -> Result<&'t mut CudaData> {
        let data = t.cuda_data_mut()?;
        self.check_precision(data)?;
        Ok(data)
    }

    fn check_precision(&self, data: &CudaData) -> Result<()> {
        if data.precision() != self.precision {
            return Err(Error::Cuda(format!(
                "a {} tensor was given to the {} backend; tensors must be made by the backend that uses them",
                data.precision(),
                self.precision
            )));
        }
        Ok(())
    }

    /// A buffer every element of which the caller's kernel writes.
    fn output(&self, len: usize) -> Result<CudaData> {
        let stream = self.device.stream();
        let len = len.max(1);
        // SAFETY: callers only use this for buffers their next kernel fully overwrites.
        let data = unsafe {
            match self.precision {
                Precision::F32 => stream.alloc::<f32>(len).map(CudaData::F32),
                Precision::F16 => stream.alloc::<u16>(len).map(CudaData::F16),
                Precision::BF16 => stream.alloc::<u16>(len).map(CudaData::BF16),
            }
        };
        let bytes = len * self.precision.bytes_per_element();
        let data = data.map_err(|e| self.allocation_error(bytes, e))?;
        if self.poison_outputs {
            let (ptr, _guard) = data.device_ptr_at(0, stream);
            // SAFETY: `ptr` addresses the `bytes` bytes just allocated on this stream.
            drv("poisoning an output", unsafe {
                cudarc::driver::result::memset_d8_async(ptr, 0xff, bytes, stream.cu_stream())
            })?;
        }
        Ok(data)
    }

    /// An f32 scratch buffer (statistics), whatever the tensors' precision.
    fn scratch_f32(&self, len: usize) -> Result<cudarc::driver::CudaSlice<f32>> {
        // SAFETY: callers only use this for buffers their next kernel fully overwrites.
        unsafe { self.device.stream().alloc::<f32>(len.max(1)) }
            .map_err(|e| self.allocation_error(len.max(1) * 4, e))
    }

    /// Names how much was asked for and how much the device has free, so an
    /// out-of-memory error says by how much the request missed.
    fn allocation_error(&self, bytes: usize, e: cudarc::driver::DriverError) -> Error {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        let free = match self.device.memory() {
            Ok((free, total)) => format!("{:.1} MiB of {:.1} MiB free", mib(free), mib(total)),
            Err(_) => "free memory unknown".to_string(),
        };
        Error::Cuda(format!(
            "allocating {:.1} MiB of device memory failed ({free}): {e:?}",
            mib(bytes)
        ))
    }

    /// Row-major `c[m, n] = a[m, k] · b[k, n] + beta · c` through cuBLAS' GemmEx in
    /// this backend's element type with f32 accumulation (cuBLAS is column-major:
    /// it computes cᵀ = bᵀ · aᵀ).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &CudaData,
        a_offset: usize,
        b: &CudaData,
        c: &mut CudaData,
        c_offset: usize,
        beta: f32,
    ) -> Result<()> {
        let too_big = |v: usize| v > i32::MAX as usize;
        if too_big(m) || too_big(n) || too_big(k) {
            return Err(Error::Cuda(format!(
                "GEMM {m}×{k}×{n} exceeds cuBLAS' 32-bit sizes"
            )));
        }
        if a.len() < a_offset + m * k || b.len() < k * n || c.len() < c_offset + m * n {
            return Err(Error::Cuda(format!(
                "GEMM {m}×{k}×{n} does not fit its buffers ({}, {}, {} elements)",
                a.len(),
                b.len(),
                c.len()
            )));
        }
        let data_type = match self.precision {
            Precision::F32 => cudaDataType::CUDA_R_32F,
            Precision::F16 => cudaDataType::CUDA_R_16F,
            Precision::BF16 => cudaDataType::CUDA_R_16BF,
        };
        let stream = self.device.stream();
        let (a_ptr, _a_guard) = a.device_ptr_at(a_offset, stream);
        let (b_ptr, _b_guard) = b.device_ptr_at(0, stream);
        let (c_ptr, _c_guard) = c.device_ptr_mut_at(c_offset, stream);
        let alpha = 1.0f32;
        // SAFETY: the pointers address at least m·k, k·n and m·n elements of the
        // declared type (checked above); alpha and beta are f32 as COMPUTE_32F needs.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.device.blas().handle(),
                cublasOperation_t::CUBLAS_OP_N,
                cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                b_ptr as *const _,
                data_type,
                n as i32,
                a_ptr as *const _,
                data_type,
                k as i32,
                &beta as *const f32 as *const _,
                c_ptr as *mut _,
                data_type,
                n as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            Error::Cuda(format!(
                "cuBLAS GemmEx ({}) {m}×{k}×{n}: {e:?}",
                self.precision
            ))
        })
    }

    /// Every `cols`-wide row of `out` ← `row` (the bias a GEMM then accumulates onto).
    fn fill_rows(&self, out: &mut CudaData, row: &CudaData, cols: usize, total: u64) -> Result<()> {
        let f = self.function(&ELEMENTWISE, Vec::new(), "fill_rows")?;
        let cols = cols as u32;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(out).arg(row).arg(&cols).arg(&total);
        // SAFETY: out holds `total` elements, row holds `cols`.
        drv("launching fill_rows", unsafe { l.launch(grid_for(total)) }).map(|_| ())
    }

    /// `out[rows, n] = x[rows, k] · w[k, n] + bias`.
    fn matmul_bias(
        &self,
        x: &CudaData,
        rows: usize,
        k: usize,
        w: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<CudaData> {
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
                self.fill_rows(&mut out, self.data(b)?, n, (rows * n) as u64)?;
                1.0
            }
            None => 0.0,
        };
        self.gemm(rows, n, k, x, 0, self.data(w)?, &mut out, 0, beta)?;
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
        let rows_per_chunk = (IM2COL_CHUNK_ELEMENTS / k).clamp(1, rows);
        let mut patches = self.output(rows_per_chunk * k)?;
        let mut out = self.output(rows * cout)?;
        if let Some(b) = bias {
            self.fill_rows(&mut out, self.data(b)?, cout, (rows * cout) as u64)?;
        }
        let im2col = self.function(&CONV, Vec::new(), "im2col")?;
        let dims = conv_geometry_args(d, g);
        let mut first = 0usize;
        while first < rows {
            let count = rows_per_chunk.min(rows - first);
            let total = (count * k) as u64;
            let first_pixel = first as u64;
            {
                let mut l = self.device.stream().launch_builder(&im2col);
                l.arg(&mut patches).arg(self.data(x)?);
                for v in &dims {
                    l.arg(v);
                }
                l.arg(&first_pixel).arg(&total);
                // SAFETY: patches holds ≥ count·k floats; x holds n·h·w·c_in; indices are bounded by the dims.
                drv("launching im2col", unsafe { l.launch(grid_for(total)) })?;
            }
            let beta = if bias.is_some() { 1.0 } else { 0.0 };
            self.gemm(
                count,
                cout,
                k,
                &patches,
                0,
                self.data(weight)?,
                &mut out,
                first * cout,
                beta,
            )?;
            first += count;
        }
        Tensor::from_cuda(&d.out_shape(), out)
    }
}

impl CudaBackend {
    fn pointwise(d: &ConvDims, g: &Conv2dGeometry) -> bool {
        d.kernel_h == 1
            && d.kernel_w == 1
            && g.stride == 1
            && g.pad_top + g.pad_bottom + g.pad_left + g.pad_right == 0
    }

    /// Whether kernels/conv_mma.cu serves this convolution (a 1×1 convolution is a
    /// plain GEMM, which cuBLAS runs best).
    pub(crate) fn tensor_core_conv(&self, d: &ConvDims, g: &Conv2dGeometry) -> bool {
        self.precision != Precision::F32
            && self.device.compute_capability().0 >= 8
            && d.in_channels.is_multiple_of(8)
            && d.out_channels.is_multiple_of(8)
            && !Self::pointwise(d, g)
            && d.rows() <= u32::MAX as usize
            && (CONV_MMA_MIN_TILES..=i32::MAX as usize).contains(&conv_mma_tiles(d))
    }

    /// A convolution through cuBLAS: a 1×1 one directly, others by im2col.
    pub(crate) fn gemm_conv(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeometry,
        d: &ConvDims,
    ) -> Result<Tensor> {
        if Self::pointwise(d, g) {
            let out = self.matmul_bias(self.data(x)?, d.rows(), d.patch_len(), weight, bias)?;
            return Tensor::from_cuda(&d.out_shape(), out);
        }
        self.im2col_conv(x, weight, bias, g, d)
    }

    /// kernels/conv_mma.cu: the implicit GEMM with bias and epilogue, one block per
    /// output tile on a 1-D grid (channel tiles fastest, so the blocks reading the
    /// same strip of pixels run together).
    pub(crate) fn conv_mma(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeometry,
        d: &ConvDims,
        epilogue: ConvEpilogue,
    ) -> Result<Tensor> {
        let f = self.function(&CONV_MMA, Vec::new(), "conv_mma")?;
        let shape = d.out_shape();
        let mut out = self.output(shape.iter().product())?;
        let null = 0u64;
        let (residual, scale) = match epilogue.residual {
            Some((t, scale)) => (Some(self.data(t)?), scale),
            None => (None, 1.0f32),
        };
        let (batch, geometry, cout) = (
            d.batch as u32,
            conv_geometry_args(d, g),
            d.out_channels as u32,
        );
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out).arg(self.data(x)?).arg(self.data(weight)?);
        // Absent tensors are null pointers, which the kernel tests before reading.
        match bias {
            Some(b) => l.arg(self.data(b)?),
            None => l.arg(&null),
        };
        match epilogue.sample_bias {
            Some(t) => l.arg(self.data(t)?),
            None => l.arg(&null),
        };
        match residual {
            Some(r) => l.arg(r),
            None => l.arg(&null),
        };
        l.arg(&scale).arg(&batch);
        for v in &geometry {
            l.arg(v);
        }
        l.arg(&cout);
        let cfg = config(conv_mma_launch(d));
        // SAFETY: the shapes were checked (conv2d, conv_epilogue, the 8-channel
        // multiples); the kernel bounds every pixel by n·oh·ow and channel by cout.
        drv("launching conv_mma", unsafe { l.launch(cfg) })?;
        Tensor::from_cuda(&shape, out)
    }

    /// kernels/pool.cu's `name` (avg_pool or its backward) over `d`, from `x` into a
    /// new tensor of `out_shape`.
    fn launch_pool(
        &self,
        name: &str,
        x: &Tensor,
        d: &shapes::PoolDims,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        let total = out_shape.iter().product::<usize>();
        let mut out = self.output(total)?;
        let f = self.function(&POOL, Vec::new(), name)?;
        let dims = pool_geometry_args(d);
        let total = total as u64;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out).arg(self.data(x)?);
        for v in &dims {
            l.arg(v);
        }
        l.arg(&total);
        // SAFETY: out holds `total` elements; the kernel's indices stay inside the
        // pooling's input and output shapes, which the caller checked.
        drv(&format!("launching {name}"), unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(out_shape, out)
    }
}

impl CudaBackend {
    /// kernels/attention_mma.cu or kernels/attention.cu over checked dims; `causal`
    /// (query `i` sees keys `0..=i`) always takes attention.cu's causal build.
    fn launch_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d: &shapes::AttentionDims,
        causal: bool,
    ) -> Result<Tensor> {
        let mut out = self.output(q.len())?;
        let (b32, lq32, lk32, h32) = (
            d.batch as u32,
            d.q_len as u32,
            d.kv_len as u32,
            d.heads as u32,
        );
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        // Its grid's y and z count heads and images, each at most 65535.
        let tensor_cores = !causal
            && self.tensor_core_attention(d.head_dim)
            && d.batch <= 65535
            && d.heads <= 65535;
        let (kernel, name) = if tensor_cores {
            (&ATTENTION_MMA, "attention_mma")
        } else {
            (&ATTENTION, "attention_scalar")
        };
        let defines = if causal {
            causal_attention_defines(d.head_dim)
        } else {
            head_dim_define(d.head_dim)
        };
        let f = self.function(kernel, defines, name)?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out)
            .arg(self.data(q)?)
            .arg(self.data(k)?)
            .arg(self.data(v)?)
            .arg(&b32)
            .arg(&lq32)
            .arg(&lk32)
            .arg(&h32)
            .arg(&scale);
        let cfg = config(if tensor_cores {
            attention_mma_launch(d.head_dim, d.batch, d.heads, d.q_len)
        } else {
            attention_scalar_launch(d.batch, d.heads, d.q_len)
        });
        // SAFETY: the buffers hold the checked shapes; each kernel bounds its rows by
        // lq and lk and its columns by heads · HEAD_DIM.
        drv(&format!("launching {name}"), unsafe { l.launch(cfg) })?;
        Tensor::from_cuda(q.shape(), out)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        match self.precision {
            Precision::F32 => format!("cuda:{}", self.device.ordinal()),
            p => format!("cuda:{} ({p})", self.device.ordinal()),
        }
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
        let stream = self.device.stream();
        let bytes = data.len() * self.precision.bytes_per_element();
        let oom = |e| self.allocation_error(bytes, e);
        let device_data = match self.precision.encode_16(&data) {
            None => CudaData::F32(stream.clone_htod(&data).map_err(oom)?),
            Some(bits) if self.precision == Precision::F16 => {
                CudaData::F16(stream.clone_htod(&bits).map_err(oom)?)
            }
            Some(bits) => CudaData::BF16(stream.clone_htod(&bits).map_err(oom)?),
        };
        Tensor::from_cuda(shape, device_data)
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        let stream = self.device.stream();
        match self.data(x)? {
            CudaData::F32(s) => drv("copying from the GPU", stream.clone_dtoh(s)),
            CudaData::F16(s) | CudaData::BF16(s) => {
                let bits = drv("copying from the GPU", stream.clone_dtoh(s))?;
                self.precision
                    .decode_16(&bits)
                    .ok_or_else(|| Error::Cuda("16-bit data in an f32 backend".into()))
            }
        }
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        self.conv2d_epilogue(x, weight, bias, g, ConvEpilogue::default())
    }

    /// On tensor cores (f16/bf16, sm_80+, channel counts in multiples of 8, not a
    /// plain 1×1): one implicit-GEMM kernel that also applies the epilogue. Else the
    /// GEMM path and the epilogue as separate kernels.
    fn conv2d_epilogue(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeometry,
        epilogue: ConvEpilogue,
    ) -> Result<Tensor> {
        let d = shapes::conv2d(x, weight, bias, g)?;
        shapes::conv_epilogue(&epilogue, &d)?;
        if self.tensor_core_conv(&d, g) {
            return self.conv_mma(x, weight, bias, g, &d, epilogue);
        }
        let mut out = self.gemm_conv(x, weight, bias, g, &d)?;
        if let Some(sample_bias) = epilogue.sample_bias {
            self.add_channel_bias_assign(&mut out, sample_bias)?;
        }
        if let Some((residual, scale)) = epilogue.residual {
            self.add_assign(&mut out, residual, scale)?;
        }
        Ok(out)
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (rows, k, n) = shapes::linear(x, weight, bias)?;
        let out = self.matmul_bias(self.data(x)?, rows, k, weight, bias)?;
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
        let mut affine = self.scratch_f32(n * 2 * c)?;
        let stats = self.function(&NORM, Vec::new(), "group_norm_affine")?;
        let (pixels, c32, g32) = ((h * w) as u32, c as u32, groups as u32);
        let mut l = stream.launch_builder(&stats);
        l.arg(&mut affine)
            .arg(self.data(x)?)
            .arg(self.data(gamma)?)
            .arg(self.data(beta)?)
            .arg(&pixels)
            .arg(&c32)
            .arg(&g32)
            .arg(&eps);
        let cfg = config(group_norm_stats_launch(n, groups));
        // SAFETY: one block per (sample, group); affine holds n·2c floats.
        drv("launching group_norm_affine", unsafe { l.launch(cfg) })?;
        let total = x.len() as u64;
        let mut out = self.output(x.len())?;
        let apply = self.function(&NORM, Vec::new(), "apply_affine")?;
        let per_sample = (h * w * c) as u64;
        let silu = i32::from(silu);
        let mut l = stream.launch_builder(&apply);
        l.arg(&mut out)
            .arg(self.data(x)?)
            .arg(&affine)
            .arg(&per_sample)
            .arg(&c32)
            .arg(&silu)
            .arg(&total);
        // SAFETY: out and x hold `total` floats, affine n·2c.
        drv("launching apply_affine", unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(x.shape(), out)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let (rows, c) = shapes::layer_norm(x, gamma, beta)?;
        let mut out = self.output(x.len())?;
        let f = self.function(&NORM, Vec::new(), "layer_norm")?;
        let (cols, rows64) = (c as u32, rows as u64);
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out)
            .arg(self.data(x)?)
            .arg(self.data(gamma)?)
            .arg(self.data(beta)?)
            .arg(&cols)
            .arg(&rows64)
            .arg(&eps);
        let cfg = config(layer_norm_launch(rows64));
        // SAFETY: one warp per row; out and x hold rows·c floats.
        drv("launching layer_norm", unsafe { l.launch(cfg) })?;
        Tensor::from_cuda(x.shape(), out)
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let d = shapes::attention(q, k, v, heads)?;
        self.launch_attention(q, k, v, &d, false)
    }

    fn causal_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let d = shapes::causal_attention(q, k, v, heads)?;
        self.launch_attention(q, k, v, &d, true)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, half) = shapes::geglu(x)?;
        let total = (rows * half) as u64;
        let mut out = self.output(rows * half)?;
        let f = self.function(&ELEMENTWISE, Vec::new(), "geglu")?;
        let half32 = half as u32;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out).arg(self.data(x)?).arg(&half32).arg(&total);
        // SAFETY: out holds rows·half floats, x rows·2·half.
        drv("launching geglu", unsafe { l.launch(grid_for(total)) })?;
        Tensor::from_cuda(&shapes::with_last_dim(x.shape(), half), out)
    }

    fn silu_assign(&self, x: &mut Tensor) -> Result<()> {
        let total = x.len() as u64;
        let f = self.function(&ELEMENTWISE, Vec::new(), "silu_inplace")?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(self.data_mut(x)?).arg(&total);
        // SAFETY: x holds `total` floats.
        drv("launching silu_inplace", unsafe {
            l.launch(grid_for(total))
        })
        .map(|_| ())
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        shapes::same_shape("add", x, y)?;
        let total = x.len() as u64;
        let f = self.function(&ELEMENTWISE, Vec::new(), "add_scaled")?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(self.data_mut(x)?)
            .arg(self.data(y)?)
            .arg(&scale)
            .arg(&total);
        // SAFETY: x and y hold `total` floats.
        drv("launching add_scaled", unsafe { l.launch(grid_for(total)) }).map(|_| ())
    }

    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        let (_, h, w, c) = shapes::channel_bias(x, bias)?;
        let total = x.len() as u64;
        let per_sample = (h * w * c) as u64;
        let c32 = c as u32;
        let f = self.function(&ELEMENTWISE, Vec::new(), "channel_bias")?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(self.data_mut(x)?)
            .arg(self.data(bias)?)
            .arg(&per_sample)
            .arg(&c32)
            .arg(&total);
        // SAFETY: x holds n·h·w·c floats, bias n·c.
        drv("launching channel_bias", unsafe {
            l.launch(grid_for(total))
        })
        .map(|_| ())
    }

    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let (n, h, w, c) = shapes::upsample(x, out_h, out_w)?;
        let total = (n * out_h * out_w * c) as u64;
        let mut out = self.output(total as usize)?;
        let f = self.function(&ELEMENTWISE, Vec::new(), "upsample_nearest")?;
        let dims = [h, w, c, out_h, out_w].map(|v| v as u32);
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out).arg(self.data(x)?);
        for d in &dims {
            l.arg(d);
        }
        l.arg(&total);
        // SAFETY: out holds n·out_h·out_w·c floats; source indices are clamped to the input.
        drv("launching upsample_nearest", unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(&[n, out_h, out_w, c], out)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, w, ca, cb) = shapes::concat(a, b)?;
        let total = (n * h * w * (ca + cb)) as u64;
        let mut out = self.output(total as usize)?;
        let f = self.function(&ELEMENTWISE, Vec::new(), "concat_channels")?;
        let (ca32, cb32) = (ca as u32, cb as u32);
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut out)
            .arg(self.data(a)?)
            .arg(self.data(b)?)
            .arg(&ca32)
            .arg(&cb32)
            .arg(&total);
        // SAFETY: out holds n·h·w·(ca+cb) floats, a and b their own sizes.
        drv("launching concat_channels", unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(&[n, h, w, ca + cb], out)
    }

    fn activation_assign(
        &self,
        x: &mut Tensor,
        act: Activation,
        derivative: bool,
    ) -> Result<Option<Tensor>> {
        let total = x.len() as u64;
        let name = match (act, derivative) {
            (Activation::Silu, false) => "silu_inplace",
            (Activation::Silu, true) => "silu_with_derivative",
            (Activation::Relu, false) => "relu_inplace",
            (Activation::Relu, true) => "relu_with_derivative",
            (Activation::Gelu, false) => "gelu_inplace",
            (Activation::Gelu, true) => "gelu_with_derivative",
            (Activation::QuickGelu, false) => "quick_gelu_inplace",
            (Activation::QuickGelu, true) => "quick_gelu_with_derivative",
        };
        let f = self.function(&ELEMENTWISE, Vec::new(), name)?;
        let mut d = if derivative {
            Some(self.output(x.len())?)
        } else {
            None
        };
        let shape = x.shape().to_vec();
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(self.data_mut(x)?);
        if let Some(d) = d.as_mut() {
            l.arg(d);
        }
        l.arg(&total);
        // SAFETY: x (and d) hold `total` elements.
        drv(&format!("launching {name}"), unsafe {
            l.launch(grid_for(total))
        })?;
        d.map(|d| Tensor::from_cuda(&shape, d)).transpose()
    }

    fn mul_assign(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        shapes::same_shape("mul", x, y)?;
        let total = x.len() as u64;
        let f = self.function(&ELEMENTWISE, Vec::new(), "mul_inplace")?;
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(self.data_mut(x)?).arg(self.data(y)?).arg(&total);
        // SAFETY: x and y hold `total` elements.
        drv("launching mul_inplace", unsafe {
            l.launch(grid_for(total))
        })
        .map(|_| ())
    }

    fn avg_pool(&self, x: &Tensor, kernel: usize) -> Result<Tensor> {
        let d = shapes::avg_pool(x, kernel)?;
        self.launch_pool("avg_pool", x, &d, &d.out_shape())
    }

    fn avg_pool_backward(
        &self,
        dy: &Tensor,
        kernel: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Tensor> {
        let d = shapes::avg_pool_backward(dy, kernel, in_h, in_w)?;
        self.launch_pool("avg_pool_backward", dy, &d, &d.in_shape())
    }

    fn col2im(
        &self,
        dpatches: &Tensor,
        input: [usize; 4],
        kernel: (usize, usize),
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
        let d = shapes::col2im(dpatches, input, kernel, geometry)?;
        let total = input.iter().product::<usize>() as u64;
        let mut dx = self.output(total as usize)?;
        let f = self.function(&CONV, Vec::new(), "col2im")?;
        let dims = conv_geometry_args(&d, geometry);
        let mut l = self.device.stream().launch_builder(&f);
        l.arg(&mut dx).arg(self.data(dpatches)?);
        for v in &dims {
            l.arg(v);
        }
        l.arg(&total);
        // SAFETY: dx holds the input's elements, dpatches [n·oh·ow, kh·kw·c_in] (checked).
        drv("launching col2im", unsafe { l.launch(grid_for(total)) })?;
        Tensor::from_cuda(&input, dx)
    }

    fn timestep_embedding(
        &self,
        timesteps: &[f32],
        frequencies: &[f32],
        dim: usize,
        flip_sin_to_cos: bool,
    ) -> Result<Tensor> {
        shapes::timestep_embedding(frequencies, dim)?;
        let stream = self.device.stream();
        let upload = |values: &[f32]| {
            let values = if values.is_empty() {
                &[0.0][..]
            } else {
                values
            };
            stream
                .clone_htod(values)
                .map_err(|e| self.allocation_error(values.len() * 4, e))
        };
        let (t, f) = (upload(timesteps)?, upload(frequencies)?);
        let total = (timesteps.len() * dim) as u64;
        let mut out = self.output(total as usize)?;
        let func = self.function(&ELEMENTWISE, Vec::new(), "timestep_embedding")?;
        let (half, dim32, flip) = (
            frequencies.len() as u32,
            dim as u32,
            i32::from(flip_sin_to_cos),
        );
        let mut l = stream.launch_builder(&func);
        l.arg(&mut out)
            .arg(&t)
            .arg(&f)
            .arg(&half)
            .arg(&dim32)
            .arg(&flip)
            .arg(&total);
        // SAFETY: out holds rows·dim elements; t and f hold the rows and `half` values.
        drv("launching timestep_embedding", unsafe {
            l.launch(grid_for(total))
        })?;
        Tensor::from_cuda(&[timesteps.len(), dim], out)
    }

    fn prefers_fused_step(&self) -> bool {
        true
    }

    /// kernels/guided_step.cu, one block per slot; the host buffers go up as f32
    /// and the next latents and x̂₀ come back.
    fn guided_step(
        &self,
        model_out: &Tensor,
        slots: &[SlotStep],
        buffers: &StepBuffers,
    ) -> Result<StepResult> {
        let rows = model_out.shape().first().copied().unwrap_or(0);
        let per = check_step(model_out.len(), rows, slots, buffers)?;
        let total = slots.len() * per;
        let stream = self.device.stream();
        let upload = |values: &[f32]| {
            stream
                .clone_htod(values)
                .map_err(|e| self.allocation_error(values.len() * 4, e))
        };
        // Absent buffers are never read (their weights are 0): one-element stand-ins.
        let optional = |values: Option<&[f32]>| upload(values.unwrap_or(&[0.0]));
        let latents = upload(buffers.latents)?;
        let history = optional(buffers.history)?;
        let noise = optional(buffers.noise)?;
        let shift = optional(buffers.shift)?;
        let (coeffs, row_table) = kernel_tables(slots)?;
        let coeffs = upload(&coeffs)?;
        let row_table = stream
            .clone_htod(&row_table)
            .map_err(|e| self.allocation_error(slots.len() * 8, e))?;
        let mut next = self.scratch_f32(total)?;
        let mut x0 = self.scratch_f32(total)?;
        let f = self.function(&GUIDED_STEP, Vec::new(), "guided_step")?;
        let per32 = u32::try_from(per)
            .map_err(|_| Error::Cuda(format!("{per} values per sample exceed 32 bits")))?;
        let mut l = stream.launch_builder(&f);
        l.arg(&mut next)
            .arg(&mut x0)
            .arg(self.data(model_out)?)
            .arg(&latents)
            .arg(&history)
            .arg(&noise)
            .arg(&shift)
            .arg(&coeffs)
            .arg(&row_table)
            .arg(&per32);
        let cfg = config(guided_step_launch(slots.len()));
        // SAFETY: check_step verified every row index and buffer length; the kernel
        // reads history, noise and shift only where their weight is non-zero, which
        // check_step ties to a full buffer.
        drv("launching guided_step", unsafe { l.launch(cfg) })?;
        Ok(StepResult {
            next: drv("copying the next latents", stream.clone_dtoh(&next))?,
            x0: drv("copying x̂₀", stream.clone_dtoh(&x0))?,
        })
    }
}
