"""Table 2 test selection and p-values against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from engine.stats import compare_groups, table2


def _frame(x0, x1, **extra):
    y = np.r_[np.zeros(len(x0)), np.ones(len(x1))]
    return pd.DataFrame({"label": y, "x": np.r_[x0, x1], **extra})


def test_normal_equal_variance_uses_t_test():
    q = stats.norm.ppf((np.arange(1, 41) - 0.5) / 40)  # ideal normal samples
    x0, x1 = 60 + 5 * q, 64 + 5 * q[::-1]
    row = compare_groups(_frame(x0, x1), variables=["x"]).iloc[0]
    assert row["test"] == "t-test"
    assert row["p"] == pytest.approx(stats.ttest_ind(x0, x1, equal_var=True).pvalue, rel=1e-12)
    assert row["value_0"] == f"{x0.mean():.2f} ± {x0.std(ddof=1):.2f}"


def test_skewed_uses_mann_whitney():
    rng = np.random.default_rng(0)
    x0, x1 = rng.lognormal(0, 1.2, 60), rng.lognormal(0.5, 1.2, 50)
    row = compare_groups(_frame(x0, x1), variables=["x"]).iloc[0]
    assert row["test"] == "mann-whitney" and "Kolmogorov" in row["note"]
    assert row["p"] == pytest.approx(stats.mannwhitneyu(x0, x1, alternative="two-sided").pvalue, rel=1e-12)


def test_unequal_variance_uses_mann_whitney():
    q = stats.norm.ppf((np.arange(1, 41) - 0.5) / 40)
    x0, x1 = 60 + 2 * q, 60 + 12 * q
    row = compare_groups(_frame(x0, x1), variables=["x"]).iloc[0]
    assert row["test"] == "mann-whitney" and "Levene" in row["note"]


def test_small_expected_counts_use_fisher_else_chi_square():
    small = _frame(np.zeros(20), np.zeros(20), flag=["yes"] * 1 + ["no"] * 19 + ["yes"] * 5 + ["no"] * 15)
    rows = compare_groups(small, variables=["flag"], categorical=["flag"])
    assert list(rows["level"]) == ["no", "yes"] and rows["test"].eq("fisher").all()
    assert list(rows["count_0"]) == [19, 1] and list(rows["count_1"]) == [15, 5]
    assert rows["p"].iloc[0] == pytest.approx(stats.fisher_exact([[19, 15], [1, 5]]).pvalue, rel=1e-12)

    sex = ["F"] * 60 + ["M"] * 40 + ["F"] * 35 + ["M"] * 45
    big = _frame(np.zeros(100), np.zeros(80), sex=sex)
    rows = compare_groups(big, variables=["sex"])  # object dtype: categorical by default
    assert rows["test"].eq("chi-square").all()
    assert rows["p"].iloc[0] == pytest.approx(stats.chi2_contingency([[60, 35], [40, 45]]).pvalue, rel=1e-12)


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
