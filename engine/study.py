"""The statistics stage of a run: the paper's tables, the frozen models, predictions, study.json.

Glue between the engine's outputs (features, manifest, config) and :mod:`engine.stats`,
which does the statistics. Writes ``tables/*.csv``, ``predictions.csv`` and ``study.json`` and
returns the JSON-safe bundle that ``model.json`` carries, so ``sarco apply`` scores new patients
with exactly the fitted models and cut-offs. :func:`run_table_study` (``sarco study --table``)
runs the same stage on any feature table, for groups that measured muscle with other tools.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from engine import __version__
from engine.batch.executors import InlineExecutor, open_executor
from engine.contract import (
    FEATURES_CSV,
    LABEL,
    MODALITIES,
    MODEL_JSON,
    PATIENT_ID,
    PATIENTS_KEY,
    PREDICTIONS_CSV,
    SPLIT,
    STUDY_JSON,
    TABLE_FILES,
    TABLE_MODEL_FORMAT,
    THRESHOLDS_JSON,
    imaging_models,
    is_diagnostic_column,
    method_features,
    model_name,
    parse_feature,
    roi_volume_column,
)
from engine.errors import UsageError
from engine.inputs.manifest import Manifest
from engine.inputs.userfiles import check_scheduler_address, read_csv_table
from engine.measure import methods as fit_methods
from engine.runfolder.outputs import dumps_json, write_csv, write_json, write_text
from engine.runfolder.rundir import add_note

log = logging.getLogger("sarco")


#: Columns of a feature table that are never clinical variables.
RESERVED_COLUMNS = (PATIENT_ID, LABEL, SPLIT)


def clinical_columns(manifest: Manifest, configured: list[str] | None) -> list[str]:
    return list(configured) if configured is not None else list(manifest.clinical_columns)


def _with_clinical(features: pd.DataFrame, manifest: Manifest, columns: list[str]) -> pd.DataFrame:
    clinical = manifest.table.loc[features["patient_id"], columns].reset_index(drop=True)
    return pd.concat([features.reset_index(drop=True), clinical], axis=1)


# ----------------------------------------------------------------------------- lost patients (issue 16)
#: A model that leaves out more than this share of a split's labelled patients is warned about,
#: and an imaging candidate undefined for more than this share of the training patients that
#: have the modality is removed from that model's candidates (see :func:`drop_sparse_candidates`).
LOST_SHARE_WARN = 0.10


def _undefined(table: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(table[column], errors="coerce").isna() if column in table else pd.Series(True, table.index)


def drop_sparse_candidates(table: pd.DataFrame, models: dict[str, list[str]], notes: list[str]) -> dict[str, list[str]]:
    """Imaging candidates undefined for many training patients leave the model, not the patients.

    A tissue mean is undefined when a patient has no voxel of that tissue (no fat above the
    threshold). That is not a missing measurement to impute (a mean intensity of no tissue does
    not exist, and 0 or the threshold would be invented numbers), and dropping those patients
    silently shrinks the cohort and keeps only the fatty ones (a biased sample). A careful
    analyst removes the feature from the model's candidates when it is undefined for more than
    ``LOST_SHARE_WARN`` of the training patients that have the modality's features, and says so.
    Below that share the few patients are left out and counted (:func:`patient_accounting`).
    """
    train = (table["split"] == "train") & table["label"].notna()
    kept = {}
    for name, candidates in models.items():
        modality = name.split("_")[0]
        measured = train & ~_undefined(table, roi_volume_column(modality))
        n = int(measured.sum())
        keep = []
        for column in candidates:
            undefined = int((measured & _undefined(table, column)).sum())
            if n and undefined / n > LOST_SHARE_WARN:
                message = (f"{name}: {column} is undefined for {undefined} of {n} training patients (no voxel of "
                           f"that tissue); removed from the candidates so the model keeps those patients")
                add_note(notes, message)
            else:
                keep.append(column)
        kept[name] = keep
    return kept


def _missing_value(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or bool(pd.isna(pd.to_numeric(value, errors="coerce")))


def _drop_reason(row: pd.Series, features: list[str]) -> str | None:
    """Why one patient cannot be scored by a model on ``features`` (None: it can)."""
    missing = [f for f in features if _missing_value(row.get(f))]
    if not missing:
        return None
    modalities = sorted({f.split("_")[0] for f in missing if f.split("_")[0] in MODALITIES})
    for modality in modalities:
        if pd.isna(pd.to_numeric(row.get(roi_volume_column(modality)), errors="coerce")):
            return f"no {modality.upper()} features (series absent or failed; see errors.csv)"
    return "undefined: " + ", ".join(missing)


def patient_accounting(table: pd.DataFrame, model_features: dict[str, list[str]], notes: list[str],
                       train_features: dict[str, list[str]] | None = None) -> dict:
    """Per model and split: labelled patients, patients the model used, and why the others were left out.

    ``model_features``: what scores a patient (the fitted model's features); ``train_features``:
    what the training split needed (every candidate the selection saw), default the same.

    ``{model: {split: {"labelled": n, "used": n, "dropped": {reason: n}}}}``; a note and a warning
    when a model leaves out more than ``LOST_SHARE_WARN`` of a split.
    """
    out = {}
    labelled = table[table["label"].notna()]
    for name, features in model_features.items():
        per_split = {}
        for split, rows in labelled.groupby("split", sort=True):
            if not split:
                continue
            needed = (train_features or {}).get(name, features) if split == "train" else features
            reasons = [r for r in (_drop_reason(row, needed) for _, row in rows.iterrows()) if r]
            counts = pd.Series(reasons, dtype=object).value_counts().to_dict() if reasons else {}
            per_split[split] = {"labelled": int(len(rows)), "used": int(len(rows) - len(reasons)),
                                "dropped": {str(k): int(v) for k, v in counts.items()}}
            if len(rows) and len(reasons) / len(rows) > LOST_SHARE_WARN:
                why = "; ".join(f"{v} {k}" for k, v in counts.items())
                message = (f"{name}: {len(reasons)} of {len(rows)} {split} patients left out ({why})")
                add_note(notes, message)
        out[name] = per_split
    return out


def _study(table: pd.DataFrame, columns: list[str], models: dict[str, list[str]], cfg, out_dir: Path, notes,
           executor=None):
    """Run :func:`engine.stats.run_study` and write tables/, predictions.csv and study.json."""
    # lazy: `sarco --help` imports this module; scipy.stats, statsmodels, the config load when it runs
    from engine.stats import run_study
    from engine.stats.study import study_summary

    own_notes: list[str] = []
    models = drop_sparse_candidates(table, models, own_notes)
    # the CV folds are a statistics choice: seeded by the stats seed, not by the fit's K-means seed
    result = run_study(table, clinical_columns=columns, imaging_models=models, label="label", split="split",
                       folds=cfg.stats.cv_folds, seed=cfg.stats.split_seed, p_enter=cfg.stats.p_enter,
                       p_remove=cfg.stats.p_remove, repeats=cfg.stats.cv_repeats,
                       permutations=cfg.stats.chance_permutations, chance_repeats=cfg.stats.chance_repeats,
                       executor=executor)
    tables = Path(out_dir) / "tables"
    for attribute, name in TABLE_FILES.items():
        frame = getattr(result, attribute, None)
        if frame is not None:
            write_csv(tables / name, frame)
    write_csv(Path(out_dir) / PREDICTIONS_CSV, result.predictions)
    summary = study_summary(result)
    # training: the model's candidates must all be present (the selection saw them all);
    # evaluation splits: the features of the fitted model
    candidates = {n: list(models.get(n, [c for c in columns if c in table] if n == "clinical" else m.features))
                  for n, m in result.models.items()}
    accounting = patient_accounting(table, {n: list(m.features) for n, m in result.models.items()}, own_notes,
                                    train_features=candidates)
    for name, entry in summary["models"].items():
        entry[PATIENTS_KEY] = accounting.get(name, {})
    result.notes[:0] = own_notes
    text = dumps_json(summary)  # JSON-safe (NaN -> null): what study.json holds and callers get
    write_text(Path(out_dir) / STUDY_JSON, text)
    notes.extend(result.notes)
    bundle = result.to_bundle()
    bundle["notes"] = list(result.notes)
    bundle["clinical_columns"] = columns
    return bundle, json.loads(text)


def run_statistics(out_dir: Path, features: pd.DataFrame, manifest: Manifest, cfg, modalities, notes: list[str],
                   executor=None):
    """Fit the study's models on the training split and write the tables; return the bundle.

    ``executor``: the run's (:mod:`engine.batch.executors`), where the test against chance runs its permutations.
    """
    columns = clinical_columns(manifest, cfg.stats.clinical_columns)
    table = _with_clinical(features, manifest, columns)
    models = imaging_models({m: cfg.modality_methods(m) for m in modalities})
    bundle, _ = _study(table, columns, models, cfg, out_dir, notes, executor)
    return bundle


def table_models(columns) -> dict[str, list[str]]:
    """Imaging models of a feature table: one per (modality, method) with a column named as in
    docs/method.md section 4 (:func:`engine.contract.parse_feature`), in the engine's order."""
    found = {parts[:2] for parts in map(parse_feature, map(str, columns)) if parts is not None}
    order = {m: i for i, m in enumerate(fit_methods.method_names())}
    keys = sorted(found, key=lambda k: (MODALITIES.index(k[0]), order.get(k[1], len(order)), k[1]))
    return {model_name(m, method): method_features(m, method) for m, method in keys}


def read_feature_table(path) -> pd.DataFrame:
    """A user's feature table; :class:`~engine.errors.UsageError` naming what to fix when it cannot be used."""
    table = read_csv_table(path, RESERVED_COLUMNS, "feature table", dtype={PATIENT_ID: str, SPLIT: str})
    if table[PATIENT_ID].duplicated().any():
        duplicated = sorted(table.loc[table[PATIENT_ID].duplicated(), PATIENT_ID].astype(str).unique())[:5]
        raise UsageError(f"feature table '{path}': patient_id repeated ({duplicated})")
    return table


@contextmanager
def _study_executor(cfg):
    """Where ``sarco study`` runs the test's permutations: the cluster ``run.scheduler``/``run.workers``
    name (as ``sarco run``), in this process when there is no test."""
    if cfg.stats.chance_permutations == 0:
        yield InlineExecutor()
        return
    with open_executor(cfg.run.scheduler, cfg.run.workers, "cpu") as executor:
        yield executor


def run_table_study(table_path, out_dir, cfg) -> tuple[dict, list[str]]:
    """``sarco study --table``: the statistics stage on any feature table.

    The table has ``patient_id``, ``label`` (1/0/empty), ``split`` (train/validation/prospective),
    imaging features named as in docs/method.md section 4 and any other column as a clinical variable
    (the engine's diagnostic columns, :func:`engine.contract.is_diagnostic_column`, are not clinical).
    Writes what ``sarco run`` writes for statistics: tables/, predictions.csv, study.json,
    model.json (:data:`TABLE_MODEL_FORMAT`), features.csv, and report.html when ``run.report``.
    Returns the ``study.json`` summary and the notes.
    """

    table = read_feature_table(table_path)
    models = table_models(table.columns)
    imaging = {c for columns in models.values() for c in columns}
    columns = cfg.stats.clinical_columns
    if columns is None:
        columns = [c for c in table.columns
                   if c not in RESERVED_COLUMNS and c not in imaging and not is_diagnostic_column(str(c))]
    if not models and not columns:
        raise UsageError(f"feature table '{table_path}' has neither imaging features nor clinical columns")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if not models:
        notes.append("no imaging feature columns ({modality}_{method}_{tissue}_{stat}): clinical model only")
    with _study_executor(cfg) as executor:
        bundle, summary = _study(table, columns, models, cfg, out_dir, notes, executor)
    write_csv(out_dir / FEATURES_CSV, table)
    write_json(out_dir / THRESHOLDS_JSON, {"modalities": {}, "source": "feature table",
                                           "note": f"statistics on {Path(table_path).name}; no threshold fitted"})
    write_json(out_dir / MODEL_JSON, {"format": TABLE_MODEL_FORMAT, "engine_version": __version__,
                                      "config": cfg.to_dict(), "source_table": str(table_path),
                                      "statistics": bundle, "clinical_columns": columns})
    if cfg.run.report:
        # lazy: `sarco --help` imports this module; scipy.stats, statsmodels, the config load when it runs
        from engine.report import render_report

        render_report(out_dir)
    return summary, notes


def study_command(args) -> int:
    """``sarco study``: run :func:`run_table_study` and print the models; a table mistake exits 2."""
    # lazy: `sarco --help` imports this module; scipy.stats, statsmodels, the config load when it runs
    from engine.config import load_config
    from engine.stats.cli import study_text

    run = {name: getattr(args, name) for name in ("scheduler", "workers") if getattr(args, name, None) is not None}
    if run.get("scheduler") is not None:
        run["scheduler"] = check_scheduler_address(run["scheduler"])
    try:
        summary, notes = run_table_study(args.table, args.out, load_config(args.config, {"run": run} if run else None))
    except ValueError as exc:  # the table cannot carry the study (no training rows, one class, ...)
        raise UsageError(str(exc)) from None  # the CLI's boundary: one line, exit 2
    print(study_text(summary, notes, Path(args.out)))
    return 0


def register_cli(subparsers) -> None:
    """Add ``sarco study`` to the command line's sub-commands."""
    parser = subparsers.add_parser("study", help="the statistics stage (Tables 2-5, models, report) on any "
                                   "feature table")
    parser.add_argument("--table", required=True, help="CSV: patient_id, label, split, features, clinical columns")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--config", help="YAML config (the stats keys apply)")
    parser.add_argument("--scheduler", help="where the test against chance runs: tcp://HOST:PORT of a Dask "
                        "scheduler, or 'inline' (default: config run.scheduler, a local cluster)")
    parser.add_argument("--workers", type=int, help="local Dask workers for that test (default: one per core)")
    parser.set_defaults(func=study_command)


def score_new_patients(out_dir: Path, features: pd.DataFrame, manifest: Manifest, bundle: dict) -> pd.DataFrame:
    """``sarco apply``: the frozen models' probabilities and calls for every patient."""
    # lazy: `sarco --help` imports this module; scipy.stats, statsmodels, the config load when it runs
    from engine.stats import score_bundle

    columns = [c for c in bundle.get("clinical_columns", []) if c in manifest.table.columns]
    table = _with_clinical(features, manifest, columns)
    predictions = score_bundle(bundle, table)
    predictions = features[["patient_id", "split", "label"]].merge(predictions, on="patient_id", how="left")
    write_csv(Path(out_dir) / PREDICTIONS_CSV, predictions)
    return predictions
