"""kernels/: histogram, threshold fits, classification, array namespace, hygiene.

One body per test over the ``xp`` fixture (numpy always; cupy where a GPU is present). The
numpy path is checked against independent references (numpy's own histogram/bincount,
scikit-image's ``threshold_otsu``, scikit-learn's ``KMeans`` and ``GaussianMixture`` on the raw
voxels); the cupy path against the same references, hence against the numpy path.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import (
    array_namespace,
    bin_centers,
    classify,
    fit_threshold,
    gmm_threshold,
    histogram,
    kmeans_threshold,
    otsu_threshold,
    tissue_stats,
)
from kernels.fits import equal_density_point
from tests.conftest import to_numpy

KERNELS_DIR = Path(kernels.__file__).resolve().parent
CT_WINDOW = (-190.0, 150.0)
N_RAW = 200_000  # raw-sample size: big enough to be realistic, small enough for sklearn


# ------------------------------------------------------------------------------------ samples


def ct_voxels(fat_fraction: float, seed: int = 0, n: int = N_RAW) -> np.ndarray:
    """CT-like pooled ROI: muscle ~ N(45, 15) HU, fat ~ N(-90, 25) HU, int16, windowed."""
    rng = np.random.default_rng(seed)
    n_fat = int(round(n * fat_fraction))
    hu = np.concatenate([rng.normal(45, 15, n - n_fat), rng.normal(-90, 25, n_fat)])
    return np.clip(np.rint(hu), *CT_WINDOW).astype(np.int16)


# Two vendor scales of non-fat-suppressed T2 (fat bright): (muscle mean, sd, fat mean, sd, hi)
MRI_VENDORS = {"vendor_a": (320.0, 45.0, 820.0, 110.0, 1500.0),
               "vendor_b": (1300.0, 180.0, 3000.0, 380.0, 5000.0)}


def mri_voxels(fat_fraction: float, vendor: str, seed: int = 0, n: int = N_RAW) -> np.ndarray:
    """MRI-like pooled ROI: float32 after N4, two Gaussian tissues on a vendor's scale."""
    muscle_mean, muscle_sd, fat_mean, fat_sd, hi = MRI_VENDORS[vendor]
    rng = np.random.default_rng(seed)
    n_fat = int(round(n * fat_fraction))
    signal = np.concatenate([rng.normal(muscle_mean, muscle_sd, n - n_fat),
                             rng.normal(fat_mean, fat_sd, n_fat)])
    return np.clip(signal, 0.0, hi).astype(np.float32)


# name -> (voxels, lo, hi)
def _sample(name: str):
    kind, fraction, *vendor = name.split(":")
    if kind == "ct":
        return ct_voxels(float(fraction)), *CT_WINDOW
    voxels = mri_voxels(float(fraction), vendor[0])
    return voxels, 0.0, MRI_VENDORS[vendor[0]][4]


SAMPLES = ["ct:0.02", "ct:0.6", "mri:0.02:vendor_a", "mri:0.6:vendor_a",
           "mri:0.02:vendor_b", "mri:0.6:vendor_b"]


@functools.cache
def sample(name: str):
    return _sample(name)


@functools.cache
def sklearn_kmeans_threshold(name: str) -> float:
    from sklearn.cluster import KMeans

    voxels = sample(name)[0].reshape(-1, 1).astype(np.float64)
    model = KMeans(n_clusters=2, n_init=10, random_state=0).fit(voxels)
    return float(model.cluster_centers_.ravel().mean())


@functools.cache
def sklearn_gmm_threshold(name: str) -> float:
    """Equal weighted-density point of sklearn's GaussianMixture, found independently (brentq)."""
    from scipy.optimize import brentq
    from scipy.stats import norm
    from sklearn.mixture import GaussianMixture

    voxels = sample(name)[0].reshape(-1, 1).astype(np.float64)
    model = GaussianMixture(2, random_state=0).fit(voxels)
    means = model.means_.ravel()
    sds = np.sqrt(model.covariances_.ravel())
    weights = model.weights_

    def log_ratio(x):
        return (np.log(weights[0]) + norm.logpdf(x, means[0], sds[0])
                - np.log(weights[1]) - norm.logpdf(x, means[1], sds[1]))

    return float(brentq(log_ratio, means.min(), means.max(), xtol=1e-10))


def device_histogram(xp, name: str, bin_width: float = 1.0):
    voxels, lo, hi = sample(name)
    counts = histogram(xp.asarray(voxels), lo=lo, hi=hi, bin_width=bin_width)
    return counts, bin_centers(lo, hi, bin_width, xp=xp)


# ---------------------------------------------------------------------------------- histogram


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "int64",
                                   "float16", "float32", "float64"])
def test_histogram_integer_values_land_on_their_own_bin(xp, dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (max(info.min, -190), min(info.max, 150)) if info else (-190, 150)
    values = rng.integers(low - 20, high + 21, size=100_003).astype(np.int64)
    if info:
        values = np.clip(values, info.min, info.max)
    values = values.astype(dtype)
    counts = histogram(xp.asarray(values), lo=low, hi=high)
    as_int = values.astype(np.int64)
    inside = as_int[(as_int >= low) & (as_int <= high)]
    expected = np.bincount(inside - low, minlength=high - low + 1)
    assert counts.dtype == xp.int64
    assert type(counts) is type(xp.asarray(values))
    np.testing.assert_array_equal(to_numpy(counts), expected)


@pytest.mark.parametrize("bin_width", [0.5, 1.0, 2.5, 7.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_histogram_matches_numpy_histogram_on_floats(xp, dtype, bin_width):
    # numpy.histogram with the edges lo - w/2 + k w is an independent reference; random
    # floats never sit exactly on an edge, where the two could round differently.
    rng = np.random.default_rng(4)
    lo, hi = -100.0, 250.0
    values = rng.uniform(-150, 300, size=200_001).astype(dtype)
    n_bins = int(round((hi - lo) / bin_width)) + 1
    edges = lo - bin_width / 2 + bin_width * np.arange(n_bins + 1)
    expected, _ = np.histogram(values.astype(np.float64), bins=edges)
    counts = histogram(xp.asarray(values), lo=lo, hi=hi, bin_width=bin_width)
    np.testing.assert_array_equal(to_numpy(counts), expected)


def test_histogram_bin_edges_are_half_open_and_centred(xp):
    # bins centred on 0, 1, 2: bin k covers [k - 0.5, k + 0.5)
    values = np.array([-0.5000001, -0.5, 0.0, 0.4999999, 0.5, 1.5, 2.4999999, 2.5, np.inf,
                       -np.inf])
    counts = histogram(xp.asarray(values), lo=0, hi=2)
    np.testing.assert_array_equal(to_numpy(counts), [3, 1, 2])


def test_histogram_partials_add_up_to_the_pooled_histogram(xp):
    # The cohort fit pools per-patient histograms: the sum must equal the histogram of the
    # concatenated voxels exactly, whatever the dtype of each patient.
    patients = [ct_voxels(0.1, seed=s, n=10_000 + 137 * s) for s in range(5)]
    patients[2] = patients[2].astype(np.float32)
    patients[3] = patients[3].astype(np.int32)
    partials = [histogram(xp.asarray(p), lo=-190, hi=150) for p in patients]
    pooled = histogram(xp.asarray(np.concatenate([p.astype(np.float64) for p in patients])),
                       lo=-190, hi=150)
    np.testing.assert_array_equal(to_numpy(sum(partials)), to_numpy(pooled))
    assert int(to_numpy(pooled).sum()) == sum(p.size for p in patients)


def test_histogram_ignores_values_outside_the_grid(xp):
    values = np.array([-1000, -191, -190, 0, 150, 151, 3000], dtype=np.int16)
    counts = to_numpy(histogram(xp.asarray(values), lo=-190, hi=150))
    assert counts.sum() == 3
    assert counts[0] == 1 and counts[190] == 1 and counts[-1] == 1


def test_histogram_many_bins_unaligned_and_odd_lengths(xp):
    # 20001 bins do not fit in 48 KiB of shared memory (global-atomic path on the GPU);
    # values[1:] is not 16-byte aligned (scalar loads); odd length exercises the tail.
    rng = np.random.default_rng(5)
    values = rng.integers(0, 20001, size=300_007).astype(np.int16)
    expected = np.bincount(values[1:].astype(np.int64), minlength=20001)
    device_values = xp.asarray(values)
    np.testing.assert_array_equal(to_numpy(histogram(device_values[1:], lo=0, hi=20000)),
                                  expected)
    floats = xp.asarray(values.astype(np.float32))
    np.testing.assert_array_equal(to_numpy(histogram(floats[1:], lo=0, hi=20000)), expected)


def test_histogram_of_multidimensional_and_empty_arrays(xp):
    volume = ct_voxels(0.3, n=4 * 5 * 6).reshape(4, 5, 6)
    flat = histogram(xp.asarray(volume.ravel()), lo=-190, hi=150)
    np.testing.assert_array_equal(to_numpy(histogram(xp.asarray(volume), lo=-190, hi=150)),
                                  to_numpy(flat))
    empty = histogram(xp.asarray(np.zeros(0, np.float32)), lo=0, hi=9)
    np.testing.assert_array_equal(to_numpy(empty), np.zeros(10, np.int64))


def test_histogram_rejects_nan_and_bad_grids(xp):
    with pytest.raises(ValueError, match="NaN"):
        histogram(xp.asarray(np.array([1.0, np.nan, 2.0])), lo=0, hi=5)
    values = xp.asarray(np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError, match="bin_width"):
        histogram(values, lo=0, hi=5, bin_width=0)
    with pytest.raises(ValueError, match="hi must be >= lo"):
        histogram(values, lo=5, hi=0)
    with pytest.raises(ValueError, match="lo must be finite"):
        histogram(values, lo=-np.inf, hi=0)
    with pytest.raises(ValueError, match="bins"):
        histogram(values, lo=0, hi=1e9)
    with pytest.raises(TypeError, match="dtype=bool"):
        histogram(xp.asarray(np.array([True, False])), lo=0, hi=1)
    with pytest.raises(TypeError, match="list"):
        histogram([1, 2, 3], lo=0, hi=5)


def test_bin_centers(xp):
    centers = bin_centers(-190, 150, xp=xp)
    assert centers.dtype == xp.float64 and centers.shape == (341,)
    np.testing.assert_array_equal(to_numpy(centers), np.arange(-190, 151, dtype=np.float64))
    np.testing.assert_allclose(to_numpy(bin_centers(0, 10, 2.5, xp=xp)),
                               [0, 2.5, 5, 7.5, 10])


# ---------------------------------------------------------------------------------------- fits


@pytest.mark.parametrize("bin_width", [1.0, 2.5])
@pytest.mark.parametrize("name", SAMPLES)
def test_otsu_equals_skimage_threshold_otsu(xp, name, bin_width):
    from skimage.filters import threshold_otsu

    counts, centers = device_histogram(xp, name, bin_width)
    expected = threshold_otsu(hist=(to_numpy(counts), to_numpy(centers)))
    result = otsu_threshold(counts, centers)
    assert result.threshold == float(expected)
    assert isinstance(result.threshold, float)
    low_mean, high_mean = result.class_means
    assert low_mean < result.threshold < high_mean
    assert math.isclose(sum(result.class_fractions), 1.0)


def test_otsu_on_integer_ct_equals_skimage_on_raw_voxels(xp):
    # bin width 1 on integer HU: the histogram is the voxels, so the raw-voxel definition
    # (skimage bins integer images by value) gives the same threshold.
    from skimage.filters import threshold_otsu

    voxels, lo, hi = sample("ct:0.6")
    result = fit_threshold(xp.asarray(voxels), "otsu", lo=lo, hi=hi)
    assert result.threshold == float(threshold_otsu(voxels))


@pytest.mark.parametrize("name", SAMPLES)
def test_kmeans_within_one_bin_of_sklearn_on_raw_voxels(xp, name):
    counts, centers = device_histogram(xp, name)
    result = kmeans_threshold(counts, centers)
    assert abs(result.threshold - sklearn_kmeans_threshold(name)) <= 1.0
    assert result.converged and result.centroids[0] < result.threshold < result.centroids[1]
    assert result.threshold == pytest.approx(sum(result.centroids) / 2)


@pytest.mark.parametrize("name", SAMPLES)
def test_gmm_within_one_bin_of_sklearn_on_raw_voxels(xp, name):
    counts, centers = device_histogram(xp, name)
    result = gmm_threshold(counts, centers)
    assert abs(result.threshold - sklearn_gmm_threshold(name)) <= 1.0
    assert result.converged
    assert result.means[0] < result.threshold < result.means[1]
    assert math.isclose(sum(result.weights), 1.0)
    # the reported threshold is where the weighted densities are equal
    (m1, m2), (v1, v2), (w1, w2) = result.means, result.variances, result.weights
    t = result.threshold

    def log_density(w, m, v):
        return math.log(w) - 0.5 * math.log(2 * math.pi * v) - (t - m) ** 2 / (2 * v)

    assert log_density(w1, m1, v1) == pytest.approx(log_density(w2, m2, v2), abs=1e-9)


def test_kmeans_is_deterministic_and_seeded(xp):
    counts, centers = device_histogram(xp, "ct:0.02")
    first = kmeans_threshold(counts, centers, seed=7)
    again = kmeans_threshold(counts, centers, seed=7)
    assert first == again
    several = kmeans_threshold(counts, centers, seed=7, n_init=5)
    assert several.inertia <= first.inertia * (1 + 1e-12)
    assert abs(several.threshold - first.threshold) <= 1.0


def test_kmeans_converges_to_a_fixed_point_with_zero_tol(xp):
    # tol=0: stop only when the partition no longer changes (the exact Lloyd fixed point):
    # each centroid is then the weighted mean of its side of the cut.
    counts, centers = device_histogram(xp, "mri:0.6:vendor_b")
    result = kmeans_threshold(counts, centers, tol=0.0)
    counts, centers = to_numpy(counts).astype(float), to_numpy(centers)
    low = centers <= result.threshold
    assert result.converged
    assert result.centroids[0] == pytest.approx(np.average(centers[low], weights=counts[low]))
    assert result.centroids[1] == pytest.approx(np.average(centers[~low], weights=counts[~low]))


def test_results_are_json_serialisable(xp):
    counts, centers = device_histogram(xp, "ct:0.6")
    for method in ("otsu", "kmeans", "gmm"):
        result = fit_threshold((counts, centers), method)
        record = dataclasses.asdict(result)
        assert record["method"] == method
        round_trip = json.loads(json.dumps(record, allow_nan=False))  # numpy scalars or NaN would raise
        assert round_trip["threshold"] == record["threshold"] and round_trip["method"] == method
        assert all(not hasattr(v, "dtype") for v in record.values())


def test_fit_threshold_raw_values_equals_histogram_route(xp):
    voxels, lo, hi = sample("mri:0.6:vendor_a")
    counts, centers = device_histogram(xp, "mri:0.6:vendor_a")
    for method in ("otsu", "kmeans", "gmm"):
        from_values = fit_threshold(xp.asarray(voxels), method, lo=lo, hi=hi)
        from_histogram = fit_threshold((counts, centers), method)
        assert from_values == from_histogram


def test_equal_density_point():
    # equal variances and weights: the midpoint (linear case)
    assert equal_density_point((0.0, 10.0), (4.0, 4.0), (0.5, 0.5)) == pytest.approx(5.0)
    # order of the components does not matter
    assert equal_density_point((10.0, 0.0), (9.0, 4.0), (0.3, 0.7)) == pytest.approx(
        equal_density_point((0.0, 10.0), (4.0, 9.0), (0.7, 0.3)))
    # unequal variances: check the densities directly
    from scipy.stats import norm

    t = equal_density_point((-90.0, 45.0), (625.0, 225.0), (0.02, 0.98))
    assert -90 < t < 45
    assert 0.02 * norm.pdf(t, -90, 25) == pytest.approx(0.98 * norm.pdf(t, 45, 15), rel=1e-9)
    # A tiny, very wide low component is dominated everywhere between the means: the threshold
    # is then the mixture's low-to-high decision boundary nearest the means (outside them).
    t = equal_density_point((0.0, 1.0), (1e6, 1.0), (1e-9, 1.0 - 1e-9))
    low = lambda x: 1e-9 * norm.pdf(x, 0.0, 1e3)  # noqa: E731
    high = lambda x: (1.0 - 1e-9) * norm.pdf(x, 1.0, 1.0)  # noqa: E731
    assert low(t) == pytest.approx(high(t), rel=1e-6)
    assert low(t - 0.01) > high(t - 0.01) and low(t + 0.01) < high(t + 0.01)
    with pytest.raises(ValueError, match="never cross"):
        # a narrow low component with a negligible weight never wins anywhere
        equal_density_point((0.0, 1.0), (1.0, 100.0), (1e-10, 1.0 - 1e-10))


# ------------------------------------------------------------------------------ degenerate input


def test_degenerate_inputs_raise_value_error_naming_the_problem(xp):
    with pytest.raises(ValueError, match="method must be one of"):
        fit_threshold(xp.asarray(np.arange(10.0)), "median", lo=0, hi=9)
    with pytest.raises(ValueError, match="empty sample"):
        fit_threshold(xp.asarray(np.zeros(0)), "otsu", lo=0, hi=9)
    with pytest.raises(ValueError, match="lo and hi are required"):
        fit_threshold(xp.asarray(np.arange(10.0)), "otsu")
    with pytest.raises(ValueError, match="excludes all 10 values"):
        fit_threshold(xp.asarray(np.arange(10.0)), "kmeans", lo=100, hi=200)
    with pytest.raises(ValueError, match="NaN"):
        fit_threshold(xp.asarray(np.array([1.0, np.nan, 3.0])), "gmm", lo=0, hi=9)
    for method in ("otsu", "kmeans", "gmm"):
        with pytest.raises(ValueError, match="single distinct value"):
            fit_threshold(xp.asarray(np.full(100, 42, np.int16)), method, lo=0, hi=100)
        with pytest.raises(ValueError, match="empty histogram"):
            fit_threshold((xp.zeros(5, dtype=xp.int64), xp.arange(5.0)), method)
    centers = xp.arange(4.0)
    with pytest.raises(ValueError, match="non-negative"):
        otsu_threshold(xp.asarray(np.array([1, -1, 2, 3])), centers)
    with pytest.raises(ValueError, match="strictly increasing"):
        kmeans_threshold(xp.asarray(np.array([1, 1, 2, 3])), xp.asarray([0.0, 2, 1, 3]))
    with pytest.raises(ValueError, match="same length"):
        gmm_threshold(xp.asarray(np.array([1, 1, 2])), centers)
    with pytest.raises(ValueError, match="pair"):
        fit_threshold((centers,), "otsu")
    with pytest.raises(ValueError, match="init must be"):
        gmm_threshold(xp.asarray(np.array([1, 1, 2, 3])), centers, init="random")


# ----------------------------------------------------------------------------------- classify


def reference_labels(values, threshold, fat_is):
    v = values.astype(np.float64)
    fat = v <= threshold if fat_is == "low" else v > threshold
    muscle = v > threshold if fat_is == "low" else v <= threshold
    return np.where(fat, 2, np.where(muscle, 1, 0)).astype(np.uint8)


@pytest.mark.parametrize("fat_is", ["low", "high"])
@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "float32", "float64", "uint8"])
def test_classify_and_tissue_stats_match_numpy_reference(xp, dtype, fat_is):
    voxels = ct_voxels(0.3, seed=11, n=30 * 7 * 1001)
    if np.dtype(dtype).kind == "u":  # shift into the unsigned range (uint8 saturates)
        voxels = np.clip(voxels.astype(np.int32) + 190, 0, np.iinfo(dtype).max)
    values = voxels.astype(dtype).reshape(30, 7, -1)
    threshold = -23.5 if np.dtype(dtype).kind != "u" else 100.25
    expected = reference_labels(values, threshold, fat_is)

    labels = classify(xp.asarray(values), threshold, fat_is=fat_is)
    assert labels.dtype == xp.uint8 and labels.shape == values.shape
    np.testing.assert_array_equal(to_numpy(labels), expected)

    stats = tissue_stats(xp.asarray(values), threshold, fat_is=fat_is)
    v = values.astype(np.float64)
    assert stats.fat_count == int((expected == 2).sum())
    assert stats.muscle_count == int((expected == 1).sum())
    assert stats.fat_count + stats.muscle_count == values.size
    assert stats.fat_sum == pytest.approx(v[expected == 2].sum(), rel=1e-9)
    assert stats.muscle_sum == pytest.approx(v[expected == 1].sum(), rel=1e-9)
    assert stats.fat_mean == pytest.approx(v[expected == 2].mean(), rel=1e-9)
    assert stats.muscle_mean == pytest.approx(v[expected == 1].mean(), rel=1e-9)
    assert stats.fat_is == fat_is and stats.threshold == threshold


def test_classify_several_thresholds_in_one_pass(xp):
    values = mri_voxels(0.4, "vendor_a", n=50_001)
    thresholds = np.linspace(300.0, 900.0, 10)  # > 4: three passes of the GPU kernel
    labels = classify(xp.asarray(values), thresholds, fat_is="high")
    stats = tissue_stats(xp.asarray(values), list(thresholds), fat_is="high")
    assert labels.shape == (10, values.size) and len(stats) == 10
    for j, t in enumerate(thresholds):
        np.testing.assert_array_equal(to_numpy(labels[j]), reference_labels(values, t, "high"))
        single = tissue_stats(xp.asarray(values), float(t), fat_is="high")
        assert stats[j].fat_count == single.fat_count
        assert stats[j].muscle_count == single.muscle_count
        assert stats[j].fat_sum == pytest.approx(single.fat_sum, rel=1e-12)


def test_classify_edge_cases(xp):
    values = np.array([-1.0, 0.0, 1.0, np.nan])
    # exactly at the threshold is the low class; NaN is in neither class
    np.testing.assert_array_equal(to_numpy(classify(xp.asarray(values), 0.0)), [2, 2, 1, 0])
    np.testing.assert_array_equal(to_numpy(classify(xp.asarray(values), 0.0, fat_is="high")),
                                  [1, 1, 2, 0])
    stats = tissue_stats(xp.asarray(values[:2]), 5.0)
    assert stats.muscle_count == 0 and math.isnan(stats.muscle_mean)
    # float32 values compare in float64: 0.1f is > 0.1 (double), so it is muscle
    assert int(to_numpy(classify(xp.asarray(np.float32([0.1])), 0.1))[0]) == 1
    with pytest.raises(ValueError, match="fat_is"):
        classify(xp.asarray(values), 0.0, fat_is="bright")
    with pytest.raises(ValueError, match="finite"):
        classify(xp.asarray(values), float("nan"))
    with pytest.raises(TypeError, match="threshold"):
        tissue_stats(xp.asarray(values), "0.5")
    empty = tissue_stats(xp.asarray(np.zeros(0, np.int16)), 0.0)
    assert empty.fat_count == 0 and empty.muscle_count == 0


# ----------------------------------------------------------------------------- namespace, hygiene


def test_array_namespace():
    assert array_namespace(np.zeros(3), 1.0, None, np.float64(2)) is np
    assert array_namespace(1, 2.0) is np
    with pytest.raises(TypeError, match="list"):
        array_namespace(np.zeros(3), [1, 2])

    class NotAnArray:
        pass

    with pytest.raises(TypeError, match="NotAnArray"):
        array_namespace(NotAnArray())


def test_array_namespace_refuses_mixed_backends(xp):
    if xp is np:
        pytest.skip("needs cupy")
    with pytest.raises(TypeError, match="mixed array types"):
        array_namespace(np.zeros(3), xp.zeros(3))
    assert array_namespace(xp.zeros(3), np.float64(1.0)) is xp


def test_importing_kernels_pulls_in_no_heavy_or_engine_module():
    code = (
        "import sys, kernels, kernels.fits, kernels.histogram, kernels.classify, "
        "kernels.cuml_kmeans, kernels.xp\n"
        "bad = [m for m in ('engine', 'dask', 'SimpleITK', 'pydicom', 'yaml', 'cupy', 'cuml', "
        "'sklearn', 'skimage', 'scipy', 'logging') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=KERNELS_DIR.parent, check=True)
    assert done.stdout.strip() == "", f"kernels imported: {done.stdout.strip()}"


def test_kernels_sources_do_not_import_forbidden_modules():
    forbidden = ("engine", "dask", "SimpleITK", "pydicom", "yaml", "logging", "tests")
    for source in sorted(KERNELS_DIR.glob("*.py")):
        for line in source.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in forbidden, f"{source.name}: {stripped}"


CU_FILES = sorted(KERNELS_DIR.glob("*.cu"))
FLUSHING_CONVERSION = "cvt.ftz.f64.f32"  # float32 -> float64 that flushes subnormals to 0


def _check_entries(cu_file, ptx):
    stem = cu_file.stem
    for dtype in ("float32", "float64", "int16", "uint16", "int32"):
        assert f".entry {stem}_{dtype}" in ptx, f"{cu_file.name} lacks {stem}_{dtype}"


@pytest.mark.parametrize("cu_file", CU_FILES, ids=lambda p: p.name)
def test_cu_files_compile_without_flushing_conversions_under_ftz(cu_file, tmp_path):
    # Issue 15: CuPy compiles with -ftz=true; no float32 -> float64 conversion may flush.
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    done = subprocess.run(
        [nvcc, "--ptx", "-arch=compute_90", "-std=c++17", "--fmad=false", "-ftz=true",
         "-o", str(tmp_path / "out.ptx"), str(cu_file)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, f"nvcc failed on {cu_file.name}:\n{done.stderr}"
    ptx = (tmp_path / "out.ptx").read_text(encoding="utf-8")
    _check_entries(cu_file, ptx)
    assert FLUSHING_CONVERSION not in ptx
    assert not re.findall(r"\bfma\.", ptx)


def _nvrtc():
    from tests.cudahost import nvrtc

    if nvrtc.find_library() is None:
        pytest.skip("no NVRTC library (pip install nvidia-cuda-nvrtc-cu12); nvcc covers -ftz")
    return nvrtc


@pytest.mark.parametrize("cu_file", CU_FILES, ids=lambda p: p.name)
def test_nvrtc_with_cupys_option_chain_emits_no_flushing_conversion(cu_file):
    # Issue 15: the exact chain CuPy hands NVRTC: our options, then its -ftz=true and -arch.
    from kernels import _cuda

    nvrtc = _nvrtc()
    options = _cuda._NVRTC_OPTIONS + nvrtc.CUPY_APPENDED
    ptx = nvrtc.compile_ptx(_cuda.cuda_source(cu_file.name), options, cu_file.name)
    _check_entries(cu_file, ptx)
    assert FLUSHING_CONVERSION not in ptx
    assert "cvt.f64.f32" in ptx  # the float32 entry points convert, without .ftz
    # Determinism: no floating-point atomics, whose order depends on the blocks' timing.
    assert not re.findall(r"\b(?:atom|red)\.[\w.]*\bf(?:32|64)\b", ptx)  # e.g. red.global.add.f64
    # Issue 25: no fused multiply-add (one rounding where numpy rounds twice).
    assert "--fmad=false" in _cuda._NVRTC_OPTIONS
    assert not re.findall(r"\bfma\.", ptx)


def test_fma_check_can_fail():
    # Issue 25: a * b + c contracts to fma.rn.f64 unless --fmad=false, which our options carry.
    from kernels import _cuda

    nvrtc = _nvrtc()
    source = ('extern "C" __global__ void k(const double* a, double* y) '
              '{ y[0] = a[0] * a[1] + a[2]; }')
    contracting = tuple(o for o in _cuda._NVRTC_OPTIONS if o != "--fmad=false") + nvrtc.CUPY_APPENDED
    assert re.findall(r"\bfma\.", nvrtc.compile_ptx(source, contracting))
    assert not re.findall(r"\bfma\.", nvrtc.compile_ptx(source, _cuda._NVRTC_OPTIONS + nvrtc.CUPY_APPENDED))


def test_flushing_conversion_check_can_fail():
    # The assertion above is not vacuous: a plain cast under CuPy's flags does flush.
    from kernels import _cuda

    nvrtc = _nvrtc()
    source = 'extern "C" __global__ void k(const float* x, double* y) { y[0] = (double)x[0]; }'
    ptx = nvrtc.compile_ptx(source, _cuda._NVRTC_OPTIONS + nvrtc.CUPY_APPENDED)
    assert FLUSHING_CONVERSION in ptx


# --------------------------------------------------------------- exactness and determinism (#15)


def test_float32_subnormals_are_not_flushed(xp):
    # Issue 15: under -ftz=true a plain conversion made classify(float32 1e-40, t=0) fat.
    tiny = np.float32(1e-40)
    assert 0 < tiny < np.finfo(np.float32).tiny  # subnormal
    width = float(tiny)
    assert int(to_numpy(classify(xp.asarray(np.array([tiny])), 0.0))[0]) == 1  # muscle
    counts = histogram(xp.asarray(np.array([tiny, np.float32(0)])), lo=0.0, hi=width,
                       bin_width=width)
    np.testing.assert_array_equal(to_numpy(counts), [1, 1])
    stats = tissue_stats(xp.asarray(np.array([tiny, -tiny])), 0.0)
    assert stats.muscle_sum == width and stats.fat_sum == -width


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "float32", "float64"])
def test_tissue_sums_exact_and_identical_to_numpy(xp, dtype):
    # Issue 15: per-block double atomics made the sums depend on the blocks' timing.
    # Issue 25: float sums are exact too (mantissas per exponent), so the GPU's are numpy's bits.
    values = ct_voxels(0.3, seed=21, n=100_003).astype(np.int32) + (190 if dtype[0] == "u" else 0)
    values = values.astype(dtype)
    if values.dtype.kind == "f":
        values += np.random.default_rng(2).uniform(0, 1, values.size).astype(dtype)
    thresholds = [-23.5, 10.0] if dtype[0] != "u" else [166.5, 200.0]
    first = tissue_stats(xp.asarray(values), thresholds)
    for _ in range(2):
        assert tissue_stats(xp.asarray(values), thresholds) == first  # bit for bit
    reference = tissue_stats(values, thresholds)  # numpy
    as_float = values.astype(np.float64)
    for ours, theirs in zip(first, reference, strict=True):
        assert ours == theirs  # counts, sums and means: bit-identical to numpy
        fat = as_float <= ours.threshold
        # math.fsum: the correctly rounded sum, an independent reference for the exact sums
        assert ours.fat_sum == math.fsum(as_float[fat])
        assert ours.muscle_sum == math.fsum(as_float[~fat])


@pytest.mark.parametrize("multiprocessors", [1, 8, 132])
def test_float_tissue_sums_identical_to_the_cpu_at_any_grid_size(xp, monkeypatch, multiprocessors):
    # Issue 25: float sums were per-block partials added with fsum: the same bits from run to run
    # but not the CPU's, and they changed with the grid (8 blocks per SM; an H200 has 132 SMs):
    # features.csv then differed from the CPU run's in a few *_muscle_mean cells. The host
    # execution models each SM count; on a real device the device's own count runs.
    if xp is np and multiprocessors != 1:
        pytest.skip("the numpy path has no grid")
    standin = getattr(xp, "is_cudahost_standin", False)
    n = 67_585
    if standin:
        from kernels import _cuda
        from tests.cudahost import fakecupy

        monkeypatch.setitem(fakecupy.DEVICE_ATTRIBUTES, "MultiProcessorCount", multiprocessors)
        _cuda._device_attributes.cache_clear()
        if multiprocessors == 132:
            # the H200's full grid (8 x 132 blocks) in seconds: blocks of one warp (the host
            # execution's cost is its threads' barriers, ~0.1 s per block of 256 threads)
            classify_module = importlib.import_module("kernels.classify")
            monkeypatch.setattr(classify_module, "_THREADS", 32)
    # float32 signal over seven decades (T2 tissue around 800 and a near-zero background, as
    # after N4 and standardisation): float64 sums of it round, and where they round depends on
    # the order of the additions; the exact sums do not.
    rng = np.random.default_rng(25)
    values = np.concatenate([rng.normal(800, 200, n // 2), rng.uniform(0, 1e-3, n - n // 2)]).astype(np.float32)
    rng.shuffle(values)
    values[:3] = [np.float32(1e-40), np.float32(-3.5e-39), np.float32(0.1)]  # subnormals, a tiny value
    thresholds = [5e-4, 600.0, 800.0]
    ours = tissue_stats(xp.asarray(values), thresholds, fat_is="high")
    cpu = tissue_stats(values, thresholds, fat_is="high")
    as_float = values.astype(np.float64)
    for gpu_stats, cpu_stats in zip(ours, cpu, strict=True):
        assert gpu_stats == cpu_stats  # the feature values: the same bits, so the same CSV bytes
        fat = as_float > gpu_stats.threshold
        assert gpu_stats.fat_sum == math.fsum(as_float[fat])
        assert gpu_stats.muscle_sum == math.fsum(as_float[~fat])
        assert gpu_stats.muscle_mean == math.fsum(as_float[~fat]) / int((~fat).sum())
    if standin:
        name, grid, block, _ = fakecupy.launches[-1]
        assert name == "classify_float32" and grid[0] == min(8 * multiprocessors, -(-n // block[0]))


def test_exact_sum_rounds_once():
    from fractions import Fraction

    from kernels.classify import exact_sum

    # float32 bins: 2**23 * 2**(151 - 150) = 2**24, plus 1 * 2**(1 - 150) (the smallest subnormal)
    bins = [0] * 258
    bins[151], bins[1] = 1 << 23, 1
    assert exact_sum(bins, "float32") == float(Fraction(2**24) + Fraction(1, 2**149))  # rounds to 2**24
    bins[256] = 2  # +inf
    assert exact_sum(bins, "float32") == math.inf
    bins[257] = 1  # and -inf
    assert math.isnan(exact_sum(bins, "float32"))
    # float64: three values whose naive float sum loses the small one entirely
    values = np.array([1e16, 1.0, -1e16, 0.5], dtype=np.float64)
    stats = tissue_stats(values, 1e17)  # all fat (x <= t)
    assert stats.fat_sum == 1.5 and sum(values.tolist()) != 1.5
    # the smallest float64 subnormal survives: no double rounding through a normal float
    assert tissue_stats(np.array([5e-324, 5e-324, 1e-310]), 1.0).fat_sum == 1e-310 + 1e-323


def test_histogram_shared_memory_plan():
    from kernels.histogram import shared_memory_plan

    default, optin = 48 * 1024, 227 * 1024
    assert shared_memory_plan(341, default, optin) == (32, 32 * 4 * 341)  # CT: one per lane of a warp
    assert shared_memory_plan(400, default, optin) == (16, 16 * 4 * 400)  # a power of two that fits
    assert shared_memory_plan(6_144, default, optin) == (2, default)
    assert shared_memory_plan(12_288, default, optin) == (1, default)
    assert shared_memory_plan(12_289, default, optin) == (1, 4 * 12_289)  # opt in (MRI)
    assert shared_memory_plan(34_000, default, optin) == (1, 4 * 34_000)
    assert shared_memory_plan(optin // 4, default, optin) == (1, optin)
    assert shared_memory_plan(optin // 4 + 1, default, optin) == (0, 0)  # global atomics


def test_histogram_of_a_few_hot_bins_is_exact_in_every_lane_copy(xp):
    # A CT window (341 bins) gets one interleaved sub-histogram per lane of a warp (issue 28):
    # data piled into three bins, as muscle and fat are, must still count exactly, also past the
    # vector loads (odd length, unaligned start).
    rng = np.random.default_rng(28)
    values = rng.choice(np.array([-90, 40, 41, 150, 151], np.int16), size=100_003, p=[0.3, 0.4, 0.2, 0.05, 0.05])
    expected = np.bincount(values[1:].astype(np.int64) + 190, minlength=341)[:341]
    np.testing.assert_array_equal(to_numpy(histogram(xp.asarray(values)[1:], lo=-190, hi=150)), expected)
    if getattr(xp, "is_cudahost_standin", False):
        from tests.cudahost import fakecupy

        name, _, _, shared = fakecupy.launches[-1]
        assert (name, shared) == ("histogram_int16", 32 * 4 * 341)


@pytest.mark.parametrize("n_bins", [34_001, 70_001], ids=["opted-in-shared", "global-atomics"])
def test_histogram_grids_beyond_the_default_shared_memory(xp, n_bins):
    # Issue 15: MRI grids over 12,288 bins used to fall back to global atomics.
    rng = np.random.default_rng(8)
    values = rng.integers(-5, n_bins + 5, size=150_001).astype(np.int32)
    inside = values[(values >= 0) & (values < n_bins)]
    expected = np.bincount(inside, minlength=n_bins)
    for dtype in ("int32", "float64"):
        counts = histogram(xp.asarray(values.astype(dtype)), lo=0, hi=n_bins - 1)
        np.testing.assert_array_equal(to_numpy(counts), expected)
        if getattr(xp, "is_cudahost_standin", False):
            from tests.cudahost import fakecupy

            name, _, _, shared = fakecupy.launches[-1]
            assert name == f"histogram_{dtype}"
            assert shared == (4 * n_bins if n_bins == 34_001 else 0)


def test_host_execution_checks_every_launch(xp):
    # The stand-in refuses what a GPU would refuse or misread: wrong arity, a parameter of the
    # wrong size, an array of the wrong element size, shared memory beyond the opt-in.
    if not getattr(xp, "is_cudahost_standin", False):
        pytest.skip("checks of the host execution itself")
    from kernels import _cuda

    kernel = _cuda.raw_module("histogram.cu").get_function("histogram_int16")
    values = xp.asarray(np.arange(10, dtype=np.int16) % 4)
    counts, flag = xp.zeros(4, dtype=xp.uint64), xp.zeros(1, dtype=xp.int32)
    args = [values, np.int64(10), np.float64(0), np.float64(1), np.int64(0), np.int32(1),
            np.int32(4), np.int32(1), np.int32(0), counts, flag]
    kernel((2,), (64,), tuple(args), shared_mem=16)
    np.testing.assert_array_equal(to_numpy(counts), [3, 3, 2, 2])
    with pytest.raises(TypeError, match="takes 11 arguments"):
        kernel((1,), (32,), tuple(args[:-1]))
    with pytest.raises(TypeError, match="argument 6"):
        kernel((1,), (32,), tuple(args[:6] + [np.int64(4)] + args[7:]))
    with pytest.raises(TypeError, match="argument 0"):
        kernel((1,), (32,), (xp.zeros(10, dtype=xp.float32), *args[1:]))
    with pytest.raises(RuntimeError, match="opt in"):
        kernel((1,), (32,), tuple(args), shared_mem=64 * 1024)


def test_cuml_kmeans_matches_histogram_kmeans(xp):
    try:
        import cuml  # noqa: F401

        from kernels.cuml_kmeans import kmeans_threshold_cuml
    except ImportError:
        pytest.skip("cuML is not installed")
    if xp is np:
        pytest.skip("cuML runs on the GPU case")
    voxels, lo, hi = sample("ct:0.6")
    ours = fit_threshold(xp.asarray(voxels), "kmeans", lo=lo, hi=hi)
    theirs = kmeans_threshold_cuml(xp.asarray(voxels), seed=0)
    assert abs(ours.threshold - theirs.threshold) <= 1.0


def test_cuml_kmeans_raises_clear_import_error_without_cuml():
    try:
        import cuml  # noqa: F401
    except ImportError:
        from kernels.cuml_kmeans import kmeans_threshold_cuml

        with pytest.raises(ImportError, match="cuML"):
            kmeans_threshold_cuml(np.zeros(10))
    else:
        pytest.skip("cuML is installed")
