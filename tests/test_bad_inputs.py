"""Nothing lost: one bad study never costs the night's work (the bad-input corpus).

One corrupted manifest carries every per-patient kind of broken input at once (tests/corruptions.py),
each on its own copy of a clean synthetic patient, in the validation split. One run over it must
give exactly one errors.csv row per broken patient, with the stage and a reason a radiographer can
act on, while every clean patient's features and the thresholds stay byte-identical to the clean
run. Manifest- and config-level problems stop the run before any work, naming the line or key.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.batch.pipeline import run
from engine.errors import ConfigError, InputError, ManifestError
from tests import corruptions as corpus

pytestmark = pytest.mark.slow

ERROR_KINDS = [k for k in corpus.PATIENT_KINDS if k.stage is not None]
PROCESSED_KINDS = [k for k in corpus.PATIENT_KINDS if k.stage is None]


def _lines_by_patient(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.split(",", 1)[0]: line for line in lines[1:]}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return corpus.synthetic_cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return corpus.clean_run(tmp_path_factory)


@pytest.fixture(scope="module")
def corrupted(cohort, clean, tmp_path_factory) -> Path:
    """The run over the clean patients plus one broken copy per kind."""
    header, rows = corpus.read_rows(corpus.clean_ct_manifest(tmp_path_factory))
    manifest = corpus.build_corrupt_cohort(cohort, header, rows)
    out = tmp_path_factory.mktemp("corpus_corrupted_run")
    with pytest.MonkeyPatch.context() as patch:
        if os.geteuid() == 0:
            # root reads any file whatever its mode: let the OS answer what it answers everyone else
            unreadable = str(cohort / corpus.CORRUPT_DIR / "BAD-unreadable" / "ct_roi.nii.gz")
            real_access = os.access
            patch.setattr(os, "access", lambda path, mode, *a, **k: (
                False if str(path) == unreadable and mode & os.R_OK else real_access(path, mode, *a, **k)))
        run(manifest, out_dir=out, config=corpus.run_config())
    return out


@pytest.fixture(scope="module")
def errors(corrupted) -> pd.DataFrame:
    return pd.read_csv(corrupted / "errors.csv", dtype=str, keep_default_na=False)


def test_the_corpus_covers_at_least_25_kinds():
    kinds = [k.kind for k in corpus.PATIENT_KINDS] + [k for k, *_ in corpus.MANIFEST_KINDS] + \
        [k for k, *_ in corpus.CONFIG_KINDS]
    assert len(set(kinds)) == len(kinds) and len(kinds) >= 25
    assert len({k.patient_id for k in corpus.PATIENT_KINDS}) == len(corpus.PATIENT_KINDS)


@pytest.mark.parametrize("corruption", ERROR_KINDS, ids=lambda k: k.patient_id)
def test_each_broken_patient_is_one_errors_row_a_radiographer_can_act_on(corruption, errors, cohort):
    rows = errors[errors["patient_id"] == corruption.patient_id]
    assert len(rows) == 1, f"{corruption.kind}: {rows.to_dict('records')}"
    row = rows.iloc[0]
    assert (row["modality"], row["stage"]) == (corruption.modality, corruption.stage), row["reason"]
    reason = row["reason"]
    for needle in corruption.needles:
        assert needle.lower() in reason.lower(), f"{corruption.kind}: {needle!r} not in {reason!r}"
    assert "unexpected" not in reason and "Traceback" not in reason, reason
    assert not corpus.find_phi_in_text(reason, corpus.planted_phi(cohort)), reason


@pytest.mark.parametrize("corruption", PROCESSED_KINDS, ids=lambda k: k.patient_id)
def test_harmless_oddities_are_processed(corruption, corrupted, clean, errors):
    assert corruption.patient_id not in set(errors["patient_id"])
    features = pd.read_csv(corrupted / "features.csv").set_index("patient_id")
    ct_columns = [c for c in features.columns if c.startswith("ct_")]
    assert features.loc[corruption.patient_id, ct_columns].notna().all()
    if corruption.same_as_source:
        reference = _lines_by_patient(clean / "features.csv")[corruption.source]
        ours = _lines_by_patient(corrupted / "features.csv")[corruption.patient_id]
        # split and label may differ (missing label); every feature value is bit for bit the source's
        assert ours.split(",")[3:] == reference.split(",")[3:]


def test_broken_patients_have_no_features_and_nothing_else_is_reported(corrupted, errors):
    features = pd.read_csv(corrupted / "features.csv").set_index("patient_id")
    ct_columns = [c for c in features.columns if c.startswith("ct_")]
    for corruption in ERROR_KINDS:
        if corruption.modality == "ct":
            assert features.loc[corruption.patient_id, ct_columns].isna().all(), corruption.kind
        else:  # a bad clinical cell costs that cell only
            assert features.loc[corruption.patient_id, ct_columns].notna().all(), corruption.kind
    expected = {k.patient_id for k in ERROR_KINDS}
    assert set(errors["patient_id"]) == expected
    assert len(errors) == len(expected)


def test_every_clean_patient_is_byte_identical_to_the_clean_run(corrupted, clean):
    ours, reference = _lines_by_patient(corrupted / "features.csv"), _lines_by_patient(clean / "features.csv")
    assert set(corpus.CLEAN_SPLITS) <= set(ours)
    for patient_id in corpus.CLEAN_SPLITS:
        assert ours[patient_id] == reference[patient_id], patient_id
    # the unlabelled patient sits in the train split and must not have entered the fit
    assert (corrupted / "thresholds.json").read_bytes() == (clean / "thresholds.json").read_bytes()
    assert (corrupted / "features.csv").read_text(encoding="utf-8").splitlines()[0] == \
        (clean / "features.csv").read_text(encoding="utf-8").splitlines()[0]


def test_the_edge_roi_is_measured_whole(corrupted, clean):
    features = pd.read_csv(corrupted / "features.csv").set_index("patient_id")
    reference = pd.read_csv(clean / "features.csv").set_index("patient_id")
    # two more slices of ROI than the source: the crop is clipped at the volume edge, not the ROI
    assert features.loc["BAD-edge", "ct_roi_volume"] > reference.loc["SYN0001", "ct_roi_volume"]


def test_the_corrupted_run_leaks_no_identifier(corrupted, cohort):
    assert corpus.find_phi(corrupted, corpus.planted_phi(cohort)) == []


# ----------------------------------------------------------------------------- run-level problems
@pytest.mark.parametrize("kind, text, needles", corpus.MANIFEST_KINDS, ids=[k for k, *_ in corpus.MANIFEST_KINDS])
def test_manifest_problems_stop_the_run_before_any_work(kind, text, needles, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ManifestError) as error:
        run(manifest, out_dir=out, config=corpus.run_config())
    for needle in needles:
        assert needle in str(error.value), f"{kind}: {needle!r} not in {error.value}"
    assert not out.exists(), "the run folder was created before the manifest was validated"


def test_a_manifest_with_a_byte_order_mark_reads_as_without(tmp_path_factory, tmp_path):
    from engine.inputs.manifest import read_manifest

    clean_manifest = corpus.clean_ct_manifest(tmp_path_factory)
    with_bom = clean_manifest.with_name("manifest_bom.csv")
    with_bom.write_bytes(b"\xef\xbb\xbf" + clean_manifest.read_bytes())
    ours, reference = read_manifest(with_bom), read_manifest(clean_manifest)
    pd.testing.assert_frame_equal(ours.table, reference.table)
    assert ours.clinical_columns == reference.clinical_columns
    # a BOM before a broken manifest still names the right line
    broken = tmp_path / "m.csv"
    broken.write_bytes(b"\xef\xbb\xbfpatient_id,label,ct_image\nP1,0,a\nP1,1,b\n")
    with pytest.raises(ManifestError, match="line 3"):
        read_manifest(broken)


def test_a_utf16_manifest_is_refused_with_a_remedy(tmp_path):
    from engine.inputs.manifest import read_manifest

    path = tmp_path / "m.csv"
    path.write_bytes("patient_id,label,ct_image\nP1,0,a\n".encode("utf-16"))
    with pytest.raises(ManifestError, match="save it as CSV UTF-8"):
        read_manifest(path)


@pytest.mark.parametrize("kind, text, needles", corpus.CONFIG_KINDS, ids=[k for k, *_ in corpus.CONFIG_KINDS])
def test_config_problems_stop_the_run_before_any_work(kind, text, needles, tmp_path, tmp_path_factory, capsys):
    from engine.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["run", "--manifest", str(corpus.clean_ct_manifest(tmp_path_factory)), "--config", str(config),
                 "--out", str(out), "--scheduler", "inline", "--backend", "cpu"])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    for needle in needles:
        assert needle in stderr, f"{kind}: {needle!r} not in {stderr!r}"
    assert not out.exists()


def test_a_yaml_tag_never_runs_code(tmp_path):
    from engine.config import load_config

    marker = tmp_path / "pwned"
    config = tmp_path / "config.yaml"
    config.write_text(f"run: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="YAML tags are not allowed"):
        load_config(config)
    assert not marker.exists()


def test_data_root_refuses_a_manifest_path_outside_it(tmp_path, tmp_path_factory, capsys):
    from engine.cli import main

    manifest = corpus.clean_ct_manifest(tmp_path_factory)
    root = tmp_path / "root"
    root.mkdir()
    out = tmp_path / "out"
    code = main(["run", "--manifest", str(manifest), "--out", str(out), "--data-root", str(root),
                 "--scheduler", "inline", "--backend", "cpu"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "line 2, column 'ct_image'" in stderr and "outside the data root" in stderr
    assert not out.exists()


def test_data_root_sees_through_dot_dots_and_symbolic_links(tmp_path):
    from engine.inputs.manifest import read_manifest

    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    for path_text in ("inside/../../outside", "link/ct"):
        manifest = root / "manifest.csv"
        manifest.write_text(f"patient_id,label,ct_image\nP1,0,{path_text}\n", encoding="utf-8")
        with pytest.raises(ManifestError, match="outside the data root"):
            read_manifest(manifest, data_root=root)
    manifest.write_text("patient_id,label,ct_image\nP1,0,inside\n", encoding="utf-8")
    assert read_manifest(manifest, data_root=root).patient_ids == ["P1"]


# ----------------------------------------------------------------------------- limits
def _job(cohort: Path, patient_id: str) -> dict:
    patient = cohort / "patients" / patient_id
    roi = next(p for p in patient.iterdir() if p.name.startswith("ct_roi"))
    return {"patient_id": patient_id, "modality": "ct", "image": str(patient / "ct"), "roi": str(roi),
            "series_uid": None}


@pytest.mark.parametrize("io_limits, needles", [
    ({"max_voxels_per_volume": 1_000_000}, ("256 x 256 x 17", "more than the limit of 1000000",
                                            "io.max_voxels_per_volume")),
    ({"max_files_per_series": 10}, ("more than 10 files", "io.max_files_per_series")),
], ids=["voxels", "files"])
def test_volume_and_series_limits_are_clear_patient_errors(io_limits, needles, cohort, tmp_path):
    from engine.batch.tasks import ingest_and_preprocess
    from engine.config import load_config

    config = load_config(overrides={**corpus.RUN_OVERRIDES, "io": {**corpus.RUN_OVERRIDES["io"], **io_limits}})
    summary = ingest_and_preprocess(_job(cohort, "SYN0001"), config, str(tmp_path))
    assert (summary["status"], summary["stage"]) == ("error", "ingest")
    for needle in needles:
        assert needle in summary["reason"], summary["reason"]


def test_a_huge_header_is_refused_before_any_allocation(cohort, monkeypatch):
    import SimpleITK as sitk

    from engine.io import dicom, read_image

    def must_not_run(*args, **kwargs):
        raise AssertionError("pixel data were read for a header claiming an absurd size")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", must_not_run)
    monkeypatch.setattr(dicom, "_decode", must_not_run)
    with pytest.raises(InputError, match="1000000 x 1000000 x 17 voxels, more than the limit"):
        read_image(cohort / corpus.CORRUPT_DIR / "BAD-hugenrrd" / "ct.nhdr")
    with pytest.raises(InputError, match="65535 x 65535 x 17"):
        read_image(cohort / corpus.CORRUPT_DIR / "BAD-hugedicom" / "ct")


def test_reasons_show_paths_as_the_manifest_wrote_them(tmp_path):
    from engine.batch.tasks import ingest_and_preprocess
    from engine.config import load_config

    job = {"patient_id": "P1", "modality": "ct", "image": str(tmp_path / "patients" / "P1" / "ct"),
           "roi": str(tmp_path / "patients" / "P1" / "ct_roi.nii.gz"), "series_uid": None,
           "manifest_dir": str(tmp_path)}
    summary = ingest_and_preprocess(job, load_config(overrides=corpus.RUN_OVERRIDES), str(tmp_path / "c"))
    assert summary["reason"] == "image file not found: patients/P1/ct"


def test_truncated_nifti_masks_and_images_are_refused(tmp_path):
    """ITK fills the missing end of a truncated NIfTI with zeros without a word."""
    import SimpleITK as sitk

    from engine.io import read_image

    image = sitk.GetImageFromArray(np.arange(8 * 32 * 32, dtype=np.float32).reshape(8, 32, 32))
    for name in ("image.nii", "image.nii.gz"):
        path = tmp_path / name
        sitk.WriteImage(image, str(path), useCompression=name.endswith(".gz"))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(InputError, match="truncated or damaged"):
            read_image(path)


def test_the_errors_table_parses_as_csv(corrupted):
    with open(corrupted / "errors.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["patient_id", "modality", "stage", "reason"]
    assert all(len(row) == 4 for row in rows)


def test_series_description_chooses_in_one_scan_of_the_folder(cohort, tmp_path, monkeypatch):
    """io.series_description picks the series of a two-series folder; the folder's headers are read once."""
    import shutil

    from engine.batch.tasks import ingest_and_preprocess
    from engine.config import load_config
    from engine.io import dicom
    from engine.synthetic import write_dicom_series

    job = _job(cohort, "SYN0001")
    alone = ingest_and_preprocess(job, load_config(overrides=corpus.RUN_OVERRIDES), str(tmp_path / "c0"))
    assert alone["status"] == "ok"
    folder = tmp_path / "ct"
    shutil.copytree(job["image"], folder)
    scout = np.full((3, 64, 64), 1024, np.uint16)
    write_dicom_series(folder / "scout", scout, spacing_mm=(4.0, 4.0, 10.0), origin_mm=(0.0, 0.0, 0.0),
                       rescale_intercept=-1024.0, series_description="SCOUT AX")
    job = {**job, "image": str(folder)}

    def config(pattern):
        return load_config(overrides={**corpus.RUN_OVERRIDES,
                                      "io": {**corpus.RUN_OVERRIDES["io"], "series_description": {"ct": pattern}}})

    unchosen = ingest_and_preprocess(job, config(None), str(tmp_path / "c1"))
    assert (unchosen["status"], unchosen["stage"]) == ("error", "ingest")
    assert "2 image series found" in unchosen["reason"] and "io.series_description.ct" in unchosen["reason"]

    scans = []
    real_scan = dicom._scan
    monkeypatch.setattr(dicom, "_scan", lambda *a, **k: scans.append(a) or real_scan(*a, **k))
    chosen = ingest_and_preprocess(job, config("L3-L4"), str(tmp_path / "c2"))
    assert chosen["status"] == "ok", chosen.get("reason")
    assert chosen["roi_voxels"] == alone["roi_voxels"] and chosen["min"] == alone["min"]
    assert len(scans) == 1

    for pattern, matches in (("AX", 2), ("SAG", 0)):
        summary = ingest_and_preprocess(job, config(pattern), str(tmp_path / f"c-{pattern}"))
        assert (summary["status"], summary["stage"]) == ("error", "ingest")
        assert f"io.series_description '{pattern}' matches {matches} image series, expected exactly 1" \
            in summary["reason"]
        assert "'SCOUT AX' (3 files)" in summary["reason"] and "'AX ABD L3-L4 3mm' (17 files)" in summary["reason"]


def test_a_series_description_that_is_not_a_regular_expression_is_a_config_error():
    from engine.config import load_config

    with pytest.raises(ConfigError, match=r"'AX\[' is not a regular expression"):
        load_config(overrides={"io": {"series_description": {"ct": "AX["}}})
