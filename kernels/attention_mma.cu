// Flash attention (FlashAttention-2 forward) on tensor cores: out = softmax(q k^T * scale) v
// per (batch, head), with an online softmax so the lq x lk score matrix is never stored.
// f16 or bf16 operands (-DELEM_F16 / -DELEM_BF16), f32 accumulation, inline-PTX
// mma.sync.m16n8k16 (plus m16n8k8 for a head dimension that is 8 mod 16, e.g. 40),
// ldmatrix and cp.async: sm_80 and later. HEAD_DIM is fixed at compile time
// (-DHEAD_DIM=d, a multiple of 8) and runs unpadded.
//
// Layout (row-major, channels last): q, out: [batch, lq, heads * HEAD_DIM];
// k, v: [batch, lk, heads * HEAD_DIM]; head h is columns h*HEAD_DIM .. (h+1)*HEAD_DIM.
// lq, lk >= 1 and arbitrary (no multiple of any tile needed). The four tensors must
// start at 16-byte aligned addresses (cudaMalloc'd buffers are): rows are loaded and
// stored as 16-byte vectors, which HEAD_DIM % 8 == 0 keeps aligned.
//
// ---------------------------------------------------------------------------------
// LAUNCH CONFIGURATION (host side)
//   grid   = (ceil(lq / ATTN_BLOCK_Q), heads, batch)
//   block  = (ATTN_THREADS, 1, 1) = (128, 1, 1)
//   shared = static only (ATTN_SMEM_BYTES <= 48 KiB); dynamic shared memory bytes = 0
//   scale  = 1 / sqrt(HEAD_DIM)
// Tile sizes per HEAD_DIM (ATTN_BLOCK_Q = 16 * ATTN_WARP_M * ATTN_WARPS):
//   HEAD_DIM  ATTN_WARP_M  ATTN_BLOCK_Q  ATTN_BLOCK_K  ATTN_SMEM_STRIDE  ATTN_SMEM_BYTES
//      16          2           128            64              24              12288
//      40          2           128            64              40              20480
//      64          2           128            64              72              36864
//      80          2           128            32              88              33792
//     128          1            64            32             136              34816
//     160          1            64            32             168              43008
//   (any other multiple of 8 compiles too: HEAD_DIM <= 64 -> WARP_M 2, BLOCK_K 64;
//   <= 80 -> WARP_M 2, BLOCK_K 32; larger -> WARP_M 1, BLOCK_K 64 if two stages of K/V
//   tiles fit 48 KiB, else 32. The #defines below are the authority.)
// Requirements: lq >= 1, lk >= 1 (lk = 0 would give zeros), scale > 0 (the running max
// is kept on raw scores), all four pointers 16-byte aligned, heads * HEAD_DIM elements
// per row, f16 or bf16 elements.
// ---------------------------------------------------------------------------------
//
// Structure: a block of 4 warps owns ATTN_BLOCK_Q query rows of one (batch, head);
// each warp owns 16 * ATTN_WARP_M of them (ATTN_WARP_M m16 tiles). Q is staged once
// through shared memory into registers (mma A fragments). K and V tiles of
// ATTN_BLOCK_K keys are double-buffered in shared memory with cp.async (rows past lk
// are zero-filled, their scores masked to -inf). Per key tile each warp computes
// S = Q K^T (B operand: K rows read with ldmatrix, no transpose), the online softmax in
// registers (exp2 with scale*log2(e) folded in), and O += P V (P re-packed from the
// S accumulators as the A operand, V read with ldmatrix.trans). At the end O / rowsum is
// staged through shared memory and written as 16-byte vectors (rows >= lq skipped).

#ifndef HEAD_DIM
#error "attention_mma.cu needs -DHEAD_DIM=d (a multiple of 8)"
#endif
#if HEAD_DIM <= 0 || (HEAD_DIM % 8) != 0
#error "attention_mma.cu: HEAD_DIM must be a positive multiple of 8"
#endif
#if !defined(ELEM_F16) && !defined(ELEM_BF16)
#error "attention_mma.cu needs -DELEM_F16 or -DELEM_BF16"
#endif

#define ATTN_WARPS 4
#define ATTN_THREADS (ATTN_WARPS * 32)

// Shared row stride in elements: the row length in 16-byte units made odd, so the 8
// row addresses of an ldmatrix phase hit 8 distinct 16-byte bank groups.
#if ((HEAD_DIM / 8) % 2) == 1
#define ATTN_SMEM_STRIDE HEAD_DIM
#else
#define ATTN_SMEM_STRIDE (HEAD_DIM + 8)
#endif

// ATTN_WARP_M: query m16 tiles per warp. Two where the registers allow (each K / V
// fragment read from shared memory then feeds two mma, halving shared-memory traffic per
// flop), one at large head dims (per m16 tile a thread holds O in HEAD_DIM/2 floats and
// Q in HEAD_DIM/4 registers). ATTN_BLOCK_K: keys per tile, 64 unless registers (the
// scores take ATTN_WARP_M * ATTN_BLOCK_K / 2 floats per thread) or the 48 KiB of static
// shared memory for two stages of K and V tiles ask for 32.
#if HEAD_DIM <= 64
#define ATTN_WARP_M 2
#define ATTN_BLOCK_K 64
#elif HEAD_DIM <= 80
#define ATTN_WARP_M 2
#define ATTN_BLOCK_K 32
#else
#define ATTN_WARP_M 1
#if (4 * 64 * ATTN_SMEM_STRIDE * 2) <= 49152
#define ATTN_BLOCK_K 64
#else
#define ATTN_BLOCK_K 32
#endif
#endif
#define ATTN_BLOCK_Q (16 * ATTN_WARP_M * ATTN_WARPS)

// Shared rows: stage s (0, 1) holds K at rows [2*s*BK, 2*s*BK + BK) and V right after.
// Q is staged once, before the loop, at the start of stage 1 (it may run past it);
// the output is staged, after the loop, from row 0.
#define ATTN_STAGE1_ROW (2 * ATTN_BLOCK_K)
#if (4 * ATTN_BLOCK_K) >= (2 * ATTN_BLOCK_K + ATTN_BLOCK_Q)
#define ATTN_SMEM_ROWS (4 * ATTN_BLOCK_K)
#else
#define ATTN_SMEM_ROWS (2 * ATTN_BLOCK_K + ATTN_BLOCK_Q)
#endif
#define ATTN_SMEM_BYTES (ATTN_SMEM_ROWS * ATTN_SMEM_STRIDE * 2)
#if ATTN_SMEM_BYTES > 49152
#error "attention_mma.cu: static shared memory over 48 KiB for this HEAD_DIM"
#endif

// Derived counts.
#define ATTN_KC16 (HEAD_DIM / 16)        // k16 chunks of the head dim in Q K^T
#define ATTN_TAIL8 ((HEAD_DIM % 16) / 8) // 1 when a trailing k8 chunk remains (d = 40)
#define ATTN_NT (ATTN_BLOCK_K / 8)       // n8 score tiles per key tile
#define ATTN_DT (HEAD_DIM / 8)           // n8 output tiles over the head dim
#define ATTN_CPR (HEAD_DIM / 8)          // 16-byte chunks per row
#if (ATTN_BLOCK_K % 32) != 0
#error "attention_mma.cu: ATTN_BLOCK_K must be a multiple of 32 (k8 tail reads 4 n-tiles at once)"
#endif

#define ATTN_FULL_MASK 0xffffffffu
#define ATTN_NEG_INF __int_as_float(0xff800000)
#define ATTN_LOG2E 1.4426950408889634f

// Copies `rows` rows (HEAD_DIM elements each, `stride` elements apart in global memory)
// into shared memory at byte address `dst` (ATTN_SMEM_STRIDE elements a row); rows at
// or past `valid` are zero-filled without touching global memory (their source
// address is clamped to row 0, which exists because lq, lk >= 1).
template <int ROWS>
__device__ __forceinline__ void attn_load_rows(u32 dst, const elem_t* src, u64 stride, u32 valid, u32 tid) {
    constexpr u32 chunks = ROWS * ATTN_CPR;
#pragma unroll
    for (u32 i = 0; i < (chunks + ATTN_THREADS - 1) / ATTN_THREADS; ++i) {
        const u32 c = tid + i * ATTN_THREADS;
        if (chunks % ATTN_THREADS == 0 || c < chunks) {
            const u32 r = c / ATTN_CPR;
            const u32 cc = c % ATTN_CPR;
            const bool ok = r < valid;
            const elem_t* s = src + (u64)(ok ? r : 0u) * stride + cc * 8;
            tc_cp_async16_cg(dst + (r * ATTN_SMEM_STRIDE + cc * 8) * 2, s, ok ? 16u : 0u);
        }
    }
}

// ---- the kernel -----------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
attention_mma(elem_t* __restrict__ out, const elem_t* __restrict__ q, const elem_t* __restrict__ k,
              const elem_t* __restrict__ v, u32 batch, u32 lq, u32 lk, u32 heads, float scale) {
    __shared__ __align__(16) elem_t smem[ATTN_SMEM_ROWS * ATTN_SMEM_STRIDE];

    const u32 tid = threadIdx.x;
    const u32 warp = tid >> 5;
    const u32 lane = tid & 31;
    const u32 g = lane >> 2;  // mma groupID: fragment row (A, C) or column (B)
    const u32 t = lane & 3;   // mma threadID_in_group
    const u32 lr = lane & 7;  // ldmatrix: row this lane addresses ...
    const u32 lm = lane >> 3; // ... in matrix lm (0..3)

    const u32 q0 = blockIdx.x * ATTN_BLOCK_Q;
    const u32 head = blockIdx.y;
    const u32 b = blockIdx.z;
    if (q0 >= lq || head >= heads || b >= batch) return;  // uniform per block

    const u64 width = (u64)heads * HEAD_DIM;
    const elem_t* q_base = q + ((u64)b * lq + q0) * width + (u64)head * HEAD_DIM;
    const elem_t* k_base = k + (u64)b * lk * width + (u64)head * HEAD_DIM;
    const elem_t* v_base = v + (u64)b * lk * width + (u64)head * HEAD_DIM;

    const u32 smem_base = tc_smem_addr(smem);
    const u32 row_bytes = ATTN_SMEM_STRIDE * 2;
    const u32 stage_bytes = 2 * ATTN_BLOCK_K * row_bytes;

    // Prologue: Q (into stage 1's space) and the first K/V tile (stage 0) in one group.
    attn_load_rows<ATTN_BLOCK_Q>(smem_base + ATTN_STAGE1_ROW * row_bytes, q_base, width, lq - q0, tid);
    attn_load_rows<ATTN_BLOCK_K>(smem_base, k_base, width, lk, tid);
    attn_load_rows<ATTN_BLOCK_K>(smem_base + ATTN_BLOCK_K * row_bytes, v_base, width, lk, tid);
    tc_cp_async_commit();
    tc_cp_async_wait<0>();
    __syncthreads();

    // Q fragments (A operand, row-major 16 x 16 per chunk): ldmatrix matrices 0..3 are
    // (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15,
    // cols 8-15) = registers a0a1, a2a3, a4a5, a6a7 of the PTX fragment layout.
    u32 qa[ATTN_WARP_M][ATTN_KC16 > 0 ? ATTN_KC16 : 1][4];
#if ATTN_TAIL8
    u32 qt[ATTN_WARP_M][2];
#endif
    {
        const u32 wrow = warp * 16 * ATTN_WARP_M;
        const u32 qs = smem_base + ATTN_STAGE1_ROW * row_bytes;
#pragma unroll
        for (int m = 0; m < ATTN_WARP_M; ++m) {
            const u32 row = wrow + m * 16 + lr + (lm & 1) * 8;
#pragma unroll
            for (int kc = 0; kc < ATTN_KC16; ++kc) {
                tc_ldsm_x4(qa[m][kc][0], qa[m][kc][1], qa[m][kc][2], qa[m][kc][3],
                             qs + row * row_bytes + (kc * 16 + (lm >> 1) * 8) * 2);
            }
#if ATTN_TAIL8
            // m16n8k8 A: a0a1 = rows 0-7, a2a3 = rows 8-15, cols HEAD_DIM-8 .. HEAD_DIM-1
            // (lanes 16-31 give addresses too, ignored by .x2).
            tc_ldsm_x2(qt[m][0], qt[m][1], qs + row * row_bytes + (HEAD_DIM - 8) * 2);
#endif
        }
    }
    __syncthreads();  // stage 1's space is free for the first prefetch

    // Per-lane ldmatrix byte offsets within a stage.
    // K for Q K^T (B operand = K^T, col-major k x n = K rows [key][d], no transpose):
    // matrices (keys 0-7, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 0-7),
    // (keys 8-15, d 8-15) = {b0b1, b2b3} of n-tile 0 then of n-tile 1.
    const u32 k_off = (lr + (lm >> 1) * 8) * row_bytes + (lm & 1) * 8 * 2;
#if ATTN_TAIL8
    // K for the k8 tail: matrix lm = keys 8*lm .. 8*lm+7, d HEAD_DIM-8 .. : b0b1 of n-tile lm.
    const u32 k8_off = (lm * 8 + lr) * row_bytes + (HEAD_DIM - 8) * 2;
#endif
    // V for P V (B operand = V [key][d], row-major k x n, so transposed loads):
    // matrices (keys 0-7, d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15),
    // (keys 8-15, d 8-15) = {b0b1, b2b3} of d-tile 0 then of d-tile 1.
    const u32 v_off = ATTN_BLOCK_K * row_bytes + (lr + (lm & 1) * 8) * row_bytes + (lm >> 1) * 8 * 2;

    float o[ATTN_WARP_M][ATTN_DT][4];
    float row_max[ATTN_WARP_M][2];
    float row_sum[ATTN_WARP_M][2];  // this lane's partial sums; quad-reduced at the end
#pragma unroll
    for (int m = 0; m < ATTN_WARP_M; ++m) {
#pragma unroll
        for (int dt = 0; dt < ATTN_DT; ++dt) {
            o[m][dt][0] = 0.0f;
            o[m][dt][1] = 0.0f;
            o[m][dt][2] = 0.0f;
            o[m][dt][3] = 0.0f;
        }
        row_max[m][0] = ATTN_NEG_INF;
        row_max[m][1] = ATTN_NEG_INF;
        row_sum[m][0] = 0.0f;
        row_sum[m][1] = 0.0f;
    }
    const float scale_log2 = scale * ATTN_LOG2E;

    const u32 n_tiles = (lk + ATTN_BLOCK_K - 1) / ATTN_BLOCK_K;
#pragma unroll 1
    for (u32 j = 0; j < n_tiles; ++j) {
        const u32 kv0 = j * ATTN_BLOCK_K;
        // Prefetch the next tile into the other stage (freed by the barrier that ended
        // the previous iteration, or by the one after the Q fragments for j = 0).
        if (j + 1 < n_tiles) {
            const u32 nxt = smem_base + ((j + 1) & 1) * stage_bytes;
            const u32 kv1 = kv0 + ATTN_BLOCK_K;
            attn_load_rows<ATTN_BLOCK_K>(nxt, k_base + (u64)kv1 * width, width, lk - kv1, tid);
            attn_load_rows<ATTN_BLOCK_K>(nxt + ATTN_BLOCK_K * row_bytes, v_base + (u64)kv1 * width, width,
                                         lk - kv1, tid);
            tc_cp_async_commit();
        }
        const u32 cur = smem_base + (j & 1) * stage_bytes;

        // ---- S = Q K^T (f32), s[m][nt] = keys kv0 + 8 nt .. + 7 --------------------------
        float s[ATTN_WARP_M][ATTN_NT][4];
#pragma unroll
        for (int m = 0; m < ATTN_WARP_M; ++m) {
#pragma unroll
            for (int nt = 0; nt < ATTN_NT; ++nt) {
                s[m][nt][0] = 0.0f;
                s[m][nt][1] = 0.0f;
                s[m][nt][2] = 0.0f;
                s[m][nt][3] = 0.0f;
            }
        }
#pragma unroll
        for (int kc = 0; kc < ATTN_KC16; ++kc) {
#pragma unroll
            for (int np = 0; np < ATTN_NT / 2; ++np) {
                u32 b0, b1, b2, b3;
                tc_ldsm_x4(b0, b1, b2, b3, cur + k_off + np * 16 * row_bytes + kc * 16 * 2);
#pragma unroll
                for (int m = 0; m < ATTN_WARP_M; ++m) {
                    tc_mma16(s[m][2 * np], qa[m][kc][0], qa[m][kc][1], qa[m][kc][2], qa[m][kc][3], b0, b1);
                    tc_mma16(s[m][2 * np + 1], qa[m][kc][0], qa[m][kc][1], qa[m][kc][2], qa[m][kc][3], b2, b3);
                }
            }
        }
#if ATTN_TAIL8
#pragma unroll
        for (int nq = 0; nq < ATTN_NT / 4; ++nq) {
            u32 b0, b1, b2, b3;
            tc_ldsm_x4(b0, b1, b2, b3, cur + k8_off + nq * 32 * row_bytes);
#pragma unroll
            for (int m = 0; m < ATTN_WARP_M; ++m) {
                tc_mma8(s[m][4 * nq + 0], qt[m][0], qt[m][1], b0);
                tc_mma8(s[m][4 * nq + 1], qt[m][0], qt[m][1], b1);
                tc_mma8(s[m][4 * nq + 2], qt[m][0], qt[m][1], b2);
                tc_mma8(s[m][4 * nq + 3], qt[m][0], qt[m][1], b3);
            }
        }
#endif

        // ---- mask keys >= lk (raw scores; only the last tile can be partial) -------------
        // C layout: s[m][nt][0..1] = row g, keys 8nt + 2t, +1; [2..3] = row g + 8, same keys.
        if (kv0 + ATTN_BLOCK_K > lk) {  // uniform per block
#pragma unroll
            for (int nt = 0; nt < ATTN_NT; ++nt) {
                const u32 key = kv0 + nt * 8 + 2 * t;
#pragma unroll
                for (int m = 0; m < ATTN_WARP_M; ++m) {
                    if (key >= lk) {
                        s[m][nt][0] = ATTN_NEG_INF;
                        s[m][nt][2] = ATTN_NEG_INF;
                    }
                    if (key + 1 >= lk) {
                        s[m][nt][1] = ATTN_NEG_INF;
                        s[m][nt][3] = ATTN_NEG_INF;
                    }
                }
            }
        }

        // ---- online softmax: rows g (h = 0, elements 0,1) and g + 8 (h = 1, elements 2,3) --
        // row_max holds raw scores (scale > 0 keeps the arg max); p = 2^(s*c - max*c) with
        // c = scale * log2(e), one FFMA and one MUFU.EX2 per score.
#pragma unroll
        for (int m = 0; m < ATTN_WARP_M; ++m) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = row_max[m][h];
#pragma unroll
                for (int nt = 0; nt < ATTN_NT; ++nt) mx = fmaxf(mx, fmaxf(s[m][nt][2 * h], s[m][nt][2 * h + 1]));
                // The 4 lanes of a quad (same g) share the row.
                mx = fmaxf(mx, __shfl_xor_sync(ATTN_FULL_MASK, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(ATTN_FULL_MASK, mx, 2));
                // A row with no finite score yet keeps everything at 0 instead of
                // computing (-inf) - (-inf) = NaN.
                const float m_scaled = mx == ATTN_NEG_INF ? 0.0f : mx * scale_log2;
                const float alpha = tc_exp2_ftz(row_max[m][h] * scale_log2 - m_scaled);  // 0 on the first tile
                row_max[m][h] = mx;
                float sum = 0.0f;
#pragma unroll
                for (int nt = 0; nt < ATTN_NT; ++nt) {
                    const float p0 = tc_exp2_ftz(fmaf(s[m][nt][2 * h], scale_log2, -m_scaled));
                    const float p1 = tc_exp2_ftz(fmaf(s[m][nt][2 * h + 1], scale_log2, -m_scaled));
                    s[m][nt][2 * h] = p0;
                    s[m][nt][2 * h + 1] = p1;
                    sum += p0 + p1;
                }
                row_sum[m][h] = row_sum[m][h] * alpha + sum;
#pragma unroll
                for (int dt = 0; dt < ATTN_DT; ++dt) {
                    o[m][dt][2 * h] *= alpha;
                    o[m][dt][2 * h + 1] *= alpha;
                }
            }
        }

        // ---- O += P V: the C fragments of score tiles 2kc, 2kc+1 are one k16 A fragment --
#pragma unroll
        for (int kc = 0; kc < ATTN_NT / 2; ++kc) {
            u32 pa[ATTN_WARP_M][4];
#pragma unroll
            for (int m = 0; m < ATTN_WARP_M; ++m) {
                pa[m][0] = pack_elem2(s[m][2 * kc][0], s[m][2 * kc][1]);          // row g,   keys 2t..
                pa[m][1] = pack_elem2(s[m][2 * kc][2], s[m][2 * kc][3]);          // row g+8, keys 2t..
                pa[m][2] = pack_elem2(s[m][2 * kc + 1][0], s[m][2 * kc + 1][1]);  // row g,   keys 2t+8..
                pa[m][3] = pack_elem2(s[m][2 * kc + 1][2], s[m][2 * kc + 1][3]);  // row g+8, keys 2t+8..
            }
#pragma unroll
            for (int dp = 0; dp < ATTN_DT / 2; ++dp) {
                u32 b0, b1, b2, b3;
                tc_ldsm_x4_trans(b0, b1, b2, b3, cur + v_off + kc * 16 * row_bytes + dp * 16 * 2);
#pragma unroll
                for (int m = 0; m < ATTN_WARP_M; ++m) {
                    tc_mma16(o[m][2 * dp], pa[m][0], pa[m][1], pa[m][2], pa[m][3], b0, b1);
                    tc_mma16(o[m][2 * dp + 1], pa[m][0], pa[m][1], pa[m][2], pa[m][3], b2, b3);
                }
            }
#if (ATTN_DT % 2) == 1
            {
                // Last (odd) d-tile: matrices 0, 1 = (keys 0-7, keys 8-15) x d HEAD_DIM-8 ..
                u32 b0, b1;
                tc_ldsm_x2_trans(b0, b1, cur + v_off - (lm >> 1) * 8 * 2 + kc * 16 * row_bytes + (HEAD_DIM - 8) * 2);
#pragma unroll
                for (int m = 0; m < ATTN_WARP_M; ++m)
                    tc_mma16(o[m][ATTN_DT - 1], pa[m][0], pa[m][1], pa[m][2], pa[m][3], b0, b1);
            }
#endif
        }

        // The next tile has landed, and every warp is done with this stage before the
        // next iteration prefetches into it.
        tc_cp_async_wait<0>();
        __syncthreads();
    }

    // ---- epilogue: O / rowsum -> shared (rows of this warp, from row 0) -> global --------
    {
        const u32 wrow = warp * 16 * ATTN_WARP_M;
#pragma unroll
        for (int m = 0; m < ATTN_WARP_M; ++m) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float l = row_sum[m][h];
                l += __shfl_xor_sync(ATTN_FULL_MASK, l, 1);
                l += __shfl_xor_sync(ATTN_FULL_MASK, l, 2);
                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                const u32 row = wrow + m * 16 + g + h * 8;
#pragma unroll
                for (int dt = 0; dt < ATTN_DT; ++dt) {
                    const u32 packed = pack_elem2(o[m][dt][2 * h] * inv, o[m][dt][2 * h + 1] * inv);
                    const u32 addr = smem_base + row * row_bytes + (dt * 8 + 2 * t) * 2;
                    tc_st_shared_b32(addr, packed);
                }
            }
        }
        __syncwarp();
        elem_t* out_base = out + ((u64)b * lq + q0 + wrow) * width + (u64)head * HEAD_DIM;
#pragma unroll
        for (u32 c = lane; c < (u32)(16 * ATTN_WARP_M * ATTN_CPR); c += 32) {
            const u32 r = c / ATTN_CPR;
            const u32 cc = c % ATTN_CPR;
            if (q0 + wrow + r < lq) {
                u32 x0, x1, x2, x3;
                const u32 addr = smem_base + (wrow + r) * row_bytes + cc * 8 * 2;
                tc_ld_shared_v4(x0, x1, x2, x3, addr);
                tc_st_global_v4(out_base + (u64)r * width + cc * 8, x0, x1, x2, x3);
            }
        }
    }
}
