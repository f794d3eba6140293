"""Design matrices for the logistic models: which columns are categorical, and their dummies.

A clinical column is categorical when its dtype is object, string, category or bool, or when it
is numeric, integer-valued and has at most :data:`MAX_INTEGER_LEVELS` distinct values (yes/no
coded 0/1, sex coded 1/2, an occupation code 1..5). A caller can override the rule by naming the
categorical columns explicitly. Imaging features are always numeric (the study passes them so).

Categorical columns are one-hot encoded against a reference level: the first level in sorted
order (numeric levels sorted by value, others by text), as R's ``factor`` does. Levels are
compared as normalised text keys (``1``, ``1.0`` and ``"1"`` are the same level) so the encoding
survives a JSON round trip and a CSV re-read at apply time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

#: A numeric, integer-valued column with at most this many distinct values is categorical.
MAX_INTEGER_LEVELS = 5


def level_key(value) -> str | None:
    """Normalised text key of one categorical value; ``None`` for a missing value."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "True" if bool(value) else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text if text else None


def _sort_key(key: str):
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def sorted_levels(keys: Iterable[str]) -> list[str]:
    """Distinct level keys, numeric ones by value first, then the others alphabetically."""
    return sorted(set(keys), key=_sort_key)


def is_categorical(series: pd.Series) -> bool:
    """Whether a clinical column is treated as categorical by default (see module docstring)."""
    dtype = series.dtype
    if (
        pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(dtype)
    ):
        return True
    if pd.api.types.is_numeric_dtype(dtype):
        values = pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)
        if values.size == 0:
            return False
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values))) and (
            np.unique(values).size <= MAX_INTEGER_LEVELS
        )
    return False


def resolve_categorical(df: pd.DataFrame, columns: Iterable[str], categorical: Iterable[str] | None) -> list[str]:
    """The categorical subset of ``columns``: ``categorical`` if given (explicit), else the default rule."""
    columns = [c for c in columns if c in df.columns]
    if categorical is not None:
        chosen = set(categorical)
        return [c for c in columns if c in chosen]
    return [c for c in columns if is_categorical(df[c])]


def as_keys(series: pd.Series) -> np.ndarray:
    """Object array of level keys (``None`` where missing)."""
    return np.array([level_key(v) for v in series.tolist()], dtype=object)


def build_encoding(df: pd.DataFrame, features: list[str], categorical: Iterable[str]) -> dict[str, dict]:
    """Encoding spec (JSON-safe) of ``features`` learnt from the rows of ``df``.

    Returns ``{feature: {"kind": "numeric"}}`` or
    ``{feature: {"kind": "categorical", "levels": [...], "reference": level}}``.
    """
    categorical = set(categorical)
    encoding: dict[str, dict] = {}
    for feature in features:
        if feature in categorical:
            keys = [k for k in as_keys(df[feature]) if k is not None]
            levels = sorted_levels(keys)
            encoding[feature] = {
                "kind": "categorical",
                "levels": levels,
                "reference": levels[0] if levels else None,
            }
        else:
            encoding[feature] = {"kind": "numeric"}
    return encoding


def dummy_name(feature: str, level: str) -> str:
    return f"{feature}[{level}]"


def design_columns(features: list[str], encoding: dict[str, dict]) -> tuple[list[str], list[str]]:
    """Design column names and, for each, the feature it comes from."""
    names: list[str] = []
    owners: list[str] = []
    for feature in features:
        spec = encoding[feature]
        if spec["kind"] == "categorical":
            for level in spec["levels"]:
                if level == spec["reference"]:
                    continue
                names.append(dummy_name(feature, level))
                owners.append(feature)
        else:
            names.append(feature)
            owners.append(feature)
    return names, owners


def design_matrix(
    df: pd.DataFrame,
    features: list[str],
    encoding: dict[str, dict],
    *,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Design matrix ``(n_rows, n_design_columns)`` in original units, NaN where a feature is missing.

    A categorical value never seen at fit time gets all-zero dummies (it is scored as the
    reference level) and a note naming the column and the level.
    """
    blocks: list[np.ndarray] = []
    n = len(df)
    for feature in features:
        spec = encoding[feature]
        if feature not in df.columns:
            raise ValueError(f"column '{feature}' is missing from the table to score")
        if spec["kind"] == "numeric":
            values = pd.to_numeric(df[feature], errors="coerce").to_numpy(dtype=float)
            blocks.append(values.reshape(n, 1))
            continue
        keys = as_keys(df[feature])
        levels = [lv for lv in spec["levels"] if lv != spec["reference"]]
        block = np.zeros((n, len(levels)), dtype=float)
        missing = np.array([k is None for k in keys], dtype=bool)
        known = set(spec["levels"])
        unseen = sorted({k for k in keys if k is not None and k not in known})
        if unseen and notes is not None:
            notes.append(
                f"column '{feature}': level(s) {unseen} not seen when the model was fitted; "
                f"scored as the reference level '{spec['reference']}' (all-zero dummies)"
            )
        for j, level in enumerate(levels):
            block[:, j] = np.array([k == level for k in keys], dtype=float)
        block[missing, :] = np.nan
        blocks.append(block)
    if not blocks:
        return np.zeros((n, 0), dtype=float)
    return np.hstack(blocks)


def missing_rows(df: pd.DataFrame, features: list[str], encoding: dict[str, dict] | None = None) -> np.ndarray:
    """Boolean mask of rows missing any of ``features`` (numeric: non-numeric text counts as missing)."""
    mask = np.zeros(len(df), dtype=bool)
    for feature in features:
        if feature not in df.columns:
            mask[:] = True
            continue
        kind = (encoding or {}).get(feature, {}).get("kind")
        if kind == "categorical":
            mask |= np.array([k is None for k in as_keys(df[feature])], dtype=bool)
        elif kind == "numeric":
            mask |= pd.to_numeric(df[feature], errors="coerce").isna().to_numpy()
        else:
            mask |= df[feature].isna().to_numpy()
    return mask
