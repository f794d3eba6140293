"""Library side of ``sarco stats roc|icc|groups|logistic``: read a CSV, compute, return a dict and a text.

The CLI layer only parses arguments and prints; everything it shows comes from here. The
statistics modules are imported inside the commands, so registering the sub-commands is cheap.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from engine.contract import ENGINE_COLUMNS
from engine.errors import UsageError
from engine.inputs.userfiles import read_csv_table


def _json_safe(value):
    """Recursively convert numpy scalars and non-finite floats (to None) for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _read(csv, columns: list[str]) -> pd.DataFrame:
    # a missing file, an unreadable CSV or an absent column is the user's to fix: UsageError (exit 2)
    return read_csv_table(csv, columns)


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def _num(x, digits=3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def roc_command(csv, label: str, score: str, as_json: bool = False) -> tuple[dict, str]:
    """ROC summary of one score column against a 0/1 label column.

    Rows with an empty label or score are dropped (counted in ``dropped_rows``). Returns the
    :func:`engine.stats.roc.roc_summary` dict (plus ``csv``, ``label``, ``score``,
    ``dropped_rows``; non-finite numbers as None) and its text: JSON when ``as_json``.
    """
    from engine.stats.roc import roc_summary  # lazy: scipy.stats/statsmodels behind these; usage errors exit fast

    df = _read(csv, [label, score])
    y = pd.to_numeric(df[label], errors="coerce")
    s = pd.to_numeric(df[score], errors="coerce")
    bad_label = df[label].notna() & y.isna() | ~y.isin([0, 1]) & y.notna()
    if bad_label.any():
        found = sorted(set(df.loc[bad_label, label].astype(str)))[:5]
        raise UsageError(f"label column '{label}' must hold 1, 0 or empty; found {found}")
    keep = y.notna() & s.notna()
    try:
        summary = roc_summary(y[keep].to_numpy(), s[keep].to_numpy())
    except ValueError as exc:  # the CSV's data cannot give a ROC (one class only, ...)
        raise UsageError(f"{csv}: {exc}") from None
    result = _json_safe({"csv": str(csv), "label": label, "score": score,
                         "dropped_rows": int((~keep).sum()), **summary})
    if as_json:
        return result, json.dumps(result, indent=2)
    lines = [
        f"ROC of '{score}' against '{label}' ({result['n']} patients: {result['n_pos']} positive, "
        f"{result['n_neg']} negative; {result['dropped_rows']} row(s) with a missing value dropped)",
        f"AUC {_num(result['auc'])} (95% CI {_num(result['ci'][0])}-{_num(result['ci'][1])}, DeLong)",
    ]
    youden = result["youden"]
    if youden:
        lines.append(
            f"Youden cut-off {_num(youden['cutoff'], 4)} (positive: score >= cut-off): sensitivity "
            f"{_pct(youden['sensitivity'])}, specificity {_pct(youden['specificity'])}, accuracy "
            f"{_pct(youden['accuracy'])}, J {_num(youden['youden_j'])}"
        )
    if result["note"]:
        lines.append(f"note: {result['note']}")
    return result, "\n".join(lines)


def icc_command(csv, target: str, rater: str, value: str, as_json: bool = False) -> tuple[dict, str]:
    """The six Shrout-Fleiss ICCs from a long CSV (one row per target x rater).

    Returns ``{"csv", "target", "rater", "value", "n_targets", "n_raters", "alpha", "icc": [rows]}``
    (rows: ``type, description, icc, f, df1, df2, p, ci_low, ci_high``) and its text: JSON when
    ``as_json``. The study reports ICC2 (two-way random, absolute agreement, single rater).
    """
    from engine.stats.icc import icc  # lazy: scipy.stats/statsmodels behind these; usage errors exit fast

    df = _read(csv, [target, rater, value])
    try:
        table = icc(df, target=target, rater=rater, value=value)
    except ValueError as exc:  # the CSV's design cannot give an ICC (a repeated rating, one rater, ...)
        raise UsageError(f"{csv}: {exc}") from None
    result = _json_safe({
        "csv": str(csv), "target": target, "rater": rater, "value": value,
        "n_targets": table.attrs["n_targets"], "n_raters": table.attrs["n_raters"], "alpha": table.attrs["alpha"],
        "icc": table.to_dict(orient="records"),
    })
    if as_json:
        return result, json.dumps(result, indent=2)
    lines = [f"ICC of '{value}': {result['n_targets']} targets x {result['n_raters']} raters",
             f"{'type':<6} {'ICC':>7} {'95% CI':>17} {'F':>9} {'df1':>5} {'df2':>6} {'p':>9}  description"]
    for row in result["icc"]:
        ci = f"{_num(row['ci_low'])} to {_num(row['ci_high'])}"
        p = "n/a" if row["p"] is None else f"{row['p']:.3g}"
        lines.append(f"{row['type']:<6} {_num(row['icc']):>7} {ci:>17} {_num(row['f'], 2):>9} "
                     f"{row['df1']:>5.0f} {row['df2']:>6.0f} {p:>9}  {row['description']}")
    lines.append("The study reports ICC2 (two-way random effects, absolute agreement, single rater).")
    return result, "\n".join(lines)


def groups_command(csv, label: str, as_json: bool = False) -> tuple[dict, str]:
    """Table 2 on one CSV: every column except the label, ``patient_id``/``split`` and the engine's
    image, ROI, segmentation and series columns (so a cohort manifest can be given as it is) by group.

    Returns ``{"csv", "label", "n_0", "n_1", "variables": [{"variable", "level", "kind", "test",
    "statistic", "p", "n_0", "n_1", "value_0", "value_1", "note"}]}`` (one entry per continuous
    variable, one per level of a categorical one) and its text: JSON when ``as_json``.
    """
    # lazy: scipy.stats/statsmodels behind these; usage errors exit fast
    from engine.stats.groups import RESERVED, compare_groups
    from engine.stats.models import label_vector

    df = _read(csv, [label])
    y = label_vector(df[label])

    variables = [c for c in df.columns if c not in RESERVED | set(ENGINE_COLUMNS) | {label}]
    if not variables:
        raise ValueError(f"'{csv}' has no column to compare besides '{label}'")
    table = compare_groups(df, label=label, variables=variables)
    keys = ["variable", "level", "kind", "test", "statistic", "p", "n_0", "n_1", "value_0", "value_1", "note"]
    rows = [{k: row[k] for k in keys} for row in table.to_dict(orient="records")]
    for row in rows:
        for k in ("level", "test", "value_0", "value_1", "note"):
            row[k] = "" if row[k] is None or (isinstance(row[k], float) and math.isnan(row[k])) else str(row[k])
        if row["kind"] == "categorical" and row["level"]:
            counts = table[(table["variable"] == row["variable"]) & (table["level"] == row["level"])].iloc[0]
            row["value_0"] = f"{int(counts['count_0'])} ({counts['percent_0']:.1f}%)"
            row["value_1"] = f"{int(counts['count_1'])} ({counts['percent_1']:.1f}%)"
    result = _json_safe({"csv": str(csv), "label": label, "n_0": int((y == 0).sum()), "n_1": int((y == 1).sum()),
                         "variables": rows})
    if as_json:
        return result, json.dumps(result, indent=2)
    lines = [f"'{label}' = 0: {result['n_0']} patients, = 1: {result['n_1']} patients",
             f"{'variable':<24} {'group 0':>18} {'group 1':>18} {'p':>8}  test"]
    for row in result["variables"]:
        name = row["variable"] + (f" = {row['level']}" if row["level"] else "")
        p = "" if row["p"] is None else ("<0.001" if row["p"] < 0.001 else f"{row['p']:.3f}")
        lines.append(f"{name:<24} {row['value_0']:>18} {row['value_1']:>18} {p:>8}  {row['test']}")
    return result, "\n".join(lines)


def logistic_command(csv, label: str, variables: list[str], as_json: bool = False) -> tuple[dict, str]:
    """One multivariable logistic model ``label ~ variables`` (Firth's when separated).

    Returns ``{"csv", "label", "n", "n_events", "method", "status", "terms": [{"term", "or", "ci_low",
    "ci_high", "p", "method"}], "notes"}``: OR per unit (per level for a categorical term) with its
    95% CI and p: Wald for maximum likelihood, penalised likelihood-ratio p and profile CI for Firth.
    The rows are the complete cases over ``variables``; a variable that is an exact linear
    combination of the intercept and earlier ones is dropped as the study stage drops it
    (:func:`engine.stats.logistic.drop_collinear`), listed in ``dropped_collinear`` with a note.
    """
    # lazy: scipy.stats/statsmodels behind these; usage errors exit fast
    from engine.stats._design import missing_rows, resolve_categorical
    from engine.stats.logistic import drop_collinear
    from engine.stats.models import fit_logistic_model, label_vector

    variables = [v.strip() for v in variables if v.strip()]
    if not variables:
        raise ValueError("--vars names no column (give them comma-separated: --vars age,bmi)")
    df = _read(csv, [label, *variables])
    # as the study stage does (issue 21): an exactly collinear variable is dropped with a note
    # naming it and its partners, on the complete cases over every named variable
    categorical = resolve_categorical(df, variables, None)
    kinds = {v: {"kind": "categorical" if v in categorical else "numeric"} for v in variables}
    complete = df.loc[~np.isnan(label_vector(df[label])) & ~missing_rows(df, variables, kinds)]
    kept, dropped = drop_collinear(complete, variables, categorical)
    outcome = fit_logistic_model(complete, label, kept, categorical=categorical)
    outcome.notes[:0] = [d["note"] for d in dropped]
    method = {"ml": "Wald (maximum likelihood)", "firth": "Firth penalised likelihood-ratio, profile CI"}.get(
        outcome.fit.method, outcome.fit.method)
    terms = [{"term": row["term"], "or": row["or"], "ci_low": row["or_ci_low"], "ci_high": row["or_ci_high"],
              "p": row["p"], "method": method} for row in outcome.summary.iloc[1:].to_dict(orient="records")]
    result = _json_safe({"csv": str(csv), "label": label, "n": outcome.n, "n_events": outcome.n_events,
                         "method": outcome.fit.method, "status": outcome.fit.status, "terms": terms,
                         "dropped_collinear": [{"variable": d["variable"], "partners": d["partners"]}
                                               for d in dropped],
                         "notes": list(outcome.notes)})
    if as_json:
        return result, json.dumps(result, indent=2)
    lines = [f"logistic regression of '{label}' on {', '.join(kept)}: {result['n']} patients, "
             f"{result['n_events']} events ({method})",
             f"{'term':<24} {'OR':>9} {'95% CI':>21} {'p':>8}"]
    for t in result["terms"]:
        p = "n/a" if t["p"] is None else ("<0.001" if t["p"] < 0.001 else f"{t['p']:.3f}")
        lines.append(f"{t['term']:<24} {_num(t['or']):>9} {_num(t['ci_low']) + ' to ' + _num(t['ci_high']):>21} {p:>8}")
    lines.extend(f"note: {n}" for n in result["notes"])
    return result, "\n".join(lines)


def register(stats_subparsers) -> None:
    """Add ``sarco stats groups|logistic`` to the ``stats`` sub-command parser."""
    groups = stats_subparsers.add_parser("groups", help="Table 2: each variable by group, with the test used")
    groups.add_argument("--csv", required=True, help="input CSV (one row per patient; a manifest too)")
    groups.add_argument("--label", required=True, help="0/1 outcome column")
    groups.add_argument("--json", action="store_true", help="print JSON instead of text")
    logistic = stats_subparsers.add_parser(
        "logistic", help="multivariable logistic regression: OR, 95%% CI, p (Firth when separated)")
    logistic.add_argument("--csv", required=True, help="input CSV (one row per patient)")
    logistic.add_argument("--label", required=True, help="0/1 outcome column")
    logistic.add_argument("--vars", required=True, help="predictor columns, comma-separated")
    logistic.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_command(args) -> int:
    """Run one ``sarco stats`` sub-command; a user mistake prints one line and returns 2."""

    try:
        if args.stats_command == "roc":
            _, text = roc_command(args.csv, args.label, args.score, args.json)
        elif args.stats_command == "icc":
            _, text = icc_command(args.csv, args.target, args.rater, args.value, args.json)
        elif args.stats_command == "groups":
            _, text = groups_command(args.csv, args.label, args.json)
        else:
            _, text = logistic_command(args.csv, args.label, args.vars.split(","), args.json)
    except (ValueError, OSError) as exc:
        print(f"sarco: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def chance_text(verdict: dict | None, what: str = "best model") -> str | None:
    """One line on a chosen model and its test against chance (``study.json``'s ``best_model``), or None."""
    if not verdict:
        return None
    low, high = (verdict.get("cv_auc_interval") or [None, None])[:2]
    interval = f" (95% interval {_num(low)}-{_num(high)})" if low is not None and high is not None else ""
    p = verdict.get("chance_p")
    if p is None:
        test = "not tested against chance (stats.chance_permutations: 0)"
    elif verdict.get("better_than_chance"):
        test = f"better than chance (p = {p:.3g}, permutation test repeating the choice)"
    else:
        test = f"NOT better than chance (p = {p:.3g}, permutation test repeating the choice)"
        permutations = int(verdict.get("permutations") or 0)
        if permutations and 1.0 / (1 + permutations) > 0.05:
            test += f"; {permutations} permutations cannot give p below {1.0 / (1 + permutations):.3g}"
    return f"{what}: {verdict['name']}, repeated CV AUC {_num(verdict.get('cv_auc'))}{interval}; {test}"


def study_text(summary: dict, notes: list[str], out_dir: Path) -> str:
    """What ``sarco study`` prints: each model's CV AUC and held-out AUCs, then where the files are."""
    lines = [f"{'model':<12} {'CV AUC':>15} {'apparent':>9}  held-out AUC (95% CI)"]
    for name, reason in (summary.get("not_fitted") or {}).items():
        lines.append(f"{name:<12} {reason}")
    for name, model in summary.get("models", {}).items():
        cv = f"{_num(model['cv_auc_mean'])} ± {_num(model['cv_auc_sd'])}"
        held_out = ", ".join(
            f"{split} {_num(auc)} ({_num(model['auc_ci'][split][0])}-{_num(model['auc_ci'][split][1])})"
            for split, auc in model["auc"].items() if split != "train")
        lines.append(f"{name:<12} {cv:>15} {_num(model['apparent_auc']):>9}  {held_out or 'no held-out split'}")
    chosen = [chance_text(summary.get("best_model")), chance_text(summary.get("best_imaging"), "best imaging model")]
    lines.extend(line for line in chosen if line)
    if summary.get("best_imaging_model") and not summary.get("best_imaging"):
        lines.append(f"best imaging model by cross-validated AUC: {summary['best_imaging_model']}")
    lines.extend(f"note: {n}" for n in notes)
    lines.append(f"results: {out_dir.resolve()}")
    return "\n".join(lines)
