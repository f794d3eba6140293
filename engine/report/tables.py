"""The statistics tables of report.html laid out as the paper prints them (Tables 2-5).

Each renderer turns one CSV of ``tables/`` into the template's "clinical" table: a few columns a
clinician reads at a glance (mean ± SD or n (%), OR (95% CI), AUC (95% CI), p), with section rows
per cohort or per model instead of a wide dump of every column. The CSVs keep every number.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.contract import MODALITY_NAMES, SPLIT_NAMES
from engine.report.format import model_label

FALLBACK_MARK = "‡"
FALLBACK_NOTE = (f"{FALLBACK_MARK} no candidate had univariable p < 0.05: the best univariable candidate alone "
                 f"(the model is kept so that every imaging method has a score).")
SEPARATION_MARK = "†"
SEPARATION_NOTE = (f"{SEPARATION_MARK} separation: Firth's penalised likelihood; p from the penalised likelihood-ratio "
                   f"test, 95% CI from the profile penalised likelihood (Heinze & Schemper 2002).")


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_p(x) -> str:
    if not _finite(x):
        return ""
    return "<0.001" if float(x) < 0.001 else f"{float(x):.3f}"


def fmt_ratio(x) -> str:
    """An odds ratio: 2 decimals in the usual range, 3 significant digits outside it."""
    if not _finite(x):
        return "∞" if x == np.inf else ""
    x = float(x)
    return f"{x:.2f}" if 0.01 <= x < 1000 else f"{x:.2e}"


def fmt_or_ci(odds, low, high) -> str:
    if not _finite(odds):
        return ""
    ci = f" ({fmt_ratio(low)}–{fmt_ratio(high)})" if _finite(low) and _finite(high) else ""
    return fmt_ratio(odds) + ci


def fmt_auc_ci(auc, low, high) -> str:
    if not _finite(auc):
        return ""
    ci = f" ({float(low):.3f}–{float(high):.3f})" if _finite(low) and _finite(high) else ""
    return f"{float(auc):.3f}{ci}"


def fmt_percent(x) -> str:
    return f"{100 * float(x):.1f}%" if _finite(x) else ""


def _term_label(term: str, variable: str) -> str:
    """``sex[Male]`` -> ``sex: Male``; a feature name is spelled out (``fat percent``)."""
    term, variable = str(term), str(variable)
    if term.startswith(variable + "[") and term.endswith("]"):
        return f"{variable}: {term[len(variable) + 1:-1]}"
    parts = term.split("_")
    if len(parts) == 4 and parts[0] in MODALITY_NAMES:
        return f"{parts[2]} {parts[3]}"
    return term


def clinical_table(columns: list[str], numeric: list[bool], rows: list[dict], footnote: str = "") -> dict:
    """The template's "clinical" table: ``rows`` are ``{"cells": [...], "sub": bool}`` or ``{"section": text}``."""
    return {"kind": "clinical", "columns": columns, "classes": ["num" if n else "" for n in numeric], "rows": rows,
            "footnote": footnote}


def _ordered(values, known=("train", "validation", "prospective")) -> list[str]:
    present = [str(v) for v in pd.unique(pd.Series(values).dropna().astype(str))]
    return [k for k in known if k in present] + [v for v in present if v not in known]


def render_table2(frame: pd.DataFrame) -> dict:
    """Table 2: per cohort, each variable's mean ± SD or n (%) in each group, the test and p."""
    rows: list[dict] = []
    for split in _ordered(frame["split"]):
        part = frame[frame["split"].astype(str) == split]
        first = part.iloc[0]
        rows.append({"section": f"{SPLIT_NAMES.get(split, split)} cohort: non-sarcopenia n = "
                                f"{int(first['n_group_0'])}, sarcopenia n = {int(first['n_group_1'])}"})
        for variable in pd.unique(part["variable"]):
            block = part[part["variable"] == variable]
            head = block.iloc[0]
            test, p = head["test"] if isinstance(head["test"], str) else "", fmt_p(head["p"])
            if head["kind"] != "categorical":
                rows.append({"cells": [str(variable), str(head["value_0"]), str(head["value_1"]), test, p],
                             "sub": False})
                continue
            rows.append({"cells": [f"{variable}, n (%)", "", "", test, p], "sub": False})
            for _, level in block.iterrows():
                cells = [str(level["level"])]
                for g in ("0", "1"):
                    count, percent = level[f"count_{g}"], level[f"percent_{g}"]
                    cells.append(f"{int(count)} ({float(percent):.1f}%)" if _finite(count) and _finite(percent)
                                 else "")
                rows.append({"cells": cells + ["", ""], "sub": True})
    return clinical_table(["Variable", "Non-sarcopenia", "Sarcopenia", "Test", "p"],
                          [False, True, True, False, True], rows)


def _uni_cells(row, per_sd: bool) -> list[str]:
    status = str(row.get("uni_status", ""))
    if status in ("constant", "failed"):
        return ["constant: not fitted" if status == "constant" else "not fitted", ""]
    prefix = "uni_or_per_sd" if per_sd and _finite(row.get("uni_or_per_sd")) else "uni_or"
    text = fmt_or_ci(row[prefix], row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"])
    return [text + (f" {SEPARATION_MARK}" if status == "separation" else ""), fmt_p(row["uni_p"])]


def _multi_cells(row, per_sd: bool) -> list[str]:
    role = str(row.get("multi_role", ""))
    if role == "selected":
        prefix = "multi_or_per_sd" if per_sd and _finite(row.get("multi_or_per_sd")) else "multi_or"
        text = fmt_or_ci(row[prefix], row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"])
        if str(row.get("multi_status")) == "separation":
            text += f" {SEPARATION_MARK}"
        if str(row.get("multi_note", "")).startswith("no candidate entered"):
            text += f" {FALLBACK_MARK}"
        return [text, fmt_p(row["multi_p"])]
    return [{"removed": "removed (backward elimination)", "collinear": "dropped: collinear",
             "not entered": "not entered"}.get(role, role), ""]


def _regression(frame: pd.DataFrame, per_sd: bool, sections: bool) -> dict:
    rows: list[dict] = []
    separated = False
    fallback = frame["multi_note"].astype(str).str.startswith("no candidate entered").any() \
        if "multi_note" in frame else False
    for model in pd.unique(frame["model"]):
        part = frame[frame["model"] == model]
        if sections:
            first = part.iloc[0] if len(part) else {}
            cv = (f" (repeated CV AUC {float(first['cv_auc_mean']):.3f}, 95% interval "
                  f"{float(first['cv_auc_ci_low']):.3f}-{float(first['cv_auc_ci_high']):.3f})"
                  if all(_finite(first.get(k)) for k in ("cv_auc_mean", "cv_auc_ci_low", "cv_auc_ci_high")) else "")
            rows.append({"section": model_label(model) + cv})
        for _, row in part.iterrows():
            separated |= "separation" in (str(row.get("uni_status")), str(row.get("multi_status")))
            rows.append({"cells": [_term_label(row["term"], row["variable"]), *_uni_cells(row, per_sd),
                                   *_multi_cells(row, per_sd)], "sub": False})
    unit = "OR per SD (95% CI)" if per_sd else "OR (95% CI)"
    notes = ["Imaging features: OR per one standard deviation of the feature in the training cohort."
             if per_sd else "OR per unit of the variable (per level against the first level for a category)."]
    if separated:
        notes.append(SEPARATION_NOTE)
    if fallback:
        notes.append(FALLBACK_NOTE)
    return clinical_table(["Variable", f"Univariable {unit}", "p", f"Multivariable {unit}", "p"],
                          [False, True, True, True, True], rows, " ".join(notes))


def render_table3(frame: pd.DataFrame) -> dict:
    return _regression(frame, per_sd=False, sections=False)


def render_table4(frame: pd.DataFrame) -> dict:
    return _regression(frame, per_sd=True, sections=True)


def render_combined(frame: pd.DataFrame) -> dict:
    # imaging features per SD, clinical variables per unit: the per-SD OR exists only for numbers
    rows = frame.copy()
    imaging = rows["variable"].astype(str).str.match(r"^(ct|mri)_")
    for stage in ("uni", "multi"):
        for suffix in ("", "_ci_low", "_ci_high"):
            rows.loc[imaging, f"{stage}_or{suffix}"] = rows.loc[imaging, f"{stage}_or_per_sd{suffix}"]
    table = _regression(rows, per_sd=False, sections=False)
    table["columns"] = ["Variable", "Univariable OR (95% CI)", "p", "Multivariable OR (95% CI)", "p"]
    table["footnote"] = ("Clinical variables: OR per unit; imaging features: OR per SD. "
                         + (SEPARATION_NOTE if SEPARATION_MARK in str(table["rows"]) else ""))
    return table


def render_table5(frame: pd.DataFrame) -> dict:
    """Table 5: per cohort, each model's AUC (95% CI) and the metrics at the training cut-off."""
    rows: list[dict] = []
    for split in _ordered(frame["split"]):
        part = frame[frame["split"].astype(str) == split]
        kind = ("apparent AUC: measured on the patients the models were fitted to" if split == "train"
                else "held-out patients")
        first = part.iloc[0]
        rows.append({"section": f"{SPLIT_NAMES.get(split, split)} cohort (n = {int(first['n'])}, "
                                f"{int(first['n_pos'])} with sarcopenia; {kind})"})
        for _, row in part.iterrows():
            rows.append({"cells": [model_label(row["model"]), fmt_auc_ci(row["auc"], row["auc_ci_low"],
                                                                          row["auc_ci_high"]),
                                   fmt_percent(row["sensitivity"]), fmt_percent(row["specificity"]),
                                   fmt_percent(row["accuracy"]),
                                   f"{float(row['train_cutoff']):.3f}" if _finite(row["train_cutoff"]) else ""],
                         "sub": False})
    return clinical_table(["Model", "AUC (95% CI)", "Sensitivity", "Specificity", "Accuracy", "Cut-off"],
                          [False, True, True, True, True, True], rows,
                          "Cut-off: the probability that maximises Youden's J on the training cohort (exact ties: "
                          "the highest), applied unchanged to every cohort; a cut-off chosen on a validation cohort "
                          "would be optimistic and is not shown. 95% CI of the AUC by DeLong's method.")


def render_cv(frame: pd.DataFrame) -> dict:
    rows = []
    for _, row in frame.iterrows():
        if not _finite(row.get("auc_mean")):
            rows.append({"cells": [model_label(row["model"]), "", "", "", "", str(row.get("note") or "")],
                         "sub": False})
            continue
        sd = f" ± {float(row['auc_sd']):.3f}" if _finite(row.get("auc_sd")) else ""
        interval = (f"{float(row['auc_ci_low']):.3f}-{float(row['auc_ci_high']):.3f}"
                    if _finite(row.get("auc_ci_low")) and _finite(row.get("auc_ci_high")) else "")
        apparent = f"{float(row['apparent_auc']):.3f}" if _finite(row.get("apparent_auc")) else ""
        repeats = int(row["repeats"]) if _finite(row.get("repeats")) else 1
        rows.append({"cells": [model_label(row["model"]), f"{float(row['auc_mean']):.3f}{sd}", interval, apparent,
                               f"{int(row['folds'])} x {repeats}", f"{int(row['n'])} ({int(row['n_events'])})"],
                     "sub": False})
    return clinical_table(["Model", "CV AUC (mean ± SD across repeats)", "95% interval", "Apparent AUC",
                           "Folds x repeats", "Patients (sarcopenia)"],
                          [False, True, True, True, True, True], rows,
                          "CV: repeated stratified K-fold on the training cohort, the univariable screen and backward "
                          "elimination repeated inside every fold, so the held-out fold never informs which variables "
                          "are chosen. Interval: the corrected repeated-CV t interval (Nadeau & Bengio 2003), which "
                          "allows for the folds sharing patients.")


def render_comparisons(frame: pd.DataFrame) -> dict:
    rows = []
    for _, row in frame.iterrows():
        rows.append({"cells": [f"{model_label(row['model_a'])} vs {model_label(row['model_b'])}",
                               SPLIT_NAMES.get(str(row["split"]), str(row["split"])), str(int(row["n"])),
                               f"{float(row['auc_a']):.3f} vs {float(row['auc_b']):.3f}", fmt_p(row["p"])],
                     "sub": False})
    return clinical_table(["Models", "Cohort", "Patients", "AUC", "p (DeLong)"], [False, False, True, True, True],
                          rows)


RENDERERS = {"table2": render_table2, "table3": render_table3, "table4": render_table4, "table5": render_table5,
             "cv": render_cv, "table_combined": render_combined, "comparisons": render_comparisons}


def _chance_words(verdict: dict) -> str:
    p = verdict.get("chance_p")
    if p is None:
        return "not tested against chance"
    return f"{'better' if verdict.get('better_than_chance') else 'not better'} than chance, p = {fmt_p(p)}"


def _doubts(name: str, model: dict, verdict: dict) -> list[str]:
    """What the numbers of the best model do not support: a CV interval that includes 0.5, a held-out
    AUC whose CI excludes the CV AUC (the two disagree more than chance allows)."""
    lines = []
    low, high = (verdict.get("cv_auc_interval") or [None, None])[:2]
    if _finite(low) and _finite(high) and low <= 0.5 <= high:
        lines.append(f"The CV AUC interval of {model_label(name)} ({low:.3f}-{high:.3f}) includes 0.5.")
    cv_auc = verdict.get("cv_auc")
    for split, auc in (model.get("auc") or {}).items():
        ci = (model.get("auc_ci") or {}).get(split) or [None, None]
        if split == "train" or not (_finite(auc) and _finite(ci[0]) and _finite(ci[1]) and _finite(cv_auc)):
            continue
        if not ci[0] <= cv_auc <= ci[1]:
            lines.append(f"Contradiction: the {SPLIT_NAMES.get(split, split).lower()} AUC of {model_label(name)}, "
                         f"{fmt_auc_ci(auc, *ci)}, excludes its CV AUC {cv_auc:.3f}; one of them misleads "
                         f"(a small or unlike cohort, or a model that does not transfer).")
    return lines


def _chance_lines(summary: dict) -> list[str]:
    """The test against chance first: the headline when no model beats it."""
    best = summary.get("best_model")
    if not best:
        return []
    if best.get("chance_p") is None:
        return ["No test against chance was run (stats.chance_permutations: 0): the best CV AUC below is the "
                "maximum of several noisy estimates and may overstate."]
    if not best.get("better_than_chance"):
        permutations = int(best.get("permutations") or 0)
        floor = (f"; {permutations} permutations cannot give p below {1.0 / (1 + permutations):.2g}"
                 if permutations and 1.0 / (1 + permutations) > 0.05 else "")
        return [f"No model predicts better than chance in cross-validation (p = {fmt_p(best['chance_p'])}, "
                f"permutation test that repeats the choice of the best model{floor}); the figures below do not "
                f"support a predictive model."]
    return []


def study_overview(summary: dict | None, features: pd.DataFrame) -> dict | None:
    """The report's opening summary: the test against chance, cohort, best model by repeated CV, its
    held-out AUCs with CI, and what those numbers do not support."""
    if not summary or not summary.get("models"):
        return None
    labels = pd.to_numeric(features["label"], errors="coerce")
    split = features["split"].astype(str)
    cohort = ", ".join(f"{SPLIT_NAMES.get(s, s).lower()} {int((split == s).sum())}"
                       for s in _ordered(features["split"]))
    models = summary["models"]
    imaging = summary.get("best_imaging_model")
    verdict = summary.get("best_model") or {}
    best = verdict.get("name") if verdict.get("name") in models else _legacy_best(models, imaging)
    lines = _chance_lines(summary)
    lines.append(f"{len(features)} patients ({cohort}); {int((labels == 1).sum())} with sarcopenia, "
                 f"{int((labels == 0).sum())} without, {int(labels.isna().sum())} unlabelled.")
    if best:
        model = models[best]
        held_out = [f"{SPLIT_NAMES.get(s, s).lower()} AUC {fmt_auc_ci(model['auc'][s], *model['auc_ci'][s])} "
                    f"(n = {model['n'][s]})" for s in model["auc"] if s != "train" and _finite(model["auc"][s])]
        interval = model.get("cv_auc_interval") or [None, None]
        spread = (f" (95% interval {interval[0]:.3f}-{interval[1]:.3f})" if _finite(interval[0])
                  and _finite(interval[1]) else f" ± {model['cv_auc_sd'] or 0:.3f}")
        chance = f", {_chance_words(verdict)}" if verdict else ""
        lines.append(f"Best model by repeated cross-validated AUC (selection inside the folds): {model_label(best)}, "
                     f"CV AUC {model['cv_auc_mean']:.3f}{spread}{chance}"
                     + (f"; {'; '.join(held_out)}." if held_out else "; no held-out cohort."))
        lines.extend(_doubts(best, model, verdict or {"cv_auc": model["cv_auc_mean"],
                                                      "cv_auc_interval": interval}))
    if imaging and imaging != best and imaging in models:
        image = summary.get("best_imaging") or {}
        chance = f", {_chance_words(image)}" if image else ""
        lines.append(f"Best imaging model: {model_label(imaging)}, CV AUC {models[imaging]['cv_auc_mean']:.3f}"
                     f"{chance}.")
    return {"lines": lines}


def _legacy_best(models: dict, imaging: str | None) -> str | None:
    """The best model of a study.json without ``best_model`` (older runs): highest CV AUC."""
    ranked = [n for n in models if _finite(models[n].get("cv_auc_mean"))]

    def rank(name):  # ties: apparent AUC, then the fewer features, then the study's best imaging model
        model = models[name]
        apparent = model.get("apparent_auc") if _finite(model.get("apparent_auc")) else -1.0
        return model["cv_auc_mean"], apparent, -len(model.get("features") or []), name == imaging

    return max(ranked, key=rank) if ranked else None
