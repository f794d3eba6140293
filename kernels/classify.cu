// Two-class labelling of voxels against frozen thresholds, with per-tissue counts and sums.
//
// Loaded by kernels/classify.py through cupy.RawModule (NVRTC): no host headers, extern "C"
// entry points. `nvcc --ptx` compile-checks it.
//
// For every value v (converted to double, exactly, as the numpy path does) and threshold t:
//     low  = v <= t,  high = v > t      (NaN is neither: label 0, not counted)
//     fat  = fat_is_high ? high : low,   muscle = the other class
//     label = 2 for fat, 1 for muscle.
// Up to MAX_THRESHOLDS thresholds are applied in one read of the values (the host loops over
// groups when there are more). Each thread accumulates counts (u64) and sums (double) in
// registers; each block reduces them (warp shuffles, then shared memory) and adds its total
// to global memory with one atomicAdd per quantity. atomicAdd on double needs sm_60+.

typedef unsigned long long u64;

#define MAX_THRESHOLDS 4
#define WARP 32

template <typename V>
__device__ __forceinline__ V warp_sum(V x)
{
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        x += __shfl_down_sync(0xffffffffu, x, offset);
    }
    return x;
}

// Sum of x over the block, valid in thread 0. `scratch` holds one V per warp.
template <typename V>
__device__ __forceinline__ V block_sum(V x, V* scratch)
{
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    const int n_warps = (blockDim.x + WARP - 1) / WARP;
    x = warp_sum(x);
    __syncthreads();  // scratch may still be read by the previous call
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    V total = 0;
    if (warp == 0) {
        total = lane < n_warps ? scratch[lane] : (V)0;
        total = warp_sum(total);
    }
    return total;
}

template <typename T>
__device__ void classify_impl(const T* __restrict__ values, long long n,
                              const double* __restrict__ thresholds, int n_thresholds,
                              int fat_is_high, int write_labels,
                              unsigned char* __restrict__ labels, int write_stats,
                              u64* __restrict__ counts, double* __restrict__ sums)
{
    // counts / sums layout: [threshold][0 = fat, 1 = muscle]; labels: [threshold][voxel]
    __shared__ u64 scratch_counts[WARP];
    __shared__ double scratch_sums[WARP];

    double t[MAX_THRESHOLDS];
    u64 fat_count[MAX_THRESHOLDS], muscle_count[MAX_THRESHOLDS];
    double fat_sum[MAX_THRESHOLDS], muscle_sum[MAX_THRESHOLDS];
#pragma unroll
    for (int j = 0; j < MAX_THRESHOLDS; ++j) {
        t[j] = j < n_thresholds ? thresholds[j] : 0.0;
        fat_count[j] = 0;
        muscle_count[j] = 0;
        fat_sum[j] = 0.0;
        muscle_sum[j] = 0.0;
    }

    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double v = (double)values[i];
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
                    fat_count[j] += fat ? 1ull : 0ull;
                    muscle_count[j] += muscle ? 1ull : 0ull;
                    fat_sum[j] += fat ? v : 0.0;
                    muscle_sum[j] += muscle ? v : 0.0;
                }
            }
        }
    }

    if (!write_stats) return;  // uniform across the grid: no thread skips a barrier alone
#pragma unroll
    for (int j = 0; j < MAX_THRESHOLDS; ++j) {
        if (j < n_thresholds) {
            u64 c_fat = block_sum<u64>(fat_count[j], scratch_counts);
            u64 c_muscle = block_sum<u64>(muscle_count[j], scratch_counts);
            double s_fat = block_sum<double>(fat_sum[j], scratch_sums);
            double s_muscle = block_sum<double>(muscle_sum[j], scratch_sums);
            if (threadIdx.x == 0) {
                if (c_fat) atomicAdd(counts + 2 * j, c_fat);
                if (c_muscle) atomicAdd(counts + 2 * j + 1, c_muscle);
                atomicAdd(sums + 2 * j, s_fat);
                atomicAdd(sums + 2 * j + 1, s_muscle);
            }
        }
    }
}

#define CLASSIFY_ENTRY(NAME, T)                                                               \
    extern "C" __global__ void NAME(const T* __restrict__ values, long long n,                \
                                    const double* __restrict__ thresholds, int n_thresholds,  \
                                    int fat_is_high, int write_labels,                        \
                                    unsigned char* __restrict__ labels, int write_stats,      \
                                    u64* __restrict__ counts, double* __restrict__ sums)      \
    {                                                                                         \
        classify_impl<T>(values, n, thresholds, n_thresholds, fat_is_high, write_labels,      \
                         labels, write_stats, counts, sums);                                  \
    }

CLASSIFY_ENTRY(classify_float32, float)
CLASSIFY_ENTRY(classify_float64, double)
CLASSIFY_ENTRY(classify_int16, short)
CLASSIFY_ENTRY(classify_uint16, unsigned short)
CLASSIFY_ENTRY(classify_int32, int)
