"""Table 2 (issue 14): each branch of the SPSS-convention test choice against scipy/statsmodels."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.diagnostic import lilliefors

from engine.stats import compare_groups, table2
from engine.stats.groups import fisher_exact_rx2

IDEAL_NORMAL = stats.norm.ppf((np.arange(1, 41) - 0.5) / 40)  # ideal normal samples of 40


def _frame(x0, x1, **extra):
    y = np.r_[np.zeros(len(x0)), np.ones(len(x1))]
    return pd.DataFrame({"label": y, "x": np.r_[x0, x1], **extra})


def _row(x0, x1):
    return compare_groups(_frame(x0, x1), variables=["x"]).iloc[0]


def test_normal_equal_variance_uses_student_t():
    x0, x1 = 60 + 5 * IDEAL_NORMAL, 64 + 5 * IDEAL_NORMAL[::-1]
    assert stats.levene(x0, x1, center="mean").pvalue > 0.05
    row = _row(x0, x1)
    assert row["test"] == "Student's t-test"
    assert row["p"] == pytest.approx(stats.ttest_ind(x0, x1, equal_var=True).pvalue, rel=1e-12)
    assert row["value_0"] == f"{x0.mean():.2f} ± {x0.std(ddof=1):.2f}"


def test_normal_unequal_variance_uses_welch_not_mann_whitney():
    x0, x1 = 60 + 2 * IDEAL_NORMAL, 63 + 12 * IDEAL_NORMAL
    assert stats.levene(x0, x1, center="mean").pvalue < 0.05
    row = _row(x0, x1)
    assert row["test"] == "Welch's t-test" and "Levene" in row["note"]
    assert row["p"] == pytest.approx(stats.ttest_ind(x0, x1, equal_var=False).pvalue, rel=1e-12)


def test_lilliefors_rejects_what_plain_ks_with_estimated_parameters_accepts():
    # ideal exponential quantiles: the plain K-S with the mean/SD estimated from the data does not
    # reject (p > 0.05), Lilliefors (as SPSS) does, so the rank test is used
    n = 60
    x0 = -np.log(1 - (np.arange(1, n + 1) - 0.5) / n)
    x1 = x0[::-1] * 1.3 + 0.01 * np.arange(n)  # no ties
    assert stats.kstest(x0, "norm", args=(x0.mean(), x0.std(ddof=1))).pvalue > 0.05
    assert lilliefors(x0, dist="norm", pvalmethod="table")[1] < 0.05
    row = _row(x0, x1)
    assert row["test"].startswith("Mann-Whitney") and "Lilliefors" in row["note"]


def test_mann_whitney_exact_below_50_without_ties():
    rng = np.random.default_rng(0)
    x0, x1 = rng.lognormal(0, 1.2, 30), rng.lognormal(0.8, 1.2, 25)
    row = _row(x0, x1)
    assert row["test"] == "Mann-Whitney U (exact)"
    assert row["p"] == pytest.approx(stats.mannwhitneyu(x0, x1, alternative="two-sided", method="exact").pvalue,
                                     rel=1e-12)


def _normal_approx_p(x0, x1):
    """R's wilcox.test(exact=FALSE, correct=TRUE): tie-corrected variance, continuity correction."""
    n0, n1 = x0.size, x1.size
    ranks = stats.rankdata(np.r_[x0, x1])
    u = ranks[:n0].sum() - n0 * (n0 + 1) / 2
    _, ties = np.unique(np.r_[x0, x1], return_counts=True)
    n = n0 + n1
    sigma = np.sqrt(n0 * n1 / 12 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1))))
    z = (abs(u - n0 * n1 / 2) - 0.5) / sigma
    return 2 * stats.norm.sf(z)


def test_mann_whitney_normal_approximation_with_ties():
    rng = np.random.default_rng(1)
    x0 = np.round(rng.lognormal(1, 1, 30))  # rounded: ties
    x1 = np.round(rng.lognormal(1.6, 1, 28))
    row = _row(x0, x1)
    assert row["test"] == "Mann-Whitney U (normal approx., continuity corrected)"
    assert row["p"] == pytest.approx(_normal_approx_p(x0, x1), rel=1e-9)


def test_mann_whitney_normal_approximation_from_50_per_group():
    rng = np.random.default_rng(2)
    x0, x1 = rng.lognormal(0, 1, 55), rng.lognormal(0.4, 1, 60)
    row = _row(x0, x1)
    assert row["test"] == "Mann-Whitney U (normal approx., continuity corrected)"
    assert row["p"] == pytest.approx(_normal_approx_p(x0, x1), rel=1e-9)


def test_chi_square_is_pearson_without_yates():
    sex = ["F"] * 60 + ["M"] * 40 + ["F"] * 35 + ["M"] * 45
    rows = compare_groups(_frame(np.zeros(100), np.zeros(80), sex=sex), variables=["sex"])
    assert rows["test"].eq("Pearson chi-square").all()
    table = np.array([[60, 35], [40, 45]])
    n = table.sum()
    expected = np.outer(table.sum(1), table.sum(0)) / n
    pearson = ((table - expected) ** 2 / expected).sum()  # by hand, no continuity correction
    assert rows["statistic"].iloc[0] == pytest.approx(pearson, rel=1e-12)
    assert rows["p"].iloc[0] == pytest.approx(stats.chi2.sf(pearson, 1), rel=1e-12)
    assert rows["p"].iloc[0] != pytest.approx(stats.chi2_contingency(table, correction=True).pvalue, rel=1e-3)


def test_small_expected_2x2_uses_fisher():
    small = _frame(np.zeros(20), np.zeros(20), flag=["yes"] * 1 + ["no"] * 19 + ["yes"] * 5 + ["no"] * 15)
    rows = compare_groups(small, variables=["flag"], categorical=["flag"])
    assert list(rows["level"]) == ["no", "yes"] and rows["test"].eq("Fisher's exact test").all()
    assert list(rows["count_0"]) == [19, 1] and list(rows["count_1"]) == [15, 5]
    assert rows["p"].iloc[0] == pytest.approx(stats.fisher_exact([[19, 15], [1, 5]]).pvalue, rel=1e-12)


def _freeman_halton_reference(table):
    """Enumerate every r x 2 table with the margins; probabilities from scipy's random_table."""
    table = np.asarray(table)
    rows, cols = table.sum(1), table.sum(0)
    dist = stats.random_table(rows, cols)
    observed = dist.pmf(table)
    total = 0.0
    for first in itertools.product(*[range(r + 1) for r in rows]):
        first = np.array(first)
        if first.sum() != cols[0]:
            continue
        candidate = np.column_stack([first, rows - first])
        p = dist.pmf(candidate)
        if p <= observed * (1 + 1e-7):
            total += p
    return total


@pytest.mark.parametrize("table", [[[2, 5], [3, 0], [1, 4]], [[0, 3], [4, 1], [2, 2], [1, 5]], [[3, 1], [1, 3]]])
def test_fisher_freeman_halton_rx2_against_enumeration(table):
    assert fisher_exact_rx2(np.array(table)) == pytest.approx(_freeman_halton_reference(table), rel=1e-10)
    if np.shape(table) == (2, 2):  # and Fisher's own test where scipy has it exactly
        assert fisher_exact_rx2(np.array(table)) == pytest.approx(stats.fisher_exact(table).pvalue, rel=1e-10)


def test_small_expected_rx2_uses_exact_test():
    levels = ["a"] * 2 + ["b"] * 3 + ["c"] * 1 + ["a"] * 5 + ["b"] * 0 + ["c"] * 4
    rows = compare_groups(_frame(np.zeros(6), np.zeros(9), grade=levels), variables=["grade"])
    assert rows["test"].eq("Fisher-Freeman-Halton exact test").all()
    assert rows["p"].iloc[0] == pytest.approx(_freeman_halton_reference([[2, 5], [3, 0], [1, 4]]), rel=1e-10)


def test_integer_levels_are_categorical_and_missing_dropped():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"label": rng.integers(0, 2, 120).astype(float),
                       "hypertension": rng.integers(0, 2, 120).astype(float),
                       "age": rng.normal(68, 7, 120)})
    df.loc[:9, "age"] = np.nan
    df.loc[5, "label"] = np.nan
    out = compare_groups(df, variables=["hypertension", "age"])
    assert set(out.loc[out["variable"] == "hypertension", "kind"]) == {"categorical"}
    age = out[out["variable"] == "age"].iloc[0]
    assert age["n_0"] + age["n_1"] == 110


def test_table2_loops_over_splits_in_study_order():
    rng = np.random.default_rng(2)
    n = 90
    df = pd.DataFrame({"label": rng.integers(0, 2, n).astype(float), "age": rng.normal(68, 7, n),
                       "split": rng.choice(["validation", "train", "prospective"], n)})
    out = table2(df, variables=["age"])
    assert list(out["split"]) == ["train", "validation", "prospective"]
    train = df[df["split"] == "train"]
    assert out.iloc[0]["n_group_1"] == int((train["label"] == 1).sum())
