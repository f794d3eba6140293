"""The command line: thin, validated, with honest exit codes (docs/method.md section 8)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.synthetic import write_dicom_series


def test_version_lists_backends(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sarco-engine ")
    assert "backends: cpu" in out and "gpu" in out


def test_every_command_has_help():
    for command in (["demo"], ["synth"], ["inspect"], ["run"], ["apply"], ["report"], ["stats", "roc"],
                    ["stats", "icc"]):
        with pytest.raises(SystemExit) as info:
            main(command + ["--help"])
        assert info.value.code == 0


def test_inspect_reports_geometry_and_values(tmp_path, capsys):
    stored = (np.arange(4 * 40 * 48, dtype=np.uint16).reshape(4, 40, 48) % 3000)
    write_dicom_series(tmp_path / "ct", stored, spacing_mm=(0.7, 0.7, 3.0), origin_mm=(-10.0, -20.0, 30.0),
                       rescale_intercept=-1024.0, shuffle_seed=3,
                       patient={"PatientName": "SECRET^NAME", "PatientID": "MRN99999999"})
    assert main(["inspect", str(tmp_path / "ct"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    text = json.dumps(info)
    assert info["modality"] == "CT"
    assert info["file_count"] == 4 if "file_count" in info else info["n_files"] == 4
    assert min(info["value_range"]) == pytest.approx(-1024.0) if "value_range" in info else True
    assert "SECRET" not in text and "MRN99999999" not in text
    assert main(["inspect", str(tmp_path / "ct")]) == 0
    assert "CT" in capsys.readouterr().out


def test_stats_roc_and_icc(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    table = pd.DataFrame({"y": y, "score": y + rng.normal(0, 0.8, 80)})
    table.to_csv(tmp_path / "scores.csv", index=False)
    assert main(["stats", "roc", "--csv", str(tmp_path / "scores.csv"), "--label", "y", "--score", "score",
                 "--json"]) == 0
    roc = json.loads(capsys.readouterr().out)
    from sklearn.metrics import roc_auc_score

    assert roc["auc"] == pytest.approx(roc_auc_score(y, table["score"]))
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    long = pd.DataFrame([(t, r, v) for t, row in enumerate(ratings) for r, v in enumerate(row)],
                        columns=["target", "rater", "value"])
    long.to_csv(tmp_path / "icc.csv", index=False)
    assert main(["stats", "icc", "--csv", str(tmp_path / "icc.csv"), "--target", "target", "--rater", "rater",
                 "--value", "value"]) == 0
    assert "ICC" in capsys.readouterr().out


def test_bad_config_exits_2_before_any_work(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("fit:\n  methodz: [otsu]\n")
    (tmp_path / "m.csv").write_text("patient_id,label,ct_image,ct_roi\nP1,1,a,b\n")
    code = main(["run", "--manifest", str(tmp_path / "m.csv"), "--config", str(tmp_path / "c.yaml"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "fit.methodz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_manifest_exits_2_naming_the_line(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("patient_id,label,ct_image,ct_roi\nP1,1,a,b\nP1,0,c,d\n")
    assert main(["run", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")]) == 2
    assert "line 3" in capsys.readouterr().err


def test_gpu_backend_without_gpu_is_an_error_not_a_fallback(tmp_path, capsys):
    pytest.importorskip("numpy")
    from engine.batch.backend import gpu_status

    if gpu_status()[0]:
        pytest.skip("this machine has a GPU")
    (tmp_path / "m.csv").write_text("patient_id,label,ct_image,ct_roi\nP1,1,a,b\n")
    code = main(["run", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--backend", "gpu",
                 "--scheduler", "inline"])
    assert code == 2
    assert "run.backend" in capsys.readouterr().err


def test_cpu_install_never_imports_gpu_stack():
    code = ("import sys, engine.cli, engine.batch.pipeline, engine.batch.tasks, engine.report, kernels\n"
            "from engine.batch.backend import resolve_backend\n"
            "resolve_backend('cpu')\n"
            "bad = [m for m in ('cupy', 'cuml', 'cucim', 'dask_cuda') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_kernels_never_import_engine():
    # STYLE.md: two layers, one direction.
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "kernels"
    offenders = []
    for source in root.glob("*.py"):
        for line in source.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(
                    f" {name}" in stripped.replace(",", " ") or stripped.startswith(f"from {name}")
                    for name in ("engine", "dask", "distributed", "SimpleITK", "pydicom", "yaml")):
                offenders.append(f"{source.name}: {stripped}")
    assert not offenders, offenders


def test_stats_groups_and_logistic_json(tmp_path, capsys):
    """Issue 14: `sarco stats groups|logistic`, checked against scipy and statsmodels."""
    import statsmodels.api as sm
    from scipy import stats

    rng = np.random.default_rng(4)
    n = 120
    y = rng.integers(0, 2, n)
    table = pd.DataFrame({"y": y, "age": 60 + 5 * rng.normal(size=n) + 2 * y, "bmi": rng.normal(24, 3, n)})
    # a cohort manifest given as it is: its image and ROI paths are not variables to compare
    table.assign(ct_image=[f"p{i}/ct" for i in range(n)], ct_roi=[f"p{i}/roi.nii.gz" for i in range(n)]).to_csv(
        tmp_path / "t.csv", index=False)
    assert main(["stats", "groups", "--csv", str(tmp_path / "t.csv"), "--label", "y", "--json"]) == 0
    groups = {v["variable"]: v for v in json.loads(capsys.readouterr().out)["variables"]}
    assert set(groups) == {"age", "bmi"}
    age = groups["age"]
    x0, x1 = table.loc[y == 0, "age"], table.loc[y == 1, "age"]
    reference = {"Student's t-test": stats.ttest_ind(x0, x1).pvalue,
                 "Welch's t-test": stats.ttest_ind(x0, x1, equal_var=False).pvalue}
    assert age["p"] == pytest.approx(reference[age["test"]], rel=1e-10)

    assert main(["stats", "logistic", "--csv", str(tmp_path / "t.csv"), "--label", "y", "--vars", "age,bmi",
                 "--json"]) == 0
    terms = {t["term"]: t for t in json.loads(capsys.readouterr().out)["terms"]}
    fit = sm.Logit(y, sm.add_constant(table[["age", "bmi"]])).fit(disp=0)
    ci = np.exp(fit.conf_int())
    for term in ("age", "bmi"):
        assert terms[term]["or"] == pytest.approx(np.exp(fit.params[term]), rel=1e-6)
        assert terms[term]["ci_low"] == pytest.approx(ci.loc[term, 0], rel=1e-6)
        assert terms[term]["p"] == pytest.approx(fit.pvalues[term], rel=1e-6)
        assert terms[term]["method"].startswith("Wald")


@pytest.mark.parametrize("argv", [["stats", "groups", "--csv", "nope.csv", "--label", "y"],
                                  ["stats", "logistic", "--csv", "{t}", "--label", "y", "--vars", "age,zzz"],
                                  ["stats", "groups", "--csv", "{t}", "--label", "outcome"]])
def test_stats_user_mistakes_are_one_line_exit_2(tmp_path, capsys, argv):
    pd.DataFrame({"y": [0, 1, 0, 1], "age": [60, 70, 65, 72]}).to_csv(tmp_path / "t.csv", index=False)
    argv = [a.replace("{t}", str(tmp_path / "t.csv")) for a in argv]
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
