"""Apply frozen thresholds to voxels: habitat labels and per-tissue counts and sums.

This is the per-patient, per-voxel half of the method (the cohort fit is
:mod:`kernels.fits`). With a threshold ``t``:

* ``fat_is='low'`` (CT): fat is ``x <= t``, muscle ``x > t``;
* ``fat_is='high'`` (non-fat-suppressed T2 MRI, fat is bright): fat is ``x > t``, muscle
  ``x <= t``.

Labels are 1 = muscle, 2 = fat (the habitat map codes of the contract; 0 and 3 for "outside the
ROI" and "outside the window" are the caller's, who passes only windowed ROI voxels). A NaN
value is neither ``<= t`` nor ``> t``: it gets label 0 and is in no tissue.

Comparisons are made in float64 (the value converted exactly, the threshold as given) on
both backends, so CPU and GPU labels are identical voxel for voxel.

Sums are exact on both backends, then rounded once (issue 25): integer samples in int64, float
samples as integer mantissas added per binary exponent (:func:`exact_sum`), so the tissue sums,
and the means made from them, are the same bits on the CPU and on a GPU of any size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy

from kernels import _cuda
from kernels.xp import array_namespace, is_cupy_namespace

__all__ = ["TissueStats", "classify", "tissue_stats", "exact_sum", "MUSCLE", "FAT"]

MUSCLE = 1
FAT = 2

_FAT_IS = ("low", "high")
_CHUNK = 1 << 18  # host path: float64 temporaries in cache-sized pieces
_MAX_THRESHOLDS_PER_PASS = 4  # MAX_THRESHOLDS in classify.cu (3 methods fit in one pass)
_THREADS = 256


class _ExactLayout:
    """The exact-sum bins of one float dtype (classify.cu: F32_BINS, F64_BINS).

    A finite value is ``m * 2**(k - bias)`` with ``m`` its signed integer mantissa (implicit
    bit included) and ``k`` its biased exponent (1 for subnormals). Bin ``b`` (``< n_exponent``)
    holds a sum of such mantissas, worth ``2**(b - bias)`` each; the last two bins count +inf
    and -inf.
    """

    def __init__(self, mantissa_bits: int, exponent_bits: int, extra_bins: int):
        self.mantissa_bits = mantissa_bits  # stored fraction bits (23, 52)
        self.bias = (1 << (exponent_bits - 1)) - 1 + mantissa_bits  # 150, 1075
        self.max_exponent = (1 << exponent_bits) - 1  # 255, 2047: inf and NaN
        self.n_exponent = (1 << exponent_bits) + extra_bins
        self.n_bins = self.n_exponent + 2


#: float32: 256 exponent bins; float64: the GPU splits the 53-bit mantissa at bit 26 (bins k, k + 26).
_EXACT = {"float32": _ExactLayout(23, 8, 0), "float64": _ExactLayout(52, 11, 26)}
#: float64 mantissas split at this bit on both backends (low half at bin k, high at k + 26).
_F64_SPLIT = 26


@dataclass(frozen=True)
class TissueStats:
    """Voxel counts and intensity sums of the two tissues at one threshold.

    Attributes
    ----------
    threshold : float
        The threshold applied, intensity units.
    fat_is : str
        ``'low'`` or ``'high'``.
    fat_count, muscle_count : int
        Number of voxels in each tissue (NaN voxels are in neither).
    fat_sum, muscle_sum : float
        Sum of the tissue's intensities, intensity units: the exact sum rounded once to
        float64 (an int64 sum for integer samples; :func:`exact_sum` for float samples).
    fat_mean, muscle_mean : float
        ``sum / count``; NaN when the tissue has no voxel.
    """

    threshold: float
    fat_is: str
    fat_count: int
    muscle_count: int
    fat_sum: float
    muscle_sum: float
    fat_mean: float
    muscle_mean: float


def _check_values(values):
    if values.dtype.kind not in "iuf":
        raise TypeError(
            f"values must have a real integer or floating dtype, got dtype={values.dtype}"
        )


def _thresholds_tuple(threshold) -> tuple[tuple[float, ...], bool]:
    """(thresholds, was_scalar); accepts a real number or a 1-D sequence/array of them."""
    values: tuple[float, ...]
    if isinstance(threshold, numbers.Real) and not isinstance(threshold, bool):
        values, scalar = (float(threshold),), True
    else:
        if hasattr(threshold, "tolist"):  # numpy or cupy array; cupy: device sync (m floats)
            threshold = threshold.tolist()
        if not isinstance(threshold, (list, tuple)) or not threshold or not all(
            isinstance(t, numbers.Real) and not isinstance(t, bool) for t in threshold
        ):
            raise TypeError(
                f"threshold must be a real number or a non-empty 1-D sequence of them, got "
                f"{threshold!r}"
            )
        values, scalar = tuple(float(t) for t in threshold), False
    bad = [t for t in values if not math.isfinite(t)]
    if bad:
        raise ValueError(f"threshold must be finite, got {bad[0]!r}")
    return values, scalar


def _check_fat_is(fat_is: str) -> bool:
    if fat_is not in _FAT_IS:
        raise ValueError(f"fat_is must be 'low' or 'high', got {fat_is!r}")
    return fat_is == "high"


def classify(values, threshold, *, fat_is: str = "low"):
    """Label each voxel muscle (1) or fat (2) by a threshold.

    Parameters
    ----------
    values : ndarray (numpy or cupy), any shape, integer or floating dtype
        Windowed ROI intensities (HU for CT).
    threshold : float or (m,) sequence of float
        Frozen cohort threshold(s), intensity units. Several thresholds (e.g. Otsu, K-means
        and GMM) are applied in one read of ``values`` (on the GPU, up to 4 per read).
    fat_is : {'low', 'high'}, keyword-only
        ``'low'``: fat is ``x <= t`` (CT). ``'high'``: fat is ``x > t`` (T2 MRI).

    Returns
    -------
    labels : uint8 ndarray of the input's backend
        Shape ``values.shape`` for a scalar threshold, ``(m, *values.shape)`` for ``m``
        thresholds. 1 = muscle, 2 = fat, 0 = NaN value.

    Raises
    ------
    TypeError
        Non-array values, a non-real dtype, or a threshold that is not a number.
    ValueError
        Non-finite threshold or unknown ``fat_is``.
    """
    thresholds, scalar = _thresholds_tuple(threshold)
    labels, _, _ = _run(values, thresholds, fat_is, want_labels=True, want_stats=False)
    shape = values.shape if scalar else (len(thresholds), *values.shape)
    return labels.reshape(shape)


def tissue_stats(values, threshold, *, fat_is: str = "low"):
    """Fat and muscle voxel counts, intensity sums and means, in one pass over the voxels.

    Parameters
    ----------
    values : ndarray (numpy or cupy), any shape, integer or floating dtype
        Windowed ROI intensities (HU for CT).
    threshold : float or (m,) sequence of float
        Frozen cohort threshold(s), intensity units.
    fat_is : {'low', 'high'}, keyword-only
        ``'low'``: fat is ``x <= t`` (CT). ``'high'``: fat is ``x > t`` (T2 MRI).

    Returns
    -------
    TissueStats or tuple of TissueStats
        One per threshold (a tuple when ``threshold`` is a sequence). Counts are exact. Sums
        are exact and rounded once to float64 (int64 sums for integer samples, :func:`exact_sum`
        for float samples), so they are identical on both backends, for any grid size.
        Volumes and percentages are the caller's (count x voxel volume).

    Raises
    ------
    TypeError, ValueError
        As :func:`classify`.

    Notes
    -----
    On CuPy the counts and sums come back to the host (one device sync).
    """
    thresholds, scalar = _thresholds_tuple(threshold)
    _, counts, sums = _run(values, thresholds, fat_is, want_labels=False, want_stats=True)
    stats = tuple(
        _tissue_stats(t, fat_is, counts[j], sums[j]) for j, t in enumerate(thresholds)
    )
    return stats[0] if scalar else stats


def _run(values, thresholds, fat_is, *, want_labels: bool, want_stats: bool):
    """Check the inputs and run the one-pass classification on the input's backend."""
    xp = array_namespace(values)
    _check_values(values)
    fat_is_high = _check_fat_is(fat_is)
    backend = _run_cupy if is_cupy_namespace(xp) else _run_numpy
    return backend(values, thresholds, fat_is_high, want_labels=want_labels, want_stats=want_stats)


def _tissue_stats(threshold, fat_is, counts, sums) -> TissueStats:
    fat_count, muscle_count = int(counts[0]), int(counts[1])
    fat_sum, muscle_sum = float(sums[0]), float(sums[1])
    return TissueStats(
        threshold=threshold,
        fat_is=fat_is,
        fat_count=fat_count,
        muscle_count=muscle_count,
        fat_sum=fat_sum,
        muscle_sum=muscle_sum,
        fat_mean=fat_sum / fat_count if fat_count else math.nan,
        muscle_mean=muscle_sum / muscle_count if muscle_count else math.nan,
    )


# --------------------------------------------------------------------------------------- numpy


def _run_numpy(values, thresholds, fat_is_high, *, want_labels, want_stats):
    flat = values.reshape(-1)
    n, m = flat.size, len(thresholds)
    labels = numpy.empty((m, n), dtype=numpy.uint8) if want_labels else None
    counts = numpy.zeros((m, 2), dtype=numpy.int64)
    integral = flat.dtype.kind in "iu"
    if not integral and flat.dtype.name not in _EXACT:
        flat = flat.astype(numpy.float32)  # float16: exact in float32
    layout = None if integral else _EXACT[flat.dtype.name]
    # Integer samples are summed in int64 (exact, any order); floats per exponent (exact_sum),
    # into the GPU's bin layout.
    sums = numpy.zeros((m, 2), dtype=numpy.int64) if integral else None
    bins = numpy.zeros((m, 2, layout.n_bins), dtype=numpy.int64) if layout and want_stats else None
    for start in range(0, n, _CHUNK):
        chunk = flat[start:start + _CHUNK].astype(numpy.float64)  # exact for every dtype
        addends = flat[start:start + _CHUNK].astype(numpy.int64) if integral else None
        pieces = _exact_pieces(flat[start:start + _CHUNK], layout) if bins is not None else None
        for j, t in enumerate(thresholds):
            low = chunk <= t
            high = chunk > t  # not ~low: NaN is in neither class
            fat, muscle = (high, low) if fat_is_high else (low, high)
            if want_labels:
                # 2 * fat + muscle: fat -> 2, muscle -> 1, NaN -> 0 (never both)
                out = labels[j, start:start + chunk.size]
                out[...] = fat
                out <<= 1
                out |= muscle
            if want_stats:
                counts[j, 0] += numpy.count_nonzero(fat)
                counts[j, 1] += numpy.count_nonzero(muscle)
                if integral:
                    sums[j, 0] += numpy.sum(addends, where=fat)
                    sums[j, 1] += numpy.sum(addends, where=muscle)
                else:
                    _add_pieces(bins[j], pieces, fat, muscle, layout)
    if bins is not None:
        sums = numpy.array([[exact_sum(bins[j, k], flat.dtype) for k in range(2)] for j in range(m)],
                           dtype=numpy.float64).reshape(m, 2)
    return labels, counts, sums


def _exact_pieces(values, layout: _ExactLayout):
    """The exact pieces of float values (numpy), as classify.cu's ``exact_pieces`` makes them.

    Returns ``(pieces, positive_inf, negative_inf)``: ``pieces`` is a list of (bin index, signed
    mantissa piece as float64) pairs, one for float32 (24 bits), two for float64 (26 + 27 bits).
    A chunk holds at most ``_CHUNK`` = 2**18 values, so a bincount of pieces below 2**27 stays
    below 2**45: an exact integer in float64.
    """
    float64 = values.dtype == numpy.float64
    bits = values.view(numpy.uint64 if float64 else numpy.uint32).astype(numpy.uint64)
    exponent = ((bits >> numpy.uint64(layout.mantissa_bits)) & numpy.uint64(layout.max_exponent)).astype(numpy.int64)
    negative = (bits >> numpy.uint64(values.dtype.itemsize * 8 - 1)).astype(bool)
    mantissa = (bits & numpy.uint64((1 << layout.mantissa_bits) - 1)) | (
        (exponent > 0).astype(numpy.uint64) << numpy.uint64(layout.mantissa_bits))
    infinite = exponent == layout.max_exponent  # NaN never reaches a tissue
    mantissa[infinite] = 0  # counted apart
    index = numpy.maximum(exponent, 1)
    sign = numpy.where(negative, -1.0, 1.0)
    if float64:
        low = (mantissa & numpy.uint64((1 << _F64_SPLIT) - 1)).astype(numpy.float64) * sign
        high = (mantissa >> numpy.uint64(_F64_SPLIT)).astype(numpy.float64) * sign
        pieces = [(index, low), (index + _F64_SPLIT, high)]
    else:
        pieces = [(index, mantissa.astype(numpy.float64) * sign)]
    return pieces, (infinite & ~negative) if infinite.any() else None, infinite & negative


def _add_pieces(bins, pieces, fat, muscle, layout: _ExactLayout) -> None:
    """Add the chunk's mantissas into ``bins`` ((2, n_bins) int64: fat, muscle) per exponent."""
    parts, positive_inf, negative_inf = pieces
    n = layout.n_exponent
    tissue_code = fat.astype(numpy.int64) + 2 * muscle  # 0 neither (NaN), 1 fat, 2 muscle
    for index, piece in parts:
        totals = numpy.bincount(index + n * tissue_code, weights=piece, minlength=3 * n)
        bins[:, :n] += totals[n:].reshape(2, n).astype(numpy.int64)  # exact integers (see above)
    if positive_inf is not None:
        for k, tissue in enumerate((fat, muscle)):
            bins[k, -2] += numpy.count_nonzero(positive_inf & tissue)
            bins[k, -1] += numpy.count_nonzero(negative_inf & tissue)


def exact_sum(bins, dtype) -> float:
    """The exact sum of float values from their per-exponent mantissa sums, rounded once.

    Parameters
    ----------
    bins : (n_bins,) sequence of int
        For ``float32``: 256 exponent bins then the +inf and -inf counts (258); for
        ``float64``: 2,074 exponent bins then the two counts (classify.cu's layout). Bin ``b``
        holds a sum of signed integer mantissas each worth ``2**(b - 150)`` (float32) or
        ``2**(b - 1075)`` (float64).
    dtype : numpy dtype or str
        ``float32`` or ``float64``: the dtype the values had.

    Returns
    -------
    float
        ``sum(bins[b] * 2**(b - bias))`` rounded to nearest float64 once (Python's int / int
        division is correctly rounded, subnormals included); ``inf``, ``-inf`` or NaN (both
        infinities) where the values held infinities, as numpy's sum gives.
    """
    layout = _EXACT[numpy.dtype(dtype).name]
    values = [int(v) for v in bins]
    positive_inf, negative_inf = values[-2], values[-1]
    if positive_inf or negative_inf:
        return math.nan if positive_inf and negative_inf else (math.inf if positive_inf else -math.inf)
    # sum(m_b * 2**(b - bias)) = sum(m_b << (b - 1)) / 2**(bias - 1): bin 0 is never used
    total = sum(v << (b - 1) for b, v in enumerate(values[:layout.n_exponent]) if v)
    try:
        return total / (1 << (layout.bias - 1))
    except OverflowError:
        return math.inf if total > 0 else -math.inf


# ---------------------------------------------------------------------------------------- cupy


def _run_cupy(values, thresholds, fat_is_high, *, want_labels, want_stats):
    import cupy  # lazy: CuPy, GPU runs only

    flat = cupy.ascontiguousarray(_cuda.as_kernel_dtype(values.reshape(-1)))
    n, m = flat.size, len(thresholds)
    kernel = _cuda.raw_module("classify.cu").get_function(f"classify_{flat.dtype.name}")

    labels = cupy.empty((m, n), dtype=cupy.uint8) if want_labels else cupy.empty((1, 1), cupy.uint8)
    blocks = max(1, min(8 * _cuda.multiprocessor_count(), -(-n // _THREADS)))
    counts = cupy.zeros((m, 2), dtype=cupy.uint64)
    int_sums = cupy.zeros((m, 2), dtype=cupy.int64)  # integer samples: exact int64 sums
    layout = _EXACT.get(flat.dtype.name) if want_stats else None
    # float samples: int64 mantissa sums per exponent (exact, order-independent)
    exact_bins = cupy.zeros((m, 2, layout.n_bins) if layout else (1, 1, 1), dtype=cupy.int64)
    thresholds_device = cupy.asarray(thresholds, dtype=cupy.float64)
    if n:
        for first in range(0, m, _MAX_THRESHOLDS_PER_PASS):
            group = slice(first, min(first + _MAX_THRESHOLDS_PER_PASS, m))
            n_group = group.stop - group.start
            kernel(
                (blocks,), (_THREADS,),
                (flat, numpy.int64(n), thresholds_device[group], numpy.int32(n_group),
                 numpy.int32(fat_is_high), numpy.int32(want_labels),
                 labels[group] if want_labels else labels, numpy.int32(want_stats),
                 counts[group], int_sums[group], exact_bins[group] if layout else exact_bins),
            )
    if not want_stats:
        return labels, None, None
    # tiny arrays; the caller wants Python numbers (device sync)
    if flat.dtype.kind in "iu":
        return labels, counts.get(), int_sums.get()
    bins = exact_bins.get()
    sums = numpy.array([[exact_sum(bins[j, k], flat.dtype) for k in range(2)] for j in range(m)],
                       dtype=numpy.float64).reshape(m, 2)
    return labels, counts.get(), sums
