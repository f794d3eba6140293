"""The statistics stage of a run: the paper's tables, the frozen models, predictions.

Glue between the engine's outputs (features, manifest, config) and :mod:`engine.stats`,
which does the statistics. Writes ``tables/*.csv`` and ``predictions.csv`` and returns the
JSON-safe bundle that ``model.json`` carries, so ``sarco apply`` scores new patients with
exactly the fitted models and cut-offs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .manifest import Manifest
from .outputs import write_csv
from .contract import imaging_models

log = logging.getLogger("sarco")

TABLE_FILES = {
    "table2": "table2_groups.csv",
    "table3": "table3_clinical_logistic.csv",
    "table4": "table4_imaging_logistic.csv",
    "table5": "table5_performance.csv",
    "cv": "cv_auc.csv",
}


def clinical_columns(manifest: Manifest, configured: list[str] | None) -> list[str]:
    return list(configured) if configured is not None else list(manifest.clinical_columns)


def _with_clinical(features: pd.DataFrame, manifest: Manifest, columns: list[str]) -> pd.DataFrame:
    clinical = manifest.table.loc[features["patient_id"], columns].reset_index(drop=True)
    return pd.concat([features.reset_index(drop=True), clinical], axis=1)


def run_statistics(out_dir: Path, features: pd.DataFrame, manifest: Manifest, cfg, modalities, notes: list[str]):
    """Fit the study's models on the training split and write the tables; return the bundle."""
    from .stats import run_study

    columns = clinical_columns(manifest, cfg.stats.clinical_columns)
    table = _with_clinical(features, manifest, columns)
    result = run_study(table, clinical_columns=columns, imaging_models=imaging_models(modalities, cfg.fit.methods),
                       label="label", split="split", folds=cfg.stats.cv_folds, seed=cfg.fit.seed,
                       p_enter=cfg.stats.p_enter, p_remove=cfg.stats.p_remove)
    tables = Path(out_dir) / "tables"
    for attribute, name in TABLE_FILES.items():
        frame = getattr(result, attribute, None)
        if frame is not None:
            write_csv(tables / name, frame)
    write_csv(Path(out_dir) / "predictions.csv", result.predictions)
    notes.extend(result.notes)
    bundle = result.to_bundle()
    bundle["notes"] = list(result.notes)
    bundle["clinical_columns"] = columns
    return bundle


def score_new_patients(out_dir: Path, features: pd.DataFrame, manifest: Manifest, bundle: dict) -> pd.DataFrame:
    """``sarco apply``: the frozen models' probabilities and calls for every patient."""
    from .stats import score_bundle

    columns = [c for c in bundle.get("clinical_columns", []) if c in manifest.table.columns]
    table = _with_clinical(features, manifest, columns)
    predictions = score_bundle(bundle, table)
    predictions = features[["patient_id", "split", "label"]].merge(predictions, on="patient_id", how="left")
    write_csv(Path(out_dir) / "predictions.csv", predictions)
    return predictions
