"""The run folder as a typed API (engine.runfolder) and registries that work in real runs.

A stat and a fit method live in plug-in modules written here (nothing in the engine names them),
named by ``run.plugins``. A tiny CT cohort runs inline without the stat, then with it (the pass-2
cache must not serve the old rows), then on a ``LocalCluster(processes=True)`` with the method too:
the workers must import the plug-ins themselves. References are independent of the engine's
formulas: the habitat maps' voxel counts (SimpleITK) and the pooled histogram's mid-range.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from engine.config import load_config
from engine.contract import FEATURES_CSV, HABITAT_LABELS, HABITATS_DIR, QA_DIR, QA_INDEX, feature_name, habitat_path
from engine.errors import ConfigError
from engine.measure import features as feature_registry
from engine.measure import methods as method_registry
from engine.measure import plugins
from engine.runfolder import MethodFit, RunFolder, Thresholds, method_record
from tests.srread import measurement_groups

N_PATIENTS = 3
STAT = "voxelcount"
METHOD = "midrange"
STAT_MODULE = "sarco_test_plugin_stat"
METHOD_MODULE = "sarco_test_plugin_method"

STAT_SOURCE = f'''
from engine.measure.features import FeatureStat, register
register(FeatureStat("{STAT}", lambda m: float(m.count), "voxels", "voxel count", "tissue voxels"))
'''
METHOD_SOURCE = f'''
import numpy as np
from engine.measure.methods import FitMethod, register

def fit(counts, centers, options, cfg, modality):
    occupied = np.flatnonzero(np.asarray(counts))
    centers = np.asarray(centers)
    return {{"threshold": float((centers[occupied[0]] + centers[occupied[-1]]) / 2.0)}}

register(FitMethod("{METHOD}", "Mid-range", fit, modalities=("ct",), default=False, family="NeighborhoodAnalysis"))
'''


def _forget_plugins() -> None:
    feature_registry.unregister(STAT)
    method_registry.unregister(METHOD)
    for name in (STAT_MODULE, METHOD_MODULE):
        sys.modules.pop(name, None)
        plugins._imported.discard(name)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A folder holding the two plug-in modules, on sys.path here and on PYTHONPATH for worker processes."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / f"{STAT_MODULE}.py").write_text(STAT_SOURCE, encoding="utf-8")
    (folder / f"{METHOD_MODULE}.py").write_text(METHOD_SOURCE, encoding="utf-8")
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(str(folder))
    patch.setenv("PYTHONPATH", str(folder), prepend=":")
    try:
        yield folder
    finally:
        _forget_plugins()
        patch.undo()


@pytest.fixture(scope="module")
def ct_manifest(tmp_path_factory) -> Path:
    from tests.cohorts import few_patients

    manifest = few_patients(tmp_path_factory, N_PATIENTS, "runfolder")
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False).head(N_PATIENTS)
    table = table.drop(columns=[c for c in table.columns if c.startswith("mri_")])
    table["split"] = "train"
    path = manifest.parent / "manifest_runfolder_ct.csv"
    table.to_csv(path, index=False)
    return path


def _config(plugins_list, methods, **run):
    return load_config(overrides={"run": {"backend": "cpu", "plugins": plugins_list, **run},
                                  "stats": {"enabled": False}, "fit": {"methods": methods}})


@pytest.fixture(scope="module")
def runs(plugin_path, ct_manifest, tmp_path_factory):
    """Three runs into one folder: no plug-in, the stat (cache reused), the stat and method on processes."""
    from engine.batch.pipeline import run

    out = tmp_path_factory.mktemp("runfolder_run")
    quiet = {"scheduler": "inline", "report": False, "qa": False, "habitats": False}
    run(ct_manifest, out_dir=out, config=_config([], ["otsu", "fixed"], **quiet))
    second = run(ct_manifest, out_dir=out, config=_config([STAT_MODULE], ["otsu", "fixed"], **quiet))
    stat_features = pd.read_csv(out / FEATURES_CSV, dtype={"patient_id": str})
    # the process cluster: the workers are fresh interpreters, the plug-ins reach them only by run.plugins
    third = run(ct_manifest, out_dir=out, config=_config([STAT_MODULE, METHOD_MODULE], ["otsu", METHOD, "fixed"],
                                                          workers=2, report=False))
    return out, second, stat_features, third


# ----------------------------------------------------------------------------- typed thresholds
def test_old_thresholds_json_reads_with_registry_defaults():
    """Issue 28: a thresholds.json written before the typed API (no bounds, classes, display, family,
    stats) still reads: one bound, classes from the modality's fat side, the registry's metadata."""
    old = {"modalities": {"ct": {"fat_is": "low", "methods": {"kmeans": {"threshold": -41.0, "iterations": 7}}},
                          "mri": {"fat_is": "high", "methods": {"gone": {"threshold": 300.0}}}}}
    typed = Thresholds.from_json(old)
    kmeans = typed["ct"].methods["kmeans"]
    assert kmeans.bounds == (-41.0,) and kmeans.classes == ("fat", "muscle") and kmeans.fat_is == "low"
    assert (kmeans.display, kmeans.family, kmeans.details) == ("K-means", "ClusterAnalysis", {"iterations": 7})
    gone = typed["mri"].methods["gone"]  # a plug-in method this machine lacks: its own name, histogram analysis
    assert gone.classes == ("muscle", "fat") and gone.display == "gone" and gone.family == "HistogramAnalysis"
    assert typed.stat_names() == feature_registry.stat_names()
    assert typed["ct"].values() == {"kmeans": -41.0}


def test_what_the_report_reads_of_a_modality_is_typed_and_old_files_still_read():
    """Report and QA read the pooled histogram, the diagnostic, the scanners and a fit's details through
    the typed entry; a file without them reads as absent (None, empty), not as zero."""
    entry = {"fat_is": "low", "n_patients": 7, "n_voxels": 713910, "standardize": "reference",
             "histogram": {"lo": -2.0, "hi": 2.0, "bin_width": 1.0, "counts": [0, 3, 5, 2, 0],
                           "by_scanner": {"A": [0, 1, 5, 2, 0]}},
             "diagnostic": {"likely_one_tissue": True, "message": "one tissue", "ashman_d": 1.2,
                            "means": [-17.5, 45.0], "variances": [2105.0, 128.0], "weights": [0.2, 0.8]},
             "scanners": [{"label": "A", "n_patients": 7, "scale_median": 0.3, "scale_range": [0.2, 0.4]}],
             "methods": {"otsu": {"threshold": -2.0, "vs_fixed_fat_bound_hu": 27.5},
                         "fixed": {"threshold": -29.5, "fat_hu": [-190, -30], "muscle_hu": [-29, 150]},
                         "kmeans": {"threshold": None}}}
    ct = Thresholds.from_json({"modalities": {"ct": entry}})["ct"]
    assert (ct.n_patients, ct.n_voxels, ct.standardize) == (7, 713910, "reference")
    assert ct.histogram is not None and ct.histogram.counts == (0, 3, 5, 2, 0)
    np.testing.assert_array_equal(ct.histogram.edges(), np.arange(-2.5, 3.0, 1.0))  # bins centred on lo + k w
    assert ct.histogram.by_scanner == {"A": (0, 1, 5, 2, 0)}
    assert ct.diagnostic is not None and ct.diagnostic.likely_one_tissue and ct.diagnostic.weights == (0.2, 0.8)
    assert ct.scanners[0].label == "A" and ct.scanners[0].scale_range == (0.2, 0.4)
    otsu, fixed, kmeans = ct.methods["otsu"], ct.methods["fixed"], ct.methods["kmeans"]
    assert otsu.vs_fixed_fat_bound_hu == 27.5 and fixed.vs_fixed_fat_bound_hu is None
    assert (fixed.fat_range_hu, fixed.muscle_range_hu, otsu.fat_range_hu) == ((-190.0, -30.0), (-29.0, 150.0), None)
    assert not kmeans.fitted and kmeans.recorded()["bounds"] == [None] and kmeans.recorded()["threshold"] is None
    assert list(otsu.recorded()) == sorted(otsu.recorded())   # the key order of the written file
    old = Thresholds.from_json({"modalities": {"mri": {"methods": {"otsu": {"threshold": 300.0}}}}})["mri"]
    assert (old.histogram, old.diagnostic, old.n_patients, old.n_voxels, old.scanners, old.standardize) == \
        (None, None, None, None, (), None)


def test_method_fit_bounds_and_classes():
    """Issue 28: N classes need N - 1 bounds; a two-class record round-trips through thresholds.json."""
    with pytest.raises(ValueError, match="3 classes need 2 bounds"):
        MethodFit("three", (1.0,), ("fat", "muscle", "bone"), "Three")
    three = MethodFit("three", (1.0, 5.0), ("fat", "muscle", "bone"), "Three")
    with pytest.raises(ValueError, match="classifies two"):
        _ = three.threshold
    with pytest.raises(ConfigError, match="two per method"):  # stops the run before pass 2, naming the method
        method_record("otsu", {"bounds": [1.0, 5.0], "classes": ["fat", "muscle", "bone"]}, "low")
    record = method_record("gmm", {"threshold": 12.5, "means": [1, 2]}, "high")
    assert record["bounds"] == [12.5] and record["classes"] == ["muscle", "fat"] and record["display"] == "GMM"
    parsed = Thresholds.from_json({"modalities": {"mri": {"fat_is": "high", "methods": {"gmm": record}}}})
    assert parsed["mri"].methods["gmm"].to_json() == record


def test_a_method_family_must_be_a_dicom_family():
    with pytest.raises(ValueError, match="CID 7162"):
        method_registry.register(method_registry.FitMethod("oddfamily", "Odd", lambda *a: {}, family="Guessing"))
    assert not method_registry.is_method("oddfamily")


# ----------------------------------------------------------------------------- run.plugins
def test_plugins_are_checked_before_the_run(plugin_path):
    """Issue 28: a plug-in that is not a module name or does not import stops the run, naming run.plugins."""
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"run": {"plugins": ["no_such_sarco_module"]}})
    assert info.value.key == "run.plugins" and "no_such_sarco_module" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"run": {"plugins": ["not a module"]}})
    assert info.value.key.startswith("run.plugins")
    # the method of a plug-in is known to fit.methods because the plug-in is imported first
    cfg = load_config(overrides={"run": {"plugins": [METHOD_MODULE]}, "fit": {"methods": ["otsu", METHOD]}})
    assert cfg.fit.methods == ["otsu", METHOD]


def test_entry_point_plugins_load(tmp_path, monkeypatch):
    """Issue 28: an installed plug-in (entry point group sarco_engine.plugins) registers without being listed."""
    name = "sarco_test_entry_point"
    (tmp_path / f"{name}.py").write_text('from engine.measure.features import FeatureStat, register\n'
                                         'register(FeatureStat("epstat", lambda m: 1.0, "", "ep", "one"))\n')
    info = tmp_path / "sarco_test_ep-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sarco-test-ep\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\nep = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    try:
        load_config()
        assert "epstat" in feature_registry.stat_names()
    finally:
        feature_registry.unregister("epstat")
        sys.modules.pop(name, None)


# ----------------------------------------------------------------------------- real runs
def test_adding_a_stat_recomputes_cached_patients(runs):
    """Issue 28: the pass-2 cache key left out the stat list: a stat added after a run gave every
    cached patient NaN. The second run reused pass 1 and still has the stat for everyone."""
    _, second, stat_features, _ = runs
    assert second.reused == N_PATIENTS  # pass 1 came from the cache
    for method in ("otsu", "fixed"):
        for tissue in ("fat", "muscle"):
            column = stat_features[feature_name("ct", method, tissue, STAT)]
            assert column.notna().all(), (method, tissue)
            if method != "fixed":  # 1 mm voxels: the count is the volume in mm3 (fixed counts native voxels)
                np.testing.assert_allclose(column, stat_features[feature_name("ct", method, tissue, "volume")])


def _habitat_counts(out: Path, patient_id: str, method: str) -> dict[str, int]:
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(habitat_path(out / HABITATS_DIR, patient_id, "ct", method))))
    return {tissue: int((labels == HABITAT_LABELS[tissue]).sum()) for tissue in ("fat", "muscle")}


def test_plugins_reach_process_workers_and_features(runs):
    """Issue 28: a stat and a method named in run.plugins reach LocalCluster(processes=True) workers:
    features.csv has them, equal to the habitat maps' counts and the histogram's mid-range."""
    out, _, _, third = runs
    folder = RunFolder(out)
    fit = folder.thresholds["ct"].methods[METHOD]
    hist = folder.thresholds["ct"].histogram
    counts = np.asarray(hist.counts)
    centers = hist.lo + hist.bin_width * np.arange(counts.size)  # lo is the first bin's centre
    occupied = np.flatnonzero(counts)
    assert fit.threshold == pytest.approx((centers[occupied[0]] + centers[occupied[-1]]) / 2.0)
    assert (fit.display, fit.family, fit.classes) == ("Mid-range", "NeighborhoodAnalysis", ("fat", "muscle"))
    assert STAT in folder.thresholds.stat_names() and folder.features.unit("ct", STAT) == "voxels"
    frame = folder.features.frame
    for pid in frame["patient_id"]:
        for method in ("otsu", METHOD, "fixed"):
            expected = _habitat_counts(out, pid, method)
            for tissue, count in expected.items():
                assert folder.features.value(pid, "ct", method, tissue, STAT) == count, (pid, method, tissue)
    assert not third.errors.shape[0]


def _png_widths(html: str) -> list[int]:
    return [Image.open(io.BytesIO(base64.b64decode(data))).size[0]
            for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def test_a_plugin_stat_reaches_the_qa_sheet(runs):
    """Issue 28: the QA sheet's method cells list every stat of the run folder, with the habitat maps' counts."""
    out, _, _, _ = runs
    sheet = (out / QA_DIR / QA_INDEX).read_text(encoding="utf-8")
    pid = RunFolder(out).features.frame["patient_id"].iloc[0]
    count = _habitat_counts(out, pid, METHOD)["fat"]
    assert "Mid-range: fat: mean" in sheet and f"voxel count {count:.4g} voxels" in sheet


def test_a_plugin_method_and_stat_export(runs, ct_manifest, tmp_path):
    """Issue 28: a registered method exported nowhere (ALGORITHM_FAMILY KeyError in the SEG); the SR
    hard-coded volume, mean and percent. Now the SEG states the method's family and the SR every stat."""
    from engine.exporters import export_run

    out, _, _, _ = runs
    result = export_run(out, dicom_dir=tmp_path / "dicom", objects=("seg", "sr"), manifest=ct_manifest)
    assert set(result.log["status"]) == {"written"}, result.log.to_string()
    features = RunFolder(out).features
    pid = features.frame["patient_id"].iloc[0]
    seg = pydicom.dcmread(str(tmp_path / "dicom" / f"{pid}__ct_seg.dcm"), stop_before_pixels=True)
    families = {d.SegmentLabel: d.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
                .CodeValue for d in seg.SegmentSequence}
    # CID 7162: Neighborhood Analysis (the plug-in's family), Histogram Analysis (Otsu's)
    assert families["Mid-range fat"] == families["Mid-range muscle"] == "123101"
    assert families["Otsu fat"] == "123105"
    sr = pydicom.dcmread(str(tmp_path / "dicom" / f"{pid}__ct_sr.dcm"))
    values = measurement_groups(sr)
    for method, display in (("otsu", "Otsu"), (METHOD, "Mid-range"), ("fixed", "Fixed HU")):
        for tissue in ("fat", "muscle"):
            group = values[f"{display} {tissue}"]
            assert group[STAT.upper()] == features.value(pid, "ct", method, tissue, STAT)
            assert group["118565006"] == pytest.approx(features.value(pid, "ct", method, tissue, "volume") / 1000)


def test_a_plugin_stat_reaches_the_report_where_the_plugin_is_not_installed(runs, tmp_path):
    """Issue 28: the stat list travels in thresholds.json, so ``sarco report`` draws the box plots with one
    column per stat of the folder (4 stats x 2 tissues) on a machine without the plug-in."""
    from engine.report import render_report
    from engine.report.figures import FIGURE_DPI

    out, _, _, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("cache"))
    feature_registry.unregister(STAT)
    try:
        render_report(copy)
    finally:
        sys.modules.pop(STAT_MODULE, None)
        plugins._imported.discard(STAT_MODULE)
    html = (copy / "report.html").read_text(encoding="utf-8")
    assert "could not be drawn (" not in html and "Mid-range" in html
    assert round(2.35 * 2 * 4 * FIGURE_DPI) in _png_widths(html)
    stats = json.loads((copy / "thresholds.json").read_text(encoding="utf-8"))["stats"]
    assert [s["name"] for s in stats][-1] == STAT and math.isclose(stats[1]["display_scale"], 1e-3)
