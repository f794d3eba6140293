"""The clinician-facing report of a run: one self-contained ``report.html``.

:func:`render_report` reads a run folder (``features.csv``, ``thresholds.json``, ``errors.csv``,
``provenance.json``, ``model.json``, ``tables/*.csv``, ``predictions.csv`` and the ROI sample
cache) and writes ``report.html`` next to them. Every figure is a PNG embedded as a base64
``data:`` URI and the CSS is inline, so the file opens offline from a shared drive with no
request to anything outside it. The sections follow the study (Tables 2-5, Figures 3-5):

1. header (engine version, date of the run, backend),
2. cohort (patients per split and label, patients with CT / MRI features, failures),
3. cohort-level thresholds (a table and the pooled training histogram with the three boundaries),
4. the study's tables (groups, clinical and imaging logistic regression, performance, CV AUC),
5. ROC curves per split (Figure 5), 6. feature box plots by label (Figure 3),
7. segmentation overlays (Figure 4), 8. errors, 9. provenance.

Only ``features.csv`` and ``thresholds.json`` are required; any other missing or unreadable piece
is reported in the page ("not available ...") instead of stopping the render, because a report
that says what is missing is more useful to a clinician than no report.

Figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, never
through ``pyplot``'s global state, so rendering is safe inside a Dask worker thread and needs no
display.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from kernels import FAT, classify

from .contract import ALL_METHODS as METHODS
from .contract import (
    CACHE_DIR,
    ERRORS_CSV,
    FEATURES_CSV,
    FIXED,
    METHOD_NAMES,
    MODALITIES,
    MODALITY_NAMES,
    MODEL_JSON,
    MRI_REFERENCE_CSV,
    PATIENTS_KEY,
    PREDICTIONS_CSV,
    PROVENANCE_JSON,
    QA_DIR,
    QA_INDEX,
    QA_PANELS_JSON,
    REPORT_HTML,
    SCANNERS_KEY,
    SPLIT_NAMES,
    SPLITS,
    STANDARDIZATION_KEY,
    STATS,
    STUDY_JSON,
    THRESHOLDS_JSON,
    TISSUES,
    feature_name,
    roi_volume_column,
    sample_path,
    scanner_label,
    summary_path,
    vs_fixed_column,
)
from .contract import TABLE_FILES as STUDY_TABLE_FILES
from .outputs import write_text

METHOD_STYLES = {"otsu": ("#1b9e77", "-"), "kmeans": ("#d95f02", "--"), "gmm": ("#7570b3", ":"),
                 "fixed": ("black", "-.")}
#: Outlines of each scanner's share of a pooled histogram (issue 16).
SCANNER_COLOURS = ("#e7298a", "#1f78b4", "#66a61e", "#a6761d")

# CT display window for overlays (HU): soft tissue, wide enough to show fat (-100) and muscle (+50).
CT_DISPLAY_WINDOW_HU = (-200.0, 250.0)
# Overlay colours (RGBA) as in the study's Figure 4: muscle blue, fat red, half transparent.
MUSCLE_RGBA = (0.12, 0.35, 1.0, 0.5)
FAT_RGBA = (1.0, 0.1, 0.1, 0.5)
# Box-plot colours as in the study's Figure 3: non-sarcopenia blue, sarcopenia red.
GROUP_COLOURS = {0: "#3b75af", 1: "#c0392b"}
FIGURE_DPI = 100

# Title and lead of each table the statistics stage writes; the file names come from the stage
# itself (engine.contract.TABLE_FILES), so the report never re-derives them.
TABLE_TEXT = {
    "table2": ("Table 2. Clinical characteristics by group",
               "Each clinical variable in patients without and with sarcopenia, per cohort: mean ± SD (median "
               "[Q1, Q3] where the test is Mann-Whitney U) or n (%), "
               "the test used (chosen as SPSS users expect: Lilliefors normality, Levene, Student/Welch t, "
               "Mann-Whitney U; Pearson chi-square or Fisher's exact test) and its p."),
    "table3": ("Table 3. Logistic regression of clinical variables",
               "Odds ratios for sarcopenia in the training cohort: each variable alone (univariable) and together "
               "after backward elimination (multivariable)."),
    "table4": ("Table 4. Logistic regression of imaging features",
               "Odds ratios for sarcopenia per one standard deviation of each muscle/fat feature, univariable and "
               "multivariable, per imaging model, in the training cohort."),
    "table5": ("Table 5. Diagnostic performance",
               "AUC with 95% CI (DeLong) per model and cohort, and sensitivity, specificity and accuracy at the "
               "cut-off chosen on the training cohort and applied unchanged elsewhere."),
    "cv": ("Cross-validated AUC (model selection)",
           "Stratified 5-fold cross-validation on the training cohort with the whole variable selection repeated "
           "inside every fold: the honest estimate that ranks the models. The apparent AUC is measured on the "
           "patients the model was fitted to."),
    "table_combined": ("Combined model (clinical + best imaging model)",
                       "Odds ratios of the model that adds the best imaging model's features to the clinical "
                       "variables (imaging ORs per SD)."),
    "comparisons": ("Model comparisons (DeLong)",
                    "Paired DeLong tests between the combined, best imaging and clinical models, on the held-out "
                    "cohorts only (on the training cohort such a test is not valid)."),
}


# ----------------------------------------------------------------------------------------------
# reading the run folder


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from the run folder {path.parent}: the report needs "
                                f"it (re-run the study, or point `sarco report` at a finished run)")
    return path


def _read_json_quiet(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_json(path: Path, notes: list[str], what: str) -> dict | None:
    if not path.is_file():
        notes.append(f"{path.name} not found: {what} not available.")
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}): {what} not available.")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} does not hold a JSON object: {what} not available.")
        return None
    return data


def _read_csv(path: Path, notes: list[str], what: str, **kwargs) -> pd.DataFrame | None:
    if not path.is_file():
        notes.append(f"{path.name} not found: {what} not available.")
        return None
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}): {what} not available.")
        return None


def _utc(timestamp) -> str | None:
    try:
        return datetime.fromtimestamp(float(timestamp), tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# ----------------------------------------------------------------------------------------------
# formatting


def format_number(value: Any) -> str:
    """A number as a clinician reads it: 3 decimals, large values without decimals, tiny in e-notation.

    NaN and None give an empty string; integers (and integral floats) are written as integers.
    """
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return ""
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0.000"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 0.001:
        return f"{x:.2e}"
    return f"{x:.3f}"


def format_p(value: Any) -> str:
    """A p-value: 3 decimals, and ``<0.001`` below that."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if math.isnan(x):
        return ""
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _is_p_column(name: str) -> bool:
    tokens = [t for t in re.split(r"[^a-z0-9]+", str(name).lower()) if t]
    return "p" in tokens or "pvalue" in tokens


def _is_count_column(name: str) -> bool:
    tokens = [t for t in re.split(r"[^a-z0-9]+", str(name).lower()) if t]
    return bool({"n", "count", "counts", "folds", "events", "voxels", "patients"} & set(tokens))


def _threshold_decimals(bin_width: float | None) -> int:
    # A threshold is only as precise as the histogram bin it came from: one digit finer than the bin.
    if not bin_width or not math.isfinite(bin_width) or bin_width <= 0:
        return 2
    return max(1, 1 - math.floor(math.log10(bin_width)))


def format_threshold(value: Any, bin_width: float | None) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(x):
        return ""
    return f"{x:.{_threshold_decimals(bin_width)}f}"


# Column-name words spelled out for readers of the statistics tables (``uni_or_ci_low``).
HEADER_WORDS = {"uni": "univariable", "multi": "multivariable", "or": "OR", "ci": "CI", "auc": "AUC", "sd": "SD",
                "ppv": "PPV", "npv": "NPV", "coef": "coef.", "j": "J", "cv": "CV"}


def readable_header(name: str) -> str:
    """``uni_or_ci_low`` -> ``univariable OR CI low``: spaces let a header wrap, so a wide table narrows."""
    return " ".join(HEADER_WORDS.get(word, word) for word in str(name).split("_") if word)


def _table(columns: list[str], rows: list[list[str]], numeric: list[bool], titles: list[str] | None = None,
           dropped: list[str] | None = None) -> dict:
    """The template's table: headers, rows of display strings, a CSS class per column.

    Numbers are right-aligned; short text does not wrap; long text gets a minimum width so that a
    sentence in a ``note`` column does not turn every row into a tall narrow column.
    """
    classes = []
    for i, is_num in enumerate(numeric):
        longest = max((len(row[i]) for row in rows), default=0)
        classes.append("num" if is_num else "long" if longest > 40 else "short" if longest <= 18 else "")
    return {"kind": "plain", "columns": columns, "rows": rows, "classes": classes, "titles": titles or columns,
            "dropped": dropped or []}


def html_table(frame: pd.DataFrame) -> dict:
    """A DataFrame as the template's table (see :func:`_table`), every value a display string.

    Float columns whose values are all integral are written as integers; p-value columns (``p``,
    ``p_...``, ``..._p``) as :func:`format_p`; other numbers as :func:`format_number`. Columns
    empty in every row are left out and listed in ``dropped``; headers are spelled out by
    :func:`readable_header`, the CSV's own name kept as the header's tooltip.
    """
    dropped = [str(c) for c in frame.columns if len(frame) and frame[c].isna().all()]
    frame = frame[[c for c in frame.columns if str(c) not in dropped]]
    columns = [str(c) for c in frame.columns]
    formatters = []
    numeric = []
    for name in frame.columns:
        series = frame[name]
        is_num = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        numeric.append(bool(is_num))
        if is_num and _is_p_column(name):
            formatters.append(format_p)
        elif is_num and pd.api.types.is_float_dtype(series):
            finite = series.dropna()
            finite = finite[np.isfinite(finite)]
            # a count read as float (it has empty cells) is still a count; an AUC of exactly 1 is not
            integral = len(finite) and bool((finite == finite.round()).all()) and bool((finite.abs() < 1e12).all())
            if integral and (_is_count_column(name) or bool((finite.abs() > 1).any())):
                formatters.append(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                  else format_number(int(v)) if math.isfinite(v) else format_number(v))
            else:
                formatters.append(format_number)
        elif is_num:
            formatters.append(format_number)
        elif pd.api.types.is_bool_dtype(series):
            formatters.append(lambda v: "" if v is None or v is pd.NA else "yes" if v else "no")
        else:
            formatters.append(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    rows = []
    for record in frame.itertuples(index=False, name=None):
        rows.append([fmt(v) for fmt, v in zip(formatters, record, strict=True)])
    return _table([readable_header(c) for c in columns], rows, numeric, titles=columns, dropped=dropped)


def model_label(name: str) -> str:
    """``ct_otsu`` -> ``CT Otsu``, ``clinical`` -> ``Clinical``."""
    parts = str(name).split("_", 1)
    if len(parts) == 2 and parts[0] in MODALITY_NAMES and parts[1] in METHOD_NAMES:
        return f"{MODALITY_NAMES[parts[0]]} {METHOD_NAMES[parts[1]]}"
    return str(name).replace("_", " ").capitalize()


# ----------------------------------------------------------------------------------------------
# figures


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _png_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)  # Agg canvas: no display, no pyplot state
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _threshold_figure(modality: str, info: dict, decimals: int) -> str:
    """Pooled training histogram with the three fitted boundaries (vertical lines)."""
    hist = info["histogram"]
    counts = np.asarray(hist["counts"], dtype=float)
    lo, width = float(hist["lo"]), float(hist["bin_width"])
    edges = lo - width / 2 + width * np.arange(counts.size + 1)
    unit = info.get("unit") or ""
    fig = _figure(12.0, 4.0)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color="#9aa5b1", alpha=0.8, label="pooled training voxels")
    _scanner_shares(ax, hist, edges)
    ax.set_xlim(edges[0], edges[-1])
    top = counts.max() if counts.size and counts.max() > 0 else 1.0
    ax.set_ylim(0, top * 1.18)
    for method, fit in info.get("methods", {}).items():
        t = fit.get("threshold") if isinstance(fit, dict) else None
        if t is None or not math.isfinite(float(t)):
            continue
        colour, style = METHOD_STYLES.get(method, ("black", "-"))
        ax.axvline(float(t), color=colour, linestyle=style, linewidth=2,
                   label=f"{METHOD_NAMES.get(method, method)}: {float(t):.{decimals}f} {unit}".rstrip())
    fat_low = info.get("fat_is", "low") == "low"
    ax.text(0.01, 0.97, "← fat" if fat_low else "← muscle", transform=ax.transAxes, ha="left", va="top",
            color=FAT_RGBA[:3] if fat_low else MUSCLE_RGBA[:3], fontsize=11, fontweight="bold")
    ax.text(0.99, 0.97, "muscle →" if fat_low else "fat →", transform=ax.transAxes, ha="right", va="top",
            color=MUSCLE_RGBA[:3] if fat_low else FAT_RGBA[:3], fontsize=11, fontweight="bold")
    ax.set_xlabel(f"intensity ({unit})" if unit else "intensity")
    ax.set_ylabel("voxels per bin")
    ax.set_title(f"{MODALITY_NAMES.get(modality, modality)}: pooled training histogram "
                 f"({info.get('n_patients', '?')} patients)")
    fig.legend(loc="outside lower center", fontsize=9.5, ncols=4, frameon=False)
    return _png_data_uri(fig)


def _scanner_shares(ax, hist: dict, edges: np.ndarray) -> None:
    """Issue 16: each scanner's share of the pooled histogram, as outlines over the pooled bars."""
    for k, (label, counts) in enumerate(sorted((hist.get("by_scanner") or {}).items())):
        ax.stairs(np.asarray(counts, dtype=float), edges, color=SCANNER_COLOURS[k % len(SCANNER_COLOURS)],
                  linewidth=1.4, label=f"{label} share")


def scanner_sections(thresholds: dict) -> list[dict]:
    """Issue 16: the scanners of each modality's training cohort and, for standardised MRI, their scales.

    Kept apart from the threshold tables so the report's table code can change without it.
    """
    sections = []
    for modality, info in (thresholds.get("modalities") or {}).items():
        scanners = (info or {}).get(SCANNERS_KEY) if isinstance(info, dict) else None
        if not scanners:
            continue
        standardize = info.get("standardize")
        rows = []
        for s in scanners:
            scale = s.get("scale_median")
            spread = s.get("scale_range") or []
            rows.append([str(s.get("label", "")), str(s.get("n_patients", "")),
                         format_number(scale) if scale is not None else "–",
                         " – ".join(format_number(v) for v in spread) if spread else "–"])
        mixed = modality == "mri" and standardize == "none" and len(scanners) > 1
        sections.append({
            "name": MODALITY_NAMES.get(modality, modality.upper()), "warn": mixed,
            "message": (f"{len(scanners)} scanners pooled without intensity standardisation: one threshold on "
                        "signal without a unit; the MRI fat features are not comparable between scanners."
                        if mixed else (f"standardisation: {standardize}" if standardize else "")),
            "table": _table(["Scanner (header)", "Training patients", "Scale (median)", "Scale (range)"], rows,
                            [False, True, True, True]),
        })
    return sections


def mri_references(run_dir: Path) -> dict[str, dict]:
    """Issue 24: the run folder's ``mri_reference.csv`` by patient id ({} when absent or unreadable)."""
    try:
        table = pd.read_csv(Path(run_dir) / MRI_REFERENCE_CSV, dtype={"patient_id": str}, keep_default_na=False)
    except (OSError, ValueError):
        return {}
    return {str(row["patient_id"]): row for row in table.to_dict("records")}


def _reference_cells(reference: dict) -> list[str]:
    """Issue 24: a series' reference (region), its signal before scaling, why it was chosen, its flag."""
    region = f"{reference['reference']} ({reference['region']})" if reference.get("region") else reference["reference"]
    return [str(region), format_number(float(reference["value"])), str(reference.get("reason") or ""),
            str(reference.get("flag") or "")]


def mri_series_by_scanner(run_dir: Path, features: pd.DataFrame | None) -> dict | None:
    """Issue 16: each MRI series' scanner and fitted scale (cache summaries), and the MRI fat
    percent per scanner and method (median over its patients), so a scanner the pooled
    threshold treats differently shows."""
    if features is None or "patient_id" not in features:
        return None
    rows, by_scanner = [], {}
    references = mri_references(run_dir)   # issue 24: the published reference of each series
    for pid in features["patient_id"].astype(str):
        summary = _read_json_quiet(summary_path(run_dir / CACHE_DIR, pid, "mri"))
        if not summary or summary.get("status") != "ok":
            continue
        label = scanner_label(summary.get("scanner"))
        by_scanner.setdefault(label, []).append(pid)
        scale = (summary.get(STANDARDIZATION_KEY) or {}).get("scale")
        reference = references.get(pid)
        rows.append([pid, label, format_number(scale) if scale is not None else "–",
                     *(_reference_cells(reference) if reference else ["–", "–", "–", ""])])
    if not rows:
        return None
    methods = [m for m in METHODS if feature_name("mri", m, "fat", "percent") in features]
    indexed = features.set_index(features["patient_id"].astype(str))
    result_rows = []
    for label, pids in sorted(by_scanner.items()):
        cells = [format_number(pd.to_numeric(indexed.loc[pids, feature_name("mri", m, "fat", "percent")],
                                             errors="coerce").median()) for m in methods]
        result_rows.append([label, str(len(pids)), *cells])
    return {
        "flagged": [pid for pid, r in references.items() if r.get("flag")],
        "series": _table(["Patient", "Scanner", "Scale", "Reference (region)", "Reference signal", "Reason",
                          "Flag"], rows, [False, False, True, False, True, False, False]),
        "result": _table(["Scanner", "Patients", *[f"{METHOD_NAMES[m]} fat % (median)" for m in methods]],
                         result_rows, [False, True, *[True] * len(methods)]),
    }


def patients_per_model(study: dict | None) -> dict | None:
    """Issue 16: per model and split, patients labelled, used and left out (from study.json)."""
    rows = []
    for name, model in ((study or {}).get("models") or {}).items():
        for split, entry in (model.get(PATIENTS_KEY) or {}).items():
            dropped = entry.get("dropped") or {}
            rows.append([model_label(name), SPLIT_NAMES.get(split, split), str(entry.get("labelled", "")),
                         str(entry.get("used", "")), "; ".join(f"{v}: {k}" for k, v in dropped.items()) or "–"])
    if not rows:
        return None
    return _table(["Model", "Split", "Labelled", "Used", "Left out (why)"], rows, [False, False, True, True, False])


def _roc_curves(y: pd.Series, predictions: pd.DataFrame, rows, models: list[str], split: str, notes: list[str]):
    """One curve per distinct ROC on a split: models with identical curves share one, named together."""
    from sklearn.metrics import roc_curve

    from .stats.roc import auc_ci

    curves: list[dict] = []
    for model in models:
        score = pd.to_numeric(predictions.loc[rows, f"p_{model}"], errors="coerce")
        ok = score.notna() & np.isfinite(score)
        if y[ok].nunique() < 2:
            notes.append(f"ROC curves: {model_label(model)} has no usable predictions for both classes in the "
                         f"{SPLIT_NAMES.get(split, split).lower()} split: curve left out.")
            continue
        fpr, tpr, _ = roc_curve(y[ok], score[ok])
        same = next((c for c in curves if c["fpr"].shape == fpr.shape and np.array_equal(c["fpr"], fpr)
                     and np.array_equal(c["tpr"], tpr) and c["missing"] == int((~ok).sum())), None)
        if same is not None:
            same["models"].append(model)
            continue
        auc, low, high = auc_ci(y[ok].to_numpy(), score[ok].to_numpy())
        curves.append({"models": [model], "fpr": fpr, "tpr": tpr, "auc": auc, "ci": (low, high),
                       "missing": int((~ok).sum())})
    return curves


def _roc_figure(predictions: pd.DataFrame, notes: list[str]) -> str | None:
    """Figure 5: one ROC panel per split with both classes; each distinct curve once, AUC (95% CI) in the legend.

    Models whose curves coincide on a split (the combined model that kept only the imaging features,
    say) are drawn once and named together, so that no curve hides another.
    """
    models = [c[2:] for c in predictions.columns if c.startswith("p_")]
    if not models:
        notes.append("predictions.csv has no probability column (p_<model>): no ROC curves.")
        return None
    if "label" not in predictions:
        notes.append("predictions.csv has no label column: no ROC curves.")
        return None
    labels = pd.to_numeric(predictions["label"], errors="coerce")
    split_col = (predictions["split"].astype(str) if "split" in predictions
                 else pd.Series("all", index=predictions.index))
    present = [s for s in SPLITS if (split_col == s).any()] + sorted(set(split_col) - set(SPLITS) - {"nan", ""})
    panels = []
    for split in present:
        rows = (split_col == split) & labels.isin([0, 1])
        y = labels[rows].astype(int)
        if y.nunique() < 2:
            notes.append(f"ROC curves: the {SPLIT_NAMES.get(split, split).lower()} split has "
                         f"{'no labelled patient' if y.empty else 'only one class'}: no curve drawn.")
            continue
        panels.append((split, rows))
    if not panels:
        return None
    fig = _figure(min(5.4 * len(panels), 16.2), 5.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = _model_colours(models)
    for ax, (split, rows) in zip(axes, panels, strict=False):
        y_all = labels[rows].astype(int)
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=1, linestyle="--")
        for curve in _roc_curves(y_all, predictions, rows, models, split, notes):
            colour, style = colours[curve["models"][0]]
            name = " = ".join(model_label(m) for m in curve["models"])
            ci = f" ({curve['ci'][0]:.2f}–{curve['ci'][1]:.2f})" if np.isfinite(curve["ci"][0]) else ""
            missing = f", {curve['missing']} missing" if curve["missing"] else ""
            ax.plot(curve["fpr"], curve["tpr"], color=colour, linestyle=style, linewidth=1.8,
                    label=f"{name}: {curve['auc']:.3f}{ci}{missing}")
        n_pos = int((y_all == 1).sum())
        kind = ", apparent" if split == "train" else ""
        ax.set_title(f"{SPLIT_NAMES.get(split, split)} (n={len(y_all)}, {n_pos} sarcopenia{kind})", fontsize=10)
        ax.set_xlabel("1 − specificity")
        ax.set_ylabel("sensitivity")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize=7.5, title="AUC (95% CI)", title_fontsize=8, framealpha=0.9)
    return _png_data_uri(fig)


def _model_colours(models: list[str]) -> dict[str, tuple[str, str]]:
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
               "#1f78b4", "#b2df8a"]
    style_for = {"ct": "-", "mri": "--"}
    return {m: (palette[i % len(palette)], style_for.get(m.split("_", 1)[0], "-.")) for i, m in enumerate(models)}


def _feature_unit(modality: str, stat: str, unit: str) -> str:
    return {"mean": f"mean ({unit})" if unit else "mean", "volume": "volume (cm³)", "percent": "percent (%)"}[stat]


#: Short names of Table 2's tests for the box plots' titles.
_SHORT_TEST = {"Student's t-test": "t", "Welch's t-test": "Welch"}


def _box_p(groups: list[np.ndarray]) -> tuple[float, str]:
    """(p, short test name) of a feature's two groups by Table 2's rule (issue 21: was Mann-Whitney for all)."""
    from .stats import groups as group_tests

    test, _, p, _ = group_tests.compare_continuous(groups[0], groups[1])
    return p, _SHORT_TEST.get(test, "MW")


def _box_figure(modality: str, features: pd.DataFrame, methods: list[str], unit: str) -> str | None:
    """Figure 3: every feature of ``modality`` by label on the training split (rows: methods)."""

    train = features[features["split"].astype(str) == "train"]
    labels = pd.to_numeric(train["label"], errors="coerce")
    train = train[labels.isin([0, 1])]
    labels = labels[labels.isin([0, 1])].astype(int)
    if train.empty:
        return None
    columns = [(t, s) for t in TISSUES for s in STATS]
    fig = _figure(2.35 * len(columns), 2.45 * len(methods) + 0.5)
    axes = fig.subplots(len(methods), len(columns), squeeze=False)
    for r, method in enumerate(methods):
        for c, (tissue, stat) in enumerate(columns):
            ax = axes[r][c]
            name = f"{modality}_{method}_{tissue}_{stat}"
            groups = []
            for label in (0, 1):
                values = pd.to_numeric(train.loc[labels == label, name], errors="coerce") if name in train else \
                    pd.Series(dtype=float)
                values = values[np.isfinite(values)].to_numpy(float)
                groups.append(values / 1000.0 if stat == "volume" else values)  # mm³ -> cm³
            drawn = [g for g in groups if g.size]
            if drawn:
                parts = ax.boxplot(groups, tick_labels=["non-sarc.", "sarc."], widths=0.6, patch_artist=True,
                                   medianprops={"color": "black"}, flierprops={"markersize": 3})
                for patch, label in zip(parts["boxes"], (0, 1), strict=True):
                    patch.set_facecolor(GROUP_COLOURS[label])
                    patch.set_alpha(0.55)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888888")
                ax.set_xticks([])
            title = f"{METHOD_NAMES.get(method, method)} {tissue} {stat}"
            if all(g.size >= 2 for g in groups):
                p, test = _box_p(groups)
                star = " *" if p < 0.05 else ""
                p_text = format_p(p)
                p_text = p_text if p_text.startswith("<") else f"={p_text}"
                ax.set_title(f"{title}\np{p_text} ({test}){star}", fontsize=8.5,
                             color="#c0392b" if star else "black")
            else:
                ax.set_title(title, fontsize=8.5)
            ax.tick_params(labelsize=7.5)
            ax.set_ylabel(_feature_unit(modality, stat, unit), fontsize=7.5)
    fig.suptitle(f"{MODALITY_NAMES.get(modality, modality)} features by group, training split "
                 f"(n={int((labels == 0).sum())} non-sarcopenia, {int((labels == 1).sum())} sarcopenia; "
                 f"p: the test Table 2's rule picks, t, Welch or MW = Mann-Whitney U; * p<0.05)", fontsize=10)
    return _png_data_uri(fig)


def _load_sample(path: Path):
    """The cached ROI sample through the engine's own reader (:class:`engine.preprocess.RoiSample`), or None."""
    from .preprocess import RoiSample

    try:
        return RoiSample.load(path)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):  # damaged cache file: skip
        return None


def _slice_pixels(sample) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(y, x, values, in_window) of the ROI voxels on the preview slice, or None if inconsistent."""
    size = np.asarray(sample.grid.size, dtype=np.int64).ravel()
    preview = np.asarray(sample.preview)
    if size.size != 3 or preview.ndim != 2 or preview.shape != (int(size[1]), int(size[0])):
        return None
    plane = int(size[0] * size[1])
    flat = np.asarray(sample.flat_index, dtype=np.int64)
    on_slice = flat // plane == int(sample.preview_z)
    y, x = np.divmod(flat[on_slice] % plane, int(size[0]))
    return y, x, np.asarray(sample.values)[on_slice], np.asarray(sample.in_window, bool)[on_slice]


def _overlay_examples(run_dir: Path, features: pd.DataFrame, modality: str) -> list[tuple[int, str, dict]]:
    """One label-1 and one label-0 patient with a cache file: first by patient_id, training split first."""
    cache = run_dir / CACHE_DIR
    if not cache.is_dir():
        return []
    labels = pd.to_numeric(features["label"], errors="coerce")
    split = features["split"].astype(str)
    examples = []
    for label in (1, 0):
        chosen = None
        for in_train in (True, False):
            rows = features[(labels == label) & ((split == "train") == in_train)]
            for pid in sorted(rows["patient_id"].astype(str)):
                sample = _load_sample(sample_path(cache, pid, modality))
                if sample is not None and _slice_pixels(sample) is not None:
                    chosen = (label, pid, sample)
                    break
            if chosen:
                break
        if chosen:
            examples.append(chosen)
    return examples


def _overlay_figure(modality: str, info: dict, examples: list[tuple[int, str, dict]]) -> str:
    """Figure 4: preview slice, then muscle (blue) and fat (red) per method, one row per example."""
    methods = [m for m in METHODS if m in info.get("methods", {})] + \
        [m for m in info.get("methods", {}) if m not in METHODS]
    fat_low = info.get("fat_is", "low") == "low"
    ncols = 1 + len(methods)
    fig = _figure(2.9 * ncols, 3.0 * len(examples) + 0.3)
    axes = fig.subplots(len(examples), ncols, squeeze=False)
    for r, (label, pid, sample) in enumerate(examples):
        preview = np.asarray(sample.preview, dtype=float)
        if modality == "ct":
            vmin, vmax = CT_DISPLAY_WINDOW_HU
        else:
            finite = preview[np.isfinite(preview)]
            vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
            if vmax <= vmin:
                vmax = vmin + 1.0
        y, x, values, in_window = _slice_pixels(sample)
        group = "sarcopenia" if label == 1 else "non-sarcopenia"
        for c in range(ncols):
            ax = axes[r][c]
            ax.imshow(preview, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(f"{pid} ({group})\nslice z={int(sample.preview_z)}", fontsize=8.5)
                continue
            method = methods[c - 1]
            fit = info["methods"][method] if isinstance(info["methods"][method], dict) else {}
            t = fit.get("threshold")
            t = float(t) if isinstance(t, (int, float)) else float("nan")
            if not math.isfinite(t):
                ax.set_title(f"{MODALITY_NAMES.get(modality, modality)} {METHOD_NAMES.get(method, method)}\n"
                             f"no threshold fitted", fontsize=8.5)
                continue
            # the engine's classify kernel, so the overlay is the habitat map's slice, voxel for voxel
            fat = np.zeros(values.shape, bool)
            fat[in_window] = classify(values[in_window], [t], fat_is="low" if fat_low else "high")[0] == FAT
            overlay = np.zeros(preview.shape + (4,), dtype=float)
            overlay[y[in_window & ~fat], x[in_window & ~fat]] = MUSCLE_RGBA
            overlay[y[in_window & fat], x[in_window & fat]] = FAT_RGBA
            ax.imshow(overlay, interpolation="nearest")
            n = int(in_window.sum())
            share = 100.0 * int((fat & in_window).sum()) / n if n else float("nan")
            ax.set_title(f"{MODALITY_NAMES.get(modality, modality)} {METHOD_NAMES.get(method, method)}\n"
                         f"fat {share:.1f}% of ROI on slice", fontsize=8.5)
    fig.suptitle(f"{MODALITY_NAMES.get(modality, modality)}: muscle (blue) and fat (red) on the slice with most ROI "
                 f"voxels", fontsize=10)
    return _png_data_uri(fig)


def _safe_figure(notes: list[str], what: str, draw, *args):
    # One figure that cannot be drawn must not cost the clinician the rest of the report.
    try:
        return draw(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the page, the rest still renders
        notes.append(f"{what} could not be drawn ({type(exc).__name__}: {exc}).")
        return None


# ----------------------------------------------------------------------------------------------
# sections


def _modality_has_features(features: pd.DataFrame, modality: str) -> pd.Series:
    prefix = tuple(f"{modality}_{m}_" for m in METHODS)
    cols = [c for c in features.columns if c.startswith(prefix) or c == roi_volume_column(modality)]
    if not cols:
        return pd.Series(False, index=features.index)
    return features[cols].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)


def _cohort_section(features: pd.DataFrame, errors: pd.DataFrame | None) -> dict:
    split = features["split"].fillna("").astype(str).replace({"nan": ""})
    labels = pd.to_numeric(features["label"], errors="coerce")
    order = [s for s in SPLITS if (split == s).any()] + sorted(set(split) - set(SPLITS))
    rows = []
    for s in order:
        in_split = split == s
        rows.append([SPLIT_NAMES.get(s, s or "(none)"), str(int((in_split & (labels == 1)).sum())),
                     str(int((in_split & (labels == 0)).sum())), str(int((in_split & labels.isna()).sum())),
                     str(int(in_split.sum()))])
    rows.append(["All", str(int((labels == 1).sum())), str(int((labels == 0).sum())), str(int(labels.isna().sum())),
                 str(len(features))])
    modality_rows = []
    for m in MODALITIES:
        has = _modality_has_features(features, m)
        failed = 0 if errors is None or errors.empty or "modality" not in errors else \
            int(errors.loc[errors["modality"].astype(str) == m, "patient_id"].nunique())
        modality_rows.append([MODALITY_NAMES[m], str(int(has.sum())), str(failed)])
    n_failures = 0 if errors is None else len(errors)
    failed_patients = 0 if errors is None or errors.empty or "patient_id" not in errors \
        else int(errors["patient_id"].nunique())
    return {"splits": _table(["Split", "Sarcopenia (1)", "Non-sarcopenia (0)", "Unlabelled", "Total"], rows,
                             [False, True, True, True, True]),
            "modalities": _table(["Modality", "Patients with features", "Patients with an error"], modality_rows,
                                 [False, True, True]),
            "n_patients": len(features), "n_failures": n_failures, "failed_patients": failed_patients,
            # without errors.csv (a 'sarco study --table' folder) failures are unknown, not absent
            "errors_known": errors is not None}


def _fit_details(fit: dict) -> str:
    parts = []
    for key, value in fit.items():
        if key in ("threshold", "method"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{key} {format_number(value)}")
        elif isinstance(value, list) and 0 < len(value) <= 4 and all(isinstance(v, (int, float)) for v in value):
            parts.append(f"{key} " + ", ".join(format_number(v) for v in value))
        elif isinstance(value, str) and len(value) < 40:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


def diagnostic_sections(thresholds: dict, features: pd.DataFrame | None) -> list[dict]:
    """Issue 18: per modality, the bimodality diagnostic and the per-patient disagreement with fixed.

    Kept apart from the threshold tables so the report's table code can change without it.
    """
    sections = []
    for modality, info in (thresholds.get("modalities") or {}).items():
        diagnostic = (info or {}).get("diagnostic") if isinstance(info, dict) else None
        if not isinstance(diagnostic, dict):
            continue
        rows = []
        for method in [m for m in METHODS if m in (info.get("methods") or {}) and m != FIXED]:
            column = vs_fixed_column(modality, method)
            if features is None or column not in features.columns or not features[column].notna().any():
                continue
            values = features[column].dropna()
            shift = (info["methods"][method] or {}).get("vs_fixed_fat_bound_hu")
            rows.append([METHOD_NAMES.get(method, method), format_number(shift), format_number(values.median()),
                         format_number(values.max())])
        sections.append({
            "name": MODALITY_NAMES.get(modality, modality.upper()), "warn": bool(diagnostic.get("likely_one_tissue")),
            "message": str(diagnostic.get("message") or ""),
            "table": _table(["Method", "Threshold − fixed fat bound (HU)", "Median % of ROI classified differently",
                             "Max %"], rows, [False, True, True, True]) if rows else None,
        })
    return sections


def _threshold_sections(thresholds: dict, notes: list[str]) -> list[dict]:
    sections = []
    for modality, info in (thresholds.get("modalities") or {}).items():
        if not isinstance(info, dict):
            continue
        unit = info.get("unit") or ""
        bin_width = (info.get("histogram") or {}).get("bin_width")
        decimals = _threshold_decimals(bin_width)
        fat_low = info.get("fat_is", "low") == "low"
        methods = info.get("methods") or {}
        rows = []
        for method in [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]:
            fit = methods[method] if isinstance(methods[method], dict) else {}
            t = fit.get("threshold")
            text = format_threshold(t, bin_width)
            if not text:
                classification = "not fitted"
            else:
                classification = f"fat ≤ {text} < muscle" if fat_low else f"muscle ≤ {text} < fat"
            rows.append([METHOD_NAMES.get(method, method), text or "–", unit, classification, _fit_details(fit)])
        figure = None
        if info.get("histogram"):
            figure = _safe_figure(notes, f"The {MODALITY_NAMES.get(modality, modality)} histogram figure",
                                  _threshold_figure, modality, info, decimals)
        else:
            notes.append(f"thresholds.json has no pooled histogram for {modality.upper()}: no histogram figure.")
        sections.append({
            "modality": modality, "name": MODALITY_NAMES.get(modality, modality.upper()), "unit": unit,
            "fat_side": ("fat is the low class: voxels at or below the threshold are fat, above it muscle"
                         if fat_low else "fat is the high class: voxels above the threshold are fat, at or below "
                                         "it muscle"),
            "n_patients": info.get("n_patients"), "n_voxels": format_number(info.get("n_voxels")),
            "table": _table(["Method", "Threshold", "Unit", "Classification", "Fit details"], rows,
                            [False, True, False, False, False]),
            "figure": figure,
        })
    return sections


def _tables_section(run_dir: Path) -> tuple[list[dict], str | None]:
    from .report_tables import RENDERERS

    tables_dir = run_dir / "tables"
    if not tables_dir.is_dir():
        return [], ("not available: the run folder has no tables/ folder (statistics were disabled or failed; "
                    "see the notes below)")
    tables = []
    study = _read_json_quiet(run_dir / STUDY_JSON) or {}
    # a combined model that kept only the clinical variables says why (issue 21)
    same_as_clinical = ((study.get("models") or {}).get("combined") or {}).get("same_as_clinical")
    for key, (title, lead) in TABLE_TEXT.items():
        filename = STUDY_TABLE_FILES[key]
        path = tables_dir / filename
        if key == "table_combined" and same_as_clinical:
            lead = f"{lead} Why it matches the clinical model: {same_as_clinical}."
        entry = {"key": key, "title": title, "lead": lead, "table": None, "missing": None}
        if not path.is_file():
            if key in ("table_combined", "comparisons"):
                continue  # optional tables: absent when there is nothing to combine or compare
            entry["missing"] = f"not available: tables/{filename} was not written by this run."
        else:
            try:
                frame = pd.read_csv(path)
                entry["table"] = _render_table(RENDERERS.get(key), frame)
                if frame.empty:
                    entry["missing"] = f"tables/{filename} has no rows."
            except pd.errors.EmptyDataError:
                entry["missing"] = f"tables/{filename} is empty."
            except (OSError, ValueError) as exc:
                entry["missing"] = f"not available: tables/{filename} could not be read ({exc})."
        tables.append(entry)
    # Tables the statistics stage writes beyond those it names: shown as they are.
    known = set(STUDY_TABLE_FILES.values())
    for path in sorted(tables_dir.glob("*.csv")):
        if path.name in known:
            continue
        entry = {"key": path.stem, "title": path.stem.replace("_", " ").capitalize(),
                 "lead": f"Additional table written by the statistics stage (tables/{path.name}).",
                 "table": None, "missing": None}
        try:
            entry["table"] = html_table(pd.read_csv(path))
        except pd.errors.EmptyDataError:
            entry["missing"] = f"tables/{path.name} is empty."
        except (OSError, ValueError) as exc:
            entry["missing"] = f"tables/{path.name} could not be read ({exc})."
        tables.append(entry)
    return tables, None


def _render_table(renderer, frame: pd.DataFrame) -> dict:
    """The clinician's layout of a statistics table; the plain CSV layout for a table of another shape."""
    if renderer is not None and len(frame):
        try:
            return renderer(frame)
        except (KeyError, ValueError, TypeError):
            pass  # a CSV from another engine version: shown as it is rather than not at all
    return html_table(frame)


def _errors_section(errors: pd.DataFrame | None) -> dict:
    if errors is None:
        return {"available": False, "table": None, "by_stage": None, "count": 0}
    columns = [c for c in ("patient_id", "modality", "stage", "reason") if c in errors.columns]
    frame = errors[columns] if columns else errors
    by_stage = None
    if "stage" in errors and not errors.empty:
        counts = errors["stage"].fillna("").astype(str).replace("", "(unknown)").value_counts()
        by_stage = _table(["Stage", "Errors"], [[s, str(int(n))] for s, n in counts.items()], [False, True])
    headers = {"patient_id": "Patient", "modality": "Modality", "stage": "Stage", "reason": "Reason"}
    table = _table([headers.get(c, c) for c in frame.columns],
                   [["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False, name=None)],
                   [False] * len(frame.columns))
    return {"available": True, "table": table, "by_stage": by_stage, "count": len(errors)}


def _config_text(config: Any) -> str:
    if config is None:
        return ""
    try:
        import yaml

        class _Dumper(yaml.SafeDumper):
            pass

        def _list(dumper, value):
            # [1, 1, 1] reads better than three lines of "- 1"; nested lists stay in block style
            flow = all(not isinstance(v, (list, dict)) for v in value)
            return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

        _Dumper.add_representer(list, _list)
        _Dumper.add_representer(tuple, _list)
        return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True).rstrip()
    except Exception:  # noqa: BLE001 - a value YAML cannot represent: fall back to JSON
        return json.dumps(config, indent=2, default=str)


def _run_name(run_dir: Path, provenance: dict | None, model: dict | None) -> str:
    """What identifies the run (issue 21: the folder's name alone, often ``run``): the command and the
    manifest (or feature table) it read, when it started, and the folder."""
    provenance = provenance or {}
    manifest = provenance.get("manifest") if isinstance(provenance.get("manifest"), dict) else {}
    source_table = (model or {}).get("source_table")
    parts = []
    if manifest.get("name"):
        parts.append(f"sarco {provenance.get('mode') or 'run'} of {manifest['name']}")
    elif source_table:
        parts.append(f"sarco study --table {Path(str(source_table)).name}")
    started = _utc(provenance.get("started_unix"))
    if started:
        parts.append(f"started {started}")
    parts.append(f"folder {run_dir.resolve().name}")
    return ", ".join(parts)


def _provenance_section(provenance: dict | None) -> dict | None:
    if provenance is None:
        return None
    versions = provenance.get("versions") or {}
    started, finished = provenance.get("started_unix"), provenance.get("finished_unix")
    duration = None
    try:
        seconds = float(finished) - float(started)
        duration = f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
    except (TypeError, ValueError):
        pass
    hashes = provenance.get("input_blake3") or {}
    return {
        "config": _config_text(provenance.get("config")),
        "versions": _table(["Package", "Version"], [[str(k), str(v)] for k, v in versions.items()], [False, False]),
        "platform": provenance.get("platform"), "backend": provenance.get("backend"),
        "mode": provenance.get("mode"), "started": _utc(started), "finished": _utc(finished),
        "duration": duration, "n_hashes": len(hashes) if isinstance(hashes, dict) else 0,
    }


def _feature_methods(features: pd.DataFrame, modality: str) -> list[str]:
    return [m for m in METHODS if any(c.startswith(f"{modality}_{m}_") for c in features.columns)]


# ----------------------------------------------------------------------------------------------
# entry point


def _box_sections(features: pd.DataFrame, thr_modalities: dict, figure_notes: list[str]) -> list[dict]:
    boxes = []
    for modality in MODALITIES:
        methods = _feature_methods(features, modality)
        if not methods:
            continue
        unit = (thr_modalities.get(modality) or {}).get("unit") or ("HU" if modality == "ct" else "")
        image = _safe_figure(figure_notes, f"The {modality.upper()} box-plot figure", _box_figure, modality,
                             features, methods, unit)
        if image is None:
            figure_notes.append(f"No labelled training patient with {modality.upper()} features: no box plots.")
        boxes.append({"name": MODALITY_NAMES[modality], "figure": image})
    return boxes


def _statistics_section(run_dir: Path, model: dict | None, features: pd.DataFrame,
                        predictions: pd.DataFrame | None, missing: list[str], figure_notes: list[str]) -> dict:
    """The template's statistics context: summary, tables, notes of the stage, ROC figure."""
    from .report_tables import study_overview

    summary = _read_json(run_dir / STUDY_JSON, missing, "the summary of the models") \
        if (run_dir / "tables").is_dir() else None
    statistics = (model or {}).get("statistics") if model else None
    notes = [str(n) for n in ((statistics or {}).get("notes") or [])] if isinstance(statistics, dict) else []
    if model is not None and statistics is None:
        missing.append("model.json holds no statistics (the statistics stage was disabled or failed).")
    tables, tables_missing = _tables_section(run_dir)
    roc = None
    if predictions is not None and not predictions.empty:
        roc = _safe_figure(figure_notes, "The ROC figure", _roc_figure, predictions, figure_notes)
    return {"overview": study_overview(summary, features), "tables": tables, "tables_missing": tables_missing,
            "stats_notes": notes, "roc": roc}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _qa_sheet_link(run_dir: Path) -> dict | None:
    """The QA contact sheet's link (relative, so the folder can move) and its series count (issue 23)."""
    if not (run_dir / QA_DIR / QA_INDEX).is_file():
        return None
    try:
        n = str(len(json.loads((run_dir / QA_DIR / QA_PANELS_JSON).read_text(encoding="utf-8"))))
    except (OSError, ValueError):
        n = "?"
    return {"href": f"{QA_DIR}/{QA_INDEX}", "n": n}


def render_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report.html``, one self-contained page of the run for clinicians.

    Parameters
    ----------
    run_dir : path
        A run folder as ``sarco run`` writes it. ``features.csv`` and ``thresholds.json`` are
        required; every other file is optional and its absence is stated in the page.

    Returns
    -------
    pathlib.Path
        The path of ``report.html``, written atomically (temporary name in the same folder, then
        ``os.replace``), so a reader never sees a half-written report.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` is not a folder, or ``features.csv`` or ``thresholds.json`` is missing
        (the message names the file).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    features = pd.read_csv(_require(run_dir / FEATURES_CSV), dtype={"patient_id": str, "split": str})
    with open(_require(run_dir / THRESHOLDS_JSON), encoding="utf-8") as handle:
        try:
            thresholds = json.load(handle)
        except ValueError as exc:
            raise ValueError(f"thresholds.json in {run_dir} is not valid JSON ({exc})") from exc
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds.json in {run_dir} does not hold a JSON object")
    for column in ("patient_id", "split", "label"):
        if column not in features:
            raise ValueError(f"features.csv in {run_dir} has no `{column}` column")

    missing: list[str] = []   # what is absent from the run folder
    figure_notes: list[str] = []  # what a figure had to leave out
    provenance = _read_json(run_dir / PROVENANCE_JSON, missing, "provenance")
    model = _read_json(run_dir / MODEL_JSON, missing, "model notes")
    errors = _read_csv(run_dir / ERRORS_CSV, missing, "the error list", dtype=str, keep_default_na=False)
    predictions = _read_csv(run_dir / PREDICTIONS_CSV, missing, "ROC curves", dtype={"patient_id": str})

    statistics = _statistics_section(run_dir, model, features, predictions, missing, figure_notes)
    thr_modalities = thresholds.get("modalities") or {}
    threshold_sections = _threshold_sections(thresholds, figure_notes)

    boxes = _box_sections(features, thr_modalities, figure_notes)

    overlays = []
    for modality in [m for m in MODALITIES if m in thr_modalities] + \
            [m for m in thr_modalities if m not in MODALITIES]:
        examples = _safe_figure(figure_notes, f"The {modality.upper()} overlay examples", _overlay_examples,
                                run_dir, features, modality) or []
        image = None
        if examples:
            image = _safe_figure(figure_notes, f"The {modality.upper()} overlay figure", _overlay_figure, modality,
                                 thr_modalities[modality], examples)
        else:
            figure_notes.append(f"No cached {modality.upper()} ROI sample (cache/<patient>__{modality}.npz) of a "
                                f"labelled patient: no overlay figure.")
        overlays.append({"name": MODALITY_NAMES.get(modality, modality.upper()), "figure": image,
                         "patients": [f"{pid} ({'sarcopenia' if lab == 1 else 'non-sarcopenia'})"
                                      for lab, pid, _ in examples]})

    engine_version = (provenance or {}).get("engine_version") or thresholds.get("engine_version") or \
        (model or {}).get("engine_version") or "unknown"
    context = {
        "engine_version": engine_version,
        "run_date": _utc((provenance or {}).get("finished_unix")) or "unknown",
        "backend": (provenance or {}).get("backend") or "unknown",
        "generated": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "run_name": _run_name(run_dir, provenance, model),
        "cohort": _cohort_section(features, errors),
        "thresholds": threshold_sections,
        "diagnostics": diagnostic_sections(thresholds, features),
        "scanners": scanner_sections(thresholds),
        "mri_series": mri_series_by_scanner(run_dir, features),
        "patients_per_model": patients_per_model(_read_json_quiet(run_dir / STUDY_JSON)),
        **statistics,
        "boxes": boxes, "overlays": overlays,
        "errors": _errors_section(errors),
        "provenance": _provenance_section(provenance),
        "missing": missing, "figure_notes": figure_notes,
        "qa_sheet": _qa_sheet_link(run_dir),
    }
    html = _environment().get_template("report.html.j2").render(**context)

    out = run_dir / REPORT_HTML
    write_text(out, html)  # atomic: a killed render leaves only a swept .tmp- file
    return out
