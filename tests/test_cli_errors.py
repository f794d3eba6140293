"""Issue 13: every user mistake on every command is one line naming what to fix, exit status 2.

No traceback reaches the terminal (an internal error is one line, exit 1, the traceback behind
``-v``); ``sarco inspect`` exits 1 on an input it cannot read; a closed pipe ends quietly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.cli import main
from engine.synthetic import write_dicom_series

BUNDLE = {"format": "sarco-model", "format_version": 1, "config": {}, "thresholds": {"modalities": {}}}


@pytest.fixture
def mistakes(tmp_path, monkeypatch):
    """A folder of things a user might wrongly hand to sarco; the tests run inside it."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "m.csv").write_text("patient_id,label,ct_image\nP1,1,ct\n")
    (tmp_path / "typo.csv").write_text("patient_id,label,ct_imgae,mri_image\nP1,1,p1/ct,p1/mr\n")
    (tmp_path / "notjson.json").write_text("{format: sarco-model\n")
    (tmp_path / "list.json").write_text("[1, 2]\n")
    (tmp_path / "other.json").write_text(json.dumps({"format": "someone-elses-model"}))
    (tmp_path / "bundle.json").write_text(json.dumps(BUNDLE))
    (tmp_path / "latin1.yaml").write_bytes("run:\n  backend: cpu # r\xe9sum\xe9\n".encode("latin-1"))
    (tmp_path / "notyaml.yaml").write_text("run: [cpu\n")
    (tmp_path / "typo.yaml").write_text("runn:\n  backend: cpu\n")
    (tmp_path / "scores.csv").write_text("y,score\n1,0.9\n0,0.2\n1,0.7\n0,0.4\n")
    (tmp_path / "yes_no.csv").write_text("y,score\nyes,0.9\nno,0.2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "one_rater.csv").write_text("t,r,v\n1,A,3\n2,A,4\n3,A,5\n")
    bad_run = tmp_path / "bad_run"
    bad_run.mkdir()
    (bad_run / "features.csv").write_text("patient_id,split,label\nP1,train,1\n")
    (bad_run / "thresholds.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (command line, text the one line must contain); the first case of each command also runs in
# a subprocess, so nothing but that one line reaches stderr.
CASES = [
    (["demo", "--patients", "0"], "--patients"),
    (["demo", "--workers", "-1"], "--workers"),
    (["demo", "--seed", "-3"], "--seed"),
    (["demo", "--out", "afile", "--patients", "1"], "afile"),
    (["synth", "out", "--patients", "0"], "--patients"),
    (["synth", "out", "--patients", "ten"], "ten"),
    (["synth", "out"], "--patients"),
    (["synth", "afile", "--patients", "1"], "afile"),
    (["inspect", "no_such_scan"], "no_such_scan"),
    (["inspect"], "path"),
    (["run", "--manifest", "no_such.csv", "--out", "out"], "no_such.csv"),
    (["run", "--manifest", "typo.csv", "--out", "out"], "ct_image"),
    (["run", "--manifest", "m.csv", "--out", "out", "--workers", "0"], "--workers"),
    (["run", "--manifest", "m.csv", "--out", "out", "--backend", "tpu"], "--backend"),
    (["run", "--manifest", "m.csv", "--out", "out", "--scheduler", "headnode"], "headnode"),
    (["run", "--manifest", "m.csv"], "--out"),
    (["run", "--manifest", "m.csv", "--out", "out", "--config", "no_such.yaml"], "no_such.yaml"),
    (["run", "--manifest", "m.csv", "--out", "out", "--config", "latin1.yaml"], "latin1.yaml"),
    (["run", "--manifest", "m.csv", "--out", "out", "--config", "empty"], "is a folder"),
    (["run", "--manifest", "m.csv", "--out", "out", "--config", "notyaml.yaml"], "notyaml.yaml"),
    (["run", "--manifest", "m.csv", "--out", "out", "--config", "typo.yaml"], "runn"),
    (["run", "--manifest", "m.csv", "--out", "afile", "--scheduler", "inline"], "afile"),
    (["apply", "--model", "no_such_model.json", "--manifest", "m.csv", "--out", "out"], "no_such_model.json"),
    (["apply", "--model", "notjson.json", "--manifest", "m.csv", "--out", "out"], "notjson.json"),
    (["apply", "--model", "list.json", "--manifest", "m.csv", "--out", "out"], "list.json"),
    (["apply", "--model", "other.json", "--manifest", "m.csv", "--out", "out"], "not a sarco model bundle"),
    (["apply", "--model", "empty", "--manifest", "m.csv", "--out", "out"], "empty"),
    (["apply", "--model", "bundle.json", "--manifest", "no_such.csv", "--out", "out"], "no_such.csv"),
    (["report", "empty"], "features.csv"),
    (["report", "no_such_run"], "no_such_run"),
    (["report", "afile"], "afile"),
    (["report", "bad_run"], "thresholds.json"),
    (["stats", "roc", "--csv", "no_such.csv", "--label", "y", "--score", "score"], "no_such.csv"),
    (["stats", "roc", "--csv", "scores.csv", "--label", "truth", "--score", "score"], "truth"),
    (["stats", "roc", "--csv", "empty.csv", "--label", "y", "--score", "score"], "empty.csv"),
    (["stats", "roc", "--csv", "yes_no.csv", "--label", "y", "--score", "score"], "label column 'y'"),
    (["stats", "roc", "--csv", "empty", "--label", "y", "--score", "score"], "empty"),
    (["stats", "icc", "--csv", "no_such.csv", "--target", "t", "--rater", "r", "--value", "v"], "no_such.csv"),
    (["stats", "icc", "--csv", "one_rater.csv", "--target", "t", "--rater", "reader", "--value", "v"], "reader"),
    (["stats", "icc", "--csv", "one_rater.csv", "--target", "t", "--rater", "r", "--value", "v"], "2 raters"),
    (["stats", "groups", "--csv", "no_such.csv", "--label", "y"], "no_such.csv"),
    (["stats", "logistic", "--csv", "scores.csv", "--label", "y", "--vars", "age"], "age"),
    (["study", "--table", "no_such.csv", "--out", "out"], "no_such.csv"),
    (["study", "--table", "scores.csv", "--out", "out"], "patient_id"),
    (["stats"], "stats"),
    (["stats", "anova"], "anova"),
    ([], "command"),
    (["--version", "extra"], "extra"),
]
FIRST_OF_EACH_COMMAND = {tuple(args[:2] if args[:1] == ["stats"] else args[:1]): index
                         for index, (args, _) in reversed(list(enumerate(CASES)))}


def _assert_one_line(code, err: str, needle: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(a) or "no-command" for a, _ in CASES])
def test_user_mistake_is_one_line_and_exit_2(mistakes, capsys, args, needle):
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    _assert_one_line(code, capsys.readouterr().err, needle)
    assert not (mistakes / "out").exists(), "a mistake must be refused before any work"


@pytest.mark.parametrize("index", sorted(FIRST_OF_EACH_COMMAND.values()),
                         ids=[" ".join(k) or "no-command" for k in sorted(FIRST_OF_EACH_COMMAND,
                                                                          key=FIRST_OF_EACH_COMMAND.get)])
def test_no_traceback_reaches_the_terminal(mistakes, index):
    args, needle = CASES[index]
    result = subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                            cwd=mistakes, timeout=120)
    _assert_one_line(result.returncode, result.stderr, needle)


def test_demo_on_gpu_without_one_is_refused_before_synthesizing(mistakes, capsys):
    from engine.batch.backend import gpu_status

    if gpu_status()[0]:
        pytest.skip("this machine has a GPU")
    code = main(["demo", "--out", "demo", "--patients", "1", "--backend", "gpu"])
    _assert_one_line(code, capsys.readouterr().err, "run.backend")
    assert not (mistakes / "demo").exists()


def test_misspelled_image_column_is_refused_before_any_work(mistakes):
    # issue 13: `ct_imgae` ran 5 minutes, failed every patient and became a "clinical variable"
    result = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--manifest", "typo.csv", "--out", "out",
                             "--scheduler", "inline"], capture_output=True, text=True, cwd=mistakes, timeout=120)
    _assert_one_line(result.returncode, result.stderr, "'ct_imgae'")
    assert "did you mean 'ct_image'" in result.stderr
    assert not (mistakes / "out").exists()


def test_internal_error_is_one_line_exit_1_traceback_with_verbose(monkeypatch, capsys):
    import engine.cli

    def broken(args):
        raise KeyError("habitat_k")

    monkeypatch.setattr(engine.cli, "cmd_report", broken)
    assert main(["report", "anywhere"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "bug" in lines[0] and "KeyError" in lines[0] and "habitat_k" in lines[0] and "-v" in lines[0]
    assert main(["-v", "report", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err.splitlines()[-1]


def _series(folder):
    stored = (np.arange(4 * 40 * 48, dtype=np.uint16).reshape(4, 40, 48) % 3000)
    write_dicom_series(folder, stored, spacing_mm=(0.7, 0.7, 3.0), origin_mm=(-10.0, -20.0, 30.0),
                       rescale_intercept=-1024.0)
    return folder


def test_inspect_exits_1_on_a_truncated_dicom(tmp_path, capsys):
    # issue 13: it printed ERROR and exited 0, so a script could not tell
    folder = _series(tmp_path / "ct")
    victim = sorted(folder.iterdir())[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.6)])  # the transfer stopped inside the pixel data
    assert main(["inspect", str(folder)]) == 1
    assert "ERROR" in capsys.readouterr().out
    assert main(["inspect", str(folder), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]


def test_inspect_into_a_closed_pipe_ends_quietly(tmp_path):
    # `sarco inspect X | head -1`: the reader is gone before sarco writes
    folder = _series(tmp_path / "ct")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "engine.cli", "inspect", str(folder)], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 1
