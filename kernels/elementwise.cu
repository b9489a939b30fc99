// Elementwise and data-movement kernels over flat NHWC buffers of elem_t (f32, f16
// or bf16, see prelude.cuh), computing in f32. Compiled by
// NVRTC at run time (src/backend/cuda/kernels.rs); each has a CPU twin in
// src/backend/cpu/elementwise.rs, and `diffsteer selftest --device cuda` compares
// them on random inputs.

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

extern "C" __global__ void silu_inplace(elem_t* __restrict__ x, u64 n) {
    GRID_STRIDE_LOOP(i, n) { x[i] = store_elem(silu(load_elem(x[i]))); }
}

// x <- (x + y) * scale
extern "C" __global__ void add_scaled(elem_t* __restrict__ x, const elem_t* __restrict__ y, float scale, u64 n) {
    if (scale == 1.0f) {
        GRID_STRIDE_LOOP(i, n) { x[i] = store_elem(load_elem(x[i]) + load_elem(y[i])); }
    } else {
        GRID_STRIDE_LOOP(i, n) { x[i] = store_elem((load_elem(x[i]) + load_elem(y[i])) * scale); }
    }
}

// x[s, p, c] += bias[s, c] for `per_sample` = pixels * c elements per sample.
extern "C" __global__ void channel_bias(elem_t* __restrict__ x, const elem_t* __restrict__ bias, u64 per_sample,
                                        u32 c, u64 n) {
    GRID_STRIDE_LOOP(i, n) { x[i] = store_elem(load_elem(x[i]) + load_elem(bias[(i / per_sample) * c + i % c])); }
}

// out[r, i] = x[r, i] * gelu(x[r, f + i]), exact (erf) GELU.
extern "C" __global__ void geglu(elem_t* __restrict__ out, const elem_t* __restrict__ x, u32 f, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        u64 r = i / f;
        u64 j = i % f;
        float hidden = load_elem(x[r * 2 * f + j]);
        float gate = load_elem(x[r * 2 * f + f + j]);
        out[i] = store_elem(hidden * (0.5f * gate * (1.0f + erff(gate * 0.70710678118654752f))));
    }
}

// Nearest-neighbour resize, PyTorch's rule: src = floor(dst * (in / out)).
extern "C" __global__ void upsample_nearest(elem_t* __restrict__ out, const elem_t* __restrict__ x, u32 h, u32 w,
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
extern "C" __global__ void concat_channels(elem_t* __restrict__ out, const elem_t* __restrict__ a,
                                           const elem_t* __restrict__ b, u32 ca, u32 cb, u64 n) {
    u32 c = ca + cb;
    GRID_STRIDE_LOOP(i, n) {
        u64 p = i / c;
        u32 ch = (u32)(i % c);
        out[i] = ch < ca ? a[p * ca + ch] : b[p * cb + (ch - ca)];
    }
}

// Every row of out (cols wide) <- row: the bias a GEMM then accumulates onto.
extern "C" __global__ void fill_rows(elem_t* __restrict__ out, const elem_t* __restrict__ row, u32 cols, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = row[i % cols]; }
}

// x <- silu(x) and d <- silu'(x) = s (1 + x (1 - s)) of the old values, s = sigmoid(x).
extern "C" __global__ void silu_with_derivative(elem_t* __restrict__ x, elem_t* __restrict__ d, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = load_elem(x[i]);
        float denom = 1.0f + expf(-v);
        float s = 1.0f / denom;
        d[i] = store_elem(s * (1.0f + v * (1.0f - s)));
        x[i] = store_elem(v / denom);
    }
}

// x <- max(x, 0) (NaN becomes 0, as the CPU's f32::max).
extern "C" __global__ void relu_inplace(elem_t* __restrict__ x, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = load_elem(x[i]);
        x[i] = store_elem(v > 0.0f ? v : 0.0f);
    }
}

// x <- max(x, 0) and d <- 1 where the old x was positive, else 0.
extern "C" __global__ void relu_with_derivative(elem_t* __restrict__ x, elem_t* __restrict__ d, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = load_elem(x[i]);
        d[i] = store_elem(v > 0.0f ? 1.0f : 0.0f);
        x[i] = store_elem(v > 0.0f ? v : 0.0f);
    }
}

// Exact GELU x * Phi(x) and CLIP's quick GELU x * sigmoid(1.702 x), in place; the
// _with_derivative forms also write the derivative at the old values to d
// (Phi(x) + x phi(x); s + 1.702 x s (1 - s) with s = sigmoid(1.702 x)).
// CPU twins: gelu_assign, quick_gelu_assign in src/backend/cpu/elementwise.rs.
__device__ __forceinline__ float gelu_value(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float quick_gelu_gate(float v) { return 1.0f / (1.0f + expf(-1.702f * v)); }

extern "C" __global__ void gelu_inplace(elem_t* __restrict__ x, u64 n) {
    GRID_STRIDE_LOOP(i, n) { x[i] = store_elem(gelu_value(load_elem(x[i]))); }
}

extern "C" __global__ void gelu_with_derivative(elem_t* __restrict__ x, elem_t* __restrict__ d, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = load_elem(x[i]);
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        d[i] = store_elem(cdf + v * 0.3989422804014327f * expf(-0.5f * v * v));
        x[i] = store_elem(v * cdf);
    }
}

extern "C" __global__ void quick_gelu_inplace(elem_t* __restrict__ x, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = load_elem(x[i]);
        x[i] = store_elem(v * quick_gelu_gate(v));
    }
}

extern "C" __global__ void quick_gelu_with_derivative(elem_t* __restrict__ x, elem_t* __restrict__ d, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = load_elem(x[i]);
        float s = quick_gelu_gate(v);
        d[i] = store_elem(s + 1.702f * v * s * (1.0f - s));
        x[i] = store_elem(v * s);
    }
}

// x <- x * y
extern "C" __global__ void mul_inplace(elem_t* __restrict__ x, const elem_t* __restrict__ y, u64 n) {
    GRID_STRIDE_LOOP(i, n) { x[i] = store_elem(load_elem(x[i]) * load_elem(y[i])); }
}

// The sinusoidal timestep embedding out[r, j], dim columns: sin (or, with flip, cos) of
// t[r] * f[j] for j < half, the other one of t[r] * f[j - half] for half <= j < 2 half,
// zero beyond. The product is rounded to f32 as PyTorch does; sin and cos run in f64.
// CPU twin: src/backend/embedding.rs.
extern "C" __global__ void timestep_embedding(elem_t* __restrict__ out, const float* __restrict__ t,
                                              const float* __restrict__ f, u32 half, u32 dim, int flip, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        u64 r = i / dim;
        u32 j = (u32)(i % dim);
        float v = 0.0f;
        if (j < 2 * half) {
            bool second = j >= half;
            u32 k = second ? j - half : j;
            double arg = (double)(t[r] * f[k]);
            bool use_cos = second != (flip != 0);
            v = (float)(use_cos ? cos(arg) : sin(arg));
        }
        out[i] = store_elem(v);
    }
}
