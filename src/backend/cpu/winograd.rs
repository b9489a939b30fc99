//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(4×4, 3×3) (Lavin &
//! Gray 2016): each 4×4 block of output pixels is computed from a 6×6 input tile
//! with 36 multiplications per (input, output) channel pair instead of 144.
//!
//! NHWC makes every transform a loop over contiguous channels, so they vectorise.
//! Output tiles are taken in chunks; one rayon task transforms its chunk's inputs
//! into a `[36][tile][c_in]` buffer, runs one GEMM per transform point against the
//! transformed weights `[36][c_in][c_out]`, and transforms the `[36][tile][c_out]`
//! products back into output pixels. The chunk is sized to stay in L2. When there
//! are fewer chunks than threads, each chunk's output channels are also split into
//! column panels, one task each.
//!
//! The interpolation points are 0, ±1, ±2 (and ∞). Weights are transformed in f64
//! and rounded once, so the only extra rounding is in the two data transforms;
//! the U-Net fixture tests check the whole forward against diffusers.

use rayon::prelude::*;

use super::epilogue::Epilogue;
use super::shared_out::SharedOut;
use super::small_gemm::small_matmul;
use super::vmath::madd;
use crate::backend::shapes::ConvDims;
use crate::backend::Conv2dGeometry;
use crate::error::Result;
use crate::tensor::{pool, Tensor};

/// Output pixels per tile side.
const TILE: usize = 4;
/// Input pixels per tile side: TILE + kernel − 1.
const SPAN: usize = 6;
/// Transform points per tile.
const POINTS: usize = SPAN * SPAN;
/// Below this many input or output channels the im2col GEMM (K = 9·c_in) wins:
/// the transforms cost as much as the multiplications they save (a U-Net's first
/// and last convolutions, with 1 to 4 image channels, stay direct).
const MIN_CHANNELS: usize = 16;
/// Chunks per thread at most, so that a thread that starts late (waking up takes
/// tens of microseconds, a small batch's whole convolution) leaves its share to the
/// others rather than doubling the wall time.
const CHUNKS_PER_THREAD: usize = 4;
/// Transformed weights are kept with the weight tensor and take 4× its memory, so
/// convolutions whose transformed weights would exceed this many floats (16 MiB:
/// SD's 640- and 1280-channel layers, which would more than double the model's
/// memory) stay on the im2col GEMM. Transforming them on every call instead cost
/// more than it saved at the small spatial sizes where those layers run.
const MAX_TRANSFORMED_FLOATS: usize = 1 << 22;
/// Output channels per column panel are a multiple of this (two AVX-512 vectors).
const PANEL_ALIGN: usize = 32;
/// Tiles below which the product's register tile runs short of rows.
const REGISTER_ROWS: usize = 8;
/// Tiles per chunk below which re-reading the transformed weights dominates.
const MIN_TILES_PER_CHUNK: usize = 48;
/// Floats of transformed inputs plus products one task aims to keep (1 MiB: one L2).
const CHUNK_FLOATS: usize = 1 << 18;

/// `Bᵀ` of F(4×4, 3×3): data transform rows (`data_transform` spells them out).
#[cfg(test)]
const BT: [[f64; SPAN]; SPAN] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// `G` of F(4×4, 3×3): filter transform rows.
const G: [[f64; 3]; SPAN] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Whether [`conv2d`] computes this convolution.
pub fn applies(s: &ConvDims, g: &Conv2dGeometry) -> bool {
    s.kernel_h == 3
        && s.kernel_w == 3
        && g.stride == 1
        && s.in_channels >= MIN_CHANNELS
        && s.out_channels >= MIN_CHANNELS
        && POINTS * s.in_channels * s.out_channels <= MAX_TRANSFORMED_FLOATS
}

/// The convolution of `x` (NHWC) with `weight` (`[3, 3, c_in, c_out]`); the caller
/// checked [`applies`]. The transformed weights are kept with the weight tensor.
pub fn conv2d(
    x: &[f32],
    weight: &Tensor,
    bias: Option<&[f32]>,
    s: &ConvDims,
    g: &Conv2dGeometry,
    epilogue: Epilogue,
) -> Result<Vec<f32>> {
    let (cin, cout) = (s.in_channels, s.out_channels);
    let mut out = pool::for_overwrite(s.rows() * cout);
    let tiles_y = s.out_height.div_ceil(TILE);
    let tiles_x = s.out_width.div_ceil(TILE);
    let tiles = s.batch * tiles_y * tiles_x;
    if tiles == 0 || cout == 0 {
        return Ok(out);
    }
    let raw = weight.cpu_data()?;
    let u = weight.derived(|| transform_weights(raw, cin, cout));
    // Chunks that fit in cache, but at least MIN_TILES_PER_CHUNK tiles so that the
    // transformed weights (read once per chunk, 14 MiB at 320 channels) are
    // amortised; at most a quarter of a thread's share, so that small batches use
    // every core; never fewer tiles than one register tile of the product. Results
    // do not depend on the chunking: every output sums its terms in the same order.
    let threads = super::op_threads::op_threads();
    let per_chunk = (CHUNK_FLOATS / (POINTS * (cin + cout)))
        .max(MIN_TILES_PER_CHUNK)
        .min(tiles.div_ceil(CHUNKS_PER_THREAD * threads))
        .max(REGISTER_ROWS.min(tiles));
    let chunks = tiles.div_ceil(per_chunk);
    let panel_width = panel_width(chunks, threads, cout);
    let panels = cout.div_ceil(panel_width);
    let shared = SharedOut::new(&mut out);
    let layout = TileLayout {
        s: *s,
        pad_top: g.pad_top,
        pad_left: g.pad_left,
        tiles_y,
        tiles_x,
    };

    (0..chunks * panels).into_par_iter().for_each_init(
        || {
            Scratch::take(
                per_chunk * POINTS * cin,
                per_chunk * POINTS * panel_width,
                2 * POINTS * cin.max(cout),
            )
        },
        |scratch, task| {
            let (chunk, panel) = (task / panels, task % panels);
            let first = chunk * per_chunk;
            let n = per_chunk.min(tiles - first);
            let columns = Columns {
                first: panel * panel_width,
                width: panel_width.min(cout - panel * panel_width),
            };
            let Scratch { v, m, d } = scratch;
            input_tiles_best(x, &layout, first, n, v, d);
            for point in 0..POINTS {
                small_matmul(
                    &mut m[point * n * columns.width..],
                    columns.width,
                    &v[point * n * cin..],
                    cin,
                    &u[point * cin * cout + columns.first..(point + 1) * cin * cout],
                    cout,
                    n,
                    cin,
                    columns.width,
                );
            }
            output_tiles_best(m, bias, &epilogue, &layout, first, n, columns, shared, d);
        },
    );
    Ok(out)
}

/// Output channels per task. With fewer tile chunks than threads (a small batch at
/// a coarse level: 7×7 pixels make 8 tiles for two images), the output channels
/// are split into panels too, so that every thread works; each panel's task
/// transforms the chunk's inputs itself, and reads only its panel's columns of
/// the transformed weights. Panels are whole vectors of the product's widest
/// register tile.
fn panel_width(chunks: usize, threads: usize, cout: usize) -> usize {
    if chunks >= threads {
        return cout;
    }
    let panels = threads.div_ceil(chunks);
    cout.div_ceil(panels)
        .next_multiple_of(PANEL_ALIGN)
        .min(cout)
}

/// A range of output channels.
#[derive(Clone, Copy)]
struct Columns {
    first: usize,
    width: usize,
}

#[derive(Default)]
struct Scratch {
    /// Transformed inputs, `[point][tile][c_in]`.
    v: Vec<f32>,
    /// Products, `[point][tile][channel]` for the task's column panel.
    m: Vec<f32>,
    /// Per-tile staging for the separable transforms.
    d: Vec<f32>,
}

/// Floats of scratch a thread keeps between convolutions (1 MiB: a small batch's
/// chunks, which the tensor pool does not keep and would otherwise be allocated
/// and zeroed for every task); larger scratch goes back to the pool.
const KEPT_SCRATCH_FLOATS: usize = 1 << 18;

thread_local! {
    /// This thread's scratch from its last convolution.
    static KEPT_SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

impl Scratch {
    /// Buffers of at least these lengths (their contents are unspecified: every
    /// element is written before it is read), reusing this thread's kept scratch.
    fn take(v: usize, m: usize, d: usize) -> Scratch {
        let mut scratch = KEPT_SCRATCH.with(|k| k.take());
        for (buffer, len) in [(&mut scratch.v, v), (&mut scratch.m, m)] {
            if buffer.len() < len {
                pool::recycle(std::mem::take(buffer));
                *buffer = pool::for_overwrite(len);
            }
        }
        if scratch.d.len() < d {
            scratch.d.resize(d, 0.0);
        }
        scratch
    }
}

impl Scratch {
    fn floats(&self) -> usize {
        self.v.capacity() + self.m.capacity() + self.d.capacity()
    }

    /// Moves this scratch into the thread's kept slot if the slot is empty (one
    /// task can hold a second scratch while the first is kept) and the thread is
    /// not exiting; says whether it did.
    fn keep(&mut self) -> bool {
        KEPT_SCRATCH
            .try_with(|slot| {
                let kept = slot.take();
                if kept.floats() == 0 {
                    slot.set(std::mem::take(self));
                    true
                } else {
                    slot.set(kept);
                    false
                }
            })
            .unwrap_or(false)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let floats = self.floats();
        if floats == 0 || (floats <= KEPT_SCRATCH_FLOATS && self.keep()) {
            return;
        }
        pool::recycle(std::mem::take(&mut self.v));
        pool::recycle(std::mem::take(&mut self.m));
    }
}

#[derive(Clone, Copy)]
struct TileLayout {
    s: ConvDims,
    pad_top: usize,
    pad_left: usize,
    tiles_y: usize,
    tiles_x: usize,
}

impl TileLayout {
    /// (image, first output row, first output column) of tile `t`.
    fn origin(&self, t: usize) -> (usize, usize, usize) {
        let tx = t % self.tiles_x;
        let ty = (t / self.tiles_x) % self.tiles_y;
        let b = t / (self.tiles_x * self.tiles_y);
        (b, ty * TILE, tx * TILE)
    }
}

/// `U = G·g·Gᵀ` for every (c_in, c_out) pair, as `[point][c_in][c_out]`, computed
/// in f64 and rounded once. The (c_in, c_out) plane is cut into blocks that are
/// transformed separably (`G·g`, then `·Gᵀ`) with the plane index innermost, so the
/// loops vectorise; this runs once per weight, on the first forward.
fn transform_weights(weight: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    const BLOCK: usize = 256;
    let plane = cin * cout;
    let mut u = pool::for_overwrite(POINTS * plane);
    let blocks = plane.div_ceil(BLOCK);
    let shared = SharedOut::new(&mut u);
    (0..blocks).into_par_iter().for_each(|block| {
        let start = block * BLOCK;
        let len = BLOCK.min(plane - start);
        // g[a][b][e] for this block, then half[i][b][e] = Σ_a G[i][a]·g[a][b][e].
        let mut g = [[[0f64; BLOCK]; 3]; 3];
        for (a, rows) in g.iter_mut().enumerate() {
            for (b, row) in rows.iter_mut().enumerate() {
                let src = &weight[(a * 3 + b) * plane + start..][..len];
                for (d, &w) in row.iter_mut().zip(src) {
                    *d = w as f64;
                }
            }
        }
        let mut half = [[[0f64; BLOCK]; 3]; SPAN];
        for (i, rows) in half.iter_mut().enumerate() {
            for (b, row) in rows.iter_mut().enumerate() {
                for (e, d) in row[..len].iter_mut().enumerate() {
                    *d = G[i][0] * g[0][b][e] + G[i][1] * g[1][b][e] + G[i][2] * g[2][b][e];
                }
            }
        }
        let mut point_row = [0f32; BLOCK];
        for (i, h) in half.iter().enumerate() {
            for (j, gj) in G.iter().enumerate() {
                for (e, d) in point_row[..len].iter_mut().enumerate() {
                    *d = (h[0][e] * gj[0] + h[1][e] * gj[1] + h[2][e] * gj[2]) as f32;
                }
                let offset = (i * SPAN + j) * plane + start;
                debug_assert!(offset + len <= shared.len());
                // SAFETY: block `block` alone writes elements start .. start + len of
                // every point's plane, all inside `u`.
                unsafe {
                    std::ptr::copy_nonoverlapping(point_row.as_ptr(), shared.ptr().add(offset), len)
                };
            }
        }
    });
    u
}

// The row helpers below are spelled out rather than built with
// `std::array::from_fn`, which was not inlined: the arrays of slices then went
// through memory, and reloading them stalled on store forwarding (a fifth of the
// input transform's time).

/// Six rows of `c` values, `stride` apart, starting at `block`'s start.
#[inline(always)]
fn six_rows(block: &[f32], stride: usize, c: usize) -> [&[f32]; SPAN] {
    [
        &block[..c],
        &block[stride..stride + c],
        &block[2 * stride..2 * stride + c],
        &block[3 * stride..3 * stride + c],
        &block[4 * stride..4 * stride + c],
        &block[5 * stride..5 * stride + c],
    ]
}

/// The first six consecutive rows of `c` values of `block`, as separate slices.
#[inline(always)]
fn rows6_mut(block: &mut [f32], c: usize) -> [&mut [f32]; SPAN] {
    strided_rows6_mut(block, c, c)
}

/// The first four consecutive rows of `c` values of `block`, as separate slices.
#[inline(always)]
fn rows4_mut(block: &mut [f32], c: usize) -> [&mut [f32]; TILE] {
    let (r0, rest) = block.split_at_mut(c);
    let (r1, rest) = rest.split_at_mut(c);
    let (r2, rest) = rest.split_at_mut(c);
    [r0, r1, r2, &mut rest[..c]]
}

/// Six rows of `c` values, `stride` apart, starting at `block`'s start.
#[inline(always)]
fn strided_rows6_mut(block: &mut [f32], stride: usize, c: usize) -> [&mut [f32]; SPAN] {
    let (r0, rest) = block.split_at_mut(stride);
    let (r1, rest) = rest.split_at_mut(stride);
    let (r2, rest) = rest.split_at_mut(stride);
    let (r3, rest) = rest.split_at_mut(stride);
    let (r4, rest) = rest.split_at_mut(stride);
    [
        &mut r0[..c],
        &mut r1[..c],
        &mut r2[..c],
        &mut r3[..c],
        &mut r4[..c],
        &mut rest[..c],
    ]
}

/// `y = Bᵀ·x` over six vectors of channels.
#[inline(always)]
fn data_transform<const FMA: bool>(x: [&[f32]; SPAN], y: [&mut [f32]; SPAN]) {
    let [x0, x1, x2, x3, x4, x5] = x;
    let [y0, y1, y2, y3, y4, y5] = y;
    data_transform_rows::<FMA>(x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5);
}

/// [`data_transform`] with every row a parameter of its own: LLVM knows that
/// distinct `&mut` parameters do not overlap (it cannot know that of references
/// inside an array) and vectorises the loop without runtime overlap checks, which
/// had sent it down its scalar path.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn data_transform_rows<const FMA: bool>(
    x0: &[f32],
    x1: &[f32],
    x2: &[f32],
    x3: &[f32],
    x4: &[f32],
    x5: &[f32],
    y0: &mut [f32],
    y1: &mut [f32],
    y2: &mut [f32],
    y3: &mut [f32],
    y4: &mut [f32],
    y5: &mut [f32],
) {
    let n = y0.len();
    let (x0, x1, x2, x3, x4, x5) = (&x0[..n], &x1[..n], &x2[..n], &x3[..n], &x4[..n], &x5[..n]);
    let (y1, y2, y3, y4, y5) = (
        &mut y1[..n],
        &mut y2[..n],
        &mut y3[..n],
        &mut y4[..n],
        &mut y5[..n],
    );
    for c in 0..n {
        let (a, b) = (x1[c], x2[c]);
        let (p, q) = (x3[c], x4[c]);
        let (q_minus_b, p_plus_q) = (q - b, p + q);
        y0[c] = madd::<FMA>(4.0, x0[c], madd::<FMA>(-5.0, b, q));
        y1[c] = madd::<FMA>(-4.0, a + b, p_plus_q);
        y2[c] = madd::<FMA>(4.0, a - b, q - p);
        y3[c] = madd::<FMA>(2.0, p - a, q_minus_b);
        y4[c] = madd::<FMA>(2.0, a - p, q_minus_b);
        y5[c] = madd::<FMA>(4.0, a, madd::<FMA>(-5.0, p, x5[c]));
    }
}

/// `y = Aᵀ·m + bias` over six vectors of channels (four outputs).
#[inline(always)]
fn output_transform<const FMA: bool>(m: [&[f32]; SPAN], bias: &[f32], y: [&mut [f32]; TILE]) {
    let [m0, m1, m2, m3, m4, m5] = m;
    let [y0, y1, y2, y3] = y;
    output_transform_rows::<FMA>(m0, m1, m2, m3, m4, m5, bias, y0, y1, y2, y3);
}

/// [`output_transform`] with every row a parameter of its own (see
/// [`data_transform_rows`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_transform_rows<const FMA: bool>(
    m0: &[f32],
    m1: &[f32],
    m2: &[f32],
    m3: &[f32],
    m4: &[f32],
    m5: &[f32],
    bias: &[f32],
    y0: &mut [f32],
    y1: &mut [f32],
    y2: &mut [f32],
    y3: &mut [f32],
) {
    let n = y0.len();
    let (m0, m1, m2, m3, m4, m5) = (&m0[..n], &m1[..n], &m2[..n], &m3[..n], &m4[..n], &m5[..n]);
    let bias = &bias[..n];
    let (y1, y2, y3) = (&mut y1[..n], &mut y2[..n], &mut y3[..n]);
    for c in 0..n {
        let (s12, d12) = (m1[c] + m2[c], m1[c] - m2[c]);
        let (s34, d34) = (m3[c] + m4[c], m3[c] - m4[c]);
        y0[c] = m0[c] + s12 + s34 + bias[c];
        y1[c] = d12 + 2.0 * d34 + bias[c];
        y2[c] = s12 + 4.0 * s34 + bias[c];
        y3[c] = d12 + 8.0 * d34 + m5[c] + bias[c];
    }
}

// The transforms are too large for `with_best_isa!`'s closure to be inlined into
// its AVX2 function (it was then compiled for the baseline target), so they get
// explicit AVX2 wrappers that call the `#[inline(always)]` bodies directly.

fn input_tiles_best(
    x: &[f32],
    layout: &TileLayout,
    first: usize,
    n: usize,
    v: &mut [f32],
    scratch: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { input_tiles_avx2(x, layout, first, n, v, scratch) };
    }
    input_tiles::<false>(x, layout, first, n, v, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_tiles_avx2(
    x: &[f32],
    layout: &TileLayout,
    first: usize,
    n: usize,
    v: &mut [f32],
    scratch: &mut [f32],
) {
    input_tiles::<true>(x, layout, first, n, v, scratch)
}

#[allow(clippy::too_many_arguments)]
fn output_tiles_best(
    m: &[f32],
    bias: Option<&[f32]>,
    epilogue: &Epilogue,
    layout: &TileLayout,
    first: usize,
    n: usize,
    columns: Columns,
    out: SharedOut,
    scratch: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe {
            output_tiles_avx2(m, bias, epilogue, layout, first, n, columns, out, scratch)
        };
    }
    output_tiles::<false>(m, bias, epilogue, layout, first, n, columns, out, scratch)
}

#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_tiles_avx2(
    m: &[f32],
    bias: Option<&[f32]>,
    epilogue: &Epilogue,
    layout: &TileLayout,
    first: usize,
    n: usize,
    columns: Columns,
    out: SharedOut,
    scratch: &mut [f32],
) {
    output_tiles::<true>(m, bias, epilogue, layout, first, n, columns, out, scratch)
}

/// Writes `Bᵀ·d·B` of tiles `first .. first + n` into `v` as `[point][tile][c_in]`.
#[inline(always)]
fn input_tiles<const FMA: bool>(
    x: &[f32],
    layout: &TileLayout,
    first: usize,
    n: usize,
    v: &mut [f32],
    scratch: &mut [f32],
) {
    let s = &layout.s;
    let cin = s.in_channels;
    let (d, tmp) = scratch.split_at_mut(POINTS * cin);
    for t in 0..n {
        let (b, oy, ox) = layout.origin(first + t);
        let (iy0, ix0) = (
            oy as isize - layout.pad_top as isize,
            ox as isize - layout.pad_left as isize,
        );
        let inside = iy0 >= 0
            && ix0 >= 0
            && iy0 as usize + SPAN <= s.height
            && ix0 as usize + SPAN <= s.width;
        // Tiles inside the image are read in place (a row of six pixels is
        // contiguous in NHWC); the others are gathered with zeros where they
        // overhang the padded border.
        let (source, row_stride): (&[f32], usize) = if inside {
            let base = ((b * s.height + iy0 as usize) * s.width + ix0 as usize) * cin;
            (&x[base..], s.width * cin)
        } else {
            // Per tile row: zeros left of the image, one copy of the pixels inside
            // (contiguous in NHWC), zeros right of it.
            let lo = (-ix0).clamp(0, SPAN as isize) as usize;
            let hi = (s.width as isize - ix0).clamp(lo as isize, SPAN as isize) as usize;
            for ky in 0..SPAN {
                let iy = iy0 + ky as isize;
                let dst = &mut d[ky * SPAN * cin..(ky + 1) * SPAN * cin];
                if iy < 0 || iy >= s.height as isize || lo == hi {
                    dst.fill(0.0);
                    continue;
                }
                dst[..lo * cin].fill(0.0);
                let src =
                    ((b * s.height + iy as usize) * s.width + (ix0 + lo as isize) as usize) * cin;
                dst[lo * cin..hi * cin].copy_from_slice(&x[src..src + (hi - lo) * cin]);
                dst[hi * cin..].fill(0.0);
            }
            (&*d, SPAN * cin)
        };
        // Columns first (into tmp, column-major), then rows straight into v.
        for col in 0..SPAN {
            data_transform::<FMA>(
                six_rows(&source[col * cin..], row_stride, cin),
                rows6_mut(&mut tmp[col * SPAN * cin..], cin),
            );
        }
        // Point (row, j) of tile t goes to v[(row·6 + j)·n + t].
        for row in 0..SPAN {
            data_transform::<FMA>(
                six_rows(&tmp[row * cin..], SPAN * cin, cin),
                strided_rows6_mut(&mut v[(row * SPAN * n + t) * cin..], n * cin, cin),
            );
        }
    }
}

/// Turns the products `m` (`[point][tile][channel]` for the channels `columns`) of
/// tiles `first .. first + n` into those channels of the output pixels
/// `Aᵀ·m·A + bias` (then the epilogue), dropping pixels past the image edge.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_tiles<const FMA: bool>(
    m: &[f32],
    bias: Option<&[f32]>,
    epilogue: &Epilogue,
    layout: &TileLayout,
    first: usize,
    n: usize,
    columns: Columns,
    out: SharedOut,
    scratch: &mut [f32],
) {
    let s = &layout.s;
    let cout = s.out_channels;
    let (c0, width_c) = (columns.first, columns.width);
    let (tmp, rest) = scratch.split_at_mut(SPAN * TILE * width_c);
    let (rows, zeros) = rest.split_at_mut(TILE * width_c);
    let zeros = &mut zeros[..width_c];
    zeros.fill(0.0);
    let zeros = &*zeros;
    let bias = bias.map_or(zeros, |b| &b[c0..c0 + width_c]);
    for t in 0..n {
        let (b, oy, ox) = layout.origin(first + t);
        // Columns first: tmp[col][out_row]; point (k, col) of tile t is
        // m[(k·6 + col)·n + t].
        for col in 0..SPAN {
            output_transform::<FMA>(
                six_rows(&m[(col * n + t) * width_c..], SPAN * n * width_c, width_c),
                zeros,
                rows4_mut(&mut tmp[col * TILE * width_c..], width_c),
            );
        }
        let width = TILE.min(s.out_width - ox);
        for r in 0..TILE.min(s.out_height - oy) {
            let pixel = (b * s.out_height + oy + r) * s.out_width + ox;
            debug_assert!((pixel + width - 1) * cout + c0 + width_c <= out.len());
            let m_rows = six_rows(&tmp[r * width_c..], TILE * width_c, width_c);
            // SAFETY: tile `first + t` alone covers output row oy + r, columns
            // ox .. ox + width of image b, and this task alone writes channels
            // c0 .. c0 + width_c of them: disjoint slices inside the output buffer.
            let pixel_slice = |j: usize| unsafe {
                std::slice::from_raw_parts_mut(out.ptr().add((pixel + j) * cout + c0), width_c)
            };
            if width == TILE {
                let [p0, p1, p2, p3] = [
                    pixel_slice(0),
                    pixel_slice(1),
                    pixel_slice(2),
                    pixel_slice(3),
                ];
                output_transform::<FMA>(m_rows, bias, [&mut *p0, &mut *p1, &mut *p2, &mut *p3]);
                if !epilogue.is_empty() {
                    for (j, px) in [p0, p1, p2, p3].into_iter().enumerate() {
                        epilogue.apply_pixel(px, pixel + j, c0);
                    }
                }
            } else {
                output_transform::<FMA>(m_rows, bias, rows4_mut(rows, width_c));
                for (j, px) in rows.chunks_exact_mut(width_c).take(width).enumerate() {
                    epilogue.apply_pixel(px, pixel + j, c0);
                    pixel_slice(j).copy_from_slice(px);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{pseudo_random, reference, rel_l2};
    use super::*;

    #[test]
    fn matches_a_direct_convolution_with_partial_tiles_and_padding() {
        let cases = [
            // (batch, h, w, cin, cout, pad top/bottom/left/right)
            (2, 8, 8, 16, 16, [1, 1, 1, 1]),
            (1, 7, 7, 32, 24, [1, 1, 1, 1]),
            (3, 14, 9, 17, 20, [1, 1, 1, 1]),
            (1, 10, 11, 16, 16, [0, 1, 1, 0]),
            (1, 5, 6, 20, 16, [0, 0, 0, 0]),
            // Many input channels: the f32 error grows with the number of terms.
            (1, 5, 5, 176, 176, [1, 1, 1, 1]),
        ];
        for (case, &(batch, h, w, cin, cout, pads)) in cases.iter().enumerate() {
            let g = Conv2dGeometry {
                stride: 1,
                pad_top: pads[0],
                pad_bottom: pads[1],
                pad_left: pads[2],
                pad_right: pads[3],
            };
            let (oh, ow) = g.output_size(h, w, 3, 3).expect("fits");
            let s = ConvDims {
                batch,
                height: h,
                width: w,
                in_channels: cin,
                kernel_h: 3,
                kernel_w: 3,
                out_channels: cout,
                out_height: oh,
                out_width: ow,
            };
            assert!(applies(&s, &g));
            let x = pseudo_random(batch * h * w * cin, 11 + case as u32);
            let wt = pseudo_random(9 * cin * cout, 23 + case as u32);
            let bias = pseudo_random(cout, 5);
            let weight = Tensor::from_vec(&[3, 3, cin, cout], wt.clone()).expect("weight");
            let none = Epilogue::none(&s);
            let got = conv2d(&x, &weight, Some(&bias), &s, &g, none).expect("conv");
            let again = conv2d(&x, &weight, Some(&bias), &s, &g, none).expect("cached");
            assert_eq!(
                got, again,
                "case {case}: the cached transform changes nothing"
            );
            let want = reference(&x, &wt, &bias, &s, &g);
            assert_eq!(got.len(), want.len());
            let rel = rel_l2(&got, &want);
            // Against an f64 reference: 2.9e-6 measured at 176 channels (the U-Net
            // fixtures, with every layer, stay below 3e-6 against diffusers).
            assert!(rel < 5e-6, "case {case}: relative L2 error {rel:e}");
        }
    }

    /// Column panels (few tiles, several threads) must give the same bits as one
    /// task per chunk: every output sums its terms in the same order.
    #[test]
    fn column_panels_change_no_bits_and_keep_the_epilogue() {
        use crate::backend::ConvEpilogue;
        let cases = [
            // (batch, h, w, cin, cout): 7×7 at batch 2 is one chunk of 8 tiles.
            (2, 7, 7, 64, 64),
            (1, 5, 5, 16, 80),
            (2, 14, 14, 32, 96),
        ];
        for (case, &(batch, h, w, cin, cout)) in cases.iter().enumerate() {
            let g = Conv2dGeometry::symmetric(1, 1);
            let s = ConvDims {
                batch,
                height: h,
                width: w,
                in_channels: cin,
                kernel_h: 3,
                kernel_w: 3,
                out_channels: cout,
                out_height: h,
                out_width: w,
            };
            let x = pseudo_random(batch * h * w * cin, 3 + case as u32);
            let wt = pseudo_random(9 * cin * cout, 7 + case as u32);
            let bias = pseudo_random(cout, 9);
            let weight = Tensor::from_vec(&[3, 3, cin, cout], wt.clone()).expect("weight");
            let sample_bias =
                Tensor::from_vec(&[batch, cout], pseudo_random(batch * cout, 13)).expect("bias");
            let residual_values = pseudo_random(s.rows() * cout, 17);
            let residual =
                Tensor::from_vec(&[batch, h, w, cout], residual_values.clone()).expect("residual");
            let e = ConvEpilogue {
                sample_bias: Some(&sample_bias),
                residual: Some((&residual, 0.5)),
            };
            let epilogue = Epilogue::new(&e, &s).expect("epilogue");
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                pool.install(|| conv2d(&x, &weight, Some(&bias), &s, &g, epilogue))
                    .expect("conv")
            };
            let one = run(1);
            for threads in [2, 3, 4, 8] {
                assert!(
                    one == run(threads),
                    "case {case}: {threads} threads change the result"
                );
            }
            let mut want = reference(&x, &wt, &bias, &s, &g);
            let sb = sample_bias.cpu_data().expect("host");
            for (i, v) in want.iter_mut().enumerate() {
                let (pixel, c) = (i / cout, i % cout);
                let sample = pixel / (h * w);
                *v = (*v + sb[sample * cout + c] as f64 + residual_values[i] as f64) * 0.5;
            }
            let rel = rel_l2(&one, &want);
            assert!(rel < 5e-6, "case {case}: relative L2 error {rel:e}");
        }
    }

    #[test]
    fn wide_layers_stay_on_im2col() {
        let dims = |c: usize| ConvDims {
            batch: 1,
            height: 8,
            width: 8,
            in_channels: c,
            kernel_h: 3,
            kernel_w: 3,
            out_channels: c,
            out_height: 8,
            out_width: 8,
        };
        let same = Conv2dGeometry::symmetric(1, 1);
        assert!(applies(&dims(320), &same));
        assert!(!applies(&dims(640), &same));
        assert!(!applies(&dims(8), &same));
        assert!(!applies(&dims(64), &Conv2dGeometry::symmetric(2, 1)));
    }

    #[test]
    fn data_transform_is_the_bt_matrix() {
        let x: Vec<Vec<f32>> = (0..SPAN).map(|k| pseudo_random(5, k as u32)).collect();
        let mut y = vec![0f32; SPAN * 5];
        data_transform::<false>(
            std::array::from_fn(|k| x[k].as_slice()),
            rows6_mut(&mut y, 5),
        );
        for i in 0..SPAN {
            for c in 0..5 {
                let want: f64 = (0..SPAN).map(|k| BT[i][k] * x[k][c] as f64).sum();
                assert!((y[i * 5 + c] as f64 - want).abs() < 1e-5, "row {i}");
            }
        }
    }
}
