"""The run folder as a typed API: what the pipeline publishes and how every reader reads it.

The pipeline writes the folder (:mod:`engine.runfolder.rundir`, :mod:`engine.runfolder.outputs`); the report, QA,
the exporters and the study read it through :mod:`.folder` (one set of read options per table)
and :mod:`.thresholds` (thresholds.json as types: each method's class bounds and tissues, its
display name and algorithm family, the pooled histogram, the bimodality diagnostic and the training
scanners each fit was made on, and the list of feature stats with their units). What a
reader needs of the registries travels inside the folder, so a folder renders and exports where
the plug-ins that made it are not installed.
"""

from engine.runfolder.folder import TABLE_OPTIONS, FeatureTable, RunFolder, read_json_file, read_table, read_thresholds
from engine.runfolder.thresholds import (
    BimodalityDiagnostic,
    MethodFit,
    ModalityThresholds,
    PooledHistogram,
    StatInfo,
    Thresholds,
    TrainingScanner,
    method_record,
    registered_stats,
    two_classes,
)

__all__ = ["TABLE_OPTIONS", "BimodalityDiagnostic", "FeatureTable", "MethodFit", "ModalityThresholds",
           "PooledHistogram", "RunFolder", "StatInfo", "Thresholds", "TrainingScanner", "method_record",
           "read_json_file", "read_table", "read_thresholds", "registered_stats", "two_classes"]
