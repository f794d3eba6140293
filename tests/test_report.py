"""The clinician-facing report: self-contained, complete, escaped, robust to missing pieces.

Every test builds a small fake run folder (the files ``sarco run`` writes, with the exact names the
engine uses) and renders it; nothing here runs the pipeline.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape

from engine.contract import PREVIEWS_DIR, preview_path
from engine.measure.preprocess import Grid, RoiSample
from engine.report import format_number, format_p, html_table, render_report
from engine.runfolder.previews import write_preview

SECTION_HEADINGS = ("Sarcopenia study report", "1. Cohort", "2. Muscle/fat thresholds", "3. Statistical tables",
                    "4. ROC curves (Figure 5)", "5. Features by group (Figure 3)",
                    "6. Segmentation examples (Figure 4)", "7. Errors", "8. Provenance")
THRESHOLDS = {"ct": {"otsu": -30.0, "kmeans": -25.5, "gmm": -38.2},
              "mri": {"otsu": 540.0, "kmeans": 552.5, "gmm": 530.7}}
ERRORS = [
    {"patient_id": "P018", "modality": "ct", "stage": "ingest",
     "reason": "CT series has a missing slice between z=-12.0 and z=-6.0 mm"},
    {"patient_id": "P019", "modality": "mri", "stage": "mask",
     "reason": "ROI mask does not overlap the image (mask origin 10 mm & 'outside' the volume)"},
    {"patient_id": "P019", "modality": "ct", "stage": "ingest",
     "reason": 'unexpected ValueError: <script>alert("x")</script>'},
]
N_PATIENTS = 20


def _histogram(modality: str, rng: np.random.Generator) -> dict:
    lo, hi = (-190.0, 150.0) if modality == "ct" else (0.0, 1200.0)
    centres = np.arange(lo, hi + 1.0)
    fat, muscle = (-80.0, 45.0) if modality == "ct" else (800.0, 320.0)
    density = 3000 * np.exp(-0.5 * ((centres - muscle) / 25) ** 2) + 900 * np.exp(-0.5 * ((centres - fat) / 30) ** 2)
    return {"lo": lo, "hi": hi, "bin_width": 1.0, "counts": rng.poisson(density).astype(int).tolist()}


def _sample(modality: str, sarcopenia: bool, rng: np.random.Generator) -> RoiSample:
    """A fake ROI sample (its preview is published as pass 1 does): an elliptical ROI on a
    (Z, Y, X) = (3, 32, 40) crop, fat patches inside."""
    nx, ny, nz = 40, 32, 3
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    roi = ((xx - 20) / 15.0) ** 2 + ((yy - 16) / 11.0) ** 2 <= 1.0
    roi[0] &= (xx[0] < 30)  # fewer ROI voxels on z=0 so the preview is z=1 or 2
    flat_index = np.flatnonzero(roi.ravel()).astype(np.int64)
    fat_fraction = 0.35 if sarcopenia else 0.12
    is_fat = rng.random(flat_index.size) < fat_fraction
    if modality == "ct":
        values = np.where(is_fat, rng.normal(-85, 20, flat_index.size), rng.normal(45, 18, flat_index.size))
        in_window = (values >= -190) & (values <= 150)
        image = rng.normal(20, 60, (nz, ny, nx))
    else:
        values = np.where(is_fat, rng.normal(800, 60, flat_index.size), rng.normal(320, 50, flat_index.size))
        in_window = np.ones(flat_index.size, bool)
        in_window[:5] = False
        image = rng.normal(400, 150, (nz, ny, nx))
    volume = image.ravel().copy()
    volume[flat_index] = values
    volume = volume.reshape(nz, ny, nx)
    per_slice = roi.reshape(nz, -1).sum(axis=1)
    preview_z = int(np.argmax(per_slice))
    return RoiSample(values.astype(np.float32), flat_index, in_window,
                     Grid((nx, ny, nz), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist())),
                     volume[preview_z].astype(np.float32), preview_z)


def make_run(root, *, modalities=("ct", "mri"), tables=True, errors=ERRORS, seed=0):
    """Write a fake run folder with the engine's file names under ``root``; return its path."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    run.mkdir(parents=True)
    ids = [f"P{i:03d}" for i in range(N_PATIENTS)]
    splits = ["train"] * 10 + ["validation"] * 6 + ["prospective"] * 4
    labels = [1, 0] * 5 + [1, 0, 0, 1, 0, 1] + [1, 0, 0, np.nan]
    features = pd.DataFrame({"patient_id": ids, "split": splits, "label": labels})
    for modality in modalities:
        for method in ("otsu", "kmeans", "gmm"):
            for tissue in ("fat", "muscle"):
                sign = 1 if tissue == "fat" else -1
                fat_mean, muscle_mean = (-80.0, 45.0) if modality == "ct" else (800.0, 320.0)
                base = {"mean": fat_mean if tissue == "fat" else muscle_mean, "volume": 20000.0, "percent": 25.0}
                for stat, centre in base.items():
                    shift = sign * np.asarray([(lab == 1) * (0.3 * abs(centre)) if lab == lab else 0
                                               for lab in labels])
                    features[f"{modality}_{method}_{tissue}_{stat}"] = centre + shift + rng.normal(
                        0, 0.1 * abs(centre), N_PATIENTS)
        features[f"{modality}_roi_volume"] = rng.normal(60000, 5000, N_PATIENTS)
        features[f"{modality}_excluded_voxels"] = rng.integers(0, 50, N_PATIENTS)
        failed = [e["patient_id"] for e in errors if e["modality"] == modality]
        features.loc[features["patient_id"].isin(failed), [c for c in features if c.startswith(modality + "_")]] \
            = np.nan
        for pid, lab in zip(ids, labels, strict=True):
            if pid not in failed and lab == lab:
                write_preview(preview_path(run, pid, modality), _sample(modality, lab == 1, rng))
    features.to_csv(run / "features.csv", index=False)

    thresholds = {"engine_version": "0.1.0", "modalities": {}}
    for modality in modalities:
        hist = _histogram(modality, rng)
        thresholds["modalities"][modality] = {
            "fat_is": "low" if modality == "ct" else "high", "unit": "HU" if modality == "ct" else "a.u.",
            "n_patients": 10, "n_voxels": int(sum(hist["counts"])), "histogram": hist,
            "methods": {
                "otsu": {"threshold": THRESHOLDS[modality]["otsu"], "method": "otsu"},
                "kmeans": {"threshold": THRESHOLDS[modality]["kmeans"], "method": "kmeans",
                           "centroids": [-80.1, 41.0], "iterations": 7},
                "gmm": {"threshold": THRESHOLDS[modality]["gmm"], "method": "gmm", "means": [-82.0, 44.0],
                        "variances": [900.0, 620.0], "weights": [0.3, 0.7], "converged": True},
            }}
    (run / "thresholds.json").write_text(json.dumps(thresholds))
    pd.DataFrame(errors, columns=["patient_id", "modality", "stage", "reason"]).to_csv(run / "errors.csv",
                                                                                       index=False)
    (run / "provenance.json").write_text(json.dumps({
        "engine_version": "0.1.0", "mode": "run", "backend": "cpu",
        "config": {"io": {"mask_labels": None}, "preprocess": {"spacing_mm": [1, 1, 1],
                                                               "ct": {"window": [-190, 150]}},
                   "fit": {"methods": ["otsu", "kmeans", "gmm"], "bin_width": 1.0}},
        "versions": {"python": "3.11.9", "numpy": "2.1.0", "sarco-engine": "0.1.0"},
        "platform": "Linux-6.1-x86_64", "input_blake3": {f"{p}/ct": "ab" * 32 for p in ids},
        "started_unix": 1732380000.0, "finished_unix": 1732380312.5}))
    (run / "model.json").write_text(json.dumps({
        "format": "sarco-model", "engine_version": "0.1.0", "config": {},
        "statistics": {"notes": ["ct_otsu: fat_percent and muscle_percent are perfectly collinear "
                                 "(sum = 100); muscle_percent dropped", "separation in mri_gmm: Firth fit used"]}}))

    models = [f"{m}_{k}" for m in modalities for k in ("otsu", "kmeans", "gmm")] + ["clinical", "combined"]
    pred = features[["patient_id", "split", "label"]].copy()
    for i, model in enumerate(models):
        signal = np.nan_to_num(np.asarray(labels, float), nan=0.5)
        p = 1 / (1 + np.exp(-(1.5 * (signal - 0.5) * (1 + i % 3) + rng.normal(0, 1.2, N_PATIENTS))))
        pred[f"p_{model}"] = p
        pred[f"call_{model}"] = (p >= 0.5).astype(int)
    pred.loc[pred["split"] == "validation", "p_combined"] = np.nan  # a model that failed on one split
    pred.loc[0, f"p_{models[0]}"] = np.nan
    pred.to_csv(run / "predictions.csv", index=False)

    if tables:
        (run / "tables").mkdir()
        pd.DataFrame({"split": ["train", "train"], "variable": ["age", "sex"],
                      "group_0": ["68.1 ± 6.9", "F 3 / M 2"], "group_1": ["71.7 ± 7.0", "F 2 / M 3"],
                      "test": ["t-test", "fisher"], "p": [0.0004, 0.52]}).to_csv(run / "tables" / "table2_groups.csv",
                                                                                  index=False)
        pd.DataFrame({"variable": ["age", "albumin"], "or": [1.0731, 0.8123], "or_low": [1.01, 0.70],
                      "or_high": [1.14, 0.94], "p": [0.021, 0.0001]}).to_csv(
            run / "tables" / "table3_clinical_logistic.csv", index=False)
        pd.DataFrame({"model": ["ct_otsu"], "feature": ["ct_otsu_fat_mean"], "or": [3.2], "p": [0.002]}).to_csv(
            run / "tables" / "table4_imaging_logistic.csv", index=False)
        pd.DataFrame({"model": ["ct_otsu", "clinical"], "split": ["train", "train"], "auc": [0.91234, 0.7641],
                      "auc_low": [0.85, 0.699], "auc_high": [0.97, 0.828], "cutoff": [0.438, 0.429],
                      "sensitivity": [0.937, 0.57], "specificity": [0.953, 0.846], "accuracy": [0.94, 0.75],
                      "n": [10, 10]}).to_csv(run / "tables" / "table5_performance.csv", index=False)
        pd.DataFrame({"model": ["ct_otsu"], "mean": [0.94], "sd": [0.03]}).to_csv(run / "tables" / "cv_auc.csv",
                                                                                   index=False)
        pd.DataFrame({"model_a": ["combined"], "model_b": ["clinical"], "z": [2.1], "p": [0.036]}).to_csv(
            run / "tables" / "model_comparisons.csv", index=False)
    return run


def _images(html: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html)


def _assert_self_contained(html: str) -> None:
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered  # the report needs no script at all, so any is an injection
    assert "<link" not in lowered and "@import" not in lowered and "url(" not in lowered
    assert re.search(r"<iframe|<object|<embed", lowered) is None
    sources = _images(html)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert html.count("<img") == len(sources)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("full"))
    path = render_report(run)
    return run, path, path.read_text(encoding="utf-8")


def test_full_report_is_self_contained_and_complete(full_report):
    run, path, html = full_report
    assert path == run / "report.html" and path.is_file()
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]  # no temporary file left
    _assert_self_contained(html)
    for heading in SECTION_HEADINGS:
        assert str(escape(heading)) in html, heading
    # 2 threshold histograms + 1 ROC figure + 2 box-plot grids + 2 overlay figures
    assert len(_images(html)) == 7
    for modality in THRESHOLDS.values():
        for value in modality.values():
            assert f"{value:.1f}" in html
    assert "fat is the low class" in html and "fat is the high class" in html
    assert "0.1.0" in html and "2024-11-23 16:45 UTC" in html and "cpu" in html


def test_full_report_tables_notes_errors_and_provenance(full_report):
    _, _, html = full_report
    assert "&lt;0.001" in html  # p < 0.001
    assert "0.912" in html and "0.91234" not in html  # AUC to 3 decimals
    assert "Cross-validated AUC" in html and "Model comparisons" in html  # an extra CSV is shown too
    assert str(escape("ct_otsu: fat_percent and muscle_percent are perfectly collinear")) in html
    for error in ERRORS:
        assert str(escape(error["reason"])) in html
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert re.search(r"<td class=\"short\">ingest</td><td class=\"num\">2</td>", html)  # counts per stage
    assert "spacing_mm" in html and "numpy" in html and "Linux-6.1-x86_64" in html
    assert "ab" * 32 not in html  # only the number of input hashes, not the hashes
    assert "P000" in html and "P001" in html  # overlay examples: first train patient of each label


def test_ct_only_run_without_tables_renders(tmp_path):
    run = make_run(tmp_path, modalities=("ct",), tables=False, errors=[])
    predictions = pd.read_csv(run / "predictions.csv")
    predictions["p_ct_gmm"] = np.nan  # a model that failed for everyone
    predictions.to_csv(run / "predictions.csv", index=False)
    thresholds = json.loads((run / "thresholds.json").read_text(encoding="utf-8"))
    thresholds["modalities"]["ct"]["methods"]["kmeans"]["threshold"] = None  # a fit that failed
    (run / "thresholds.json").write_text(json.dumps(thresholds))
    html = render_report(run).read_text(encoding="utf-8")
    assert "CT GMM has no usable predictions" in html and "not fitted" in html
    _assert_self_contained(html)
    for heading in SECTION_HEADINGS:
        assert str(escape(heading)) in html, heading
    assert len(_images(html)) == 4  # 1 histogram + ROC + 1 box-plot grid + 1 overlay
    assert "MRI" in html and "a.u." not in html
    assert "no tables/ folder" in html
    assert "No errors" in html
    for method in ("otsu", "gmm"):
        assert f"{THRESHOLDS['ct'][method]:.1f}" in html


def test_optional_files_missing_render_with_notes(tmp_path):
    run = make_run(tmp_path, modalities=("ct",), tables=False, errors=[])
    for name in ("predictions.csv", "errors.csv", "provenance.json", "model.json"):
        (run / name).unlink()
    for npz in (run / PREVIEWS_DIR).iterdir():  # damaged previews: no overlay, no crash
        npz.write_bytes(b"PK\x03\x04 not a zip archive")
    html = render_report(run).read_text(encoding="utf-8")
    _assert_self_contained(html)
    assert len(_images(html)) == 2  # histogram + box plots only
    for name in ("predictions.csv", "errors.csv", "provenance.json", "model.json"):
        assert f"{name} not found" in html
    assert "ROC curves not available" in html and "No CT overlay" in html


@pytest.mark.parametrize("name", ["features.csv", "thresholds.json"])
def test_required_file_missing_is_named(tmp_path, name):
    run = make_run(tmp_path, modalities=("ct",), tables=False, errors=[])
    (run / name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(name)):
        render_report(run)
    assert not (run / "report.html").exists()


def test_number_formatting():
    assert format_number(0.91234) == "0.912"
    assert format_number(float("nan")) == ""
    assert format_number(12345.6) == "12,346"
    assert format_number(0.00012) == "1.20e-04"
    assert format_p(0.0004) == "<0.001" and format_p(0.0312) == "0.031"
    table = html_table(pd.DataFrame({"model": ["a", "b"], "n": [12.0, np.nan], "auc": [0.75, 1.0],
                                     "sensitivity": [1.0, 0.0], "p_value": [1e-5, 0.2], "empty": [np.nan, np.nan],
                                     "entered": [True, False]}))
    assert table["rows"] == [["a", "12", "0.750", "1.000", "<0.001", "yes"], ["b", "", "1.000", "0.000", "0.200", "no"]]
    assert table["dropped"] == ["empty"] and table["columns"][2] == "AUC"


def test_identical_roc_curves_are_drawn_once_and_named_together():
    """Issue 14: a model whose curve equals another's must not hide it: one curve, both names."""
    from engine.report.figures import roc_curves

    rng = np.random.default_rng(0)
    y = pd.Series(np.r_[np.ones(20), np.zeros(20)].astype(int))
    p = rng.random(40) + 0.3 * y.to_numpy()
    predictions = pd.DataFrame({"p_ct_otsu": p, "p_combined": 1 / (1 + np.exp(-3 * p)),  # same ranking
                                "p_clinical": rng.random(40)})
    curves = roc_curves(y, predictions, pd.Series(True, index=y.index), ["ct_otsu", "combined", "clinical"],
                         "validation", [])
    assert [c["models"] for c in curves] == [["ct_otsu", "combined"], ["clinical"]]
    low, high = curves[0]["ci"]
    assert low < curves[0]["auc"] < high


def test_statistics_tables_read_like_the_paper(tmp_path):
    """Issue 14: Table 2 shows mean ± SD or n (%), the test and p in five columns, not a CSV dump."""
    from engine.report.tables import render_table2, render_table5
    from engine.stats import table2

    rng = np.random.default_rng(1)
    n = 80
    df = pd.DataFrame({"label": np.r_[np.ones(30), np.zeros(50)], "split": "train",
                       "age": rng.normal(70, 6, n), "sex": rng.choice(["F", "M"], n)})
    rendered = render_table2(table2(df, variables=["age", "sex"]))
    assert rendered["columns"] == ["Variable", "Non-sarcopenia", "Sarcopenia", "Test", "p"]
    age = next(r["cells"] for r in rendered["rows"] if r.get("cells", [""])[0] == "age")
    x0 = df.loc[df["label"] == 0, "age"]
    assert age[1] == f"{x0.mean():.2f} ± {x0.std(ddof=1):.2f}" and age[3] and age[4]
    female = next(r["cells"] for r in rendered["rows"] if r.get("cells", [""])[0] == "F")
    count = int(((df["label"] == 1) & (df["sex"] == "F")).sum())
    assert female[2] == f"{count} ({100 * count / 30:.1f}%)"
    t5 = pd.DataFrame({"model": ["ct_otsu"] * 2, "split": ["train", "validation"], "auc_kind": ["apparent", "held-out"],
                       "n": [50, 30], "n_pos": [20, 12], "n_neg": [30, 18], "auc": [0.9, 0.8],
                       "auc_ci_low": [0.8, 0.65], "auc_ci_high": [0.97, 0.95], "train_cutoff": [0.4, 0.4],
                       "sensitivity": [0.85, 0.75], "specificity": [0.8, 0.7], "accuracy": [0.82, 0.72],
                       "ppv": [0.7, 0.6], "npv": [0.9, 0.8], "note": ["", ""]})
    rendered = render_table5(t5)
    assert "apparent" in rendered["rows"][0]["section"]
    assert rendered["rows"][3]["cells"][:2] == ["CT Otsu", "0.800 (0.650–0.950)"]


def test_summary_names_the_best_model_by_cv_and_its_held_out_auc():
    from engine.report.tables import study_overview

    features = pd.DataFrame({"label": [1, 0, 1, 0, np.nan], "split": ["train", "train", "validation", "validation",
                                                                      "validation"]})
    model = {"cv_auc_sd": 0.05, "auc": {"train": 0.97, "validation": 0.81}, "auc_ci": {"train": [0.9, 1.0],
             "validation": [0.7, 0.92]}, "n": {"train": 2, "validation": 2}}
    summary = {"best_imaging_model": "ct_otsu", "models": {
        "clinical": {**model, "cv_auc_mean": 0.70, "apparent_auc": 0.99, "features": ["age"]},
        "combined": {**model, "cv_auc_mean": 0.90, "apparent_auc": 0.95, "features": ["age", "ct_otsu_fat_percent"]},
        "ct_otsu": {**model, "cv_auc_mean": 0.90, "apparent_auc": 0.95, "features": ["ct_otsu_fat_percent"]}}}
    text = " ".join(study_overview(summary, features)["lines"])
    # the CV tie goes to the simpler model, never to the highest apparent AUC alone
    assert "model by repeated cross-validated AUC (selection inside the folds): CT Otsu, CV AUC 0.900" in text
    assert "retrospective validation AUC 0.810 (0.700–0.920)" in text
    assert "5 patients" in text and "1 unlabelled" in text


def test_summary_says_first_when_no_model_beats_chance_and_flags_what_contradicts():
    """Issue 31: the demo's summary named "Clinical, CV AUC 0.920" best beside a validation AUC of 0.641
    (0.405-0.876) without a word; a best model that is not better than chance is now said first."""
    from engine.report.tables import study_overview

    features = pd.DataFrame({"label": [1, 0, 1, 0], "split": ["train", "train", "validation", "validation"]})
    clinical = {"cv_auc_mean": 0.92, "cv_auc_sd": 0.18, "cv_auc_interval": [0.41, 1.0], "apparent_auc": 0.95,
                "features": ["age"], "auc": {"train": 0.95, "validation": 0.641},
                "auc_ci": {"train": [0.9, 1.0], "validation": [0.405, 0.876]}, "n": {"train": 2, "validation": 2}}
    verdict = {"name": "clinical", "cv_auc": 0.92, "cv_auc_interval": [0.41, 1.0], "chance_p": 0.23,
               "permutations": 99, "better_than_chance": False}
    summary = {"best_imaging_model": None, "best_model": verdict, "models": {"clinical": clinical}}
    lines = study_overview(summary, features)["lines"]
    assert lines[0].startswith("No model predicts better than chance in cross-validation (p = 0.23")
    text = " ".join(lines)
    assert "Clinical, CV AUC 0.920 (95% interval 0.410-1.000), not better than chance, p = 0.23" in text
    assert "includes 0.5" in text
    assert "Contradiction: the retrospective validation AUC of Clinical, 0.641 (0.405–0.876), excludes" in text
    summary["best_model"] = {**verdict, "chance_p": 0.01, "better_than_chance": True, "cv_auc_interval": [0.8, 1.0]}
    clinical.update(cv_auc_interval=[0.8, 1.0], auc={"train": 0.95, "validation": 0.9},
                    auc_ci={"train": [0.9, 1.0], "validation": [0.8, 1.0]})
    text = " ".join(study_overview(summary, features)["lines"])
    assert not text.startswith("No model") and "better than chance, p = 0.01" in text
    assert "Contradiction" not in text and "includes 0.5" not in text
