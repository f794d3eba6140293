"""The synthetic cohort is calibrated to the paper (issue 16), checked on its parameter draws.

Only the patients' parameters are drawn (no image is rendered), so 1,500 patients cost a second.
Expected values are the paper's (Frontiers 2025, Table 2 training group; Table 5 AUCs).
"""

from __future__ import annotations

import numpy as np
import pytest

N = 1500


@pytest.fixture(scope="module")
def draws():
    from engine.synthetic import cohort as synth

    rows = []
    for i in range(N):
        label = synth._patient_label(5, i)
        clinical = synth._clinical(label, synth._rng(5, i, synth._S_CLINICAL))
        params = synth._anatomy_params(label, clinical, synth._rng(5, i, synth._S_ANATOMY))
        rows.append({"label": label, **clinical, **params})
    import pandas as pd

    return pd.DataFrame(rows)


@pytest.mark.parametrize("column, sarcopenia, other, tol", [
    ("age", 71.65, 68.13, 0.8), ("bmi", 22.83, 24.99, 0.4), ("albumin", 35.90, 37.89, 0.4),
    ("hemoglobin", 130.77, 136.76, 2.0), ("rbc", 4.36, 4.50, 0.06)])
def test_clinical_means_follow_table_2(draws, column, sarcopenia, other, tol):
    means = draws.groupby("label")[column].mean()
    assert means[1] == pytest.approx(sarcopenia, abs=tol)
    assert means[0] == pytest.approx(other, abs=tol)


def test_prevalence_and_sex_ratio_follow_table_2(draws):
    assert draws["label"].mean() == pytest.approx(0.35, abs=0.005)     # 7 of every 20
    female = draws.groupby("label")["sex"].apply(lambda s: (s == "F").mean())
    assert female[0] == pytest.approx(88 / 149, abs=0.04)
    assert female[1] == pytest.approx(45 / 79, abs=0.05)


def _cv_auc(x, y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return cross_val_score(LogisticRegression(max_iter=1000), x, y, cv=5, scoring="roc_auc").mean()


def test_imaging_truth_separates_the_groups_like_the_papers_ct_not_perfectly(draws):
    """Issue 16: the demo's CT models sat at AUC 1.000; the paper's validation CT AUCs are 0.77-0.96."""
    truth = np.column_stack([draws["imf_target_fraction"], draws["muscle_hu"], draws["muscle_scale"] ** 2])
    auc = _cv_auc(truth, draws["label"].to_numpy())
    assert 0.80 <= auc <= 0.93, auc


def test_clinical_variables_separate_the_groups_like_the_papers_clinical_model(draws):
    """The paper's clinical model: AUC 0.764 training, 0.719 validation."""
    x = np.column_stack([draws[c] for c in ("age", "bmi", "albumin", "hemoglobin", "rbc")]).astype(float)
    auc = _cv_auc(x, draws["label"].to_numpy())
    assert 0.70 <= auc <= 0.85, auc
