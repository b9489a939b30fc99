// Multi-head attention, softmax(q k^T * scale) v, with an online (flash-style) softmax
// so no score matrix is ever stored: the scalar kernel, used in f32 and wherever the
// tensor-core kernel (attention_mma.cu: f16/bf16 on sm_80+) does not apply. q: [b, lq, heads * D], k and v: [b, lk, heads * D].
// One warp per (batch, head, query row): each lane scores one key of a 32-key tile,
// the warp folds the tile into running max / sum, and the value rows are accumulated
// with the head dimension split across lanes. HEAD_DIM is fixed at compile time
// (-DHEAD_DIM=40 ...), so SD's 40/80/160 run unpadded. Built with -DCAUSAL (CLIP's
// text encoder, lq == lk), query row i reads keys 0..=i only.
// CPU twins: src/backend/cpu/attention.rs, src/backend/cpu/causal_attention.rs.

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define PER_LANE ((HEAD_DIM + 31) / 32)
#define WARPS_PER_BLOCK 4
#define FULL_MASK 0xffffffffu
// NVRTC has no math.h: -infinity by its bit pattern.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

extern "C" __global__ void __launch_bounds__(WARPS_PER_BLOCK * 32)
attention_scalar(elem_t* __restrict__ out, const elem_t* __restrict__ q, const elem_t* __restrict__ k,
                 const elem_t* __restrict__ v, u32 batch, u32 lq, u32 lk, u32 heads, float scale) {
    __shared__ float q_tile[WARPS_PER_BLOCK][HEAD_DIM];
    u32 warp = threadIdx.x / 32;
    u32 lane = threadIdx.x % 32;
    u64 task = (u64)blockIdx.x * WARPS_PER_BLOCK + warp;
    if (task >= (u64)batch * heads * lq) return;  // uniform per warp
    u32 row = (u32)(task % lq);
    u32 head = (u32)((task / lq) % heads);
    u32 b = (u32)(task / ((u64)lq * heads));
    u64 width = (u64)heads * HEAD_DIM;

    const elem_t* q_row = q + ((u64)b * lq + row) * width + (u64)head * HEAD_DIM;
    for (u32 d = lane; d < HEAD_DIM; d += 32) q_tile[warp][d] = load_elem(q_row[d]);
    __syncwarp();

    const elem_t* k_base = k + (u64)b * lk * width + (u64)head * HEAD_DIM;
    const elem_t* v_base = v + (u64)b * lk * width + (u64)head * HEAD_DIM;
    float acc[PER_LANE];
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) acc[e] = 0.0f;
    float running_max = NEG_INF;
    float running_sum = 0.0f;
#ifdef CAUSAL
    u32 keys = min(lk, row + 1);  // the same for the whole warp: one row per warp
#else
    u32 keys = lk;
#endif

    for (u32 j0 = 0; j0 < keys; j0 += 32) {
        u32 j = j0 + lane;
        float score = NEG_INF;
        if (j < keys) {
            const elem_t* k_row = k_base + (u64)j * width;
            float dot = 0.0f;
#pragma unroll 8
            for (u32 d = 0; d < HEAD_DIM; ++d) dot += q_tile[warp][d] * load_elem(k_row[d]);
            score = dot * scale;
        }
        float new_max = fmaxf(running_max, warp_max(score));
        float p = j < keys ? expf(score - new_max) : 0.0f;
        float correction = expf(running_max - new_max);
        running_sum = running_sum * correction + warp_sum(p);
        running_max = new_max;
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) acc[e] *= correction;
        u32 count = min(32u, keys - j0);
        for (u32 jj = 0; jj < count; ++jj) {
            float pj = __shfl_sync(FULL_MASK, p, jj);
            const elem_t* v_row = v_base + (u64)(j0 + jj) * width;
#pragma unroll
            for (int e = 0; e < PER_LANE; ++e) {
                u32 d = lane + 32 * e;
                if (d < HEAD_DIM) acc[e] += pj * load_elem(v_row[d]);
            }
        }
    }

    float inv = 1.0f / running_sum;
    elem_t* o_row = out + ((u64)b * lq + row) * width + (u64)head * HEAD_DIM;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        u32 d = lane + 32 * e;
        if (d < HEAD_DIM) o_row[d] = store_elem(acc[e] * inv);
    }
}
