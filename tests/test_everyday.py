"""Issue 21, "Everyday use": what a new user trips on, each guarded by a test that failed before the fix."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import statsmodels.api as sm

from engine.cli import main


def _collinear_table(tmp_path, n=80, seed=3):
    rng = np.random.default_rng(seed)
    fat = rng.uniform(5, 45, n)
    age = rng.normal(65, 9, n)
    logit = -4 + 0.08 * fat + 0.02 * (age - 65)
    label = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    table = pd.DataFrame({"label": label, "ct_otsu_fat_percent": fat, "ct_otsu_muscle_percent": 100 - fat,
                          "age": age, "age_months": 12 * age})
    path = tmp_path / "features.csv"
    table.to_csv(path, index=False)
    return path, table


def test_stats_logistic_names_and_drops_collinear_variables(tmp_path, capsys):
    """Issue 21: collinear --vars printed 'Singular matrix' (exit 2) or every row n/a (exit 0)."""
    path, table = _collinear_table(tmp_path)
    variables = "ct_otsu_fat_percent,ct_otsu_muscle_percent,age,age_months"
    assert main(["stats", "logistic", "--csv", str(path), "--label", "label", "--vars", variables, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    dropped = {d["variable"]: d["partners"] for d in result["dropped_collinear"]}
    assert dropped == {"ct_otsu_muscle_percent": ["ct_otsu_fat_percent"], "age_months": ["age"]}
    assert any("ct_otsu_muscle_percent" in n and "ct_otsu_fat_percent" in n for n in result["notes"])
    # the reduced design, fitted independently
    reference = sm.Logit(table["label"], sm.add_constant(table[["ct_otsu_fat_percent", "age"]])).fit(disp=0)
    terms = {t["term"]: t for t in result["terms"]}
    assert set(terms) == {"ct_otsu_fat_percent", "age"}
    for name in terms:
        assert np.isclose(terms[name]["or"], np.exp(reference.params[name]), rtol=1e-5)
        assert np.isclose(terms[name]["p"], reference.pvalues[name], rtol=1e-4)
    # the text names them too, once, and fits the rest
    assert main(["stats", "logistic", "--csv", str(path), "--label", "label", "--vars", variables]) == 0
    text = capsys.readouterr().out
    assert "n/a" not in text and "'age_months' dropped" in text and "'ct_otsu_muscle_percent' dropped" in text
