// Group and layer normalisation. Statistics accumulate in double (cheap on data-centre
// GPUs, and it matches the CPU backend's f64 sums); the normalisation is then one
// fused multiply-add per element, x * a_c + b_c, with optional SiLU.
// CPU twins: src/backend/cpu/norm.rs.

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(FULL_MASK, v, offset);
    return v;
}

// Sums v over the block into every thread (blockDim.x a multiple of 32, <= 1024).
__device__ double block_sum(double v, double* scratch) {
    u32 lane = threadIdx.x % 32;
    u32 warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u32 warps = blockDim.x / 32;
    double total = 0.0;
    for (u32 i = 0; i < warps; ++i) total += scratch[i];
    __syncthreads();
    return total;
}

// One block per (sample, group): writes the per-channel affine of the normalisation,
// affine[s * 2c + ch] = gamma * rstd and affine[s * 2c + c + ch] = beta - mean * gamma * rstd.
extern "C" __global__ void group_norm_affine(float* __restrict__ affine, const elem_t* __restrict__ x,
                                             const elem_t* __restrict__ gamma, const elem_t* __restrict__ beta,
                                                 u32 pixels, u32 c, u32 groups, float eps) {
    __shared__ double scratch[32];
    u32 s = blockIdx.x / groups;
    u32 g = blockIdx.x % groups;
    u32 per_group = c / groups;
    u64 count = (u64)pixels * per_group;
    const elem_t* base = x + (u64)s * pixels * c + (u64)g * per_group;
    double sum = 0.0, sum_sq = 0.0;
    for (u64 i = threadIdx.x; i < count; i += blockDim.x) {
        double v = load_elem(base[(i / per_group) * c + i % per_group]);
        sum += v;
        sum_sq += v * v;
    }
    sum = block_sum(sum, scratch);
    sum_sq = block_sum(sum_sq, scratch);
    double mean = sum / (double)count;
    double var = fmax(sum_sq / (double)count - mean * mean, 0.0);
    double rstd = 1.0 / sqrt(var + (double)eps);
    for (u32 j = threadIdx.x; j < per_group; j += blockDim.x) {
        u32 ch = g * per_group + j;
        double a = (double)load_elem(gamma[ch]) * rstd;
        affine[(u64)s * 2 * c + ch] = (float)a;
        affine[(u64)s * 2 * c + c + ch] = (float)((double)load_elem(beta[ch]) - mean * a);
    }
}

extern "C" __global__ void apply_affine(elem_t* __restrict__ out, const elem_t* __restrict__ x,
                                        const float* __restrict__ affine, u64 per_sample, u32 c, int silu, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 s = i / per_sample;
        u32 ch = (u32)(i % c);
        float y = load_elem(x[i]) * affine[s * 2 * c + ch] + affine[s * 2 * c + c + ch];
        out[i] = store_elem(silu ? y / (1.0f + expf(-y)) : y);
    }
}

// One warp per row of `cols` values.
extern "C" __global__ void layer_norm(elem_t* __restrict__ out, const elem_t* __restrict__ x,
                                      const elem_t* __restrict__ gamma, const elem_t* __restrict__ beta, u32 cols,
                                      u64 rows, float eps) {
    u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    u32 lane = threadIdx.x % 32;
    if (row >= rows) return;
    const elem_t* src = x + row * cols;
    double sum = 0.0;
    for (u32 i = lane; i < cols; i += 32) sum += load_elem(src[i]);
    sum = warp_sum(sum);
    double mean = __shfl_sync(FULL_MASK, sum, 0) / (double)cols;
    double var = 0.0;
    for (u32 i = lane; i < cols; i += 32) {
        double d = load_elem(src[i]) - mean;
        var += d * d;
    }
    var = warp_sum(var);
    double rstd = 1.0 / sqrt(__shfl_sync(FULL_MASK, var, 0) / (double)cols + (double)eps);
    elem_t* dst = out + row * cols;
    for (u32 i = lane; i < cols; i += 32)
        dst[i] = store_elem((float)((load_elem(src[i]) - mean) * rstd) * load_elem(gamma[i]) + load_elem(beta[i]));
}
