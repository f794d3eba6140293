"""ICC against Shrout & Fleiss (1979) Table 2 and the McGraw & Wong interval formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from engine.stats import icc
from engine.stats.icc import anova_mean_squares

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges
SF = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float)


def _long(matrix):
    n, k = matrix.shape
    return pd.DataFrame({"patient": np.repeat([f"S{i + 1}" for i in range(n)], k),
                         "reader": np.tile([f"J{j + 1}" for j in range(k)], n),
                         "value": matrix.ravel()})


def test_shrout_fleiss_published_values():
    table = icc(_long(SF), target="patient", rater="reader", value="value").set_index("type")
    published = {"ICC1": 0.17, "ICC2": 0.29, "ICC3": 0.71, "ICC1k": 0.44, "ICC2k": 0.62, "ICC3k": 0.91}
    for kind, value in published.items():
        assert round(table.loc[kind, "icc"], 2) == value, kind


def test_shrout_fleiss_intervals_as_documented_by_psych():
    # R psych::ICC(sf) documented output for the same data (lower, upper bound; alpha 0.05)
    documented = {"ICC1": (-0.13, 0.72), "ICC2": (0.02, 0.76), "ICC3": (0.34, 0.95),
                  "ICC1k": (-0.88, 0.91), "ICC2k": (0.07, 0.93), "ICC3k": (0.68, 0.99)}
    table = icc(_long(SF), target="patient", rater="reader", value="value").set_index("type")
    for kind, (low, high) in documented.items():
        assert table.loc[kind, "ci_low"] == pytest.approx(low, abs=0.006), kind
        assert table.loc[kind, "ci_high"] == pytest.approx(high, abs=0.006), kind
    assert table.loc["ICC1", "f"] == pytest.approx(1.795, abs=1e-3)
    assert table.loc["ICC2", "f"] == pytest.approx(11.027, abs=1e-3)


def test_mean_squares_match_two_way_anova_and_icc2_interval_shrout_fleiss_form():
    rng = np.random.default_rng(5)
    Y = rng.normal(50, 10, (15, 1)) + rng.normal(0, 3, (1, 3)) + rng.normal(0, 4, (15, 3))
    ms = anova_mean_squares(Y)
    n, k = Y.shape
    # textbook sums of squares by explicit loops
    g = Y.mean()
    ssr = sum(k * (Y[i].mean() - g) ** 2 for i in range(n))
    ssc = sum(n * (Y[:, j].mean() - g) ** 2 for j in range(k))
    sse = sum((Y[i, j] - Y[i].mean() - Y[:, j].mean() + g) ** 2 for i in range(n) for j in range(k))
    assert ms["msr"] == pytest.approx(ssr / (n - 1))
    assert ms["msc"] == pytest.approx(ssc / (k - 1))
    assert ms["mse"] == pytest.approx(sse / ((n - 1) * (k - 1)))
    table = icc(_long(Y), target="patient", rater="reader", value="value").set_index("type")
    # Shrout & Fleiss (1979) eq. for the ICC(2,1) interval's Satterthwaite df (psych's form)
    r = table.loc["ICC2", "icc"]
    fj = ms["msc"] / ms["mse"]
    vn = (k - 1) * (n - 1) * (k * r * fj + n * (1 + (k - 1) * r) - k * r) ** 2
    vd = (n - 1) * k**2 * r**2 * fj**2 + (n * (1 + (k - 1) * r) - k * r) ** 2
    v = vn / vd
    fu, fl = stats.f.ppf(0.975, n - 1, v), stats.f.ppf(0.975, v, n - 1)
    low = n * (ms["msr"] - fu * ms["mse"]) / (fu * (k * ms["msc"] + (k * n - k - n) * ms["mse"]) + n * ms["msr"])
    high = n * (fl * ms["msr"] - ms["mse"]) / (k * ms["msc"] + (k * n - k - n) * ms["mse"] + n * fl * ms["msr"])
    assert table.loc["ICC2", "ci_low"] == pytest.approx(low, rel=1e-9)
    assert table.loc["ICC2", "ci_high"] == pytest.approx(high, rel=1e-9)
    assert table.loc["ICC2", "ci_low"] < r < table.loc["ICC2", "ci_high"]


def test_missing_rating_names_the_target():
    data = _long(SF)
    data = data[~((data["patient"] == "S4") & (data["reader"] == "J2"))]
    with pytest.raises(ValueError, match="S4"):
        icc(data, target="patient", rater="reader", value="value")
    data = _long(SF)
    data.loc[0, "value"] = np.nan
    with pytest.raises(ValueError, match="S1"):
        icc(data, target="patient", rater="reader", value="value")
