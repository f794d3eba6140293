"""Exact histograms on an explicit grid: the partial statistic of every cohort fit.

A pooled histogram is the sum of per-patient histograms (int64, so the sum is exact), and
every threshold fit (:mod:`kernels.fits`) finalises on it. The grid is always explicit
(``lo``, ``hi``, ``bin_width``), as in dask's ``histogram`` and scikit-image's
``threshold_otsu(hist=...)``, so partial histograms computed anywhere line up bin for bin.

Bins are *centred* on ``lo + k * bin_width``: a value ``v`` goes to bin
``k = floor((v - lo) / bin_width + 0.5)``. Integer HU data with ``bin_width=1`` and an integral
``lo`` therefore land on their own value, and a fit on the histogram equals the fit on the raw
voxels.
"""

from __future__ import annotations

import math
import numbers
from types import ModuleType

import numpy

from kernels import _cuda
from kernels.xp import array_namespace, is_cupy_namespace

__all__ = ["histogram", "bin_centers", "n_bins_for", "MAX_BINS"]

#: Refuse grids larger than this (2**24 bins = 128 MiB of int64 counts): a window given in the
#: wrong unit (e.g. [0, 1e9]) should fail loudly, not allocate gigabytes.
MAX_BINS = 1 << 24

# Host path: values are binned in chunks so the float64/intp temporaries stay in cache-sized
# pieces instead of costing 8 bytes per voxel of the whole volume (measured: 2**18 values per
# chunk for the float rule, 2**20 for the 8/16-bit bincount are the fastest on a 2-core x86).
_CHUNK = 1 << 18
_SMALL_INT_CHUNK = 1 << 20

_FLOAT_KINDS = "f"
_INT_KINDS = "iu"


def _check_scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def n_bins_for(lo: float, hi: float, bin_width: float = 1.0) -> int:
    """Number of bins of the grid ``lo + k * bin_width`` that reaches ``hi``.

    Parameters
    ----------
    lo, hi : float
        Centres of the first and (nominal) last bin, intensity units (HU for CT).
    bin_width : float, optional
        Bin width in intensity units, > 0.

    Returns
    -------
    int
        ``round((hi - lo) / bin_width) + 1``.

    Raises
    ------
    ValueError
        If a bound is not finite, ``hi < lo``, ``bin_width <= 0``, or the grid would have more
        than :data:`MAX_BINS` bins.
    """
    lo = _check_scalar("lo", lo)
    hi = _check_scalar("hi", hi)
    bin_width = _check_scalar("bin_width", bin_width)
    if bin_width <= 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width!r}")
    if hi < lo:
        raise ValueError(f"hi must be >= lo, got lo={lo!r}, hi={hi!r}")
    n_bins = int(round((hi - lo) / bin_width)) + 1
    if n_bins > MAX_BINS:
        raise ValueError(
            f"the grid lo={lo!r}, hi={hi!r}, bin_width={bin_width!r} has {n_bins} bins "
            f"(> {MAX_BINS}); widen bin_width or narrow the window"
        )
    return n_bins


def bin_centers(lo: float, hi: float, bin_width: float = 1.0, xp: ModuleType = numpy):
    """Centres of the histogram bins, ``lo + k * bin_width`` for ``k = 0 .. n_bins - 1``.

    Parameters
    ----------
    lo, hi : float
        Centre of the first bin and nominal centre of the last one, intensity units.
    bin_width : float, optional
        Bin width, intensity units (default 1).
    xp : module, optional
        ``numpy`` (default) or ``cupy``: where the centres are created.

    Returns
    -------
    centers : (n_bins,) float64 array of ``xp``
        With ``n_bins = round((hi - lo) / bin_width) + 1`` (:func:`n_bins_for`).
    """
    n_bins = n_bins_for(lo, hi, bin_width)
    return xp.arange(n_bins, dtype=xp.float64) * float(bin_width) + float(lo)


def _is_integral(x: float) -> bool:
    return float(x).is_integer() and abs(x) < 2**53


def _check_values(values) -> None:
    dtype = values.dtype
    if dtype.kind not in _FLOAT_KINDS + _INT_KINDS:
        raise TypeError(
            f"values must have a real integer or floating dtype, got dtype={dtype}"
        )


def histogram(values, *, lo: float, hi: float, bin_width: float = 1.0):
    """Counts of ``values`` in bins centred on ``lo + k * bin_width``.

    Parameters
    ----------
    values : ndarray (numpy or cupy), any shape, integer or floating dtype
        Intensities (HU for CT, scanner units for MRI). Flattened. Bool and complex are
        refused.
    lo, hi : float, keyword-only
        Centre of the first bin and nominal centre of the last bin, intensity units.
    bin_width : float, keyword-only, optional
        Bin width in intensity units (default 1, the contract's default).

    Returns
    -------
    counts : (n_bins,) int64 ndarray of the input's backend
        ``n_bins = round((hi - lo) / bin_width) + 1``; ``counts[k]`` is the number of values
        with ``floor((v - lo) / bin_width + 0.5) == k``, computed in float64. Histograms on
        the same grid add exactly (the pooled histogram of a cohort is their sum).

    Raises
    ------
    TypeError
        If ``values`` is not a numpy/cupy array of a real dtype, or a bound is not a number.
    ValueError
        If ``values`` contains NaN, or the grid is invalid (see :func:`n_bins_for`).

    Notes
    -----
    Values outside ``[lo - bin_width/2, lo + (n_bins - 1/2) * bin_width)`` are *not counted*
    (no clipping into the edge bins): the caller applies the intensity window first and
    counts the excluded voxels itself. ``+-inf`` are therefore silently out of range; NaN is
    an error because it means a broken upstream step, not an out-of-window voxel.

    On CuPy the counting is a CUDA kernel (``histogram.cu``): per-block shared-memory
    sub-histograms added atomically into 64-bit global counters (opting in to the device's
    larger shared memory for grids over 12,288 bins), or global atomics when the grid does not
    fit even there (over 58,112 bins on sm_90). The bin rule is evaluated in float64 on both
    backends, so CPU and GPU counts are identical. The NaN check costs one device sync.

    Examples
    --------
    >>> import numpy as np
    >>> histogram(np.array([-1, 0, 0, 2, 7]), lo=-1, hi=2).tolist()
    [1, 2, 0, 1]
    """
    xp = array_namespace(values)
    n_bins = n_bins_for(lo, hi, bin_width)
    _check_values(values)
    lo, bin_width = float(lo), float(bin_width)
    if is_cupy_namespace(xp):
        return _histogram_cupy(values, lo, bin_width, n_bins)
    return _histogram_numpy(values, lo, bin_width, n_bins)


# --------------------------------------------------------------------------------------- numpy


def _histogram_numpy(values: numpy.ndarray, lo: float, width: float, n_bins: int):
    flat = values.reshape(-1)
    counts = numpy.zeros(n_bins, dtype=numpy.int64)
    kind, itemsize = flat.dtype.kind, flat.dtype.itemsize
    integer_fast = kind in _INT_KINDS and width == 1.0 and _is_integral(lo)

    if integer_fast and itemsize <= 2:
        # 8/16-bit integers: count every possible value (65536 bins at most) without any
        # masking, then read out the window. One pass, no temporaries beyond bincount's.
        _histogram_small_int(flat, int(lo), n_bins, counts)
        return counts

    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        if integer_fast:
            # k = v - lo exactly (the float rule gives the same for |v| < 2**53).
            index = chunk.astype(numpy.int64)
            index -= int(lo)
            index = index[(index >= 0) & (index < n_bins)]
        else:
            bin_float = chunk.astype(numpy.float64)  # exact for every supported dtype
            bin_float -= lo
            bin_float /= width  # divide (not multiply by 1/width): the CUDA kernel divides too
            bin_float += 0.5
            numpy.floor(bin_float, out=bin_float)
            if kind in _FLOAT_KINDS and numpy.isnan(bin_float).any():
                raise ValueError(
                    "values contain NaN; NaN voxels must be removed (or the upstream "
                    "resampling fixed) before the histogram"
                )
            in_range = (bin_float >= 0) & (bin_float < n_bins)
            index = bin_float[in_range].astype(numpy.intp)
        counts += numpy.bincount(index, minlength=n_bins)
    return counts


def _histogram_small_int(flat: numpy.ndarray, lo_int: int, n_bins: int,
                         counts: numpy.ndarray) -> None:
    bits = 8 * flat.dtype.itemsize
    unsigned = flat.view(numpy.dtype(f"u{flat.dtype.itemsize}"))
    full = numpy.zeros(1 << bits, dtype=numpy.int64)
    for start in range(0, unsigned.size, _SMALL_INT_CHUNK):
        full += numpy.bincount(unsigned[start:start + _SMALL_INT_CHUNK], minlength=1 << bits)
    if flat.dtype.kind == "i":
        # Two's complement: unsigned codes [2**(b-1), 2**b) are the negative values.
        full = numpy.concatenate([full[1 << (bits - 1):], full[:1 << (bits - 1)]])
        value_min = -(1 << (bits - 1))
    else:
        value_min = 0
    value_max = value_min + (1 << bits) - 1
    # bins k <-> values lo + k; copy the overlap of [lo, lo + n_bins) with the dtype's range.
    first_value = max(lo_int, value_min)
    last_value = min(lo_int + n_bins - 1, value_max)
    if first_value <= last_value:
        counts[first_value - lo_int:last_value - lo_int + 1] = \
            full[first_value - value_min:last_value - value_min + 1]


# ---------------------------------------------------------------------------------------- cupy

_THREADS = 256
#: At most this many sub-histograms per block: one per lane of a warp (the device check sweeps 8-32).
MAX_REPLICAS = 32
_MAX_VALUES_PER_BLOCK = (1 << 32) - 1  # 32-bit shared counters must not wrap


def shared_memory_plan(n_bins: int, default_bytes: int, optin_bytes: int) -> tuple[int, int]:
    """(sub-histograms per block, dynamic shared bytes) of the CUDA histogram of ``n_bins``.

    As many interleaved 32-bit sub-histograms as fit in the default shared memory (which keeps
    several blocks per SM), a power of two up to one per lane of a warp (32: a CT window), so
    that the lanes of a warp counting the same hot bin hit distinct addresses and banks; a single
    one in opted-in shared memory when one does not fit in the default but fits after opting in
    (large MRI grids); ``(0, 0)`` (global atomics) beyond that.
    """
    per_histogram = 4 * n_bins
    fit = min(MAX_REPLICAS, default_bytes // per_histogram)
    replicas = 1 << (fit.bit_length() - 1) if fit else 0   # the largest power of two that fits
    if replicas == 0 and per_histogram <= optin_bytes:
        replicas = 1
    return replicas, per_histogram * replicas


def _histogram_cupy(values, lo: float, width: float, n_bins: int):
    import cupy  # lazy: CuPy, GPU runs only

    flat = values.reshape(-1)
    flat = cupy.ascontiguousarray(_cuda.as_kernel_dtype(flat))
    name = flat.dtype.name
    counts = cupy.zeros(n_bins, dtype=cupy.uint64)
    nan_flag = cupy.zeros(1, dtype=cupy.int32)
    n = flat.size
    if n == 0:
        return counts.astype(cupy.int64)

    kernel = _cuda.raw_module("histogram.cu").get_function(f"histogram_{name}")
    replicas, shared_bytes = shared_memory_plan(
        n_bins, _cuda.shared_memory_per_block(), _cuda.shared_memory_per_block_optin())
    if shared_bytes > _cuda.shared_memory_per_block():
        _cuda.opt_in_shared_memory(kernel, shared_bytes)
    blocks = max(8 * _cuda.multiprocessor_count(), -(-n // _MAX_VALUES_PER_BLOCK))
    blocks = min(blocks, max(1, -(-n // _THREADS)))  # no more blocks than values need
    vector_loads = int(flat.data.ptr % 16 == 0)
    integer_fast = int(flat.dtype.kind in _INT_KINDS and width == 1.0 and _is_integral(lo))
    lo_int = int(lo) if integer_fast else 0

    kernel(
        (blocks,), (_THREADS,),
        (flat, numpy.int64(n), numpy.float64(lo), numpy.float64(width), numpy.int64(lo_int),
         numpy.int32(integer_fast), numpy.int32(n_bins), numpy.int32(replicas),
         numpy.int32(vector_loads), counts, nan_flag),
        shared_mem=shared_bytes,
    )
    if flat.dtype.kind in _FLOAT_KINDS and int(nan_flag[0]):  # device sync
        raise ValueError(
            "values contain NaN; NaN voxels must be removed (or the upstream resampling "
            "fixed) before the histogram"
        )
    # Counts never reach 2**63, so the reinterpretation is exact and free.
    return counts.view(cupy.int64)
