"""Manifest validation and the seeded, stratified split (docs/method.md section 1)."""

import numpy as np
import pandas as pd
import pytest

from engine.errors import ManifestError
from engine.inputs.manifest import assign_splits, read_manifest


def _write(tmp_path, text, name="manifest.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_paths_resolve_relative_to_the_manifest(tmp_path):
    path = _write(tmp_path, "patient_id,label,split,ct_image,ct_roi,age\nP1,1,train,p1/ct,p1/roi.nii.gz,70\n")
    manifest = read_manifest(path)
    assert manifest.inputs("P1", "ct") == (str(tmp_path / "p1/ct"), str(tmp_path / "p1/roi.nii.gz"))
    assert manifest.inputs("P1", "mri") is None
    assert manifest.clinical_columns == ["age"]


def test_byte_order_mark_is_accepted(tmp_path):
    path = _write(tmp_path, "\ufeffpatient_id,label,ct_image,ct_roi\nP1,0,a,b\n")
    assert read_manifest(path).patient_ids == ["P1"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("patient_id,label,ct_image,ct_image\nP1,0,a,b\n", "appears twice"),
        ("label,ct_image\n0,a\n", "'patient_id' is missing"),
        ("patient_id,label,ct_image\nP1,0,a\nP1,1,b\n", "also appears on line 2"),
        ("patient_id,label,ct_image\nP1,yes,a\n", "label must be 1, 0 or empty"),
        ("patient_id,label,ct_image\n,1,a\n", "patient_id is empty"),
        ("patient_id,label,split,ct_image\nP1,1,test,a\n", "split must be one of"),
        ("patient_id,label,age\nP1,1,3\n", "ct_image or mri_image"),
    ],
)
def test_manifest_problems_stop_before_work(tmp_path, text, needle):
    with pytest.raises(ManifestError, match=needle):
        read_manifest(_write(tmp_path, text))


def test_duplicate_id_names_the_line(tmp_path):
    with pytest.raises(ManifestError) as info:
        read_manifest(_write(tmp_path, "patient_id,label,ct_image\nA,0,x\nB,1,y\nA,1,z\n"))
    assert info.value.line == 4


def test_stray_non_numeric_clinical_value_is_a_patient_problem(tmp_path):
    rows = "\n".join(f"P{i},{i % 2},a,{60 + i}" for i in range(9))
    path = _write(tmp_path, "patient_id,label,ct_image,age\n" + rows + "\nP9,1,a,seventy\n")
    manifest = read_manifest(path)
    assert np.isnan(manifest.table.loc["P9", "age"])
    assert manifest.table["age"].dtype.kind == "f"
    [problem] = manifest.problems
    assert problem.patient_id == "P9" and "seventy" in problem.reason


def test_data_root_refuses_paths_outside(tmp_path):
    path = _write(tmp_path, "patient_id,label,ct_image\nP1,0,/etc/passwd\n")
    with pytest.raises(ManifestError, match="outside the data root"):
        read_manifest(path, data_root=tmp_path)


def _table(n=100, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    return pd.DataFrame({"patient_id": ids, "label": rng.integers(0, 2, n).astype(float), "split": [""] * n},
                        index=ids)


def test_split_is_stratified_six_to_four_and_seeded():
    table = _table()
    split = assign_splits(table, train_fraction=0.6, seed=42)
    assert (split == "train").sum() == 60
    for label in (0, 1):
        group = split[table["label"] == label]
        assert abs((group == "train").mean() - 0.6) < 0.05
    assert split.equals(assign_splits(table, train_fraction=0.6, seed=42))
    assert not split.equals(assign_splits(table, train_fraction=0.6, seed=7))


def test_split_does_not_depend_on_row_order():
    table = _table()
    shuffled = table.sample(frac=1.0, random_state=3)
    assert assign_splits(table, seed=1).sort_index().equals(assign_splits(shuffled, seed=1).sort_index())


def test_given_splits_are_kept_and_unlabelled_rows_never_train():
    table = _table(20)
    table.loc["P000", "split"] = "prospective"
    table.loc["P001", "label"] = np.nan
    split = assign_splits(table, seed=0)
    assert split["P000"] == "prospective"
    assert split["P001"] == "validation"


# ----------------------------------------------------------------------------- issue 13
@pytest.mark.parametrize(
    "column, intended",
    [("ct_imgae", "ct_image"), ("CT Image", "ct_image"), ("mri-image", "mri_image"), ("ct_rio", "ct_roi"),
     ("mri_rois", "mri_roi"), ("patientid", "patient_id"), ("Patient_ID", "patient_id"), ("labels", "label"),
     ("spilt", "split"), ("ct_series_id", "ct_series_uid"), ("mri_segmentaion", "mri_segmentation")],
)
def test_misspelled_engine_column_is_refused_naming_the_intended_one(tmp_path, column, intended):
    # issue 13: `ct_imgae` ran 5 minutes, failed every patient, and became a clinical variable
    path = _write(tmp_path, f"patient_id,label,ct_image,{column}\nP1,1,p1/ct,p1/x\n")
    with pytest.raises(ManifestError, match=f"did you mean '{intended}'") as info:
        read_manifest(path)
    assert info.value.column == column and info.value.line == 1


@pytest.mark.parametrize("column", ["age", "sex", "bmi", "patient_age", "patient_weight", "ct_date", "mri_image_date",
                                    "ct_scanner", "hospital", "albumin", "hemoglobin", "rbc", "smi", "labs"])
def test_clinical_names_near_no_engine_column_are_kept(tmp_path, column):
    path = _write(tmp_path, f"patient_id,label,ct_image,{column}\nP1,1,p1/ct,3\nP2,0,p2/ct,4\n")
    assert read_manifest(path).clinical_columns == [column]


def test_segmentation_column_is_read_not_clinical(tmp_path):
    """Issue 17: ct_segmentation is an engine column, resolved like an image path; a row with only a
    segmentation and an image (no ROI) still has CT inputs."""
    manifest = read_manifest(_write(tmp_path, "patient_id,label,ct_image,ct_segmentation\nP1,1,a,seg/ts\n"))
    assert "ct_segmentation" not in manifest.clinical_columns
    assert manifest.segmentation("P1", "ct") == str(tmp_path / "seg" / "ts")
    assert manifest.inputs("P1", "ct") == (str(tmp_path / "a"), "")
    assert manifest.segmentation("P1", "mri") == ""


@pytest.mark.parametrize(
    "cells",
    [
        ["scans/P1", "scans/P2", "scans/P3"],                      # existing DICOM folders, relative
        ["P1.nii.gz", "P2.NII.GZ", ""],                              # image endings, whether or not they exist
        ["seg/P1.seg.nrrd", "seg/P2.nrrd", "seg/P3.dcm"],
        ["/data/cohort/P1/ct", "/data/cohort/P2/ct", "C:\\cohort\\P3"],  # absolute, from another machine
    ],
)
def test_clinical_column_of_file_paths_is_refused(tmp_path, cells):
    for pid in ("P1", "P2", "P3"):
        (tmp_path / "scans" / pid).mkdir(parents=True)
    rows = "".join(f"{pid},1,ct/{pid},\"{cell}\"\n" for pid, cell in zip(("P1", "P2", "P3"), cells, strict=True))
    with pytest.raises(ManifestError, match="holds file paths") as info:
        read_manifest(_write(tmp_path, "patient_id,label,ct_image,scan_path\n" + rows))
    assert info.value.column == "scan_path"


def test_free_text_with_slashes_is_a_clinical_column_not_paths(tmp_path):
    (tmp_path / "scans" / "P1").mkdir(parents=True)  # one cell that happens to exist is not most of them
    text = ("patient_id,label,ct_image,occupation,visit,bmi,note,site\n"
            "P1,1,ct/P1,a/b,2021/03/04,24.5,N/A,scans/P1\n"
            "P2,0,ct/P2,c/d,2021/04/05,31.2,and/or,north\n"
            "P3,0,ct/P3,a/b,2022/01/02,27,/,south\n")
    manifest = read_manifest(_write(tmp_path, text))
    assert manifest.clinical_columns == ["occupation", "visit", "bmi", "note", "site"]
    assert manifest.table.loc["P2", "occupation"] == "c/d"
