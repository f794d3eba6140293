"""The clinical fixed-HU reference and the bimodality diagnostic (issue 18).

Two tiny CT-only synthetic cohorts (5 ``small`` patients, inline scheduler, no statistics, no
report): a lean one (muscle only, no intramuscular fat), on which every two-class fit splits
muscle and the warning must fire, and a regular one, on which it must not. Plus the real CT of
the README (pydicom-data's ``explicit_VR-UN.dcm``, JPEG 2000) with a paraspinal ROI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.batch.cohort_fit import bimodality_diagnostic, fit_cohort
from engine.config import load_config
from engine.contract import (
    CACHE_DIR,
    feature_names,
    imaging_models,
    method_features,
    parse_feature,
    sample_path,
    vs_fixed_column,
    vs_fixed_columns,
)
from engine.errors import ConfigError
from engine.measure.preprocess import RoiSample

N_PATIENTS = 5
SEED = 3


def _config():
    return load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": False},
                                  "stats": {"enabled": False}})


def _ct_run(root: Path, lean: bool):
    from engine.batch.pipeline import run
    from engine.synthetic import synthesize_cohort

    manifest = synthesize_cohort(root, n_patients=N_PATIENTS, seed=SEED, size="small", lean=lean, splits=True)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    ct_only = root / "manifest_ct.csv"
    table.drop(columns=[c for c in table.columns if c.startswith("mri_")]).to_csv(ct_only, index=False)
    result = run(ct_only, out_dir=root / "run", config=_config())
    return result, pd.read_csv(root / "truth.csv")


@pytest.fixture(scope="module")
def lean_run(tmp_path_factory):
    return _ct_run(tmp_path_factory.mktemp("lean"), lean=True)


@pytest.fixture(scope="module")
def regular_run(tmp_path_factory):
    return _ct_run(tmp_path_factory.mktemp("regular"), lean=False)


# ----------------------------------------------------------------------------- config and names
def test_fixed_is_on_by_default_with_alberta_ranges():
    cfg = load_config()
    assert "fixed" in cfg.fit.methods
    assert cfg.fit.ct.fixed.fat_hu == (-190.0, -30.0) and cfg.fit.ct.fixed.muscle_hu == (-29.0, 150.0)
    # the gap rule: fat x <= -29.5, the same x <= t the classify kernel applies to a fitted threshold
    assert cfg.fit.ct.fixed.fat_bound_hu == -29.5
    assert cfg.modality_methods("mri") == ["otsu", "kmeans", "gmm"]


@pytest.mark.parametrize("overrides", [{"fit": {"mri": {"fixed": {"fat_hu": [0, 100], "muscle_hu": [101, 200]}}}},
                                       {"fit": {"ct": {"fixed": {"fat_hu": [-200, -30]}}}},
                                       {"fit": {"ct": {"fixed": {"fat_hu": [-190, -20], "muscle_hu": [-25, 150]}}}}])
def test_bad_fixed_config_names_the_key(overrides):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    key = "fit.mri.fixed" if "mri" in overrides["fit"] else "fit.ct.fixed"
    assert info.value.key == key and key in str(info.value)


def test_no_mri_fixed_and_the_disagreement_is_no_model_candidate():
    cfg = load_config()
    methods = cfg.modality_methods("ct")
    models = imaging_models({m: cfg.modality_methods(m) for m in ("ct", "mri")})
    assert models["ct_fixed"] == method_features("ct", "fixed")
    assert "mri_fixed" not in models
    assert not any("fixed" in c for c in feature_names("mri", cfg.modality_methods("mri")))
    assert vs_fixed_columns("ct", methods) == [vs_fixed_column("ct", m) for m in ("otsu", "kmeans", "gmm")]
    assert parse_feature("ct_otsu_vs_fixed_percent") is None
    assert all(c not in cols for cols in models.values() for c in vs_fixed_columns("ct", methods))


def test_fixed_threshold_gap_rule_on_float_voxels():
    from kernels import classify

    values = np.array([-30.0, -29.6, -29.5, -29.4, -29.0])
    labels = classify(values, [load_config().fit.ct.fixed.fat_bound_hu], fat_is="low")[0]
    assert list(labels) == [2, 2, 2, 1, 1]  # HABITAT_LABELS: fat 2, muscle 1


# ----------------------------------------------------------------------------- synthetic cohorts
def test_lean_cohort_fires_the_warning(lean_run):
    result, _ = lean_run
    diagnostic = result.thresholds["modalities"]["ct"]["diagnostic"]
    assert diagnostic["likely_one_tissue"] is True
    assert diagnostic["ashman_d"] < 2.0
    assert any("ONE tissue" in note for note in result.notes)
    thresholds = json.loads((result.out_dir / "thresholds.json").read_text(encoding="utf-8"))["modalities"]["ct"]
    assert thresholds["diagnostic"] == diagnostic
    for method in ("otsu", "kmeans", "gmm"):  # every fitted split lies inside the muscle range
        assert thresholds["methods"][method]["vs_fixed_fat_bound_hu"] > 0


def test_regular_cohort_does_not_warn(regular_run):
    result, _ = regular_run
    diagnostic = result.thresholds["modalities"]["ct"]["diagnostic"]
    assert diagnostic["likely_one_tissue"] is False
    assert not any("ONE tissue" in note for note in result.notes)


def test_fixed_features_track_the_planted_truth(regular_run):
    result, truth = regular_run
    merged = result.features.merge(truth, on="patient_id")
    r = {method: np.corrcoef(merged[f"ct_{method}_fat_percent"], merged["ct_true_fat_fraction"])[0, 1]
         for method in ("otsu", "kmeans", "gmm", "fixed")}
    # five patients: the fitted methods' r is 0.93-0.99 here; fixed tracks the truth at least as well
    assert min(r.values()) >= 0.9, r
    assert r["fixed"] >= 0.95 and r["fixed"] >= max(r[m] for m in ("otsu", "kmeans", "gmm")) - 0.02, r
    # fixed is the clinical reference: on this cohort it is within 4 points of the truth
    np.testing.assert_allclose(merged["ct_fixed_fat_percent"], 100 * merged["ct_true_fat_fraction"], atol=4.0)


def test_fixed_features_habitats_and_disagreement(lean_run):
    import SimpleITK as sitk

    result, _ = lean_run
    features = result.features
    for column in method_features("ct", "fixed") + vs_fixed_columns("ct", _config().fit.methods):
        assert column in features.columns and features[column].notna().all(), column
    np.testing.assert_allclose(features["ct_fixed_fat_percent"] + features["ct_fixed_muscle_percent"], 100.0)
    pid = features["patient_id"].iloc[0]
    # fitted vs fixed: voxel by voxel on the 1 mm voxels both classify (fixed's features count the native ones)
    window = RoiSample.load(sample_path(result.out_dir / CACHE_DIR, pid, "ct")).window_values
    resampled_fixed = 100 * np.count_nonzero(window <= -29.5) / window.size
    for method in ("otsu", "kmeans", "gmm"):
        expected = abs(features[f"ct_{method}_fat_percent"].iloc[0] - resampled_fixed)
        assert features[f"ct_{method}_vs_fixed_percent"].iloc[0] == pytest.approx(expected, abs=1e-9)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(result.out_dir / "habitats" / f"{pid}_ct_fixed.nii.gz")))
    fat, muscle = int((labels == 2).sum()), int((labels == 1).sum())
    assert fat / (fat + muscle) * 100 == pytest.approx(features["ct_fixed_fat_percent"].iloc[0], abs=1e-9)


# ----------------------------------------------------------------------------- the real CT (README)
#: Two ellipses in the paraspinal muscles of pydicom-data's explicit_VR-UN.dcm (prone TCIA
#: pancreas slice, 512 x 512, 0.86 mm): centres (row 142, col 228) and (142, 298), semi-axes
#: 10 rows x 22 columns. 1,370 pixels, 0.07 % of them <= -30 HU.
REAL_CT_ROI = (((142, 228), (142, 298)), (10, 22))


def _real_ct_roi_voxels():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("explicit_VR-UN.dcm")
    if path is None:
        pytest.skip("pydicom-data's explicit_VR-UN.dcm is not installed")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    (centres, (ry, rx)) = REAL_CT_ROI
    rows, cols = np.mgrid[:hu.shape[0], :hu.shape[1]]
    roi = np.zeros(hu.shape, bool)
    for cy, cx in centres:
        roi |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    return hu[roi]


def test_real_ct_lean_paraspinal_roi_fires_the_warning():
    """Issue 18's example: a single muscle peak, yet every two-class fit splits it."""
    from kernels import histogram

    cfg = load_config()
    lo, hi = cfg.preprocess.ct.window
    values = _real_ct_roi_voxels()
    values = values[(values >= lo) & (values <= hi)]
    counts = histogram(values, lo=lo, hi=hi, bin_width=1.0)
    fits = fit_cohort(counts, lo, hi, "ct", cfg)
    assert (values <= -30).mean() < 0.02
    for method in ("otsu", "kmeans", "gmm"):
        assert fits[method]["threshold"] > 20.0, method  # far above the -30 HU fat bound
        assert (values <= fits[method]["threshold"]).mean() > 0.15  # calls >15 % of lean muscle fat
    diagnostic = bimodality_diagnostic(counts, lo, hi, "ct", cfg, fits)
    assert diagnostic["likely_one_tissue"] is True
    assert diagnostic["ashman_d"] < 1.0
    assert "ONE tissue" in diagnostic["message"]


def test_report_shows_fixed_and_the_warning(lean_run):
    from engine.report import render_report

    result, _ = lean_run
    html = render_report(result.out_dir).read_text(encoding="utf-8")
    assert "Fixed HU" in html  # threshold table, histogram legend and overlays name it
    assert "one tissue or two?" in html and "ONE tissue" in html
    assert "classified differently" in html
