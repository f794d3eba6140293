"""Atomic output files: everything is written to a hidden temporary name in the destination
folder and renamed into place, so a killed run never leaves a half-written file behind
(``os.replace`` is atomic within one filesystem).

:func:`atomic_path` is the one way the engine writes a file (outputs, cache, habitat maps, the
report, the synthetic cohort). Its temporary names follow :data:`engine.contract.TEMP_GLOB`, which
the run lock sweeps after a killed run and the crash-safety test checks.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from engine.contract import temp_name


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path`` (same suffixes); rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name, os.getpid()))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _json_safe(value.item())
    return value


def dumps_json(data) -> str:
    """Deterministic JSON: sorted keys, NaN/inf as null, numpy scalars as Python numbers."""
    return json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | Path, data) -> Path:
    return write_text(path, dumps_json(data))


def write_csv(path: str | Path, frame: pd.DataFrame, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    kwargs.setdefault("lineterminator", "\n")
    return write_text(path, frame.to_csv(**kwargs))


def write_parquet(path: str | Path, frame: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def write_image(path: str | Path, image) -> Path:

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(path)
