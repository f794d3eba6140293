"""Smoke tests of the benchmark suite: it runs, writes bench.json and bench.md, and its rows
have the expected keys. No assertion on any timing: speed lives in bench/, never in a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import _common, e2e, export, fits, n4, qa, scaling, synth_time

ROOT = Path(__file__).resolve().parent.parent
#: MRI pass 1 at smoke size: no N4, no standardisation (seconds instead of a minute on 2 cores).
MRI_FAST = {"mri": {"n4": False, "standardize": "none"}}
SMOKE_TESTS = {"fits", "e2e", "n4", "segmentation", "synth_time", "scaling", "qa", "export", "study"}


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory):
    """One small synthetic cohort for the module's benchmarks (synthesized on first use)."""
    return tmp_path_factory.mktemp("bench_cache")


def test_every_benchmark_has_a_smoke_test():
    assert set(bench_main.BENCHES) == SMOKE_TESTS


def test_median_time_calls_warmup_then_repeats():
    calls = []
    timing = _common.median_time(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5
    assert len(timing.times_s) == 3
    assert timing.result == 5
    assert timing.min_s <= timing.median_s
    with pytest.raises(ValueError, match="repeats"):
        _common.median_time(lambda: None, repeats=0)


def test_markdown_table_takes_the_union_of_keys_in_order():
    table = _common.markdown_table([{"a": 1, "b": 0.5}, {"a": 2, "c": "x|y", "d": float("nan"), "e": True}])
    lines = table.splitlines()
    assert lines[0] == "| a | b | c | d | e |"
    assert lines[2] == "| 1 | 0.5 |  |  |  |"
    assert lines[3] == "| 2 |  | x\\|y | n/a | yes |"


def test_machine_info_has_the_header_fields():
    machine = _common.machine_info()
    assert {"cpu", "cores", "ram_gib", "gpu", "versions", "date_utc"} <= set(machine)
    assert machine["versions"]["python"]
    assert "numpy" in machine["versions"]


def test_suite_writes_json_and_markdown_and_survives_a_failing_bench(tmp_path, monkeypatch):
    def tiny_synth(quick: bool) -> list[dict]:
        """Tiny synthesis bench."""
        return synth_time.run(quick, n_patients=1, sizes=("small",), workers=(1,))

    def broken(quick: bool) -> list[dict]:
        raise RuntimeError("deliberately broken")

    monkeypatch.setattr(bench_main, "BENCHES", {"synth_time": tiny_synth, "broken": broken})
    out = tmp_path / "results"
    status = bench_main.main(["--quick", "--out", str(out)])
    assert status == 1  # the broken bench fails the run, after the other wrote its rows

    report = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert report["quick"] is True
    assert {"cpu", "cores", "ram_gib", "versions", "date_utc"} <= set(report["machine"])
    assert report["benches"]["broken"]["error"] == "RuntimeError: deliberately broken"
    (row,) = report["rows"]
    assert {"bench", "size", "workers", "n_patients", "total_s", "s_per_patient", "extrapolated_200_s"} <= set(row)
    assert row["bench"] == "synth_time" and row["n_patients"] == 1

    markdown = (out / "bench.md").read_text(encoding="utf-8")
    assert "## Machine" in markdown and "## synth_time" in markdown and "## broken" in markdown
    assert "| size | workers | n_patients |" in markdown
    assert "**Failed**: RuntimeError: deliberately broken" in markdown


def test_only_selects_benchmarks(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(bench_main, "BENCHES", {name: (lambda quick, name=name: ran.append(name) or [])
                                                for name in ("one", "two", "three")})
    assert bench_main.main(["--only", "three", "one", "--out", str(tmp_path)]) == 0
    assert ran == ["one", "three"]  # suite order, not command-line order


def test_e2e_contenders_agree_on_one_series(tmp_path):
    slab, lumbar = e2e.run(quick=True, cache_dir=tmp_path / "cache", n_series=1, repeats=1)
    for row in (slab, lumbar):
        assert {"floor_s", "ours_s", "naive_s", "ours_vs_floor", "naive_vs_ours", "roi_voxels_ours",
                "roi_voxels_naive", "mean_hu_diff", "same_result"} <= set(row)
        # Equivalence, not speed: the crop-resample is the whole-volume resample inside the crop.
        assert row["roi_voxels_ours"] == row["roi_voxels_naive"]
        assert row["same_result"] is True
    # the lumbar series is the slab padded with slices outside the ROI: the same ROI, more files
    assert (slab["n_files"], lumbar["n_files"]) == (17, e2e.LUMBAR_SLICES)
    assert lumbar["roi_voxels_ours"] == slab["roi_voxels_ours"]
    assert lumbar["mean_hu_ours"] == pytest.approx(slab["mean_hu_ours"], abs=1e-9)


def test_command_line_entry_point_parses():
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--only", "--out", "--scaling-sizes"):
        assert option in done.stdout
    bad = subprocess.run([sys.executable, "-m", "bench", "--only", "nope"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_segmentation_bench_derives_the_hand_roi_it_times_against():
    """The two contenders measure the same ROI (no timing is asserted)."""
    from bench import segmentation

    rows = segmentation.run(quick=True, repeats=1)
    assert [r["file"] for r in rows] == [".nii.gz", ".nii"]
    for row in rows:
        assert row["roi_voxels_derived"] == row["roi_voxels_hand"] > 0
        assert {"hand_median_s", "read_only_median_s", "derived_median_s", "derived_over_hand"} <= set(row)


def test_fits_bench_runs_every_method_against_its_reference():
    rows = fits.run(quick=True, sizes=[10**4])
    contenders = {(r["method"], r["contender"].endswith("(reference)")) for r in rows}
    assert contenders == {(m, ref) for m in ("histogram", "otsu", "kmeans", "gmm") for ref in (True, False)}
    assert all(r["n_voxels"] == 10**4 and r["median_s"] > 0 for r in rows)


def test_n4_bench_times_each_shrink_factor_on_the_pass1_crop(bench_cache):
    rows = n4.run(quick=True, cache_dir=bench_cache, n_series=1, repeats=1, shrink_factors=(8, 4),
                  overrides={"preprocess": {"mri": {"n4_iterations": [1]}}})
    shrinks, pass1 = rows[:-1], rows[-1]
    assert [r["shrink_factor"] for r in shrinks] == [8, 4]
    assert all(r["iterations"] == [1] and r["crop_voxels"] > 0 for r in shrinks)
    assert shrinks[0]["ratio_vs_shrink4"] == 1.0
    # MRI pass 1 of the same series, beside the crop's N4 (its ratio is the pass-1 goal's figure)
    assert pass1["what"] == "MRI pass 1" and pass1["series"] == shrinks[0]["series"] and pass1["median_s"] > 0


def test_qa_bench_times_pass1_and_the_qa_task(bench_cache, monkeypatch):
    import engine.qa as engine_qa

    drawn = []
    real_render_panel = engine_qa.render_panel
    monkeypatch.setattr(engine_qa, "render_panel", lambda *a, **k: drawn.append(1) or real_render_panel(*a, **k))
    rows = qa.run(quick=True, cache_dir=bench_cache, n_patients=1, repeats=1, sheet_patients=5,
                  overrides={"preprocess": MRI_FAST})
    # every timed QA call draws its picture (warm-up + 1 repeat per series), never a rerun's skip
    assert len(drawn) == 2 * 2
    series, sheet = rows[:-1], rows[-1]
    assert [r["series"] for r in series] == ["SYN0001/ct", "SYN0001/mri"]
    assert all(r["png_kib"] > 0 and r["pass1_s"] > 0 and r["qa_render_s"] > 0 for r in series)
    assert sheet["what"] == "contact sheet" and sheet["series"].startswith("10 ") and sheet["sheet_mib"] > 0


def test_scaling_bench_runs_the_pipeline_in_a_child(bench_cache):
    (row,) = scaling.run(quick=True, cache_dir=bench_cache, sizes=[1], workers=1, scheduler="inline",
                         preprocess=MRI_FAST)
    assert (row["n_patients"], row["n_failed"], row["backend"]) == (1, 0, "cpu")
    assert row["peak_rss_tree_mib"] > 0 and row["rss_tree_ratio_vs_smallest"] == 1.0


def test_export_bench_exports_the_run_it_times(bench_cache):
    rows = export.run(quick=True, n_patients=1, cache_dir=bench_cache, scheduler="inline", orthanc=False)
    run_row, silent, *latency = rows
    assert (run_row["patients"], run_row["exported"], run_row["failed"]) == (1, 1, 0)
    # a PACS that accepts and never answers: the destination is declared down, the rest not attempted
    assert silent["part"] == "silent PACS" and silent["down"] is True and silent["give_up_s"] > 0
    assert [r["client_nodelay"] for r in latency] == [False, True]
    assert all(r["peer"] == "pynetdicom storescp" and r["stores"] == 17 for r in latency)


def test_study_bench_times_each_setting_and_both_selection_paths():
    """The study bench's rows at smoke size: every setting, the permutations it was asked for."""
    from bench import study

    rows = study.run(quick=True, n_patients=30, cv_repeats=2, permutations=3)
    settings = [r["setting"] for r in rows]
    assert settings == ["one selection, DataFrame path", "one selection, float-matrix path", "one split",
                        "repeated CV", "repeated CV + chance (3 permutations)"]
    assert all(r["cpu_s"] >= 0 and r["n_patients"] in (18, 30) for r in rows)


def test_export_patients_reaches_the_export_bench(tmp_path, monkeypatch):
    """``--export-patients N`` sizes the export benchmark's cohort (an option that is parsed reaches the run)."""
    import bench.__main__ as entry

    seen = {}

    def fake_export(quick: bool = False, *, n_patients=None, cache_dir=None, size="small"):
        """Export stand-in."""
        seen.update(quick=quick, n_patients=n_patients, cache_dir=cache_dir, size=size)
        return [{"part": "export vs run", "patients": n_patients}]

    monkeypatch.setitem(entry.BENCHES, "export", fake_export)
    assert entry.main(["--only", "export", "--export-patients", "7", "--out", str(tmp_path)]) == 0
    assert seen == {"quick": False, "n_patients": 7, "cache_dir": tmp_path / "cache", "size": "small"}
    assert entry.main(["--only", "export", "--export-size", "clinical", "--out", str(tmp_path)]) == 0
    assert seen["size"] == "clinical" and seen["n_patients"] is None
    bad = subprocess.run([sys.executable, "-m", "bench", "--export-patients", "0"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "must be 1 or more" in bad.stderr
