"""Is the best model better than chance? A permutation test that repeats the choice of the best model.

The study names the model with the highest repeated cross-validated AUC "best". With a few dozen
training patients and several candidate models, that maximum is well above 0.5 on labels that
carry no information (the maximum of noisy numbers), so the observed best AUC is compared with
its own null distribution: the training labels are permuted, every candidate model is refitted
with its whole selection inside every fold of the same repeated cross-validation, the combined
model is rebuilt on the permutation's best imaging model, and the best CV AUC of the permutation
is kept (Ojala & Garriga 2010, test 1; the maximum over models makes it a test of the whole
procedure, choice included, as in Westfall & Young's max-T). The p-value counts the observed
labelling among the permutations, ``(1 + #{T_perm >= T_obs}) / (1 + P)``, so it is never 0 and its
smallest value is ``1 / (1 + P)``.

Permutations are independent tasks, run on the executor's workers (:mod:`engine.batch.executors`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.batch.executors import InlineExecutor
from engine.stats._select import CandidateMatrix
from engine.stats.logistic import numeric_cv_mean, numeric_matrix

#: A model is better than chance when the test's p is at most this (with 99 permutations: exactly 5 % under the null).
CHANCE_ALPHA = 0.05


@dataclass(frozen=True)
class CandidateModel:
    """One candidate model as the study fitted it: its candidates, rows (training mask) and categoricals."""

    name: str
    candidates: tuple[str, ...]
    rows: tuple[bool, ...]
    categorical: tuple[str, ...] = ()
    imaging: bool = True


@dataclass
class ChanceSettings:
    """What the permutations repeat: the study's CV and selection settings."""

    label: str
    folds: int
    repeats: int
    seed: int
    p_enter: float
    p_remove: float
    alpha: float
    min_per_class: int
    clinical: tuple[str, ...] = ()
    clinical_categorical: tuple[str, ...] = ()
    combined: bool = False


@dataclass
class ChanceResult:
    """Observed and permuted best CV AUCs, all models and imaging models only."""

    permutations: int
    observed_best: float
    observed_best_imaging: float
    null_best: list[float] = field(default_factory=list)
    null_best_imaging: list[float] = field(default_factory=list)

    @staticmethod
    def _p(observed: float, null: list[float]) -> float:
        if not np.isfinite(observed) or not null:
            return float("nan")
        values = np.asarray(null, dtype=float)
        exceed = int(np.sum(np.where(np.isfinite(values), values, -np.inf) >= observed - 1e-12))
        return (1.0 + exceed) / (1.0 + len(values))

    @property
    def p_best(self) -> float:
        return self._p(self.observed_best, self.null_best)

    @property
    def p_best_imaging(self) -> float:
        return self._p(self.observed_best_imaging, self.null_best_imaging)


def candidate_matrices(features: pd.DataFrame, models: list[CandidateModel],
                       settings: ChanceSettings) -> dict[str, CandidateMatrix]:
    """Each model's candidates on its rows (:func:`engine.stats.logistic.numeric_matrix`), and
    ``combined:<imaging model>`` for the combined model built on each imaging model."""
    out: dict[str, CandidateMatrix] = {}
    for m in models:
        rows = np.asarray(m.rows)
        out[m.name] = numeric_matrix(features.loc[rows, list(m.candidates)], list(m.candidates), list(m.categorical))
        if settings.combined and m.imaging:
            candidates = _combined_candidates(m, settings)
            out[f"combined:{m.name}"] = numeric_matrix(features.loc[rows, candidates], candidates,
                                                       list(settings.clinical_categorical))
    return out


def _combined_candidates(best: CandidateModel, settings: ChanceSettings) -> list[str]:
    return list(settings.clinical) + [c for c in best.candidates if c not in settings.clinical]


def _cv_mean(y: np.ndarray, rows: np.ndarray, settings: ChanceSettings, matrix: CandidateMatrix) -> float:
    y_rows = y[rows]
    if min(int(np.sum(y_rows == 1)), int(np.sum(y_rows == 0))) < settings.min_per_class:
        return float("nan")
    return numeric_cv_mean(matrix, y_rows, folds=settings.folds, repeats=settings.repeats, seed=settings.seed,
                           p_enter=settings.p_enter, p_remove=settings.p_remove)


def model_cv_means(features: pd.DataFrame, y: np.ndarray, models: list[CandidateModel], settings: ChanceSettings,
                   matrices: dict[str, CandidateMatrix] | None = None) -> dict[str, float]:
    """Repeated-CV mean AUC of every model (and the combined one rebuilt on the best imaging) for labels ``y``.

    ``matrices``: :func:`candidate_matrices` of the same table (computed here when None).
    """
    matrices = candidate_matrices(features, models, settings) if matrices is None else matrices
    means = {m.name: _cv_mean(y, np.asarray(m.rows), settings, matrices[m.name]) for m in models}
    imaging = [m for m in models if m.imaging and np.isfinite(means[m.name])]
    if settings.combined and imaging:
        best = max(imaging, key=lambda m: means[m.name])  # first of equal maxima, as the study ranks
        means["combined"] = _cv_mean(y, np.asarray(best.rows), settings, matrices[f"combined:{best.name}"])
    return means


def permuted_labels(y: np.ndarray, train: np.ndarray, seed: int, index: int) -> np.ndarray:
    """``y`` with its training labels permuted among the training rows (permutation ``index`` of ``seed``)."""
    rng = np.random.default_rng([int(seed), int(index)])
    out = y.copy()
    where = np.flatnonzero(train)
    out[where] = y[where][rng.permutation(where.size)]
    return out


def permutation_best(index: int, *, features: pd.DataFrame, y: np.ndarray, train: np.ndarray,
                     models: list[CandidateModel], settings: ChanceSettings,
                     matrices: dict[str, CandidateMatrix]) -> tuple[float, float]:
    """One permutation (a task): the best CV AUC over all models and over the imaging models."""
    means = model_cv_means(features, permuted_labels(y, train, settings.seed, index), models, settings, matrices)
    return _best(means, models)


def _best(means: dict[str, float], models: list[CandidateModel]) -> tuple[float, float]:
    finite = [v for v in means.values() if np.isfinite(v)]
    imaging = [means[m.name] for m in models if m.imaging and np.isfinite(means[m.name])]
    return (max(finite) if finite else float("nan")), (max(imaging) if imaging else float("nan"))


def chance_test(features: pd.DataFrame, y: np.ndarray, train: np.ndarray, models: list[CandidateModel],
                settings: ChanceSettings, observed: dict[str, float], *, permutations: int,
                executor=None) -> ChanceResult:
    """Permutation test of the observed best repeated-CV AUC (all models, and imaging models only).

    Parameters
    ----------
    features : DataFrame
        The study's table (row order of ``y`` and of every model's ``rows`` mask).
    y : (n,) ndarray
        Labels (NaN: none); only the ``train`` rows are permuted.
    observed : dict
        Each model's observed repeated-CV mean AUC (with the same ``settings``).
    executor : optional
        An :mod:`engine.batch.executors` executor; one task per permutation. None: in this process.
    """
    observed_best, observed_imaging = _best(observed, models)
    result = ChanceResult(int(permutations), observed_best, observed_imaging)
    if permutations <= 0 or not np.isfinite(observed_best):
        return result
    executor = executor or InlineExecutor()
    token = uuid.uuid4().hex[:8]  # task keys unique on a cluster that outlives one study
    columns = sorted({c for m in models for c in m.candidates} | set(settings.clinical))
    table = features[columns].reset_index(drop=True)
    futures = executor.map(permutation_best, range(int(permutations)),
                           keys=[f"chance-{token}-{i}" for i in range(int(permutations))],
                           features=table, y=y, train=train, models=models, settings=settings,
                           matrices=candidate_matrices(table, models, settings))
    for future in futures:
        best, best_imaging = future.result()
        result.null_best.append(best)
        result.null_best_imaging.append(best_imaging)
    return result
