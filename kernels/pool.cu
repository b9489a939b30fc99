// Average pooling with window = stride = k over NHWC data (rows and columns that do
// not fill a window are dropped, as PyTorch's floor mode), and its input gradient.
// CPU twins: src/backend/cpu/pool2d.rs.

// out[b, oy, ox, c] = mean of the k x k window; one thread per output element.
extern "C" __global__ void avg_pool(elem_t* __restrict__ out, const elem_t* __restrict__ x, u32 h, u32 w, u32 c,
                                    u32 k, u32 oh, u32 ow, u64 n) {
    const float scale = 1.0f / (float)(k * k);
    GRID_STRIDE_LOOP(i, n) {
        u64 ch = i % c;
        u64 px = i / c;
        u64 ox = px % ow;
        u64 oy = (px / ow) % oh;
        u64 b = px / ((u64)ow * oh);
        float sum = 0.0f;
        for (u32 ky = 0; ky < k; ++ky) {
            const elem_t* row = x + ((b * h + oy * k + ky) * w + ox * k) * c + ch;
            for (u32 kx = 0; kx < k; ++kx) sum += load_elem(row[(u64)kx * c]);
        }
        out[i] = store_elem(sum * scale);
    }
}

// dx[b, y, x, c] = dy of the window covering (y, x) / k^2, or 0 where none does; one
// thread per input element.
extern "C" __global__ void avg_pool_backward(elem_t* __restrict__ dx, const elem_t* __restrict__ dy, u32 h, u32 w,
                                             u32 c, u32 k, u32 oh, u32 ow, u64 n) {
    const float scale = 1.0f / (float)(k * k);
    GRID_STRIDE_LOOP(i, n) {
        u64 ch = i % c;
        u64 px = i / c;
        u64 ix = px % w;
        u64 iy = (px / w) % h;
        u64 b = px / ((u64)w * h);
        u64 oy = iy / k;
        u64 ox = ix / k;
        float v = 0.0f;
        if (oy < oh && ox < ow) v = load_elem(dy[((b * oh + oy) * ow + ox) * c + ch]) * scale;
        dx[i] = store_elem(v);
    }
}
