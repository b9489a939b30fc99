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

// The transpose of im2col: dx[b, iy, ix, ci] sums dpatches[(b, oy, ox), (ky * kw + kx) * cin + ci]
// over every output pixel whose window puts tap (ky, kx) on (iy, ix), i.e.
// oy * stride + ky - pad_top = iy. One thread per input element, so nothing is written
// twice. CPU twin: src/backend/cpu/col2im.rs.
extern "C" __global__ void col2im(elem_t* __restrict__ dx, const elem_t* __restrict__ dpatches, u32 h, u32 w,
                                  u32 cin, u32 kh, u32 kw, u32 stride, u32 pad_top, u32 pad_left, u32 oh, u32 ow,
                                  u64 n) {
    u64 patch = (u64)kh * kw * cin;
    GRID_STRIDE_LOOP(i, n) {
        u32 ci = (u32)(i % cin);
        u64 px = i / cin;
        u32 ix = (u32)(px % w);
        u32 iy = (u32)((px / w) % h);
        u64 b = px / ((u64)w * h);
        float sum = 0.0f;
        for (u32 ky = 0; ky < kh; ++ky) {
            long long qy = (long long)iy + pad_top - ky;
            if (qy < 0 || qy % stride != 0 || qy / stride >= oh) continue;
            u64 oy = (u64)(qy / stride);
            for (u32 kx = 0; kx < kw; ++kx) {
                long long qx = (long long)ix + pad_left - kx;
                if (qx < 0 || qx % stride != 0 || qx / stride >= ow) continue;
                u64 ox = (u64)(qx / stride);
                sum += load_elem(dpatches[((b * oh + oy) * ow + ox) * patch + (u64)(ky * kw + kx) * cin + ci]);
            }
        }
        dx[i] = store_elem(sum);
    }
}
