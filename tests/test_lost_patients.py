"""Models that lose patients say so (issue 16).

A fat mean is undefined for a patient without fat voxels; left alone, every model holding that
candidate silently dropped those patients (Table 4 ``uni_n = 20`` of 36). The expected counts
below are set by construction of the table, not read back from the engine.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine.config import load_config
from engine.contract import PATIENTS_KEY, STUDY_JSON, method_features
from engine.study import run_table_study

N_TRAIN, N_VALIDATION = 40, 20


def _table(rng) -> pd.DataFrame:
    n = N_TRAIN + N_VALIDATION
    label = np.tile([1, 0, 0], n)[:n]
    split = ["train"] * N_TRAIN + ["validation"] * N_VALIDATION
    table = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "label": label, "split": split,
                          "age": rng.normal(68 + 3 * label, 7)})
    for modality in ("ct", "mri"):
        table[f"{modality}_roi_volume"] = rng.normal(30000, 3000, n)
        for column in method_features(modality, "otsu"):
            table[column] = rng.normal(0, 1, n) + 0.8 * label
    # MRI: 12 of 40 training patients (30 %) and 6 validation patients have no fat voxel
    no_fat = np.r_[np.arange(12), N_TRAIN + np.arange(6)]
    table.loc[no_fat, "mri_otsu_fat_mean"] = np.nan
    # CT: 2 training patients (5 %) and 3 validation patients (15 %) have no CT at all
    no_ct = np.r_[[38, 39], N_TRAIN + np.array([17, 18, 19])]
    table.loc[no_ct, ["ct_roi_volume", *method_features("ct", "otsu")]] = np.nan
    return table


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lost_patients")
    path = folder / "features.csv"
    _table(np.random.default_rng(3)).to_csv(path, index=False)
    cheap = {"run": {"scheduler": "inline"}, "stats": {"cv_repeats": 2, "chance_permutations": 0}}
    summary, notes = run_table_study(path, folder / "out", load_config(overrides=cheap))
    return json.loads((folder / "out" / STUDY_JSON).read_text(encoding="utf-8")), notes


def test_a_mostly_undefined_fat_mean_leaves_the_candidates_not_the_patients(study):
    summary, notes = study
    assert any("mri_otsu_fat_mean is undefined for 12 of 40 training patients" in n for n in notes), notes
    mri = summary["models"]["mri_otsu"]
    assert "mri_otsu_fat_mean" not in mri["features"]
    assert mri[PATIENTS_KEY]["train"] == {"labelled": N_TRAIN, "used": N_TRAIN, "dropped": {}}


def test_each_model_counts_the_patients_it_left_out_and_why(study):
    summary, notes = study
    ct = summary["models"]["ct_otsu"][PATIENTS_KEY]
    reason = "no CT features (series absent or failed; see errors.csv)"
    assert ct["train"] == {"labelled": N_TRAIN, "used": N_TRAIN - 2, "dropped": {reason: 2}}
    assert ct["validation"] == {"labelled": N_VALIDATION, "used": N_VALIDATION - 3, "dropped": {reason: 3}}
    # 2 of 40 (5 %) is below the warning share, 3 of 20 (15 %) above it
    assert any(n.startswith("ct_otsu: 3 of 20 validation patients left out") for n in notes), notes
    assert not any(n.startswith("ct_otsu: 2 of 40 train") for n in notes)
    assert summary["models"]["clinical"][PATIENTS_KEY]["validation"]["used"] == N_VALIDATION


def test_the_report_shows_the_patients_each_model_used(study):
    from engine.report import patients_per_model

    summary, _ = study
    table = patients_per_model(summary)
    rows = [r for r in table["rows"] if r[0] == "CT Otsu"]
    assert [(r[1], r[3], r[4]) for r in rows] == [
        ("Training", "38", "2: no CT features (series absent or failed; see errors.csv)"),
        ("Retrospective validation", "17", "3: no CT features (series absent or failed; see errors.csv)")]


def test_the_report_names_the_scanners_and_warns_on_an_unstandardised_mix():
    from engine.report import scanner_sections
    from engine.runfolder import Thresholds

    def thresholds(standardize):
        scanners = [{"label": "SIEMENS MAGNETOM Aera 1.5 T", "n_patients": 3},
                    {"label": "Philips Ingenia 1.5 T", "n_patients": 2, "scale_median": 0.3, "scale_range": [0.2, 0.4]}]
        return Thresholds.from_json({"modalities": {"mri": {"scanners": scanners, "standardize": standardize}}})

    none, = scanner_sections(thresholds("none"))
    reference, = scanner_sections(thresholds("reference"))
    assert none["warn"] and not reference["warn"]
    assert [r[0] for r in none["table"]["rows"]] == ["SIEMENS MAGNETOM Aera 1.5 T", "Philips Ingenia 1.5 T"]
