// The fused guidance + scheduler step: for each slot (one particle of one sample),
// CFG over its model-output rows, the guidance rescale, the reward shift and the
// scheduler update as one pass over its latents. The host decides everything and
// passes it per slot (src/backend/guided_step.rs); the model output stays in elem_t,
// latents, history, noise and shift are f32. CPU twin: guided_step_on_host.
//
// One block per slot. coeffs[slot * GS_COEFFS + i]: 0 cfg scale, 1 rescale phi,
// 2 x0_from_sample, 3 x0_from_output, 4 clip (< 0: none), 5 sample, 6 output, 7 x0,
// 8 history, 9 noise, 10 shifted (0 or 1). rows[2 * slot] = unconditional row (-1:
// no CFG), rows[2 * slot + 1] = conditional row. history, noise and shift are read
// only where their weight or flag is non-zero (the host may pass one-element
// placeholders otherwise).

#define GS_COEFFS 11
#define GS_THREADS 256

__device__ __forceinline__ double gs_warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// The sum of v over the block, in every thread (blockDim.x == GS_THREADS).
__device__ double gs_block_sum(double v, double* scratch) {
    v = gs_warp_sum(v);
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    double total = 0.0;
    for (u32 i = 0; i < GS_THREADS / 32; ++i) total += scratch[i];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float gs_guided(const elem_t* uncond, const elem_t* cond, float scale, u32 i) {
    float c = load_elem(cond[i]);
    if (uncond == 0) return c;
    float u = load_elem(uncond[i]);
    return u + scale * (c - u);
}

extern "C" __global__ void __launch_bounds__(GS_THREADS)
guided_step(float* __restrict__ next, float* __restrict__ x0_out, const elem_t* __restrict__ model,
            const float* __restrict__ latents, const float* __restrict__ history, const float* __restrict__ noise,
            const float* __restrict__ shift, const float* __restrict__ coeffs, const int* __restrict__ rows,
            u32 per) {
    __shared__ double scratch[GS_THREADS / 32];
    const u32 slot = blockIdx.x;
    const float* c = coeffs + (u64)slot * GS_COEFFS;
    const int uncond_row = rows[2 * slot];
    const int cond_row = rows[2 * slot + 1];
    const elem_t* cond = model + (u64)cond_row * per;
    const elem_t* uncond = uncond_row >= 0 ? model + (u64)uncond_row * per : 0;
    const float scale = c[0];
    const float phi = c[1];

    // Rescale toward the conditional prediction's standard deviation: both unbiased
    // standard deviations from f64 sums, as the host's cfg::rescale.
    const bool rescale = uncond != 0 && phi != 0.0f && per >= 2;
    float ratio = 1.0f;
    if (rescale) {
        double sum_g = 0.0, sum_c = 0.0;
        for (u32 i = threadIdx.x; i < per; i += GS_THREADS) {
            sum_g += gs_guided(uncond, cond, scale, i);
            sum_c += load_elem(cond[i]);
        }
        const double mean_g = gs_block_sum(sum_g, scratch) / per;
        const double mean_c = gs_block_sum(sum_c, scratch) / per;
        double ss_g = 0.0, ss_c = 0.0;
        for (u32 i = threadIdx.x; i < per; i += GS_THREADS) {
            const double dg = (double)gs_guided(uncond, cond, scale, i) - mean_g;
            const double dc = (double)load_elem(cond[i]) - mean_c;
            ss_g += dg * dg;
            ss_c += dc * dc;
        }
        ss_g = gs_block_sum(ss_g, scratch);
        ss_c = gs_block_sum(ss_c, scratch);
        ratio = (float)(sqrt(ss_c / (per - 1)) / sqrt(ss_g / (per - 1)));
    }

    const u64 base = (u64)slot * per;
    const float clip = c[4];
    for (u32 i = threadIdx.x; i < per; i += GS_THREADS) {
        float m = gs_guided(uncond, cond, scale, i);
        if (rescale) {
            const float rescaled = m * ratio;
            m = phi * rescaled + (1.0f - phi) * m;
        }
        if (c[10] != 0.0f) m += shift[base + i];
        const float x = latents[base + i];
        const float x0 = c[2] * x + c[3] * m;
        const float used = clip >= 0.0f ? fminf(fmaxf(x0, -clip), clip) : x0;
        const float h = c[8] != 0.0f ? history[base + i] : 0.0f;
        const float z = c[9] != 0.0f ? noise[base + i] : 0.0f;
        next[base + i] = c[5] * x + c[6] * m + c[7] * used + c[8] * h + c[9] * z;
        x0_out[base + i] = x0;
    }
}
