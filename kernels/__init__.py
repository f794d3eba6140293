"""Pure compute kernels (numpy or cupy); never imports engine."""

from kernels.classify import FAT, MUSCLE, TissueStats, classify, tissue_stats
from kernels.fits import (
    FIT_METHODS,
    GMMResult,
    KMeansResult,
    OtsuResult,
    fit_threshold,
    gmm_threshold,
    kmeans_threshold,
    otsu_threshold,
)
from kernels.histogram import bin_centers, histogram
from kernels.xp import array_namespace

__all__ = [
    "FAT",
    "FIT_METHODS",
    "GMMResult",
    "KMeansResult",
    "MUSCLE",
    "OtsuResult",
    "TissueStats",
    "array_namespace",
    "bin_centers",
    "classify",
    "fit_threshold",
    "gmm_threshold",
    "histogram",
    "kmeans_threshold",
    "otsu_threshold",
    "tissue_stats",
]
