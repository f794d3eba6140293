"""Nobody exposed: no output of a run carries a patient's identity.

The synthetic cohort plants fake PatientName, PatientID, PatientBirthDate, AccessionNumber,
InstitutionName and StudyDate values in every DICOM header (and the DICOM-SEG masks copy them);
``phi_planted.json`` lists them. A run with both modalities, habitat maps, the statistics and the
report is scanned byte by byte (gzip streams decompressed, Parquet decoded), together with its log
and console output, for every planted value in the spellings a leak could take.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import pandas as pd
import pytest

from engine.batch.pipeline import run
from engine.config import load_config
from tests import corruptions as corpus

pytestmark = pytest.mark.slow

N_PATIENTS = 4  # SYN0004's CT mask is a DICOM-SEG, which carries the patient module of its source


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return corpus.synthetic_cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def phi_run(cohort, tmp_path_factory):
    """A run with CT and MRI, habitats, statistics and report; its folder and console/log text."""
    header, rows = corpus.read_rows(cohort / "manifest.csv")
    manifest = corpus.write_rows(cohort / "manifest_phi.csv", header, rows[:N_PATIENTS])
    out = tmp_path_factory.mktemp("phi_run")
    # N4 with few iterations: the bias field does not matter here, its run time would. (The
    # whole mri section is given: load_config merges over the file, not over the schema defaults.)
    mri = {**load_config().preprocess.mri.model_dump(mode="json"), "n4_iterations": [5]}
    config = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": True},
                                    "stats": {"cv_repeats": 2, "chance_permutations": 0},
                                    "preprocess": {"mri": mri}})
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    logger = logging.getLogger("sarco")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            result = run(manifest, out_dir=out, config=config)
    finally:
        logger.removeHandler(handler)
    return out, console.getvalue(), result


def test_the_scanner_finds_what_was_planted(cohort):
    """Positive control: the planted values are in the inputs, in a form the scan recognises."""
    planted = corpus.planted_phi(cohort)
    leaks = corpus.find_phi(cohort / "patients" / "SYN0004", planted)
    kinds = {leak.split(": ", 1)[1] for leak in leaks}
    assert any("^" in k for k in kinds) and any(k.strip("'").isdigit() for k in kinds)
    assert any("ct_roi.dcm" in leak for leak in leaks), "the DICOM-SEG mask should carry the planted values"
    assert corpus.find_phi_in_text("Mr JANE DOE came on 1936-02-12", ["DOE^JANE", "19360212"]) == \
        ["1936-02-12", "JANE DOE"]
    assert corpus.find_phi_in_text("threshold 0.1936021234", ["19360212"]) == []


def test_no_output_byte_carries_an_identifier(phi_run, cohort):
    out, console, _ = phi_run
    planted = corpus.planted_phi(cohort)
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    for expected in ("features.csv", "features.parquet", "thresholds.json", "model.json", "provenance.json",
                     "errors.csv", "split.csv", "run.log"):
        assert expected in names, expected
    assert any(p.name.endswith(".nii.gz") for p in files) and any(p.suffix == ".npz" for p in files)
    assert corpus.find_phi(out, planted) == []
    assert corpus.find_phi_in_text(console, planted) == []


def test_the_report_carries_no_identifier(phi_run, cohort):
    out, _, result = phi_run
    if not (out / "report.html").exists():
        pytest.skip(f"no report.html in this build ({'; '.join(result.notes)})")
    leaks = corpus.find_phi(out, corpus.planted_phi(cohort))
    assert [leak for leak in leaks if leak.startswith("report.html")] == []


def test_patients_are_named_by_the_manifest_id_only(phi_run, cohort):
    out, _, _ = phi_run
    ids = {f"SYN{i:04d}" for i in range(1, N_PATIENTS + 1)}
    assert set(pd.read_csv(out / "features.csv")["patient_id"]) == ids
    assert set(pd.read_csv(out / "errors.csv")["patient_id"]) <= ids
    for folder, separator in ((out / "habitats", "_"), (out / "cache", "__")):
        stems = {p.name.split(separator, 1)[0] for p in folder.rglob("*") if p.is_file()}
        assert stems and stems <= ids, stems
