"""Crash and resume: SIGKILL anywhere in a run, rerun, and the outputs are the uninterrupted run's.

A child ``python -m engine.cli run`` is killed with SIGKILL at deterministic points: a hook in the
child (test code only, nothing in the engine) wraps ``os.replace``, the rename that publishes every
atomic write, or an engine function, and kills its own process on the N-th call. A kill at a rename
first cuts the temporary file in half, the worst case of a write interrupted by the kernel. The
points follow one another on the same run folder, as a night with several crashes would:

    pass 1 (the 3rd ROI sample), the reduce (summing histograms), writing thresholds.json,
    pass 2 (the 4th habitat map), writing features.parquet, writing model.json

After each kill no visible file is half-written (every CSV parses, every JSON loads, every NIfTI
and ROI sample reads); after the final rerun the outputs are byte-identical to an uninterrupted
run and no temporary file is left.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from engine.batch.pipeline import run
from engine.contract import TEMP_GLOB, TEMP_PREFIX, method_features
from tests import corruptions as corpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

# The child: install the kill hook named on the command line, then run the CLI.
CHILD = r"""
import fnmatch, importlib, os, signal, sys

how, what, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = 0

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if how == "rename":  # every atomic write publishes its file with os.replace (Path.replace too)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        global calls
        if fnmatch.fnmatch(os.path.basename(os.fspath(dst)), what):
            calls += 1
            if calls == nth:
                size = os.path.getsize(src)
                with open(src, "r+b") as handle:  # the write got half-way when the kernel killed us
                    handle.truncate(size // 2)
                die()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
else:  # "call": die on entering the N-th call of module.function
    module_name, name = what.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        global calls
        calls += 1
        if calls == nth:
            die()
        return real(*args, **kwargs)

    setattr(module, name, wrapper)

from engine.cli import main
sys.exit(main(sys.argv[4:]))
"""

KILL_POINTS = [
    # (where, hook, pattern, n)
    ("pass 1", "rename", "*__ct.npz", 3),
    ("reduce", "call", "engine.batch.cohort_fit.sum_histograms", 1),
    ("thresholds.json", "rename", "thresholds.json", 1),
    ("pass 2", "rename", "*.nii.gz", 4),
    ("features.parquet", "rename", "features.parquet", 1),
    ("model.json", "rename", "model.json", 1),
]


def _run_child(manifest: Path, config: Path, out: Path, hook: str, pattern: str, nth: int):
    command = [sys.executable, "-c", CHILD, hook, pattern, str(nth), "run", "--manifest", str(manifest),
               "--config", str(config), "--out", str(out), "--scheduler", "inline", "--backend", "cpu"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, start_new_session=True)


def _visible_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                     for part in p.relative_to(folder).parts)]


def _temporary_files(folder: Path) -> list[Path]:
    return list(folder.rglob(TEMP_GLOB))


def assert_nothing_half_written(folder: Path) -> None:
    """Every visible file of a run folder reads completely with the reader its kind calls for."""
    for path in _visible_files(folder):
        name = path.name
        try:
            if name.endswith(".csv"):
                pd.read_csv(path)
            elif name.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
            elif name.endswith(".parquet"):
                pd.read_parquet(path)
            elif name.endswith(".nii.gz"):
                sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            elif name.endswith(".npz"):
                with np.load(path, allow_pickle=False) as archive:
                    for key in archive.files:
                        archive[key]
            elif name.endswith(".png"):
                matplotlib.image.imread(path)  # the QA pictures
            elif name.endswith((".log", ".html")):
                path.read_text(encoding="utf-8")
            else:
                raise AssertionError(f"unexpected file in the run folder: {path}")
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure is a half-written file
            raise AssertionError(f"{path.relative_to(folder)} is half-written: {type(exc).__name__}: {exc}") from None


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return corpus.clean_run(tmp_path_factory)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    manifest = corpus.clean_ct_manifest(tmp_path_factory)
    folder = tmp_path_factory.mktemp("crash")
    config = folder / "config.yaml"
    config.write_text(corpus.RUN_CONFIG_YAML, encoding="utf-8")
    return manifest, config, folder


def test_sigkill_at_every_stage_then_rerun_gives_the_uninterrupted_outputs(setup, reference):
    manifest, config, folder = setup
    out = folder / "run"
    for where, hook, pattern, nth in KILL_POINTS:
        result = _run_child(manifest, config, out, hook, pattern, nth)
        assert result.returncode == -signal.SIGKILL, f"{where}: the kill point was not reached\n{result.stderr}"
        assert_nothing_half_written(out)
        if where == "pass 1":
            published = [p for p in (out / "cache").glob("*__ct.npz") if not p.name.startswith(TEMP_PREFIX)]
            assert len(published) == nth - 1
            assert _temporary_files(out), "the cut-off ROI sample should be left under its temporary name"
        if where in ("pass 1", "reduce", "thresholds.json"):
            assert not (out / "thresholds.json").exists() and not (out / "features.csv").exists()
        if where == "pass 2":
            assert (out / "thresholds.json").exists() and not (out / "features.csv").exists()
        if where == "model.json":
            assert (out / "features.csv").exists() and not (out / "model.json").exists()

    # the rerun (same command, in this process) resumes and sweeps the temporary files
    run(manifest, out_dir=out, config=corpus.run_config())
    for name in corpus.IDENTICAL_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(out / "features.parquet"),
                                  pd.read_parquet(reference / "features.parquet"))
    habitats = sorted(p.name for p in (reference / "habitats").iterdir())
    assert sorted(p.name for p in (out / "habitats").iterdir()) == habitats
    for name in habitats:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "habitats" / name)))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / "habitats" / name)))
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    assert _temporary_files(out) == [] and not (out / ".sarco.lock").exists()
    assert_nothing_half_written(out)


def test_a_killed_rerun_never_shows_a_mix_of_old_and_new_outputs(setup, reference, tmp_path):
    import shutil

    manifest, _, _ = setup
    out = tmp_path / "run"
    shutil.copytree(reference, out)  # a finished run ...
    config = tmp_path / "config.yaml"  # ... rerun with another method set, killed before features.csv
    config.write_text(corpus.RUN_CONFIG_YAML + "fit:\n  methods: [otsu]\n", encoding="utf-8")
    result = _run_child(manifest, config, out, "rename", "features.csv", 1)
    assert result.returncode == -signal.SIGKILL, result.stderr
    # The rerun retracted the finished run's outputs before writing its own: what is visible is
    # the new run's thresholds.json and no model.json yet, never one run's beside the other's.
    thresholds = json.loads((out / "thresholds.json").read_text(encoding="utf-8"))
    assert set(thresholds["modalities"]["ct"]["methods"]) == {"otsu"}
    assert not (out / "model.json").exists(), "model.json of the previous run is still visible"


def test_a_moved_run_folder_resumes_from_its_own_cache(reference, tmp_path_factory, tmp_path):
    """Regression: cached ROI samples were looked up at the folder they were first written in."""
    import shutil

    from engine.config import load_config

    manifest = corpus.clean_ct_manifest(tmp_path_factory)
    moved = tmp_path / "moved"
    shutil.copytree(reference, moved)
    for summary_path in (moved / "cache").glob("*.json"):  # as if written at a place that is gone
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["sample"] = str(tmp_path / "gone" / Path(summary["sample"]).name)
        summary_path.write_text(json.dumps(summary))
    # another method set: new thresholds, so pass 2 must read the cached samples again
    config = load_config(overrides={**corpus.RUN_OVERRIDES, "fit": {"methods": ["otsu"]}})
    run(manifest, out_dir=moved, config=config)
    assert pd.read_csv(moved / "errors.csv").empty
    ours = pd.read_csv(moved / "features.csv").set_index("patient_id")
    theirs = pd.read_csv(reference / "features.csv").set_index("patient_id")
    otsu = method_features("ct", "otsu")
    pd.testing.assert_frame_equal(ours[otsu], theirs[otsu])



def test_a_killed_report_render_leaves_only_a_temp_file_the_next_run_sweeps(setup, reference, tmp_path):
    """#13: report.html had its own temp name (.report.html.tmp-PID) that neither the sweep nor this file knew."""
    import shutil

    manifest, _, _ = setup
    out = tmp_path / "run"
    shutil.copytree(reference, out)  # every patient cached: the rerun goes straight to the report
    config = tmp_path / "config.yaml"
    config.write_text(corpus.RUN_CONFIG_YAML.replace("report: false", "report: true"), encoding="utf-8")
    result = _run_child(manifest, config, out, "rename", "report.html", 1)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (out / "report.html").exists()
    left = _temporary_files(out)
    assert [p.name.endswith("-report.html") for p in left] == [True], left  # the one atomic writer's name
    assert_nothing_half_written(out)

    from engine.config import load_config

    run(manifest, out_dir=out, config=load_config(overrides={**corpus.RUN_OVERRIDES,
                                                             "run": {**corpus.RUN_OVERRIDES["run"], "report": True}}))
    assert (out / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert _temporary_files(out) == []
