//! The CUDA kernels' own source, run on the CPU: each `kernels/*.cu` file is compiled
//! as C++20 with `tests/kernels_on_host/prelude.h` in place of `kernels/prelude.cuh`
//! (one OS thread per CUDA thread, real barriers, the PTX ISA's fragment layouts for
//! `ldmatrix` and `mma.sync`, `cp.async` landing as late or as early as the hardware
//! may), launched with the CUDA backend's grids and arguments, and checked against the
//! CPU backend. This checks the kernels' indexing, tiling, masking, swizzles and
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
    attention_mma_block_q, conv_geometry_args, conv_mma_tiles, elem_define, head_dim_define,
    pool_geometry_args, ATTENTION_MMA_THREADS, CONV_MMA_THREADS, GUIDED_STEP_THREADS,
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

    /// Runs a launch of `grid` blocks of `block` threads: each thread calls `kernel`
    /// (which calls the kernel function with its arguments). Blocks run one after
    /// another; a kernel-side error (misaligned access) fails the test.
    fn launch(
        &self,
        grid: (u32, u32, u32),
        block: u32,
        copies: Copies,
        kernel: &(dyn Fn() + Sync),
    ) {
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

/// A buffer of 16-bit elements, 16-byte aligned as cudaMalloc'd memory is.
struct Halves {
    words: Vec<u128>,
    len: usize,
}

impl Halves {
    fn encode(precision: Precision, values: &[f32]) -> Self {
        let bits = precision.encode_16(values).expect("a 16-bit precision");
        let mut h = Halves::filled(values.len(), 0);
        h.as_mut_slice().copy_from_slice(&bits);
        h
    }

    /// `len` copies of `bits` (a NaN pattern poisons outputs the kernel must write).
    fn filled(len: usize, bits: u16) -> Self {
        let mut h = Halves {
            words: vec![0u128; len.div_ceil(8)],
            len,
        };
        h.as_mut_slice().fill(bits);
        h
    }

    fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: the u128 storage holds at least `len` u16s and u16 has no invalid values.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }

    fn decode(&mut self, precision: Precision) -> Vec<f32> {
        let bits = self.as_mut_slice().to_vec();
        precision.decode_16(&bits).expect("a 16-bit precision")
    }

    fn addr(&mut self) -> usize {
        self.words.as_mut_ptr() as usize
    }
}

fn nan_bits(precision: Precision) -> u16 {
    match precision {
        Precision::F16 => 0x7e00,
        _ => 0x7fc0,
    }
}

fn rounded(precision: Precision, values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| precision.round(v)).collect()
}

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

/// One op's inputs, rounded to `precision`, as host values and as 16-bit buffers.
struct Inputs16 {
    precision: Precision,
    values: Vec<Vec<f32>>,
    buffers: Vec<Halves>,
}

impl Inputs16 {
    fn new(precision: Precision, lens: &[usize], seed: u64) -> Self {
        let values: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| rounded(precision, &random(n, seed + i as u64)))
            .collect();
        let buffers = values
            .iter()
            .map(|v| Halves::encode(precision, v))
            .collect();
        Inputs16 {
            precision,
            values,
            buffers,
        }
    }

    fn addr(&mut self, i: usize) -> usize {
        self.buffers[i].addr()
    }

    /// `op` on the CPU backend and on the plain same-precision backend, against the
    /// kernel's output: DESIGN.md's rule for 16-bit kernels.
    fn check(
        &self,
        what: &str,
        out: &mut Halves,
        op: impl Fn(&dyn Backend, &[Vec<f32>]) -> Vec<f32>,
    ) {
        let got = out.decode(self.precision);
        let reference = op(&CpuBackend::new(), &self.values);
        let plain = op(&RoundingBackend::new(self.precision), &self.values);
        let p = self.precision;
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
    grid: (u32, u32, u32),
    block: u32,
    copies: Copies,
    [o, q, k, v]: [usize; 4],
    (batch, heads, lq, lk): (usize, usize, usize, usize),
    head_dim: usize,
) {
    type Kernel = unsafe extern "C" fn(usize, usize, usize, usize, u32, u32, u32, u32, f32);
    let kernel: Kernel = m.symbol(name);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dims = [batch, lq, lk, heads].map(|v| v as u32);
    m.launch(grid, block, copies, &|| unsafe {
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
    let mut inputs = Inputs16::new(
        precision,
        &[batch * lq * width, batch * lk * width, batch * lk * width],
        seed,
    );
    let mut out = Halves::filled(batch * lq * width, nan_bits(precision));
    let grid = (
        lq.div_ceil(attention_mma_block_q(head_dim)) as u32,
        heads as u32,
        batch as u32,
    );
    launch_attention(
        &m,
        "attention_mma",
        grid,
        ATTENTION_MMA_THREADS,
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
    for &d in &[16, 40, 64, 80, 128, 160] {
        tensor_core_attention(Precision::F16, d, (2, 2, 37, 45), Copies::AtWait);
    }
}

#[test]
fn tensor_core_attention_every_head_dim_bf16() {
    for &d in &[16, 40, 64, 80, 128, 160] {
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
    let mut inputs = Inputs16::new(
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
    let mut out = Halves::filled(out_len, nan_bits(precision));
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
    m.launch(
        (conv_mma_tiles(&d) as u32, 1, 1),
        CONV_MMA_THREADS,
        copies,
        &|| unsafe {
            kernel(
                oa, xa, wa, ba, sa, ra, scale, n, h, wi, cin, kh, kw, stride, pad_top, pad_left,
                oh, ow, cout,
            )
        },
    );
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
    let mut model16 = (precision != Precision::F32).then(|| Halves::encode(precision, &model_out));
    let model_addr = match model16.as_mut() {
        Some(h) => h.addr(),
        None => model_out.as_ptr() as usize,
    };
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
        (slots.len() as u32, 1, 1),
        GUIDED_STEP_THREADS,
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
    for p in [Precision::F32, Precision::F16, Precision::BF16] {
        fused_step(p);
    }
}

// ---- the reward classifier's ops (pool.cu, conv.cu's col2im, elementwise.cu), f32 --------

/// Grid-stride kernels are right for any grid: a small one keeps the threads few.
const SMALL_GRID: (u32, u32, u32) = (3, 1, 1);
const SMALL_BLOCK: u32 = 64;

#[test]
fn classifier_pool_kernels_match_the_cpu() {
    let m = module("pool", &[elem_define(Precision::F32)]);
    let cpu = CpuBackend::new();
    // 11 × 9 with a 2 × 2 window: the last row and column fill no window.
    let (n, h, w, c, k) = (2, 11, 9, 3, 2);
    let x = random(n * h * w * c, 21);
    let xt = cpu.tensor(&[n, h, w, c], x.clone()).expect("x");
    let d = shapes::avg_pool(&xt, k).expect("pool dims");
    let want = cpu
        .to_host(&cpu.avg_pool(&xt, k).expect("avg_pool"))
        .expect("host");
    let dims = pool_geometry_args(&d);
    type Kernel = unsafe extern "C" fn(usize, usize, u32, u32, u32, u32, u32, u32, u64);
    let pool: Kernel = m.symbol("avg_pool");
    let mut out = vec![f32::NAN; want.len()];
    let (oa, xa, total) = (
        out.as_mut_ptr() as usize,
        x.as_ptr() as usize,
        want.len() as u64,
    );
    let [a, b, cc, kk, oh, ow] = dims;
    m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
        pool(oa, xa, a, b, cc, kk, oh, ow, total)
    });
    assert!(
        rel_l2(&out, &want) <= 1e-6,
        "avg_pool: {:.3e}",
        rel_l2(&out, &want)
    );

    let dy = random(want.len(), 22);
    let dyt = cpu.tensor(&d.out_shape(), dy.clone()).expect("dy");
    let want = cpu
        .to_host(&cpu.avg_pool_backward(&dyt, k, h, w).expect("backward"))
        .expect("host");
    let backward: Kernel = m.symbol("avg_pool_backward");
    let mut dx = vec![f32::NAN; want.len()];
    let (da, ya, total) = (
        dx.as_mut_ptr() as usize,
        dy.as_ptr() as usize,
        want.len() as u64,
    );
    m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
        backward(da, ya, a, b, cc, kk, oh, ow, total)
    });
    assert!(
        rel_l2(&dx, &want) <= 1e-6,
        "avg_pool_backward: {:.3e}",
        rel_l2(&dx, &want)
    );
}

#[test]
fn classifier_col2im_kernel_matches_the_cpu() {
    let m = module("conv", &[elem_define(Precision::F32)]);
    let cpu = CpuBackend::new();
    for (input, (kh, kw), g) in [
        ([2, 7, 6, 3], (3, 3), geometry(1, [1, 1, 1, 1])),
        ([1, 9, 8, 2], (3, 3), geometry(2, [0, 1, 0, 1])),
        ([1, 8, 8, 4], (5, 5), geometry(2, [2, 2, 2, 2])),
    ] {
        let x = cpu
            .tensor(&input, vec![0.0; input.iter().product()])
            .expect("x");
        let w = cpu
            .tensor(&[kh, kw, input[3], 1], vec![0.0; kh * kw * input[3]])
            .expect("w");
        let d = shapes::conv2d(&x, &w, None, &g).expect("conv dims");
        let dpatches = random(d.rows() * kh * kw * input[3], 23);
        let dp = cpu
            .tensor(&[d.rows(), kh * kw * input[3]], dpatches.clone())
            .expect("dpatches");
        let want = cpu
            .to_host(&cpu.col2im(&dp, input, (kh, kw), &g).expect("col2im"))
            .expect("host");
        #[rustfmt::skip]
        type Kernel = unsafe extern "C" fn(
            usize, usize, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u64,
        );
        let kernel: Kernel = m.symbol("col2im");
        let [h, wi, cin, kh32, kw32, stride, pad_top, pad_left, oh, ow] =
            conv_geometry_args(&d, &g);
        let mut dx = vec![f32::NAN; want.len()];
        let (da, pa, total) = (
            dx.as_mut_ptr() as usize,
            dpatches.as_ptr() as usize,
            want.len() as u64,
        );
        m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
            kernel(
                da, pa, h, wi, cin, kh32, kw32, stride, pad_top, pad_left, oh, ow, total,
            )
        });
        let err = rel_l2(&dx, &want);
        assert!(
            err <= 1e-6,
            "col2im {input:?} k{kh}x{kw} s{}: {err:.3e}",
            g.stride
        );
    }
}

#[test]
fn classifier_activation_derivatives_match_the_cpu() {
    let m = module("elementwise", &[elem_define(Precision::F32)]);
    let cpu = CpuBackend::new();
    let n = 1000;
    let x = random(n, 24);
    for (act, name) in [
        (Activation::Silu, "silu_with_derivative"),
        (Activation::Relu, "relu_with_derivative"),
    ] {
        let mut xt = cpu.tensor(&[n], x.clone()).expect("x");
        let dt = cpu
            .activation_assign(&mut xt, act, true)
            .expect("activation")
            .expect("a derivative");
        let (want_x, want_d) = (
            cpu.to_host(&xt).expect("host"),
            cpu.to_host(&dt).expect("host"),
        );
        let kernel: unsafe extern "C" fn(usize, usize, u64) = m.symbol(name);
        let mut got_x = x.clone();
        let mut got_d = vec![f32::NAN; n];
        let (xa, da) = (got_x.as_mut_ptr() as usize, got_d.as_mut_ptr() as usize);
        m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
            kernel(xa, da, n as u64)
        });
        for (what, got, want) in [("value", &got_x, &want_x), ("derivative", &got_d, &want_d)] {
            let err = rel_l2(got, want);
            assert!(err <= 1e-6, "{name} {what}: {err:.3e}");
        }
    }
}

// ---- the other kernels in f16 and bf16 ---------------------------------------------------

fn norms_16(p: Precision) {
    let m = module("norm", &[elem_define(p)]);
    // Group norm with SiLU: [2, 5, 6, 32], 8 groups.
    let (n, h, w, c, groups) = (2usize, 5usize, 6usize, 32usize, 8usize);
    let mut inputs = Inputs16::new(p, &[n * h * w * c, c, c], 31);
    let mut affine = vec![f32::NAN; n * 2 * c];
    let mut out = Halves::filled(n * h * w * c, nan_bits(p));
    let (fa, xa, ga, ba, oa) = (
        affine.as_mut_ptr() as usize,
        inputs.addr(0),
        inputs.addr(1),
        inputs.addr(2),
        out.addr(),
    );
    type Stats = unsafe extern "C" fn(usize, usize, usize, usize, u32, u32, u32, f32);
    type Apply = unsafe extern "C" fn(usize, usize, usize, u64, u32, i32, u64);
    let stats: Stats = m.symbol("group_norm_affine");
    let apply: Apply = m.symbol("apply_affine");
    let eps = 1e-5f32;
    m.launch(
        ((n * groups) as u32, 1, 1),
        256,
        Copies::AtWait,
        &|| unsafe { stats(fa, xa, ga, ba, (h * w) as u32, c as u32, groups as u32, eps) },
    );
    let total = (n * h * w * c) as u64;
    m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
        apply(oa, xa, fa, (h * w * c) as u64, c as u32, 1, total)
    });
    inputs.check("group_norm + silu", &mut out, |b, v| {
        let t = b
            .group_norm(
                &host_tensor(b, &[n, h, w, c], &v[0]),
                groups,
                &host_tensor(b, &[c], &v[1]),
                &host_tensor(b, &[c], &v[2]),
                eps,
                true,
            )
            .expect("group_norm");
        host_values(b, &t)
    });

    // Layer norm: 14 rows of 40, four warps (rows) per block.
    let (rows, cols) = (14usize, 40usize);
    let mut inputs = Inputs16::new(p, &[rows * cols, cols, cols], 32);
    let mut out = Halves::filled(rows * cols, nan_bits(p));
    let (oa, xa, ga, ba) = (out.addr(), inputs.addr(0), inputs.addr(1), inputs.addr(2));
    type Layer = unsafe extern "C" fn(usize, usize, usize, usize, u32, u64, f32);
    let layer: Layer = m.symbol("layer_norm");
    m.launch(
        (rows.div_ceil(4) as u32, 1, 1),
        128,
        Copies::AtWait,
        &|| unsafe { layer(oa, xa, ga, ba, cols as u32, rows as u64, eps) },
    );
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

fn scalar_attention_16(p: Precision, head_dim: usize) {
    let mut defines = head_dim_define(head_dim);
    defines.push(elem_define(p));
    let m = module("attention", &defines);
    let (batch, heads, lq, lk) = (2usize, 2usize, 13usize, 41usize);
    let width = heads * head_dim;
    let mut inputs = Inputs16::new(
        p,
        &[batch * lq * width, batch * lk * width, batch * lk * width],
        33,
    );
    let mut out = Halves::filled(batch * lq * width, nan_bits(p));
    // One warp per (image, head, query row), four warps a block.
    let warps = batch * heads * lq;
    launch_attention(
        &m,
        "attention_scalar",
        (warps.div_ceil(4) as u32, 1, 1),
        128,
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

fn elementwise_16(p: Precision) {
    let m = module("elementwise", &[elem_define(p)]);
    let shape = [2usize, 3, 4, 6];
    let len: usize = shape.iter().product();
    let go = |kernel: &(dyn Fn() + Sync)| m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, kernel);

    // x <- silu(x); x <- (x + y) * scale for scale 1 and 0.7; x <- x + bias[sample].
    let mut inputs = Inputs16::new(p, &[len, len, 2 * 6], 34);
    let silu: unsafe extern "C" fn(usize, u64) = m.symbol("silu_inplace");
    let mut x = Halves::encode(p, &inputs.values[0]);
    let xa = x.addr();
    go(&|| unsafe { silu(xa, len as u64) });
    inputs.check("silu_inplace", &mut x, |b, v| {
        let mut t = host_tensor(b, &shape, &v[0]);
        b.silu_assign(&mut t).expect("silu");
        host_values(b, &t)
    });
    let add: unsafe extern "C" fn(usize, usize, f32, u64) = m.symbol("add_scaled");
    for scale in [1.0f32, 0.7] {
        let mut x = Halves::encode(p, &inputs.values[0]);
        let (xa, ya) = (x.addr(), inputs.addr(1));
        go(&|| unsafe { add(xa, ya, scale, len as u64) });
        inputs.check(&format!("add_scaled x{scale}"), &mut x, |b, v| {
            let mut t = host_tensor(b, &shape, &v[0]);
            b.add_assign(&mut t, &host_tensor(b, &shape, &v[1]), scale)
                .expect("add");
            host_values(b, &t)
        });
    }
    let bias: unsafe extern "C" fn(usize, usize, u64, u32, u64) = m.symbol("channel_bias");
    let mut x = Halves::encode(p, &inputs.values[0]);
    let (xa, ba) = (x.addr(), inputs.addr(2));
    go(&|| unsafe { bias(xa, ba, (len / 2) as u64, 6, len as u64) });
    inputs.check("channel_bias", &mut x, |b, v| {
        let mut t = host_tensor(b, &shape, &v[0]);
        b.add_channel_bias_assign(&mut t, &host_tensor(b, &[2, 6], &v[2]))
            .expect("channel bias");
        host_values(b, &t)
    });

    // GEGLU over rows of 2 × 24.
    let mut inputs = Inputs16::new(p, &[3 * 48], 35);
    let mut out = Halves::filled(3 * 24, nan_bits(p));
    let geglu: unsafe extern "C" fn(usize, usize, u32, u64) = m.symbol("geglu");
    let (oa, xa) = (out.addr(), inputs.addr(0));
    go(&|| unsafe { geglu(oa, xa, 24, 72) });
    inputs.check("geglu", &mut out, |b, v| {
        host_values(
            b,
            &b.geglu(&host_tensor(b, &[3, 48], &v[0])).expect("geglu"),
        )
    });

    // Nearest resize 3 × 5 -> 7 × 9 (ratios that are not integers).
    let mut inputs = Inputs16::new(p, &[3 * 5 * 4], 36);
    let mut out = Halves::filled(7 * 9 * 4, nan_bits(p));
    type Upsample = unsafe extern "C" fn(usize, usize, u32, u32, u32, u32, u32, u64);
    let upsample: Upsample = m.symbol("upsample_nearest");
    let (oa, xa) = (out.addr(), inputs.addr(0));
    go(&|| unsafe { upsample(oa, xa, 3, 5, 4, 7, 9, 7 * 9 * 4) });
    inputs.check("upsample_nearest", &mut out, |b, v| {
        let t = b
            .upsample_nearest(&host_tensor(b, &[1, 3, 5, 4], &v[0]), 7, 9)
            .expect("upsample");
        host_values(b, &t)
    });

    // Concatenation of 5 and 3 channels.
    let mut inputs = Inputs16::new(p, &[2 * 3 * 5, 2 * 3 * 3], 37);
    let mut out = Halves::filled(2 * 3 * 8, nan_bits(p));
    let concat: unsafe extern "C" fn(usize, usize, usize, u32, u32, u64) =
        m.symbol("concat_channels");
    let (oa, aa, ba) = (out.addr(), inputs.addr(0), inputs.addr(1));
    go(&|| unsafe { concat(oa, aa, ba, 5, 3, 48) });
    inputs.check("concat_channels", &mut out, |b, v| {
        let t = b
            .concat_channels(
                &host_tensor(b, &[1, 2, 3, 5], &v[0]),
                &host_tensor(b, &[1, 2, 3, 3], &v[1]),
            )
            .expect("concat");
        host_values(b, &t)
    });

    // The timestep embedding: 16 sinusoids padded to 20 columns, cos first.
    let (timesteps, frequencies) = (
        [0.0f32, 17.0, 999.0],
        (0..8).map(|i| (-0.5 * i as f32).exp()).collect::<Vec<_>>(),
    );
    let mut out = Halves::filled(3 * 20, nan_bits(p));
    type Embedding = unsafe extern "C" fn(usize, usize, usize, u32, u32, i32, u64);
    let embedding: Embedding = m.symbol("timestep_embedding");
    let (oa, ta, fa) = (
        out.addr(),
        timesteps.as_ptr() as usize,
        frequencies.as_ptr() as usize,
    );
    go(&|| unsafe { embedding(oa, ta, fa, 8, 20, 1, 60) });
    let inputs = Inputs16::new(p, &[], 38);
    inputs.check("timestep_embedding", &mut out, |b, _| {
        host_values(
            b,
            &b.timestep_embedding(&timesteps, &frequencies, 20, true)
                .expect("embedding"),
        )
    });
}

/// im2col and fill_rows (the convolution path through cuBLAS) have no op of their own
/// on the CPU backend: their references are written out here.
fn patches_16(p: Precision) {
    let m = module("conv", &[elem_define(p)]);
    let (n, h, w, cin, k) = (1usize, 5usize, 4usize, 3usize, 3usize);
    let g = geometry(2, [1, 0, 0, 1]);
    let mut inputs = Inputs16::new(p, &[n * h * w * cin], 39);
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
    let mut out = Halves::filled(want.len(), nan_bits(p));
    let (oa, xa) = (out.addr(), inputs.addr(0));
    let [hh, ww, cc, kh, kw, stride, pad_top, pad_left, oh, ow] = conv_geometry_args(&d, &g);
    m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
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
            want.len() as u64,
        )
    });
    assert_eq!(out.decode(p), want, "im2col {p}: the patches are copies");

    let m = module("elementwise", &[elem_define(p)]);
    let mut row = Halves::encode(p, &inputs.values[0][..7]);
    let mut out = Halves::filled(5 * 7, nan_bits(p));
    let fill: unsafe extern "C" fn(usize, usize, u32, u64) = m.symbol("fill_rows");
    let (oa, ra) = (out.addr(), row.addr());
    m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
        fill(oa, ra, 7, 35)
    });
    assert_eq!(
        out.decode(p),
        inputs.values[0][..7].repeat(5),
        "fill_rows {p}"
    );
}

#[test]
fn other_kernels_f16() {
    norms_16(Precision::F16);
    scalar_attention_16(Precision::F16, 8);
    scalar_attention_16(Precision::F16, 40);
    elementwise_16(Precision::F16);
    patches_16(Precision::F16);
}

#[test]
fn other_kernels_bf16() {
    norms_16(Precision::BF16);
    scalar_attention_16(Precision::BF16, 8);
    scalar_attention_16(Precision::BF16, 160);
    elementwise_16(Precision::BF16);
    patches_16(Precision::BF16);
}

// ---- the text encoder's and VAE's kernels (causal attention, GELU family, d512) ---------

/// kernels/attention.cu with `defines` in `precision` against `op` on the CPU backend
/// (and, in 16 bits, within twice the plain same-precision error), launched as the
/// backend launches the scalar kernel: one warp per (image, head, query row), four
/// warps a block.
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
    let lens = [batch * lq * width, batch * lk * width, batch * lk * width];
    let warps = batch * heads * lq;
    let grid = (warps.div_ceil(4) as u32, 1, 1);
    let op = |b: &dyn Backend, v: &[Vec<f32>]| {
        let t = |data: &[f32], l| host_tensor(b, &[batch, l, width], data);
        let (q, k, vv) = (t(&v[0], lq), t(&v[1], lk), t(&v[2], lk));
        let o = if causal {
            b.causal_attention(&q, &k, &vv, heads)
        } else {
            b.attention(&q, &k, &vv, heads)
        };
        host_values(b, &o.expect("attention"))
    };
    let what = format!("attention {defines:?} b{batch} h{heads} {lq}x{lk}");
    if precision == Precision::F32 {
        let mut v: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| random(n, 60 + i as u64))
            .collect();
        let mut out = vec![f32::NAN; lens[0]];
        let addrs = [
            out.as_mut_ptr() as usize,
            v[0].as_mut_ptr() as usize,
            v[1].as_mut_ptr() as usize,
            v[2].as_mut_ptr() as usize,
        ];
        launch_attention(
            &m,
            "attention_scalar",
            grid,
            128,
            Copies::AtWait,
            addrs,
            (batch, heads, lq, lk),
            head_dim,
        );
        let err = rel_l2(&out, &op(&CpuBackend::new(), &v));
        assert!(err <= 1e-6, "{what}: {err:.3e}");
        eprintln!("{what}: {err:.2e}");
    } else {
        let mut inputs = Inputs16::new(precision, &lens, 60);
        let mut out = Halves::filled(lens[0], nan_bits(precision));
        let addrs = [out.addr(), inputs.addr(0), inputs.addr(1), inputs.addr(2)];
        launch_attention(
            &m,
            "attention_scalar",
            grid,
            128,
            Copies::AtWait,
            addrs,
            (batch, heads, lq, lk),
            head_dim,
        );
        inputs.check(&what, &mut out, op);
    }
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
    let x = random(n, 25);
    for p in Precision::ALL {
        let m = module("elementwise", &[elem_define(p)]);
        for (act, name) in [
            (Activation::Gelu, "gelu"),
            (Activation::QuickGelu, "quick_gelu"),
        ] {
            let op = |b: &dyn Backend, v: &[Vec<f32>], derivative: bool| {
                let mut t = host_tensor(b, &[n], &v[0]);
                let d = b
                    .activation_assign(&mut t, act, derivative)
                    .expect("activation");
                match d {
                    Some(d) => host_values(b, &d),
                    None => host_values(b, &t),
                }
            };
            if p == Precision::F32 {
                let cpu = CpuBackend::new();
                let inplace: unsafe extern "C" fn(usize, u64) =
                    m.symbol(&format!("{name}_inplace"));
                let with_d: unsafe extern "C" fn(usize, usize, u64) =
                    m.symbol(&format!("{name}_with_derivative"));
                let mut got = x.clone();
                let xa = got.as_mut_ptr() as usize;
                m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
                    inplace(xa, n as u64)
                });
                let want = op(&cpu, std::slice::from_ref(&x), false);
                assert!(
                    rel_l2(&got, &want) <= 1e-6,
                    "{name}_inplace: {:.3e}",
                    rel_l2(&got, &want)
                );
                let (mut got_x, mut got_d) = (x.clone(), vec![f32::NAN; n]);
                let (xa, da) = (got_x.as_mut_ptr() as usize, got_d.as_mut_ptr() as usize);
                m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
                    with_d(xa, da, n as u64)
                });
                let want_d = op(&cpu, std::slice::from_ref(&x), true);
                for (what, got, want) in [("value", &got_x, &want), ("derivative", &got_d, &want_d)]
                {
                    let err = rel_l2(got, want);
                    assert!(err <= 1e-6, "{name}_with_derivative {what}: {err:.3e}");
                }
            } else {
                let inputs = Inputs16::new(p, &[n], 26);
                let inplace: unsafe extern "C" fn(usize, u64) =
                    m.symbol(&format!("{name}_inplace"));
                let mut out = Halves::encode(p, &inputs.values[0]);
                let xa = out.addr();
                m.launch(SMALL_GRID, SMALL_BLOCK, Copies::AtWait, &|| unsafe {
                    inplace(xa, n as u64)
                });
                inputs.check(&format!("{name}_inplace"), &mut out, |b, v| op(b, v, false));
            }
        }
    }
}
