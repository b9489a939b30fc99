// Prepended to every kernel file by the registry (src/backend/cuda/kernels.rs).
// It fixes the element type of the tensors a module works on, from one of the
// defines -DELEM_F32 (the default), -DELEM_F16 or -DELEM_BF16: kernels read and
// write `elem_t` through load_elem / store_elem and compute in f32. The half types
// are raw 16-bit words converted with PTX `cvt`, so no CUDA header is needed
// (NVRTC has none of its own, and CI has only libnvrtc). bf16 needs sm_80.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#if defined(ELEM_F16)
typedef u16 elem_t;
__device__ __forceinline__ float load_elem(elem_t v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}
__device__ __forceinline__ elem_t store_elem(float f) {
    elem_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
// Two f32 values as one 32-bit register of packed halves, `lo` in the low half
// (the operand layout of the tensor-core `mma` instructions).
__device__ __forceinline__ u32 pack_elem2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#elif defined(ELEM_BF16)
typedef u16 elem_t;
__device__ __forceinline__ float load_elem(elem_t v) { return __uint_as_float((u32)v << 16); }
__device__ __forceinline__ elem_t store_elem(float f) {
    elem_t h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ u32 pack_elem2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#else
typedef float elem_t;
__device__ __forceinline__ float load_elem(elem_t v) { return v; }
__device__ __forceinline__ elem_t store_elem(float f) { return f; }
#endif

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
