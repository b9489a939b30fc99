// Elementwise kernels over flat f32 buffers. Compiled by NVRTC at run time
// (src/backend/cuda/kernels.rs); every kernel is checked against the CPU backend by
// `diffsteer selftest --device cuda`.

extern "C" __global__ void axpby_f32(float* __restrict__ out,
                                     const float* __restrict__ x,
                                     const float* __restrict__ y,
                                     float a, float b, unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        out[i] = a * x[i] + b * y[i];
    }
}
