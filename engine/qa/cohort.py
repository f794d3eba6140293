"""Cohort warnings: facts about a modality's fit, said once instead of on every row (issue 30).

A fact that holds for the whole cohort (the pooled histogram looks like one tissue; a method's
threshold lies inside one tissue's range; a method disagrees with the fixed HU range on most
series) repeated on every row of the QA sheet hides the rows that differ. Here such facts become
one cohort warning each, shown in the sheet's header and the report's diagnostic section; a row
keeps a warning only for what differs about that series.

Read from the run folder's published ``thresholds.json`` (typed: :mod:`engine.runfolder.thresholds`)
and ``features.csv`` only, so an old run folder re-renders with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.contract import FIXED, MODALITY_NAMES, vs_fixed_column
from engine.measure.methods import display_name, method_order
from engine.runfolder.thresholds import ModalityThresholds, Thresholds

#: A series is flagged when a fitted method and the fixed HU bound classify more than this share
#: (%) of its ROI differently (the sheet's row warning).
VS_FIXED_WARN_PERCENT = 10.0
#: When more than this share of a modality's series exceed VS_FIXED_WARN_PERCENT for one method,
#: the disagreement is the method's, not the series': one cohort warning, and rows flagged only
#: where the disagreement is an outlier among that method's series.
METHOD_WIDE_SHARE = 0.25
#: Robust z (|x - median| / (1.4826 MAD)) beyond which a series' value is its own, not its cohort's: its
#: disagreement with fixed here, its ROI volume, fat % or methods' disagreement on the QA sheet.
OUTLIER_Z = 3.5
#: MRI: a threshold within this many SDs of the major (muscle) component's mean splits that tissue.
COMPONENT_SD = 1.0


@dataclass(frozen=True)
class CohortWarning:
    """One cohort-level fact: ``key`` (``one_tissue``, ``splits_one_tissue``, ``vs_fixed``), its text."""

    key: str
    modality: str
    method: str | None
    text: str


def _split_inside(entry: ModalityThresholds, method: str) -> tuple[str, str] | None:
    """(the tissue range ``method``'s threshold lies in, the threshold as text), or None."""
    fit = entry.methods.get(method)
    if fit is None or not math.isfinite(fit.threshold):
        return None
    t = fit.threshold
    fixed = entry.methods.get(FIXED)
    if fixed is not None and fixed.muscle_range_hu and fixed.fat_range_hu:
        muscle, fat = fixed.muscle_range_hu, fixed.fat_range_hu
        if muscle[0] <= t <= muscle[1]:
            return (f"inside the muscle range ({muscle[0]:g} to {muscle[1]:g} HU): it splits muscle, not fat from "
                    "muscle, so its fat features count lean or low-density muscle as fat"), f"{t:+.1f} HU"
        if t < fat[0]:
            return f"below the fat range ({fat[0]:g} HU): it splits fat", f"{t:+.1f} HU"
        return None
    diagnostic = entry.diagnostic
    if diagnostic is None or not (diagnostic.means and diagnostic.variances and diagnostic.weights):
        return None
    major = int(np.argmax(diagnostic.weights))
    sd = float(np.sqrt(diagnostic.variances[major]))
    main_mean = diagnostic.means[major]
    if abs(t - main_mean) <= COMPONENT_SD * sd:
        return (f"within {COMPONENT_SD:g} SD of the main tissue's mean ({main_mean:.4g} +- {sd:.3g}): it "
                "splits that tissue, not fat from muscle"), f"{t:.4g}"
    return None


def split_inside_one_tissue(entry: ModalityThresholds, method: str) -> str | None:
    """Why ``method``'s threshold splits one tissue instead of fat from muscle, or None.

    CT: the threshold lies inside the fixed muscle range (``fat_hu``/``muscle_hu`` of the entry's
    ``fixed`` method: fat is x <= t, so t above the muscle range's lower bound calls muscle fat) or
    below the fat range's. MRI (no fixed range): the threshold lies within :data:`COMPONENT_SD`
    SDs of the mean of the pooled histogram's larger Gaussian component (muscle).
    """
    found = _split_inside(entry, method)
    if found is None:
        return None
    where, threshold = found
    modality = entry.modality
    return f"{MODALITY_NAMES.get(modality, modality)} {display_name(method)}: the threshold {threshold} lies {where}"


def _split_warning(entry: ModalityThresholds) -> CohortWarning | None:
    """One warning for every fitted method whose split lies inside one tissue (grouped by where)."""
    by_where: dict[str, list[str]] = {}
    for method in [m for m in method_order(entry.methods) if m != FIXED]:
        found = _split_inside(entry, method)
        if found is not None:
            by_where.setdefault(found[0], []).append(f"{display_name(method)} ({found[1]})")
    if not by_where:
        return None
    parts = []
    for where, methods in by_where.items():
        subject = (f"the threshold of {methods[0]} lies" if len(methods) == 1
                   else f"the thresholds of {', '.join(methods[:-1])} and {methods[-1]} lie")
        parts.append(f"{subject} {where.replace('it splits', 'each splits').replace('its fat', 'their fat')}"
                     if len(methods) > 1 else f"{subject} {where}")
    modality = entry.modality
    return CohortWarning("splits_one_tissue", modality, None,
                         f"{MODALITY_NAMES.get(modality, modality)}: {'; '.join(parts)}")


def robust_z(values: pd.Series, above_only: bool = False) -> pd.Series:
    """(x - median) / (1.4826 MAD) over the finite values, as a distance (``above_only``: signed, so only a
    value above the median can pass a positive bound); 0 everywhere when the MAD is 0; NaN stays NaN."""
    finite = values[np.isfinite(values)]
    median = float(finite.median()) if finite.size else float("nan")
    mad = 1.4826 * float((finite - median).abs().median()) if finite.size else 0.0
    if not mad > 0:
        return pd.Series(0.0, index=values.index)
    return (values - median if above_only else (values - median).abs()) / mad


def vs_fixed_flags(entry: ModalityThresholds, features: pd.DataFrame) -> tuple[list[CohortWarning], pd.DataFrame]:
    """The method-wide disagreements with fixed (cohort warnings) and, per series and method, whether
    the series' own disagreement is flagged (a bool frame indexed like ``features``)."""
    modality = entry.modality
    warnings, flags = [], pd.DataFrame(index=features.index)
    for method in [m for m in method_order(entry.methods) if m != FIXED]:
        column = vs_fixed_column(modality, method)
        if column not in features.columns:
            continue
        values = pd.to_numeric(features[column], errors="coerce")
        measured = values.dropna()
        over = values > VS_FIXED_WARN_PERCENT
        if measured.size and over.sum() > METHOD_WIDE_SHARE * measured.size:
            warnings.append(CohortWarning(
                "vs_fixed", modality, method,
                f"{MODALITY_NAMES.get(modality, modality)} {display_name(method)} classifies more than "
                f"{VS_FIXED_WARN_PERCENT:g} % of the ROI differently from the fixed HU range on {int(over.sum())} of "
                f"{measured.size} series (median {measured.median():.1f} %): a property of the method on this cohort, "
                f"so a series is flagged only where its disagreement is an outlier (robust z > {OUTLIER_Z:g})"))
            over = over & (robust_z(values) > OUTLIER_Z)
        flags[method] = over.fillna(False)
    return warnings, flags


def modality_cohort_warnings(entry: ModalityThresholds, features: pd.DataFrame | None) -> list[CohortWarning]:
    """The cohort warnings of one modality: one tissue, a split inside one tissue, method-wide vs fixed."""
    found = []
    diagnostic = entry.diagnostic
    if diagnostic is not None and diagnostic.likely_one_tissue:
        modality = entry.modality
        text = diagnostic.message or (f"{MODALITY_NAMES.get(modality, modality)}: the pooled training "
                                      "histogram looks like one tissue")
        found.append(CohortWarning("one_tissue", modality, None, text))
    split = _split_warning(entry)
    if split is not None:
        found.append(split)
    if features is not None:
        found += vs_fixed_flags(entry, features)[0]
    return found


def cohort_warnings(thresholds: Thresholds, features: pd.DataFrame | None) -> list[CohortWarning]:
    """Every cohort warning of a run, modality by modality (thresholds.json order)."""
    return [warning for entry in thresholds.modalities.values()
            for warning in modality_cohort_warnings(entry, features)]
