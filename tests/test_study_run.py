"""The statistics stage inside a real run (issue 5): tables, bundle, apply, report.

A 40-patient CT-only cohort: enough training patients of each class for every model.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine.config import load_config
from engine.pipeline import apply, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from engine.synthetic import synthesize_cohort

    root = tmp_path_factory.mktemp("study")
    manifest = synthesize_cohort(root / "cohort", n_patients=40, seed=5, size="small", workers=2)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    ct_manifest = manifest.parent / "manifest_ct.csv"
    table.drop(columns=["mri_image", "mri_roi"]).to_csv(ct_manifest, index=False)
    out = root / "run"
    cfg = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "habitats": False}})
    run(ct_manifest, out_dir=out, config=cfg)
    return ct_manifest, out


def test_tables_and_bundle_are_filled(study):
    _, out = study
    for name in ("table2_groups.csv", "table3_clinical_logistic.csv", "table4_imaging_logistic.csv",
                 "table5_performance.csv", "cv_auc.csv"):
        frame = pd.read_csv(out / "tables" / name)
        assert len(frame) > 0, name
    table5 = pd.read_csv(out / "tables" / "table5_performance.csv")
    models = set(table5["model"])
    assert {"ct_otsu", "ct_kmeans", "ct_gmm", "clinical", "combined"} <= models
    # The synthetic cohort's CT fat carries the signal: the imaging models separate on validation.
    validation = table5[(table5["split"] == "validation") & table5["model"].str.startswith("ct_")]
    assert (validation["auc"] > 0.8).all(), validation[["model", "auc"]]
    bundle = json.loads((out / "model.json").read_text())
    assert bundle["format"] == "sarco-model"
    assert set(bundle["statistics"]["models"]) >= {"ct_otsu", "clinical", "combined"}
    assert bundle["thresholds"]["modalities"]["ct"]["methods"]["otsu"]["threshold"] == pytest.approx(
        json.loads((out / "thresholds.json").read_text())["modalities"]["ct"]["methods"]["otsu"]["threshold"])


def test_apply_reproduces_the_training_predictions_exactly(study, tmp_path):
    manifest, out = study
    applied = tmp_path / "applied"
    apply(out / "model.json", manifest, out_dir=applied, overrides={"run": {"scheduler": "inline"}})
    trained = pd.read_csv(out / "predictions.csv").set_index("patient_id").sort_index()
    scored = pd.read_csv(applied / "predictions.csv").set_index("patient_id").sort_index()
    probability_columns = [c for c in trained.columns if c.startswith("p_")]
    assert probability_columns
    for column in probability_columns + [c.replace("p_", "call_") for c in probability_columns]:
        np.testing.assert_array_equal(scored[column].to_numpy(), trained[column].to_numpy(), err_msg=column)


def test_report_is_rendered_with_every_section(study):
    _, out = study
    html = (out / "report.html").read_text()
    for heading in ("Cohort", "thresholds", "Table 5", "ROC", "Figure 3", "Figure 4", "Errors", "Provenance"):
        assert heading.lower() in html.lower(), heading
    assert html.count("data:image/png;base64,") >= 4
    assert "http://" not in html and "https://" not in html
