"""The cohort-level fit (METHOD.md section 3): pool the training patients' histograms, fit, freeze.

Partial -> combine -> finalize: each group of training patients gives one histogram on the
modality's explicit bins (a task), the partials add as a tree of tasks (int64, exact in any
order), and every method's threshold is fitted on the host copy of the pooled counts.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from . import __version__
from .backend import to_host
from .config import Config
from .contract import MODALITIES
from .tasks import group_histogram, sum_histograms

log = logging.getLogger("sarco")

# Leaves of the cohort histogram reduction: enough tasks to keep every worker busy, few enough
# that the partial histograms alive at once stay small whatever the cohort's size.
MAX_HISTOGRAM_GROUPS = 64


def histogram_range(modality: str, cfg: Config, summaries: list[dict]) -> tuple[float, float]:
    """The explicit value range of a modality's pooled histogram.

    CT: the intensity window. Without a window (MRI): the training voxels' min and max, snapped
    outward to the bin grid; this is itself a partial -> combine -> finalize reduction.
    """
    window = cfg.modality_preprocess(modality).window
    if window is not None:
        return float(window[0]), float(window[1])
    width = cfg.modality_fit(modality).bin_width
    low = math.floor(min(s["min"] for s in summaries) / width) * width
    high = math.ceil(max(s["max"] for s in summaries) / width) * width
    if high <= low:  # every training voxel has the same value: one bin
        high = low + width
    return float(low), float(high)


def fit_cohort(counts: np.ndarray, lo: float, hi: float, modality: str, cfg: Config,
               notes: list[str] | None = None) -> dict:
    """The thresholds of every configured method on one modality's pooled histogram.

    The fits run on the host on both backends: the histogram is a few thousand int64 counts
    (microseconds of work), and reductions in a different order on a GPU could move a threshold
    by 1e-12, which is enough to flip a voxel that sits on it. Host fits make CPU and GPU runs
    give bit-identical thresholds and therefore identical habitat labels.
    """
    from kernels import bin_centers, fit_threshold

    width = cfg.modality_fit(modality).bin_width
    host_counts = to_host(counts)
    centers = bin_centers(lo, hi, width)
    options = {
        "otsu": {},
        "kmeans": {"seed": cfg.fit.seed, "max_iter": cfg.fit.kmeans_max_iter, "tol": cfg.fit.kmeans_tol},
        "gmm": {"max_iter": cfg.fit.gmm_max_iter, "tol": cfg.fit.gmm_tol, "reg_covar": cfg.fit.gmm_reg_covar},
    }
    fits = {}
    for method in cfg.fit.methods:
        try:
            result = fit_threshold((host_counts, centers), method, **options[method])
        except ValueError as exc:
            # A degenerate pooled histogram for one method must not cost the other methods'
            # results: its features stay empty and the run says why.
            if notes is None:
                raise
            notes.append(f"{modality.upper()} {method}: no threshold ({exc}); its features are left empty")
            log.warning("%s %s fit failed: %s", modality, method, exc)
            continue
        fits[method] = dataclasses.asdict(result)
    return fits


def histogram_groups(train: list[dict], max_groups: int = MAX_HISTOGRAM_GROUPS) -> list[list[dict]]:
    """The training summaries cut into at most ``max_groups`` contiguous groups of near-equal size.

    Each group's histogram is one partial of the cohort reduction, so the partials alive at once
    (one int64 per bin each) are bounded by ``max_groups``, whatever the cohort's size.
    """
    n_groups = min(len(train), max_groups)
    edges = [round(i * len(train) / n_groups) for i in range(n_groups + 1)]
    return [train[a:b] for a, b in zip(edges, edges[1:])]


def fit_modality(executor, modality: str, train: list[dict], cfg: Config, backend: str, notes: list[str]) -> dict:
    """One modality's entry of thresholds.json from its training patients' pass-1 summaries."""
    lo, hi = histogram_range(modality, cfg, train)
    width = cfg.modality_fit(modality).bin_width
    groups = histogram_groups(train)
    futures = executor.map(group_histogram, [[s["sample"] for s in group] for group in groups], lo=lo, hi=hi,
                           bin_width=width, backend=backend,
                           keys=[f"histogram-{modality}-{group[0]['patient_id']}" for group in groups])
    counts = tree_reduce(executor, futures, sum_histograms)
    fits = fit_cohort(counts, lo, hi, modality, cfg, notes)
    return {
        "fat_is": cfg.modality_fit(modality).fat_is,
        "unit": "HU" if modality == "ct" else "signal",
        "n_patients": len(train),
        "n_voxels": int(counts.sum()),
        "histogram": {"lo": lo, "hi": hi, "bin_width": width, "counts": [int(c) for c in counts]},
        "methods": fits,
    }


def threshold_values(thresholds: dict, modality: str) -> dict[str, float]:
    return {m: float(fit["threshold"]) for m, fit in thresholds["modalities"][modality]["methods"].items()}


def fit_thresholds(executor, ok: list[dict], is_training, cfg: Config, backend: str, notes: list[str]) -> dict:
    """thresholds.json: every modality with a usable training patient, fitted; notes for the others.

    ``is_training(summary)`` says whether a pass-1 summary belongs to a labelled training patient.
    """
    thresholds = {"engine_version": __version__, "modalities": {}}
    present = {s["modality"] for s in ok}
    for modality in MODALITIES:
        train = sorted((s for s in ok if s["modality"] == modality and is_training(s)), key=lambda s: s["patient_id"])
        if not train:
            if modality in present:
                notes.append(f"no usable {modality.upper()} training patient: no {modality.upper()} thresholds "
                             "and no features for this modality")
            continue
        entry = fit_modality(executor, modality, train, cfg, backend, notes)
        thresholds["modalities"][modality] = entry
        for method, fit in entry["methods"].items():
            log.info("%s %s threshold %.3f from %d training patients", modality, method, fit["threshold"], len(train))
    return thresholds


def tree_reduce(executor, futures: list, fn, fan_in: int = 8):
    """Combine partial results as a tree of tasks (each combine sees at most ``fan_in`` inputs)."""
    while len(futures) > 1:
        futures = [executor.submit(fn, *futures[i:i + fan_in]) for i in range(0, len(futures), fan_in)]
    return futures[0].result()
