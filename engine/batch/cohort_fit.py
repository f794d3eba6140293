"""The cohort-level fit (docs/method.md section 3): pool the training patients' histograms, fit, freeze.

Partial -> combine -> finalize: each group of training patients gives one histogram on the
modality's explicit bins (a task), the partials add as a tree of tasks (int64, exact in any
order), and every method's threshold is fitted on the host copy of the pooled counts.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from engine import __version__
from engine.batch.backend import to_host
from engine.batch.tasks import group_histogram, sum_histograms
from engine.config import Config
from engine.contract import (
    MODALITIES,
    MODALITY_NAMES,
    SCANNER_FIELDS,
    SCANNER_KEY,
    SCANNERS_KEY,
    STANDARDIZATION_KEY,
    scanner_label,
)
from engine.measure import methods as fit_methods
from engine.runfolder import method_record, registered_stats
from engine.runfolder.rundir import add_note
from kernels import bin_centers

log = logging.getLogger("sarco")

# Bimodality diagnostic (docs/method.md section 3): Ashman's D of the two-Gaussian fit above this bound
# is the usual "clean separation" of two components (Ashman et al. 1994, J Hered 85:1).
ASHMAN_D_CLEAN = 2.0
# Below this the two Gaussians sit inside one peak whatever their weights (a muscle-only ROI:
# D 0.5-0.7 on the real CT of the README).
ASHMAN_D_ONE_PEAK = 1.0
# With an overlapping fit (D < 2), a smaller component holding less than this share of the pooled
# voxels is a partial-volume tail of one tissue (ROI-border fat planes), not a second tissue.
# Measured: lean synthetic cohort 10 %, regular synthetic cohorts about 20 % (README).
MINOR_WEIGHT_MIN = 0.15

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
    width = cfg.modality_fit(modality).bin_width
    host_counts = to_host(counts)
    centers = bin_centers(lo, hi, width)
    fits = {}
    for name in cfg.modality_methods(modality):
        method = fit_methods.get(name)
        try:
            fits[name] = method.fit(host_counts, centers, cfg.fit.options(name), cfg, modality)
        except ValueError as exc:
            # A degenerate pooled histogram for one method must not cost the other methods'
            # results: its features stay empty and the run says why.
            if notes is None:
                raise
            add_note(notes, f"{modality.upper()} {name}: no threshold ({exc}); its features are left empty")
            continue
    fixed = cfg.modality_fit(modality).fixed
    if fixed is not None:
        for name, fit in fits.items():
            if not fit_methods.get(name).reference:
                fit["vs_fixed_fat_bound_hu"] = float(fit["threshold"]) - fixed.fat_bound_hu
    return fits


def bimodality_diagnostic(counts: np.ndarray, lo: float, hi: float, modality: str, cfg: Config,
                          fits: dict) -> dict:
    """Does the pooled histogram hold two tissues, or does every two-class fit split one?

    A two-class fit always finds two classes. The two-Gaussian fit (the engine's own GMM) of the
    pooled histogram says how separate they are: Ashman's D = sqrt(2) |mu1 - mu2| / sqrt(s1^2 + s2^2)
    (D > 2: clean separation) and the smaller component's weight. ``likely_one_tissue`` when
    D < ``ASHMAN_D_ONE_PEAK`` (both components inside one peak), or D < ``ASHMAN_D_CLEAN`` and
    the smaller weight < ``MINOR_WEIGHT_MIN`` (a thin tail of one tissue). Partial volume fills
    the valley between fat and muscle on real ROIs, so D alone is below 2 on cohorts with plenty
    of fat too; the weight separates those. The message says so in plain words, with (CT) each
    fitted threshold's position relative to the fixed fat bound.
    """
    width = cfg.modality_fit(modality).bin_width
    host_counts = to_host(counts)
    if isinstance(fits.get("gmm"), dict) and "weights" in fits["gmm"]:
        gmm = fits["gmm"]
    else:
        try:
            gmm = fit_methods.get("gmm").fit(host_counts, bin_centers(lo, hi, width), cfg.fit.options("gmm"), cfg,
                                             modality)
        except ValueError as exc:
            return {"ashman_d": None, "minor_weight": None, "likely_one_tissue": None,
                    "message": f"no two-Gaussian fit of the pooled histogram ({exc})"}
    (m1, m2), (v1, v2) = gmm["means"], gmm["variances"]
    ashman_d = math.sqrt(2.0) * abs(m2 - m1) / math.sqrt(v1 + v2)
    minor_weight = float(min(gmm["weights"]))
    one_tissue = bool(ashman_d < ASHMAN_D_ONE_PEAK or (ashman_d < ASHMAN_D_CLEAN and minor_weight < MINOR_WEIGHT_MIN))
    name = MODALITY_NAMES.get(modality, modality)
    measured = (f"Ashman's D = {ashman_d:.2f} (> {ASHMAN_D_CLEAN:g} is a clean split), smaller component "
                f"{100 * minor_weight:.1f} % of the pooled training voxels")
    fixed = cfg.modality_fit(modality).fixed
    where = ""
    if fixed is not None:
        bound = fixed.fat_bound_hu
        placed = [f"{fit_methods.display_name(m)} {float(f['threshold']):+.1f} HU" for m, f in fits.items()
                  if not fit_methods.get(m).reference]
        if placed:
            where = f"; fitted thresholds {', '.join(placed)} against the fixed fat bound {bound:+g} HU"
    if one_tissue:
        advice = (" Compare the fixed method's features (fat <= "
                  f"{fixed.fat_bound_hu:g} HU)." if fixed is not None else
                  " Read the fitted fat features with caution: there is no fixed reference on this modality.")
        message = (f"{name}: the pooled training histogram looks like ONE tissue ({measured}{where}). "
                   "A two-class fit always finds two classes, so the fitted thresholds are probably splitting "
                   f"muscle and calling part of it fat.{advice}")
    else:
        message = f"{name}: two tissues in the pooled training histogram ({measured}{where})."
    return {"ashman_d": float(ashman_d), "minor_weight": minor_weight, "likely_one_tissue": one_tissue,
            "means": [float(m1), float(m2)], "variances": [float(v1), float(v2)],
            "weights": [float(w) for w in gmm["weights"]], "message": message}


def histogram_groups(train: list[dict], max_groups: int = MAX_HISTOGRAM_GROUPS) -> list[list[dict]]:
    """The training summaries cut into at most ``max_groups`` contiguous groups of near-equal size.

    Each group's histogram is one partial of the cohort reduction, so the partials alive at once
    (one int64 per bin each) are bounded by ``max_groups``, whatever the cohort's size.
    """
    n_groups = min(len(train), max_groups)
    edges = [round(i * len(train) / n_groups) for i in range(n_groups + 1)]
    return [train[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def _by_scanner(train: list[dict]) -> dict[str, list[dict]]:
    """Training summaries grouped by their scanner's label (header values), labels in sorted order."""
    by_label: dict[str, list[dict]] = {}
    for summary in train:
        by_label.setdefault(scanner_label(summary.get(SCANNER_KEY)), []).append(summary)
    return dict(sorted(by_label.items()))


def scanner_cohort(modality: str, train: list[dict], cfg: Config, notes: list[str]) -> list[dict]:
    """The scanners of a modality's training cohort (from the headers), and the scanner-mix warning.

    One entry per scanner: manufacturer, model, field strength, ``label``, ``n_patients`` and,
    for standardised MRI, the spread of the fitted scales. MRI signal has no unit, so with
    ``preprocess.mri.standardize: none`` pooling more than one scanner is warned about (issue 16).
    """
    scanners = []
    for label, members in _by_scanner(train).items():
        entry = {**scanner_of_summary(members[0]), "label": label, "n_patients": len(members)}
        scales = [m[STANDARDIZATION_KEY]["scale"] for m in members if STANDARDIZATION_KEY in m]
        if scales:
            entry["scale_median"] = float(np.median(scales))
            entry["scale_range"] = [float(min(scales)), float(max(scales))]
        scanners.append(entry)
    standardize = getattr(cfg.modality_preprocess(modality), "standardize", None)
    if modality == "mri" and standardize == "none" and len(scanners) > 1:
        mix = ", ".join(f"{s['label']} ({s['n_patients']})" for s in scanners)
        message = (f"MRI: the training cohort pools {len(scanners)} scanners ({mix}) without intensity "
                   "standardisation (preprocess.mri.standardize: none). T2 signal has no absolute unit, so one "
                   "pooled threshold mixes the scanners' scales and the MRI fat features are not comparable "
                   "between them; consider preprocess.mri.standardize: reference.")
        add_note(notes, message)
    return scanners


def scanner_of_summary(summary: dict) -> dict:
    scanner = summary.get(SCANNER_KEY) or {}
    return {k: scanner.get(k) for k in SCANNER_FIELDS}


def _pooled_counts(executor, modality: str, train: list[dict], lo: float, hi: float, width: float,
                   backend: str) -> tuple[np.ndarray, dict[str, list[int]]]:
    """The pooled training histogram and, when several scanners are pooled, each scanner's share.

    Each scanner's patients are reduced on their own and the shares summed (int64: exact in any
    order, so the pooled counts equal a single reduction's).
    """
    by_label = _by_scanner(train)
    shares = {}
    per_group = max(1, MAX_HISTOGRAM_GROUPS // len(by_label))
    for label, members in by_label.items():
        groups = histogram_groups(members, per_group)
        futures = executor.map(group_histogram, [[s["sample"] for s in group] for group in groups], lo=lo, hi=hi,
                               bin_width=width, backend=backend,
                               keys=[f"histogram-{modality}-{group[0]['patient_id']}" for group in groups])
        shares[label] = tree_reduce(executor, futures, sum_histograms)
    counts = sum_histograms(*shares.values())
    by_scanner = {label: [int(c) for c in share] for label, share in shares.items()} if len(shares) > 1 else {}
    return counts, by_scanner


def fit_modality(executor, modality: str, train: list[dict], cfg: Config, backend: str, notes: list[str]) -> dict:
    """One modality's entry of thresholds.json from its training patients' pass-1 summaries."""
    lo, hi = histogram_range(modality, cfg, train)
    width = cfg.modality_fit(modality).bin_width
    scanners = scanner_cohort(modality, train, cfg, notes)
    counts, by_scanner = _pooled_counts(executor, modality, train, lo, hi, width, backend)
    fits = fit_cohort(counts, lo, hi, modality, cfg, notes)
    diagnostic = bimodality_diagnostic(counts, lo, hi, modality, cfg, fits)
    if diagnostic["likely_one_tissue"]:
        add_note(notes, diagnostic["message"])
    else:
        log.info("%s", diagnostic["message"])
    return {
        "fat_is": cfg.modality_fit(modality).fat_is,
        "unit": "HU" if modality == "ct" else "signal",
        "n_patients": len(train),
        "n_voxels": int(counts.sum()),
        "histogram": {"lo": lo, "hi": hi, "bin_width": width, "counts": [int(c) for c in counts],
                      **({"by_scanner": by_scanner} if by_scanner else {})},
        "methods": {name: method_record(name, fit, cfg.modality_fit(modality).fat_is) for name, fit in fits.items()},
        "diagnostic": diagnostic,
        SCANNERS_KEY: scanners,
        **({"standardize": cfg.preprocess.mri.standardize} if modality == "mri" else {}),
    }


def threshold_values(thresholds: dict, modality: str) -> dict[str, float]:
    return {m: float(fit["threshold"]) for m, fit in thresholds["modalities"][modality]["methods"].items()}


def fit_thresholds(executor, ok: list[dict], is_training, cfg: Config, backend: str, notes: list[str]) -> dict:
    """thresholds.json: every modality with a usable training patient, fitted; notes for the others.

    ``is_training(summary)`` says whether a pass-1 summary belongs to a labelled training patient.
    """
    thresholds: dict[str, Any] = {"engine_version": __version__, "modalities": {},
                                  "stats": [stat.to_json() for stat in registered_stats()]}
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
