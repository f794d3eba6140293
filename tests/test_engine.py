"""The Dask engine end to end on a synthetic cohort (issue 4).

The cohort is small (12 patients, `small` size) and generated once per session. Tests that
compare schedulers use the CT-only view of the manifest (N4 on MRI dominates the run time).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from engine.batch.pipeline import apply, run
from engine.config import load_config
from engine.contract import CACHE_DIR, sample_path

pytestmark = pytest.mark.slow

N_PATIENTS = 12
IDENTICAL_FILES = ("features.csv", "thresholds.json", "split.csv", "errors.csv")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(**run):
    run.setdefault("backend", "cpu")
    run.setdefault("scheduler", "inline")
    run.setdefault("report", False)
    return load_config(overrides={"run": run, "stats": {"enabled": False}})


@pytest.fixture(scope="session")
def cohort(shared_cohort) -> Path:
    from tests.cohorts import first_patients

    return first_patients(shared_cohort, N_PATIENTS, "engine")


@pytest.fixture(scope="session")
def ct_manifest(cohort) -> Path:
    table = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    path = cohort.parent / "manifest_ct.csv"
    table.drop(columns=[c for c in table.columns if c.startswith("mri_")]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def full_run(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_full")
    # the statistics on, cheaply: 12 patients separate often (Firth), so 20 CV repeats and 99
    # permutations would cost minutes here; test_study_run checks the repeated CV and the test
    cfg = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": False},
                                 "stats": {"cv_repeats": 2, "chance_permutations": 0}})
    run(cohort, out_dir=out, config=cfg)
    return out


@pytest.fixture(scope="session")
def ct_reference(ct_manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_ct_inline")
    run(ct_manifest, out_dir=out, config=_config())
    return out


def test_ct_fat_percent_tracks_truth(full_run, cohort):
    features = pd.read_csv(full_run / "features.csv")
    truth = pd.read_csv(cohort.parent / "truth.csv")
    merged = features.merge(truth, on="patient_id")
    assert len(merged) == N_PATIENTS
    for method in ("otsu", "kmeans", "gmm"):
        r = np.corrcoef(merged[f"ct_{method}_fat_percent"], merged["ct_true_fat_fraction"])[0, 1]
        assert r >= 0.95, f"{method}: Pearson r {r:.3f} against truth.csv"


def test_run_folder_contents(full_run):
    for name in ("features.csv", "features.parquet", "thresholds.json", "model.json", "errors.csv",
                 "provenance.json", "split.csv", "predictions.csv"):
        assert (full_run / name).is_file(), name
    features = pd.read_csv(full_run / "features.csv")
    expected = [f"{m}_{meth}_{t}_{s}" for m in ("ct", "mri") for meth in ("otsu", "kmeans", "gmm")
                for t in ("fat", "muscle") for s in ("mean", "volume", "percent")]
    assert set(expected) <= set(features.columns)
    assert len(expected) == 36
    # fat + muscle = every in-window ROI voxel
    for m in ("ct", "mri"):
        total = features[f"{m}_otsu_fat_percent"] + features[f"{m}_otsu_muscle_percent"]
        np.testing.assert_allclose(total, 100.0, rtol=1e-12)
    pd.testing.assert_frame_equal(pd.read_parquet(full_run / "features.parquet"), features, check_dtype=False)
    assert not list(full_run.rglob(".tmp-*"))


def test_habitat_maps_match_features(full_run):
    features = pd.read_csv(full_run / "features.csv").set_index("patient_id")
    pid = features.index[0]
    habitat = sitk.ReadImage(str(full_run / "habitats" / f"{pid}_ct_otsu.nii.gz"))
    labels = sitk.GetArrayFromImage(habitat)
    voxel_mm3 = float(np.prod(habitat.GetSpacing()))
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert (labels == 2).sum() * voxel_mm3 == pytest.approx(features.loc[pid, "ct_otsu_fat_volume"])
    assert (labels == 1).sum() * voxel_mm3 == pytest.approx(features.loc[pid, "ct_otsu_muscle_volume"])
    assert (labels == 3).sum() == features.loc[pid, "ct_excluded_voxels"]


def test_thresholds_come_from_training_patients_only(full_run):
    import json

    thresholds = json.loads((full_run / "thresholds.json").read_text(encoding="utf-8"))
    split = pd.read_csv(full_run / "split.csv")
    n_train = int(((split["split"] == "train") & split["label"].notna()).sum())
    assert thresholds["modalities"]["ct"]["n_patients"] == n_train
    assert n_train == round(0.6 * N_PATIENTS)


@pytest.mark.parametrize("workers", [1, 2])
def test_local_cluster_gives_byte_identical_outputs(ct_manifest, ct_reference, tmp_path, workers):
    run(ct_manifest, out_dir=tmp_path, config=_config(scheduler=None, workers=workers))
    for name in IDENTICAL_FILES:
        assert _digest(tmp_path / name) == _digest(ct_reference / name), name


def test_local_cluster_workers_run_without_the_profiler():
    """The statistical profiler grows each worker's memory with the batch's duration (#4)."""
    from engine.batch.executors import open_executor
    from engine.batch.tasks import sum_histograms

    with open_executor(None, 1, "cpu") as executor:
        settings = executor.client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert list(settings.values()) == [False]
        # a pass is one graph of readable per-patient keys
        futures = executor.map(sum_histograms, [np.ones(3, np.int64)] * 2, [np.ones(3, np.int64)] * 2,
                               keys=["histogram-P1-ct", "histogram-P2-ct"])
        assert [f.key for f in futures] == ["histogram-P1-ct", "histogram-P2-ct"]
        assert [list(f.result()) for f in futures] == [[2, 2, 2]] * 2
    assert dask.config.get("distributed.worker.profile.enabled") is True  # the caller's setting is untouched


def _square(value: int, offset: int = 0) -> int:
    return value * value + offset


def test_a_pass_streams_in_bounded_chunks_and_returns_every_result():
    """The scheduler holds at most two chunks of a pass at once, whatever the cohort's size (#4)."""
    from engine.batch.executors import InlineExecutor, open_executor

    values = list(range(53))
    keys = [f"pass1-P{v}-ct" for v in values]
    expected = [v * v + 7 for v in values]
    assert list(InlineExecutor().stream(_square, values, keys=keys, offset=7)) == expected
    with open_executor(None, 1, "cpu") as executor:
        real_map, sent, in_flight = executor.client.map, [], []

        def counting_map(fn, *columns, key, **kwargs):
            sent.extend(key)
            return real_map(fn, *columns, key=key, **kwargs)

        executor.client.map = counting_map
        results = []
        for result in executor.stream(_square, values, keys=keys, chunk=5, offset=7):
            results.append(result)
            in_flight.append(len(sent) - len(results))  # sent, not yet taken
        assert sorted(results) == expected
        assert sorted(sent) == sorted(keys)  # every task sent once, under its readable key
        assert max(in_flight) == 2 * 5 and in_flight[-1] == 0
        assert executor.stream_chunk() >= 256


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_external_dask_cluster_gives_byte_identical_outputs(ct_manifest, ct_reference, tmp_path):
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", "1",
                                           "--nthreads", "1", "--no-dashboard"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        run(ct_manifest, out_dir=tmp_path, config=_config(scheduler=address))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    for name in IDENTICAL_FILES:
        assert _digest(tmp_path / name) == _digest(ct_reference / name), name


def test_sigkill_then_rerun_resumes_without_redoing_work(ct_manifest, ct_reference, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "config.yaml"  # the reference run's settings: no report, no statistics
    config.write_text("run:\n  report: false\nstats:\n  enabled: false\n", encoding="utf-8")
    command = [sys.executable, "-m", "engine.cli", "run", "--manifest", str(ct_manifest), "--out", str(out),
               "--scheduler", "inline", "--backend", "cpu", "--config", str(config)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cache = out / "cache"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(cache.glob("*__ct.json"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # finished = its summary is written (after its sample); the kill may land between the two
    done_before = {p: p.stat().st_mtime_ns for p in cache.glob("*__ct.npz") if p.with_suffix(".json").exists()}
    assert 4 <= len(done_before) < N_PATIENTS, "the kill should land part-way through pass 1"
    assert not (out / "features.csv").exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was recomputed"
    for name in IDENTICAL_FILES:
        assert _digest(out / name) == _digest(ct_reference / name), name
    assert not list(out.rglob(".tmp-*")) and not (out / ".sarco.lock").exists()


def test_rerun_is_incremental_and_force_recomputes(ct_manifest, tmp_path):
    run(ct_manifest, out_dir=tmp_path, config=_config())
    samples = sorted((tmp_path / "cache").glob("*.npz"))
    before = {p: p.stat().st_mtime_ns for p in samples}
    run(ct_manifest, out_dir=tmp_path, config=_config())
    assert {p: p.stat().st_mtime_ns for p in samples} == before
    run(ct_manifest, out_dir=tmp_path, config=_config(), force=True)
    assert all(p.stat().st_mtime_ns != before[p] for p in samples)


def test_apply_uses_frozen_thresholds_and_only_new_patients(ct_manifest, ct_reference, tmp_path):
    table = pd.read_csv(ct_manifest, dtype=str, keep_default_na=False)
    # manifest paths are relative to the manifest's folder: keep the nightly manifests beside the cohort
    first = ct_manifest.parent / "night1.csv"
    table.iloc[:5].to_csv(first, index=False)
    out = tmp_path / "apply"
    apply(ct_reference / "model.json", first, out_dir=out, overrides={"run": {"scheduler": "inline"}})
    samples = [sample_path(out / CACHE_DIR, pid, "ct") for pid in table["patient_id"]]
    assert [p.exists() for p in samples] == [True] * 5 + [False] * (len(samples) - 5)
    done = {p: p.stat().st_mtime_ns for p in samples[:5]}
    second = ct_manifest.parent / "night2.csv"
    table.to_csv(second, index=False)
    apply(ct_reference / "model.json", second, out_dir=out, overrides={"run": {"scheduler": "inline"}})
    assert all(p.stat().st_mtime_ns == m for p, m in done.items())
    applied = pd.read_csv(out / "features.csv").set_index("patient_id")
    reference = pd.read_csv(ct_reference / "features.csv").set_index("patient_id")
    feature_columns = [c for c in reference.columns if c.startswith("ct_")]
    pd.testing.assert_frame_equal(applied[feature_columns], reference[feature_columns])
    # nothing was refitted: the apply folder states the frozen model's thresholds (what its export states)
    frozen = json.loads((ct_reference / "model.json").read_text(encoding="utf-8"))["thresholds"]
    assert json.loads((out / "thresholds.json").read_text(encoding="utf-8")) == frozen


def test_bad_patient_is_recorded_and_the_batch_goes_on(ct_manifest, ct_reference, tmp_path):
    table = pd.read_csv(ct_manifest, dtype=str, keep_default_na=False)
    broken = table.copy()
    # a validation patient: the training set, hence the thresholds, stay the reference run's
    reference_split = pd.read_csv(ct_reference / "split.csv").set_index("patient_id")["split"]
    victim = sorted(reference_split.index[reference_split == "validation"])[-1]
    broken.loc[broken["patient_id"] == victim, "ct_image"] = "patients/does-not-exist/ct"
    path = ct_manifest.parent / "manifest_broken.csv"
    broken.to_csv(path, index=False)
    run(path, out_dir=tmp_path, config=_config())
    errors = pd.read_csv(tmp_path / "errors.csv")
    assert errors["patient_id"].tolist() == [victim]
    assert errors.loc[0, "stage"] == "ingest" and "not found" in errors.loc[0, "reason"]
    features = pd.read_csv(tmp_path / "features.csv").set_index("patient_id")
    reference = pd.read_csv(ct_reference / "features.csv").set_index("patient_id")
    assert features.loc[victim].filter(like="ct_").isna().all()
    others = [p for p in reference.index if p != victim]
    split = pd.read_csv(tmp_path / "split.csv").set_index("patient_id")
    assert split.loc[victim, "split"] == "validation"  # the split is drawn before any image is read
    assert (tmp_path / "thresholds.json").read_bytes() == (ct_reference / "thresholds.json").read_bytes()
    pd.testing.assert_frame_equal(features.loc[others], reference.loc[others])


def test_strict_makes_a_failure_fatal(ct_manifest, tmp_path):
    from engine.batch.pipeline import RunFailed

    table = pd.read_csv(ct_manifest, dtype=str, keep_default_na=False)
    table.loc[table.index[0], "ct_roi"] = "missing_roi.nii.gz"
    path = tmp_path / "m.csv"
    shutil.copy(ct_manifest, path)
    table.to_csv(path, index=False)
    cfg = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "strict": True, "report": False},
                                 "stats": {"enabled": False}})
    with pytest.raises(RunFailed, match="strict"):
        run(path, out_dir=tmp_path / "out", config=cfg)


def test_histogram_groups_bound_the_partials_and_cover_every_patient():
    from engine.batch.cohort_fit import histogram_groups

    for n in (1, 7, 64, 65, 1200):
        train = [{"patient_id": f"P{i:04d}"} for i in range(n)]
        groups = histogram_groups(train, max_groups=64)
        assert len(groups) == min(n, 64)
        assert [s for group in groups for s in group] == train  # every patient once, in order
        sizes = [len(group) for group in groups]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_group_histogram_is_the_histogram_of_the_pooled_voxels(ct_reference):
    from engine.batch.tasks import group_histogram
    from engine.measure.preprocess import RoiSample

    paths = sorted(str(p) for p in (ct_reference / "cache").glob("*__ct.npz"))[:5]
    assert len(paths) == 5
    pooled = np.concatenate([RoiSample.load(p).window_values for p in paths])
    expected, _ = np.histogram(pooled, bins=np.arange(-190.5, 151.0, 1.0))  # 1 HU bins centred on integers
    counts = group_histogram(paths, -190.0, 150.0, 1.0, "cpu")
    assert counts.dtype == np.int64 and counts.sum() == pooled.size
    np.testing.assert_array_equal(counts, expected)


def test_mri_sample_does_not_depend_on_itk_threads_before_the_task(cohort, tmp_path):
    """Issue 25's device check: a LocalCUDACluster worker (ITK on one thread) and the inline run on a
    16-core machine (ITK's default, a thread per core) gave different MRI thresholds, because N4's
    B-spline fit follows ITK's global thread count. Every task now runs ITK on one thread, so the
    caller's setting must not reach the sample."""
    from engine.batch.tasks import ingest_and_preprocess

    row = pd.read_csv(cohort, dtype=str, keep_default_na=False).iloc[0]
    job = {"patient_id": row["patient_id"], "modality": "mri", "image": str(cohort.parent / row["mri_image"]),
           "roi": str(cohort.parent / row["mri_roi"]), "series_uid": None}
    config = _config()
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    samples = []
    try:
        for threads in (4, 1):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            summary = ingest_and_preprocess(job, config, str(tmp_path / f"threads{threads}"), force=True)
            assert summary["status"] == "ok", summary
            samples.append(np.load(summary["sample"])["values"])
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert samples[0].tobytes() == samples[1].tobytes()
