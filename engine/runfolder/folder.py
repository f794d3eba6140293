"""Reading a run folder's published files: one set of read options per table, one parser per JSON file.

The report, QA, the exporters and the study read a run folder through these functions (or the
:class:`RunFolder` that bundles them), never with their own ``read_csv`` options, so a table's
dtypes and missing-value rules are decided once, here, beside the names in :mod:`engine.contract`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from engine.contract import (
    ERRORS_CSV,
    FEATURES_CSV,
    MODEL_JSON,
    PREDICTIONS_CSV,
    PROVENANCE_JSON,
    SERIES_CSV,
    THRESHOLDS_JSON,
    feature_name,
    preview_path,
)
from engine.runfolder.thresholds import StatInfo, Thresholds

#: ``pandas.read_csv`` options of each published table (identifiers and categories as text).
TABLE_OPTIONS: dict[str, dict[str, Any]] = {
    FEATURES_CSV: {"dtype": {"patient_id": str, "split": str}},
    ERRORS_CSV: {"dtype": str, "keep_default_na": False},
    SERIES_CSV: {"dtype": {"patient_id": str, "modality": str, "scanner": str}, "keep_default_na": False,
                 "na_values": {"standardization_scale": [""]}},
    PREDICTIONS_CSV: {"dtype": {"patient_id": str}},
}


def read_table(run_dir, name: str) -> pd.DataFrame:
    """A published table of ``run_dir`` with its read options; an empty file is an empty frame.

    Raises
    ------
    FileNotFoundError
        Naming the file when it is absent.
    """
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in the run folder {run_dir}")
    try:
        return pd.read_csv(path, **TABLE_OPTIONS.get(name, {}))
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_json_file(run_dir, name: str) -> dict:
    """A published JSON object (ValueError naming the file when it holds something else)."""
    path = Path(run_dir) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{name} not found in the run folder {run_dir}") from None
    except ValueError as exc:
        raise ValueError(f"{name} in {run_dir} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{name} in {run_dir} does not hold a JSON object")
    return data


def read_thresholds(run_dir) -> Thresholds:
    """thresholds.json, typed."""
    return Thresholds.from_json(read_json_file(run_dir, THRESHOLDS_JSON))


@dataclass(frozen=True)
class FeatureTable:
    """features.csv with the stat list that names its columns' units and labels."""

    frame: pd.DataFrame
    thresholds: Thresholds

    def stats(self) -> tuple[StatInfo, ...]:
        return self.thresholds.stats

    def unit(self, modality: str, stat: str) -> str:
        """The stored unit of a stat's columns on ``modality`` (``HU``, ``mm³``, ``%``)."""
        intensity = self.thresholds[modality].unit if modality in self.thresholds else \
            ("HU" if modality == "ct" else "signal")
        return self.thresholds.stat(stat).stored_unit(intensity)

    def value(self, patient_id: str, modality: str, method: str, tissue: str, stat: str) -> float:
        column = feature_name(modality, method, tissue, stat)
        rows = self.frame.loc[self.frame["patient_id"] == patient_id]
        if rows.empty or column not in rows:
            return math.nan
        value = rows.iloc[0][column]
        return float(value) if value == value else math.nan


class RunFolder:
    """A run folder's published outputs, each read on first use (``cache/`` is never read).

    Parameters
    ----------
    path : path-like
        The ``--out`` folder of a finished ``sarco run`` or ``sarco apply``.
    """

    def __init__(self, path):
        self.path = Path(path)

    @cached_property
    def thresholds_json(self) -> dict:
        """thresholds.json as written (its digest is the exports' identity)."""
        return read_json_file(self.path, THRESHOLDS_JSON)

    @cached_property
    def thresholds(self) -> Thresholds:
        return Thresholds.from_json(self.thresholds_json)

    @cached_property
    def features(self) -> FeatureTable:
        return FeatureTable(read_table(self.path, FEATURES_CSV), self.thresholds)

    @cached_property
    def provenance(self) -> dict:
        return read_json_file(self.path, PROVENANCE_JSON)

    def errors(self) -> pd.DataFrame:
        return read_table(self.path, ERRORS_CSV)

    def series(self) -> pd.DataFrame:
        return read_table(self.path, SERIES_CSV)

    def predictions(self) -> pd.DataFrame:
        return read_table(self.path, PREDICTIONS_CSV)

    @property
    def model_path(self) -> Path:
        """The frozen bundle ``sarco apply --model`` takes."""
        return self.path / MODEL_JSON

    def preview(self, patient_id: str, modality: str) -> Path:
        return preview_path(self.path, patient_id, modality)
