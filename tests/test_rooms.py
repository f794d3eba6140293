"""Issue 21, structure: the registries (features, fit methods), the report as a package that reads
published outputs only, the config validated once, one fixed fat bound.

One tiny CT run (a few patients of the shared cohort, inline scheduler) carries a dummy fit method
and an extra feature stat registered for the test; every consumer must show them without being
edited. Then ``cache/`` is deleted and ``sarco report`` must render the same page.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import Field

from engine.config import Config, load_config
from engine.contract import CACHE_DIR, QA_DIR, QA_INDEX, feature_name, vs_fixed_column
from engine.errors import ConfigError
from engine.measure import features as feature_registry
from engine.measure import methods as method_registry

ROOT = Path(__file__).resolve().parent.parent
N_PATIENTS = 6
DUMMY = "median"
EXTRA_STAT = "voxels"


def test_readme_feature_table_is_the_registry():
    """Issue 21: the README's feature table is written from the registry (first in this file: the
    module's registrations of a test stat come later)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- features:begin -->\n(.*?)\n<!-- features:end -->", readme, re.S)
    assert block is not None and block.group(1) == feature_registry.readme_table()


# ----------------------------------------------------------------------------- the dummy registrations
class MedianOptions(method_registry.MethodOptions):
    offset: float = Field(0.0, ge=-50, le=50)


def _weighted_median(counts: np.ndarray, centers: np.ndarray) -> float:
    cumulative = np.cumsum(counts)
    return float(centers[int(np.searchsorted(cumulative, cumulative[-1] / 2.0))])


def _median_fit(counts, centers, options: MedianOptions, cfg, modality) -> dict:
    """A method no engine file knows: the pooled median, shifted by an option."""
    return {"threshold": _weighted_median(np.asarray(counts), np.asarray(centers)) + options.offset,
            "method": DUMMY}


@pytest.fixture(scope="module")
def registered():
    method_registry.register(method_registry.FitMethod(DUMMY, "Pooled median", _median_fit, MedianOptions,
                                                       modalities=("ct",), default=False))
    feature_registry.register(feature_registry.FeatureStat(EXTRA_STAT, lambda m: float(m.count), "voxels",
                                                           "voxel count", "tissue voxels"))
    try:
        yield
    finally:
        method_registry.unregister(DUMMY)
        feature_registry.unregister(EXTRA_STAT)


@pytest.fixture(scope="module")
def ct_manifest(shared_cohort) -> Path:
    from tests.cohorts import first_patients

    manifest = first_patients(shared_cohort, N_PATIENTS, "rooms")
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    path = manifest.parent / "manifest_rooms_ct.csv"
    table = table.drop(columns=[c for c in table.columns if c.startswith("mri_")])
    table["split"] = "train"  # every patient trains: both labels in the fit and the overlays
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def dummy_run(registered, ct_manifest, tmp_path_factory):
    from engine.batch.pipeline import run

    out = tmp_path_factory.mktemp("rooms_run")
    cfg = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline"}, "stats": {"enabled": False},
                                 "fit": {"methods": ["otsu", DUMMY, "fixed"], DUMMY: {"offset": 2.0}}})
    result = run(ct_manifest, out_dir=out, config=cfg)
    return result, out


# ----------------------------------------------------------------------------- registries
def test_a_registered_method_and_stat_flow_to_every_output(dummy_run):
    """Issue 21: a method and a stat registered outside the engine reach thresholds.json, features.csv,
    the report and QA, with no engine file edited."""
    _, out = dummy_run
    thresholds = json.loads((out / "thresholds.json").read_text(encoding="utf-8"))["modalities"]["ct"]
    hist = thresholds["histogram"]
    counts = np.asarray(hist["counts"])
    centers = hist["lo"] + hist["bin_width"] * np.arange(counts.size)
    voxels = np.repeat(centers, counts)  # the pooled training voxels, independently of the fit
    fit = thresholds["methods"][DUMMY]
    assert fit["threshold"] == pytest.approx(float(np.quantile(voxels, 0.5, method="inverted_cdf")) + 2.0)
    assert fit["vs_fixed_fat_bound_hu"] == pytest.approx(fit["threshold"] + 29.5)

    features = pd.read_csv(out / "features.csv")
    for tissue in ("fat", "muscle"):
        for stat in ("mean", "volume", "percent", EXTRA_STAT):
            assert features[feature_name("ct", DUMMY, tissue, stat)].notna().all(), (tissue, stat)
    # the extra stat is the voxel count: on the 1 mm grid it equals the volume in mm³
    np.testing.assert_allclose(features[feature_name("ct", "otsu", "fat", EXTRA_STAT)],
                               features[feature_name("ct", "otsu", "fat", "volume")])
    assert features[vs_fixed_column("ct", DUMMY)].notna().all()

    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Pooled median" in html  # the threshold table and the histogram legend name it
    assert "could not be drawn (" not in html  # no figure failed on the new method or stat
    sheet = (out / QA_DIR / QA_INDEX).read_text(encoding="utf-8")
    assert "Fat % Pooled median" in sheet  # its column, by its display name
    assert len(list((out / QA_DIR).glob("*.png"))) == N_PATIENTS


def test_method_options_are_validated_through_the_registry(registered):
    """Issue 21: ``fit.<method>`` is checked against the method's own options model."""
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"fit": {DUMMY: {"offset": 99}}})
    assert info.value.key == f"fit.{DUMMY}.offset"
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"fit": {"kmeans": {"max_iterations": 5}}})
    assert info.value.key == "fit.kmeans.max_iterations"
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"fit": {"methods": ["otsu", "nope"]}})
    assert "nope" in str(info.value)
    assert load_config().fit.options("kmeans").max_iter == 300
    # a config or model.json written before the registry (flat keys) still loads
    assert load_config(overrides={"fit": {"gmm_tol": 0.01}}).fit.options("gmm").tol == 0.01


def test_unknown_keys_name_what_the_section_accepts():
    """Issue 21: the message names the accepted keys instead of configs/default.yaml, which a wheel
    does not ship."""
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"preprocess": {"ct": {"windw": [0, 1]}}})
    message = str(info.value)
    assert "default.yaml" not in message and "window" in message and "n4" in message


# ----------------------------------------------------------------------------- report and QA
def _stable(html: str) -> str:
    return re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", "<time>", html)


def _sarco_report(folder: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "engine.cli", "report", str(folder)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return _stable((folder / "report.html").read_text(encoding="utf-8"))


def test_report_and_qa_need_no_cache(dummy_run, tmp_path):
    """Issue 21: the report (and the QA sheet, which ``sarco report`` re-renders) read the run folder's
    published files only: cache/ may be deleted."""
    _, out = dummy_run
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    before = _sarco_report(folder)
    sheet = (folder / QA_DIR / QA_INDEX).read_text(encoding="utf-8")
    shutil.rmtree(folder / CACHE_DIR)
    after = _sarco_report(folder)
    # histogram, box plots and the overlays (statistics are off: no ROC), drawn from previews/
    assert after.count("data:image/png") == before.count("data:image/png") == 3
    assert "No published CT preview" not in after
    assert after == before
    assert (folder / QA_DIR / QA_INDEX).read_text(encoding="utf-8") == sheet


def _module_imports() -> dict[str, set[str]]:
    """Every engine/kernels module -> the engine/kernels modules it imports (anywhere in its body)."""
    files = {}
    for path in [*(ROOT / "engine").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module and not module.startswith(name + "."):
                    deps.add(name)
        graph[module] = deps
    return graph


def test_no_import_cycle():
    """Issue 21: report.py and report_tables.py imported each other; no module may take part in a cycle."""
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path[path.index(dep):] + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert graph["engine.qa"] and not any(m.startswith("engine.report.") and m.rsplit(".", 1)[1].startswith("_")
                                          for m in graph["engine.qa"])


# ----------------------------------------------------------------------------- config into tasks
def test_tasks_take_the_validated_config_only(ct_manifest, tmp_path, monkeypatch):
    """Issue 21: the config was validated again in every task; now it crosses once, as a frozen Config."""
    from engine.batch.pipeline import run
    from engine.batch.tasks import ingest_and_preprocess

    cfg = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": False, "qa": False},
                                 "stats": {"enabled": False}})
    with pytest.raises(TypeError, match="validated Config"):
        ingest_and_preprocess({"patient_id": "x", "modality": "ct", "image": "", "roi": ""}, cfg.to_dict(),
                              str(tmp_path))
    calls = []
    original = Config.model_validate.__func__

    def counting(cls, *args, **kwargs):
        calls.append(cls)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Config, "model_validate", classmethod(counting))
    run(ct_manifest, out_dir=tmp_path / "run", config=cfg)
    assert calls == []


def test_one_fixed_fat_bound():
    """Issue 21: the kernels split at -29.5 HU and cohort_fit compared fits with -30: one bound now."""
    from engine.batch.cohort_fit import bimodality_diagnostic, fit_cohort

    cfg = load_config()
    centers = np.arange(-190.0, 151.0)
    counts = np.rint(4000 * np.exp(-0.5 * ((centers - 40) / 20) ** 2)
                     + 1500 * np.exp(-0.5 * ((centers + 90) / 25) ** 2)).astype(np.int64)
    fits = fit_cohort(counts, -190.0, 150.0, "ct", cfg)
    bound = cfg.fit.ct.fixed.fat_bound_hu
    assert bound == -29.5 and fits["fixed"]["threshold"] == bound
    for method in ("otsu", "kmeans", "gmm"):
        assert fits[method]["vs_fixed_fat_bound_hu"] == pytest.approx(fits[method]["threshold"] - bound)
    assert "-29.5 HU" in bimodality_diagnostic(counts, -190.0, 150.0, "ct", cfg, fits)["message"]
