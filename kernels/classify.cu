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
// Exact, order-independent statistics (issues 15 and 25): every count and sum is an integer
// addition, which is associative, so neither the grid size nor the order of the blocks or of
// the atomics changes a bit of the result.
//   * counts: u64 per thread, reduced in the block, one atomicAdd per block;
//   * integer samples (CT as int16): sums in int64, reduced like the counts into `int_sums`;
//   * float samples (what the engine passes: float32 ROI values of CT and MRI): each value is
//     m * 2^(k - bias), with m its signed integer mantissa (24 bits for float32, the implicit
//     bit included) and k its biased exponent (1 for subnormals, whose m has no implicit bit).
//     The mantissas are added in int64 per exponent into `exact_bins[threshold][class][bin]`:
//     float32 in shared memory (256 exponent bins), then one atomicAdd per non-empty bin and
//     block; float64 splits m (53 bits) into a high 27-bit and a low 26-bit half at bins k + 26
//     and k, added straight to global memory (float64 is not on the engine's path). A bin holds
//     an exact sum while it receives fewer than 2^39 (float32) or 2^36 (float64) values. The
//     last two bins count +inf and -inf (NaN is in no class). The host adds the bins as Python
//     integers and rounds once to float64 (kernels/classify.py: exact_sum), as the numpy path
//     does with the same decomposition: the CPU and GPU sums are the same correctly rounded
//     float64.

typedef unsigned long long u64;

#define MAX_THRESHOLDS 4
#define WARP 32
#define MAX_WARPS 32

// Bins of the exact float sums (see above): exponents, then the +inf and -inf counts.
#define F32_EXPONENT_BINS 256
#define F64_EXPONENT_BINS (2048 + 26)
#define F32_BINS (F32_EXPONENT_BINS + 2)
#define F64_BINS (F64_EXPONENT_BINS + 2)

template <typename T> struct sample_traits {
    static const bool integral = true;
    static const int bins = 0;          // no exact float bins
    static const int shared_bins = 1;   // (a zero-length array is not C++)
};
template <> struct sample_traits<float> {
    static const bool integral = false;
    static const int bins = F32_BINS;
    static const int shared_bins = F32_BINS;
};
template <> struct sample_traits<double> {
    static const bool integral = false;
    static const int bins = F64_BINS;
    static const int shared_bins = 1;   // 2 x 4 x 2076 int64 would not fit: global atomics
};

// The exact pieces of a float value: up to 2 (bin, signed mantissa) pairs, m * 2^(bin - bias).
__device__ __forceinline__ int exact_pieces(float x, int* bin, long long* m)
{
    const unsigned int bits = __float_as_uint(x);
    const int e = (int)((bits >> 23) & 0xffu);
    const bool negative = (bits >> 31) != 0u;
    if (e == 0xff) {  // +-inf (NaN never reaches here: it is in no class)
        bin[0] = negative ? F32_BINS - 1 : F32_BINS - 2;
        m[0] = 1;
        return 1;
    }
    const long long mantissa = (long long)(bits & 0x7fffffu) | (e ? 0x800000ll : 0ll);
    bin[0] = e ? e : 1;
    m[0] = negative ? -mantissa : mantissa;
    return mantissa != 0;
}
__device__ __forceinline__ int exact_pieces(double x, int* bin, long long* m)
{
    const unsigned long long bits = (unsigned long long)__double_as_longlong(x);
    const int e = (int)((bits >> 52) & 0x7ffull);
    const bool negative = (bits >> 63) != 0ull;
    if (e == 0x7ff) {
        bin[0] = negative ? F64_BINS - 1 : F64_BINS - 2;
        m[0] = 1;
        return 1;
    }
    const long long mantissa = (long long)(bits & 0xfffffffffffffull) | (e ? (1ll << 52) : 0ll);
    const int k = e ? e : 1;
    const long long low = mantissa & ((1ll << 26) - 1), high = mantissa >> 26;
    bin[0] = k;
    m[0] = negative ? -low : low;
    bin[1] = k + 26;
    m[1] = negative ? -high : high;
    return 2;
}
template <typename T>
__device__ __forceinline__ int exact_pieces(T, int*, long long*) { return 0; }  // integers: int_sums

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
                              long long* __restrict__ exact_bins)
{
    // counts / int_sums layout: [threshold][0 = fat, 1 = muscle];
    // exact_bins: [threshold][0 = fat, 1 = muscle][bin]; labels: [threshold][voxel]
    typedef long long S;
    typedef sample_traits<T> traits;
    const bool shared_exact = !traits::integral && traits::shared_bins > 1;
    __shared__ u64 scratch_counts[2 * MAX_THRESHOLDS][MAX_WARPS];
    __shared__ S scratch_sums[2 * MAX_THRESHOLDS][MAX_WARPS];
    __shared__ S shared_bins[2 * MAX_THRESHOLDS][traits::shared_bins];

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

    if (shared_exact && write_stats) {  // uniform across the grid, as every barrier must be
        for (int b = threadIdx.x; b < 2 * MAX_THRESHOLDS * traits::shared_bins; b += blockDim.x) {
            shared_bins[b / traits::shared_bins][b % traits::shared_bins] = 0;
        }
        __syncthreads();
    }

    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T raw = values[i];
        const double v = exact_double(raw);
        const S s = traits::integral ? (S)raw : (S)0;
        int piece_bin[2];
        long long piece[2];
        const int n_pieces = write_stats ? exact_pieces(raw, piece_bin, piece) : 0;
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
                    if (fat || muscle) {
                        const int q = 2 * j + (fat ? 0 : 1);
                        for (int p = 0; p < n_pieces; ++p) {
                            if (shared_exact) {
                                atomicAdd(reinterpret_cast<u64*>(&shared_bins[q][piece_bin[p]]), (u64)piece[p]);
                            } else {
                                atomicAdd(reinterpret_cast<u64*>(exact_bins) + (long long)q * traits::bins + piece_bin[p],
                                          (u64)piece[p]);  // two's complement: exact int64 addition
                            }
                        }
                    }
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
            const S s = traits::integral ? warp_sum<S>(sum[q]) : (S)0;  // float sums: exact_bins
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
        if (traits::integral && s) atomicAdd(reinterpret_cast<u64*>(int_sums) + q, (u64)s);  // two's complement
    }
    if (shared_exact) {  // the block's non-empty exponent bins, one atomic each (the barrier above
                         // ordered every shared atomic before these reads)
        for (int b = threadIdx.x; b < n_quantities * traits::shared_bins; b += blockDim.x) {
            const S m = shared_bins[b / traits::shared_bins][b % traits::shared_bins];
            if (m) atomicAdd(reinterpret_cast<u64*>(exact_bins) + b, (u64)m);
        }
    }
}

#define CLASSIFY_ENTRY(NAME, T)                                                               \
    extern "C" __global__ void NAME(const T* __restrict__ values, long long n,                \
                                    const double* __restrict__ thresholds, int n_thresholds,  \
                                    int fat_is_high, int write_labels,                        \
                                    unsigned char* __restrict__ labels, int write_stats,      \
                                    u64* __restrict__ counts, long long* __restrict__ int_sums, \
                                    long long* __restrict__ exact_bins)                       \
    {                                                                                         \
        classify_impl<T>(values, n, thresholds, n_thresholds, fat_is_high, write_labels,      \
                         labels, write_stats, counts, int_sums, exact_bins);                  \
    }

CLASSIFY_ENTRY(classify_float32, float)
CLASSIFY_ENTRY(classify_float64, double)
CLASSIFY_ENTRY(classify_int16, short)
CLASSIFY_ENTRY(classify_uint16, unsigned short)
CLASSIFY_ENTRY(classify_int32, int)
