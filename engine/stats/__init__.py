"""Statistics of the study: Table 2 group comparisons, logistic models, ROC/DeLong, CV, ICC.

Reproduces section 5 of docs/method.md. Fits use statsmodels ``Logit``, tests use scipy, ROC curves
and folds use scikit-learn; DeLong and the ICC are written here (no library has them).

The names below are imported on first use (PEP 562), so that the command line can register
``sarco stats ...`` through :mod:`engine.stats.cli` without importing scipy and statsmodels on
every start (``sarco --version`` would otherwise wait a second for them).
"""

from __future__ import annotations

import importlib

# The function named like its module is bound here: once ``engine.stats.icc`` is imported the import
# system sets the package attribute ``icc`` to the module, which a lazy lookup could not undo.
from engine.stats.icc import icc, icc_from_matrix  # (numpy/pandas only; scipy is imported when used)

_EXPORTS = {
    "compare_groups": "groups", "table2": "groups",
    "MultivariableResult": "logistic", "cross_validated_selection": "logistic", "drop_collinear": "logistic",
    "multivariable_logistic": "logistic", "univariate_logistic": "logistic",
    "LogisticModel": "models", "cross_validated_auc": "models", "fit_logistic_model": "models",
    "auc_ci": "roc", "binary_metrics": "roc", "delong_auc_variance": "roc", "delong_test": "roc",
    "roc_summary": "roc", "youden_cutoff": "roc",
    "StudyResult": "study", "run_study": "study", "score_bundle": "study", "study_summary": "study",
}

__all__ = [*_EXPORTS, "icc", "icc_from_matrix"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine.stats' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(__all__)
