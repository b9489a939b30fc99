// im2col for NHWC convolutions: patches[m, (ky * kw + kx) * cin + ci] for output pixel
// m = (b, oy, ox), zero where the kernel overhangs the (asymmetrically) padded input.
// A cuBLAS GEMM with the [kh * kw * cin, cout] weight matrix then finishes the
// convolution. CPU twin: gather_patches in src/backend/cpu/conv.rs.

extern "C" __global__ void im2col(elem_t* __restrict__ patches, const elem_t* __restrict__ x, u32 h, u32 w,
                                      u32 cin, u32 kh, u32 kw, u32 stride, u32 pad_top, u32 pad_left, u32 oh,
                                      u32 ow, u64 first_pixel, u64 n) {
    u64 k = (u64)kh * kw * cin;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 row = i / k;
        u64 col = i % k;
        u64 pixel = first_pixel + row;
        u32 ci = (u32)(col % cin);
        u32 tap = (u32)(col / cin);
        u32 kx = tap % kw;
        u32 ky = tap / kw;
        u64 ox = pixel % ow;
        u64 oy = (pixel / ow) % oh;
        u64 b = pixel / ((u64)ow * oh);
        long long iy = (long long)(oy * stride + ky) - pad_top;
        long long ix = (long long)(ox * stride + kx) - pad_left;
        elem_t v = store_elem(0.0f);
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
            v = x[((b * h + (u64)iy) * w + (u64)ix) * cin + ci];
        }
        patches[i] = v;
    }
}
