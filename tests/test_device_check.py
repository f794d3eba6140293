"""The device check's own pieces (issue 25), on the CPU: what they report must be right before a
GPU lease is spent on them. scripts/device_check.sh itself runs only on a device (or rehearsed
with DEVICE_CHECK_REHEARSE=1); here its syntax, its Python half and the bundle's package list.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPTS / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_dir(path: Path, features: str, thresholds: str = '{"ct": {"otsu": -20.5}}\n') -> Path:
    path.mkdir()
    (path / "features.csv").write_text(features)
    (path / "thresholds.json").write_text(thresholds)
    return path


FEATURES = "patient_id,ct_otsu_muscle_mean,ct_otsu_fat_volume\nP1,41.25,1000.0\nP2,40.125,900.0\n"


def test_compare_passes_identical_runs(device_check, tmp_path, capsys):
    a, b = _run_dir(tmp_path / "cpu", FEATURES), _run_dir(tmp_path / "gpu", FEATURES)
    assert device_check.compare(str(a), str(b)) == 0
    assert "features.csv identical" in capsys.readouterr().out.splitlines()[-1]


def test_compare_names_each_differing_cell(device_check, tmp_path, capsys):
    # One ulp in one cell, as the grid-dependent float sums produced (issue 25).
    a = _run_dir(tmp_path / "cpu", FEATURES)
    b = _run_dir(tmp_path / "gpu", FEATURES.replace("40.125", "40.12500000000001"),
                 '{"ct": {"otsu": -20.0}}\n')
    assert device_check.compare(str(a), str(b)) == 1
    out = capsys.readouterr().out
    assert "P2 ct_otsu_muscle_mean: 40.125 vs 40.12500000000001 (relative" in out
    assert "P1" not in out.replace("P1,", "")  # the equal row is not listed
    assert "ct.otsu: -20.5 vs -20.0" in out
    assert out.splitlines()[-1] == "cpu vs gpu: thresholds.json DIFFERS; features.csv DIFFERS"


def test_every_project_dependency_is_checked_on_the_device(device_check):
    # `missing` must name any dependency the device lacks: each one has an import to try.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {canonicalize_name(Requirement(r).name) for r in pyproject["project"]["dependencies"]}
    checked = {canonicalize_name(d) for d in device_check.REQUIRED_MODULES.values()}
    assert wanted - checked == set()


def test_bundle_pins_every_package_once():
    text = (SCRIPTS / "device_bundle.sh").read_text(encoding="utf-8")
    block = text[text.index("PACKAGES=("):text.index("\n)\n", text.index("PACKAGES=("))]
    specs = [t for line in block.splitlines()[1:] for t in line.split("#")[0].split()]
    names = [canonicalize_name(Requirement(s).name) for s in specs]
    assert specs and all(re.fullmatch(r"[\w.-]+==[\w.]+", s) for s in specs), specs
    assert len(names) == len(set(names))  # one version of each: two stop the install
    assert {"simpleitk", "dask", "distributed", "dask-cuda", "pydantic-core"} <= set(names)


@pytest.mark.parametrize("script", ["device_check.sh", "device_bundle.sh"])
def test_scripts_parse(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    done = subprocess.run([bash, "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_provenance_records_cupy_for_cuda_13(monkeypatch):
    # Issue 25: the device's CuPy is cupy-cuda13x; provenance named only cupy-cuda12x.
    from engine.runfolder import rundir

    real = metadata.version

    def version(name):
        if name == "cupy-cuda13x":
            return "14.2.0"
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert rundir._versions()["cupy-cuda13x"] == "14.2.0"
