// The host twin of kernels/prelude.cuh. Put before a kernels/*.cu file instead of the
// real prelude, it makes the file compile as C++20 for the CPU, so that
// tests/kernels_on_host.rs can run the kernels' own source without a GPU: one OS thread
// per CUDA thread, one block at a time, real barriers for __syncthreads and for every
// warp-wide operation.
//
// What it stands in for, and how:
// - __shared__ arrays become function statics: the threads of a block share them, and
//   blocks run one after another. Shared byte addresses (tc_smem_addr) are offsets from
//   an anchor in the same library, so address arithmetic works as on the GPU.
// - Shuffles, ldmatrix and mma.sync exchange values through per-warp slots between two
//   barrier phases, with the fragment layouts of the PTX ISA (m16n8k16 / m16n8k8 with
//   .row.col, ldmatrix .x2/.x4 with and without .trans). mma products are exact in f32
//   (16-bit inputs), sums are f32.
// - cp.async copies are kept per thread and done either at the wait_group that must
//   see them (the latest the hardware may land them: catches reads before the wait) or
//   at once (the earliest: catches a refill of a stage another warp still reads), as
//   the launch asks.
// - f16 / bf16 conversions round to nearest even, as PTX cvt.rn; ex2.approx is exp2f
//   with subnormal results flushed to zero.
// Misuse the GPU would punish (a misaligned ldmatrix row, vector access or cp.async) is
// recorded and reported by shim_take_error() after the launch.
#pragma once

#include <math.h>

#include <atomic>
#include <barrier>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

struct ShimDim3 {
    u32 x, y, z;
};
inline ShimDim3 gridDim, blockDim;
inline thread_local ShimDim3 blockIdx, threadIdx;

// CUDA's integer min and max overloads.
template <class T>
inline T min(T a, T b) {
    return b < a ? b : a;
}
template <class T>
inline T max(T a, T b) {
    return a < b ? b : a;
}

inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline float __uint_as_float(u32 v) { return std::bit_cast<float>(v); }

// ---- errors -----------------------------------------------------------------------------
inline std::atomic<bool> shim_failed{false};
inline char shim_error_text[256];

inline void shim_report(const char* what, u64 value) {
    bool expected = false;
    if (shim_failed.compare_exchange_strong(expected, true))
        snprintf(shim_error_text, sizeof shim_error_text, "%s (value %llu, block %u,%u,%u thread %u)", what,
                 value, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
}

// ---- blocks and warps -------------------------------------------------------------------
struct ShimLane {
    u32 r[8];
    u64 v;
};
struct ShimWarp {
    std::unique_ptr<std::barrier<>> barrier;
    ShimLane lane[32];
};
struct ShimBlock {
    std::unique_ptr<std::barrier<>> barrier;
    std::vector<ShimWarp> warps;
    ShimDim3 index;
};
inline ShimBlock* shim_block = nullptr;
inline int shim_copies_at_issue = 0;
inline thread_local u32 shim_lane, shim_warp_index;

inline ShimWarp& shim_warp() { return shim_block->warps[shim_warp_index]; }
inline void shim_warp_sync() { shim_warp().barrier->arrive_and_wait(); }
inline void __syncthreads() { shim_block->barrier->arrive_and_wait(); }
inline void __syncwarp(u32 = 0xffffffffu) { shim_warp_sync(); }

// v from lane `src` of this warp (every lane of the warp takes part).
template <class T>
inline T shim_exchange(T v, u32 src) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    ShimWarp& w = shim_warp();
    u64 bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.lane[shim_lane].v = bits;
    w.barrier->arrive_and_wait();
    const u64 got = w.lane[src & 31].v;
    w.barrier->arrive_and_wait();
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}
template <class T>
inline T __shfl_xor_sync(u32, T v, int lane_mask) {
    return shim_exchange(v, shim_lane ^ (u32)lane_mask);
}
template <class T>
inline T __shfl_sync(u32, T v, int src_lane) {
    return shim_exchange(v, (u32)src_lane);
}
template <class T>
inline T __shfl_down_sync(u32, T v, u32 delta) {
    const u32 src = shim_lane + delta;
    return shim_exchange(v, src < 32 ? src : shim_lane);
}

// ---- element types ----------------------------------------------------------------------
inline u16 shim_f16_bits(float f) {
    const _Float16 h = (_Float16)f;
    return std::bit_cast<u16>(h);
}
inline float shim_f16_value(u16 v) { return (float)std::bit_cast<_Float16>(v); }
inline u16 shim_bf16_bits(float f) {
    u32 b = std::bit_cast<u32>(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x40u);  // quiet NaN
    b += 0x7fffu + ((b >> 16) & 1u);
    return (u16)(b >> 16);
}

#if defined(ELEM_F16)
typedef u16 elem_t;
inline float load_elem(elem_t v) { return shim_f16_value(v); }
inline elem_t store_elem(float f) { return shim_f16_bits(f); }
#elif defined(ELEM_BF16)
typedef u16 elem_t;
inline float load_elem(elem_t v) { return __uint_as_float((u32)v << 16); }
inline elem_t store_elem(float f) { return shim_bf16_bits(f); }
#else
typedef float elem_t;
inline float load_elem(elem_t v) { return v; }
inline elem_t store_elem(float f) { return f; }
#endif

#if defined(ELEM_F16) || defined(ELEM_BF16)
inline u32 pack_elem2(float lo, float hi) { return (u32)store_elem(lo) | ((u32)store_elem(hi) << 16); }
inline float shim_half(u32 reg, u32 which) { return load_elem((elem_t)(which ? reg >> 16 : reg & 0xffffu)); }

// ---- shared memory by byte address --------------------------------------------------------
alignas(128) inline char shim_shared_anchor;
inline u32 tc_smem_addr(const void* p) { return (u32)((uintptr_t)p - (uintptr_t)&shim_shared_anchor); }
inline char* shim_shared(u32 addr) { return &shim_shared_anchor + (intptr_t)(int32_t)addr; }
inline void shim_check_aligned(u64 address, u64 alignment, const char* what) {
    if (address % alignment != 0) shim_report(what, address);
}

// ---- cp.async ---------------------------------------------------------------------------
struct ShimCopy {
    char* dst;
    const char* src;
    u32 bytes;
};
inline thread_local std::vector<ShimCopy> shim_uncommitted;
inline thread_local std::deque<std::vector<ShimCopy>> shim_in_flight;

inline void shim_land(const ShimCopy& c) {
    if (c.bytes > 16) shim_report("cp.async src-size over 16", c.bytes);
    std::memcpy(c.dst, c.src, c.bytes);
    std::memset(c.dst + c.bytes, 0, 16 - c.bytes);
}
inline void shim_cp_async16(u32 dst, const void* src, u32 src_bytes) {
    shim_check_aligned(dst, 16, "cp.async to a shared address not 16-byte aligned");
    if (src_bytes != 0) shim_check_aligned((uintptr_t)src, 16, "cp.async from a global address not 16-byte aligned");
    const ShimCopy c{shim_shared(dst), (const char*)src, src_bytes};
    if (shim_copies_at_issue)
        shim_land(c);
    else
        shim_uncommitted.push_back(c);
}
inline void tc_cp_async16_cg(u32 dst, const void* src, u32 src_bytes) { shim_cp_async16(dst, src, src_bytes); }
inline void tc_cp_async16_ca(u32 dst, const void* src, u32 src_bytes) { shim_cp_async16(dst, src, src_bytes); }
inline void tc_cp_async_commit() {
    shim_in_flight.push_back(std::move(shim_uncommitted));
    shim_uncommitted.clear();
}
template <int N>
inline void tc_cp_async_wait() {
    while (shim_in_flight.size() > (size_t)N) {
        for (const ShimCopy& c : shim_in_flight.front()) shim_land(c);
        shim_in_flight.pop_front();
    }
}

// ---- ldmatrix ---------------------------------------------------------------------------
// Lanes 8i .. 8i+7 address the rows of matrix i; lane l receives, per matrix, row l/4 and
// columns 2(l%4), 2(l%4)+1 (with .trans: rows 2(l%4), 2(l%4)+1 of column l/4).
inline void shim_ldsm(u32* regs, int matrices, bool trans, u32 addr) {
    shim_check_aligned(addr, 16, "ldmatrix row address not 16-byte aligned");
    ShimWarp& w = shim_warp();
    w.lane[shim_lane].r[0] = addr;
    w.barrier->arrive_and_wait();
    const u32 l = shim_lane;
    for (int i = 0; i < matrices; ++i) {
        u16 e[2];
        for (u32 j = 0; j < 2; ++j) {
            const u32 row = trans ? 2 * (l % 4) + j : l / 4;
            const u32 col = trans ? l / 4 : 2 * (l % 4) + j;
            std::memcpy(&e[j], shim_shared(w.lane[8 * i + row].r[0] + col * 2), 2);
        }
        regs[i] = (u32)e[0] | ((u32)e[1] << 16);
    }
    w.barrier->arrive_and_wait();
}
inline void tc_ldsm_x4(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    u32 r[4];
    shim_ldsm(r, 4, false, addr);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
inline void tc_ldsm_x2(u32& r0, u32& r1, u32 addr) {
    u32 r[2];
    shim_ldsm(r, 2, false, addr);
    r0 = r[0], r1 = r[1];
}
inline void tc_ldsm_x4_trans(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    u32 r[4];
    shim_ldsm(r, 4, true, addr);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
inline void tc_ldsm_x2_trans(u32& r0, u32& r1, u32 addr) {
    u32 r[2];
    shim_ldsm(r, 2, true, addr);
    r0 = r[0], r1 = r[1];
}

// ---- mma.sync ---------------------------------------------------------------------------
// m16n8k16: A element (row, k) sits in lane 4(row%8) + (k%8)/2, register (row>=8) +
// 2(k>=8), half k%2; B element (k, col) in lane 4col + (k%8)/2, register k>=8, half k%2;
// lane (g = l/4, t = l%4) holds C (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
inline void shim_mma(float* c, const u32* a, int a_regs, const u32* b, int k_size) {
    ShimWarp& w = shim_warp();
    ShimLane& me = w.lane[shim_lane];
    for (int i = 0; i < a_regs; ++i) me.r[i] = a[i];
    for (int i = 0; i < k_size / 8; ++i) me.r[4 + i] = b[i];
    w.barrier->arrive_and_wait();
    const u32 g = shim_lane / 4, t = shim_lane % 4;
    float out[4];
    for (int e = 0; e < 4; ++e) {
        const u32 row = g + (e >= 2 ? 8 : 0);
        const u32 col = 2 * t + (e & 1);
        float dot = 0.0f;
        for (u32 k = 0; k < (u32)k_size; ++k) {
            const float av = shim_half(w.lane[4 * (row % 8) + (k % 8) / 2].r[(row >= 8) + 2 * (k >= 8)], k % 2);
            const float bv = shim_half(w.lane[4 * col + (k % 8) / 2].r[4 + (k >= 8)], k % 2);
            dot = fmaf(av, bv, dot);
        }
        out[e] = c[e] + dot;
    }
    w.barrier->arrive_and_wait();
    for (int e = 0; e < 4; ++e) c[e] = out[e];
}
inline void tc_mma16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    const u32 a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1};
    shim_mma(c, a, 4, b, 16);
}
// m16n8k8: A (row, k) in lane 4(row%8) + k/2, register row>=8; B (k, col) in lane 4col + k/2.
inline void tc_mma8(float* c, u32 a0, u32 a1, u32 b0) {
    const u32 a[2] = {a0, a1}, b[1] = {b0};
    shim_mma(c, a, 2, b, 8);
}

// ---- the rest of the prelude's helpers ------------------------------------------------------
inline float tc_exp2_ftz(float x) {
    const float y = exp2f(x);
    return fabsf(y) < 1.17549435e-38f ? 0.0f : y;
}
inline void tc_st_shared_b32(u32 addr, u32 v) {
    shim_check_aligned(addr, 4, "st.shared.b32 not 4-byte aligned");
    std::memcpy(shim_shared(addr), &v, 4);
}
inline void tc_ld_shared_v4(u32& x0, u32& x1, u32& x2, u32& x3, u32 addr) {
    shim_check_aligned(addr, 16, "ld.shared.v4 not 16-byte aligned");
    u32 x[4];
    std::memcpy(x, shim_shared(addr), 16);
    x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
}
inline void tc_st_global_v4(void* dst, u32 x0, u32 x1, u32 x2, u32 x3) {
    shim_check_aligned((uintptr_t)dst, 16, "st.global.v4 not 16-byte aligned");
    const u32 x[4] = {x0, x1, x2, x3};
    std::memcpy(dst, x, 16);
}
#endif

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// ---- the launcher's side (tests/kernels_on_host.rs) ------------------------------------------
extern "C" void shim_launch(u32 gx, u32 gy, u32 gz, u32 bx, u32 by, u32 bz, int copies_at_issue) {
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    shim_copies_at_issue = copies_at_issue;
}
extern "C" void shim_block_begin(u32 x, u32 y, u32 z) {
    const u32 threads = blockDim.x * blockDim.y * blockDim.z;
    shim_block = new ShimBlock();
    shim_block->barrier = std::make_unique<std::barrier<>>(threads);
    shim_block->warps = std::vector<ShimWarp>((threads + 31) / 32);
    for (u32 i = 0; i < shim_block->warps.size(); ++i) {
        const u32 lanes = threads - 32 * i < 32 ? threads - 32 * i : 32;
        shim_block->warps[i].barrier = std::make_unique<std::barrier<>>(lanes);
    }
    shim_block->index = {x, y, z};
}
extern "C" void shim_thread_begin(u32 linear) {
    blockIdx = shim_block->index;
    threadIdx = {linear % blockDim.x, linear / blockDim.x % blockDim.y, linear / (blockDim.x * blockDim.y)};
    shim_lane = linear % 32;
    shim_warp_index = linear / 32;
}
// A thread that returns no longer counts at later barriers (as an exited warp on the GPU);
// copies it left in flight land.
extern "C" void shim_thread_end() {
#if defined(ELEM_F16) || defined(ELEM_BF16)
    for (const ShimCopy& c : shim_uncommitted) shim_land(c);
    shim_uncommitted.clear();
    tc_cp_async_wait<0>();
#endif
    shim_warp().barrier->arrive_and_drop();
    shim_block->barrier->arrive_and_drop();
}
extern "C" void shim_block_end() {
    delete shim_block;
    shim_block = nullptr;
}
// The first error of the launches since the last call, or null; clears it.
extern "C" const char* shim_take_error() {
    if (!shim_failed.load()) return nullptr;
    shim_failed.store(false);
    return shim_error_text;
}
