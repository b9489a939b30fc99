// Elementwise and data-movement kernels over flat f32 NHWC buffers. Compiled by
// NVRTC at run time (src/backend/cuda/kernels.rs); each has a CPU twin in
// src/backend/cpu/elementwise.rs, and `diffsteer selftest --device cuda` compares
// them on random inputs.

typedef unsigned long long u64;
typedef unsigned int u32;

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

extern "C" __global__ void axpby_f32(float* __restrict__ out, const float* __restrict__ x,
                                     const float* __restrict__ y, float a, float b, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = a * x[i] + b * y[i]; }
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

extern "C" __global__ void silu_f32(float* __restrict__ x, u64 n) {
    GRID_STRIDE_LOOP(i, n) { x[i] = silu(x[i]); }
}

// x <- (x + y) * scale
extern "C" __global__ void add_scaled_f32(float* __restrict__ x, const float* __restrict__ y, float scale, u64 n) {
    if (scale == 1.0f) {
        GRID_STRIDE_LOOP(i, n) { x[i] += y[i]; }
    } else {
        GRID_STRIDE_LOOP(i, n) { x[i] = (x[i] + y[i]) * scale; }
    }
}

// x[s, p, c] += bias[s, c] for `per_sample` = pixels * c elements per sample.
extern "C" __global__ void channel_bias_f32(float* __restrict__ x, const float* __restrict__ bias, u64 per_sample,
                                            u32 c, u64 n) {
    GRID_STRIDE_LOOP(i, n) { x[i] += bias[(i / per_sample) * c + i % c]; }
}

// out[r, i] = x[r, i] * gelu(x[r, f + i]), exact (erf) GELU.
extern "C" __global__ void geglu_f32(float* __restrict__ out, const float* __restrict__ x, u32 f, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        u64 r = i / f;
        u64 j = i % f;
        float hidden = x[r * 2 * f + j];
        float gate = x[r * 2 * f + f + j];
        out[i] = hidden * (0.5f * gate * (1.0f + erff(gate * 0.70710678118654752f)));
    }
}

// Nearest-neighbour resize, PyTorch's rule: src = floor(dst * (in / out)).
extern "C" __global__ void upsample_nearest_f32(float* __restrict__ out, const float* __restrict__ x, u32 h, u32 w,
                                                u32 c, u32 oh, u32 ow, u64 n) {
    float sy = (float)h / (float)oh;
    float sx = (float)w / (float)ow;
    GRID_STRIDE_LOOP(i, n) {
        u64 ch = i % c;
        u64 px = i / c;
        u64 ox = px % ow;
        u64 oy = (px / ow) % oh;
        u64 b = px / ((u64)ow * oh);
        u32 iy = min((u32)floorf((float)oy * sy), h - 1);
        u32 ix = min((u32)floorf((float)ox * sx), w - 1);
        out[i] = x[((b * h + iy) * w + ix) * c + ch];
    }
}

// out[p, :] = [a[p, :ca], b[p, :cb]]
extern "C" __global__ void concat_channels_f32(float* __restrict__ out, const float* __restrict__ a,
                                               const float* __restrict__ b, u32 ca, u32 cb, u64 n) {
    u32 c = ca + cb;
    GRID_STRIDE_LOOP(i, n) {
        u64 p = i / c;
        u32 ch = (u32)(i % c);
        out[i] = ch < ca ? a[p * ca + ch] : b[p * cb + (ch - ca)];
    }
}

// Every row of out (cols wide) <- row: the bias a GEMM then accumulates onto.
extern "C" __global__ void fill_rows_f32(float* __restrict__ out, const float* __restrict__ row, u32 cols, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = row[i % cols]; }
}
