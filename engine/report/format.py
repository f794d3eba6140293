"""Number, p-value and table formatting of the report: display strings, never numbers.

Shared by the report's sections and its statistics tables (:mod:`engine.report.tables`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from engine.contract import MODALITY_NAMES
from engine.measure.methods import display_name, is_method


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


def threshold_decimals(bin_width: float | None) -> int:
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
    return f"{x:.{threshold_decimals(bin_width)}f}"


# Column-name words spelled out for readers of the statistics tables (``uni_or_ci_low``).
HEADER_WORDS = {"uni": "univariable", "multi": "multivariable", "or": "OR", "ci": "CI", "auc": "AUC", "sd": "SD",
                "ppv": "PPV", "npv": "NPV", "coef": "coef.", "j": "J", "cv": "CV"}


def readable_header(name: str) -> str:
    """``uni_or_ci_low`` -> ``univariable OR CI low``: spaces let a header wrap, so a wide table narrows."""
    return " ".join(HEADER_WORDS.get(word, word) for word in str(name).split("_") if word)


def plain_table(columns: list[str], rows: list[list[str]], numeric: list[bool], titles: list[str] | None = None,
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
    formatters: list[Callable[[Any], str]] = []
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
    return plain_table([readable_header(c) for c in columns], rows, numeric, titles=columns, dropped=dropped)



def model_label(name: str) -> str:
    """``ct_otsu`` -> ``CT Otsu``, ``clinical`` -> ``Clinical``."""
    parts = str(name).split("_", 1)
    if len(parts) == 2 and parts[0] in MODALITY_NAMES and is_method(parts[1]):
        return f"{MODALITY_NAMES[parts[0]]} {display_name(parts[1])}"
    return str(name).replace("_", " ").capitalize()
