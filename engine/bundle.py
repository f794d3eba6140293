"""The frozen model bundle (``model.json``): what ``sarco run`` writes and ``sarco apply`` reads.

Engine version, config, thresholds, the fitted statistical models and cut-offs, and the feature
and clinical columns they expect. Reading checks the format and version before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import __version__
from .contract import MODEL_FORMAT, MODEL_FORMAT_VERSION
from .errors import SarcoError


class BundleError(SarcoError):
    """A file given as a model bundle is not one this engine can read (a user mistake: exit 2)."""


def make_bundle(config: dict, thresholds: dict, statistics: dict | None, feature_columns: list[str],
                clinical_columns: list[str]) -> dict:
    return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "engine_version": __version__,
            "config": config, "thresholds": thresholds, "statistics": statistics,
            "feature_columns": feature_columns, "clinical_columns": clinical_columns}


def read_bundle(path) -> dict:
    """The bundle at ``path``, checked: a readable JSON object of this format and a version we read."""
    path = Path(path)
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"model bundle not found: {path} (give the model.json of a finished sarco run)") from None
    except IsADirectoryError:
        raise BundleError(f"{path} is a folder; give the model.json inside a finished sarco run folder") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable sarco model bundle ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        found = model.get("format") if isinstance(model, dict) else type(model).__name__
        raise BundleError(f"{path} is not a sarco model bundle (format {found!r}); give the model.json of a run")
    if model.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise BundleError(f"{path} has format version {model['format_version']}; this engine reads "
                          f"<= {MODEL_FORMAT_VERSION}: upgrade sarco-engine")
    for key in ("config", "thresholds"):
        if not isinstance(model.get(key), dict):
            raise BundleError(f"{path} has no '{key}' section; it is not a complete sarco model bundle")
    return model
