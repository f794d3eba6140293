"""Statistics of the study: Table 2 group comparisons, logistic models, ROC/DeLong, CV, ICC.

Reproduces section 5 of METHOD.md. Fits use statsmodels ``Logit``, tests use scipy, ROC curves
and folds use scikit-learn; DeLong and the ICC are written here (no library has them).
"""

from .groups import compare_groups, table2
from .icc import icc, icc_from_matrix
from .logistic import (MultivariableResult, cross_validated_selection, drop_collinear, multivariable_logistic,
                       univariate_logistic)
from .models import LogisticModel, cross_validated_auc, fit_logistic_model
from .roc import auc_ci, binary_metrics, delong_auc_variance, delong_test, roc_summary, youden_cutoff
from .study import StudyResult, run_study, score_bundle, study_summary

__all__ = [
    "compare_groups", "table2",
    "univariate_logistic", "multivariable_logistic", "MultivariableResult", "drop_collinear",
    "cross_validated_selection",
    "LogisticModel", "fit_logistic_model", "cross_validated_auc",
    "delong_auc_variance", "auc_ci", "delong_test", "youden_cutoff", "binary_metrics", "roc_summary",
    "run_study", "StudyResult", "score_bundle", "study_summary",
    "icc", "icc_from_matrix",
]
