//! The CUDA kernels' own source, run on the CPU: each `kernels/*.cu` file is compiled
//! as C++20 with `tests/kernels_on_host/prelude.h` in place of `kernels/prelude.cuh`
//! (one OS thread per CUDA thread, real barriers, the PTX ISA's fragment layouts for
//! `ldmatrix` and `mma.sync`, `cp.async` landing as late or as early as the hardware
//! may), launched with the CUDA backend's grids (`backend::cuda::kernels`' launch
//! geometry) and arguments, and checked against the CPU backend: every kernel, in every
//! element type the backend builds it for (f32, f16, bf16; the tensor-core kernels in
//! f16 and bf16), attention at every head dimension it is specialised for. This checks the kernels' indexing, tiling, masking, swizzles and
//! epilogues on every machine; what only a GPU can show (the instructions' real
//! semantics and timing) is left to `diffsteer selftest --device cuda`.
//!
//! Needs a C++20 compiler: `$CXX`, else `g++`. Built with the `cuda` feature, for the
//! launch geometry the CUDA backend uses (`backend::cuda::kernels`).
#![cfg(feature = "cuda")]

mod common;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use common::rel_l2;
use diffsteer::backend::cuda::kernels::{
    attention_mma_launch, attention_scalar_launch, conv_geometry_args, conv_mma_launch,
    elem_define, grid_stride_launch, grid_stride_launch_capped, group_norm_stats_launch,
    guided_step_launch, head_dim_define, layer_norm_launch, pool_geometry_args, Launch,
    ATTENTION_HEAD_DIMS, ATTENTION_MMA_HEAD_DIMS,
};
use diffsteer::backend::guided_step::{guided_step_on_host, kernel_tables};
use diffsteer::backend::rounding::RoundingBackend;
use diffsteer::backend::{
    shapes, Activation, Backend, Conv2dGeometry, ConvEpilogue, SlotStep, StepBuffers,
};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::schedule::LinearStep;
use diffsteer::tensor::Precision;
use diffsteer::CpuBackend;

const HOST_PRELUDE: &str = include_str!("kernels_on_host/prelude.h");

/// One kernel file compiled for the host with a set of defines, loaded.
struct HostModule {
    library: libloading::Library,
    name: String,
}

type LaunchFn = unsafe extern "C" fn(u32, u32, u32, u32, u32, u32, i32);
type BlockBeginFn = unsafe extern "C" fn(u32, u32, u32);
type ThreadBeginFn = unsafe extern "C" fn(u32);
type PlainFn = unsafe extern "C" fn();
type TakeErrorFn = unsafe extern "C" fn() -> *const std::ffi::c_char;

/// When the `cp.async` copies of a launch land (see prelude.h).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Copies {
    AtWait,
    AtIssue,
}

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".to_string())
}

/// Compiles `kernels/<file>.cu` with `defines` into a shared library under the target
/// folder (kept between runs, named by a hash of everything that goes in) and loads it.
fn module(file: &str, defines: &[String]) -> Arc<HostModule> {
    static MODULES: OnceLock<Mutex<HashMap<String, Arc<HostModule>>>> = OnceLock::new();
    let key = format!("{file} {}", defines.join(" "));
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(m) = modules.get(&key) {
        return m.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source_path = root.join("kernels").join(format!("{file}.cu"));
    let source = std::fs::read_to_string(&source_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", source_path.display()));
    let flags = ["-std=c++20", "-O1", "-fPIC", "-shared", "-pthread"];
    let mut hasher = DefaultHasher::new();
    (HOST_PRELUDE, &source, defines, flags, compiler()).hash(&mut hasher);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernels_on_host");
    std::fs::create_dir_all(&dir).expect("creating the module folder");
    let stem = format!("{file}-{:016x}", hasher.finish());
    let library_path = dir.join(format!("{stem}.so"));
    if !library_path.exists() {
        let unit = dir.join(format!("{stem}.cpp"));
        let prelude = root.join("tests/kernels_on_host/prelude.h");
        std::fs::write(
            &unit,
            format!(
                "#include \"{}\"\n#line 1 \"kernels/{file}.cu\"\n{source}",
                prelude.display()
            ),
        )
        .expect("writing the C++ unit");
        // A unique name first, then a rename: tests running at once may build the same one.
        let partial = dir.join(format!("{stem}.{}.partial", std::process::id()));
        let output = Command::new(compiler())
            .args(flags)
            .args(defines.iter().map(|d| format!("-D{d}")))
            .arg("-o")
            .arg(&partial)
            .arg(&unit)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running the C++ compiler `{}` (set CXX to a C++20 compiler): {e}",
                    compiler()
                )
            });
        assert!(
            output.status.success(),
            "compiling kernels/{file}.cu for the host with {defines:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::rename(&partial, &library_path).expect("renaming the built module");
    }
    // SAFETY: the library is the one just built from our own sources; its static
    // initialisers only set plain globals.
    let library = unsafe { libloading::Library::new(&library_path) }
        .unwrap_or_else(|e| panic!("loading {}: {e}", library_path.display()));
    let m = Arc::new(HostModule {
        library,
        name: key.clone(),
    });
    modules.insert(key, m.clone());
    m
}

impl HostModule {
    fn symbol<T: Copy>(&self, name: &str) -> T {
        // SAFETY: every symbol asked for is declared with the matching signature by
        // the caller (prelude.h's launcher functions, or a kernel's parameter list).
        unsafe {
            *self
                .library
                .get::<T>(name.as_bytes())
                .unwrap_or_else(|e| panic!("{}: no symbol {name}: {e}", self.name))
        }
    }

    /// Runs a launch of `launch.grid` blocks of `launch.block` threads (the CUDA
    /// backend's geometry, from `backend::cuda::kernels`): each thread calls `kernel`
    /// (which calls the kernel function with its arguments). Blocks run one after
    /// another; a kernel-side error (misaligned access) fails the test.
    fn launch(&self, launch: Launch, copies: Copies, kernel: &(dyn Fn() + Sync)) {
        let Launch { grid, block } = launch;
        // The launcher's globals are per library, and tests run at once: one launch at a time.
        static LAUNCH: Mutex<()> = Mutex::new(());
        let _one = LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
        let launch: LaunchFn = self.symbol("shim_launch");
        let block_begin: BlockBeginFn = self.symbol("shim_block_begin");
        let thread_begin: ThreadBeginFn = self.symbol("shim_thread_begin");
        let thread_end: PlainFn = self.symbol("shim_thread_end");
        let block_end: PlainFn = self.symbol("shim_block_end");
        let take_error: TakeErrorFn = self.symbol("shim_take_error");
        // SAFETY (every call below): the launcher's protocol, one launch at a time,
        // each block begun before its threads and ended after they are joined.
        unsafe {
            launch(
                grid.0,
                grid.1,
                grid.2,
                block,
                1,
                1,
                (copies == Copies::AtIssue) as i32,
            )
        };
        for z in 0..grid.2 {
            for y in 0..grid.1 {
                for x in 0..grid.0 {
                    unsafe { block_begin(x, y, z) };
                    std::thread::scope(|s| {
                        for t in 0..block {
                            s.spawn(move || unsafe {
                                thread_begin(t);
                                kernel();
                                thread_end();
                            });
                        }
                    });
                    unsafe { block_end() };
                }
            }
        }
        let error = unsafe { take_error() };
        if !error.is_null() {
            // SAFETY: a NUL-terminated string in the library's static buffer.
            let text = unsafe { std::ffi::CStr::from_ptr(error) };
            panic!("{}: {}", self.name, text.to_string_lossy());
        }
    }
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    normal_vec(seed, NoiseStream::Custom(1 << 57), len)
}

/// A buffer of `len` elements stored in `precision` (f32, or the 16-bit patterns of
/// f16 / bf16), 16-byte aligned as cudaMalloc'd memory is.
struct Buffer {
    precision: Precision,
    words: Vec<u128>,
    len: usize,
}

impl Buffer {
    fn element_bytes(precision: Precision) -> usize {
        match precision {
            Precision::F32 => 4,
            _ => 2,
        }
    }

    fn zeroed(precision: Precision, len: usize) -> Self {
        Buffer {
            precision,
            words: vec![0u128; (len * Self::element_bytes(precision)).div_ceil(16)],
            len,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len * Self::element_bytes(self.precision);
        // SAFETY: the u128 storage holds at least `n` bytes and u8 has no invalid values.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), n) }
    }

    /// `values` stored in `precision` (rounded to it first).
    fn encode(precision: Precision, values: &[f32]) -> Self {
        let mut b = Buffer::zeroed(precision, values.len());
        let bytes = b.bytes_mut();
        match precision {
            Precision::F32 => {
                for (chunk, v) in bytes.chunks_exact_mut(4).zip(values) {
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
            p => {
                let bits = p.encode_16(values).expect("a 16-bit precision");
                for (chunk, v) in bytes.chunks_exact_mut(2).zip(bits) {
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        b
    }

    /// `len` NaNs: they poison every output element the kernel fails to write.
    fn nan(precision: Precision, len: usize) -> Self {
        Buffer::encode(precision, &vec![f32::NAN; len])
    }

    fn decode(&mut self) -> Vec<f32> {
        let precision = self.precision;
        let bytes = self.bytes_mut();
        match precision {
            Precision::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            p => {
                let bits: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                p.decode_16(&bits).expect("a 16-bit precision")
            }
        }
    }

    fn addr(&mut self) -> usize {
        self.words.as_mut_ptr() as usize
    }
}

fn rounded(precision: Precision, values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| precision.round(v)).collect()
}

/// DESIGN.md's bound for f32 kernels against the CPU backend (relative L2).
const F32_BOUND: f64 = 1e-5;

/// The DESIGN.md rule for 16-bit kernels: relative L2 against the f32 reference at most
/// twice that of the plain same-precision implementation.
fn assert_within_plain(what: &str, out: &[f32], reference: &[f32], plain: &[f32]) -> (f64, f64) {
    let err = rel_l2(out, reference);
    let plain_err = rel_l2(plain, reference);
    assert!(
        err.is_finite() && err <= 2.0 * plain_err,
        "{what}: relative L2 {err:.3e} against f32, more than twice the plain {plain_err:.3e}"
    );
    (err, plain_err)
}

/// One op's inputs, rounded to `precision`, as host values and as kernel buffers.
struct Inputs {
    precision: Precision,
    values: Vec<Vec<f32>>,
    buffers: Vec<Buffer>,
}

impl Inputs {
    fn new(precision: Precision, lens: &[usize], seed: u64) -> Self {
        let values: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| rounded(precision, &random(n, seed + i as u64)))
            .collect();
        let buffers = values
            .iter()
            .map(|v| Buffer::encode(precision, v))
            .collect();
        Inputs {
            precision,
            values,
            buffers,
        }
    }

    fn addr(&mut self, i: usize) -> usize {
        self.buffers[i].addr()
    }

    /// A fresh copy of input `i` in the kernel's precision (for in-place kernels).
    fn copy(&self, i: usize) -> Buffer {
        Buffer::encode(self.precision, &self.values[i])
    }

    /// `op` on the CPU backend against the kernel's output: in f32 within DESIGN.md's
    /// f32 bound; in f16 / bf16 also on the plain same-precision backend, within twice
    /// its error (DESIGN.md's rule for 16-bit kernels).
    fn check(
        &self,
        what: &str,
        out: &mut Buffer,
        op: impl Fn(&dyn Backend, &[Vec<f32>]) -> Vec<f32>,
    ) {
        let got = out.decode();
        let reference = op(&CpuBackend::new(), &self.values);
        let p = self.precision;
        if p == Precision::F32 {
            let err = rel_l2(&got, &reference);
            assert!(
                err.is_finite() && err <= F32_BOUND,
                "{what} {p}: relative L2 {err:.3e} against the CPU backend"
            );
            eprintln!("{what} {p}: {err:.2e}");
            return;
        }
        let plain = op(&RoundingBackend::new(p), &self.values);
        let (err, plain_err) =
            assert_within_plain(&format!("{what} {p}"), &got, &reference, &plain);
        eprintln!("{what} {p}: {err:.2e} (plain {plain_err:.2e})");
    }
}

fn host_tensor(b: &dyn Backend, shape: &[usize], values: &[f32]) -> diffsteer::tensor::Tensor {
    b.tensor(shape, values.to_vec()).expect("tensor")
}

fn host_values(b: &dyn Backend, t: &diffsteer::tensor::Tensor) -> Vec<f32> {
    b.to_host(t).expect("to_host")
}

/// The attention kernels' shared parameter list: out, q, k, v (buffer addresses),
/// batch, lq, lk, heads, and the scale 1/√d.
#[allow(clippy::too_many_arguments)]
fn launch_attention(
    m: &HostModule,
    name: &str,
    launch: Launch,
    copies: Copies,
    [o, q, k, v]: [usize; 4],
    (batch, heads, lq, lk): (usize, usize, usize, usize),
    head_dim: usize,
) {
    type Kernel = unsafe extern "C" fn(usize, usize, usize, usize, u32, u32, u32, u32, f32);
    let kernel: Kernel = m.symbol(name);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dims = [batch, lq, lk, heads].map(|v| v as u32);
    m.launch(launch, copies, &|| unsafe {
        kernel(o, q, k, v, dims[0], dims[1], dims[2], dims[3], scale)
    });
}

// ---- attention_mma.cu --------------------------------------------------------------------

fn tensor_core_attention(
    precision: Precision,
    head_dim: usize,
    (batch, heads, lq, lk): (usize, usize, usize, usize),
    copies: Copies,
) {
    let mut defines = head_dim_define(head_dim);
    defines.push(elem_define(precision));
    let m = module("attention_mma", &defines);
    let width = heads * head_dim;
    let seed = (head_dim * 1000 + lq * 10 + lk) as u64;
    let mut inputs = Inputs::new(
        precision,
        &[batch * lq * width, batch * lk * width, batch * lk * width],
        seed,
    );
    let mut out = Buffer::nan(precision, batch * lq * width);
    launch_attention(
        &m,
        "attention_mma",
        attention_mma_launch(head_dim, batch, heads, lq),
        copies,
        [out.addr(), inputs.addr(0), inputs.addr(1), inputs.addr(2)],
        (batch, heads, lq, lk),
        head_dim,
    );
    let what = format!("attention_mma d{head_dim} b{batch} h{heads} {lq}x{lk} {copies:?}");
    inputs.check(&what, &mut out, |b, v| {
        let t = |data: &[f32], l| host_tensor(b, &[batch, l, width], data);
        let o = b
            .attention(&t(&v[0], lq), &t(&v[1], lk), &t(&v[2], lk), heads)
            .expect("attention");
        host_values(b, &o)
    });
}

#[test]
fn tensor_core_attention_every_head_dim_f16() {
    for &d in ATTENTION_MMA_HEAD_DIMS {
        tensor_core_attention(Precision::F16, d, (2, 2, 37, 45), Copies::AtWait);
    }
}

#[test]
fn tensor_core_attention_every_head_dim_bf16() {
    for &d in ATTENTION_MMA_HEAD_DIMS {
        tensor_core_attention(Precision::BF16, d, (1, 2, 21, 70), Copies::AtWait);
    }
}

/// Several query blocks and key tiles, a partial last tile, cross-attention lengths.
#[test]
fn tensor_core_attention_many_tiles() {
    tensor_core_attention(Precision::F16, 40, (1, 1, 130, 77), Copies::AtWait);
    tensor_core_attention(Precision::BF16, 80, (1, 1, 129, 100), Copies::AtIssue);
    tensor_core_attention(Precision::F16, 160, (1, 1, 65, 70), Copies::AtIssue);
    tensor_core_attention(Precision::BF16, 64, (1, 1, 1, 1), Copies::AtWait);
}

// ---- conv_mma.cu -------------------------------------------------------------------------

struct ConvCase {
    batch: usize,
    height: usize,
    width: usize,
    cin: usize,
    cout: usize,
    kernel: usize,
    geometry: Conv2dGeometry,
    bias: bool,
    sample_bias: bool,
    residual: Option<f32>,
}

fn geometry(stride: usize, [top, bottom, left, right]: [usize; 4]) -> Conv2dGeometry {
    Conv2dGeometry {
        stride,
        pad_top: top,
        pad_bottom: bottom,
        pad_left: left,
        pad_right: right,
    }
}

fn tensor_core_conv(precision: Precision, c: &ConvCase, copies: Copies) {
    let m = module("conv_mma", &[elem_define(precision)]);
    let seed = (c.height * 100 + c.cin * 10 + c.cout) as u64;
    let x_shape = [c.batch, c.height, c.width, c.cin];
    let w_shape = [c.kernel, c.kernel, c.cin, c.cout];
    let cpu = CpuBackend::new();
    let zeros = |shape: &[usize]| host_tensor(&cpu, shape, &vec![0.0; shape.iter().product()]);
    let d = shapes::conv2d(&zeros(&x_shape), &zeros(&w_shape), None, &c.geometry)
        .expect("a valid convolution");
    let out_len = d.rows() * c.cout;
    // x, w, bias, sample bias, residual.
    let mut inputs = Inputs::new(
        precision,
        &[
            x_shape.iter().product(),
            w_shape.iter().product(),
            c.cout,
            c.batch * c.cout,
            out_len,
        ],
        seed,
    );
    let [xa, wa, ba, sa, ra] = [0, 1, 2, 3, 4].map(|i| inputs.addr(i));
    let (ba, sa, ra) = (
        if c.bias { ba } else { 0 },
        if c.sample_bias { sa } else { 0 },
        if c.residual.is_some() { ra } else { 0 },
    );
    let mut out = Buffer::nan(precision, out_len);
    let oa = out.addr();
    let scale = c.residual.unwrap_or(1.0);
    let [h, wi, cin, kh, kw, stride, pad_top, pad_left, oh, ow] =
        conv_geometry_args(&d, &c.geometry);
    #[rustfmt::skip]
    type Kernel = unsafe extern "C" fn(
        usize, usize, usize, usize, usize, usize, f32,
        u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32,
    );
    let kernel: Kernel = m.symbol("conv_mma");
    let (n, cout) = (c.batch as u32, c.cout as u32);
    m.launch(conv_mma_launch(&d), copies, &|| unsafe {
        kernel(
            oa, xa, wa, ba, sa, ra, scale, n, h, wi, cin, kh, kw, stride, pad_top, pad_left, oh,
            ow, cout,
        )
    });
    let what = format!(
        "conv_mma {}x{}x{}x{} -> {} k{} s{} {copies:?}",
        c.batch, c.height, c.width, c.cin, c.cout, c.kernel, c.geometry.stride
    );
    inputs.check(&what, &mut out, |b, v| {
        let t = |shape: &[usize], i: usize| host_tensor(b, shape, &v[i]);
        let bias_t = c.bias.then(|| t(&[c.cout], 2));
        let sample_t = c.sample_bias.then(|| t(&[c.batch, c.cout], 3));
        let residual_t = c.residual.map(|_| t(&d.out_shape(), 4));
        let epilogue = ConvEpilogue {
            sample_bias: sample_t.as_ref(),
            residual: residual_t.as_ref().zip(c.residual),
        };
        let o = b
            .conv2d_epilogue(
                &t(&x_shape, 0),
                &t(&w_shape, 1),
                bias_t.as_ref(),
                &c.geometry,
                epilogue,
            )
            .expect("conv2d_epilogue");
        host_values(b, &o)
    });
}

fn conv_cases() -> Vec<ConvCase> {
    vec![
        // A ResNet convolution: padding 1, every epilogue term, one partial tile.
        ConvCase {
            batch: 2,
            height: 9,
            width: 7,
            cin: 16,
            cout: 24,
            kernel: 3,
            geometry: geometry(1, [1, 1, 1, 1]),
            bias: true,
            sample_bias: true,
            residual: Some(0.7),
        },
        // A downsampler: stride 2, padding only bottom and right, 2 × 2 output tiles
        // (162 pixels, 136 channels), K = 360 over 12 K tiles.
        ConvCase {
            batch: 2,
            height: 17,
            width: 17,
            cin: 40,
            cout: 136,
            kernel: 3,
            geometry: geometry(2, [0, 1, 0, 1]),
            bias: true,
            sample_bias: false,
            residual: None,
        },
        // Two pixel tiles; 8 input channels, so a K chunk's tap runs ahead of the tile's.
        ConvCase {
            batch: 1,
            height: 12,
            width: 12,
            cin: 8,
            cout: 8,
            kernel: 3,
            geometry: geometry(1, [1, 1, 1, 1]),
            bias: false,
            sample_bias: false,
            residual: None,
        },
        // 1×1 with stride 2 (no GEMM shortcut) and a residual.
        ConvCase {
            batch: 2,
            height: 10,
            width: 10,
            cin: 32,
            cout: 16,
            kernel: 1,
            geometry: geometry(2, [0, 0, 0, 0]),
            bias: true,
            sample_bias: false,
            residual: Some(1.0),
        },
    ]
}

#[test]
fn tensor_core_conv_f16() {
    for c in conv_cases() {
        tensor_core_conv(Precision::F16, &c, Copies::AtWait);
    }
}

#[test]
fn tensor_core_conv_bf16() {
    for c in conv_cases() {
        tensor_core_conv(Precision::BF16, &c, Copies::AtWait);
    }
}

/// The stages refilled while copies land at once: a refill of a stage still being read
/// would show.
#[test]
fn tensor_core_conv_copies_landing_early() {
    for c in conv_cases().iter().take(2) {
        tensor_core_conv(Precision::F16, c, Copies::AtIssue);
    }
}

// ---- guided_step.cu ----------------------------------------------------------------------

/// The fused step's kernel against its host twin, for a model output in `precision`:
/// CFG with rescale, a slot without CFG, the reward shift, history, noise and clipping,
/// over a sample size that is no multiple of the block.
fn fused_step(precision: Precision) {
    let m = module("guided_step", &[elem_define(precision)]);
    let per = 300;
    let update = |history: f32, noise: f32, clip: Option<f32>| LinearStep {
        x0_from_sample: 1.3,
        x0_from_output: -0.6,
        clip,
        sample: 0.9,
        output: 0.2,
        x0: 0.1,
        history,
        noise,
    };
    let slots = [
        SlotStep {
            uncond_row: Some(0),
            cond_row: 3,
            cfg_scale: 7.5,
            cfg_rescale: 0.7,
            shifted: true,
            update: update(0.4, 0.0, Some(1.0)),
        },
        SlotStep {
            uncond_row: Some(1),
            cond_row: 4,
            cfg_scale: 3.0,
            cfg_rescale: 0.0,
            shifted: false,
            update: update(0.0, 0.3, None),
        },
        SlotStep {
            uncond_row: None,
            cond_row: 2,
            cfg_scale: 1.0,
            cfg_rescale: 0.5,
            shifted: true,
            update: update(0.2, 0.5, Some(0.5)),
        },
    ];
    let rows = 5;
    let model_out = random(rows * per, 11);
    let model_out = match precision {
        Precision::F32 => model_out,
        p => rounded(p, &model_out),
    };
    let n = slots.len() * per;
    let (latents, history, noise, shift) = (
        random(n, 12),
        random(n, 13),
        random(n, 14),
        random(n, 15).iter().map(|v| 0.1 * v).collect::<Vec<_>>(),
    );
    let buffers = StepBuffers {
        latents: &latents,
        history: Some(&history),
        noise: Some(&noise),
        shift: Some(&shift),
    };
    let want = guided_step_on_host(&model_out, rows, &slots, &buffers).expect("host step");

    let (coeffs, row_table) = kernel_tables(&slots).expect("tables");
    let mut model_buffer = Buffer::encode(precision, &model_out);
    let model_addr = model_buffer.addr();
    let mut next = vec![f32::NAN; n];
    let mut x0 = vec![f32::NAN; n];
    let (na, xa) = (next.as_mut_ptr() as usize, x0.as_mut_ptr() as usize);
    let addr = |v: &[f32]| v.as_ptr() as usize;
    let (la, ha, za, sa, ca) = (
        addr(&latents),
        addr(&history),
        addr(&noise),
        addr(&shift),
        addr(&coeffs),
    );
    let ra = row_table.as_ptr() as usize;
    #[rustfmt::skip]
    type Kernel = unsafe extern "C" fn(
        usize, usize, usize, usize, usize, usize, usize, usize, usize, u32,
    );
    let kernel: Kernel = m.symbol("guided_step");
    m.launch(
        guided_step_launch(slots.len()),
        Copies::AtWait,
        &|| unsafe { kernel(na, xa, model_addr, la, ha, za, sa, ca, ra, per as u32) },
    );
    for (name, got, reference) in [("next", &next, &want.next), ("x0", &x0, &want.x0)] {
        let err = rel_l2(got, reference);
        assert!(
            err <= 1e-6,
            "guided_step {precision} {name}: relative L2 {err:.3e} against the host step"
        );
        eprintln!("guided_step {precision} {name}: {err:.2e}");
    }
}

#[test]
fn fused_step_kernel_matches_the_host_step() {
    for p in Precision::ALL {
        fused_step(p);
    }
}

// ---- the other kernels, in every element type -------------------------------------------
//
// The CUDA backend compiles every file of `kernels::ALL` for each element type, so each
// of their kernels runs here in f32, f16 and bf16, with the backend's launch geometry.

/// How grid-stride kernels are launched: with the backend's grid (one thread per
/// element), or with a grid capped at a few blocks, so that every thread loops.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grid {
    Backend,
    Capped(u64),
}

impl Grid {
    fn over(self, n: usize) -> Launch {
        match self {
            Grid::Backend => grid_stride_launch(n as u64),
            Grid::Capped(blocks) => grid_stride_launch_capped(n as u64, blocks),
        }
    }
}

fn norms(p: Precision) {
    let m = module("norm", &[elem_define(p)]);
    // Group norm, with and without SiLU: [2, 5, 6, 32], 8 groups.
    let (n, h, w, c, groups) = (2usize, 5usize, 6usize, 32usize, 8usize);
    let mut inputs = Inputs::new(p, &[n * h * w * c, c, c], 31);
    let (xa, ga, ba) = (inputs.addr(0), inputs.addr(1), inputs.addr(2));
    type Stats = unsafe extern "C" fn(usize, usize, usize, usize, u32, u32, u32, f32);
    type Apply = unsafe extern "C" fn(usize, usize, usize, u64, u32, i32, u64);
    let stats: Stats = m.symbol("group_norm_affine");
    let apply: Apply = m.symbol("apply_affine");
    let eps = 1e-5f32;
    let total = n * h * w * c;
    for silu in [true, false] {
        let mut affine = vec![f32::NAN; n * 2 * c];
        let mut out = Buffer::nan(p, total);
        let (fa, oa) = (affine.as_mut_ptr() as usize, out.addr());
        m.launch(
            group_norm_stats_launch(n, groups),
            Copies::AtWait,
            &|| unsafe { stats(fa, xa, ga, ba, (h * w) as u32, c as u32, groups as u32, eps) },
        );
        let per_sample = (h * w * c) as u64;
        m.launch(Grid::Backend.over(total), Copies::AtWait, &|| unsafe {
            apply(oa, xa, fa, per_sample, c as u32, silu as i32, total as u64)
        });
        inputs.check(&format!("group_norm silu={silu}"), &mut out, |b, v| {
            let t = b
                .group_norm(
                    &host_tensor(b, &[n, h, w, c], &v[0]),
                    groups,
                    &host_tensor(b, &[c], &v[1]),
                    &host_tensor(b, &[c], &v[2]),
                    eps,
                    silu,
                )
                .expect("group_norm");
            host_values(b, &t)
        });
    }

    // Layer norm: 14 rows of 40 (not a multiple of the rows per block).
    let (rows, cols) = (14usize, 40usize);
    let mut inputs = Inputs::new(p, &[rows * cols, cols, cols], 32);
    let mut out = Buffer::nan(p, rows * cols);
    let (oa, xa, ga, ba) = (out.addr(), inputs.addr(0), inputs.addr(1), inputs.addr(2));
    type Layer = unsafe extern "C" fn(usize, usize, usize, usize, u32, u64, f32);
    let layer: Layer = m.symbol("layer_norm");
    m.launch(layer_norm_launch(rows as u64), Copies::AtWait, &|| unsafe {
        layer(oa, xa, ga, ba, cols as u32, rows as u64, eps)
    });
    inputs.check("layer_norm", &mut out, |b, v| {
        let t = b
            .layer_norm(
                &host_tensor(b, &[2, 7, cols], &v[0]),
                &host_tensor(b, &[cols], &v[1]),
                &host_tensor(b, &[cols], &v[2]),
                eps,
            )
            .expect("layer_norm");
        host_values(b, &t)
    });
}

fn scalar_attention(p: Precision, head_dim: usize) {
    let mut defines = head_dim_define(head_dim);
    defines.push(elem_define(p));
    let m = module("attention", &defines);
    // 2 · 2 · 13 = 52 query rows: the last block has a warp with no row.
    let (batch, heads, lq, lk) = (2usize, 2usize, 13usize, 41usize);
    let width = heads * head_dim;
    let mut inputs = Inputs::new(
        p,
        &[batch * lq * width, batch * lk * width, batch * lk * width],
        33 + head_dim as u64,
    );
    let mut out = Buffer::nan(p, batch * lq * width);
    launch_attention(
        &m,
        "attention_scalar",
        attention_scalar_launch(batch, heads, lq),
        Copies::AtWait,
        [out.addr(), inputs.addr(0), inputs.addr(1), inputs.addr(2)],
        (batch, heads, lq, lk),
        head_dim,
    );
    inputs.check(
        &format!("attention_scalar d{head_dim}"),
        &mut out,
        |b, v| {
            let t = |data: &[f32], l| host_tensor(b, &[batch, l, width], data);
            let o = b
                .attention(&t(&v[0], lq), &t(&v[1], lk), &t(&v[2], lk), heads)
                .expect("attention");
            host_values(b, &o)
        },
    );
}

fn elementwise(p: Precision, grid: Grid) {
    let m = module("elementwise", &[elem_define(p)]);
    let go = |n: usize, kernel: &(dyn Fn() + Sync)| m.launch(grid.over(n), Copies::AtWait, kernel);
    // Every launch covers more than one block of elements (the capped grid of
    // `grid_stride_loops_cover_every_element` then loops).
    let shape = [2usize, 5, 8, 12];
    let len: usize = shape.iter().product();
    let tag = |name: &str| format!("{name} ({grid:?} grid)");

    // In place: x <- silu(x), relu(x), x·y, (x + y)·scale, x + bias[sample].
    let mut inputs = Inputs::new(p, &[len, len, 2 * 12], 34);
    type Unary = unsafe extern "C" fn(usize, u64);
    for (name, act) in [
        ("silu_inplace", Activation::Silu),
        ("relu_inplace", Activation::Relu),
    ] {
        let kernel: Unary = m.symbol(name);
        let mut x = inputs.copy(0);
        let xa = x.addr();
        go(len, &|| unsafe { kernel(xa, len as u64) });
        inputs.check(&tag(name), &mut x, |b, v| {
            let mut t = host_tensor(b, &shape, &v[0]);
            let derivative = b.activation_assign(&mut t, act, false).expect(name);
            assert!(derivative.is_none());
            host_values(b, &t)
        });
    }
    let mul: unsafe extern "C" fn(usize, usize, u64) = m.symbol("mul_inplace");
    let mut x = inputs.copy(0);
    let (xa, ya) = (x.addr(), inputs.addr(1));
    go(len, &|| unsafe { mul(xa, ya, len as u64) });
    inputs.check(&tag("mul_inplace"), &mut x, |b, v| {
        let mut t = host_tensor(b, &shape, &v[0]);
        b.mul_assign(&mut t, &host_tensor(b, &shape, &v[1]))
            .expect("mul");
        host_values(b, &t)
    });
    let add: unsafe extern "C" fn(usize, usize, f32, u64) = m.symbol("add_scaled");
    for scale in [1.0f32, 0.7] {
        let mut x = inputs.copy(0);
        let (xa, ya) = (x.addr(), inputs.addr(1));
        go(len, &|| unsafe { add(xa, ya, scale, len as u64) });
        inputs.check(&tag(&format!("add_scaled x{scale}")), &mut x, |b, v| {
            let mut t = host_tensor(b, &shape, &v[0]);
            b.add_assign(&mut t, &host_tensor(b, &shape, &v[1]), scale)
                .expect("add");
            host_values(b, &t)
        });
    }
    let bias: unsafe extern "C" fn(usize, usize, u64, u32, u64) = m.symbol("channel_bias");
    let mut x = inputs.copy(0);
    let (xa, ba) = (x.addr(), inputs.addr(2));
    go(len, &|| unsafe {
        bias(xa, ba, (len / 2) as u64, 12, len as u64)
    });
    inputs.check(&tag("channel_bias"), &mut x, |b, v| {
        let mut t = host_tensor(b, &shape, &v[0]);
        b.add_channel_bias_assign(&mut t, &host_tensor(b, &[2, 12], &v[2]))
            .expect("channel bias");
        host_values(b, &t)
    });

    // The reward classifier's activations with their derivatives: x <- f(x), d <- f'(x).
    for (act, name) in [
        (Activation::Silu, "silu_with_derivative"),
        (Activation::Relu, "relu_with_derivative"),
    ] {
        let kernel: unsafe extern "C" fn(usize, usize, u64) = m.symbol(name);
        let mut x = inputs.copy(0);
        let mut d = Buffer::nan(p, len);
        let (xa, da) = (x.addr(), d.addr());
        go(len, &|| unsafe { kernel(xa, da, len as u64) });
        let run = |b: &dyn Backend, v: &[Vec<f32>]| {
            let mut t = host_tensor(b, &shape, &v[0]);
            let d = b
                .activation_assign(&mut t, act, true)
                .expect(name)
                .expect("a derivative");
            (host_values(b, &t), host_values(b, &d))
        };
        inputs.check(&tag(&format!("{name} value")), &mut x, |b, v| run(b, v).0);
        inputs.check(&tag(&format!("{name} derivative")), &mut d, |b, v| {
            run(b, v).1
        });
    }

    // GEGLU over 12 rows of 2 × 24.
    let mut inputs = Inputs::new(p, &[12 * 48], 35);
    let mut out = Buffer::nan(p, 12 * 24);
    let geglu: unsafe extern "C" fn(usize, usize, u32, u64) = m.symbol("geglu");
    let (oa, xa) = (out.addr(), inputs.addr(0));
    go(12 * 24, &|| unsafe { geglu(oa, xa, 24, 12 * 24) });
    inputs.check(&tag("geglu"), &mut out, |b, v| {
        host_values(
            b,
            &b.geglu(&host_tensor(b, &[12, 48], &v[0])).expect("geglu"),
        )
    });

    // Nearest resize 3 × 5 -> 7 × 9 (ratios that are not integers).
    let mut inputs = Inputs::new(p, &[3 * 5 * 12], 36);
    let mut out = Buffer::nan(p, 7 * 9 * 12);
    type Upsample = unsafe extern "C" fn(usize, usize, u32, u32, u32, u32, u32, u64);
    let upsample: Upsample = m.symbol("upsample_nearest");
    let (oa, xa) = (out.addr(), inputs.addr(0));
    go(7 * 9 * 12, &|| unsafe {
        upsample(oa, xa, 3, 5, 12, 7, 9, 7 * 9 * 12)
    });
    inputs.check(&tag("upsample_nearest"), &mut out, |b, v| {
        let t = b
            .upsample_nearest(&host_tensor(b, &[1, 3, 5, 12], &v[0]), 7, 9)
            .expect("upsample");
        host_values(b, &t)
    });

    // Concatenation of 5 and 3 channels.
    let mut inputs = Inputs::new(p, &[8 * 9 * 5, 8 * 9 * 3], 37);
    let mut out = Buffer::nan(p, 8 * 9 * 8);
    let concat: unsafe extern "C" fn(usize, usize, usize, u32, u32, u64) =
        m.symbol("concat_channels");
    let (oa, aa, ba) = (out.addr(), inputs.addr(0), inputs.addr(1));
    go(8 * 9 * 8, &|| unsafe {
        concat(oa, aa, ba, 5, 3, 8 * 9 * 8)
    });
    inputs.check(&tag("concat_channels"), &mut out, |b, v| {
        let t = b
            .concat_channels(
                &host_tensor(b, &[1, 8, 9, 5], &v[0]),
                &host_tensor(b, &[1, 8, 9, 3], &v[1]),
            )
            .expect("concat");
        host_values(b, &t)
    });

    // fill_rows (the bias rows of a cuBLAS product): 40 copies of a row of 7.
    let mut inputs = Inputs::new(p, &[7], 38);
    let mut out = Buffer::nan(p, 40 * 7);
    let fill: unsafe extern "C" fn(usize, usize, u32, u64) = m.symbol("fill_rows");
    let (oa, ra) = (out.addr(), inputs.addr(0));
    go(40 * 7, &|| unsafe { fill(oa, ra, 7, 40 * 7) });
    assert_eq!(
        out.decode(),
        inputs.values[0].repeat(40),
        "{}: the rows are copies",
        tag("fill_rows")
    );

    // The timestep embedding: 16 sinusoids padded to 20 columns, cos first, for
    // 16 timesteps.
    let timesteps: Vec<f32> = (0..16).map(|i| (i * i * 4) as f32 + 0.5).collect();
    let frequencies: Vec<f32> = (0..8).map(|i| (-0.5 * i as f32).exp()).collect();
    let mut out = Buffer::nan(p, 16 * 20);
    type Embedding = unsafe extern "C" fn(usize, usize, usize, u32, u32, i32, u64);
    let embedding: Embedding = m.symbol("timestep_embedding");
    let (oa, ta, fa) = (
        out.addr(),
        timesteps.as_ptr() as usize,
        frequencies.as_ptr() as usize,
    );
    go(16 * 20, &|| unsafe {
        embedding(oa, ta, fa, 8, 20, 1, 16 * 20)
    });
    let inputs = Inputs::new(p, &[], 39);
    inputs.check(&tag("timestep_embedding"), &mut out, |b, _| {
        host_values(
            b,
            &b.timestep_embedding(&timesteps, &frequencies, 20, true)
                .expect("embedding"),
        )
    });
}

/// im2col (the convolution path through cuBLAS) has no op of its own on the CPU
/// backend: its reference is written out here. The patches are copies, so exact.
fn im2col(p: Precision) {
    let m = module("conv", &[elem_define(p)]);
    let (n, h, w, cin, k) = (1usize, 5usize, 4usize, 3usize, 3usize);
    let g = geometry(2, [1, 0, 0, 1]);
    let mut inputs = Inputs::new(p, &[n * h * w * cin], 39);
    let cpu = CpuBackend::new();
    let x = host_tensor(&cpu, &[n, h, w, cin], &inputs.values[0]);
    let wt = host_tensor(&cpu, &[k, k, cin, 1], &vec![0.0; k * k * cin]);
    let d = shapes::conv2d(&x, &wt, None, &g).expect("conv dims");
    let patch = k * k * cin;
    // Pixels 1.. only: the backend cuts im2col into pieces that start past pixel 0.
    let first = 1usize;
    let count = d.rows() - first;
    let mut want = vec![0f32; count * patch];
    for (r, row) in want.chunks_mut(patch).enumerate() {
        let pixel = first + r;
        let (oy, ox) = (pixel / d.out_width, pixel % d.out_width);
        for (col, value) in row.iter_mut().enumerate() {
            let (tap, ci) = (col / cin, col % cin);
            let (ky, kx) = (tap / k, tap % k);
            let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
            let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                *value = inputs.values[0][(iy as usize * w + ix as usize) * cin + ci];
            }
        }
    }
    #[rustfmt::skip]
    type Im2col = unsafe extern "C" fn(
        usize, usize, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u64, u64,
    );
    let im2col: Im2col = m.symbol("im2col");
    let mut out = Buffer::nan(p, want.len());
    let (oa, xa) = (out.addr(), inputs.addr(0));
    let [hh, ww, cc, kh, kw, stride, pad_top, pad_left, oh, ow] = conv_geometry_args(&d, &g);
    let total = want.len() as u64;
    m.launch(Grid::Backend.over(want.len()), Copies::AtWait, &|| unsafe {
        im2col(
            oa,
            xa,
            hh,
            ww,
            cc,
            kh,
            kw,
            stride,
            pad_top,
            pad_left,
            oh,
            ow,
            first as u64,
            total,
        )
    });
    assert_eq!(out.decode(), want, "im2col {p}: the patches are copies");
}

/// The reward classifier's backward pass through a convolution (kernels/conv.cu's
/// col2im) against the CPU backend's.
fn col2im(p: Precision) {
    let m = module("conv", &[elem_define(p)]);
    let cpu = CpuBackend::new();
    for (case, (input, (kh, kw), g)) in [
        ([2, 7, 6, 3], (3, 3), geometry(1, [1, 1, 1, 1])),
        ([1, 9, 8, 2], (3, 3), geometry(2, [0, 1, 0, 1])),
        ([1, 8, 8, 4], (5, 5), geometry(2, [2, 2, 2, 2])),
    ]
    .into_iter()
    .enumerate()
    {
        let zeros = |shape: &[usize]| host_tensor(&cpu, shape, &vec![0.0; shape.iter().product()]);
        let d = shapes::conv2d(&zeros(&input), &zeros(&[kh, kw, input[3], 1]), None, &g)
            .expect("conv dims");
        let patch = kh * kw * input[3];
        let mut inputs = Inputs::new(p, &[d.rows() * patch], 23 + case as u64);
        let len: usize = input.iter().product();
        let mut dx = Buffer::nan(p, len);
        #[rustfmt::skip]
        type Kernel = unsafe extern "C" fn(
            usize, usize, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u64,
        );
        let kernel: Kernel = m.symbol("col2im");
        let [h, wi, cin, kh32, kw32, stride, pad_top, pad_left, oh, ow] =
            conv_geometry_args(&d, &g);
        let (da, pa) = (dx.addr(), inputs.addr(0));
        m.launch(Grid::Backend.over(len), Copies::AtWait, &|| unsafe {
            kernel(
                da, pa, h, wi, cin, kh32, kw32, stride, pad_top, pad_left, oh, ow, len as u64,
            )
        });
        let what = format!("col2im {input:?} k{kh}x{kw} s{}", g.stride);
        inputs.check(&what, &mut dx, |b, v| {
            let dp = host_tensor(b, &[d.rows(), patch], &v[0]);
            host_values(b, &b.col2im(&dp, input, (kh, kw), &g).expect("col2im"))
        });
    }
}

/// kernels/pool.cu: average pooling and its gradient.
fn pools(p: Precision) {
    let m = module("pool", &[elem_define(p)]);
    let cpu = CpuBackend::new();
    // 11 × 9 with a 2 × 2 window: the last row and column fill no window.
    let (n, h, w, c, k) = (2, 11, 9, 3, 2);
    let in_len = n * h * w * c;
    let xt = host_tensor(&cpu, &[n, h, w, c], &vec![0.0; in_len]);
    let d = shapes::avg_pool(&xt, k).expect("pool dims");
    let out_shape = d.out_shape();
    let out_len: usize = out_shape.iter().product();
    let mut inputs = Inputs::new(p, &[in_len, out_len], 21);
    let [a, b, cc, kk, oh, ow] = pool_geometry_args(&d);
    type Kernel = unsafe extern "C" fn(usize, usize, u32, u32, u32, u32, u32, u32, u64);

    let pool: Kernel = m.symbol("avg_pool");
    let mut out = Buffer::nan(p, out_len);
    let (oa, xa) = (out.addr(), inputs.addr(0));
    m.launch(Grid::Backend.over(out_len), Copies::AtWait, &|| unsafe {
        pool(oa, xa, a, b, cc, kk, oh, ow, out_len as u64)
    });
    inputs.check("avg_pool", &mut out, |be, v| {
        let t = host_tensor(be, &[n, h, w, c], &v[0]);
        host_values(be, &be.avg_pool(&t, k).expect("avg_pool"))
    });

    let backward: Kernel = m.symbol("avg_pool_backward");
    let mut dx = Buffer::nan(p, in_len);
    let (da, ya) = (dx.addr(), inputs.addr(1));
    m.launch(Grid::Backend.over(in_len), Copies::AtWait, &|| unsafe {
        backward(da, ya, a, b, cc, kk, oh, ow, in_len as u64)
    });
    inputs.check("avg_pool_backward", &mut dx, |be, v| {
        let dy = host_tensor(be, &out_shape, &v[1]);
        let t = be.avg_pool_backward(&dy, k, h, w).expect("backward");
        host_values(be, &t)
    });
}

fn other_kernels(p: Precision) {
    norms(p);
    for &d in ATTENTION_HEAD_DIMS {
        scalar_attention(p, d);
    }
    elementwise(p, Grid::Backend);
    im2col(p);
    col2im(p);
    pools(p);
}

#[test]
fn other_kernels_f32() {
    other_kernels(Precision::F32);
}

#[test]
fn other_kernels_f16() {
    other_kernels(Precision::F16);
}

#[test]
fn other_kernels_bf16() {
    other_kernels(Precision::BF16);
}

/// Grid-stride loops: with the grid capped at one block of 256 threads, every thread
/// of the elementwise launches (280 to 960 elements) handles more than one element.
#[test]
fn grid_stride_loops_cover_every_element() {
    assert_eq!(grid_stride_launch_capped(10_000, 1).grid, (1, 1, 1));
    for p in Precision::ALL {
        elementwise(p, Grid::Capped(1));
    }
}

// ---- the text encoder's and VAE's kernels (causal attention, GELU family, d512) ---------

/// kernels/attention.cu with `defines` in `precision` against `op` on the CPU backend
/// (and, in 16 bits, within twice the plain same-precision error), launched with the
/// backend's scalar-attention geometry.
fn scalar_attention_case(
    precision: Precision,
    defines: Vec<String>,
    (batch, heads, lq, lk, head_dim): (usize, usize, usize, usize, usize),
    causal: bool,
) {
    let mut defines = defines;
    defines.push(elem_define(precision));
    let m = module("attention", &defines);
    let width = heads * head_dim;
    let mut inputs = Inputs::new(
        precision,
        &[batch * lq * width, batch * lk * width, batch * lk * width],
        60,
    );
    let mut out = Buffer::nan(precision, batch * lq * width);
    launch_attention(
        &m,
        "attention_scalar",
        attention_scalar_launch(batch, heads, lq),
        Copies::AtWait,
        [out.addr(), inputs.addr(0), inputs.addr(1), inputs.addr(2)],
        (batch, heads, lq, lk),
        head_dim,
    );
    let what = format!("attention {defines:?} b{batch} h{heads} {lq}x{lk}");
    inputs.check(&what, &mut out, |b, v| {
        let t = |data: &[f32], l| host_tensor(b, &[batch, l, width], data);
        let (q, k, vv) = (t(&v[0], lq), t(&v[1], lk), t(&v[2], lk));
        let o = if causal {
            b.causal_attention(&q, &k, &vv, heads)
        } else {
            b.attention(&q, &k, &vv, heads)
        };
        host_values(b, &o.expect("attention"))
    });
}

#[test]
fn causal_attention_kernel_matches_the_cpu() {
    use diffsteer::backend::cuda::kernels::causal_attention_defines;
    // 37 tokens: a full 32-key tile and a partial one; rows below and above 32.
    for p in Precision::ALL {
        scalar_attention_case(p, causal_attention_defines(64), (1, 2, 37, 37, 64), true);
    }
    // A second image: the mask restarts at each image's first row.
    scalar_attention_case(
        Precision::F32,
        causal_attention_defines(16),
        (2, 1, 35, 35, 16),
        true,
    );
}

#[test]
fn vae_attention_head_dim_512_matches_the_cpu() {
    scalar_attention_case(
        Precision::F32,
        head_dim_define(512),
        (1, 1, 9, 40, 512),
        false,
    );
    scalar_attention_case(
        Precision::BF16,
        head_dim_define(512),
        (1, 1, 5, 33, 512),
        false,
    );
}

#[test]
fn gelu_family_kernels_match_the_cpu() {
    let n = 1000;
    for p in Precision::ALL {
        let m = module("elementwise", &[elem_define(p)]);
        let go = |kernel: &(dyn Fn() + Sync)| {
            m.launch(grid_stride_launch(n as u64), Copies::AtWait, kernel)
        };
        let inputs = Inputs::new(p, &[n], 25);
        for (act, name) in [
            (Activation::Gelu, "gelu"),
            (Activation::QuickGelu, "quick_gelu"),
        ] {
            let run = |b: &dyn Backend, v: &[Vec<f32>], derivative: bool| {
                let mut t = host_tensor(b, &[n], &v[0]);
                let d = b
                    .activation_assign(&mut t, act, derivative)
                    .expect("activation");
                match d {
                    Some(d) => (host_values(b, &t), host_values(b, &d)),
                    None => (host_values(b, &t), Vec::new()),
                }
            };
            let inplace: unsafe extern "C" fn(usize, u64) = m.symbol(&format!("{name}_inplace"));
            let mut x = inputs.copy(0);
            let xa = x.addr();
            go(&|| unsafe { inplace(xa, n as u64) });
            inputs.check(&format!("{name}_inplace"), &mut x, |b, v| {
                run(b, v, false).0
            });

            let with_d: unsafe extern "C" fn(usize, usize, u64) =
                m.symbol(&format!("{name}_with_derivative"));
            let mut x = inputs.copy(0);
            let mut d = Buffer::nan(p, n);
            let (xa, da) = (x.addr(), d.addr());
            go(&|| unsafe { with_d(xa, da, n as u64) });
            inputs.check(&format!("{name}_with_derivative value"), &mut x, |b, v| {
                run(b, v, true).0
            });
            inputs.check(
                &format!("{name}_with_derivative derivative"),
                &mut d,
                |b, v| run(b, v, true).1,
            );
        }
    }
}
