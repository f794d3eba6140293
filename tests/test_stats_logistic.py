"""Logistic layer against statsmodels' Logit on raw (unstandardised) data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from engine.stats import LogisticModel, multivariable_logistic, univariate_logistic
from engine.stats.models import fit_logistic_model


def _cohort(n=220, seed=3):
    rng = np.random.default_rng(seed)
    age = rng.normal(68, 7, n)
    bmi = rng.normal(24, 3.3, n)
    albumin = rng.normal(38, 3.2, n)
    muscle_volume = rng.normal(8.0e4, 1.1e4, n)  # mm^3: a scale far from the others
    rbc = rng.normal(4.4, 0.5, n)
    hemoglobin = 30 * rbc + rng.normal(0, 6, n)  # a proxy: enters univariately, leaves in the model
    noise = rng.normal(0, 1, n)
    eta = (
        -1.0
        + 0.07 * (age - 68)
        - 0.2 * (bmi - 24)
        - 0.15 * (albumin - 38)
        - 2.0e-5 * (muscle_volume - 8e4)
        - 0.8 * (rbc - 4.4)
    )
    y = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"label": y, "age": age, "bmi": bmi, "albumin": albumin, "muscle_volume": muscle_volume,
                         "rbc": rbc, "hemoglobin": hemoglobin, "noise": noise})


def _raw_fit(df, columns):
    X = sm.add_constant(df[columns].to_numpy(dtype=float), has_constant="add")
    return sm.Logit(df["label"].to_numpy(), X).fit(disp=0, method="newton", maxiter=100, tol=1e-12)


def test_multivariable_matches_statsmodels_on_raw_data():
    df = _cohort()
    columns = ["age", "bmi", "albumin", "muscle_volume", "noise"]
    mv = multivariable_logistic(df, "label", columns, p_enter=1.0, p_remove=1.0)
    assert mv.selected == columns and mv.status == "ok"
    ref = _raw_fit(df, columns)
    summary = mv.summary
    np.testing.assert_allclose(summary["coef"], ref.params, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(summary["se"], ref.bse, rtol=1e-6)
    np.testing.assert_allclose(summary["p"], ref.pvalues, rtol=1e-6, atol=1e-14)
    ci = ref.conf_int(alpha=0.05)
    np.testing.assert_allclose(summary["or"].iloc[1:], np.exp(ref.params[1:]), rtol=1e-6)
    np.testing.assert_allclose(summary["or_ci_low"].iloc[1:], np.exp(ci[1:, 0]), rtol=1e-6)
    np.testing.assert_allclose(summary["or_ci_high"].iloc[1:], np.exp(ci[1:, 1]), rtol=1e-6)
    # OR per SD: exp(beta * SD), SD the sample SD of the column
    sd = df[columns].std(ddof=1).to_numpy()
    np.testing.assert_allclose(summary["or_per_sd"].iloc[1:], np.exp(ref.params[1:] * sd), rtol=1e-6)
    np.testing.assert_allclose(summary["or_per_sd_ci_low"].iloc[1:], np.exp(ci[1:, 0] * sd), rtol=1e-6)
    # the frozen model predicts what statsmodels predicts
    X = sm.add_constant(df[columns].to_numpy(dtype=float), has_constant="add")
    np.testing.assert_allclose(mv.model.predict_proba(df), ref.predict(X), rtol=1e-9, atol=1e-12)


def test_univariate_matches_statsmodels_per_variable():
    df = _cohort()
    df.loc[[3, 7, 11], "albumin"] = np.nan  # missing values dropped per variable
    table = univariate_logistic(df, "label", ["age", "albumin", "muscle_volume"])
    for _, row in table.iterrows():
        sub = df[["label", row["variable"]]].dropna()
        ref = _raw_fit(sub, [row["variable"]])
        assert row["n"] == len(sub) and row["status"] == "ok"
        assert row["coef"] == pytest.approx(ref.params[1], rel=1e-6)
        assert row["p"] == pytest.approx(ref.pvalues[1], rel=1e-6)
        low, high = ref.conf_int()[1]
        assert row["or_ci_low"] == pytest.approx(np.exp(low), rel=1e-6)
        assert row["or_ci_high"] == pytest.approx(np.exp(high), rel=1e-6)


@pytest.mark.parametrize("p_enter, p_remove", [(0.05, 0.10), (0.5, 0.3), (0.5, 0.02)])
def test_backward_elimination_follows_an_independent_statsmodels_loop(p_enter, p_remove):
    df = _cohort()
    candidates = ["age", "bmi", "albumin", "muscle_volume", "rbc", "hemoglobin", "noise"]
    mv = multivariable_logistic(df, "label", candidates, p_enter=p_enter, p_remove=p_remove)
    # reference procedure written directly against statsmodels on raw data
    entered = [c for c in candidates if _raw_fit(df, [c]).pvalues[1] < p_enter]
    current = list(entered)
    removed = []
    while len(current) > 1:
        p = _raw_fit(df, current).pvalues[1:]
        worst = int(np.argmax(p))
        if p[worst] <= p_remove:
            break
        removed.append(current.pop(worst))
    assert removed, "the cohort should exercise at least one elimination step"
    assert mv.entered == entered
    assert [r["variable"] for r in mv.removed] == removed
    assert mv.selected == current


def test_collinear_percentages_one_dropped_with_note_naming_both():
    df = _cohort()
    rng = np.random.default_rng(0)
    df["ct_otsu_fat_percent"] = 20 + 6 * df["label"] + rng.normal(0, 4, len(df))
    df["ct_otsu_muscle_percent"] = 100.0 - df["ct_otsu_fat_percent"]
    mv = multivariable_logistic(df, "label", ["ct_otsu_fat_percent", "age", "ct_otsu_muscle_percent"])
    assert [d["variable"] for d in mv.dropped_collinear] == ["ct_otsu_muscle_percent"]
    assert mv.dropped_collinear[0]["partners"] == ["ct_otsu_fat_percent"]
    note = " ".join(mv.notes)
    assert "ct_otsu_muscle_percent" in note and "ct_otsu_fat_percent" in note
    assert "ct_otsu_muscle_percent" not in mv.selected
    assert np.all(np.isfinite(mv.summary["or"].iloc[1:])) and mv.summary["or"].iloc[1:].max() < 100


def test_near_but_not_exact_collinearity_is_kept():
    df = _cohort()
    rng = np.random.default_rng(1)
    df["a"] = rng.normal(0, 1, len(df)) + df["label"]
    df["b"] = -df["a"] + rng.normal(0, 0.05, len(df))
    mv = multivariable_logistic(df, "label", ["a", "b"], p_remove=1.0)
    assert mv.dropped_collinear == []


def test_complete_separation_reported_not_absurd():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(30), np.ones(30)]
    df = pd.DataFrame({"label": y, "x": np.r_[rng.normal(0, 1, 30), rng.normal(6, 1, 30)],
                       "z": rng.normal(0, 1, 60)})
    table = univariate_logistic(df, "label", ["x", "z"]).set_index("variable")
    assert table.loc["x", "status"] == "separation"
    # issue 14: Firth's estimate with its profile penalised-likelihood CI, never an absurd ML number
    assert 1 < table.loc["x", "or_ci_low"] < table.loc["x", "or"] < table.loc["x", "or_ci_high"] < np.inf
    assert table.loc["x", "p"] < 0.05
    assert table.loc["z", "status"] == "ok"
    mv = multivariable_logistic(df, "label", ["x", "z"])
    assert mv.status == "separation" and mv.model is not None
    assert np.isfinite(mv.summary["or"].iloc[1:]).all()
    # the (Firth) model still scores sensibly and finitely
    p = mv.model.predict_proba(df)
    assert np.all(np.isfinite(p)) and np.all(p[y == 1] > p[y == 0].max())
    assert max(abs(c) for c in mv.model.coef) < 30


def test_quasi_separation_and_constant_detected():
    # one binary level with only cases: quasi-complete separation
    y = np.r_[np.zeros(40), np.ones(40)]
    flag = np.zeros(80)
    flag[-3:] = 1
    df = pd.DataFrame({"label": y, "flag": flag, "const": 5.0})
    table = univariate_logistic(df, "label", ["flag", "const"]).set_index("variable")
    assert table.loc["flag", "status"] == "separation"
    # Firth in a 2x2 table is the odds ratio with 1/2 added to every cell (Firth 1993)
    assert table.loc["flag", "or"] == pytest.approx((3.5 / 0.5) / (37.5 / 40.5), rel=1e-6)
    assert table.loc["const", "status"] == "constant"


def test_categorical_encoding_and_unseen_level_roundtrip():
    rng = np.random.default_rng(4)
    n = 200
    occupation = rng.choice(["worker", "retired", "farmer"], n)
    y = rng.binomial(1, np.where(occupation == "retired", 0.6, 0.3)).astype(float)
    df = pd.DataFrame({"label": y, "occupation": occupation, "age": rng.normal(68, 7, n)})
    outcome = fit_logistic_model(df, "label", ["occupation", "age"])
    model = outcome.model
    assert model.encoding["occupation"] == {"kind": "categorical", "levels": ["farmer", "retired", "worker"],
                                            "reference": "farmer"}
    # same coefficients as statsmodels with explicit dummies
    X = pd.get_dummies(df["occupation"], drop_first=True, dtype=float).assign(age=df["age"])
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0)
    np.testing.assert_allclose(outcome.summary["coef"], ref.params.to_numpy(), rtol=1e-6)
    restored = LogisticModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert restored == model
    new = pd.DataFrame({"occupation": ["teacher", "farmer", "retired"], "age": [70.0, 70.0, np.nan]})
    notes = []
    p = restored.predict_proba(new, notes=notes)
    assert p[0] == p[1]  # unseen level scored as the reference level
    assert np.isnan(p[2])
    assert any("teacher" in n for n in notes)
