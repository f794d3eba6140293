"""The frozen model bundle (``model.json``): what ``sarco run`` writes and ``sarco apply`` reads.

Engine version, config, thresholds, the fitted statistical models and cut-offs, and the feature
and clinical columns they expect. Reading checks the format and version before anything runs.
"""

from __future__ import annotations

from engine import __version__
from engine.contract import MODEL_FORMAT, MODEL_FORMAT_VERSION, TABLE_MODEL_FORMAT
from engine.errors import UsageError
from engine.inputs.userfiles import read_json_object

#: The bundle's key for the training run's MRI fat / CSF median per scanner (absent in bundles of
#: engines before it: ``sarco apply`` then checks a night's series against each other only).
REFERENCE_RATIOS_KEY = "mri_fat_to_csf_by_scanner"


def make_bundle(config: dict, thresholds: dict, statistics: dict | None, feature_columns: list[str],
                clinical_columns: list[str], reference_ratios: dict[str, float] | None = None) -> dict:
    return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "engine_version": __version__,
            "config": config, "thresholds": thresholds, "statistics": statistics,
            "feature_columns": feature_columns, "clinical_columns": clinical_columns,
            REFERENCE_RATIOS_KEY: reference_ratios or {}}


def reference_ratios(model: dict) -> dict[str, float] | None:
    """The bundle's frozen fat / CSF median per scanner; None for a bundle written before they were kept."""
    ratios = model.get(REFERENCE_RATIOS_KEY)
    return None if not isinstance(ratios, dict) else {str(k): float(v) for k, v in ratios.items()}


def read_bundle(path) -> dict:
    """The bundle at ``path``, checked before any work: a JSON object of this format and a version we read.

    Raises
    ------
    UsageError
        If the file is missing or unreadable, is not JSON, is not a sarco model bundle, or was
        written by a newer engine (a user mistake: exit status 2).
    """
    model = read_json_object(path, "model file")
    if model.get("format") == TABLE_MODEL_FORMAT:
        raise UsageError(f"model file '{path}' was written by 'sarco study --table': statistics on a feature table, "
                         "no thresholds to measure images with; give the model.json of a 'sarco run' folder")
    if model.get("format") != MODEL_FORMAT:
        raise UsageError(f"model file '{path}' is not a sarco model bundle (no \"format\": \"{MODEL_FORMAT}\"); "
                         "give the model.json of a sarco run folder")
    version = model.get("format_version", 0)
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise UsageError(f"model file '{path}' has format version {version!r}; this engine reads "
                         f"<= {MODEL_FORMAT_VERSION}: upgrade sarco-engine")
    for key in ("config", "thresholds"):
        if not isinstance(model.get(key), dict):
            raise UsageError(f"model file '{path}' has no '{key}' section; give the model.json of a sarco run folder")
    return model
