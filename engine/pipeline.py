"""The cohort run as a Dask graph (METHOD.md sections 2-6).

    pass 1   per patient x modality: ingest -> preprocess -> ROI sample (cached on disk)
    reduce   training patients' histograms, summed as a tree -> Otsu / K-means / GMM -> thresholds
    pass 2   per patient x modality: classify with the frozen thresholds -> features, habitat maps
    outputs  features.csv/.parquet, thresholds.json, split.csv, errors.csv, model.json,
             provenance.json, then the statistics and report stages

The same graph runs on an embedded local cluster (default), on an existing
``dask.distributed`` scheduler (``scheduler="tcp://host:8786"``), or in this process
(``scheduler="inline"``, for debugging and small tests). Results do not depend on which.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .backend import resolve_backend, to_host
from .config import MODALITIES, Config, load_config
from .errors import PatientError, SarcoError
from .manifest import Manifest, assign_splits, read_manifest
from .outputs import write_csv, write_json, write_parquet
from .study import STUDY_JSON
from .tasks import classify_and_measure, feature_names, group_histogram, ingest_and_preprocess, sum_histograms

log = logging.getLogger("sarco")

# The run-level outputs a finished run publishes. A new run into the same folder retracts them
# before it writes its first one, so a folder never shows one run's thresholds.json beside
# another run's model.json; habitat maps and the cache are per patient and keyed, not retracted.
PUBLISHED_OUTPUTS = ("thresholds.json", "features.csv", "features.parquet", "errors.csv", "split.csv",
                     "predictions.csv", "model.json", "provenance.json", "report.html", STUDY_JSON)
MODEL_FORMAT = "sarco-model"
MODEL_FORMAT_VERSION = 1
ERROR_COLUMNS = ["patient_id", "modality", "stage", "reason"]
# Leaves of the cohort histogram reduction: enough tasks to keep every worker busy, few enough
# that the partial histograms alive at once stay small whatever the cohort's size.
MAX_HISTOGRAM_GROUPS = 64
# A pass reaches the scheduler in chunks of at least this many tasks, at most two chunks in flight:
# the scheduler's state for waiting tasks (~10 KB each) stays bounded whatever the cohort's size.
MIN_STREAM_CHUNK = 256


class RunFailed(SarcoError):
    """The run could not complete (``--strict`` with a failed patient, no training data, ...)."""


# ----------------------------------------------------------------------------- executors
class _Done:
    """A finished result that quacks like a distributed Future."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


class InlineExecutor:
    """Runs every task in this process, in submission order (``scheduler="inline"``)."""

    dashboard_link = None

    def submit(self, fn, *args, key=None, **kwargs):
        args = [a.result() if isinstance(a, _Done) else a for a in args]
        return _Done(fn(*args, **kwargs))

    def map(self, fn, *iterables, keys, **kwargs):
        return [self.submit(fn, *args, **kwargs) for args in zip(*iterables, strict=True)]

    def stream(self, fn, *iterables, keys, **kwargs):
        for args in zip(*iterables, strict=True):
            yield fn(*args, **kwargs)


class DaskExecutor:
    def __init__(self, client):
        self.client = client
        self.dashboard_link = getattr(client, "dashboard_link", None)

    def submit(self, fn, *args, key=None, **kwargs):
        return self.client.submit(fn, *args, key=key, pure=False, **kwargs)

    def map(self, fn, *iterables, keys, **kwargs):
        """One task per element, sent to the scheduler as one graph (the cohort histogram's groups).

        A ``submit`` per task costs the scheduler a graph update (and its bookkeeping) per task;
        one ``map`` halved the scheduler process's growth per task in a probe (README "Performance").
        The passes use :meth:`stream`, whose chunks are each one ``map``.
        """
        return self.client.map(fn, *iterables, key=list(keys), pure=False, **kwargs)

    def stream_chunk(self) -> int:
        """Tasks per chunk of :meth:`stream`: enough that every worker thread has two waiting."""
        threads = sum(self.client.nthreads().values())
        return max(MIN_STREAM_CHUNK, 2 * threads)

    def stream(self, fn, *iterables, keys, chunk: int | None = None, **kwargs):
        """The results of one task per element, in completion order, with at most two chunks in flight.

        A pass sent as one graph holds the scheduler's state for every one of its tasks at once
        (~10 KB per waiting task, and the allocator keeps those pages once they are free), so the
        scheduler process grew with the cohort: +55 MiB for the 4,000 tasks of 2,000 patients'
        pass 1 (README "Performance"). Chunks of ``chunk`` tasks (:meth:`stream_chunk`), the next
        sent each time a chunk's worth has finished, bound it; each chunk is one ``client.map``.
        """
        from distributed import as_completed

        chunk = chunk or self.stream_chunk()
        todo = zip(*iterables, keys, strict=True)
        completed = as_completed()

        def send(n: int) -> None:
            batch = list(itertools.islice(todo, n))
            if batch:
                *columns, batch_keys = zip(*batch)
                for future in self.client.map(fn, *columns, key=list(batch_keys), pure=False, **kwargs):
                    completed.add(future)

        send(2 * chunk)
        for taken, future in enumerate(completed, start=1):
            result = future.result()
            del future  # the scheduler forgets a finished task once its result is taken
            if taken % chunk == 0:
                send(chunk)  # at least one chunk is still in flight, so ``completed`` never runs dry early
            yield result


@contextmanager
def open_executor(scheduler: str | None, workers: int | None, backend: str):
    """The Dask client for a run: external scheduler, local (CUDA) cluster, or inline."""
    if scheduler == "inline":
        yield InlineExecutor()
        return
    import dask
    from distributed import Client

    # A local cluster's workers run without Dask's statistical profiler: it samples every thread's
    # stack every 10 ms and keeps up to 1,000 one-second profiles per worker, so a worker's memory
    # grew with the batch's duration, and it costs CPU (measured, README "Performance"). The dashboard
    # works without it; an external cluster keeps its own setting.
    no_profiler = {"distributed.worker.profile.enabled": False}
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    elif backend == "gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise RunFailed("backend gpu needs dask-cuda for its local cluster: pip install 'sarco-engine[gpu]' "
                            "(or pass --scheduler to use an existing cluster)") from exc
        # One worker per GPU; DICOM decoding runs on the worker's CPU threads.
        with dask.config.set(no_profiler):
            cluster = LocalCUDACluster(threads_per_worker=max(1, (os.cpu_count() or 2) // 2),
                                       silence_logs=logging.WARNING)
        client = Client(cluster)
    else:
        from distributed import LocalCluster

        # Processes, one thread each: pydicom decoding holds the GIL.
        with dask.config.set(no_profiler):
            cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                   dashboard_address=":8787", silence_logs=logging.WARNING)
        client = Client(cluster)
    try:
        yield DaskExecutor(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _progress(results, total: int, desc: str):
    """``results`` passed through, with a progress bar on a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="task", disable=not sys.stderr.isatty(), leave=True)
    try:
        for result in results:
            bar.update(1)
            yield result
    finally:
        bar.close()


def tree_reduce(executor, futures: list, fn, fan_in: int = 8):
    """Combine partial results as a tree of tasks (each combine sees at most ``fan_in`` inputs)."""
    while len(futures) > 1:
        futures = [executor.submit(fn, *futures[i:i + fan_in]) for i in range(0, len(futures), fan_in)]
    return futures[0].result()


# ----------------------------------------------------------------------------- results
@dataclass
class RunResult:
    out_dir: Path
    features: pd.DataFrame
    thresholds: dict
    errors: pd.DataFrame
    backend: str
    n_patients: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return int(self.errors[["patient_id", "modality"]].drop_duplicates().shape[0])


def _error_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=ERROR_COLUMNS)
    return frame.sort_values(["patient_id", "modality", "stage"], kind="stable").reset_index(drop=True)


def _jobs(manifest: Manifest) -> list[dict]:
    jobs = []
    for pid in manifest.patient_ids:
        row = manifest.table.loc[pid]
        for modality in MODALITIES:
            inputs = manifest.inputs(pid, modality)
            if inputs is None:
                continue
            jobs.append({"patient_id": pid, "modality": modality, "image": inputs[0], "roi": inputs[1],
                         "series_uid": row.get(f"{modality}_series_uid", "") or None,
                         # error messages show paths as the manifest wrote them
                         "manifest_dir": str(manifest.source.parent) if manifest.source else None})
    return jobs


# ----------------------------------------------------------------------------- cohort fit
def histogram_range(modality: str, cfg: Config, summaries: list[dict]) -> tuple[float, float]:
    """The explicit value range of a modality's pooled histogram.

    CT: the intensity window. Without a window (MRI): the training voxels' min and max, snapped
    outward to the bin grid; this is itself a partial -> combine -> finalize reduction.
    """
    window = cfg.modality_preprocess(modality).window
    if window is not None:
        return float(window[0]), float(window[1])
    width = cfg.modality_fit(modality).bin_width
    low = math.floor(min(s["min"] for s in summaries) / width) * width
    high = math.ceil(max(s["max"] for s in summaries) / width) * width
    if high <= low:  # every training voxel has the same value: one bin
        high = low + width
    return float(low), float(high)


def fit_cohort(counts: np.ndarray, lo: float, hi: float, modality: str, cfg: Config,
               notes: list[str] | None = None) -> dict:
    """The thresholds of every configured method on one modality's pooled histogram.

    The fits run on the host on both backends: the histogram is a few thousand int64 counts
    (microseconds of work), and reductions in a different order on a GPU could move a threshold
    by 1e-12, which is enough to flip a voxel that sits on it. Host fits make CPU and GPU runs
    give bit-identical thresholds and therefore identical habitat labels.
    """
    from kernels import bin_centers, fit_threshold

    width = cfg.modality_fit(modality).bin_width
    host_counts = to_host(counts)
    centers = bin_centers(lo, hi, width)
    options = {
        "otsu": {},
        "kmeans": {"seed": cfg.fit.seed, "max_iter": cfg.fit.kmeans_max_iter, "tol": cfg.fit.kmeans_tol},
        "gmm": {"max_iter": cfg.fit.gmm_max_iter, "tol": cfg.fit.gmm_tol, "reg_covar": cfg.fit.gmm_reg_covar},
    }
    fits = {}
    for method in cfg.fit.methods:
        try:
            result = fit_threshold((host_counts, centers), method, **options[method])
        except ValueError as exc:
            # A degenerate pooled histogram for one method must not cost the other methods'
            # results: its features stay empty and the run says why.
            if notes is None:
                raise
            notes.append(f"{modality.upper()} {method}: no threshold ({exc}); its features are left empty")
            log.warning("%s %s fit failed: %s", modality, method, exc)
            continue
        fits[method] = dataclasses.asdict(result)
    return fits


def histogram_groups(train: list[dict], max_groups: int = MAX_HISTOGRAM_GROUPS) -> list[list[dict]]:
    """The training summaries cut into at most ``max_groups`` contiguous groups of near-equal size.

    Each group's histogram is one partial of the cohort reduction, so the partials alive at once
    (one int64 per bin each) are bounded by ``max_groups``, whatever the cohort's size.
    """
    n_groups = min(len(train), max_groups)
    edges = [round(i * len(train) / n_groups) for i in range(n_groups + 1)]
    return [train[a:b] for a, b in zip(edges, edges[1:])]


def _fit_modality(executor, modality, train, cfg, backend, notes) -> dict:
    lo, hi = histogram_range(modality, cfg, train)
    width = cfg.modality_fit(modality).bin_width
    groups = histogram_groups(train)
    futures = executor.map(group_histogram, [[s["sample"] for s in group] for group in groups], lo=lo, hi=hi,
                           bin_width=width, backend=backend,
                           keys=[f"histogram-{modality}-{group[0]['patient_id']}" for group in groups])
    counts = tree_reduce(executor, futures, sum_histograms)
    fits = fit_cohort(counts, lo, hi, modality, cfg, notes)
    return {
        "fat_is": cfg.modality_fit(modality).fat_is,
        "unit": "HU" if modality == "ct" else "signal",
        "n_patients": len(train),
        "n_voxels": int(counts.sum()),
        "histogram": {"lo": lo, "hi": hi, "bin_width": width, "counts": [int(c) for c in counts]},
        "methods": fits,
    }


def threshold_values(thresholds: dict, modality: str) -> dict[str, float]:
    return {m: float(fit["threshold"]) for m, fit in thresholds["modalities"][modality]["methods"].items()}


# ----------------------------------------------------------------------------- the passes
def _pass1(executor, jobs, cfg, cache_dir, force) -> list[dict]:
    config = cfg.to_dict()
    results = executor.stream(ingest_and_preprocess, jobs, config=config, cache_dir=str(cache_dir), force=force,
                              keys=[f"pass1-{job['patient_id']}-{job['modality']}" for job in jobs])
    return list(_progress(results, len(jobs), "pass 1: ingest + preprocess"))


def _pass2(executor, summaries, thresholds, cfg, out_dir, cache_dir, backend, force) -> list[dict]:
    config = cfg.to_dict()
    habitat_dir = str(out_dir / "habitats") if cfg.run.habitats else None
    todo = [s for s in summaries if s["modality"] in thresholds["modalities"]]
    frozen = {modality: threshold_values(thresholds, modality) for modality in thresholds["modalities"]}
    results = executor.stream(classify_and_measure, todo, [frozen[s["modality"]] for s in todo], config=config,
                              habitat_dir=habitat_dir, cache_dir=str(cache_dir), backend=backend, force=force,
                              keys=[f"pass2-{s['patient_id']}-{s['modality']}" for s in todo])
    return list(_progress(results, len(todo), "pass 2: classify + measure"))


def _feature_table(manifest: Manifest, splits: pd.Series, rows: list[dict], modalities, methods) -> pd.DataFrame:
    table = pd.DataFrame({"patient_id": manifest.patient_ids,
                          "split": [splits[p] for p in manifest.patient_ids],
                          "label": manifest.table["label"].to_numpy()})
    columns = [name for modality in modalities for name in feature_names(modality, methods)]
    values = {pid: {} for pid in manifest.patient_ids}
    for row in rows:
        if row["status"] == "ok":
            values[row["patient_id"]].update(row["features"])
    feature_frame = pd.DataFrame([[values[p].get(c, np.nan) for c in columns] for p in manifest.patient_ids],
                                 columns=columns, dtype=float)
    return pd.concat([table, feature_frame], axis=1)


def _write_tables(out_dir: Path, features: pd.DataFrame, errors: pd.DataFrame, splits: pd.Series,
                  manifest: Manifest) -> None:
    write_csv(out_dir / "features.csv", features)
    write_parquet(out_dir / "features.parquet", features)
    write_csv(out_dir / "errors.csv", errors)
    split_frame = pd.DataFrame({"patient_id": manifest.patient_ids,
                                "split": [splits[p] for p in manifest.patient_ids],
                                "label": manifest.table["label"].to_numpy()})
    write_csv(out_dir / "split.csv", split_frame)


def _versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version(), "sarco-engine": __version__}
    for name in ("numpy", "scipy", "pandas", "scikit-learn", "statsmodels", "SimpleITK", "pydicom", "pylibjpeg",
                 "dask", "distributed", "cupy-cuda12x", "cuml-cu12"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _provenance(cfg: Config, backend: str, summaries: list[dict], started: float, mode: str) -> dict:
    inputs = {f"{s['patient_id']}/{s['modality']}": s.get("input_blake3") for s in summaries if s.get("input_blake3")}
    return {"engine_version": __version__, "mode": mode, "backend": backend, "config": cfg.to_dict(),
            "versions": _versions(), "platform": platform.platform(), "input_blake3": dict(sorted(inputs.items())),
            "started_unix": round(started, 3), "finished_unix": round(time.time(), 3)}


def _check_strict(cfg: Config, errors: list[dict]) -> None:
    if cfg.run.strict and errors:
        first = errors[0]
        raise RunFailed(f"--strict: {len(errors)} failure(s); first: patient {first['patient_id']} "
                        f"({first['modality']}) [{first['stage']}]: {first['reason']}")


def _prepare(manifest_path, cfg, out_dir):
    manifest = read_manifest(manifest_path, data_root=cfg.io.data_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return manifest, out_dir


@contextmanager
def _run_lock(out_dir: Path):
    """One run at a time per folder; temp files of a killed earlier run are removed first.

    Outputs are written under hidden temporary names and renamed into place, so a killed run
    leaves at most such temp files, never a half-written output; they are swept here.
    """
    lock = out_dir / ".sarco.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid):
            raise RunFailed(f"another sarco process (pid {pid}) is writing into {out_dir}; wait for it or "
                            "choose another --out") from None
        lock.unlink(missing_ok=True)  # left by a killed run
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        for stale in list(out_dir.rglob(".tmp-*")) + list(out_dir.rglob(".*.tmp")):
            stale.unlink(missing_ok=True)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _retract_outputs(out_dir: Path) -> None:
    """Remove the previous run's published outputs (cheap to rebuild from the cache)."""
    for name in PUBLISHED_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    tables = out_dir / "tables"
    if tables.is_dir():
        for table in tables.glob("*.csv"):
            table.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _setup_logging(out_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(out_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def run(manifest_path, *, out_dir, config: Config | None = None, force: bool = False) -> RunResult:
    """Run the whole study on a cohort (``sarco run``).

    Parameters
    ----------
    manifest_path : path-like
        The cohort manifest (METHOD.md section 1).
    out_dir : path-like
        The run folder. A rerun into the same folder recomputes only what is missing or stale.
    config : Config, optional
        Validated config (:func:`engine.config.load_config`); default: the schema defaults.
    force : bool
        Recompute every patient, ignoring the cache.
    """
    cfg = config or load_config()
    started = time.time()
    manifest, out_dir = _prepare(manifest_path, cfg, out_dir)
    handler = _setup_logging(out_dir)
    try:
        with _run_lock(out_dir):
            return _run(manifest, cfg, out_dir, force, started)
    finally:
        log.removeHandler(handler)
        handler.close()


def _run(manifest: Manifest, cfg: Config, out_dir: Path, force: bool, started: float) -> RunResult:
    backend = resolve_backend(cfg.run.backend)
    splits = assign_splits(manifest.table, train_fraction=cfg.stats.train_fraction, seed=cfg.stats.split_seed)
    jobs = _jobs(manifest)
    cache_dir = out_dir / "cache"
    error_rows = [p.as_row() for p in manifest.problems]
    notes: list[str] = []
    log.info("sarco-engine %s: %d patients, %d series, backend %s", __version__, len(manifest.patient_ids),
             len(jobs), backend)
    with open_executor(cfg.run.scheduler, cfg.run.workers, backend) as executor:
        if executor.dashboard_link:
            print(f"Dask dashboard: {executor.dashboard_link}", file=sys.stderr)
        summaries = _pass1(executor, jobs, cfg, cache_dir, force)
        failed = [s for s in summaries if s["status"] == "error"]
        error_rows += [{k: s[k] for k in ERROR_COLUMNS} for s in failed]
        _check_strict(cfg, error_rows)
        ok = [s for s in summaries if s["status"] == "ok"]

        thresholds = {"engine_version": __version__, "modalities": {}}
        for modality in MODALITIES:
            train = sorted((s for s in ok if s["modality"] == modality and splits[s["patient_id"]] == "train"
                            and not np.isnan(manifest.table.loc[s["patient_id"], "label"])),
                           key=lambda s: s["patient_id"])
            if not train:
                if any(s["modality"] == modality for s in summaries):
                    notes.append(f"no usable {modality.upper()} training patient: no {modality.upper()} thresholds "
                                 "and no features for this modality")
                continue
            thresholds["modalities"][modality] = _fit_modality(executor, modality, train, cfg, backend, notes)
            for method, fit in thresholds["modalities"][modality]["methods"].items():
                log.info("%s %s threshold %.3f from %d training patients", modality, method, fit["threshold"],
                         len(train))
        if not thresholds["modalities"]:
            write_csv(out_dir / "errors.csv", _error_frame(error_rows))
            raise RunFailed("no modality has a usable training patient, so no threshold can be fitted; "
                            "see errors.csv" if error_rows else "no training patient in the manifest")
        _retract_outputs(out_dir)
        write_json(out_dir / "thresholds.json", thresholds)

        rows = _pass2(executor, ok, thresholds, cfg, out_dir, cache_dir / "features", backend, force)
    pass2_failed = [r for r in rows if r["status"] == "error"]
    error_rows += [{k: r[k] for k in ERROR_COLUMNS} for r in pass2_failed]
    _check_strict(cfg, error_rows)
    modalities = [m for m in MODALITIES if m in thresholds["modalities"]]
    features = _feature_table(manifest, splits, rows, modalities, cfg.fit.methods)
    errors = _error_frame(error_rows)
    _write_tables(out_dir, features, errors, splits, manifest)

    bundle = None
    if cfg.stats.enabled:
        from .study import run_statistics

        bundle = run_statistics(out_dir, features, manifest, cfg, modalities, notes)
    model = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "engine_version": __version__,
             "config": cfg.to_dict(), "thresholds": thresholds, "statistics": bundle,
             "feature_columns": [c for m in modalities for c in feature_names(m, cfg.fit.methods)],
             "clinical_columns": manifest.clinical_columns}
    write_json(out_dir / "model.json", model)
    write_json(out_dir / "provenance.json", _provenance(cfg, backend, summaries, started, "run"))
    result = RunResult(out_dir, features, thresholds, errors, backend, len(manifest.patient_ids), notes)
    if cfg.run.report:
        _render_report(out_dir, notes)
    return result


def _render_report(out_dir: Path, notes: list[str]) -> None:
    try:
        from .report import render_report
    except ImportError:
        notes.append("report stage not available in this build")
        return
    render_report(out_dir)


def apply(model_path, manifest_path, *, out_dir, overrides: dict | None = None, force: bool = False) -> RunResult:
    """Score new patients with a frozen ``model.json`` (``sarco apply``): no refit of anything.

    Thresholds, preprocessing and statistical models all come from the bundle. Patients already
    processed in ``out_dir`` (same inputs) are taken from its cache: a nightly batch only does
    the new ones.
    """
    import json

    started = time.time()
    model = json.loads(Path(model_path).read_text())
    if model.get("format") != MODEL_FORMAT:
        raise RunFailed(f"{model_path} is not a sarco model bundle (format {model.get('format')!r})")
    if model.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise RunFailed(f"{model_path} has format version {model['format_version']}; this engine reads "
                        f"<= {MODEL_FORMAT_VERSION}: upgrade sarco-engine")
    from .config import _deep_merge, validate

    cfg = validate(_deep_merge(model["config"], overrides or {}))
    thresholds = model["thresholds"]
    manifest, out_dir = _prepare(manifest_path, cfg, out_dir)
    handler = _setup_logging(out_dir)
    try:
        return _apply(model, manifest, cfg, thresholds, out_dir, force, started)
    finally:
        log.removeHandler(handler)
        handler.close()


def _apply(model, manifest, cfg, thresholds, out_dir, force, started) -> RunResult:
    with _run_lock(out_dir):
        backend = resolve_backend(cfg.run.backend)
        splits = manifest.table["split"].where(manifest.table["split"] != "", "prospective")
        jobs = [j for j in _jobs(manifest) if j["modality"] in thresholds["modalities"]]
        cache_dir = out_dir / "cache"
        error_rows = [p.as_row() for p in manifest.problems]
        with open_executor(cfg.run.scheduler, cfg.run.workers, backend) as executor:
            summaries = _pass1(executor, jobs, cfg, cache_dir, force)
            error_rows += [{k: s[k] for k in ERROR_COLUMNS} for s in summaries if s["status"] == "error"]
            ok = [s for s in summaries if s["status"] == "ok"]
            rows = _pass2(executor, ok, thresholds, cfg, out_dir, cache_dir / "features", backend, force)
        error_rows += [{k: r[k] for k in ERROR_COLUMNS} for r in rows if r["status"] == "error"]
        _check_strict(cfg, error_rows)
        modalities = [m for m in MODALITIES if m in thresholds["modalities"]]
        features = _feature_table(manifest, splits, rows, modalities, cfg.fit.methods)
        errors = _error_frame(error_rows)
        _retract_outputs(out_dir)
        _write_tables(out_dir, features, errors, splits, manifest)
        if model.get("statistics"):
            from .study import score_new_patients

            score_new_patients(out_dir, features, manifest, model["statistics"])
        write_json(out_dir / "provenance.json", _provenance(cfg, backend, summaries, started, "apply"))
        return RunResult(out_dir, features, thresholds, errors, backend, len(manifest.patient_ids))
