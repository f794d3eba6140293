"""Intraclass correlation (observer agreement) from a long table of target, rater, value.

The six ICCs of Shrout & Fleiss (1979), "Intraclass correlations: uses in assessing rater
reliability", Psychol. Bull. 86(2), from the two-way ANOVA mean squares of an ``n`` targets x
``k`` raters complete design:

=======  ====================================================  ====================================
ICC1     (MSR - MSW) / (MSR + (k-1) MSW)                        one-way random, single rater
ICC2     (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)    two-way random, absolute agreement
ICC3     (MSR - MSE) / (MSR + (k-1) MSE)                        two-way mixed, consistency
ICC1k    (MSR - MSW) / MSR                                      mean of k raters
ICC2k    (MSR - MSE) / (MSR + (MSC - MSE) / n)
ICC3k    (MSR - MSE) / MSR
=======  ====================================================  ====================================

MSR: between targets; MSC: between raters; MSE: residual; MSW: within targets (one-way).
F tests of ICC = 0: ``MSR/MSW`` on (n-1, n(k-1)) for ICC1/ICC1k and ``MSR/MSE`` on
(n-1, (n-1)(k-1)) for the others. Confidence intervals follow McGraw & Wong (1996),
"Forming inferences about some intraclass correlation coefficients", Psychol. Methods 1(1),
Tables 7-8 (the same formulas as R's ``psych::ICC`` and ``pingouin.intraclass_corr``); for ICC2
the F quantiles use Satterthwaite's degrees of freedom. The study reports ICC2 (ICC(A,1):
two-way random effects, absolute agreement, single measures).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DESCRIPTIONS = {
    "ICC1": "single rater, one-way random effects, absolute agreement",
    "ICC2": "single rater, two-way random effects, absolute agreement",
    "ICC3": "single rater, two-way mixed effects, consistency",
    "ICC1k": "mean of k raters, one-way random effects, absolute agreement",
    "ICC2k": "mean of k raters, two-way random effects, absolute agreement",
    "ICC3k": "mean of k raters, two-way mixed effects, consistency",
}

COLUMNS = ["type", "description", "icc", "f", "df1", "df2", "p", "ci_low", "ci_high"]


def ratings_matrix(df: pd.DataFrame, *, target: str, rater: str, value: str) -> pd.DataFrame:
    """Pivot a long table to ``targets x raters``; a missing or duplicated cell is a ``ValueError``."""
    for column in (target, rater, value):
        if column not in df.columns:
            raise ValueError(f"column '{column}' not in the table")
    data = df[[target, rater, value]].copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    duplicated = data.duplicated(subset=[target, rater], keep=False)
    if duplicated.any():
        pairs = data.loc[duplicated, [target, rater]].drop_duplicates().head(5).values.tolist()
        raise ValueError(f"more than one rating for (target, rater) {pairs}; one rating per cell expected")
    wide = data.pivot(index=target, columns=rater, values=value)
    incomplete = wide.index[wide.isna().any(axis=1)].tolist()
    if incomplete:
        shown = ", ".join(str(t) for t in incomplete[:10]) + (" ..." if len(incomplete) > 10 else "")
        raise ValueError(
            f"ICC needs a complete design (every rater rates every target); target(s) with missing "
            f"ratings: {shown}"
        )
    if wide.shape[0] < 2 or wide.shape[1] < 2:
        raise ValueError(f"ICC needs at least 2 targets and 2 raters; got {wide.shape[0]} x {wide.shape[1]}")
    return wide


def anova_mean_squares(ratings: np.ndarray) -> dict:
    """Two-way ANOVA (no replication) of an ``(n targets, k raters)`` matrix."""
    Y = np.asarray(ratings, dtype=float)
    n, k = Y.shape
    grand = Y.mean()
    ss_rows = k * np.sum((Y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((Y.mean(axis=0) - grand) ** 2)
    ss_total = np.sum((Y - grand) ** 2)
    ss_error = ss_total - ss_rows - ss_cols
    return {
        "n": n, "k": k,
        "msr": ss_rows / (n - 1),
        "msc": ss_cols / (k - 1),
        "mse": ss_error / ((n - 1) * (k - 1)),
        "msw": (ss_cols + ss_error) / (n * (k - 1)),
    }


def icc_from_matrix(ratings: np.ndarray, *, alpha: float = 0.05) -> pd.DataFrame:
    """The six ICCs with F tests and ``1 - alpha`` CIs from an ``(n targets, k raters)`` matrix."""
    from scipy import stats  # lazy: scipy.stats is heavy; `sarco --help` should not wait for it

    ms = anova_mean_squares(ratings)
    n, k = ms["n"], ms["k"]
    msr, msc, mse, msw = ms["msr"], ms["msc"], ms["mse"], ms["msw"]
    q = 1.0 - alpha / 2.0

    with np.errstate(divide="ignore", invalid="ignore"):
        icc1 = (msr - msw) / (msr + (k - 1) * msw)
        icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        icc3 = (msr - mse) / (msr + (k - 1) * mse)
        icc1k = (msr - msw) / msr
        icc2k = (msr - mse) / (msr + (msc - mse) / n)
        icc3k = (msr - mse) / msr

        # one-way: F = MSR / MSW on (n-1, n(k-1))
        df1, df_w, df_e = n - 1, n * (k - 1), (n - 1) * (k - 1)
        f1 = msr / msw
        p1 = stats.f.sf(f1, df1, df_w)
        f1_low = f1 / stats.f.ppf(q, df1, df_w)
        f1_high = f1 * stats.f.ppf(q, df_w, df1)
        ci1 = ((f1_low - 1) / (f1_low + k - 1), (f1_high - 1) / (f1_high + k - 1))
        ci1k = (1 - 1 / f1_low, 1 - 1 / f1_high)

        # two-way: F = MSR / MSE on (n-1, (n-1)(k-1))
        f3 = msr / mse
        p3 = stats.f.sf(f3, df1, df_e)
        f3_low = f3 / stats.f.ppf(q, df1, df_e)
        f3_high = f3 * stats.f.ppf(q, df_e, df1)
        ci3 = ((f3_low - 1) / (f3_low + k - 1), (f3_high - 1) / (f3_high + k - 1))
        ci3k = (1 - 1 / f3_low, 1 - 1 / f3_high)

        # ICC(A,1): McGraw & Wong (1996) Table 7, Satterthwaite degrees of freedom
        a = k * icc2 / (n * (1 - icc2))
        b = 1 + k * icc2 * (n - 1) / (n * (1 - icc2))
        v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / df_e)
        f_low = stats.f.ppf(q, df1, v)
        f_high = stats.f.ppf(q, v, df1)
        low2 = n * (msr - f_low * mse) / (f_low * (k * msc + (k * n - k - n) * mse) + n * msr)
        high2 = n * (f_high * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_high * msr)
        ci2 = (low2, high2)
        ci2k = (low2 * k / (1 + low2 * (k - 1)), high2 * k / (1 + high2 * (k - 1)))

    rows = [
        ("ICC1", icc1, f1, df1, df_w, p1, ci1),
        ("ICC2", icc2, f3, df1, df_e, p3, ci2),
        ("ICC3", icc3, f3, df1, df_e, p3, ci3),
        ("ICC1k", icc1k, f1, df1, df_w, p1, ci1k),
        ("ICC2k", icc2k, f3, df1, df_e, p3, ci2k),
        ("ICC3k", icc3k, f3, df1, df_e, p3, ci3k),
    ]
    table = pd.DataFrame(
        [
            {"type": t, "description": DESCRIPTIONS[t], "icc": float(value), "f": float(f),
             "df1": float(d1), "df2": float(d2), "p": float(p), "ci_low": float(ci[0]), "ci_high": float(ci[1])}
            for t, value, f, d1, d2, p, ci in rows
        ],
        columns=COLUMNS,
    )
    table.attrs.update(n_targets=int(n), n_raters=int(k), alpha=float(alpha))
    return table


def icc(df: pd.DataFrame, *, target: str, rater: str, value: str, alpha: float = 0.05) -> pd.DataFrame:
    """ICC1, ICC2, ICC3, ICC1k, ICC2k, ICC3k from a long table (one row per target x rater).

    Parameters
    ----------
    df : DataFrame
        Long table with columns ``target`` (e.g. patient id), ``rater`` (reader or session) and
        ``value`` (the measurement, e.g. ``ct_otsu_fat_percent``).

    Returns
    -------
    DataFrame
        Columns ``type, description, icc, f, df1, df2, p, ci_low, ci_high`` (``attrs``:
        ``n_targets``, ``n_raters``, ``alpha``).

    Raises
    ------
    ValueError
        A missing column, a missing (or non-numeric) rating, naming the target(s), or a
        duplicated (target, rater) cell.
    """
    wide = ratings_matrix(df, target=target, rater=rater, value=value)
    return icc_from_matrix(wide.to_numpy(dtype=float), alpha=alpha)
