"""DeLong AUC variance and test against a slow pairwise implementation of DeLong et al. (1988)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix, roc_auc_score

from engine.stats import auc_ci, binary_metrics, delong_auc_variance, delong_test, roc_summary, youden_cutoff


def _psi(x, y):
    return (x > y) + 0.5 * (x == y)


def _slow_components(y, score):
    """V10 (per case) and V01 (per control) by explicit pairwise comparison."""
    cases, controls = score[y == 1], score[y == 0]
    psi = np.array([[_psi(xi, yj) for yj in controls] for xi in cases], dtype=float)
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)


def _slow_delong_cov(y, s1, s2):
    a1, v10_1, v01_1 = _slow_components(y, s1)
    a2, v10_2, v01_2 = _slow_components(y, s2)
    m, n = v10_1.size, v01_1.size
    s10 = np.sum((v10_1 - a1) * (v10_2 - a2)) / (m - 1)
    s01 = np.sum((v01_1 - a1) * (v01_2 - a2)) / (n - 1)
    return s10 / m + s01 / n


@pytest.fixture
def scored():
    rng = np.random.default_rng(7)
    y = rng.binomial(1, 0.35, 90)
    s1 = np.round(rng.normal(0, 1, 90) + 1.2 * y, 1)  # rounded: plenty of ties
    s2 = np.round(0.6 * s1 + rng.normal(0, 1, 90) + 0.3 * y, 1)
    return y, s1, s2


def test_auc_and_variance_match_slow_delong(scored):
    y, s1, _ = scored
    auc, var = delong_auc_variance(y, s1)
    assert auc == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    _, v10, v01 = _slow_components(y, s1)
    slow_var = np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size
    assert var == pytest.approx(slow_var, abs=1e-10)


def test_delong_test_matches_slow_covariance(scored):
    y, s1, s2 = scored
    var1 = _slow_delong_cov(y, s1, s1)
    var2 = _slow_delong_cov(y, s2, s2)
    cov = _slow_delong_cov(y, s1, s2)
    z_ref = (roc_auc_score(y, s1) - roc_auc_score(y, s2)) / np.sqrt(var1 + var2 - 2 * cov)
    z, p = delong_test(y, s1, s2)
    assert z == pytest.approx(z_ref, abs=1e-9)
    assert p == pytest.approx(2 * stats.norm.sf(abs(z_ref)), abs=1e-9)
    assert delong_test(y, s1, s1) == (0.0, 1.0)


def test_auc_ci_is_normal_interval_clipped():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.25, 0.95])
    auc, low, high = auc_ci(y, s)
    assert (auc, low, high) == (1.0, 1.0, 1.0)  # perfect: variance 0
    rng = np.random.default_rng(0)
    y = rng.binomial(1, 0.5, 40)
    s = rng.normal(0, 1, 40) + 0.5 * y
    auc, var = delong_auc_variance(y, s)
    a, low, high = auc_ci(y, s, alpha=0.05)
    half = stats.norm.ppf(0.975) * np.sqrt(var)
    assert (low, high) == pytest.approx((max(0, auc - half), min(1, auc + half)))


def test_youden_cutoff_against_brute_force(scored):
    y, s1, _ = scored
    best = None
    for c in np.unique(s1)[::-1]:  # high to low: ties keep the highest cut-off
        sens = np.mean(s1[y == 1] >= c)
        spec = np.mean(s1[y == 0] < c)
        if best is None or sens + spec - 1 > best[3] + 1e-15:
            best = (c, sens, spec, sens + spec - 1)
    assert youden_cutoff(y, s1) == pytest.approx(best)


def test_youden_tie_keeps_the_highest_cutoff():
    # cut-offs 0.4 and 0.2 both give J = 0.5; the more specific (higher) one is returned
    assert youden_cutoff([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == (0.4, 0.5, 1.0, 0.5)


def test_binary_metrics_match_confusion_matrix(scored):
    y, s1, _ = scored
    cutoff = 0.5
    tn, fp, fn, tp = confusion_matrix(y, (s1 >= cutoff).astype(int)).ravel()
    m = binary_metrics(y, s1, cutoff)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))


def test_roc_summary_single_class_and_nan_rows():
    out = roc_summary([1, 1, 1], [0.2, 0.5, 0.9], train_cutoff=0.4)
    assert np.isnan(out["auc"]) and out["youden"] is None and "one outcome class" in out["note"]
    assert out["at_train_cutoff"]["sensitivity"] == pytest.approx(2 / 3)
    out = roc_summary([0, 1, np.nan, 1, 0], [0.1, 0.9, 0.5, np.nan, 0.2])
    assert out["n"] == 3 and out["auc"] == 1.0


def test_youden_exact_ties_take_the_highest_cutoff():
    """Issue 14: J compared exactly (tp N - fp P); among exact ties the highest cut-off (pROC's first)."""
    # 10 cases, 10 controls. Cut-off 0.9: tp 7, fp 1 (J = 0.7 - 0.1); 0.8: tp 9, fp 3 (J = 0.9 - 0.3).
    # Both J are exactly 0.6, but in floating point 0.9 - 0.3 > 0.7 - 0.1, so argmax(tpr - fpr) picks 0.8.
    y = np.r_[np.ones(7), 0, np.zeros(2), np.ones(2), np.ones(1), np.zeros(7)]
    s = np.r_[np.full(7, 0.9), 0.9, np.full(2, 0.85), np.full(2, 0.8), np.full(1, 0.1), np.full(7, 0.1)]
    assert (0.9 - 0.3) > (0.7 - 0.1)  # the floating-point trap this guards against
    cutoff, sensitivity, specificity, j = youden_cutoff(y, s)
    assert cutoff == 0.9
    assert (sensitivity, specificity) == (0.7, 0.9)
    assert j == pytest.approx(0.6, abs=1e-15)
