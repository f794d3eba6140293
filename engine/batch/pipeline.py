"""The cohort run (docs/method.md sections 2-6): ``run`` fits and measures, ``apply`` only measures.

    pass 1   per patient x modality: ingest -> preprocess -> ROI sample (cached on disk)
    reduce   training patients' histograms, summed as a tree -> Otsu / K-means / GMM -> thresholds
    pass 2   per patient x modality: classify with the frozen thresholds -> features, habitat maps
    outputs  features.csv/.parquet, thresholds.json, split.csv, errors.csv, model.json,
             provenance.json, then the statistics and report stages

``apply`` runs the same passes with the thresholds and models of a frozen ``model.json``. The
rooms: :mod:`engine.batch.executors` (where tasks run), :mod:`engine.batch.cohort_fit` (the reduction and
fits), :mod:`engine.runfolder.rundir` (lock, sweep, retraction, provenance), :mod:`engine.runfolder.bundle`
(model.json), :mod:`engine.batch.tasks` (one patient's work), :mod:`engine.contract` (the names).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine import __version__
from engine.batch.backend import resolve_backend
from engine.batch.cohort_fit import fit_thresholds
from engine.batch.executors import open_executor, progress
from engine.batch.tasks import classify_and_measure, ingest_and_preprocess
from engine.config import Config, load_config
from engine.contract import (
    CACHE_DIR,
    DISC_PLANE_COLUMNS,
    DISC_PLANE_KEY,
    ERRORS_CSV,
    HABITATS_DIR,
    MODALITIES,
    MODEL_JSON,
    MRI_REFERENCE_COLUMNS,
    MRI_REFERENCE_CSV,
    PROVENANCE_JSON,
    STANDARDIZATION_KEY,
    THRESHOLDS_JSON,
    derived_roi_path,
    disc_planes_path,
    feature_names,
    preview_path,
    series_uid_column,
)
from engine.inputs.manifest import Manifest, assign_splits, exclude_reviewed, read_manifest
from engine.measure.standardize import DOUBTFUL_KEY, reference_rows, scanner_ratio_medians
from engine.qa import qa_specs, render_series, render_sheet, write_panels
from engine.runfolder import Thresholds
from engine.runfolder.bundle import make_bundle, read_bundle, reference_ratios
from engine.runfolder.outputs import write_csv, write_json
from engine.runfolder.rundir import (
    RunFailed,
    add_note,
    check_folder_owner,
    error_frame,
    error_rows,
    provenance,
    retract_outputs,
    run_lock,
    run_log,
    source_entries,
    write_series,
    write_tables,
)

log = logging.getLogger("sarco")

__all__ = ["RunFailed", "RunResult", "apply", "run"]


@dataclass
class RunResult:
    out_dir: Path
    features: pd.DataFrame
    thresholds: dict
    errors: pd.DataFrame
    backend: str
    n_patients: int
    notes: list[str] = field(default_factory=list)
    #: Pass-1 series taken from the cache / computed in this run.
    reused: int = 0
    computed: int = 0

    @property
    def n_failed(self) -> int:
        return int(self.errors[["patient_id", "modality"]].drop_duplicates().shape[0])


@dataclass
class _Batch:
    """What one ``run`` or ``apply`` works on."""

    manifest: Manifest
    cfg: Config
    out_dir: Path
    splits: pd.Series
    force: bool
    errors: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: ``sarco apply``: the training run's fat / CSF median per scanner (``model.json``), which the
    #: night's MRI series are checked against; None: a run, checked against its own series
    reference_ratios: dict[str, float] | None = None

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / CACHE_DIR


def _jobs(manifest: Manifest, modalities=MODALITIES) -> list[dict]:
    jobs = []
    for pid in manifest.patient_ids:
        row = manifest.table.loc[pid]
        for modality in modalities:
            inputs = manifest.inputs(pid, modality)
            if inputs is None:
                continue
            jobs.append({"patient_id": pid, "modality": modality, "image": inputs[0], "roi": inputs[1],
                         # the ROI is derived from it when "roi" is empty (issue 17)
                         "segmentation": manifest.segmentation(pid, modality),
                         "series_uid": row.get(series_uid_column(modality), "") or None,
                         # error messages show paths as the manifest wrote them
                         "manifest_dir": str(manifest.source.parent) if manifest.source else None})
    return jobs


def _place_outputs(jobs: list[dict], out_dir: Path) -> list[dict]:
    """Where each job publishes its derived ROI (issue 17) and its pictures' data (issue 21): the run folder."""
    for job in jobs:
        pid, modality = job["patient_id"], job["modality"]
        job["derived_roi"] = str(derived_roi_path(out_dir, pid, modality))
        job["preview"] = str(preview_path(out_dir, pid, modality))
    return jobs


def _render_qa(executor, batch: _Batch, summaries: list[dict], thresholds: dict) -> list[dict] | None:
    """The QA pass (``run.qa``; issues 17, 23): one picture per measured series, drawn by the workers.

    Returns the ``qa/panels.json`` records (None when QA is off or failed: QA pictures must not
    cost the night's features).
    """
    if not batch.cfg.run.qa:
        return None

    specs = qa_specs(Thresholds.from_json(thresholds))
    todo = [s for s in summaries if s["status"] == "ok" and s["modality"] in specs]
    try:
        results = executor.stream(render_series, todo, [specs[s["modality"]] for s in todo],
                                  run_dir=str(batch.out_dir), force=batch.force,
                                  keys=[f"qa-{s['patient_id']}-{s['modality']}" for s in todo])
        return list(progress(results, len(todo), "QA"))
    except Exception as exc:  # noqa: BLE001 - QA pictures must not cost the night's features
        batch.notes.append(f"QA pictures not drawn: {type(exc).__name__}: {exc}")
        log.warning("QA pictures not drawn: %s", exc)
        return None


def _write_sheet(batch: _Batch, records: list[dict] | None) -> None:
    """qa/panels.json and the contact sheet qa/index.html, from the published files."""
    if records is None:
        return

    started = time.time()
    try:
        write_panels(batch.out_dir, records)
        index = render_sheet(batch.out_dir)
    except Exception as exc:  # noqa: BLE001 - QA pictures must not cost the night's features
        add_note(batch.notes, f"QA contact sheet not written: {type(exc).__name__}: {exc}")
        return
    # relative: run.log stays in the run folder, which holds no absolute path
    log.info("QA contact sheet: %s (%.1f s)", Path(index).relative_to(batch.out_dir), time.time() - started)


def _screen_mri_references(batch: _Batch, summaries: list[dict]) -> tuple[list[dict], list[dict]]:
    """(pass-1 summaries, mri_reference.csv rows): a doubtful reference does not count silently.

    A series whose reference is flagged (unreliable, or its fat/CSF ratio off its scanner's) becomes
    that patient's error naming the flag (``preprocess.mri.doubtful_reference: error``), or stays,
    marked :data:`DOUBTFUL_KEY`, to be measured but left out of the cohort fit (``keep``).
    """
    rows = reference_rows(summaries, batch.reference_ratios)
    doubtful = {r["patient_id"]: r["flag"] for r in rows if r["flag"]}
    if not doubtful:
        return summaries, rows
    keep = batch.cfg.preprocess.mri.doubtful_reference == "keep"
    screened = []
    for summary in summaries:
        flag = doubtful.get(summary["patient_id"]) if summary.get("modality") == "mri" else None
        if flag and keep:
            summary = {**summary, DOUBTFUL_KEY: flag}
        elif flag:
            summary = {**summary, "status": "error", "stage": "preprocess",
                       "reason": f"MRI reference doubtful: {flag} (not measured; preprocess.mri.doubtful_reference: "
                                 "keep measures it, left out of the cohort fit)"}
            batch.errors += error_rows([summary])
        screened.append(summary)
    shown = ", ".join(sorted(doubtful)[:5]) + (f" and {len(doubtful) - 5} more" if len(doubtful) > 5 else "")
    what = "measured but left out of the cohort fit" if keep else "not measured (errors.csv)"
    note = f"MRI standardisation: {len(doubtful)} series with a doubtful reference ({shown}), {what}"
    batch.notes.append(note)
    log.warning(note)
    return screened, rows


def _publish_mri_reference(batch: _Batch, summaries: list[dict], rows: list[dict]) -> None:
    """mri_reference.csv: each standardised MRI series' reference (issue 24), and a note on flags."""

    if not rows:
        return
    flags = {r["patient_id"]: r["flag"] for r in rows}
    for summary in summaries:   # the per-scanner ratio check's flags reach the QA pictures too
        record = summary.get(STANDARDIZATION_KEY) if summary.get("modality") == "mri" else None
        if record and summary["patient_id"] in flags:
            record["flag"] = flags[summary["patient_id"]]
    write_csv(batch.out_dir / MRI_REFERENCE_CSV, pd.DataFrame(rows, columns=list(MRI_REFERENCE_COLUMNS)))
    flagged = [r["patient_id"] for r in rows if r["flag"]]
    if flagged:
        shown = ", ".join(flagged[:5]) + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "")
        note = (f"MRI standardisation: the reference of {len(flagged)} series is flagged ({shown}); "
                f"see {MRI_REFERENCE_CSV} and the QA sheet before trusting their MRI features")
        batch.notes.append(note)
        log.warning(note)


def _pass1(executor, batch: _Batch, jobs: list[dict]) -> list[dict]:
    results = executor.stream(ingest_and_preprocess, jobs, cfg=batch.cfg, cache_dir=str(batch.cache_dir),
                              force=batch.force, keys=[f"pass1-{j['patient_id']}-{j['modality']}" for j in jobs])
    summaries = list(progress(results, len(jobs), "pass 1"))
    batch.errors += error_rows(summaries)
    _check_strict(batch)
    _write_disc_planes(batch.out_dir, summaries)
    return summaries


def _write_disc_planes(out_dir: Path, summaries: list[dict]) -> None:
    """derived_roi/disc_planes.csv: where each derived ROI's plane lies and how it was found (issue 23).

    One row per measured series whose ROI was derived; none derived: a previous run's table is retracted.
    """
    rows = [{"patient_id": s["patient_id"], "modality": s["modality"], **s[DISC_PLANE_KEY]}
            for s in summaries if s.get("status") == "ok" and s.get(DISC_PLANE_KEY)]
    path = disc_planes_path(out_dir)
    if not rows:
        path.unlink(missing_ok=True)
        return
    write_csv(path, pd.DataFrame(rows, columns=list(DISC_PLANE_COLUMNS)))


def _pass2(executor, batch: _Batch, ok: list[dict], thresholds: dict, backend: str) -> list[dict]:
    habitat_dir = str(batch.out_dir / HABITATS_DIR) if batch.cfg.run.habitats else None
    todo = [s for s in ok if s["modality"] in thresholds["modalities"]]
    frozen = Thresholds.from_json(thresholds).modalities  # typed: the fat side recorded at the fit travels with it
    results = executor.stream(classify_and_measure, todo, [frozen[s["modality"]] for s in todo],
                              cfg=batch.cfg, habitat_dir=habitat_dir, cache_dir=str(batch.cache_dir),
                              backend=backend, force=batch.force,
                              keys=[f"pass2-{s['patient_id']}-{s['modality']}" for s in todo])
    rows = list(progress(results, len(todo), "pass 2"))
    batch.errors += error_rows(rows)
    _check_strict(batch)
    return rows


def _check_strict(batch: _Batch) -> None:
    if batch.cfg.run.strict and batch.errors:
        first = batch.errors[0]
        raise RunFailed(f"--strict: {len(batch.errors)} failure(s); first: patient {first['patient_id']} "
                        f"({first['modality']}) [{first['stage']}]: {first['reason']}")


def _feature_table(batch: _Batch, rows: list[dict], modalities) -> pd.DataFrame:
    manifest = batch.manifest
    table = _split_frame(batch)
    cfg = batch.cfg
    columns = [name for modality in modalities for name in feature_names(modality, cfg.modality_methods(modality))]
    values: dict[str, dict[str, float]] = {pid: {} for pid in manifest.patient_ids}
    for row in rows:
        if row["status"] == "ok":
            values[row["patient_id"]].update(row["features"])
    feature_frame = pd.DataFrame([[values[p].get(c, np.nan) for c in columns] for p in manifest.patient_ids],
                                 columns=columns, dtype=float)
    return pd.concat([table, feature_frame], axis=1)


def _split_frame(batch: _Batch) -> pd.DataFrame:
    ids = batch.manifest.patient_ids
    return pd.DataFrame({"patient_id": ids, "split": [batch.splits[p] for p in ids],
                         "label": batch.manifest.table["label"].to_numpy()})


def _reuse_note(summaries: list[dict]) -> tuple[int, int]:
    """(series taken from the cache, series computed) of pass 1, logged as the rerun's account."""
    reused = sum(bool(s.get("cached")) for s in summaries)
    computed = len(summaries) - reused
    if reused:
        log.info("pass 1: %d series reused from the cache, %d computed", reused, computed)
    return reused, computed


def _measure(executor, batch: _Batch, ok: list[dict], thresholds: dict, backend: str) -> pd.DataFrame:
    """Pass 2, then features.csv/.parquet, errors.csv and split.csv; returns the feature table."""
    rows = _pass2(executor, batch, ok, thresholds, backend)
    modalities = [m for m in MODALITIES if m in thresholds["modalities"]]
    features = _feature_table(batch, rows, modalities)
    write_tables(batch.out_dir, features, error_frame(batch.errors), _split_frame(batch))
    return features


def run(manifest_path, *, out_dir, config: Config | None = None, force: bool = False) -> RunResult:
    """Run the whole study on a cohort (``sarco run``).

    Parameters
    ----------
    manifest_path : path-like
        The cohort manifest (docs/method.md section 1).
    out_dir : path-like
        The run folder. A rerun into the same folder recomputes only what is missing or stale.
    config : Config, optional
        Validated config (:func:`engine.config.load_config`); default: the schema defaults.
    force : bool
        Recompute every patient, ignoring the cache.
    """
    cfg = config or load_config()
    started = time.time()
    manifest = read_manifest(manifest_path, data_root=cfg.io.data_root)
    out_dir = Path(out_dir)
    check_folder_owner(out_dir, manifest_path, "run", force)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = assign_splits(manifest.table, train_fraction=cfg.stats.train_fraction, seed=cfg.stats.split_seed)
    batch = _Batch(manifest, cfg, out_dir, splits, force, errors=[p.as_row() for p in manifest.problems])
    with run_log(out_dir), run_lock(out_dir):
        return _run(batch, started)


def _run(batch: _Batch, started: float) -> RunResult:
    cfg, out_dir, manifest = batch.cfg, batch.out_dir, batch.manifest
    backend = resolve_backend(cfg.run.backend)
    jobs = _place_outputs(exclude_reviewed(_jobs(manifest), cfg.run.exclude, manifest, batch.notes), out_dir)
    log.info("sarco-engine %s: %d patients, %d series, backend %s", __version__, len(manifest.patient_ids),
             len(jobs), backend)
    with open_executor(cfg.run.scheduler, cfg.run.workers, backend) as executor:
        if executor.dashboard_link:
            print(f"Dask dashboard: {executor.dashboard_link}", file=sys.stderr)
        summaries, reference_table = _screen_mri_references(batch, _pass1(executor, batch, jobs))
        ok = [s for s in summaries if s["status"] == "ok"]

        def is_training(summary: dict) -> bool:
            pid = summary["patient_id"]
            return bool(batch.splits[pid] == "train" and not np.isnan(manifest.table.loc[pid, "label"])
                        and DOUBTFUL_KEY not in summary)

        thresholds = fit_thresholds(executor, ok, is_training, cfg, backend, batch.notes)
        if not thresholds["modalities"]:
            write_csv(out_dir / ERRORS_CSV, error_frame(batch.errors))
            raise RunFailed("no modality has a usable training patient, so no threshold can be fitted; "
                            "see errors.csv" if batch.errors else "no training patient in the manifest")
        retract_outputs(out_dir)
        _publish_mri_reference(batch, summaries, reference_table)
        write_series(out_dir, summaries)
        write_json(out_dir / THRESHOLDS_JSON, thresholds)
        features = _measure(executor, batch, ok, thresholds, backend)
        qa_records = _render_qa(executor, batch, summaries, thresholds)
        modalities = [m for m in MODALITIES if m in thresholds["modalities"]]
        statistics = None
        if cfg.stats.enabled:  # on the executor: the test against chance runs its permutations there
            # lazy: the statistics/report stage only (scipy.stats, statsmodels, matplotlib)
            from engine.study import run_statistics

            statistics = run_statistics(out_dir, features, manifest, cfg, modalities, batch.notes, executor)
    _write_sheet(batch, qa_records)
    feature_columns = [c for m in modalities for c in feature_names(m, cfg.modality_methods(m))]
    write_json(out_dir / MODEL_JSON, make_bundle(cfg.to_dict(), thresholds, statistics, feature_columns,
                                                 manifest.clinical_columns, scanner_ratio_medians(reference_table)))
    write_json(out_dir / PROVENANCE_JSON, provenance(cfg.to_dict(), backend, summaries, started, "run",
                                                     source_entries(jobs), manifest.source))
    reused, computed = _reuse_note(summaries)
    result = RunResult(out_dir, features, thresholds, error_frame(batch.errors), backend,
                       len(manifest.patient_ids), batch.notes, reused, computed)
    if cfg.run.report:
        # lazy: the statistics/report stage only (scipy.stats, statsmodels, matplotlib)
        from engine.report import render_report

        render_report(out_dir)
    return result


def apply(model_path, manifest_path, *, out_dir, overrides: dict | None = None, force: bool = False) -> RunResult:
    """Score new patients with a frozen ``model.json`` (``sarco apply``): no refit of anything.

    Thresholds, preprocessing and statistical models all come from the bundle. Patients already
    processed in ``out_dir`` (same inputs) are taken from its cache: a nightly batch only does
    the new ones. Patients without a split count as ``prospective``.
    """
    started = time.time()
    model = read_bundle(model_path)
    cfg = apply_config(model, overrides)
    manifest = read_manifest(manifest_path, data_root=cfg.io.data_root)
    out_dir = Path(out_dir)
    check_folder_owner(out_dir, manifest_path, "apply", force)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = manifest.table["split"].where(manifest.table["split"] != "", "prospective")
    batch = _Batch(manifest, cfg, out_dir, splits, force, errors=[p.as_row() for p in manifest.problems],
                   reference_ratios=reference_ratios(model))
    if batch.reference_ratios is None and "mri" in model["thresholds"].get("modalities", {}):
        batch.notes.append("model.json holds no training fat/CSF ratios (written by an older engine): the MRI "
                           "references of this batch are checked against each other only (3 series per scanner)")
    with run_log(out_dir), run_lock(out_dir):
        return _apply(batch, model, started)


#: ``run`` keys of a bundle's config that name the machine of the training run, not the model:
#: ``apply`` does not inherit them (a scheduler of that night is gone; issue 21).
MACHINE_KEYS = ("scheduler", "workers")


def apply_config(model: dict, overrides: dict | None = None) -> Config:
    """The config of ``sarco apply``: the bundle's, validated as a config file is, without its
    :data:`MACHINE_KEYS`, with the command line's ``overrides`` over it."""
    saved = {**model["config"], "run": {k: v for k, v in (model["config"].get("run") or {}).items()
                                        if k not in MACHINE_KEYS}}
    return load_config(overrides=saved).with_overrides(overrides)


def _apply(batch: _Batch, model: dict, started: float) -> RunResult:
    cfg, out_dir = batch.cfg, batch.out_dir
    thresholds = model["thresholds"]
    backend = resolve_backend(cfg.run.backend)
    jobs = _jobs(batch.manifest, [m for m in MODALITIES if m in thresholds["modalities"]])
    jobs = _place_outputs(exclude_reviewed(jobs, cfg.run.exclude, batch.manifest, batch.notes), out_dir)
    with open_executor(cfg.run.scheduler, cfg.run.workers, backend) as executor:
        summaries, reference_table = _screen_mri_references(batch, _pass1(executor, batch, jobs))
        retract_outputs(out_dir)
        _publish_mri_reference(batch, summaries, reference_table)
        write_series(out_dir, summaries)
        features = _measure(executor, batch, [s for s in summaries if s["status"] == "ok"], thresholds, backend)
        qa_records = _render_qa(executor, batch, summaries, thresholds)
    _write_sheet(batch, qa_records)
    if model.get("statistics"):
        # lazy: the statistics/report stage only (scipy.stats, statsmodels, matplotlib)
        from engine.study import score_new_patients

        score_new_patients(out_dir, features, batch.manifest, model["statistics"])
    write_json(out_dir / THRESHOLDS_JSON, thresholds)  # the frozen model's: what `sarco export` states
    write_json(out_dir / PROVENANCE_JSON, provenance(cfg.to_dict(), backend, summaries, started, "apply",
                                                     source_entries(jobs), batch.manifest.source))
    reused, computed = _reuse_note(summaries)
    return RunResult(out_dir, features, thresholds, error_frame(batch.errors), backend,
                     len(batch.manifest.patient_ids), batch.notes, reused, computed)
