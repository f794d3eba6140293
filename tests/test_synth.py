"""The synthetic cohort: determinism, geometry, truth against the written files, PHI containment.

The session's shared ``small`` cohort (:mod:`tests.cohorts`, two worker processes) is checked
here; a 2-patient run of the same seed in one process must reproduce its first two patients
exactly (patients depend on (seed, index) only, never on ``n_patients`` or ``workers``).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from engine.synthetic import MANIFEST_COLUMNS, ROI_LABELS, synthesize_cohort
from engine.synthetic.cohort import SEGMENTATION_COLUMNS
from tests.cohorts import N_PATIENTS, SEED


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _series(folder: Path) -> list[pydicom.Dataset]:
    """The series' datasets sorted by position along z (ascending)."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _volume(folder: Path) -> np.ndarray:
    return np.stack([ds.pixel_array for ds in _series(folder)])


@pytest.fixture(scope="module")
def cohort(shared_cohort):
    """The session's shared cohort (SEED, N_PATIENTS patients, 2 worker processes)."""
    return shared_cohort.parent, shared_cohort


@pytest.fixture(scope="module")
def cohort_again(tmp_path_factory):
    """Its first two patients again, in one process: the same bytes whatever n and workers."""
    out = tmp_path_factory.mktemp("cohort2")
    seen = []
    manifest = synthesize_cohort(out, n_patients=2, seed=SEED, size="small",
                                 progress=lambda done, n: seen.append((done, n)))
    assert seen == [(1, 2), (2, 2)]
    return out, manifest


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed8")
    return out, synthesize_cohort(out, n_patients=1, seed=SEED + 1, size="small")


# ------------------------------------------------------------------------------ manifest
def test_manifest_columns_and_relative_paths(cohort):
    out, manifest = cohort
    assert manifest == out / "manifest.csv"
    rows = _rows(manifest)
    assert len(rows) == N_PATIENTS
    assert tuple(rows[0].keys()) == MANIFEST_COLUMNS + SEGMENTATION_COLUMNS  # issue 17
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c) for c in MANIFEST_COLUMNS)
    assert [r["patient_id"] for r in rows] == [f"SYN{i:04d}" for i in range(1, N_PATIENTS + 1)]
    assert {r["label"] for r in rows} == {"0", "1"}
    assert all(r["split"] == "" for r in rows)
    for row in rows:
        for column in ("ct_image", "ct_roi", "mri_image", "mri_roi"):
            assert not Path(row[column]).is_absolute()
            assert (out / row[column]).exists(), (row["patient_id"], column)
        assert row["sex"] in ("F", "M")
        assert row["occupation"] in ("worker", "retired", "farmer", "freelance", "others")
        assert 50 <= int(row["age"]) <= 95 and 15 <= float(row["bmi"]) <= 40
    formats = {Path(r["ct_roi"]).name.split(".", 1)[1] for r in rows}
    assert {"nii.gz", "nrrd", "seg.nrrd", "dcm"} <= formats


def test_splits_option_fills_a_stratified_split(tmp_path):
    rows = _rows(synthesize_cohort(tmp_path, n_patients=2, seed=SEED, size="small", splits=True))
    assert {r["split"] for r in rows} <= {"train", "validation"}
    assert all(r["split"] for r in rows)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="size"):
        synthesize_cohort(tmp_path, n_patients=1, size="huge")
    with pytest.raises(ValueError, match="seed"):
        synthesize_cohort(tmp_path, n_patients=1, seed=-1, size="small")


# ------------------------------------------------------------------------------ determinism
def test_same_seed_reproduces_patients_whatever_n_and_workers(cohort, cohort_again):
    (out_a, manifest_a), (out_b, manifest_b) = cohort, cohort_again
    assert _rows(manifest_a)[:2] == _rows(manifest_b)
    assert _rows(out_a / "truth.csv")[:2] == _rows(out_b / "truth.csv")
    for pid in ("SYN0001", "SYN0002"):
        for modality in ("ct", "mri"):
            a = out_a / "patients" / pid / modality
            b = out_b / "patients" / pid / modality
            assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
            np.testing.assert_array_equal(_volume(a), _volume(b))
            assert [ds.SOPInstanceUID for ds in _series(a)] == [ds.SOPInstanceUID for ds in _series(b)]


def test_another_seed_differs(cohort, other_seed):
    (out_a, manifest_a), (out_b, manifest_b) = cohort, other_seed
    assert _rows(manifest_a)[0] != _rows(manifest_b)[0]
    a, b = _volume(out_a / "patients/SYN0001/ct"), _volume(out_b / "patients/SYN0001/ct")
    assert a.shape != b.shape or not np.array_equal(a, b)


# ------------------------------------------------------------------------------ geometry
def test_ct_geometry_covers_the_disc(cohort):
    out, manifest = cohort
    truth = {r["patient_id"]: r for r in _rows(out / "truth.csv")}
    for row in _rows(manifest):
        folder = out / row["ct_image"]
        names = sorted(p.name for p in folder.iterdir())
        assert all(re.fullmatch(r"[0-9a-f]{16}", n) for n in names), names
        series = _series(folder)
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in series])
        by_name = [float(pydicom.dcmread(folder / n, stop_before_pixels=True).ImagePositionPatient[2]) for n in names]
        assert by_name != sorted(by_name)               # file names carry no slice order
        np.testing.assert_allclose(np.diff(z), 3.0, atol=1e-6)
        disc = float(truth[row["patient_id"]]["ct_disc_z_mm"])
        assert z[-1] - z[0] >= 42.0
        assert z[0] <= disc - 21.0 and z[-1] >= disc + 21.0
        ds = series[0]
        assert (ds.Rows, ds.Columns) == (256, 256)
        assert 1.40 <= float(ds.PixelSpacing[0]) <= 1.50 and ds.PixelSpacing[0] == ds.PixelSpacing[1]
        assert float(ds.SliceThickness) == 3.0
        assert (ds.BitsStored, float(ds.RescaleIntercept), float(ds.RescaleSlope)) == (12, -1024.0, 1.0)


def test_mri_geometry_and_vendors(cohort):
    out, manifest = cohort
    vendors = set()
    for row in _rows(manifest):
        series = _series(out / row["mri_image"])
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in series])
        assert len(series) == 10
        np.testing.assert_allclose(np.diff(z), 4.4, atol=1e-6)
        ds = series[0]
        assert float(ds.SliceThickness) == 4.0
        assert 1.0 <= float(ds.PixelSpacing[0]) <= 1.8 and ds.Rows == ds.Columns and 128 <= ds.Rows <= 192
        assert "RescaleSlope" not in ds
        vendors.add(ds.Manufacturer)
    assert vendors == {"SIEMENS", "Philips"}


# ------------------------------------------------------------------------------ truth
def _read_ct_hu(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_truth_matches_the_written_ct(cohort):
    """An independent count on the files (SimpleITK reads the series and the mask) of ROI
    voxels below -30 HU tracks the phantom's fat fraction at the voxel centres."""
    out, manifest = cohort
    truth = {r["patient_id"]: r for r in _rows(out / "truth.csv")}
    measured, expected = [], []
    for row in _rows(manifest):
        t = truth[row["patient_id"]]
        if row["ct_roi"].endswith(".dcm"):           # DICOM-SEG: one binary frame per slice and segment
            seg = pydicom.dcmread(out / row["ct_roi"])
            assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(ROI_LABELS)
            assert int(seg.pixel_array.astype(np.int64).sum()) == int(t["ct_roi_voxels"])
            continue
        image = _read_ct_hu(out / row["ct_image"])
        mask = sitk.ReadImage(str(out / row["ct_roi"]))
        np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
        hu = sitk.GetArrayFromImage(image).astype(np.float64)
        roi = sitk.GetArrayFromImage(mask)
        assert set(np.unique(roi)) <= {0, *ROI_LABELS}
        assert int((roi > 0).sum()) == int(t["ct_roi_voxels"])
        assert -120 < np.median(hu[roi > 0]) < 90  # muscle or marbled fat, not bone or air: the mask is on its image
        measured.append(float((hu[roi > 0] < -30).mean()))
        expected.append(float(t["ct_true_fat_fraction"]))
    measured, expected = np.array(measured), np.array(expected)
    assert len(measured) >= 8
    assert np.abs(measured - expected).max() < 0.03
    assert np.corrcoef(measured, expected)[0, 1] > 0.95


def test_truth_is_consistent_and_separates_the_labels(cohort):
    out, _ = cohort
    rows = _rows(out / "truth.csv")
    label = np.array([int(r["label"]) for r in rows])
    ct = np.array([float(r["ct_true_fat_fraction"]) for r in rows])
    ct_imf = np.array([float(r["ct_true_imf_fraction"]) for r in rows])
    mri_imf = np.array([float(r["mri_true_imf_fraction"]) for r in rows])
    target = np.array([float(r["imf_target_fraction"]) for r in rows])
    assert ((ct >= 0) & (ct <= 1)).all()
    # the same phantom seen by two grids
    assert np.corrcoef(ct_imf, mri_imf)[0, 1] > 0.95
    np.testing.assert_allclose(ct_imf, target, atol=0.02)
    assert ct[label == 1].mean() > ct[label == 0].mean() + 0.05
    area = np.array([float(r["muscle_csa_mm2"]) for r in rows])
    assert area[label == 1].mean() < area[label == 0].mean()


# ------------------------------------------------------------------------------ PHI
def test_phi_in_dicom_headers_only(cohort):
    out, manifest = cohort
    planted = json.loads((out / "phi_planted.json").read_text(encoding="utf-8"))
    assert planted and all(isinstance(s, str) and s for s in planted)
    for row in _rows(manifest)[:3]:
        ds = _series(out / row["ct_image"])[0]
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate"):
            assert str(ds.data_element(keyword).value) in planted, keyword
        assert ds.InstitutionName in planted
    for name in ("manifest.csv", "truth.csv"):
        text = (out / name).read_text(encoding="utf-8")
        leaks = [s for s in planted if s.lower() in text.lower()]
        assert not leaks, (name, leaks)
    paths = "\n".join(str(p.relative_to(out)) for p in out.rglob("*"))
    assert not [s for s in planted if s in paths]
