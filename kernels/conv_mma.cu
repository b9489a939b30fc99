// 2-D convolution over channels-last (NHWC) data as an implicit GEMM on tensor cores:
// no im2col buffer, the A operand is gathered from x on the fly. f16 or bf16 storage
// (-DELEM_F16 / -DELEM_BF16), f32 accumulation, inline-PTX mma.sync.m16n8k16, ldmatrix
// and cp.async: sm_80 and later (sm_90 runs the same code).
//
//   out[b, oy, ox, co] = bias[co] + sample_bias[b, co]
//                      + sum_{ky, kx, ci} x[b, oy*stride + ky - pad_top, ox*stride + kx - pad_left, ci]
//                                         * w[ky, kx, ci, co]
//   then, with a residual: out = (out + residual[b, oy, ox, co]) * residual_scale
//
// Zero padding, asymmetric allowed (pad_top / pad_left given, bottom / right implied by
// oh, ow). Layouts (row-major): x [n, h, w_in, cin]; w [kh, kw, cin, cout], i.e. the
// [K = kh*kw*cin, cout] matrix with K index (ky*kw + kx)*cin + ci; bias [cout];
// sample_bias [n, cout]; residual, out [n, oh, ow, cout]. bias, sample_bias and residual
// may be null (0); residual_scale is ignored without a residual. All sums and the
// epilogue run in f32, rounded to elem_t once, at the store.
// As a GEMM: M = n*oh*ow output pixels (rows), N = cout, K = kh*kw*cin.
//
// ---------------------------------------------------------------------------------
// REQUIREMENTS (the host falls back to the im2col + GEMM path otherwise):
//   cin % 8 == 0 and cout % 8 == 0 (x rows and w rows are read as 16-byte vectors of
//   8 elements; an 8-element K chunk then never straddles two taps);
//   x and w 16-byte aligned, out / bias / sample_bias / residual 4-byte aligned
//   (cudaMalloc'd buffers are); n*oh*ow < 2^32, n, h, w_in, oh, ow, kh, kw, stride >= 1;
//   out overlapping no input (all pointers are __restrict__); f16 or bf16, sm_80+.
// Grids of fewer blocks than SMs (e.g. 1280 channels at 8x8 or 16x16, batch 2: 10 or 40
// blocks, K = 11520) leave most of the GPU idle: there is no split-K here.
//
// LAUNCH CONFIGURATION (host side)
//   grid   = either of (the kernel tells them apart by gridDim.y; identical when
//            cout <= CONV_BN):
//            (a) preferred, 1-D: (ceil(n*oh*ow / CONV_BM) * ceil(cout / CONV_BN), 1, 1);
//                block i computes M tile i / ceil(cout/CONV_BN), N tile i % ceil(cout/CONV_BN):
//                N fastest, so the blocks reading the same x strip run together (x comes
//                from DRAM about once, the weights stay in L2);
//            (b) 2-D: (ceil(n*oh*ow / CONV_BM), ceil(cout / CONV_BN), 1), M on x (no 65535
//                limit on M), N tile = blockIdx.y; M fastest, so at large M each x strip is
//                fetched once per N tile.
//   block  = (CONV_THREADS, 1, 1) = (256, 1, 1)
//   shared = static only, CONV_SMEM_BYTES = 49152 (48 KiB); dynamic shared memory = 0
//   tiles  = CONV_BM x CONV_BN x CONV_BK = 128 pixels x 128 channels x 32 (K),
//            CONV_STAGES = 3 cp.async stages, 8 warps as 2 (M) x 4 (N), each warp a
//            64 x 32 tile (4 x 4 mma m16n8k16 per k16 step, 64 f32 accumulators).
// ---------------------------------------------------------------------------------
//
// Structure: per K tile, a thread issues two 16-byte cp.async for A (pixels tid/4 and
// tid/4 + 64 of the block, K chunk tid%4) and two for B (K rows tid/16 and tid/16 + 16,
// channel chunk tid%16). An A chunk is 8 consecutive input channels of one tap of one
// pixel: one contiguous 16-byte piece of an x row, or zeros (src-size 0, address clamped
// to x) in the padding, past M or past K. B chunks past K or cout are zeros too. Shared
// tiles are unpadded and XOR-swizzled (16-byte chunk c of row r stored at chunk
// c ^ ((r >> 1) & 3) in A's 64-byte rows, c ^ (r & 7) in B's 256-byte rows), so every
// ldmatrix phase (8 rows at one logical chunk) hits 8 distinct 16-byte bank groups and
// three stages fit in 48 KiB. A fragments come from ldmatrix.x4 (A is row-major
// [pixel][k]), B fragments from ldmatrix.x4.trans (B is row-major [k][channel], the
// "col" operand transposed: as V in attention_mma.cu). The epilogue reads bias pairs
// once, then per accumulator pair adds sample_bias / residual (two adjacent channels, one
// 32-bit load each) and stores two packed elements with one 32-bit store.

#if !defined(ELEM_F16) && !defined(ELEM_BF16)
#error "conv_mma.cu needs -DELEM_F16 or -DELEM_BF16"
#endif

#define CONV_BM 128
#define CONV_BN 128
#define CONV_BK 32
#define CONV_STAGES 3
#define CONV_WARPS_M 2
#define CONV_WARPS_N 4
#define CONV_WARPS (CONV_WARPS_M * CONV_WARPS_N)
#define CONV_THREADS (CONV_WARPS * 32)
#define CONV_WARP_TILE_M (CONV_BM / CONV_WARPS_M)  // 64
#define CONV_WARP_TILE_N (CONV_BN / CONV_WARPS_N)  // 32
#define CONV_MI (CONV_WARP_TILE_M / 16)            // m16 tiles per warp: 4
#define CONV_NI (CONV_WARP_TILE_N / 8)             // n8 tiles per warp: 4

// Shared memory: per stage the A tile [CONV_BM][CONV_BK] (64-byte rows), then the B tile
// [CONV_BK][CONV_BN] (256-byte rows), both swizzled as above.
#define CONV_A_ROW_BYTES (CONV_BK * 2)
#define CONV_B_ROW_BYTES (CONV_BN * 2)
#define CONV_A_STAGE_BYTES (CONV_BM * CONV_A_ROW_BYTES)
#define CONV_B_STAGE_BYTES (CONV_BK * CONV_B_ROW_BYTES)
#define CONV_STAGE_BYTES (CONV_A_STAGE_BYTES + CONV_B_STAGE_BYTES)
#define CONV_SMEM_BYTES (CONV_STAGES * CONV_STAGE_BYTES)

// The swizzles, loader split and warp layout below are written for exactly these.
#if CONV_BM != 128 || CONV_BN != 128 || CONV_BK != 32 || CONV_THREADS != 256 || CONV_MI != 4 || CONV_NI != 4
#error "conv_mma.cu: the loaders and swizzles assume 128 x 128 x 32 tiles, 8 warps of 64 x 32"
#endif
#if CONV_SMEM_BYTES > 49152
#error "conv_mma.cu: static shared memory over 48 KiB"
#endif
#if CONV_STAGES < 2
#error "conv_mma.cu: CONV_STAGES must be at least 2"
#endif

// Two adjacent elements (4-byte aligned) as f32: lo = p[0], hi = p[1].
__device__ __forceinline__ void conv_load_pair(const elem_t* p, float& lo, float& hi) {
    const u32 v = *reinterpret_cast<const u32*>(p);
    lo = load_elem((elem_t)(v & 0xffffu));
    hi = load_elem((elem_t)(v >> 16));
}

// ---- the kernel -----------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 2)
conv_mma(elem_t* __restrict__ out, const elem_t* __restrict__ x, const elem_t* __restrict__ w,
         const elem_t* __restrict__ bias, const elem_t* __restrict__ sample_bias,
         const elem_t* __restrict__ residual, float residual_scale, u32 n, u32 h, u32 w_in, u32 cin, u32 kh,
         u32 kw, u32 stride, u32 pad_top, u32 pad_left, u32 oh, u32 ow, u32 cout) {
    __shared__ __align__(128) elem_t smem[CONV_SMEM_BYTES / 2];

    const u32 tid = threadIdx.x;
    const u32 warp = tid >> 5;
    const u32 lane = tid & 31;
    const u32 g = lane >> 2;  // mma groupID: fragment row (A, C) or column (B)
    const u32 t = lane & 3;   // mma threadID_in_group
    const u32 lr = lane & 7;  // ldmatrix: row this lane addresses ...
    const u32 lm = lane >> 3; // ... in matrix lm (0..3)
    // Warp layout: warps w and w + 4 sit on the same SM sub-partition; making them differ
    // in N means that when a last N tile is half empty (cout = 320) the idle warps are
    // spread over the four sub-partitions.
    const u32 wm = warp & 1;   // rows wm*64 .. +63 of the block tile
    const u32 wn = warp >> 1;  // channels wn*32 .. +31

    const u32 hw_out = oh * ow;
    const u32 M = n * hw_out;
    u32 m_tile, n_tile;
    if (gridDim.y == 1) {  // 1-D grid (a); also right for (b) when there is one N tile
        const u32 n_tiles = (cout + CONV_BN - 1) / CONV_BN;
        m_tile = blockIdx.x / n_tiles;
        n_tile = blockIdx.x - m_tile * n_tiles;
    } else {  // 2-D grid (b)
        m_tile = blockIdx.x;
        n_tile = blockIdx.y;
    }
    const u32 m0 = m_tile * CONV_BM;
    const u32 n0 = n_tile * CONV_BN;
    if (m0 >= M || n0 >= cout) return;  // uniform per block
    const u32 K = kh * kw * cin;
    const u32 k_tiles = (K + CONV_BK - 1) / CONV_BK;

    const u32 smem_base = tc_smem_addr(smem);

    // ---- A loader: pixels a_row and a_row + 64 of the tile, K chunk a_kc ------------------
    const u32 a_kc = tid & 3;
    const u32 a_row = tid >> 2;
    int a_iy0[2], a_ix0[2];  // top-left input position of the pixel's window
    long long a_off[2];      // element offset of x[b, a_iy0, a_ix0, 0] (may lie outside x)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const u32 m = m0 + a_row + i * 64;
        if (m < M) {
            const u32 b = m / hw_out;
            const u32 rem = m - b * hw_out;
            const u32 oy = rem / ow;
            const u32 ox = rem - oy * ow;
            a_iy0[i] = (int)(oy * stride) - (int)pad_top;
            a_ix0[i] = (int)(ox * stride) - (int)pad_left;
            a_off[i] = (((long long)b * h + a_iy0[i]) * (long long)w_in + a_ix0[i]) * (long long)cin;
        } else {
            a_iy0[i] = -0x40000000;  // every row test fails: zero-filled
            a_ix0[i] = 0;
            a_off[i] = 0;
        }
    }
    // (ky, kx, ci) of this thread's K chunk in the next tile to load; ky >= kh: past K.
    u32 a_ci = a_kc * 8, a_kx = 0, a_ky = 0;
#pragma unroll 1
    while (a_ci >= cin) {  // cin < 32: the chunk may lie in a later tap
        a_ci -= cin;
        if (++a_kx == kw) { a_kx = 0; ++a_ky; }
    }
    const u32 a_dst = a_row * CONV_A_ROW_BYTES + ((a_kc ^ ((a_row >> 1) & 3)) << 4);  // +64 rows: same swizzle

    // ---- B loader: K rows b_row and b_row + 16 of the tile, channel chunk b_cc -----------
    const u32 b_cc = tid & 15;
    const u32 b_row = tid >> 4;
    const bool b_nok = n0 + b_cc * 8 < cout;
    const elem_t* b_src = w + (u64)b_row * cout + (b_nok ? n0 + b_cc * 8 : 0u);
    u32 b_k = b_row;  // K index of the first of the two rows in the next tile to load
    const u32 b_dst = CONV_A_STAGE_BYTES + b_row * CONV_B_ROW_BYTES + ((b_cc ^ (b_row & 7)) << 4);  // +16 rows: same

    // Issues the cp.async of the next K tile into stage `stage` and advances the loaders.
    auto load_tile = [&](u32 stage) {
        const u32 st = smem_base + stage * CONV_STAGE_BYTES;
        const bool k_ok = a_ky < kh;
        const long long tap = (long long)((a_ky * w_in + a_kx) * cin + a_ci);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const bool ok = k_ok && (u32)(a_iy0[i] + (int)a_ky) < h && (u32)(a_ix0[i] + (int)a_kx) < w_in;
            const elem_t* src = ok ? x + (a_off[i] + tap) : x;
            tc_cp_async16_ca(st + a_dst + i * 64 * CONV_A_ROW_BYTES, src, ok ? 16u : 0u);
        }
        a_ci += CONV_BK;
#pragma unroll 1
        while (a_ci >= cin) {
            a_ci -= cin;
            if (++a_kx == kw) { a_kx = 0; ++a_ky; }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const bool ok = b_nok && b_k + i * 16 < K;
            const elem_t* src = ok ? b_src + (u64)(i * 16) * cout : w;
            tc_cp_async16_cg(st + b_dst + i * 16 * CONV_B_ROW_BYTES, src, ok ? 16u : 0u);
        }
        b_k += CONV_BK;
        b_src += (u64)CONV_BK * cout;
    };

    // ---- ldmatrix byte offsets within a stage -------------------------------------------
    // A (row-major [pixel][k], no transpose): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
    // (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0a1, a2a3, a4a5, a6a7 of the m16n8k16 A
    // fragment. Lane row r = wm*64 + mi*16 + lr + 8*(lm&1), logical chunk 2*ks + (lm>>1),
    // swizzle (r >> 1) & 3 = (lr >> 1) & 3. m16 tile mi adds mi * 16 rows.
    const u32 a_ld0 = (wm * 64 + lr + (lm & 1) * 8) * CONV_A_ROW_BYTES + (((0 + (lm >> 1)) ^ ((lr >> 1) & 3)) << 4);
    const u32 a_ld1 = (wm * 64 + lr + (lm & 1) * 8) * CONV_A_ROW_BYTES + (((2 + (lm >> 1)) ^ ((lr >> 1) & 3)) << 4);
    // B (row-major [k][channel], transposed loads): matrices (k 0-7, ch 0-7), (k 8-15, ch 0-7),
    // (k 0-7, ch 8-15), (k 8-15, ch 8-15) = {b0b1, b2b3} of n8 tile 2np, then of 2np + 1.
    // Lane row k = 16*ks + lr + 8*(lm&1), logical chunk 4*wn + 2*np + (lm>>1), swizzle
    // k & 7 = lr. np = 1 flips chunk bit 1 (byte offset bit 5), untouched by the swizzle;
    // ks = 1 adds 16 rows.
    const u32 b_ld = CONV_A_STAGE_BYTES + (lr + (lm & 1) * 8) * CONV_B_ROW_BYTES +
                     (((wn * 4 + (lm >> 1)) ^ lr) << 4);

    // A warp whose rows are all past M or whose channels are all past cout skips the math.
    const bool warp_active = (m0 + wm * 64 < M) && (n0 + wn * 32 < cout);

    float acc[CONV_MI][CONV_NI][4];
#pragma unroll
    for (int mi = 0; mi < CONV_MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < CONV_NI; ++ni) {
            acc[mi][ni][0] = 0.0f;
            acc[mi][ni][1] = 0.0f;
            acc[mi][ni][2] = 0.0f;
            acc[mi][ni][3] = 0.0f;
        }

    // ---- prologue: tiles 0 .. STAGES-2 (one commit group each, empty past the end) ------
#pragma unroll
    for (int s = 0; s < CONV_STAGES - 1; ++s) {
        if ((u32)s < k_tiles) load_tile((u32)s);
        tc_cp_async_commit();
    }

    // ---- main loop: one barrier per K tile ----------------------------------------------
    u32 rd_stage = 0;
    u32 wr_stage = CONV_STAGES - 1;
#pragma unroll 1
    for (u32 kt = 0; kt < k_tiles; ++kt) {
        // Tile kt has landed (this thread's copies), then the barrier makes every thread's
        // copies visible and guarantees every warp is done with tile kt - 1, whose stage
        // (wr_stage) is refilled next.
        tc_cp_async_wait<CONV_STAGES - 2>();
        __syncthreads();
        if (kt + CONV_STAGES - 1 < k_tiles) load_tile(wr_stage);
        tc_cp_async_commit();
        wr_stage = wr_stage + 1 == CONV_STAGES ? 0 : wr_stage + 1;

        if (warp_active) {
            const u32 st = smem_base + rd_stage * CONV_STAGE_BYTES;
#pragma unroll
            for (int ks = 0; ks < CONV_BK / 16; ++ks) {
                u32 af[CONV_MI][4];
                u32 bf[CONV_NI][2];
#pragma unroll
                for (int mi = 0; mi < CONV_MI; ++mi)
                    tc_ldsm_x4(af[mi][0], af[mi][1], af[mi][2], af[mi][3],
                                 st + (ks == 0 ? a_ld0 : a_ld1) + mi * 16 * CONV_A_ROW_BYTES);
#pragma unroll
                for (int np = 0; np < CONV_NI / 2; ++np)
                    tc_ldsm_x4_trans(bf[2 * np][0], bf[2 * np][1], bf[2 * np + 1][0], bf[2 * np + 1][1],
                                       st + ((b_ld + ks * 16 * CONV_B_ROW_BYTES) ^ (np << 5)));
#pragma unroll
                for (int mi = 0; mi < CONV_MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < CONV_NI; ++ni) tc_mma16(acc[mi][ni], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bf[ni][0], bf[ni][1]);
            }
        }
        rd_stage = rd_stage + 1 == CONV_STAGES ? 0 : rd_stage + 1;
    }
    tc_cp_async_wait<0>();  // only empty groups remain; leave nothing in flight

    // ---- epilogue -------------------------------------------------------------------------
    // C fragment: acc[mi][ni][0..1] = row g, channels 2t, 2t+1 of n8 tile ni;
    // [2..3] = row g + 8, same channels.
    if (!warp_active) return;
    const u32 co_base = n0 + wn * 32 + 2 * t;
    float bias_v[CONV_NI][2];
#pragma unroll
    for (int ni = 0; ni < CONV_NI; ++ni) {
        const u32 co = co_base + ni * 8;
        bias_v[ni][0] = 0.0f;
        bias_v[ni][1] = 0.0f;
        if (bias != 0 && co < cout) conv_load_pair(bias + co, bias_v[ni][0], bias_v[ni][1]);
    }
#pragma unroll
    for (int mi = 0; mi < CONV_MI; ++mi) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const u32 m = m0 + wm * 64 + mi * 16 + hh * 8 + g;
            if (m >= M) continue;
            const u32 b = m / hw_out;
            const u64 row = (u64)m * cout;
#pragma unroll
            for (int ni = 0; ni < CONV_NI; ++ni) {
                const u32 co = co_base + ni * 8;
                if (co >= cout) continue;  // cout even: co + 1 < cout too
                float v0 = acc[mi][ni][2 * hh] + bias_v[ni][0];
                float v1 = acc[mi][ni][2 * hh + 1] + bias_v[ni][1];
                if (sample_bias != 0) {
                    float s0, s1;
                    conv_load_pair(sample_bias + (u64)b * cout + co, s0, s1);
                    v0 += s0;
                    v1 += s1;
                }
                if (residual != 0) {
                    float r0, r1;
                    conv_load_pair(residual + row + co, r0, r1);
                    v0 = (v0 + r0) * residual_scale;
                    v1 = (v1 + r1) * residual_scale;
                }
                *reinterpret_cast<u32*>(out + row + co) = pack_elem2(v0, v1);
            }
        }
    }
}
