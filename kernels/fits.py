"""Cohort-level two-class threshold fits on a pooled histogram: Otsu, K-means, GMM.

Every fit finalises on ``(counts, centers)``, the pooled histogram of the training voxels
(:func:`kernels.histogram.histogram`), never on the voxels themselves. With integer HU and
``bin_width=1`` the weighted bins *are* the voxels, so the fits equal their raw-voxel
references (scikit-image ``threshold_otsu``, scikit-learn ``KMeans`` and ``GaussianMixture``);
with coarser bins they agree to within one bin width.

K-means and EM are written once against the array namespace ``xp`` of the histogram (numpy
or cupy): a few thousand bins, so plain array operations are enough and no dedicated kernel is
needed. Each of their iterations reads one scalar back to test convergence (a device sync on
CuPy). Otsu alone always reduces on the host, because scikit-image's definition accumulates
float32 counts sequentially and only numpy's ``cumsum`` reproduces that bit for bit (see
:func:`otsu_threshold`). The results are frozen dataclasses of plain Python floats, ints and
tuples, so ``dataclasses.asdict(result)`` is JSON-serialisable.

The low class of every fit is ``x <= threshold``, as in scikit-image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy

from kernels.histogram import bin_centers, histogram
from kernels.xp import array_namespace

__all__ = [
    "OtsuResult",
    "KMeansResult",
    "GMMResult",
    "FIT_METHODS",
    "otsu_threshold",
    "kmeans_threshold",
    "gmm_threshold",
    "fit_threshold",
]

# scikit-learn adds 10 * eps to every component's weight so that an empty component never
# divides by zero; reproduced so EM follows the same path as GaussianMixture.
_EPS10 = 10 * numpy.finfo(numpy.float64).eps
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class OtsuResult:
    """Otsu's threshold on a histogram.

    Attributes
    ----------
    threshold : float
        The bin centre ``t`` maximising the between-class variance; low class ``x <= t``.
    between_class_variance : float
        ``P_low * P_high * (mean_low - mean_high)**2`` at ``t``, intensity units squared.
    class_means : (float, float)
        Mean intensity of the low (``x <= t``) and high class.
    class_fractions : (float, float)
        Fraction of the total count in the low and high class.
    method : str
        ``"otsu"``.
    """

    threshold: float
    between_class_variance: float
    class_means: tuple[float, float]
    class_fractions: tuple[float, float]
    method: str = "otsu"


@dataclass(frozen=True)
class KMeansResult:
    """Two-cluster K-means on weighted bin centres.

    Attributes
    ----------
    threshold : float
        Midpoint of the two centroids, intensity units; low class ``x <= t``.
    centroids : (float, float)
        Cluster centres, ascending, intensity units.
    inertia : float
        Sum over bins of ``count * (centre - nearest centroid)**2`` (intensity units squared,
        the scikit-learn definition with counts as sample weights).
    n_iter : int
        Lloyd iterations of the retained initialisation.
    converged : bool
        True if the partition stopped changing or the squared centroid shift fell to the
        tolerance before ``max_iter``.
    seed : int
        Seed of the k-means++ initialisation.
    method : str
        ``"kmeans"``.
    """

    threshold: float
    centroids: tuple[float, float]
    inertia: float
    n_iter: int
    converged: bool
    seed: int
    method: str = "kmeans"


@dataclass(frozen=True)
class GMMResult:
    """Two-component 1-D Gaussian mixture fitted by EM on weighted bin centres.

    Attributes
    ----------
    threshold : float
        The point between the two means where ``w1 N(x; m1, v1) = w2 N(x; m2, v2)``.
    means : (float, float)
        Component means, ascending, intensity units.
    variances : (float, float)
        Component variances (``reg_covar`` included), intensity units squared, in the order
        of ``means``.
    weights : (float, float)
        Mixing weights, in the order of ``means``, summing to 1.
    n_iter : int
        EM iterations run.
    converged : bool
        True if the change of the lower bound fell below ``tol`` before ``max_iter``.
    lower_bound : float
        Mean log-likelihood per voxel at the last E-step (scikit-learn's ``lower_bound_``),
        in nats, for densities in inverse intensity units.
    method : str
        ``"gmm"``.
    """

    threshold: float
    means: tuple[float, float]
    variances: tuple[float, float]
    weights: tuple[float, float]
    n_iter: int
    converged: bool
    lower_bound: float
    method: str = "gmm"


# ------------------------------------------------------------------------------ validation


def _prepare_histogram(counts, centers):
    """Check a histogram and trim its empty ends.

    Returns ``xp, counts, centers`` with counts int64 (or float64 for weighted histograms) and
    centers float64, restricted to the first..last non-empty bin, as scikit-image does.
    """
    xp = array_namespace(counts, centers)
    if getattr(counts, "ndim", None) != 1 or getattr(centers, "ndim", None) != 1:
        raise ValueError(
            f"counts and centers must be 1-D arrays, got shapes {counts.shape} and "
            f"{centers.shape}"
        )
    if counts.shape != centers.shape:
        raise ValueError(
            f"counts and centers must have the same length, got {counts.shape[0]} and "
            f"{centers.shape[0]}"
        )
    if counts.dtype.kind not in "iuf" or centers.dtype.kind not in "iuf":
        raise TypeError(
            f"counts and centers must be real numeric arrays, got dtypes {counts.dtype} and "
            f"{centers.dtype}"
        )
    if counts.size == 0:
        raise ValueError("empty histogram: counts has no bins")
    counts = counts.astype(xp.int64 if counts.dtype.kind in "iu" else xp.float64, copy=False)
    centers = centers.astype(xp.float64, copy=False)

    nonempty = counts > 0
    # One transfer for every cheap check.  # device sync
    n_nonempty, n_negative, n_bad_centers, n_unsorted = (
        int(v) for v in xp.stack([
            xp.count_nonzero(nonempty),
            xp.count_nonzero(counts < 0) + xp.count_nonzero(xp.isnan(counts)),
            xp.count_nonzero(~xp.isfinite(centers)),
            xp.count_nonzero(centers[1:] <= centers[:-1]),
        ]).tolist()
    )
    if n_negative:
        raise ValueError(f"counts must be non-negative, got {n_negative} negative or NaN bins")
    if n_bad_centers:
        raise ValueError(f"centers must be finite, got {n_bad_centers} NaN or infinite centres")
    if n_unsorted:
        raise ValueError("centers must be strictly increasing")
    if n_nonempty == 0:
        raise ValueError(
            "empty histogram (total count 0): no voxels to fit; check the ROI and the "
            "intensity window"
        )
    nonempty_index = xp.flatnonzero(nonempty)
    ends = xp.stack([nonempty_index[0], nonempty_index[-1]])
    first, last = (int(v) for v in ends.tolist())  # device sync
    if n_nonempty == 1:
        value = float(centers[first])  # device sync
        raise ValueError(
            f"a single distinct value (one non-empty bin, centre {value!r}): no threshold "
            "separates two classes"
        )
    return xp, counts[first:last + 1], centers[first:last + 1]


def _as_float_pair(values) -> tuple[float, float]:
    a, b = values.tolist()  # device sync (two scalars)
    return float(a), float(b)


# ------------------------------------------------------------------------------------ Otsu


def otsu_threshold(counts, centers) -> OtsuResult:
    """Otsu's threshold of a histogram, exactly as ``skimage.filters.threshold_otsu(hist=...)``.

    Parameters
    ----------
    counts : (n_bins,) integer or float ndarray (numpy or cupy)
        Voxel counts per bin (weights if float).
    centers : (n_bins,) ndarray, strictly increasing, intensity units
        Bin centres (:func:`kernels.histogram.bin_centers`).

    Returns
    -------
    OtsuResult
        ``threshold`` is the bin centre ``t`` maximising the between-class variance
        ``w1(t) w2(t) (mu1(t) - mu2(t))**2`` with the low class ``x <= t``.

    Raises
    ------
    ValueError
        Empty histogram, a single non-empty bin, negative counts, unsorted centres.

    Notes
    -----
    This reproduces scikit-image 0.26 ``threshold_otsu`` operation for operation, so the
    result is bit-identical to it: trim the empty end bins, cast the counts to **float32**
    (scikit-image's ``_validate_image_histogram`` does), sequential cumulative sums, and
    ``argmax`` returning the *first* maximum.

    The float32 cumulative sum is only exact up to 2**24 voxels and its rounding depends on
    the summation order, so a CuPy histogram is copied to the host (a few thousand bins, one
    device sync) and reduced with numpy's sequential ``cumsum``: CPU and GPU runs then return
    the same threshold, and both equal scikit-image. The reported class means and fractions
    are computed exactly (int64 / float64), not from the float32 sums.

    References
    ----------
    N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. Syst.
    Man Cybern. 9(1):62-66, 1979.
    """
    xp, counts, centers = _prepare_histogram(counts, centers)
    if xp is not numpy:
        counts = numpy.asarray(counts.tolist(), dtype=counts.dtype)  # device sync
        centers = numpy.asarray(centers.tolist(), dtype=numpy.float64)

    counts32 = counts.astype(numpy.float32)  # as scikit-image; see Notes
    weight1 = numpy.cumsum(counts32)
    weight2 = numpy.cumsum(counts32[::-1])[::-1]
    mean1 = numpy.cumsum(counts32 * centers) / weight1
    mean2 = (numpy.cumsum((counts32 * centers)[::-1]) / weight2[::-1])[::-1]
    # threshold after bin i pairs class-1 statistics at i with class-2 statistics at i + 1
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    index = int(numpy.argmax(variance12))

    # Exact class statistics for the report (float64 sums of int64 or float weights).
    weights = counts.astype(numpy.float64)
    is_low = numpy.arange(counts.size) <= index
    weight_low, weight_high = float(weights[is_low].sum()), float(weights[~is_low].sum())
    mean_low = float(weights[is_low] @ centers[is_low]) / weight_low
    mean_high = float(weights[~is_low] @ centers[~is_low]) / weight_high
    total = weight_low + weight_high
    fraction_low, fraction_high = weight_low / total, weight_high / total
    return OtsuResult(
        threshold=float(centers[index]),
        between_class_variance=fraction_low * fraction_high * (mean_low - mean_high) ** 2,
        class_means=(mean_low, mean_high),
        class_fractions=(fraction_low, fraction_high),
    )


# ---------------------------------------------------------------------------------- K-means


def _kmeans_plusplus_pair(centers: numpy.ndarray, weights: numpy.ndarray,
                          rng: numpy.random.Generator) -> tuple[float, float]:
    """Greedy k-means++ seeds for k = 2 on weighted points (host; a few thousand bins).

    scikit-learn's ``_kmeans_plusplus`` with sample weights: the first seed is drawn with
    probability proportional to the weight, the second among ``2 + int(log 2) = 2``
    candidates drawn proportionally to ``weight * D**2``, keeping the one that lowers the
    potential most.
    """
    first = int(rng.choice(centers.size, p=weights / weights.sum()))
    closest_sq = (centers - centers[first]) ** 2
    potential = float(closest_sq @ weights)
    cumulative = numpy.cumsum(weights * closest_sq)
    # Draw in (0, potential] (not [0, potential)) so that searchsorted never returns a bin
    # with zero weight or zero distance: the two seeds are always distinct points.
    draws = (1.0 - rng.random(2)) * potential
    candidates = numpy.minimum(numpy.searchsorted(cumulative, draws), centers.size - 1)
    candidate_potentials = [
        float(numpy.minimum(closest_sq, (centers - centers[c]) ** 2) @ weights)
        for c in candidates
    ]
    second = int(candidates[int(numpy.argmin(candidate_potentials))])
    return float(centers[first]), float(centers[second])


def _lloyd_pair(xp: ModuleType, centers, weights, seeds: tuple[float, float],
                max_iter: int, tol_abs: float):
    """Lloyd iterations for two centroids in 1-D; returns (centroids, inertia, n_iter, conv).

    In 1-D the assignment is a cut point at the centroids' midpoint and Lloyd keeps the
    centroids ordered, so cluster 0 is always the low one and a value exactly at the midpoint
    goes to it (the low class is ``x <= t``). Convergence as in scikit-learn: the partition no
    longer changes, or the squared centroid shift is <= ``tol_abs``.
    """
    low, high = sorted(seeds)
    centroids = xp.asarray([low, high], dtype=xp.float64)
    previous_is_high = None
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (the count is read after the loop)
        is_high = (centers - centroids[1]) ** 2 < (centers - centroids[0]) ** 2
        weight_high = xp.where(is_high, weights, 0.0)
        weight_low = weights - weight_high
        sums = xp.stack([weight_low.sum(), weight_high.sum(),
                         (weight_low * centers).sum(), (weight_high * centers).sum()])
        # An empty cluster cannot happen in 1-D from two distinct seeds; keep the old
        # centroid if it ever did rather than dividing by zero.
        new_centroids = xp.where(sums[:2] > 0, sums[2:] / xp.where(sums[:2] > 0, sums[:2], 1.0),
                                 centroids)
        shift_sq = ((new_centroids - centroids) ** 2).sum()
        same_partition = (
            xp.asarray(False) if previous_is_high is None
            else xp.all(is_high == previous_is_high)
        )
        centroids = new_centroids
        flags = xp.stack([same_partition.astype(xp.float64), shift_sq])
        same, shift = flags.tolist()  # device sync
        if same or shift <= tol_abs:
            converged = True
            break
        previous_is_high = is_high
    # Re-assign with the final centroids before the inertia, as scikit-learn does.
    is_high = (centers - centroids[1]) ** 2 < (centers - centroids[0]) ** 2
    nearest = xp.where(is_high, centroids[1], centroids[0])
    inertia = float((weights * (centers - nearest) ** 2).sum())  # device sync
    return _as_float_pair(centroids), inertia, n_iter, converged


def kmeans_threshold(counts, centers, *, seed: int = 0, max_iter: int = 300,
                     tol: float = 1e-4, n_init: int = 1) -> KMeansResult:
    """Two-cluster K-means on bin centres weighted by counts; threshold = centroid midpoint.

    Parameters
    ----------
    counts : (n_bins,) integer or float ndarray (numpy or cupy)
        Voxel counts per bin (sample weights).
    centers : (n_bins,) ndarray, strictly increasing, intensity units
        Bin centres.
    seed : int, optional
        Seed of the k-means++ initialisation (``numpy.random.default_rng(seed)``).
    max_iter : int, optional
        Maximum Lloyd iterations per initialisation (scikit-learn's default, 300).
    tol : float, optional
        Relative tolerance: Lloyd stops when the summed squared centroid shift is
        ``<= tol * var`` with ``var`` the (count-weighted) variance of the data, which is how
        scikit-learn scales ``tol``. It also stops, earlier, as soon as the partition does not
        change (the exact fixed point).
    n_init : int, optional
        Number of k-means++ initialisations; the lowest inertia wins.

    Returns
    -------
    KMeansResult

    Raises
    ------
    ValueError
        Degenerate histogram (see :func:`otsu_threshold`) or bad ``max_iter``/``tol``/``n_init``.

    Notes
    -----
    The k-means++ seeding runs on the host with numpy's ``Generator`` (the histogram is
    copied there once, a device sync on CuPy); the Lloyd iterations run on ``xp``. In 1-D
    two-cluster Lloyd converges to a cut point, so the result is deterministic for a given
    ``seed``.

    References
    ----------
    D. Arthur and S. Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.
    """
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    if not (float(tol) >= 0):
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if int(n_init) < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init!r}")
    xp, counts, centers = _prepare_histogram(counts, centers)
    weights = counts.astype(xp.float64)

    weights_host = numpy.asarray(weights.tolist())  # device sync (a few thousand bins)
    centers_host = numpy.asarray(centers.tolist())
    total = weights_host.sum()
    mean = (weights_host @ centers_host) / total
    variance = (weights_host @ (centers_host - mean) ** 2) / total
    tol_abs = float(tol) * variance

    rng = numpy.random.default_rng(seed)
    best = None
    for _ in range(int(n_init)):
        seeds = _kmeans_plusplus_pair(centers_host, weights_host, rng)
        fitted = _lloyd_pair(xp, centers, weights, seeds, int(max_iter), tol_abs)
        if best is None or fitted[1] < best[1]:
            best = fitted
    assert best is not None, "n_init must be at least 1"
    (low, high), inertia, n_iter, converged = best
    return KMeansResult(
        threshold=0.5 * (low + high),
        centroids=(low, high),
        inertia=inertia,
        n_iter=n_iter,
        converged=converged,
        seed=int(seed),
    )


# --------------------------------------------------------------------------------------- GMM


def _gaussian_parameters(xp: ModuleType, centers, weights, responsibilities, reg_covar):
    """Weighted M-step of scikit-learn's ``_estimate_gaussian_parameters`` for 1-D data.

    ``responsibilities`` is (n_bins, 2); returns ``nk, means, variances`` each of shape (2,).
    """
    weighted_resp = responsibilities * weights[:, None]
    nk = weighted_resp.sum(axis=0) + _EPS10
    means = (weighted_resp * centers[:, None]).sum(axis=0) / nk
    variances = (weighted_resp * (centers[:, None] - means[None, :]) ** 2).sum(axis=0) / nk
    return nk, means, variances + reg_covar


def _weighted_log_prob(xp: ModuleType, centers, means, variances, mix_weights):
    # scikit-learn's form: y = (x - m) * precision_cholesky, log|precision_cholesky| added.
    precision_chol = 1.0 / xp.sqrt(variances)
    y = (centers[:, None] - means[None, :]) * precision_chol[None, :]
    return (-0.5 * (_LOG_2PI + y ** 2) + xp.log(precision_chol)[None, :]
            + xp.log(mix_weights)[None, :])


def _logsumexp_pair(xp: ModuleType, log_prob):
    peak = log_prob.max(axis=1)
    return peak + xp.log(xp.exp(log_prob - peak[:, None]).sum(axis=1))


def equal_density_point(means, variances, weights) -> float:
    """The point between two means where the weighted Gaussian densities are equal.

    Solves ``w1 N(x; m1, v1) = w2 N(x; m2, v2)``, i.e. ``a x**2 + b x + c = 0`` with
    ``a = 1/v1 - 1/v2``, ``b = 2 (m2/v2 - m1/v1)``,
    ``c = m1**2/v1 - m2**2/v2 + log(v1/v2) - 2 log(w1/w2)``, analytically (linear when the
    variances are equal), and keeps the root between the means where the density ratio
    turns from favouring the low component to favouring the high one.

    When the densities do not cross between the means (a wide component swallowing a narrow
    one, seen on pooled multi-vendor MRI), the threshold is the low-to-high decision boundary
    of the mixture nearest to the midpoint of the means, wherever it lies: still the point
    where the GMM's maximum-a-posteriori label switches from the low to the high class.

    Parameters
    ----------
    means, variances, weights : pairs of float
        Component parameters, intensity units (variances squared); any order.

    Returns
    -------
    float
        The threshold, intensity units.

    Raises
    ------
    ValueError
        If the means coincide or the mixture never switches from the low to the high class
        (one weighted density dominates everywhere).
    """
    order = sorted(range(2), key=lambda j: means[j])
    m1, m2 = (float(means[j]) for j in order)
    v1, v2 = (float(variances[j]) for j in order)
    w1, w2 = (float(weights[j]) for j in order)
    if not m1 < m2:
        raise ValueError(f"the two Gaussian components share the mean {m1!r}: no threshold")
    a = 1.0 / v1 - 1.0 / v2
    b = 2.0 * (m2 / v2 - m1 / v1)
    c = m1 * m1 / v1 - m2 * m2 / v2 + math.log(v1 / v2) - 2.0 * math.log(w1 / w2)
    # g(x) = a x^2 + b x + c = -2 log(w1 N1 / w2 N2): negative where the low component wins.
    if abs(a) <= 1e-12 * max(1.0 / v1, 1.0 / v2):
        roots = [-c / b]
    else:
        discriminant = b * b - 4.0 * a * c
        if discriminant < 0:
            roots = []
        else:
            # numerically stable pair of roots (no cancellation in -b +- sqrt(disc))
            q = -0.5 * (b + math.copysign(math.sqrt(discriminant), b))
            roots = [q / a, c / q] if q != 0 else [0.0]
    switches = [r for r in roots if math.isfinite(r) and 2.0 * a * r + b >= 0.0]
    crossings = [r for r in switches if m1 <= r <= m2] or switches
    if not crossings:
        raise ValueError(
            f"the weighted Gaussian densities never cross from the low to the high component "
            f"(means {m1!r}, {m2!r}; weights {w1!r}, {w2!r}; variances {v1!r}, {v2!r}): one "
            "component dominates everywhere; no GMM threshold"
        )
    midpoint = 0.5 * (m1 + m2)
    return min(crossings, key=lambda r: abs(r - midpoint))


def gmm_threshold(counts, centers, *, max_iter: int = 100, tol: float = 1e-3,
                  reg_covar: float = 1e-6, init: str = "kmeans", seed: int = 0) -> GMMResult:
    """Two-component 1-D Gaussian mixture by EM on weighted bins; threshold at equal density.

    Parameters
    ----------
    counts : (n_bins,) integer or float ndarray (numpy or cupy)
        Voxel counts per bin (sample weights).
    centers : (n_bins,) ndarray, strictly increasing, intensity units
        Bin centres.
    max_iter : int, optional
        Maximum EM iterations (scikit-learn's default, 100).
    tol : float, optional
        EM stops when the mean log-likelihood per voxel changes by less than ``tol`` between
        iterations (scikit-learn's default and definition, 1e-3 nats).
    reg_covar : float, optional
        Added to each variance (intensity units squared), as in scikit-learn.
    init : {'kmeans', 'otsu'}, optional
        Initial hard partition: the K-means threshold (scikit-learn's default,
        ``init_params='kmeans'``) or Otsu's.
    seed : int, optional
        Seed of the K-means initialisation.

    Returns
    -------
    GMMResult
        ``threshold`` from :func:`equal_density_point`.

    Raises
    ------
    ValueError
        Degenerate histogram, unknown ``init``, bad ``max_iter``/``tol``/``reg_covar``, or
        components that do not cross between their means.

    Notes
    -----
    This is scikit-learn's ``GaussianMixture(2, covariance_type='full')`` EM with the counts
    as sample weights: initial responsibilities one-hot on the K-means partition
    (``x <= t`` is component 0), M-step with ``nk + 10 eps``, lower bound = count-weighted
    mean of ``logsumexp`` of the weighted log densities.
    """
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    if not (float(tol) >= 0):
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not (float(reg_covar) >= 0):
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar!r}")
    if init not in ("kmeans", "otsu"):
        raise ValueError(f"init must be 'kmeans' or 'otsu', got {init!r}")
    xp, counts, centers = _prepare_histogram(counts, centers)
    weights = counts.astype(xp.float64)
    total = weights.sum()

    if init == "kmeans":
        cut = kmeans_threshold(counts, centers, seed=seed).threshold
    else:
        cut = otsu_threshold(counts, centers).threshold
    is_low = (centers <= cut).astype(xp.float64)
    responsibilities = xp.stack([is_low, 1.0 - is_low], axis=1)
    nk, means, variances = _gaussian_parameters(xp, centers, weights, responsibilities,
                                                float(reg_covar))
    mix_weights = nk / total

    lower_bound = -math.inf
    converged = False
    n_iter = 0
    for n_iter in range(1, int(max_iter) + 1):  # noqa: B007 (the count is read after the loop)
        previous_lower_bound = lower_bound
        log_prob = _weighted_log_prob(xp, centers, means, variances, mix_weights)
        log_norm = _logsumexp_pair(xp, log_prob)
        responsibilities = xp.exp(log_prob - log_norm[:, None])
        nk, means, variances = _gaussian_parameters(xp, centers, weights, responsibilities,
                                                    float(reg_covar))
        mix_weights = nk / nk.sum()
        lower_bound = float((weights * log_norm).sum() / total)  # device sync
        if abs(lower_bound - previous_lower_bound) < float(tol):
            converged = True
            break

    means_pair = _as_float_pair(means)
    variances_pair = _as_float_pair(variances)
    weights_pair = _as_float_pair(mix_weights)
    first, second = sorted(range(2), key=lambda j: means_pair[j])
    means_pair = (means_pair[first], means_pair[second])
    variances_pair = (variances_pair[first], variances_pair[second])
    weights_pair = (weights_pair[first], weights_pair[second])
    return GMMResult(
        threshold=equal_density_point(means_pair, variances_pair, weights_pair),
        means=means_pair,
        variances=variances_pair,
        weights=weights_pair,
        n_iter=n_iter,
        converged=converged,
        lower_bound=lower_bound,
    )


# ------------------------------------------------------------------------------ entry point

_FITS: dict[str, Callable[..., Any]] = {"otsu": otsu_threshold, "kmeans": kmeans_threshold, "gmm": gmm_threshold}
#: The fits :func:`fit_threshold` dispatches to (the engine's method registry, ``engine.measure.methods``,
#: points at the same functions and adds the reference method and the options' schema).
FIT_METHODS = tuple(_FITS)


def fit_threshold(values_or_histogram, method: str, *, lo: float | None = None,
                  hi: float | None = None, bin_width: float = 1.0, **kwargs):
    """Fit a two-class threshold with ``method`` on raw values or on a histogram.

    Parameters
    ----------
    values_or_histogram : ndarray or (counts, centers) tuple
        Either raw intensities (numpy or cupy array, any shape; then ``lo`` and ``hi`` are
        required and the histogram is computed with :func:`kernels.histogram.histogram`), or
        a ``(counts, centers)`` pair, e.g. a pooled histogram and
        :func:`kernels.histogram.bin_centers`.
    method : {'otsu', 'kmeans', 'gmm'}
        The fit (:func:`otsu_threshold`, :func:`kmeans_threshold`, :func:`gmm_threshold`).
    lo, hi : float, optional
        Centres of the first and last bin (intensity units) for raw values; ignored for a
        histogram. Values outside the grid are not counted (window first).
    bin_width : float, optional
        Bin width for raw values (intensity units, default 1); ignored for a histogram.
    **kwargs
        Passed to the fit (``seed``, ``max_iter``, ``tol``, ...).

    Returns
    -------
    OtsuResult, KMeansResult or GMMResult
        Each has ``threshold`` (float) and ``method``.

    Raises
    ------
    ValueError
        Unknown ``method``, missing ``lo``/``hi`` for raw values, NaN in the values, no value
        inside the window, a single distinct value.
    TypeError
        Values that are not a numpy/cupy array.
    """
    if method not in _FITS:
        raise ValueError(f"method must be one of {', '.join(FIT_METHODS)}, got {method!r}")
    if isinstance(values_or_histogram, (tuple, list)):
        if len(values_or_histogram) != 2:
            raise ValueError(
                "a histogram must be a (counts, centers) pair, got a sequence of length "
                f"{len(values_or_histogram)}"
            )
        counts, centers = values_or_histogram
        return _FITS[method](counts, centers, **kwargs)

    values = values_or_histogram
    if lo is None or hi is None:
        raise ValueError(
            f"lo and hi are required to fit raw values (got lo={lo!r}, hi={hi!r}); or pass a "
            "(counts, centers) histogram"
        )
    xp = array_namespace(values)
    if values.size == 0:
        raise ValueError("empty sample: no values to fit")
    counts = histogram(values, lo=lo, hi=hi, bin_width=bin_width)
    if not bool(counts.any()):  # device sync
        raise ValueError(
            f"the window [{lo}, {hi}] excludes all {values.size} values: nothing to fit"
        )
    centers = bin_centers(lo, hi, bin_width, xp=xp)
    return _FITS[method](counts, centers, **kwargs)
