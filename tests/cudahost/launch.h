// Host launcher for the kernels of one .cu file (included after it by build.py).
//
// cudahost_launch(kernel, grid, block, shared_bytes, args): `args` is CUDA's kernelParams
// convention (one pointer per parameter, pointing at the argument's value). One OS thread per
// CUDA thread of a block; the blocks run one after the other on those threads.
#pragma once

#include <utility>
#include <type_traits>

namespace cudahost {

struct DynamicShared {
    unsigned char* base;
    size_t size;
};
// Filled in by the generated code: the storage behind each `extern __shared__` array.
extern DynamicShared dynamic_shared[];
extern int n_dynamic_shared;

struct Launch {
    dim3 grid, block;
    size_t shared_bytes;
    unsigned long long garbage_seed;
    void (*body)(void* const*, void*);
    void* kernel;
    void* const* args;
};

inline void fill_garbage(unsigned long long seed, size_t bytes)
{
    for (int r = 0; r < n_dynamic_shared; ++r) {
        unsigned long long x = seed * 0x9E3779B97F4A7C15ull + 1 + r;
        size_t n = bytes < dynamic_shared[r].size ? bytes : dynamic_shared[r].size;
        for (size_t i = 0; i < n; ++i) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            dynamic_shared[r].base[i] = (unsigned char)(x >> 24);
        }
    }
}

inline void* thread_main(void* raw)
{
    auto* pair = static_cast<std::pair<const Launch*, unsigned int>*>(raw);
    const Launch& L = *pair->first;
    const unsigned int t = pair->second;
    threadIdx = {t % L.block.x, (t / L.block.x) % L.block.y, t / (L.block.x * L.block.y)};
    for (unsigned int bz = 0; bz < L.grid.z; ++bz)
        for (unsigned int by = 0; by < L.grid.y; ++by)
            for (unsigned int bx = 0; bx < L.grid.x; ++bx) {
                blockIdx = {bx, by, bz};
                if (t == 0) {
                    fill_garbage(L.garbage_seed + bx + 65536ull * (by + 65536ull * bz),
                                 L.shared_bytes);
                }
                pthread_barrier_wait(&block->barrier);
                L.body(L.args, L.kernel);
                pthread_barrier_wait(&block->barrier);  // the block ends for every thread
            }
    return nullptr;
}

inline int run(const Launch& L)
{
    const unsigned long long n = (unsigned long long)L.block.x * L.block.y * L.block.z;
    if (n == 0 || n > (unsigned)kMaxThreads || L.grid.x == 0 || L.grid.y == 0 || L.grid.z == 0)
        return 1;
    for (int r = 0; r < n_dynamic_shared; ++r)
        if (L.shared_bytes > dynamic_shared[r].size) return 2;
    static Block storage;
    block = &storage;
    pthread_barrier_init(&block->barrier, nullptr, (unsigned)n);
    blockDim = L.block;  // set before the threads start: they only read them
    gridDim = L.grid;
    const unsigned n_warps = (unsigned)((n + kWarp - 1) / kWarp);
    for (unsigned w = 0; w < n_warps; ++w)
        pthread_barrier_init(&block->warp_barrier[w], nullptr, warp_size_of(w));
    pthread_t threads[kMaxThreads];
    std::pair<const Launch*, unsigned int> ids[kMaxThreads];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = 0;
    unsigned started = 0;
    for (unsigned t = 0; t < n; ++t) {
        ids[t] = {&L, t};
        if (pthread_create(&threads[t], &attr, thread_main, &ids[t]) != 0) { rc = 3; break; }
        ++started;
    }
    if (rc) fail("pthread_create failed (a block's threads must all run: the barrier would hang)");
    for (unsigned t = 0; t < started; ++t) pthread_join(threads[t], nullptr);
    pthread_attr_destroy(&attr);
    pthread_barrier_destroy(&block->barrier);
    for (unsigned w = 0; w < n_warps; ++w) pthread_barrier_destroy(&block->warp_barrier[w]);
    return rc;
}

template <typename... A, size_t... I>
inline void call(void (*k)(A...), void* const* args, std::index_sequence<I...>)
{
    k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <typename... A>
inline void body(void* const* args, void* kernel)
{
    call(reinterpret_cast<void (*)(A...)>(kernel), args, std::index_sequence_for<A...>{});
}

template <typename P> inline char kind_of()
{
    if (std::is_pointer<P>::value) return 'p';
    if (std::is_floating_point<P>::value) return 'f';
    if (std::is_integral<P>::value) return std::is_signed<P>::value ? 'i' : 'u';
    return '?';
}
template <typename P> inline size_t size_of()
{
    if constexpr (std::is_pointer<P>::value) {
        using Pointee = std::remove_cv_t<std::remove_pointer_t<P>>;
        if constexpr (std::is_void<Pointee>::value) return 0;
        else return sizeof(Pointee);
    } else {
        return sizeof(P);
    }
}

// Parameter signature: n params; for each, kind ('p' pointer, 'i'/'u' integer, 'f' float)
// and size (the pointee's size for a pointer).
template <typename... A>
inline int signature(void (*)(A...), char* kinds, unsigned long long* sizes, int cap)
{
    const char k[] = {kind_of<A>()..., 0};
    const unsigned long long s[] = {size_of<A>()..., 0};
    const int n = (int)sizeof...(A);
    for (int i = 0; i < n && i < cap; ++i) { kinds[i] = k[i]; sizes[i] = s[i]; }
    return n;
}

template <typename... A>
inline int launch(void (*k)(A...), const unsigned int* grid, const unsigned int* blk,
                  unsigned long long shared_bytes, unsigned long long seed, void* const* args)
{
    Launch L;
    L.grid = {grid[0], grid[1], grid[2]};
    L.block = {blk[0], blk[1], blk[2]};
    L.shared_bytes = shared_bytes;
    L.garbage_seed = seed;
    L.body = &body<A...>;
    L.kernel = reinterpret_cast<void*>(k);
    L.args = args;
    return run(L);
}

}  // namespace cudahost

#define CUDAHOST_ENTRY(NAME)                                                                 \
    extern "C" int cudahost_launch_##NAME(const unsigned int* grid, const unsigned int* blk, \
                                          unsigned long long shared_bytes,                  \
                                          unsigned long long seed, void* const* args)       \
    {                                                                                        \
        return cudahost::launch(&NAME, grid, blk, shared_bytes, seed, args);                 \
    }                                                                                        \
    extern "C" int cudahost_signature_##NAME(char* kinds, unsigned long long* sizes, int cap) \
    {                                                                                        \
        return cudahost::signature(&NAME, kinds, sizes, cap);                                \
    }
