"""The clinical reference on the ROI's native voxels (issue 30 item 5).

``fixed`` (-190..-30 HU fat, -29..+150 HU muscle) counts the image's own voxels under the ROI, as
Slice-O-Matic, Comp2Comp and TotalSegmentator's tissue types do; the fitted methods stay on the
1 mm grid. Checked against numpy on the arrays SimpleITK reads (the real 3 mm CT of
``../shared/realdata/totalseg_ct_t11_l2`` with TotalSegmentator's masks, derived ROI at L1/L2)
and against the synthetic cohort's ground truth (its ROI voxel count on the CT grid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from engine.batch.tasks import classify_and_measure, ingest_and_preprocess
from engine.config import load_config
from engine.contract import DISC_PLANE_KEY, HABITAT_LABELS

from .cohorts import few_patients

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "totalseg_ct_t11_l2"
#: TotalSegmentator "total" v2: autochthon left/right, iliopsoas left/right.
MUSCLE_LABELS = (86, 87, 88, 89)
OVERRIDES = {"run": {"backend": "cpu", "scheduler": "inline", "report": False, "qa": False},
             "stats": {"enabled": False}}


def _measure(job: dict, cfg, tmp_path: Path, thresholds: dict) -> tuple[dict, dict]:
    summary = ingest_and_preprocess(job, cfg, str(tmp_path / "cache"))
    assert summary["status"] == "ok", summary
    result = classify_and_measure(summary, thresholds, cfg, str(tmp_path / "habitats"), str(tmp_path / "cache"))
    assert result["status"] == "ok", result
    return summary, result["features"]


def _lps_z(image: sitk.Image) -> np.ndarray:
    """(Z, Y, X) LPS z of every voxel centre."""
    kk, jj, ii = np.indices(sitk.GetArrayViewFromImage(image).shape)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())[None, :]
    return image.GetOrigin()[2] + matrix[2, 0] * ii + matrix[2, 1] * jj + matrix[2, 2] * kk


@pytest.fixture(scope="module")
def real_ct(tmp_path_factory):
    if not (REAL / "example_ct_sm.nii.gz").is_file():
        pytest.skip("../shared/realdata/totalseg_ct_t11_l2 is not there")
    cfg = load_config(overrides={**OVERRIDES, "roi": {"derive": {"level": "L1/L2"}}})
    job = {"patient_id": "TS1", "modality": "ct", "image": str(REAL / "example_ct_sm.nii.gz"), "roi": "",
           "segmentation": str(REAL / "example_seg.nii.gz"), "series_uid": None}
    tmp = tmp_path_factory.mktemp("real_native")
    bound = cfg.fit.ct.fixed.fat_bound_hu
    summary, features = _measure(job, cfg, tmp, {"gmm": 10.0, "fixed": bound})
    return summary, features, tmp


def test_real_ct_fixed_counts_the_native_voxels(real_ct):
    summary, features, _ = real_ct
    image = sitk.ReadImage(str(REAL / "example_ct_sm.nii.gz"), sitk.sitkFloat32)
    seg = sitk.ReadImage(str(REAL / "example_seg.nii.gz"))
    assert seg.GetSize() == image.GetSize()
    hu, labels = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(seg)
    plane = summary[DISC_PLANE_KEY]
    z = _lps_z(image)
    roi = np.isin(labels, MUSCLE_LABELS) & (z >= plane["slab_min_z_mm"]) & (z < plane["slab_max_z_mm"])
    values = hu[roi]
    assert np.array_equal(values, np.round(values))          # integer HU: the Alberta ranges apply as printed
    fat = int(((values >= -190) & (values <= -30)).sum())
    muscle = int(((values >= -29) & (values <= 150)).sum())
    voxel = float(np.prod(image.GetSpacing()))
    assert voxel == pytest.approx(27.0)                      # 3 mm isotropic
    assert summary["native_roi_voxels"] == int(roi.sum())
    assert summary["native_window_voxels"] == fat + muscle
    assert features["ct_fixed_fat_percent"] == pytest.approx(100 * fat / (fat + muscle), rel=1e-12)
    assert features["ct_fixed_fat_volume"] == pytest.approx(fat * voxel, rel=1e-12)
    assert features["ct_fixed_muscle_volume"] == pytest.approx(muscle * voxel, rel=1e-12)
    assert features["ct_fixed_fat_mean"] == pytest.approx(values[(values >= -190) & (values <= -30)].mean(),
                                                          rel=1e-12)
    assert round(features["ct_fixed_fat_percent"], 2) == 1.53  # the README's figure


def test_real_ct_fitted_methods_stay_on_the_1mm_grid(real_ct):
    from engine.measure.preprocess import RoiSample

    summary, features, _ = real_ct
    sample = RoiSample.load(summary["sample"])
    assert sample.grid.spacing == (1.0, 1.0, 1.0)
    window = sample.window_values
    gmm_fat = 100 * np.count_nonzero(window <= 10.0) / window.size
    resampled_fixed = 100 * np.count_nonzero(window <= -29.5) / window.size
    assert features["ct_gmm_fat_percent"] == pytest.approx(gmm_fat, rel=1e-12)
    assert round(resampled_fixed, 2) == 0.64                 # the README's resampled figure
    # fitted vs fixed: voxel by voxel on the one grid both classify, the resampled one
    assert features["ct_gmm_vs_fixed_percent"] == pytest.approx(gmm_fat - resampled_fixed, rel=1e-12)


def test_real_ct_fixed_habitat_map_is_on_the_image_grid(real_ct):
    summary, features, tmp = real_ct
    image = sitk.ReadImage(str(REAL / "example_ct_sm.nii.gz"), sitk.sitkFloat32)
    habitat = sitk.ReadImage(str(tmp / "habitats" / "TS1_ct_fixed.nii.gz"))
    assert habitat.GetSpacing() == pytest.approx(image.GetSpacing())
    on_image = sitk.GetArrayFromImage(sitk.Resample(habitat, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    assert int((on_image == HABITAT_LABELS["fat"]).sum()) * 27.0 == pytest.approx(features["ct_fixed_fat_volume"])
    hu = sitk.GetArrayFromImage(image)
    assert (hu[on_image == HABITAT_LABELS["fat"]] <= -30).all()
    assert (hu[on_image == HABITAT_LABELS["muscle"]] >= -29).all()
    gmm = sitk.ReadImage(str(tmp / "habitats" / "TS1_ct_gmm.nii.gz"))
    assert gmm.GetSpacing() == (1.0, 1.0, 1.0)


def test_synthetic_fixed_counts_the_truths_roi_voxels(tmp_path_factory, tmp_path):
    manifest = few_patients(tmp_path_factory, 2, "native_fixed")
    truth = pd.read_csv(manifest.parent / "truth.csv").set_index("patient_id")
    cfg = load_config(overrides={**OVERRIDES, "io": {"mask_labels": [1, 2, 3, 4]}})
    bound = cfg.fit.ct.fixed.fat_bound_hu
    for pid in ("SYN0001", "SYN0002"):
        patient = manifest.parent / "patients" / pid
        roi_file = next(p for p in patient.iterdir() if p.name.startswith("ct_roi"))
        job = {"patient_id": pid, "modality": "ct", "image": str(patient / "ct"), "roi": str(roi_file),
               "series_uid": None}
        summary, features = _measure(job, cfg, tmp_path / pid, {"otsu": -40.0, "fixed": bound})
        assert summary["native_roi_voxels"] == truth.loc[pid, "ct_roi_voxels"]
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(patient / "ct")))
        hu = sitk.GetArrayFromImage(reader.Execute())
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(roi_file)))
        values = hu[np.isin(mask, (1, 2, 3, 4))]
        window = values[(values >= -190) & (values <= 150)]
        voxel = truth.loc[pid, "ct_roi_volume_mm3"] / truth.loc[pid, "ct_roi_voxels"]
        assert features["ct_fixed_fat_percent"] == pytest.approx(100 * np.mean(window <= -30), rel=1e-12)
        assert features["ct_fixed_fat_volume"] + features["ct_fixed_muscle_volume"] == pytest.approx(
            window.size * voxel, rel=1e-9)
        # the planted truth on the same voxels: fat at the voxel centre; noise moves a few points
        assert features["ct_fixed_fat_percent"] == pytest.approx(100 * truth.loc[pid, "ct_true_fat_fraction"],
                                                                 abs=4.0)


def test_real_ct_fixed_is_the_same_on_both_backends(real_ct, xp):
    """The native voxels go through the same exact-sum kernels: equal bit for bit on either backend."""
    from engine.measure.preprocess import RoiSample
    from kernels import tissue_stats

    summary, features, _ = real_ct
    native = RoiSample.load(summary["sample"]).native
    stats = tissue_stats(xp.asarray(native.window_values), [-29.5], fat_is="low")[0]
    assert int(stats.fat_count) * 27.0 == features["ct_fixed_fat_volume"]
    assert int(stats.muscle_count) * 27.0 == features["ct_fixed_muscle_volume"]
    assert float(stats.fat_sum) / int(stats.fat_count) == features["ct_fixed_fat_mean"]
    assert float(stats.muscle_sum) / int(stats.muscle_count) == features["ct_fixed_muscle_mean"]
