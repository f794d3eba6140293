"""Issue 21, "Everyday use": what a new user trips on, each guarded by a test that failed before the fix."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import statsmodels.api as sm

from engine.cli import main


def _collinear_table(tmp_path, n=80, seed=3):
    rng = np.random.default_rng(seed)
    fat = rng.uniform(5, 45, n)
    age = rng.normal(65, 9, n)
    logit = -4 + 0.08 * fat + 0.02 * (age - 65)
    label = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    table = pd.DataFrame({"label": label, "ct_otsu_fat_percent": fat, "ct_otsu_muscle_percent": 100 - fat,
                          "age": age, "age_months": 12 * age})
    path = tmp_path / "features.csv"
    table.to_csv(path, index=False)
    return path, table


def test_stats_logistic_names_and_drops_collinear_variables(tmp_path, capsys):
    """Issue 21: collinear --vars printed 'Singular matrix' (exit 2) or every row n/a (exit 0)."""
    path, table = _collinear_table(tmp_path)
    variables = "ct_otsu_fat_percent,ct_otsu_muscle_percent,age,age_months"
    assert main(["stats", "logistic", "--csv", str(path), "--label", "label", "--vars", variables, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    dropped = {d["variable"]: d["partners"] for d in result["dropped_collinear"]}
    assert dropped == {"ct_otsu_muscle_percent": ["ct_otsu_fat_percent"], "age_months": ["age"]}
    assert any("ct_otsu_muscle_percent" in n and "ct_otsu_fat_percent" in n for n in result["notes"])
    # the reduced design, fitted independently
    reference = sm.Logit(table["label"], sm.add_constant(table[["ct_otsu_fat_percent", "age"]])).fit(disp=0)
    terms = {t["term"]: t for t in result["terms"]}
    assert set(terms) == {"ct_otsu_fat_percent", "age"}
    for name in terms:
        assert np.isclose(terms[name]["or"], np.exp(reference.params[name]), rtol=1e-5)
        assert np.isclose(terms[name]["p"], reference.pvalues[name], rtol=1e-4)
    # the text names them too, once, and fits the rest
    assert main(["stats", "logistic", "--csv", str(path), "--label", "label", "--vars", variables]) == 0
    text = capsys.readouterr().out
    assert "n/a" not in text and "'age_months' dropped" in text and "'ct_otsu_muscle_percent' dropped" in text


def test_study_table_on_the_engines_own_features_takes_no_diagnostic_as_clinical(tmp_path, capsys):
    """Issue 21: ``ct_*_vs_fixed_percent`` of the engine's features.csv entered Table 2 and the clinical model."""
    from engine.config import load_config
    from engine.contract import feature_names, is_diagnostic_column, vs_fixed_column
    from engine.measure.methods import method_names
    from engine.study import run_table_study

    rng = np.random.default_rng(5)
    n = 45
    y = (np.arange(n) % 3 == 0).astype(float)
    table = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(n)], "split": "train", "label": y,
                          "age": rng.normal(70, 6, n) + 4 * y})
    columns = feature_names("ct", ["otsu", "fixed"])
    assert vs_fixed_column("ct", "otsu") in columns  # the engine writes it
    for column in columns:
        table[column] = rng.normal(50, 10, n)
    table.to_csv(tmp_path / "features.csv", index=False)
    cfg = load_config(overrides={"stats": {"cv_folds": 2, "cv_repeats": 2, "chance_permutations": 0}})
    run_table_study(tmp_path / "features.csv", tmp_path / "study", cfg)
    # issue 21: its report said "no processing failure" while listing errors.csv as missing
    html = (tmp_path / "study" / "report.html").read_text(encoding="utf-8")
    assert "no processing failure" not in html and "processing failures not known" in html
    assert "sarco study --table features.csv" in html
    model = json.loads((tmp_path / "study" / "model.json").read_text(encoding="utf-8"))
    assert model["clinical_columns"] == ["age"]
    table2 = pd.read_csv(tmp_path / "study" / "tables" / "table2_groups.csv")
    assert set(table2["variable"]) == {"age"}
    # issue 21: this model.json has no thresholds; apply refuses it in one line naming why
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("patient_id,label\nP1,1\n")
    argv = ["apply", "--model", str(tmp_path / "study" / "model.json"), "--manifest", str(manifest),
            "--out", str(tmp_path / "applied")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sarco study --table" in err and "sarco run" in err
    # every engine column is a model feature or a registered diagnostic: none is left to a name pattern
    for modality in ("ct", "mri"):
        for column in feature_names(modality, method_names()):
            parsed = column.split("_")
            assert is_diagnostic_column(column) or (len(parsed) == 4 and parsed[1] in method_names()), column


def _actions_without_help(parser, path=("sarco",)):
    import argparse

    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    missing.append(" ".join(path + (name,)))
                missing += _actions_without_help(sub, path + (name,))
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(" ".join(path) + " " + "/".join(action.option_strings or [action.dest]))
    return missing


def test_every_option_and_subcommand_has_a_help_line():
    """Issue 21: half the options of --help had no line; -v said 'log progress' (it also shows tracebacks)."""
    from engine.cli import build_parser

    parser = build_parser()
    assert _actions_without_help(parser) == []
    verbose = next(a for a in parser._actions if "-v" in a.option_strings)
    assert "traceback" in verbose.help and "INFO" in verbose.help


def test_synth_reports_progress(tmp_path, capsys):
    """Issue 21: ``sarco synth`` was silent for the whole synthesis (~76 s for 12 clinical patients)."""
    assert main(["synth", str(tmp_path / "c"), "--patients", "2", "--size", "small"]) == 0
    assert "synth: 2/2 patients" in capsys.readouterr().err


def test_scheduler_in_a_config_file_is_checked_like_the_option(tmp_path, capsys):
    """Issue 21: ``run.scheduler`` from a config file (or a bundle) reached Dask unchecked."""
    config = tmp_path / "c.yaml"
    config.write_text("run:\n  scheduler: headnode\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,label\nP1,1\n")
    assert main(["run", "--manifest", str(manifest), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.scheduler" in err and "headnode" in err
    assert not (tmp_path / "o" / "run.log").exists()


def test_apply_does_not_inherit_the_training_machine(tmp_path):
    """Issue 21: apply reused the bundle's saved ``run.scheduler`` (that night's cluster), unchecked."""
    import pytest

    from engine.batch.pipeline import apply_config
    from engine.config import load_config
    from engine.errors import ConfigError

    saved = load_config(overrides={"run": {"scheduler": "tcp://trainhead:8786", "workers": 32},
                                   "stats": {"cv_folds": 3}}).to_dict()
    cfg = apply_config({"config": saved})
    assert cfg.run.scheduler is None and cfg.run.workers is None and cfg.stats.cv_folds == 3
    assert apply_config({"config": saved}, {"run": {"scheduler": "inline"}}).run.scheduler == "inline"
    saved["run"]["scheduler"] = "not an address"
    assert apply_config({"config": saved}).run.scheduler is None
    saved["stats"]["cv_folds"] = 0
    with pytest.raises(ConfigError, match="stats.cv_folds"):
        apply_config({"config": saved})


def test_a_run_prints_each_note_once_shows_failures_and_guards_its_folder(shared_cohort, tmp_path, capsys):
    """Issue 21: every warning printed twice (stderr WARNING + stdout note), a failed patient showed only
    a count, a cached rerun looked like a fresh one, and another manifest silently overwrote a run folder."""
    import os
    import subprocess
    import sys

    from tests.cohorts import first_patients

    manifest = pd.read_csv(first_patients(shared_cohort, 12, "everyday"), dtype=str, keep_default_na=False)
    manifest[["mri_image", "mri_roi", "mri_segmentation"]] = ""  # CT only: seconds, not minutes
    manifest.loc[2, "ct_image"] = "patients/not_there"
    path = shared_cohort.parent / "manifest_everyday_ct.csv"
    manifest.to_csv(path, index=False)
    config = tmp_path / "fast.yaml"
    config.write_text("run: {habitats: false, report: false, qa: false, scheduler: inline}\n"
                      "stats: {cv_folds: 2, cv_repeats: 2, chance_permutations: 0}\n")
    out = tmp_path / "run"
    argv = ["run", "--manifest", str(path), "--config", str(config), "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=600)
    assert done.returncode == 1, done.stderr  # a patient failed (its image is not there): exit 1, as apply
    notes = [line[len("note: "):] for line in done.stdout.splitlines() if line.startswith("note: ")]
    assert any("left out" in n for n in notes)  # a warning-level note: it was on stderr too
    assert len(notes) == len(set(notes))
    for note in notes:
        assert note not in done.stderr
    assert "WARNING" not in done.stderr
    # the failure itself, not only its count
    failed = manifest.loc[2, "patient_id"]
    assert f"  {failed} CT [ingest]: image file not found: patients/not_there" in done.stdout

    # a rerun says what it took from the cache
    assert main(argv) == 1  # the same failed patient, from the cache
    captured = capsys.readouterr()
    assert "pass 1: 12/12 series, 1 failed, 12 from the cache" in captured.err
    assert "pass 2: 11/11 series, 0 failed, 11 from the cache" in captured.err

    # another manifest into the finished folder: refused in one line before any work
    other = tmp_path / "other.csv"
    manifest.to_csv(other, index=False)
    before = (out / "features.csv").stat().st_mtime_ns
    assert main(["run", "--manifest", str(other), "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest_everyday_ct.csv" in err and "--force" in err
    assert (out / "features.csv").stat().st_mtime_ns == before
    # --force lets it through the check (the run itself is the same as above)
    from engine.runfolder.rundir import check_folder_owner

    check_folder_owner(out, other, "run", force=True)


def test_table2_shows_median_iqr_for_a_mann_whitney_row():
    """Issue 21: a variable compared by Mann-Whitney U was described as mean ± SD."""
    import statistics

    from engine.stats.groups import compare_groups

    rng = np.random.default_rng(8)
    n = 40
    y = np.r_[np.zeros(n), np.ones(n)]
    df = pd.DataFrame({"label": y, "crp": np.exp(rng.normal(1, 1.2, 2 * n)) + 3 * y,
                       "age": rng.normal(65, 8, 2 * n) + 2 * y})
    table = compare_groups(df, label="label", variables=["crp", "age"]).set_index("variable")
    assert table.loc["crp", "test"].startswith("Mann-Whitney")
    for g in (0, 1):
        x = df.loc[df["label"] == g, "crp"].tolist()
        q1, median, q3 = statistics.quantiles(x, n=4, method="inclusive")  # R type 7
        assert median == statistics.median(x)
        assert table.loc["crp", f"value_{g}"] == f"{median:.2f} [{q1:.2f}, {q3:.2f}]"
    assert table.loc["age", "test"].endswith("t-test")
    assert table.loc["age", "value_0"] == f"{df.loc[y == 0, 'age'].mean():.2f} ± {df.loc[y == 0, 'age'].std():.2f}"


def test_apply_prints_the_thresholds_in_the_order_run_does(tmp_path):
    """Issue 21: model.json is written with sorted keys, so apply printed fixed, gmm, kmeans, otsu."""
    from types import SimpleNamespace

    from engine.cli import _summary
    from engine.runfolder.outputs import write_json

    fit = {"unit": "HU", "n_patients": 5,
           "methods": {m: {"threshold": t} for m, t in (("otsu", -3), ("kmeans", -2), ("gmm", 17), ("fixed", -29.5))}}
    thresholds = {"modalities": {"mri": {**fit, "unit": "signal"}, "ct": fit}}
    write_json(tmp_path / "model.json", {"thresholds": thresholds})
    reread = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))["thresholds"]
    lines = []
    for source in (thresholds, reread):
        result = SimpleNamespace(n_patients=1, backend="cpu", n_failed=0, errors=pd.DataFrame(
            columns=["patient_id", "modality", "stage", "reason"]), thresholds=source, reused=0, notes=[])
        lines.append([line for line in _summary(result, tmp_path).splitlines() if "thresholds" in line])
    assert lines[0] == lines[1]
    assert lines[1][0].startswith("CT thresholds (HU): otsu -3.0, kmeans -2.0, gmm 17.0, fixed -29.5")
    assert lines[1][1].startswith("MRI thresholds (signal): otsu")


def test_a_combined_model_identical_to_the_clinical_one_says_why():
    """Issue 21: the combined model came out identical to the clinical one with no word of why."""
    from engine.stats import run_study
    from engine.stats.study import study_summary

    rng = np.random.default_rng(4)
    n = 80
    age = rng.normal(70, 8, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(age - 70) / 3))).astype(float)
    features = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "label": y, "split": "train", "age": age})
    imaging = [f"ct_otsu_{t}_{s}" for t in ("fat", "muscle") for s in ("mean", "volume")]
    for column in imaging:
        features[column] = rng.normal(0, 1, n)  # noise: nothing enters next to age
    result = run_study(features, clinical_columns=["age"], imaging_models={"ct_otsu": imaging}, folds=2)
    assert result.multivariable["combined"].selected == result.multivariable["clinical"].selected == ["age"]
    why = study_summary(result)["models"]["combined"]["same_as_clinical"]
    assert why.startswith("the combined model is identical to the clinical model")
    # the strongest imaging feature and its univariable p, from statsmodels on the same patients
    p = {c: sm.Logit(y, sm.add_constant(features[c])).fit(disp=0).pvalues[c] for c in imaging}
    strongest = min(p, key=p.get)
    assert f"{strongest}: p = {p[strongest]:.3g}" in why
    assert any(note == f"combined: {why}" for note in result.notes)


def test_report_names_the_run_explains_an_identical_combined_model_and_tests_boxes_as_table2(tmp_path,
                                                                                         monkeypatch):
    """Issue 21: the report's "Run" was the folder's name ("run"), a combined model identical to the clinical
    one said nothing, and the box plots' p-values were Mann-Whitney for every feature."""
    from markupsafe import escape

    from engine.report import render_report
    from engine.stats import groups
    from tests.test_report import make_run

    run = make_run(tmp_path)
    provenance = json.loads((run / "provenance.json").read_text(encoding="utf-8"))
    provenance["manifest"] = {"name": "cohort_2024.csv", "path_sha256": "0" * 64}
    (run / "provenance.json").write_text(json.dumps(provenance))
    why = "no ct_otsu feature had univariable p < 0.05 on these patients"
    (run / "study.json").write_text(json.dumps({"models": {"combined": {"same_as_clinical": why}}}))
    tables = run / "tables"
    (tables / "combined_logistic.csv").write_bytes((tables / "table3_clinical_logistic.csv").read_bytes())
    calls = []
    real = groups.compare_continuous

    def spy(x0, x1):
        calls.append((len(x0), len(x1)))
        return real(x0, x1)

    monkeypatch.setattr(groups, "compare_continuous", spy)
    html = render_report(run).read_text(encoding="utf-8")
    assert "sarco run of cohort_2024.csv, started 2024-11-23 16:40 UTC, folder run" in html
    assert str(escape(why)) in html
    # every box (2 modalities x 3 methods x 6 features) tested by Table 2's rule on the training groups
    assert calls == [(5, 5)] * 36
