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

#if defined(ELEM_F16) || defined(ELEM_BF16)
// Tensor-core building blocks (sm_80+: cp.async, ldmatrix, mma.sync) shared by
// attention_mma.cu and conv_mma.cu. Inline functions a module never calls emit no code,
// so the other 16-bit modules (and older GPUs running them) are unaffected.
#if defined(ELEM_F16)
#define TC_MMA_TYPE "f16"
#else
#define TC_MMA_TYPE "bf16"
#endif

__device__ __forceinline__ u32 tc_smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// 16 bytes global -> shared; src_bytes = 0 reads nothing and zero-fills the 16 bytes.
// .cg caches in L2 only (data a block reads once); .ca also in L1 (data re-read soon).
__device__ __forceinline__ void tc_cp_async16_cg(u32 dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void tc_cp_async16_ca(u32 dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void tc_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void tc_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void tc_ldsm_x4(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void tc_ldsm_x2(u32& r0, u32& r1, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr) : "memory");
}
__device__ __forceinline__ void tc_ldsm_x4_trans(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void tc_ldsm_x2_trans(u32& r0, u32& r1, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r0), "=r"(r1)
                 : "r"(addr)
                 : "memory");
}

// 2^x, flushing subnormals; 2^-inf = +0.
__device__ __forceinline__ float tc_exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// 32-bit and 16-byte accesses by shared byte address; a 16-byte global store.
__device__ __forceinline__ void tc_st_shared_b32(u32 addr, u32 v) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void tc_ld_shared_v4(u32& x0, u32& x1, u32& x2, u32& x3, u32 addr) {
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(x0), "=r"(x1), "=r"(x2), "=r"(x3)
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void tc_st_global_v4(void* dst, u32 x0, u32 x1, u32 x2, u32 x3) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(x0), "r"(x1), "r"(x2), "r"(x3)
                 : "memory");
}

// c[0..3] += A (16x16, row) * B (16x8, col).
__device__ __forceinline__ void tc_mma16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32." TC_MMA_TYPE "." TC_MMA_TYPE ".f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// c[0..3] += A (16x8, row) * B (8x8, col).
__device__ __forceinline__ void tc_mma8(float* c, u32 a0, u32 a1, u32 b0) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32." TC_MMA_TYPE "." TC_MMA_TYPE ".f32 "
        "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(b0));
}
#endif

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
