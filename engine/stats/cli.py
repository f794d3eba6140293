"""Library side of ``sarco stats roc|icc``: read a CSV, compute, return a dict and a text.

The CLI layer only parses arguments and prints; everything it shows comes from here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..userfiles import read_csv_table
from .icc import icc
from .roc import roc_summary


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
    df = _read(csv, [label, score])
    y = pd.to_numeric(df[label], errors="coerce")
    s = pd.to_numeric(df[score], errors="coerce")
    bad_label = df[label].notna() & y.isna() | ~y.isin([0, 1]) & y.notna()
    if bad_label.any():
        raise UsageError(f"label column '{label}' must hold 1, 0 or empty; found {sorted(set(df.loc[bad_label, label].astype(str)))[:5]}")
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
