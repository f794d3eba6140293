// CUDA-compatibility header: compile the shipped kernels/*.cu for the host, unmodified.
//
// Test infrastructure only (tests/cudahost/build.py includes it ahead of a .cu file); the
// product never sees it. Model:
//   * one OS thread per CUDA thread of a block; the blocks of a grid run one after the other
//     on the same threads, so `static` (what __shared__ becomes) is per-block storage;
//   * __syncthreads() is a real pthread barrier over the block's threads;
//   * warp shuffles exchange values through a per-warp slot array between two warp barriers;
//   * atomics are GCC __atomic builtins (double atomicAdd: a compare-and-swap loop);
//   * dynamic shared memory (extern __shared__) is refilled with garbage bytes before every
//     block, as a GPU gives no guarantee on its contents.
// __CUDA_ARCH__ is not defined, exactly as in a host compilation pass of nvcc: code guarded
// by it (inline PTX) is the one part of a .cu file this execution does not run.
#pragma once

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

#ifndef CUDAHOST_SCAN  // the scan pass keeps __global__ as a token to find the entry points
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static
#define __align__(n) alignas(n)

namespace cudahost {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;

struct Block {
    pthread_barrier_t barrier;
    pthread_barrier_t warp_barrier[kMaxThreads / kWarp];
    // Two slot sets, alternated by every shuffle of a warp: one barrier per shuffle suffices
    // (a lane can only overwrite a set after the next barrier, which every reader has passed).
    alignas(16) unsigned char slots[2][kMaxThreads / kWarp][kWarp][16];
};

inline thread_local unsigned int shuffle_phase = 0;

inline Block* block = nullptr;

[[noreturn]] inline void fail(const char* what)
{
    fprintf(stderr, "cudahost: %s\n", what);
    abort();
}

inline unsigned int linear_thread()
{
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline void warp_sync_all()
{
    pthread_barrier_wait(&block->warp_barrier[linear_thread() / kWarp]);
}

inline unsigned int warp_size_of(unsigned int warp)
{
    unsigned int n = blockDim.x * blockDim.y * blockDim.z;
    unsigned int first = warp * kWarp;
    return n - first < (unsigned)kWarp ? n - first : (unsigned)kWarp;
}

template <typename T>
inline T shuffle(unsigned int mask, T var, int source_lane_of_me_offset, int mode)
{
    static_assert(sizeof(T) <= 16, "shuffle of a type larger than 16 bytes");
    const unsigned int t = linear_thread();
    const unsigned int warp = t / kWarp, lane = t % kWarp, size = warp_size_of(warp);
    const unsigned int full = size == 32 ? 0xffffffffu : ((1u << size) - 1u);
    if ((mask & full) != full) fail("warp shuffle with a partial mask (not modelled)");
    unsigned char (*slots)[16] = block->slots[shuffle_phase][warp];
    shuffle_phase ^= 1u;
    memcpy(slots[lane], &var, sizeof(T));
    warp_sync_all();
    T out = var;
    int src = mode == 0 ? (int)lane + source_lane_of_me_offset
            : mode == 1 ? (int)lane - source_lane_of_me_offset
            : mode == 2 ? (int)(lane ^ (unsigned)source_lane_of_me_offset)
                        : source_lane_of_me_offset;
    if (src >= 0 && src < (int)size) memcpy(&out, slots[src], sizeof(T));
    return out;
}

}  // namespace cudahost

inline void __syncthreads() { pthread_barrier_wait(&cudahost::block->barrier); }
inline void __syncwarp(unsigned int = 0xffffffffu) { cudahost::warp_sync_all(); }

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32)
{
    if (width != 32) cudahost::fail("__shfl_down_sync with width != 32 (not modelled)");
    return cudahost::shuffle<T>(mask, var, (int)delta, 0);
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = 32)
{
    if (width != 32) cudahost::fail("__shfl_up_sync with width != 32 (not modelled)");
    return cudahost::shuffle<T>(mask, var, (int)delta, 1);
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = 32)
{
    if (width != 32) cudahost::fail("__shfl_xor_sync with width != 32 (not modelled)");
    return cudahost::shuffle<T>(mask, var, lane_mask, 2);
}
template <typename T>
inline T __shfl_sync(unsigned int mask, T var, int src_lane, int width = 32)
{
    if (width != 32) cudahost::fail("__shfl_sync with width != 32 (not modelled)");
    return cudahost::shuffle<T>(mask, var, src_lane, 3);
}

// Atomics: the overloads CUDA provides (relaxed ordering, as on the device).
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* p, float v)
{
    float old, want;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = old + v; } while (!__atomic_compare_exchange(p, &old, &want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline double atomicAdd(double* p, double v)
{
    double old, want;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = old + v; } while (!__atomic_compare_exchange(p, &old, &want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
inline unsigned int atomicOr(unsigned int* p, unsigned int v)
{
    return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}
inline int atomicMax(int* p, int v)
{
    int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}

template <typename T> inline T __ldg(const T* p) { return *p; }

// Bit reinterpretations (the exact float sums of classify.cu read the exponent and mantissa).
inline unsigned int __float_as_uint(float x) { unsigned int u; memcpy(&u, &x, sizeof u); return u; }
inline long long __double_as_longlong(double x) { long long u; memcpy(&u, &x, sizeof u); return u; }

// Double intrinsics with an explicit rounding mode: the host's default mode is round to nearest.
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
