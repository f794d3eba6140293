"""The statistics stage of a run: the paper's tables, the frozen models, predictions, study.json.

Glue between the engine's outputs (features, manifest, config) and :mod:`engine.stats`,
which does the statistics. Writes ``tables/*.csv``, ``predictions.csv`` and ``study.json`` and
returns the JSON-safe bundle that ``model.json`` carries, so ``sarco apply`` scores new patients
with exactly the fitted models and cut-offs. :func:`run_table_study` (``sarco study --table``)
runs the same stage on any feature table, for groups that measured muscle with other tools.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from .contract import METHODS, MODALITIES, STATS, STUDY_JSON, TABLE_FILES, TISSUES, imaging_models
from .manifest import Manifest
from .outputs import write_csv, write_json

log = logging.getLogger("sarco")


#: ``model.json`` of ``sarco study --table``: statistics only, no thresholds to apply to images.
TABLE_MODEL_FORMAT = "sarco-table-study/1"

#: Columns of a feature table that are never clinical variables.
RESERVED_COLUMNS = ("patient_id", "label", "split")

_FEATURE = re.compile(rf"^({'|'.join(MODALITIES)})_([a-z0-9]+)_({'|'.join(TISSUES)})_({'|'.join(STATS)})$")
_MODALITY_EXTRAS = {f"{m}_{suffix}" for m in MODALITIES for suffix in ("roi_volume", "excluded_voxels")}


def clinical_columns(manifest: Manifest, configured: list[str] | None) -> list[str]:
    return list(configured) if configured is not None else list(manifest.clinical_columns)


def _with_clinical(features: pd.DataFrame, manifest: Manifest, columns: list[str]) -> pd.DataFrame:
    clinical = manifest.table.loc[features["patient_id"], columns].reset_index(drop=True)
    return pd.concat([features.reset_index(drop=True), clinical], axis=1)


def _study(table: pd.DataFrame, columns: list[str], models: dict[str, list[str]], cfg, out_dir: Path, notes):
    """Run :func:`engine.stats.run_study` and write tables/, predictions.csv and study.json."""
    from .stats import run_study
    from .stats.study import study_summary

    # the CV folds are a statistics choice: seeded by the stats seed, not by the fit's K-means seed
    result = run_study(table, clinical_columns=columns, imaging_models=models, label="label", split="split",
                       folds=cfg.stats.cv_folds, seed=cfg.stats.split_seed, p_enter=cfg.stats.p_enter,
                       p_remove=cfg.stats.p_remove)
    tables = Path(out_dir) / "tables"
    for attribute, name in TABLE_FILES.items():
        frame = getattr(result, attribute, None)
        if frame is not None:
            write_csv(tables / name, frame)
    write_csv(Path(out_dir) / "predictions.csv", result.predictions)
    write_json(Path(out_dir) / STUDY_JSON, study_summary(result))
    notes.extend(result.notes)
    bundle = result.to_bundle()
    bundle["notes"] = list(result.notes)
    bundle["clinical_columns"] = columns
    return bundle


def run_statistics(out_dir: Path, features: pd.DataFrame, manifest: Manifest, cfg, modalities, notes: list[str]):
    """Fit the study's models on the training split and write the tables; return the bundle."""
    columns = clinical_columns(manifest, cfg.stats.clinical_columns)
    table = _with_clinical(features, manifest, columns)
    return _study(table, columns, imaging_models(modalities, cfg.fit.methods), cfg, out_dir, notes)


def table_models(columns) -> dict[str, list[str]]:
    """Imaging models of a feature table: one per (modality, method) whose columns are named as in
    METHOD.md section 4 (``{modality}_{method}_{tissue}_{stat}``), in the engine's order."""
    found: dict[tuple[str, str], list[str]] = {}
    for column in columns:
        match = _FEATURE.match(str(column))
        if match:
            found.setdefault((match.group(1), match.group(2)), []).append(column)
    order = {m: i for i, m in enumerate((*METHODS, "fixed"))}
    keys = sorted(found, key=lambda k: (MODALITIES.index(k[0]), order.get(k[1], len(order)), k[1]))
    return {f"{m}_{method}": [f"{m}_{method}_{t}_{s}" for t in TISSUES for s in STATS] for m, method in keys}


def read_feature_table(path) -> pd.DataFrame:
    """A user's feature table; ``ValueError`` naming what to fix when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"feature table '{path}' not found")
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "split": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"feature table '{path}' is not a readable CSV ({exc})") from exc
    missing = [c for c in RESERVED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"feature table '{path}' has no column(s) {missing} (needed: patient_id, label, split)")
    if table["patient_id"].duplicated().any():
        duplicated = sorted(table.loc[table["patient_id"].duplicated(), "patient_id"].astype(str).unique())[:5]
        raise ValueError(f"feature table '{path}': patient_id repeated ({duplicated})")
    return table


def run_table_study(table_path, out_dir, cfg) -> tuple[dict, list[str]]:
    """``sarco study --table``: the statistics stage on any feature table.

    The table has ``patient_id``, ``label`` (1/0/empty), ``split`` (train/validation/prospective),
    imaging features named as in METHOD.md section 4 and any other column as a clinical variable
    (``{modality}_roi_volume`` and ``{modality}_excluded_voxels`` are imaging, not clinical).
    Writes what ``sarco run`` writes for statistics: tables/, predictions.csv, study.json,
    model.json (:data:`TABLE_MODEL_FORMAT`), features.csv, and report.html when ``run.report``.
    Returns the ``study.json`` summary and the notes.
    """
    import json

    from . import __version__

    table = read_feature_table(table_path)
    models = table_models(table.columns)
    imaging = {c for columns in models.values() for c in columns} | _MODALITY_EXTRAS
    columns = cfg.stats.clinical_columns
    if columns is None:
        columns = [c for c in table.columns if c not in RESERVED_COLUMNS and c not in imaging]
    if not models and not columns:
        raise ValueError(f"feature table '{table_path}' has neither imaging features nor clinical columns")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if not models:
        notes.append("no imaging feature columns ({modality}_{method}_{tissue}_{stat}): clinical model only")
    bundle = _study(table, columns, models, cfg, out_dir, notes)
    write_csv(out_dir / "features.csv", table)
    write_json(out_dir / "thresholds.json", {"modalities": {}, "source": "feature table",
                                             "note": f"statistics on {Path(table_path).name}; no threshold fitted"})
    write_json(out_dir / "model.json", {"format": TABLE_MODEL_FORMAT, "engine_version": __version__,
                                        "config": cfg.to_dict(), "source_table": str(table_path),
                                        "statistics": bundle, "clinical_columns": columns})
    if cfg.run.report:
        from .report import render_report

        render_report(out_dir)
    return json.loads((out_dir / STUDY_JSON).read_text()), notes


def study_command(args) -> int:
    """``sarco study``: run :func:`run_table_study` and print the models; a table mistake exits 2."""
    import sys

    from .config import load_config
    from .stats.cli import study_text

    try:
        summary, notes = run_table_study(args.table, args.out, load_config(args.config))
    except ValueError as exc:  # a user mistake in the table: one line naming what to fix
        print(f"sarco: {exc}", file=sys.stderr)
        return 2
    print(study_text(summary, notes, Path(args.out)))
    return 0


def register_cli(subparsers) -> None:
    """Add ``sarco study`` to the command line's sub-commands."""
    parser = subparsers.add_parser("study", help="the statistics stage (Tables 2-5, models, report) on any "
                                   "feature table")
    parser.add_argument("--table", required=True, help="CSV: patient_id, label, split, features, clinical columns")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="YAML config (the stats keys apply)")
    parser.set_defaults(func=study_command)


def score_new_patients(out_dir: Path, features: pd.DataFrame, manifest: Manifest, bundle: dict) -> pd.DataFrame:
    """``sarco apply``: the frozen models' probabilities and calls for every patient."""
    from .stats import score_bundle

    columns = [c for c in bundle.get("clinical_columns", []) if c in manifest.table.columns]
    table = _with_clinical(features, manifest, columns)
    predictions = score_bundle(bundle, table)
    predictions = features[["patient_id", "split", "label"]].merge(predictions, on="patient_id", how="left")
    write_csv(Path(out_dir) / "predictions.csv", predictions)
    return predictions
