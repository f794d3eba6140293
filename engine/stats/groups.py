"""Table 2: clinical variables by outcome group, with the test the paper's rule picks.

Continuous variables: mean +/- SD per group; Student's t-test (equal variances) when both
groups pass a Kolmogorov-Smirnov normality test (``scipy.stats.kstest`` against a normal with
the group's own mean and sample SD, alpha 0.05; this is the plain KS test with estimated
parameters, as SPSS's one-sample K-S, not Lilliefors, so it rejects less often) AND Levene's
test (``scipy.stats.levene(center="mean")``, Levene's original mean-centred form, alpha 0.05);
otherwise the two-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu`` defaults: exact for
small samples without ties, else normal approximation with continuity correction). A group
with fewer than 3 values cannot be checked for normality: Mann-Whitney.

Categorical variables (see :mod:`engine.stats._design` for the rule): counts per level;
Pearson's chi-square (``scipy.stats.chi2_contingency`` default, so Yates' continuity correction
on 2x2 tables), or Fisher's exact test (two-sided) when a 2x2 table has an expected count < 5.
A larger table with an expected count < 5 keeps the chi-square p with a note (no exact r x c
test in scipy).

Missing values are dropped per variable.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from ._design import as_keys, resolve_categorical, sorted_levels

ALPHA_ASSUMPTIONS = 0.05

COLUMNS = [
    "variable", "level", "kind", "n_0", "n_1", "value_0", "value_1", "mean_0", "sd_0", "mean_1",
    "sd_1", "count_0", "count_1", "percent_0", "percent_1", "test", "statistic", "p", "note",
]

TABLE2_COLUMNS = ["split", "n_group_0", "n_group_1"] + COLUMNS

#: Column names the engine itself puts in a manifest/feature table (never clinical variables).
RESERVED = {"patient_id", "label", "split"}


def choose_continuous_test(x0: np.ndarray, x1: np.ndarray) -> tuple[str, str]:
    """``("t-test" | "mann-whitney", reason)`` by the KS-normality + Levene rule."""
    if x0.size < 3 or x1.size < 3:
        return "mann-whitney", "fewer than 3 values in a group: normality not assessable"
    for name, x in (("0", x0), ("1", x1)):
        sd = x.std(ddof=1)
        if not sd > 0:
            return "mann-whitney", f"group {name} is constant"
        if stats.kstest(x, "norm", args=(x.mean(), sd)).pvalue <= ALPHA_ASSUMPTIONS:
            return "mann-whitney", f"group {name} fails Kolmogorov-Smirnov normality"
    if stats.levene(x0, x1, center="mean").pvalue <= ALPHA_ASSUMPTIONS:
        return "mann-whitney", "Levene: unequal variances"
    return "t-test", ""


def _continuous(variable: str, values: pd.Series, y: np.ndarray) -> list[dict]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    keep = ~np.isnan(x)
    x0, x1 = x[keep & (y == 0)], x[keep & (y == 1)]
    row = {"variable": variable, "level": "", "kind": "continuous", "n_0": x0.size, "n_1": x1.size}
    for g, xs in (("0", x0), ("1", x1)):
        mean = float(xs.mean()) if xs.size else np.nan
        sd = float(xs.std(ddof=1)) if xs.size > 1 else np.nan
        row[f"mean_{g}"], row[f"sd_{g}"] = mean, sd
        row[f"value_{g}"] = f"{mean:.2f} ± {sd:.2f}" if xs.size else ""
    if x0.size == 0 or x1.size == 0:
        row.update(test="", statistic=np.nan, p=np.nan, note="a group has no values: no test")
        return [row]
    test, reason = choose_continuous_test(x0, x1)
    if test == "t-test":
        result = stats.ttest_ind(x0, x1, equal_var=True)
    else:
        result = stats.mannwhitneyu(x0, x1, alternative="two-sided")
    row.update(test=test, statistic=float(result.statistic), p=float(result.pvalue), note=reason)
    return [row]


def _categorical(variable: str, values: pd.Series, y: np.ndarray) -> list[dict]:
    keys = as_keys(values)
    keep = np.array([k is not None for k in keys], dtype=bool)
    levels = sorted_levels(k for k in keys[keep])
    table = np.array(
        [[int(np.sum(keep & (keys == lv) & (y == g))) for g in (0, 1)] for lv in levels], dtype=int
    ).reshape(len(levels), 2)
    n0, n1 = int(table[:, 0].sum()), int(table[:, 1].sum())
    test, statistic, p, note = "", np.nan, np.nan, ""
    if len(levels) < 2:
        note = "a single level: no test"
    elif n0 == 0 or n1 == 0:
        note = "a group has no values: no test"
    else:
        chi2, chi2_p, _, expected = stats.chi2_contingency(table)
        small = bool((expected < 5).any())
        if small and table.shape == (2, 2):
            result = stats.fisher_exact(table)
            test, statistic, p = "fisher", float(result.statistic), float(result.pvalue)
            note = "expected count < 5"
        else:
            test, statistic, p = "chi-square", float(chi2), float(chi2_p)
            if small:
                note = (f"expected count < 5 in a {table.shape[0]}x2 table: chi-square approximation "
                        f"may be poor (Fisher's exact test is used for 2x2 only)")
            elif table.shape == (2, 2):
                note = "Yates' continuity correction"
    rows = []
    for i, level in enumerate(levels):
        c0, c1 = int(table[i, 0]), int(table[i, 1])
        rows.append(
            {
                "variable": variable, "level": level, "kind": "categorical", "n_0": n0, "n_1": n1,
                "count_0": c0, "count_1": c1,
                "percent_0": 100.0 * c0 / n0 if n0 else np.nan,
                "percent_1": 100.0 * c1 / n1 if n1 else np.nan,
                "value_0": str(c0), "value_1": str(c1),
                "test": test, "statistic": statistic, "p": p, "note": note,
            }
        )
    if not rows:
        rows.append({"variable": variable, "level": "", "kind": "categorical", "n_0": 0, "n_1": 0,
                     "test": "", "statistic": np.nan, "p": np.nan, "note": "no values"})
    return rows


def _outcome(df: pd.DataFrame, label: str) -> np.ndarray:
    from .models import label_vector

    return label_vector(df[label])


def compare_groups(
    df: pd.DataFrame,
    *,
    label: str = "label",
    variables: Iterable[str] | None = None,
    categorical: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Compare variables between the ``label == 0`` and ``label == 1`` groups (one split).

    Parameters
    ----------
    df : DataFrame
        One row per patient; rows with an empty label are ignored.
    variables : list of str, optional
        Default: every column except ``patient_id``, ``split`` and the label column.
    categorical : list of str, optional
        The categorical variables; default: the rule of :func:`engine.stats._design.is_categorical`.

    Returns
    -------
    DataFrame
        Columns :data:`COLUMNS`; one row per continuous variable, one per level of a categorical
        one (the test and p repeated on each level's row). Suffix ``_0`` = non-sarcopenia,
        ``_1`` = sarcopenia; ``n_*`` count the non-missing values of that variable in the group.
    """
    if label not in df.columns:
        raise ValueError(f"label column '{label}' not in the table")
    if variables is None:
        variables = [c for c in df.columns if c not in RESERVED | {label}]
    variables = list(variables)
    missing = [v for v in variables if v not in df.columns]
    if missing:
        raise ValueError(f"variable(s) {missing} not in the table")
    y_all = _outcome(df, label)
    keep = ~np.isnan(y_all)
    data, y = df.loc[keep], y_all[keep]
    categorical = set(resolve_categorical(df, variables, categorical))
    rows: list[dict] = []
    for variable in variables:
        if variable in categorical:
            rows.extend(_categorical(variable, data[variable], y))
        else:
            rows.extend(_continuous(variable, data[variable], y))
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    return table[COLUMNS]


def ordered_splits(values: Iterable) -> list[str]:
    """Split names in study order: train, validation, prospective, then any others sorted."""
    present = {str(v) for v in values if isinstance(v, str) or pd.notna(v)}
    known = [s for s in ("train", "validation", "prospective") if s in present]
    return known + sorted(present - set(known))


def table2(
    df: pd.DataFrame,
    *,
    split: str = "split",
    label: str = "label",
    variables: Iterable[str] | None = None,
    categorical: Iterable[str] | None = None,
) -> pd.DataFrame:
    """:func:`compare_groups` for every split (train, validation, prospective, others).

    The categorical/continuous decision is made once on the whole table so a variable reads the
    same in every split. Adds ``split`` and the group sizes ``n_group_0``/``n_group_1`` (labelled
    patients of the split).
    """
    if split not in df.columns:
        raise ValueError(f"split column '{split}' not in the table")
    if variables is None:
        variables = [c for c in df.columns if c not in RESERVED | {label, split}]
    variables = list(variables)
    categorical = resolve_categorical(df, variables, categorical)
    y_all = _outcome(df, label)
    parts = []
    for name in ordered_splits(df[split].unique()):
        mask = (df[split].astype(str) == name).to_numpy() & df[split].notna().to_numpy()
        part = compare_groups(df.loc[mask], label=label, variables=variables, categorical=categorical)
        part.insert(0, "n_group_1", int(np.sum(y_all[mask] == 1)))
        part.insert(0, "n_group_0", int(np.sum(y_all[mask] == 0)))
        part.insert(0, "split", name)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=TABLE2_COLUMNS)
    return pd.concat(parts, ignore_index=True)[TABLE2_COLUMNS]
