// Histogram of a 1-D sample on bins centred on lo + k * width, k = 0 .. n_bins - 1.
//
// Loaded by kernels/histogram.py through cupy.RawModule (NVRTC), so: no host headers, and
// every entry point is extern "C" so its name is not mangled. The tests compile it with nvcc
// and NVRTC (CuPy's options, -ftz=true included) and execute it on the host (tests/cudahost).
//
// Bin rule, identical to the numpy path of kernels/histogram.py:
//     k = floor(((double)v - lo) / width + 0.5), counted only when 0 <= k < n_bins.
// Everything is done in double with IEEE division (no fast-math) so that the GPU puts every
// value in the same bin as numpy. For integer samples with width == 1 and an integral lo the
// rule reduces exactly to k = v - lo, done in integer arithmetic (`integer_fast`).
//
// Strategy: privatised sub-histograms. Each block keeps `replicas` copies of the histogram in
// 32-bit shared-memory counters, interleaved bin-major: copy r of bin k is shared[k * replicas
// + r], and lane l of every warp counts into copy l % replicas. With 32 copies (a CT window of
// 341 bins: 43.6 KiB) the 32 lanes of a warp never share an address or a bank, however
// concentrated the data (CT muscle and fat fill a few dozen bins): a warp's shared atomics
// complete without serialisation, and only lanes of the same index in different warps can meet.
// The block then adds its total into the 64-bit global counts with one atomicAdd per non-empty
// bin (a few hundred global atomics per block for ~10^6 values).
// A grid too large for the default 48 KiB (MRI: ~34,000 bins) gets one sub-histogram in
// opted-in shared memory (up to 227 KiB on sm_90; the host sets the kernel's
// max_dynamic_shared_size_bytes). Only when even that is too small does the host pass
// replicas == 0, and every value is an atomicAdd on global memory. The host sizes the grid so that no block sees 2^32 values,
// which keeps the 32-bit shared counters exact.

typedef unsigned long long u64;

template <typename T> struct is_integral_sample { static const bool value = false; };
template <> struct is_integral_sample<short> { static const bool value = true; };
template <> struct is_integral_sample<unsigned short> { static const bool value = true; };
template <> struct is_integral_sample<int> { static const bool value = true; };

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

// Bin of one value, or -1 when it falls outside [lo - width/2, lo + (n_bins - 1/2) width).
// NaN sets *saw_nan (the host turns it into a ValueError) and is not counted.
template <typename T>
__device__ __forceinline__ long long bin_of(T v, double lo, double width, long long lo_int,
                                            int integer_fast, int n_bins, int* saw_nan)
{
    if (is_integral_sample<T>::value && integer_fast) {
        long long k = (long long)v - lo_int;
        return (k >= 0 && k < (long long)n_bins) ? k : -1;
    }
    double d = exact_double(v);
    if (d != d) {  // NaN (isnan needs a header under NVRTC; this is the IEEE definition)
        *saw_nan = 1;
        return -1;
    }
    // Division, not multiplication by 1/width: the numpy path divides, and a multiply-add
    // could be contracted into an FMA that rounds differently.
    double kf = floor(__ddiv_rn(d - lo, width) + 0.5);
    // Infinities and far-away values fail this test before the cast, so the cast is safe.
    return (kf >= 0.0 && kf < (double)n_bins) ? (long long)kf : -1;
}

template <typename T>
__device__ __forceinline__ void count_value(T v, double lo, double width, long long lo_int,
                                            int integer_fast, int n_bins, int replicas,
                                            unsigned int* block_sub, u64* counts, int* saw_nan)
{
    long long k = bin_of<T>(v, lo, width, lo_int, integer_fast, n_bins, saw_nan);
    if (k < 0) return;
    if (block_sub != 0) {
        atomicAdd(block_sub + k * replicas, 1u);
    } else {
        atomicAdd(counts + k, 1ull);
    }
}

template <typename T>
__device__ void histogram_impl(const T* __restrict__ values, long long n, double lo,
                               double width, long long lo_int, int integer_fast, int n_bins,
                               int replicas, int vector_loads, u64* __restrict__ counts,
                               int* __restrict__ nan_flag)
{
    extern __shared__ unsigned int shared_counts[];  // replicas * n_bins counters

    if (replicas > 0) {
        for (int i = threadIdx.x; i < replicas * n_bins; i += blockDim.x) shared_counts[i] = 0u;
        __syncthreads();
    }
    // this lane's copy: bin k of it is block_sub[k * replicas] (see the layout above)
    unsigned int* block_sub = replicas > 0 ? shared_counts + (threadIdx.x % 32) % replicas : 0;

    const long long thread = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)blockDim.x * gridDim.x;
    int saw_nan = 0;

    // 16-byte loads: a warp then reads 512 contiguous bytes per step instead of 64 (int16),
    // which is what it takes to approach copy bandwidth. The host sets vector_loads only
    // when the buffer is 16-byte aligned.
    const int per_vector = 16 / (int)sizeof(T);
    long long n_vectors = vector_loads ? n / per_vector : 0;
    for (long long j = thread; j < n_vectors; j += stride) {
        union {
            uint4 raw;
            T v[16 / sizeof(T)];
        } pack;
        pack.raw = __ldg(reinterpret_cast<const uint4*>(values) + j);
#pragma unroll
        for (int e = 0; e < (int)(16 / sizeof(T)); ++e) {
            count_value<T>(pack.v[e], lo, width, lo_int, integer_fast, n_bins, replicas,
                           block_sub, counts, &saw_nan);
        }
    }
    for (long long i = n_vectors * per_vector + thread; i < n; i += stride) {
        count_value<T>(values[i], lo, width, lo_int, integer_fast, n_bins, replicas, block_sub,
                       counts, &saw_nan);
    }

    if (saw_nan) atomicOr(nan_flag, 1);

    if (replicas > 0) {
        __syncthreads();
        for (int b = threadIdx.x; b < n_bins; b += blockDim.x) {
            u64 total = 0;
            for (int r = 0; r < replicas; ++r) total += shared_counts[b * replicas + r];
            if (total) atomicAdd(counts + b, total);
        }
    }
}

#define HISTOGRAM_ENTRY(NAME, T)                                                              \
    extern "C" __global__ void NAME(const T* __restrict__ values, long long n, double lo,     \
                                    double width, long long lo_int, int integer_fast,         \
                                    int n_bins, int replicas, int vector_loads,               \
                                    u64* __restrict__ counts, int* __restrict__ nan_flag)     \
    {                                                                                         \
        histogram_impl<T>(values, n, lo, width, lo_int, integer_fast, n_bins, replicas,       \
                          vector_loads, counts, nan_flag);                                    \
    }

HISTOGRAM_ENTRY(histogram_float32, float)
HISTOGRAM_ENTRY(histogram_float64, double)
HISTOGRAM_ENTRY(histogram_int16, short)
HISTOGRAM_ENTRY(histogram_uint16, unsigned short)
HISTOGRAM_ENTRY(histogram_int32, int)
