"""Firth inference under separation (issue 14) against logistf's published output on its sex2 data.

Data: logistf's ``sex2`` (urinary tract infection in 239 college women; Cytel LogXact manual), as
aggregated patterns ``(case, age, oc, vic, vicl, vis, dia, count)``. References:

* coefficients: logistf's own regression test (tests/testthat/test-basic.R of the logistf package:
  ``logistf(case ~ age+oc+vic+vicl+vis+dia, sex2)$coefficients``);
* profile penalised-likelihood 95% CIs (logistf's default ``pl = TRUE``): the logistf values
  that the firthlogist package asserts its own output against (firthlogist/tests/test_firthlogist.py).
* penalised likelihood-ratio p-values: recomputed here from the definition (Heinze & Schemper 2002),
  the restricted model maximised by scipy's general-purpose optimiser, not by the engine's Newton.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special, stats

from engine.stats.logistic import multivariable_logistic
from engine.stats.models import fit_logistic_model

TERMS = ["age", "oc", "vic", "vicl", "vis", "dia"]
SEX2 = [
    (0,0,0,0,0,1,0, 1), (0,0,0,1,0,0,0, 2), (0,0,0,1,0,1,0, 1), (0,0,0,1,1,0,0, 8), (0,0,0,1,1,1,0, 18),
    (0,0,1,0,0,0,0, 42), (0,0,1,0,0,1,0, 1), (0,0,1,1,0,0,0, 1), (0,0,1,1,1,0,0, 5), (0,0,1,1,1,1,0, 6),
    (0,1,0,1,1,0,0, 2), (0,1,0,1,1,1,0, 4), (0,1,1,0,0,0,0, 14), (0,1,1,0,0,1,0, 1), (0,1,1,1,0,0,0, 1),
    (0,1,1,1,1,1,0, 2), (1,0,0,0,0,1,0, 1), (1,0,0,1,0,0,0, 14), (1,0,0,1,0,1,0, 3), (1,0,0,1,1,0,0, 10),
    (1,0,0,1,1,1,0, 12), (1,0,0,1,1,1,1, 1), (1,0,1,0,0,0,0, 44), (1,0,1,0,0,0,1, 3), (1,0,1,1,0,0,0, 15),
    (1,0,1,1,0,0,1, 1), (1,0,1,1,0,1,0, 2), (1,0,1,1,1,0,0, 7), (1,0,1,1,1,1,0, 3), (1,1,0,1,0,0,0, 2),
    (1,1,0,1,0,1,0, 1), (1,1,0,1,0,1,1, 1), (1,1,0,1,1,0,0, 1), (1,1,0,1,1,1,1, 1), (1,1,1,0,0,0,0, 5),
    (1,1,1,1,0,0,0, 3),]
LOGISTF_COEF = {"(intercept)": 0.12025404, "age": -1.10598130, "oc": -0.06881673, "vic": 2.26887464,
                "vicl": -2.11140816, "vis": -0.78831694, "dia": 3.09601263}
LOGISTF_CI = {"age": (-1.9737884, -0.30742514), "oc": (-0.9414363, 0.78920202), "vic": (1.2730216, 3.43543273),
              "vicl": (-3.2608611, -1.11773495), "vis": (-1.6080879, 0.01518468), "dia": (0.7745682, 8.03029352)}


def _sex2() -> pd.DataFrame:
    rows = [pattern for *pattern, count in SEX2 for _ in range(count)]
    return pd.DataFrame(rows, columns=["case", *TERMS]).astype(float)


@pytest.fixture(scope="module")
def sex2_fit():
    df = _sex2()
    assert len(df) == 239 and df["case"].sum() == 130
    # all-binary columns are categorical by default; as logistf, fit them as 0/1 numbers
    return df, fit_logistic_model(df, "case", TERMS, categorical=[])


def test_firth_is_used_and_coefficients_match_logistf(sex2_fit):
    # sex2 is separated: dia = 1 only among cases
    _, outcome = sex2_fit
    assert outcome.fit.method == "firth" and outcome.fit.status == "separation"
    summary = outcome.summary.set_index("term")
    for term, expected in LOGISTF_COEF.items():
        assert summary.loc[term, "coef"] == pytest.approx(expected, abs=2e-6), term


def test_profile_penalised_likelihood_cis_match_logistf(sex2_fit):
    _, outcome = sex2_fit
    summary = outcome.summary.set_index("term")
    for term, (low, high) in LOGISTF_CI.items():
        assert np.log(summary.loc[term, "or_ci_low"]) == pytest.approx(low, abs=2e-6), term
        assert np.log(summary.loc[term, "or_ci_high"]) == pytest.approx(high, abs=2e-6), term


def _penalised_loglik(beta, X1, y):
    eta = X1 @ beta
    w = special.expit(eta) * (1 - special.expit(eta))
    sign, logdet = np.linalg.slogdet(X1.T @ (X1 * w[:, None]))
    return np.sum(y * special.log_expit(eta) + (1 - y) * special.log_expit(-eta)) + 0.5 * logdet


def test_penalised_likelihood_ratio_p_values(sex2_fit):
    df, outcome = sex2_fit
    X1 = np.column_stack([np.ones(len(df)), df[TERMS].to_numpy()])
    y = df["case"].to_numpy()
    full = optimize.minimize(lambda b: -_penalised_loglik(b, X1, y), np.zeros(7), method="BFGS", tol=1e-10)
    summary = outcome.summary.set_index("term")
    for j, term in enumerate(TERMS, start=1):
        keep = [i for i in range(7) if i != j]

        def restricted(b, keep=keep):
            beta = np.zeros(7)
            beta[keep] = b
            return -_penalised_loglik(beta, X1, y)  # the penalty keeps the full design (logistf)

        fit = optimize.minimize(restricted, np.zeros(6), method="BFGS", tol=1e-10)
        expected = stats.chi2.sf(2 * (fit.fun - full.fun), 1)
        assert summary.loc[term, "p"] == pytest.approx(expected, rel=1e-4), term
        # and the test agrees with the logistf-verified profile CI: 0 outside the CI <=> p < 0.05
        low, high = LOGISTF_CI[term]
        assert (summary.loc[term, "p"] < 0.05) == (not low <= 0 <= high), term
    assert summary.loc["dia", "p"] < 0.01 and summary.loc["oc", "p"] > 0.5


REPRO = Path(__file__).resolve().parents[1] / ".." / "shared" / "repro" / "study_firth_profile_crash.csv"


def _scratch_profile(x: np.ndarray, y: np.ndarray, j: int):
    """logistf's profile deficit of slope ``j`` from the definition, in standardised units.

    ``2 (l*_max - max_{b: b_j = t} l*(b)) - chi2_1(0.95)`` with the penalty on the full design,
    the inner maximum by scipy's Nelder-Mead from the estimate then BFGS (not the engine's Newton):
    a function of ``t`` alone. Returns ``(estimate, deficit)``.
    """
    z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    X1 = np.column_stack([np.ones(len(y)), z])
    k = X1.shape[1]
    full = optimize.minimize(lambda b: -_penalised_loglik(b, X1, y), np.zeros(k), method="BFGS", tol=1e-12)
    others = [i for i in range(k) if i != j]

    def deficit(t: float) -> float:
        def negative(b):
            beta = np.empty(k)
            beta[others], beta[j] = b, t
            return -_penalised_loglik(beta, X1, y)

        start = optimize.minimize(negative, full.x[others], method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
        fit = optimize.minimize(negative, start.x, method="BFGS", tol=1e-12)
        return 2 * (min(fit.fun, start.fun) - full.fun) - stats.chi2.ppf(0.95, 1)

    return full.x[j], deficit


def test_profile_ci_of_the_crash_reproduction_equals_a_from_scratch_profile():
    """Issue 31: on 28 training patients (6 cases) the profile bracket's ends shared a sign and the
    whole study ended in "f(a) and f(b) must have different signs". Each bound now is where a profile
    recomputed from the definition crosses the critical value: below it a little inside, above it a
    little outside, and below it on a grid between the estimate and the bound (the first crossing).
    Far out the penalised likelihood has a second, lower maximum at a fixed slope; a local fit
    found that one and put the lower bound of the fat volume's slope at -85 SD units instead of -106."""
    table = pd.read_csv(REPRO)
    features = ["mri_kmeans_fat_volume", "mri_kmeans_fat_percent"]
    outcome = fit_logistic_model(table, "label", features, name="mri_kmeans")
    assert outcome.fit.status == "separation"
    summary = outcome.summary.set_index("term")
    y = table["label"].to_numpy(dtype=float)
    x = table[features].to_numpy(dtype=float)
    for j, term in enumerate(features, start=1):
        estimate, deficit = _scratch_profile(x, y, j)
        sd = x[:, j - 1].std(ddof=1)
        for column in ("or_ci_low", "or_ci_high"):
            bound = np.log(summary.loc[term, column]) * sd
            inward = np.sign(estimate - bound)
            assert deficit(bound + 1e-3 * inward) < 0 < deficit(bound - 1e-3 * inward), (term, column, bound)
            for t in np.linspace(estimate, bound, 6)[1:-1]:
                assert deficit(t) < 0, (term, column, t)


def test_the_crash_reproduction_selects_and_fits_every_model():
    """Issue 31: the selection of both models that crashed goes through, with finite profile bounds."""
    table = pd.read_csv(REPRO)
    for name in ("mri_kmeans",):
        columns = [c for c in table.columns if c.startswith(f"{name}_")]
        mv = multivariable_logistic(table, "label", columns, name=name)
        assert mv.model is not None and mv.status == "separation"
        selected = mv.summary.iloc[1:]
        assert np.isfinite(selected[["or_ci_low", "or_ci_high"]].to_numpy()).all()
        assert (selected["or_ci_low"] < selected["or"]).all() and (selected["or"] < selected["or_ci_high"]).all()
