"""The report's figures: pooled histograms, ROC curves, box plots and overlays, as PNG data URIs.

Figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, never
through ``pyplot``'s global state, so rendering is safe inside a Dask worker thread and needs no
display.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pandas as pd

from engine.contract import MODALITY_NAMES, SPLIT_NAMES, SPLITS, TISSUES, feature_name
from engine.measure.methods import display_name, is_method, method_order
from engine.measure.methods import get as get_method
from engine.measure.methods import registered as registered_methods
from engine.report.format import format_p, model_label
from engine.report.overlay import FAT_RGBA, MUSCLE_RGBA, display_window, habitat_overlay
from engine.runfolder import ModalityThresholds, PooledHistogram, StatInfo, registered_stats
from engine.runfolder.previews import Preview
from engine.stats import groups as group_tests
from engine.stats.roc import auc_ci

#: Line (colour, style) of each fitted method's threshold, in the registry's order; the reference is black.
METHOD_STYLES = (("#1b9e77", "-"), ("#d95f02", "--"), ("#7570b3", ":"), ("#e7298a", "-"), ("#66a61e", "--"),
                 ("#e6ab02", ":"))
REFERENCE_STYLE = ("black", "-.")
#: Outlines of each scanner's share of a pooled histogram (issue 16).
SCANNER_COLOURS = ("#e7298a", "#1f78b4", "#66a61e", "#a6761d")
# Box-plot colours as in the study's Figure 3: non-sarcopenia blue, sarcopenia red.
GROUP_COLOURS = {0: "#3b75af", 1: "#c0392b"}
FIGURE_DPI = 100


def figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure  # lazy: matplotlib is heavy; figures only

    return Figure(figsize=(width_in, height_in), layout="constrained")


def png_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)  # Agg canvas: no display, no pyplot state
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def threshold_figure(modality: str, entry: ModalityThresholds, decimals: int) -> str:
    """Pooled training histogram with the three fitted boundaries (vertical lines)."""
    hist = entry.histogram
    if hist is None:
        raise ValueError(f"thresholds.json records no pooled histogram for {modality}")
    counts = np.asarray(hist.counts, dtype=float)
    edges = hist.edges()
    unit = entry.unit
    fig = figure(12.0, 4.0)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color="#9aa5b1", alpha=0.8, label="pooled training voxels")
    _scanner_shares(ax, hist, edges)
    ax.set_xlim(edges[0], edges[-1])
    top = counts.max() if counts.size and counts.max() > 0 else 1.0
    ax.set_ylim(0, top * 1.18)
    for method, fit in entry.methods.items():
        threshold = fit.threshold
        if not math.isfinite(threshold):
            continue
        colour, style = method_style(method)
        ax.axvline(threshold, color=colour, linestyle=style, linewidth=2,
                   label=f"{display_name(method)}: {threshold:.{decimals}f} {unit}".rstrip())
    fat_low = entry.fat_is == "low"
    ax.text(0.01, 0.97, "← fat" if fat_low else "← muscle", transform=ax.transAxes, ha="left", va="top",
            color=FAT_RGBA[:3] if fat_low else MUSCLE_RGBA[:3], fontsize=11, fontweight="bold")
    ax.text(0.99, 0.97, "muscle →" if fat_low else "fat →", transform=ax.transAxes, ha="right", va="top",
            color=MUSCLE_RGBA[:3] if fat_low else FAT_RGBA[:3], fontsize=11, fontweight="bold")
    ax.set_xlabel(f"intensity ({unit})" if unit else "intensity")
    ax.set_ylabel("voxels per bin")
    ax.set_title(f"{MODALITY_NAMES.get(modality, modality)}: pooled training histogram "
                 f"({entry.n_patients if entry.n_patients is not None else '?'} patients)")
    fig.legend(loc="outside lower center", fontsize=9.5, ncols=4, frameon=False)
    return png_data_uri(fig)


def method_style(method: str) -> tuple[str, str]:
    """(colour, line style) of a method's threshold line: by its place in the registry (plug-ins included)."""
    if not is_method(method):
        return ("#666666", "-")
    if get_method(method).reference:
        return REFERENCE_STYLE
    fitted = [m.name for m in registered_methods() if not m.reference]
    return METHOD_STYLES[fitted.index(method) % len(METHOD_STYLES)]


def _scanner_shares(ax, hist: PooledHistogram, edges: np.ndarray) -> None:
    """Issue 16: each scanner's share of the pooled histogram, as outlines over the pooled bars."""
    for k, (label, counts) in enumerate(sorted(hist.by_scanner.items())):
        ax.stairs(np.asarray(counts, dtype=float), edges, color=SCANNER_COLOURS[k % len(SCANNER_COLOURS)],
                  linewidth=1.4, label=f"{label} share")



def roc_curves(y: pd.Series, predictions: pd.DataFrame, rows, models: list[str], split: str, notes: list[str]):
    """One curve per distinct ROC on a split: models with identical curves share one, named together."""
    from sklearn.metrics import roc_curve  # lazy: scikit-learn is heavy; only where it is used

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


def roc_figure(predictions: pd.DataFrame, notes: list[str]) -> str | None:
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
            notes.append(f"ROC curves: the {str(SPLIT_NAMES.get(split, split)).lower()} split has "
                         f"{'no labelled patient' if y.empty else 'only one class'}: no curve drawn.")
            continue
        panels.append((split, rows))
    if not panels:
        return None
    fig = figure(min(5.4 * len(panels), 16.2), 5.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = _model_colours(models)
    for ax, (split, rows) in zip(axes, panels, strict=True):
        y_all = labels[rows].astype(int)
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=1, linestyle="--")
        for curve in roc_curves(y_all, predictions, rows, models, split, notes):
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
    return png_data_uri(fig)


def _model_colours(models: list[str]) -> dict[str, tuple[str, str]]:
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
               "#1f78b4", "#b2df8a"]
    style_for = {"ct": "-", "mri": "--"}
    return {m: (palette[i % len(palette)], style_for.get(m.split("_", 1)[0], "-.")) for i, m in enumerate(models)}


#: Short names of Table 2's tests for the box plots' titles.
_SHORT_TEST = {"Student's t-test": "t", "Welch's t-test": "Welch"}


def _box_p(groups: list[np.ndarray]) -> tuple[float, str]:
    """(p, short test name) of a feature's two groups by Table 2's rule (issue 21: was Mann-Whitney for all)."""
    test, _, p, _ = group_tests.compare_continuous(groups[0], groups[1])
    return p, _SHORT_TEST.get(test, "MW")


def box_figure(modality: str, features: pd.DataFrame, methods: list[str], unit: str,
               stats: tuple[StatInfo, ...] | None = None) -> str | None:
    """Figure 3: every feature of ``modality`` by label on the training split (rows: methods).

    ``stats``: the run folder's stat list (thresholds.json); default the registered stats.
    """
    by_name = {s.name: s for s in (stats or registered_stats())}
    train = features[features["split"].astype(str) == "train"]
    labels = pd.to_numeric(train["label"], errors="coerce")
    train = train[labels.isin([0, 1])]
    labels = labels[labels.isin([0, 1])].astype(int)
    if train.empty:
        return None
    columns = [(t, s) for t in TISSUES for s in by_name]
    fig = figure(2.35 * len(columns), 2.45 * len(methods) + 0.5)
    axes = fig.subplots(len(methods), len(columns), squeeze=False)
    for r, method in enumerate(methods):
        for c, (tissue, stat) in enumerate(columns):
            ax = axes[r][c]
            name = feature_name(modality, method, tissue, stat)
            entry = by_name[stat]
            groups = []
            for label in (0, 1):
                values = pd.to_numeric(train.loc[labels == label, name], errors="coerce") if name in train else \
                    pd.Series(dtype=float)
                values = values[np.isfinite(values)].to_numpy(float)
                groups.append(values * entry.display_scale)  # the stored unit -> the shown one (mm³ -> cm³)
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
            title = f"{display_name(method)} {tissue} {entry.label}"
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
            ax.set_ylabel(entry.axis_label(unit), fontsize=7.5)
    fig.suptitle(f"{MODALITY_NAMES.get(modality, modality)} features by group, training split "
                 f"(n={int((labels == 0).sum())} non-sarcopenia, {int((labels == 1).sum())} sarcopenia; "
                 f"p: the test Table 2's rule picks, t, Welch or MW = Mann-Whitney U; * p<0.05)", fontsize=10)
    return png_data_uri(fig)



def overlay_figure(modality: str, entry: ModalityThresholds, examples: list[tuple[int, str, Preview]]) -> str:
    """Figure 4: preview slice, then muscle (blue) and fat (red) per method, one row per example."""
    methods = method_order(entry.methods)
    fat_is = entry.fat_is
    ncols = 1 + len(methods)
    fig = figure(2.9 * ncols, 3.0 * len(examples) + 0.3)
    axes = fig.subplots(len(examples), ncols, squeeze=False)
    for r, (label, pid, preview) in enumerate(examples):
        vmin, vmax = display_window(modality, preview.image)
        group = "sarcopenia" if label == 1 else "non-sarcopenia"
        for c in range(ncols):
            ax = axes[r][c]
            ax.imshow(preview.image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(f"{pid} ({group})\nslice z={preview.z}", fontsize=8.5)
                continue
            method = methods[c - 1]
            t = entry.methods[method].threshold
            if not math.isfinite(t):
                ax.set_title(f"{MODALITY_NAMES.get(modality, modality)} {display_name(method)}\n"
                             f"no threshold fitted", fontsize=8.5)
                continue
            overlay, share = habitat_overlay(preview, t, fat_is)
            ax.imshow(overlay, interpolation="nearest")
            ax.set_title(f"{MODALITY_NAMES.get(modality, modality)} {display_name(method)}\n"
                         f"fat {share:.1f}% of ROI on slice", fontsize=8.5)
    fig.suptitle(f"{MODALITY_NAMES.get(modality, modality)}: muscle (blue) and fat (red) on the slice with most ROI "
                 f"voxels", fontsize=10)
    return png_data_uri(fig)


def safe_figure(notes: list[str], what: str, draw, *args):
    # One figure that cannot be drawn must not cost the clinician the rest of the report.
    try:
        return draw(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the page, the rest still renders
        notes.append(f"{what} could not be drawn ({type(exc).__name__}: {exc}).")
        return None
