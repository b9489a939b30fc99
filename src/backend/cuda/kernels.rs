//! NVRTC kernel registry: each `kernels/*.cu` file is embedded in the binary, compiled
//! for the device's compute capability on first use, and cached in memory and on
//! disk. The disk key is a hash of the source, the architecture and the options, so
//! an edited kernel or a new GPU never picks up a stale build.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use crate::backend::shapes::{ConvDims, PoolDims};
use crate::backend::Conv2dGeometry;
use crate::tensor::Precision;

/// One `.cu` file: its name (for messages and the cache) and its source text.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
}

/// Element types, conversions and loop helpers every kernel file is compiled with.
const PRELUDE: &str = include_str!("../../../kernels/prelude.cuh");

impl KernelSource {
    /// What NVRTC compiles: the prelude, then the file.
    pub fn compiled_text(&self) -> String {
        format!("{PRELUDE}\n#line 1 \"{}.cu\"\n{}", self.name, self.source)
    }
}

pub const ELEMENTWISE: KernelSource = KernelSource {
    name: "elementwise",
    source: include_str!("../../../kernels/elementwise.cu"),
};

pub const CONV: KernelSource = KernelSource {
    name: "conv",
    source: include_str!("../../../kernels/conv.cu"),
};

pub const NORM: KernelSource = KernelSource {
    name: "norm",
    source: include_str!("../../../kernels/norm.cu"),
};

/// Specialised per head dimension with `-DHEAD_DIM=d`.
pub const ATTENTION: KernelSource = KernelSource {
    name: "attention",
    source: include_str!("../../../kernels/attention.cu"),
};

/// Average pooling and its gradient (the reward classifier's).
pub const POOL: KernelSource = KernelSource {
    name: "pool",
    source: include_str!("../../../kernels/pool.cu"),
};

/// The fused guidance + scheduler step (see `backend::guided_step`).
pub const GUIDED_STEP: KernelSource = KernelSource {
    name: "guided_step",
    source: include_str!("../../../kernels/guided_step.cu"),
};

/// Flash attention on tensor cores (`mma.sync`, sm_80+) for f16 and bf16, specialised
/// per head dimension like [`ATTENTION`], which remains the f32 kernel.
pub const ATTENTION_MMA: KernelSource = KernelSource {
    name: "attention_mma",
    source: include_str!("../../../kernels/attention_mma.cu"),
};

/// Convolutions as implicit GEMMs on tensor cores (`mma.sync`, sm_80+) for f16 and
/// bf16, with the bias, per-sample bias and residual applied as outputs are written.
pub const CONV_MMA: KernelSource = KernelSource {
    name: "conv_mma",
    source: include_str!("../../../kernels/conv_mma.cu"),
};

/// The files compiled for every element type.
pub const ALL: &[KernelSource] = &[ELEMENTWISE, CONV, NORM, ATTENTION, POOL, GUIDED_STEP];

/// The files compiled only for the 16-bit element types, on sm_80 and newer.
pub const TENSOR_CORE_ONLY: &[KernelSource] = &[CONV_MMA];

/// The head dimensions the tensor-core attention kernel is written for; others
/// use [`ATTENTION`] in any precision.
pub const ATTENTION_MMA_HEAD_DIMS: &[usize] = &[16, 40, 64, 80, 128, 160];

/// The head dimensions the attention kernel is compiled for ahead of use in CI:
/// the digits model (8), SD 1.x/2.x (40, 64, 80, 160), the common 128, and the
/// single 512-wide head of SD's VAE mid-block attention.
pub const ATTENTION_HEAD_DIMS: &[usize] = &[8, 16, 40, 64, 80, 128, 160, 512];

/// The grid and block of one launch (every kernel uses 1-D blocks), shared by the
/// backend and the tests that run the kernels' source on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: u32,
}

/// Threads per block of the grid-stride kernels and of group norm's statistics.
pub const BLOCK: u32 = 256;

/// Enough blocks to fill an H100/H200-class GPU several times over; grid-stride
/// loops cover the rest.
pub const MAX_BLOCKS: u64 = 132 * 16;

/// A grid-stride kernel over `n` elements: one thread per element, at most
/// [`MAX_BLOCKS`] blocks of [`BLOCK`].
pub fn grid_stride_launch(n: u64) -> Launch {
    grid_stride_launch_capped(n, MAX_BLOCKS)
}

/// [`grid_stride_launch`] with at most `max_blocks` blocks (tests use a small cap to
/// make every thread loop).
pub fn grid_stride_launch_capped(n: u64, max_blocks: u64) -> Launch {
    Launch {
        grid: (
            n.div_ceil(BLOCK as u64).clamp(1, max_blocks.max(1)) as u32,
            1,
            1,
        ),
        block: BLOCK,
    }
}

/// kernels/norm.cu's `group_norm_affine`: one block per (sample, group).
pub fn group_norm_stats_launch(samples: usize, groups: usize) -> Launch {
    Launch {
        grid: ((samples * groups) as u32, 1, 1),
        block: BLOCK,
    }
}

/// Rows (warps) per block of kernels/norm.cu's `layer_norm`.
pub const LAYER_NORM_ROWS_PER_BLOCK: u64 = 4;

/// kernels/norm.cu's `layer_norm`: one warp per row.
pub fn layer_norm_launch(rows: u64) -> Launch {
    Launch {
        grid: (rows.div_ceil(LAYER_NORM_ROWS_PER_BLOCK).max(1) as u32, 1, 1),
        block: 32 * LAYER_NORM_ROWS_PER_BLOCK as u32,
    }
}

/// Warps per block of kernels/attention.cu (its WARPS_PER_BLOCK).
pub const ATTENTION_SCALAR_WARPS: u64 = 4;

/// kernels/attention.cu's `attention_scalar`: one warp per (image, head, query row).
pub fn attention_scalar_launch(batch: usize, heads: usize, q_len: usize) -> Launch {
    let warps = (batch * heads * q_len) as u64;
    Launch {
        grid: (warps.div_ceil(ATTENTION_SCALAR_WARPS) as u32, 1, 1),
        block: 32 * ATTENTION_SCALAR_WARPS as u32,
    }
}

/// kernels/attention_mma.cu: a block per [`attention_mma_block_q`] query rows of one
/// head of one image.
pub fn attention_mma_launch(head_dim: usize, batch: usize, heads: usize, q_len: usize) -> Launch {
    Launch {
        grid: (
            q_len.div_ceil(attention_mma_block_q(head_dim)) as u32,
            heads as u32,
            batch as u32,
        ),
        block: ATTENTION_MMA_THREADS,
    }
}

/// kernels/conv_mma.cu: one block per output tile.
pub fn conv_mma_launch(d: &ConvDims) -> Launch {
    Launch {
        grid: (conv_mma_tiles(d) as u32, 1, 1),
        block: CONV_MMA_THREADS,
    }
}

/// kernels/guided_step.cu: one block per slot.
pub fn guided_step_launch(slots: usize) -> Launch {
    Launch {
        grid: (slots as u32, 1, 1),
        block: GUIDED_STEP_THREADS,
    }
}

/// Threads per block of kernels/attention_mma.cu (4 warps).
pub const ATTENTION_MMA_THREADS: u32 = 128;

/// Query rows per block of kernels/attention_mma.cu (its ATTN_BLOCK_Q): the grid is
/// (⌈lq / this⌉, heads, batch).
pub fn attention_mma_block_q(head_dim: usize) -> usize {
    if head_dim <= 80 {
        128
    } else {
        64
    }
}

/// kernels/conv_mma.cu's output tile (pixels × channels) and block size.
pub const CONV_MMA_TILE_PIXELS: usize = 128;
pub const CONV_MMA_TILE_CHANNELS: usize = 128;
pub const CONV_MMA_THREADS: u32 = 256;

/// Output tiles of kernels/conv_mma.cu, one block each on its 1-D grid.
pub fn conv_mma_tiles(d: &ConvDims) -> usize {
    d.rows().div_ceil(CONV_MMA_TILE_PIXELS) * d.out_channels.div_ceil(CONV_MMA_TILE_CHANNELS)
}

/// The geometry arguments, in order, that kernels/conv.cu's `im2col` and `col2im`
/// and kernels/conv_mma.cu take: h, w, c_in, kh, kw, stride, pad_top, pad_left,
/// oh, ow.
pub fn conv_geometry_args(d: &ConvDims, g: &Conv2dGeometry) -> [u32; 10] {
    [
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
    .map(|v| v as u32)
}

/// The geometry arguments, in order, that kernels/pool.cu's `avg_pool` and
/// `avg_pool_backward` take: h, w, c, k, oh, ow.
pub fn pool_geometry_args(d: &PoolDims) -> [u32; 6] {
    [
        d.height,
        d.width,
        d.channels,
        d.kernel,
        d.out_height,
        d.out_width,
    ]
    .map(|v| v as u32)
}

/// Threads per block of kernels/guided_step.cu (its GS_THREADS); one block per slot.
pub const GUIDED_STEP_THREADS: u32 = 256;

/// The define that fixes a module's element type (see kernels/prelude.cuh).
pub fn elem_define(precision: Precision) -> String {
    match precision {
        Precision::F32 => "ELEM_F32",
        Precision::F16 => "ELEM_F16",
        Precision::BF16 => "ELEM_BF16",
    }
    .to_string()
}

pub fn head_dim_define(head_dim: usize) -> Vec<String> {
    vec![format!("HEAD_DIM={head_dim}")]
}

/// The defines of kernels/attention.cu's causal build (self-attention where query
/// `i` sees keys `0..=i`: CLIP's text encoder), at `head_dim`.
pub fn causal_attention_defines(head_dim: usize) -> Vec<String> {
    let mut defines = head_dim_define(head_dim);
    defines.push("CAUSAL=1".to_string());
    defines
}

/// The head dimensions the causal attention build is compiled for ahead of use in
/// CI: CLIP ViT-L/14 and OpenCLIP ViT-H/14 text encoders (SD 1.x, 2.x) both use 64.
pub const CAUSAL_ATTENTION_HEAD_DIMS: &[usize] = &[64];

/// The NVRTC options used for every kernel of `arch` (e.g. `sm_90`), plus `defines`
/// (`NAME=VALUE`) used to specialise head dims and tile sizes.
pub fn compile_options(arch: &str, defines: &[String]) -> Vec<String> {
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--fmad=true".to_string(),
    ];
    options.extend(defines.iter().map(|d| format!("-D{d}")));
    options
}

/// A hex key that changes whenever the source, the architecture or an option does.
pub fn cache_key(kernel: &KernelSource, options: &[String]) -> String {
    let mut hasher = DefaultHasher::new();
    kernel.compiled_text().hash(&mut hasher);
    options.hash(&mut hasher);
    format!("{}-{:016x}", kernel.name, hasher.finish())
}

/// Where compiled PTX is kept between runs: `$DIFFSTEER_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/diffsteer/kernels`, else `~/.cache/diffsteer/kernels`.
pub fn disk_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DIFFSTEER_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("diffsteer/kernels"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/diffsteer/kernels"))
}

/// The outcome of an offline compile: sizes and the compiler log, which holds
/// ptxas' register, shared-memory and spill figures per kernel.
#[derive(Debug, Clone)]
pub struct CompileReport {
    pub ptx_bytes: usize,
    pub cubin_bytes: usize,
    pub log: String,
}

impl CompileReport {
    /// Lines of the log that report resource usage or spills.
    pub fn resource_lines(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| {
                l.contains("registers") || l.contains("spill") || l.contains("Compiling entry")
            })
            .collect()
    }

    /// ptxas' figures for each entry function of the log (`ptxas -v`), in log order:
    /// from "Compiling entry function 'NAME' for 'ARCH'", the "N bytes stack frame,
    /// S bytes spill stores, L bytes spill loads" line under "Function properties for
    /// NAME", and "Used R registers". An entry whose lines are missing or unreadable
    /// has `None` in those fields.
    pub fn entry_resources(&self) -> Vec<EntryResources> {
        let mut entries: Vec<EntryResources> = Vec::new();
        let mut properties_of: Option<String> = None;
        for line in self.log.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                let mut parts = rest.split('\'');
                let name = parts.next().unwrap_or_default().to_string();
                let arch = parts.nth(1).unwrap_or_default().to_string();
                entries.push(EntryResources {
                    name,
                    arch,
                    registers: None,
                    spill_stores: None,
                    spill_loads: None,
                });
                properties_of = None;
            } else if let Some(name) = line.split("Function properties for ").nth(1) {
                properties_of = Some(name.trim().to_string());
            } else if line.contains("spill stores") {
                let current = entries
                    .last_mut()
                    .filter(|e| properties_of.as_deref() == Some(e.name.as_str()));
                if let Some(e) = current {
                    e.spill_stores = number_before(line, "bytes spill stores");
                    e.spill_loads = number_before(line, "bytes spill loads");
                }
            } else if let Some(rest) = line.split("Used ").nth(1) {
                if let Some(e) = entries.last_mut() {
                    if rest.contains("registers") {
                        e.registers = number_before(line, "registers");
                    }
                }
            }
        }
        entries
    }
}

/// The whole number just before `unit` in `line` ("0 bytes spill stores").
fn number_before(line: &str, unit: &str) -> Option<u64> {
    let before = &line[..line.find(unit)?];
    before.split_whitespace().next_back()?.parse().ok()
}

/// ptxas' resource figures for one entry function (see [`CompileReport::entry_resources`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryResources {
    pub name: String,
    pub arch: String,
    pub registers: Option<u64>,
    pub spill_stores: Option<u64>,
    pub spill_loads: Option<u64>,
}

impl KernelSource {
    /// The names of the file's kernels (its `extern "C" __global__` functions), in
    /// source order.
    pub fn entry_points(&self) -> Vec<String> {
        let mut names = Vec::new();
        for piece in self.source.split("extern \"C\" __global__").skip(1) {
            let mut rest = piece.trim_start();
            rest = rest.strip_prefix("void").unwrap_or(rest).trim_start();
            if let Some(bounds) = rest.strip_prefix("__launch_bounds__") {
                // Skip the parenthesised bounds, which may nest.
                let mut depth = 0usize;
                let mut end = bounds.len();
                for (i, ch) in bounds.char_indices() {
                    match ch {
                        '(' => depth += 1,
                        ')' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = bounds[end..].trim_start();
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
        names
    }
}

/// Compiles `kernel` for a real architecture (`sm_90`) to PTX and CUBIN with
/// `ptxas -v`, needing only libnvrtc (no GPU, no driver): what CI runs to make sure
/// no kernel that fails to compile lands.
pub fn compile_with_report(
    kernel: &KernelSource,
    arch: &str,
    defines: &[String],
) -> crate::error::Result<CompileReport> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::CString;

    use crate::error::Error;

    // SAFETY: only checks whether libnvrtc can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Cuda("libnvrtc not found (install the nvidia-cuda-nvrtc wheel or the CUDA toolkit, and add its lib folder to LD_LIBRARY_PATH)".into()));
    }
    let source = CString::new(kernel.compiled_text())
        .map_err(|_| Error::Cuda(format!("{}.cu contains a NUL byte", kernel.name)))?;
    let name = CString::new(format!("{}.cu", kernel.name))
        .map_err(|_| Error::Cuda("bad kernel name".into()))?;
    let mut options = compile_options(arch, defines);
    options.push("--ptxas-options=-v".to_string());
    let program = result::create_program(&source, Some(&name)).map_err(|e| {
        Error::Cuda(format!(
            "NVRTC cannot create a program for {}.cu: {e:?}",
            kernel.name
        ))
    })?;
    // SAFETY: `program` comes from create_program and is destroyed exactly once below;
    // `source` and `name` outlive it.
    let outcome = unsafe {
        let compiled = result::compile_program(program, &options);
        let log = result::get_program_log(program)
            .map(|chars| {
                let bytes: Vec<u8> = chars
                    .iter()
                    .map(|&c| c as u8)
                    .take_while(|&b| b != 0)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        match compiled {
            Err(e) => Err(Error::Cuda(format!(
                "NVRTC failed to compile {}.cu for {arch}: {e:?}\n{log}",
                kernel.name
            ))),
            Ok(()) => {
                let ptx = result::get_ptx(program).map(|p| p.len()).unwrap_or(0);
                let mut cubin = 0usize;
                let size_ok = sys::nvrtcGetCUBINSize(program, &mut cubin as *mut usize)
                    .result()
                    .is_ok();
                Ok(CompileReport {
                    ptx_bytes: ptx,
                    cubin_bytes: if size_ok { cubin } else { 0 },
                    log,
                })
            }
        }
    };
    // SAFETY: created above and not yet destroyed.
    let _ = unsafe { result::destroy_program(program) };
    outcome
}
