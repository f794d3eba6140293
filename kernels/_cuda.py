"""Loading the ``.cu`` kernels of this package into CuPy (GPU path only).

Nothing here runs on a CPU-only install: cupy is imported inside the functions, which are
called only once a cupy array has reached a kernel.
"""

from __future__ import annotations

import functools
import importlib.resources

# NVRTC options: C++17 for ``if constexpr``; no fast-math, so that double division and floor
# round exactly as numpy does and GPU bins equal CPU bins; no FMA contraction (--fmad=false):
# a fused a * b + c rounds once where numpy rounds twice, so a contracted expression could
# put a value in another bin than the CPU does (the tests check the PTX has no ``fma.``).
_NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")


#: dtypes with a dedicated entry point (``<kernel>_<dtype>``) in every ``.cu`` of this package.
KERNEL_DTYPES = ("float32", "float64", "int16", "uint16", "int32")

#: Lossless casts for the other real dtypes (int64/uint32/uint64 are exact in float64 up to
#: 2**53, far beyond any image intensity).
KERNEL_CASTS = {
    "int8": "int16",
    "uint8": "int16",
    "float16": "float32",
    "uint32": "float64",
    "int64": "float64",
    "uint64": "float64",
}


def as_kernel_dtype(array):
    """Return ``array`` cast (losslessly) to a dtype that the ``.cu`` kernels handle."""
    name = array.dtype.name
    if name in KERNEL_CASTS:
        return array.astype(KERNEL_CASTS[name])
    if name not in KERNEL_DTYPES:
        raise TypeError(f"no CUDA kernel for dtype={array.dtype}")
    return array


@functools.cache
def cuda_source(filename: str) -> str:
    """Return the text of ``kernels/<filename>`` (a package resource, shipped as package data)."""
    return importlib.resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")


@functools.cache
def raw_module(filename: str):
    """Return a ``cupy.RawModule`` compiled from ``kernels/<filename>`` with NVRTC (cached)."""
    import cupy  # lazy: CuPy, GPU runs only

    return cupy.RawModule(code=cuda_source(filename), options=_NVRTC_OPTIONS)


@functools.cache
def _device_attributes(device_id: int) -> tuple[int, int, int]:
    import cupy  # lazy: CuPy, GPU runs only

    attributes = cupy.cuda.Device(device_id).attributes
    default = int(attributes["MaxSharedMemoryPerBlock"])
    return (int(attributes["MultiProcessorCount"]), default,
            int(attributes.get("MaxSharedMemoryPerBlockOptin", default)))


def multiprocessor_count() -> int:
    """Number of SMs of the current CUDA device."""
    import cupy  # lazy: CuPy, GPU runs only

    return _device_attributes(cupy.cuda.Device().id)[0]


def shared_memory_per_block() -> int:
    """Shared memory a block may use without opting in (bytes, 48 KiB on current GPUs)."""
    import cupy  # lazy: CuPy, GPU runs only

    return _device_attributes(cupy.cuda.Device().id)[1]


def shared_memory_per_block_optin() -> int:
    """Shared memory a block may use after opting in (bytes, 227 KiB on sm_90)."""
    import cupy  # lazy: CuPy, GPU runs only

    return _device_attributes(cupy.cuda.Device().id)[2]


def opt_in_shared_memory(kernel, nbytes: int) -> None:
    """Let ``kernel`` launch with ``nbytes`` of dynamic shared memory (above the default 48 KiB).

    CUDA refuses such a launch unless the function's MAX_DYNAMIC_SHARED_SIZE_BYTES attribute
    was raised first (cudaFuncSetAttribute); CuPy exposes it as a settable attribute.
    """
    if int(kernel.max_dynamic_shared_size_bytes) < nbytes:
        kernel.max_dynamic_shared_size_bytes = int(nbytes)
