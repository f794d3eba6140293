"""Table 2: clinical variables by outcome group, with the test SPSS users expect.

Continuous variables: per group mean +/- SD, or median [Q1, Q3] (R's default quantiles) for a
variable compared by Mann-Whitney U (skewed data are described by what the test compares), with
the test chosen by

1. normality in each group by the Lilliefors test (Kolmogorov-Smirnov with the mean and SD
   estimated from the same data, as SPSS's "Tests of Normality" table; statsmodels
   ``lilliefors``, table p-values). The plain one-sample K-S with estimated parameters almost
   never rejects and is not used;
2. both groups normal: Levene's test centred on the mean (SPSS's "Levene's Test for Equality of
   Variances"); Student's t when it does not reject, Welch's t when it does (the SPSS row
   "equal variances not assumed");
3. a group not normal (or fewer than :data:`MIN_NORMALITY_N` values, or constant): the two-sided
   Mann-Whitney U test as R's ``wilcox.test`` defaults: exact p when both groups have fewer
   than 50 values and there are no ties, else the normal approximation with the tie-corrected
   variance and a continuity correction.

Categorical variables (see :mod:`engine.stats._design` for the rule): counts (percent of the
group) per level; Pearson's chi-square without Yates' correction (SPSS's headline "Pearson
Chi-Square" row), or Fisher's exact test when an expected count is < 5: ``scipy.stats.fisher_exact``
for 2x2, and for r x 2 tables the Freeman-Halton extension computed here by exact enumeration
of every table with the observed margins (:func:`fisher_exact_rx2`; R's ``fisher.test``
definition: the p-value sums the probabilities of the tables no more probable than the observed
one, with a relative tolerance of 1e-7). Each row names its test.

Missing values are dropped per variable.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from engine.stats._design import as_keys, resolve_categorical, sorted_levels
from engine.stats.models import label_vector

ALPHA_ASSUMPTIONS = 0.05

COLUMNS = [
    "variable", "level", "kind", "n_0", "n_1", "value_0", "value_1", "mean_0", "sd_0", "mean_1",
    "sd_1", "count_0", "count_1", "percent_0", "percent_1", "test", "statistic", "p", "note",
]

TABLE2_COLUMNS = ["split", "n_group_0", "n_group_1"] + COLUMNS

#: Column names the engine itself puts in a manifest/feature table (never clinical variables).
RESERVED = {"patient_id", "label", "split"}


#: Fewest values in a group for the Lilliefors normality test (statsmodels' table starts at 4).
MIN_NORMALITY_N = 4

#: Both groups below this size and no ties: exact Mann-Whitney p (R's ``wilcox.test`` default).
EXACT_MANN_WHITNEY_N = 50

TEST_STUDENT = "Student's t-test"
TEST_WELCH = "Welch's t-test"
TEST_MW_EXACT = "Mann-Whitney U (exact)"
TEST_MW_NORMAL = "Mann-Whitney U (normal approx., continuity corrected)"
TEST_CHI2 = "Pearson chi-square"
TEST_FISHER = "Fisher's exact test"
TEST_FISHER_RX2 = "Fisher-Freeman-Halton exact test"


def lilliefors_p(x: np.ndarray) -> float:
    """Lilliefors normality p-value (K-S with estimated mean and SD), as SPSS reports it."""
    from statsmodels.stats.diagnostic import lilliefors  # lazy: statsmodels is heavy; only where a model is fitted

    return float(lilliefors(np.asarray(x, dtype=float), dist="norm", pvalmethod="table")[1])


def choose_continuous_test(x0: np.ndarray, x1: np.ndarray) -> tuple[str, str]:
    """``("student" | "welch" | "mann-whitney", reason)`` by the SPSS rule of the module docstring."""
    for name, x in (("0", x0), ("1", x1)):
        if x.size < MIN_NORMALITY_N:
            return "mann-whitney", f"group {name} has fewer than {MIN_NORMALITY_N} values: normality not assessable"
        if not x.std(ddof=1) > 0:
            return "mann-whitney", f"group {name} is constant"
    for name, x in (("0", x0), ("1", x1)):
        p = lilliefors_p(x)
        if p <= ALPHA_ASSUMPTIONS:
            return "mann-whitney", f"group {name} not normal (Lilliefors p = {p:.3g})"
    levene = float(stats.levene(x0, x1, center="mean").pvalue)
    if levene <= ALPHA_ASSUMPTIONS:
        return "welch", f"both groups normal (Lilliefors); unequal variances (Levene p = {levene:.3g})"
    return "student", f"both groups normal (Lilliefors); equal variances (Levene p = {levene:.3g})"


def mann_whitney(x0: np.ndarray, x1: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Mann-Whitney U as R's ``wilcox.test(x0, x1)`` defaults: ``(U of x0, p, test name)``.

    Exact when both groups have fewer than :data:`EXACT_MANN_WHITNEY_N` values and no value is
    tied; otherwise the normal approximation with tie correction and continuity correction.
    """
    tied = np.unique(np.concatenate([x0, x1])).size < x0.size + x1.size
    if x0.size < EXACT_MANN_WHITNEY_N and x1.size < EXACT_MANN_WHITNEY_N and not tied:
        result = stats.mannwhitneyu(x0, x1, alternative="two-sided", method="exact")
        return float(result.statistic), float(result.pvalue), TEST_MW_EXACT
    result = stats.mannwhitneyu(x0, x1, alternative="two-sided", method="asymptotic", use_continuity=True)
    return float(result.statistic), float(result.pvalue), TEST_MW_NORMAL


def compare_continuous(x0: np.ndarray, x1: np.ndarray) -> tuple[str, float, float, str]:
    """``(test, statistic, p, reason)`` of two groups by the rule of the module docstring.

    The one place the rule is applied: Table 2's rows and the report's box plots (issue 21)
    use it, so a figure never shows another test's p than the table.
    """
    choice, reason = choose_continuous_test(x0, x1)
    if choice == "mann-whitney":
        statistic, p, test = mann_whitney(x0, x1)
    else:
        result = stats.ttest_ind(x0, x1, equal_var=choice == "student")
        statistic, p = float(result.statistic), float(result.pvalue)
        test = TEST_STUDENT if choice == "student" else TEST_WELCH
    return test, statistic, p, reason


def median_iqr(x: np.ndarray) -> str:
    """``median [Q1, Q3]`` with R's default quantiles (type 7, linear interpolation)."""
    q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    return f"{median:.2f} [{q1:.2f}, {q3:.2f}]"


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
    test, statistic, p, reason = compare_continuous(x0, x1)
    if test in (TEST_MW_EXACT, TEST_MW_NORMAL):
        # a rank test's variable is described by ranks' own summary, not by mean and SD (issue 21)
        row["value_0"], row["value_1"] = median_iqr(x0), median_iqr(x1)
    row.update(test=test, statistic=statistic, p=p, note=reason)
    return [row]


#: Most tables :func:`fisher_exact_rx2` enumerates before giving up (then chi-square, noted).
MAX_EXACT_TABLES = 2_000_000


def fisher_exact_rx2(table: np.ndarray) -> float:
    """Two-sided Fisher-Freeman-Halton exact p of an r x 2 table (R's ``fisher.test`` definition).

    Every table with the observed row and column sums is enumerated; its probability under
    independence is the multivariate hypergeometric ``prod_i C(r_i, a_i) / C(N, c_0)`` where
    ``a_i`` is the first column. The p-value is the total probability of the tables whose
    probability is at most the observed one's times ``1 + 1e-7`` (R's relative tolerance).

    Raises
    ------
    ValueError
        If the table is not r x 2 or more than :data:`MAX_EXACT_TABLES` tables would be enumerated.
    """
    from scipy.special import gammaln  # lazy: scipy.stats is heavy; `sarco --help` should not wait for it

    table = np.asarray(table, dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 2:
        raise ValueError(f"fisher_exact_rx2 needs an r x 2 table, got shape {table.shape}")
    rows = table.sum(axis=1)
    first_total = int(table[:, 0].sum())
    n_tables = float(np.prod(rows[:-1] + 1.0))
    if n_tables > MAX_EXACT_TABLES:
        raise ValueError(f"{n_tables:.3g} tables to enumerate (limit {MAX_EXACT_TABLES})")

    def log_comb(n, k):
        return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)

    grids = np.meshgrid(*[np.arange(r + 1) for r in rows[:-1]], indexing="ij")
    heads = np.stack([g.ravel() for g in grids], axis=1) if grids else np.zeros((1, 0), dtype=np.int64)
    last = first_total - heads.sum(axis=1)
    valid = (last >= 0) & (last <= rows[-1])
    columns = np.column_stack([heads[valid], last[valid]])
    log_p = log_comb(rows, columns).sum(axis=1) - log_comb(rows.sum(), first_total)
    observed = log_comb(rows, table[:, 0]).sum() - log_comb(rows.sum(), first_total)
    more_extreme = log_p <= observed + np.log1p(1e-7)
    return float(min(1.0, np.exp(log_p[more_extreme]).sum()))


def categorical_test(table: np.ndarray) -> tuple[str, float, float, str]:
    """``(test, statistic, p, note)`` for a levels x groups count table (rule of the module docstring)."""
    chi2, chi2_p, _, expected = stats.chi2_contingency(table, correction=False)
    if not (expected < 5).any():
        return TEST_CHI2, float(chi2), float(chi2_p), ""
    if table.shape == (2, 2):
        result = stats.fisher_exact(table)
        return TEST_FISHER, float(result.statistic), float(result.pvalue), "expected count < 5"
    try:
        return TEST_FISHER_RX2, float("nan"), fisher_exact_rx2(table), "expected count < 5"
    except ValueError as exc:
        return TEST_CHI2, float(chi2), float(chi2_p), f"expected count < 5 but no exact test ({exc})"


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
        test, statistic, p, note = categorical_test(table)
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
