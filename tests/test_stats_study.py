"""run_study end to end on a synthetic cohort, the frozen bundle, and the stats CLI helpers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from engine.stats import run_study, score_bundle
from engine.stats.cli import icc_command, roc_command
from engine.stats.study import study_summary

MODELS = {
    f"{mod}_{method}": [f"{mod}_{method}_{t}_{s}" for t in ("fat", "muscle") for s in ("mean", "volume", "percent")]
    for mod in ("ct", "mri") for method in ("otsu", "gmm")
}
CLINICAL = ["age", "sex", "bmi", "albumin", "hypertension"]


def _cohort(n=150, seed=11):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(float)
    df = pd.DataFrame({
        "patient_id": [f"P{i:03d}" for i in range(n)],
        "label": y,
        "split": rng.choice(["train", "validation", "prospective"], n, p=[0.6, 0.3, 0.1]),
        "age": rng.normal(68, 7, n) + 2.5 * y,
        "sex": rng.choice(["Female", "Male"], n),
        "bmi": rng.normal(24, 3, n),
        "albumin": rng.normal(38, 3, n),
        "hypertension": rng.integers(0, 2, n),
    })
    for name in MODELS:
        fat_percent = rng.normal(20, 4, n) + (9.0 * y if name == "ct_otsu" else 0.0)  # the known signal
        df[f"{name}_fat_percent"] = fat_percent
        df[f"{name}_muscle_percent"] = 100.0 - fat_percent
        df[f"{name}_fat_mean"] = rng.normal(-80, 10, n)
        df[f"{name}_muscle_mean"] = rng.normal(45, 8, n)
        df[f"{name}_fat_volume"] = np.round(rng.normal(2.0e4, 3e3, n))
        df[f"{name}_muscle_volume"] = np.round(rng.normal(8.0e4, 1e4, n))
    mri = [c for c in df.columns if c.startswith("mri_")]
    df.loc[df.index[:8], mri] = np.nan  # no MRI for 8 patients
    df.loc[df.index[20:25], "label"] = np.nan  # unknown outcome: scored, never fitted
    return df


@pytest.fixture(scope="module")
def study():
    df = _cohort()
    return df, run_study(df, clinical_columns=CLINICAL, imaging_models=MODELS, folds=5, seed=0)


def test_every_table_is_filled(study):
    df, result = study
    for name in ("table2", "table3", "table4", "table5", "cv", "predictions", "table_combined", "comparisons"):
        assert len(getattr(result, name)) > 0, name
    assert set(result.table2["split"]) == {"train", "validation", "prospective"}
    assert set(result.models) == {"clinical", *MODELS, "combined"}
    assert set(result.table5["model"]) == set(result.models)
    assert set(result.cv["model"]) == set(result.models)
    assert len(result.predictions) == len(df)
    assert result.best_imaging_model == "ct_otsu"
    assert set(result.table4["model"]) == set(MODELS)


def test_strong_feature_is_found_and_discriminates(study):
    _, result = study
    ct = result.table4[result.table4["model"] == "ct_otsu"].set_index("variable")
    assert ct.loc["ct_otsu_fat_percent", "multi_role"] == "selected"
    assert ct.loc["ct_otsu_muscle_percent", "multi_role"] == "collinear"
    assert any("ct_otsu_muscle_percent" in n and "ct_otsu_fat_percent" in n for n in result.notes)
    t5 = result.table5.set_index(["model", "split"])
    for split in ("train", "validation"):
        assert t5.loc[("ct_otsu", split), "auc"] > 0.8
    assert result.cv.set_index("model").loc["ct_otsu", "auc_mean"] > 0.8
    # Table 5 agrees with the predictions it is computed from
    pred = result.predictions
    val = pred[(pred["split"] == "validation") & pred["label"].notna()]
    assert t5.loc[("ct_otsu", "validation"), "auc"] == pytest.approx(roc_auc_score(val["label"], val["p_ct_otsu"]))
    # the training cut-off is applied unchanged to the other splits
    assert t5.loc[("ct_otsu", "validation"), "train_cutoff"] == result.cutoffs["ct_otsu"]
    call = pred["call_ct_otsu"].dropna().astype(int)
    assert (call == (pred.loc[call.index, "p_ct_otsu"] >= result.cutoffs["ct_otsu"]).astype(int)).all()


def test_missing_modality_excluded_and_noted(study):
    df, result = study
    assert any("mri_otsu" in n and "excluded" in n for n in result.notes)
    no_mri = result.predictions["patient_id"].isin(df["patient_id"].iloc[:8])
    assert result.predictions.loc[no_mri, "p_mri_otsu"].isna().all()
    assert result.predictions.loc[no_mri, "p_ct_otsu"].notna().all()


def test_bundle_reproduces_predictions_exactly(study):
    df, result = study
    bundle = json.loads(json.dumps(result.to_bundle(), allow_nan=False))
    shuffled = df.sample(frac=1.0, random_state=3)  # order must not matter
    scored = score_bundle(bundle, shuffled).set_index("patient_id").loc[result.predictions["patient_id"]]
    for name in result.models:
        np.testing.assert_array_equal(scored[f"p_{name}"].to_numpy(), result.predictions[f"p_{name}"].to_numpy())
        assert scored[f"call_{name}"].astype("Float64").equals(
            result.predictions[f"call_{name}"].astype("Float64").set_axis(scored.index))
    # a patient's probability does not depend on the other rows scored with it
    subset = df[df["split"] == "validation"].head(7)
    alone = score_bundle(bundle, subset).set_index("patient_id")
    for name in result.models:
        np.testing.assert_array_equal(alone[f"p_{name}"].to_numpy(), scored.loc[alone.index, f"p_{name}"].to_numpy())


def test_degenerate_inputs_are_skipped_not_fatal():
    df = _cohort(n=80, seed=5)
    df["ct_gmm_fat_mean"] = 1.0  # constant feature
    df.loc[df["split"] == "train", [c for c in df if c.startswith("mri_gmm")]] = np.nan  # no train MRI-GMM
    models = {**MODELS, "ct_kmeans": ["ct_kmeans_fat_mean"]}  # columns absent from the table
    result = run_study(df, clinical_columns=CLINICAL + ["smoking"], imaging_models=models)
    assert "mri_gmm" not in result.models and "ct_kmeans" not in result.models
    assert any("mri_gmm" in n and "skipped" in n for n in result.notes)
    assert any("ct_kmeans" in n and "absent" in n for n in result.notes)
    assert any("smoking" in n for n in result.notes)
    ct_gmm = result.table4[result.table4["model"] == "ct_gmm"].set_index("variable")
    assert ct_gmm.loc["ct_gmm_fat_mean", "uni_status"] == "constant"
    # one outcome class in the training split: every model skipped, nothing raised
    one_class = df.copy()
    one_class.loc[one_class["split"] == "train", "label"] = 0.0
    result = run_study(one_class, clinical_columns=CLINICAL, imaging_models=MODELS)
    assert result.models == {} and len(result.table5) == 0 and result.notes


def test_roc_and_icc_commands(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = rng.normal(0, 1, 60) + y
    path = tmp_path / "scores.csv"
    pd.DataFrame({"truth": y, "score": s}).to_csv(path, index=False)
    result, text = roc_command(path, "truth", "score", False)
    assert result["auc"] == pytest.approx(roc_auc_score(y, s)) and "AUC" in text
    result_json, text_json = roc_command(path, "truth", "score", True)
    assert json.loads(text_json) == result_json
    with pytest.raises(ValueError, match="nope"):
        roc_command(path, "nope", "score", False)

    sf = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    long = pd.DataFrame([(f"S{i}", f"J{j}", sf[i, j]) for i in range(6) for j in range(4)],
                        columns=["patient", "reader", "fat_percent"])
    path = tmp_path / "icc.csv"
    long.to_csv(path, index=False)
    result, text = icc_command(path, "patient", "reader", "fat_percent", False)
    assert result["n_targets"] == 6 and result["n_raters"] == 4
    assert round({r["type"]: r["icc"] for r in result["icc"]}["ICC2"], 2) == 0.29
    assert "ICC2" in text
    assert json.loads(icc_command(path, "patient", "reader", "fat_percent", True)[1]) == result


def test_honest_figures_issue_14(study):
    """DeLong only on held-out splits; the training AUC is labelled apparent; no per-split cut-off."""
    _, result = study
    assert len(result.comparisons) and "train" not in set(result.comparisons["split"])
    kinds = result.table5.set_index("split")["auc_kind"]
    assert set(kinds.loc["train"]) == {"apparent"} and set(kinds.loc["validation"]) == {"held-out"}
    assert not any("youden" in c for c in result.table5.columns)
    cv = result.cv.set_index("model")
    assert "selection" in cv.columns and (cv["apparent_auc"] > 0).all()
    # a model ranked on CV of the whole selection: the noise models are near chance, not at apparent
    assert cv.loc["ct_gmm", "auc_mean"] < cv.loc["ct_gmm", "apparent_auc"]


def test_study_summary_is_machine_readable(study):
    from engine.stats.study import study_summary

    _, result = study
    summary = json.loads(json.dumps(study_summary(result), allow_nan=False))
    assert set(summary["models"]) == set(result.models)
    ct = summary["models"]["ct_otsu"]
    t5 = result.table5.set_index(["model", "split"])
    assert ct["auc"]["validation"] == pytest.approx(t5.loc[("ct_otsu", "validation"), "auc"])
    assert ct["auc_ci"]["validation"][0] < ct["auc"]["validation"] <= ct["auc_ci"]["validation"][1]
    assert ct["n"]["validation"] == t5.loc[("ct_otsu", "validation"), "n"]
    assert ct["cv_auc_mean"] == pytest.approx(result.cv.set_index("model").loc["ct_otsu", "auc_mean"])
    assert ct["features"] == result.models["ct_otsu"].features
    assert summary["best_imaging_model"] == "ct_otsu"


def test_a_model_that_cannot_be_fitted_costs_that_model_only(monkeypatch):
    """Issue 31: one model's numerical failure was the whole study's crash (exit 2, no model.json)."""
    import engine.stats.study as study_module

    real = study_module.multivariable_logistic

    def failing(df, label, candidates, *, name="model", **kwargs):
        if name == "mri_gmm":
            raise np.linalg.LinAlgError("Singular matrix")
        return real(df, label, candidates, name=name, **kwargs)

    monkeypatch.setattr(study_module, "multivariable_logistic", failing)
    df = _cohort(n=90, seed=5)
    result = run_study(df, clinical_columns=["age", "sex"], imaging_models=MODELS, folds=3, seed=0)
    assert "mri_gmm" not in result.models and {"ct_otsu", "ct_gmm", "mri_otsu", "clinical"} <= set(result.models)
    assert "LinAlgError: Singular matrix" in result.not_fitted["mri_gmm"]
    assert "could not be fitted" in result.cv.set_index("model").loc["mri_gmm", "note"]
    assert study_summary(result)["not_fitted"] == result.not_fitted


def test_the_chosen_model_line_that_study_and_apply_print():
    from engine.stats.cli import chance_text

    verdict = {"name": "ct_otsu", "cv_auc": 0.81, "cv_auc_interval": [0.62, 0.99], "chance_p": 0.01,
               "permutations": 99, "better_than_chance": True}
    assert chance_text(verdict, "chosen model") == ("chosen model: ct_otsu, repeated CV AUC 0.810 (95% interval "
                                                    "0.620-0.990); better than chance (p = 0.01, permutation test "
                                                    "repeating the choice)")
    weak = chance_text({**verdict, "chance_p": 0.2, "permutations": 4, "better_than_chance": False})
    assert "NOT better than chance (p = 0.2" in weak and "4 permutations cannot give p below 0.2" in weak
    assert "not tested against chance" in chance_text({**verdict, "chance_p": None, "better_than_chance": None})
    assert chance_text(None) is None
