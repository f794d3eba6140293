// Two-class labelling of voxels against frozen thresholds, with per-tissue counts and sums.
//
// Loaded by kernels/classify.py through cupy.RawModule (NVRTC): no host headers, extern "C"
// entry points. The tests compile it with nvcc and NVRTC (CuPy's options, -ftz=true included)
// and also execute it on the host (tests/cudahost).
//
// For every value v (converted to double exactly, as the numpy path does) and threshold t:
//     low  = v <= t,  high = v > t      (NaN is neither: label 0, not counted)
//     fat  = fat_is_high ? high : low,   muscle = the other class
//     label = 2 for fat, 1 for muscle.
// Up to MAX_THRESHOLDS thresholds are applied in one read of the values (the host loops over
// groups when there are more).
//
// Exact and deterministic statistics (issue 15):
//   * counts: u64 per thread, reduced in the block, one atomicAdd per block (integer
//     addition is associative, so the order of the atomics does not matter);
//   * integer samples (CT is int16): sums in int64, reduced like the counts into `int_sums`:
//     exact, and bit-identical to numpy's int64 sums;
//   * float samples: double sums per thread, reduced in the block in a fixed order, and
//     written (no atomics) to `block_sums[threshold][block][class]`; the host adds the
//     partials of the blocks in a fixed order (math.fsum), so the result does not depend on
//     the scheduling of the blocks: the same bits on every run of a given launch shape.

typedef unsigned long long u64;

#define MAX_THRESHOLDS 4
#define WARP 32
#define MAX_WARPS 32

template <typename T> struct sample_traits { typedef double sum_t; static const bool integral = false; };
template <> struct sample_traits<short> { typedef long long sum_t; static const bool integral = true; };
template <> struct sample_traits<unsigned short> { typedef long long sum_t; static const bool integral = true; };
template <> struct sample_traits<int> { typedef long long sum_t; static const bool integral = true; };

// float -> double that never flushes a subnormal: CuPy compiles every RawModule with
// -ftz=true (appended after our options), which turns a plain (double)x into
// cvt.ftz.f64.f32. Explicit PTX keeps the IEEE conversion. Other types convert exactly.
__device__ __forceinline__ double exact_double(float x)
{
#ifdef __CUDA_ARCH__
    double d;
    asm("cvt.f64.f32 %0, %1;" : "=d"(d) : "f"(x));
    return d;
#else
    return (double)x;
#endif
}
__device__ __forceinline__ double exact_double(double x) { return x; }
__device__ __forceinline__ double exact_double(short x) { return (double)x; }
__device__ __forceinline__ double exact_double(unsigned short x) { return (double)x; }
__device__ __forceinline__ double exact_double(int x) { return (double)x; }

template <typename V>
__device__ __forceinline__ V warp_sum(V x)
{
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        x += __shfl_down_sync(0xffffffffu, x, offset);
    }
    return x;
}

template <typename T>
__device__ void classify_impl(const T* __restrict__ values, long long n,
                              const double* __restrict__ thresholds, int n_thresholds,
                              int fat_is_high, int write_labels,
                              unsigned char* __restrict__ labels, int write_stats,
                              u64* __restrict__ counts, long long* __restrict__ int_sums,
                              double* __restrict__ block_sums)
{
    // counts / int_sums layout: [threshold][0 = fat, 1 = muscle];
    // block_sums: [threshold][block][0 = fat, 1 = muscle]; labels: [threshold][voxel]
    typedef typename sample_traits<T>::sum_t S;
    __shared__ u64 scratch_counts[2 * MAX_THRESHOLDS][MAX_WARPS];
    __shared__ S scratch_sums[2 * MAX_THRESHOLDS][MAX_WARPS];

    double t[MAX_THRESHOLDS];
    u64 count[2 * MAX_THRESHOLDS];
    S sum[2 * MAX_THRESHOLDS];
#pragma unroll
    for (int j = 0; j < MAX_THRESHOLDS; ++j) {
        t[j] = j < n_thresholds ? thresholds[j] : 0.0;
    }
#pragma unroll
    for (int q = 0; q < 2 * MAX_THRESHOLDS; ++q) {
        count[q] = 0;
        sum[q] = 0;
    }

    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T raw = values[i];
        const double v = exact_double(raw);
        const S s = sample_traits<T>::integral ? (S)raw : (S)v;
#pragma unroll
        for (int j = 0; j < MAX_THRESHOLDS; ++j) {
            if (j < n_thresholds) {
                const bool low = v <= t[j];
                const bool high = v > t[j];
                const bool fat = fat_is_high ? high : low;
                const bool muscle = fat_is_high ? low : high;
                if (write_labels) {
                    labels[(long long)j * n + i] = fat ? 2 : (muscle ? 1 : 0);
                }
                if (write_stats) {
                    count[2 * j] += fat ? 1ull : 0ull;
                    count[2 * j + 1] += muscle ? 1ull : 0ull;
                    sum[2 * j] += fat ? s : (S)0;
                    sum[2 * j + 1] += muscle ? s : (S)0;
                }
            }
        }
    }

    if (!write_stats) return;  // uniform across the grid: no thread skips a barrier alone

    // Block reduction in a fixed order: a shuffle tree inside each warp, then thread q adds
    // quantity q over the warps in warp order.
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    const int n_warps = (blockDim.x + WARP - 1) / WARP;
    const int n_quantities = 2 * n_thresholds;
#pragma unroll
    for (int q = 0; q < 2 * MAX_THRESHOLDS; ++q) {
        if (q < n_quantities) {
            const u64 c = warp_sum<u64>(count[q]);
            const S s = warp_sum<S>(sum[q]);
            if (lane == 0) {
                scratch_counts[q][warp] = c;
                scratch_sums[q][warp] = s;
            }
        }
    }
    __syncthreads();
    const int q = threadIdx.x;
    if (q < n_quantities) {
        u64 c = 0;
        S s = 0;
        for (int w = 0; w < n_warps; ++w) {
            c += scratch_counts[q][w];
            s += scratch_sums[q][w];
        }
        if (c) atomicAdd(counts + q, c);
        if (sample_traits<T>::integral) {
            if (s) atomicAdd(reinterpret_cast<u64*>(int_sums) + q, (u64)s);  // two's complement
        } else {
            const int j = q / 2, k = q % 2;
            block_sums[((long long)j * gridDim.x + blockIdx.x) * 2 + k] = (double)s;
        }
    }
}

#define CLASSIFY_ENTRY(NAME, T)                                                               \
    extern "C" __global__ void NAME(const T* __restrict__ values, long long n,                \
                                    const double* __restrict__ thresholds, int n_thresholds,  \
                                    int fat_is_high, int write_labels,                        \
                                    unsigned char* __restrict__ labels, int write_stats,      \
                                    u64* __restrict__ counts, long long* __restrict__ int_sums, \
                                    double* __restrict__ block_sums)                          \
    {                                                                                         \
        classify_impl<T>(values, n, thresholds, n_thresholds, fat_is_high, write_labels,      \
                         labels, write_stats, counts, int_sums, block_sums);                  \
    }

CLASSIFY_ENTRY(classify_float32, float)
CLASSIFY_ENTRY(classify_float64, double)
CLASSIFY_ENTRY(classify_int16, short)
CLASSIFY_ENTRY(classify_uint16, unsigned short)
CLASSIFY_ENTRY(classify_int32, int)
