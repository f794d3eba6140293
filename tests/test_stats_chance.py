"""Repeated cross-validation and the test against chance that repeats the choice of the best model.

* The repeated-CV mean equals the same selection run over scikit-learn's ``RepeatedStratifiedKFold``
  splits by this test (statsmodels fits on DataFrames, scikit-learn's AUC).
* The float-matrix selection that the resampling uses makes the DataFrame path's choices.
* On tables whose labels carry no information, the best of two models is called better than chance
  in about 5 % of tables (the level), where the best CV AUC alone is above 0.5 in most of them.
* One feature with an AUC of about 0.85 on 36 training patients is called better than chance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold

from engine.stats.chance import CHANCE_ALPHA, CandidateModel, ChanceSettings, chance_test, model_cv_means
from engine.stats.logistic import cross_validated_selection, multivariable_logistic, numeric_matrix


def _table(seed: int, n: int = 40, effect: float = 0.0, k: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(n // 3), np.zeros(n - n // 3)])
    table = pd.DataFrame(rng.normal(size=(n, k)), columns=[f"f{i}" for i in range(k)])
    table["f0"] += effect * y
    table["label"] = y
    return table


def test_repeated_cv_mean_equals_an_independent_implementation():
    table = _table(3, n=45, effect=1.0)
    rng = np.random.default_rng(4)
    table["sex"] = np.where(rng.random(len(table)) < 0.5, "F", "M")  # categoricals of two and three levels
    table["work"] = rng.choice(["farmer", "office", "retired"], len(table))
    candidates = ["f0", "f1", "f2", "sex", "work"]
    cv = cross_validated_selection(table, "label", candidates, folds=5, repeats=3, seed=7)
    y = table["label"].to_numpy(dtype=int)
    per_repeat = []
    splits = list(RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=7).split(table, y))
    for repeat in range(3):
        aucs = []
        for train, test in splits[5 * repeat:5 * (repeat + 1)]:
            mv = multivariable_logistic(table.iloc[train], "label", candidates, profile_ci=False)
            aucs.append(roc_auc_score(y[test], mv.model.predict_proba(table.iloc[test])))
        per_repeat.append(np.mean(aucs))
    assert cv["per_repeat"] == pytest.approx(per_repeat, abs=1e-12)
    assert cv["mean"] == pytest.approx(np.mean(per_repeat), abs=1e-12)
    assert cv["sd"] == pytest.approx(np.std(per_repeat, ddof=1), abs=1e-12)
    low, high = cv["interval"]
    assert low < cv["mean"] < high and cv["folds"] == 5 and cv["repeats"] == 3


def test_the_matrix_selection_makes_the_dataframe_selection_choices():
    """Numeric, collinear, missing and categorical (two and four levels, one level rare) candidates."""
    for seed in range(16):
        rng = np.random.default_rng(100 + seed)
        table = _table(seed, n=int(rng.integers(24, 50)), effect=float(rng.uniform(0, 2.5)), k=4)
        table["f3"] = 100 - table["f2"]  # collinear with f2 (fat + muscle = 100)
        table.loc[rng.random(len(table)) < 0.05, "f1"] = np.nan
        y = table["label"].to_numpy()
        table["sex"] = np.where(rng.random(len(table)) < 0.4 + 0.2 * y, "F", "M")
        table["work"] = rng.choice(["farmer", "office", "retired", "trade"], len(table), p=[0.4, 0.3, 0.25, 0.05])
        table.loc[(y == 1) & (rng.random(len(table)) < 0.5), "work"] = "retired"
        names = ["f0", "f1", "f2", "f3", "sex", "work"]
        mv = multivariable_logistic(table, "label", names, profile_ci=False)
        matrix = numeric_matrix(table, names, ["sex", "work"])
        fast = matrix.select(np.arange(len(table)), y.astype(float))
        assert [names[v] for v in fast.variables] == list(mv.selected), seed
        np.testing.assert_allclose(fast.predict_proba(matrix.X), mv.model.predict_proba(table), atol=1e-7)


def _two_models(table: pd.DataFrame) -> list[CandidateModel]:
    rows = tuple([True] * len(table))
    return [CandidateModel("a", ("f0", "f1"), rows), CandidateModel("b", ("f2", "f3"), rows)]


def _verdict(table: pd.DataFrame, permutations: int, folds: int) -> tuple[float, float]:
    settings = ChanceSettings(label="label", folds=folds, repeats=1, seed=1, p_enter=0.05, p_remove=0.10,
                              alpha=0.05, min_per_class=3)
    y = table["label"].to_numpy(dtype=float)
    models = _two_models(table)
    observed = model_cv_means(table, y, models, settings)
    result = chance_test(table, y, np.ones(len(y), dtype=bool), models, settings, observed,
                         permutations=permutations)
    return result.p_best, result.observed_best


def test_on_labels_without_information_the_best_model_beats_chance_at_the_level():
    """Each of 60 noise tables is tested with 19 permutations: p <= 0.05 exactly when the observed
    best CV AUC is the largest of 20, probability 1/20 under the null (ties only lower it). The
    count of tables called better than chance is Binomial(60, <= 0.05): above 8 has probability
    0.003 at the level; the best CV AUC itself exceeds 0.5 on most tables (what overclaimed)."""
    called, above_half = 0, 0
    for seed in range(60):
        table = _table(1000 + seed, n=30, k=4)
        p, best = _verdict(table, permutations=19, folds=3)
        called += p <= CHANCE_ALPHA
        above_half += best > 0.5
    assert called <= 8
    assert stats.binom.cdf(called, 60, 0.05) > 0.001  # not so conservative that the level is far below 5 %
    assert above_half >= 30


def test_a_real_effect_on_36_training_patients_is_called_better_than_chance():
    """One feature with AUC about 0.85 (normal, shift 1.47 SD) next to a noise model, 36 patients."""
    called = 0
    for seed in range(10):
        table = _table(2000 + seed, n=36, effect=1.47, k=4)
        p, _ = _verdict(table, permutations=19, folds=3)
        called += p <= CHANCE_ALPHA
    assert called >= 9
