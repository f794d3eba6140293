"""Univariate and multivariable logistic regression, as in the paper's Tables 3 and 4.

Univariate: one statsmodels ``Logit`` per candidate on the rows where that candidate and the
label are present. Multivariable: candidates with univariate p < ``p_enter`` enter; exactly
collinear variables are dropped (fat_percent + muscle_percent = 100 makes the pair collinear
with the intercept); then backward elimination removes the variable with the largest p while
that p exceeds ``p_remove``, keeping at least one. If nothing enters, the single best univariate
candidate is used (noted). The multivariable rows are the complete cases over the entered
variables, fixed for the whole elimination so the p-values of successive steps compare the
same patients (SPSS's listwise deletion).

Variable-level p-values (entry, elimination) are joint Wald tests over a variable's terms (for a
numeric or binary variable the coefficient's p); under separation they are Firth penalised
likelihood-ratio tests, never Wald (see :mod:`engine.stats._fit`).

:func:`cross_validated_selection` repeats the whole procedure (screen + elimination) inside every
cross-validation fold, so its AUC estimates the performance of the procedure, not of a feature set
chosen on all the training rows (which would leak the selection into the held-out folds).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from engine.stats._design import (
    as_keys,
    build_encoding,
    design_matrix,
    missing_rows,
    resolve_categorical,
    sorted_levels,
)
from engine.stats._fit import TERM_COLUMNS, constant_columns
from engine.stats._select import CandidateMatrix
from engine.stats.models import LogisticModel, fit_logistic_model, label_vector

UNIVARIATE_COLUMNS = [
    "variable", "term", "n", "n_events", "coef", "se", "or", "or_ci_low", "or_ci_high", "p",
    "p_variable", "or_per_sd", "or_per_sd_ci_low", "or_per_sd_ci_high", "status", "note",
]

#: Residual SD (in SD units of the column) below which a column is an exact linear combination.
COLLINEAR_TOL = 1e-7
#: Univariable p-values this close (relative) are a tie, broken by candidate order.
TIE_RTOL = 1e-9


def _empty_row(variable: str, n: int, n_events: int, status: str, note: str) -> dict:
    return {"variable": variable, "term": variable, "n": n, "n_events": n_events, "status": status, "note": note}


def univariate_logistic(
    df: pd.DataFrame,
    label: str,
    candidates: Iterable[str],
    *,
    categorical: Iterable[str] | None = None,
    alpha: float = 0.05,
    profile_ci: bool = True,
) -> pd.DataFrame:
    """One logistic regression per candidate.

    Returns
    -------
    DataFrame
        One row per term (one per numeric/binary variable; one per non-reference level of a
        multi-level categorical), columns :data:`UNIVARIATE_COLUMNS`. ``or`` is per unit (per
        presence for a level), ``or_per_sd`` per one sample SD. ``status``: ``ok``,
        ``separation`` (Firth's estimate, penalised likelihood-ratio p, profile CI), ``constant`` (one value: not
        fitted) or ``failed`` (column missing, one outcome class, optimiser failure).
    """
    candidates = list(candidates)
    categorical = resolve_categorical(df, candidates, categorical)
    y_all = label_vector(df[label])
    rows: list[dict] = []
    for variable in candidates:
        if variable not in df.columns:
            rows.append(_empty_row(variable, 0, 0, "failed", f"column '{variable}' not in the table"))
            continue
        kind = {variable: {"kind": "categorical" if variable in categorical else "numeric"}}
        keep = ~np.isnan(y_all) & ~missing_rows(df, [variable], kind)
        sub = df.loc[keep]
        y = y_all[keep]
        n, n_events = int(keep.sum()), int(y.sum())
        if n == 0:
            rows.append(_empty_row(variable, 0, 0, "failed", "no rows with both the label and this variable"))
            continue
        encoding = build_encoding(sub, [variable], categorical)
        X = design_matrix(sub, [variable], encoding)
        if X.shape[1] == 0 or constant_columns(X).all():
            rows.append(_empty_row(variable, n, n_events, "constant", "a single value among the rows; not fitted"))
            continue
        if n_events in (0, n):
            rows.append(_empty_row(variable, n, n_events, "failed", "only one outcome class among the rows"))
            continue
        outcome = fit_logistic_model(sub, label, [variable], name=variable, categorical=categorical, alpha=alpha,
                                     profile_ci=profile_ci)
        terms = outcome.summary.iloc[1:]  # drop the intercept
        status = outcome.fit.status
        note = outcome.fit.note
        for _, term in terms.iterrows():
            row = term.to_dict()
            row.update(n=n, n_events=n_events, status=status, note=note)
            rows.append(row)
    table = pd.DataFrame(rows)
    for column in UNIVARIATE_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    return table[UNIVARIATE_COLUMNS].reset_index(drop=True)


@dataclass
class MultivariableResult:
    """Outcome of :func:`multivariable_logistic`.

    ``summary`` holds the final model's terms in original units (intercept first; columns
    ``variable, term, coef, se, z, p, p_variable, or, or_ci_low, or_ci_high, or_per_sd,
    or_per_sd_ci_low, or_per_sd_ci_high``). ``removed`` lists the elimination steps
    (``step, variable, p``); ``dropped_collinear`` the exactly collinear variables
    (``variable, partners, note``).
    """

    name: str
    candidates: list[str]
    univariate: pd.DataFrame
    entered: list[str]
    selected: list[str]
    summary: pd.DataFrame
    model: LogisticModel | None
    status: str
    n: int = 0
    n_events: int = 0
    fallback: bool = False
    dropped_collinear: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _variable_p(univariate: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """Per variable: (variable-level p, status) from a univariate table."""
    out: dict[str, tuple[float, str]] = {}
    for variable, group in univariate.groupby("variable", sort=False):
        p = group["p_variable"].iloc[0]
        out[variable] = (float(p) if pd.notna(p) else float("nan"), str(group["status"].iloc[0]))
    return out


def drop_collinear(
    df: pd.DataFrame, variables: list[str], categorical: Iterable[str]
) -> tuple[list[str], list[dict]]:
    """Drop variables that are exact linear combinations of the intercept and earlier variables.

    Variables are considered in order; a variable any of whose design columns is (to
    :data:`COLLINEAR_TOL`) in the span of the intercept and the kept columns is dropped, and the
    kept variables it depends on are named. ``df`` must hold complete rows.
    """
    categorical = list(categorical)
    encoding = build_encoding(df, variables, categorical)
    n = len(df)
    kept: list[str] = []
    kept_columns: list[np.ndarray] = []
    kept_owner: list[str] = []
    dropped: list[dict] = []
    for variable in variables:
        X = design_matrix(df, [variable], encoding)
        basis = np.column_stack([np.ones(n)] + kept_columns) if n else np.zeros((0, 1))
        partners: set[str] = set()
        collinear = False
        for j in range(X.shape[1]):
            column = X[:, j]
            sd = column.std(ddof=1) if n > 1 else 0.0
            if not np.isfinite(sd) or sd == 0:
                continue  # constant: handled by the fit (not fitted)
            target = (column - column.mean()) / sd
            coef, *_ = np.linalg.lstsq(basis, target, rcond=None)
            residual = target - basis @ coef
            if np.sqrt(np.mean(residual**2)) < COLLINEAR_TOL:
                collinear = True
                for c, owner in zip(coef[1:], kept_owner, strict=True):
                    if abs(c) > 1e-6:
                        partners.add(owner)
        if collinear:
            partners_list = [v for v in kept if v in partners]
            dropped.append(
                {
                    "variable": variable,
                    "partners": partners_list,
                    "note": (
                        f"'{variable}' dropped: perfectly collinear, an exact linear combination of "
                        + (" + ".join(f"'{p}'" for p in partners_list) + " and " if partners_list else "")
                        + "the intercept (e.g. fat_percent + muscle_percent = 100)"
                    ),
                }
            )
            continue
        kept.append(variable)
        for j in range(X.shape[1]):
            column = X[:, j]
            sd = column.std(ddof=1) if n > 1 else 0.0
            if np.isfinite(sd) and sd > 0:
                kept_columns.append((column - column.mean()) / sd)
                kept_owner.append(variable)
    return kept, dropped


def multivariable_logistic(
    df: pd.DataFrame,
    label: str,
    candidates: Iterable[str],
    *,
    p_enter: float = 0.05,
    p_remove: float = 0.10,
    categorical: Iterable[str] | None = None,
    alpha: float = 0.05,
    name: str = "model",
    univariate: pd.DataFrame | None = None,
    profile_ci: bool = True,
) -> MultivariableResult:
    """Univariate screening (p < ``p_enter``) then backward elimination (remove while p > ``p_remove``).

    Parameters
    ----------
    df : DataFrame
        Rows to fit on (e.g. the training split); rows without a label are ignored.
    candidates : list of str
        Candidate columns, in the order collinearity is resolved (the later one is dropped).
    univariate : DataFrame, optional
        A precomputed :func:`univariate_logistic` table of the same rows and candidates.
    profile_ci : bool
        Compute Firth profile CIs (only the p-values are needed inside cross-validation folds).
    """
    candidates = list(candidates)
    categorical = resolve_categorical(df, candidates, categorical)
    notes: list[str] = []
    if univariate is None:
        univariate = univariate_logistic(df, label, candidates, categorical=categorical, alpha=alpha,
                                         profile_ci=profile_ci)
    per_variable = _variable_p(univariate)
    usable = {v: p for v, (p, status) in per_variable.items() if status in ("ok", "separation") and np.isfinite(p)}
    entered = [v for v in candidates if v in usable and usable[v] < p_enter]
    fallback = False
    empty = pd.DataFrame(columns=TERM_COLUMNS)
    if not entered:
        if not usable:
            notes.append(f"{name}: no candidate could be fitted; no model")
            return MultivariableResult(name, candidates, univariate, [], [], empty, None, "failed", notes=notes)
        # p-values equal to rounding (x and 100 - x) are a tie, broken by candidate order
        smallest = min(usable.values())
        best = next(v for v in candidates if v in usable and usable[v] <= smallest * (1.0 + TIE_RTOL))
        entered = [best]
        fallback = True
        notes.append(
            f"{name}: no candidate had univariate p < {p_enter:g}; fell back to the single best "
            f"candidate '{best}' (p = {usable[best]:.3g})"
        )
    y_all = label_vector(df[label])
    kinds = {v: {"kind": "categorical" if v in categorical else "numeric"} for v in entered}
    keep = ~np.isnan(y_all) & ~missing_rows(df, entered, kinds)
    rows = df.loc[keep]
    n_labelled = int((~np.isnan(y_all)).sum())
    if len(rows) < n_labelled:
        notes.append(
            f"{name}: {n_labelled - len(rows)} labelled patient(s) missing an entered variable "
            f"excluded from the multivariable model (complete cases: {len(rows)})"
        )
    current, dropped = drop_collinear(rows, entered, categorical)
    notes.extend(f"{name}: {d['note']}" for d in dropped)
    removed: list[dict] = []
    step = 0
    while True:
        outcome = fit_logistic_model(rows, label, current, name=name, categorical=categorical, alpha=alpha,
                                     profile_ci=False)
        if len(current) <= 1 or not outcome.fit.usable:
            if not outcome.fit.usable and len(current) > 1:
                notes.append(f"{name}: fit failed during elimination ({outcome.fit.note}); stopped")
            break
        p_by_variable = (
            outcome.summary.iloc[1:].groupby("variable", sort=False)["p_variable"].first().reindex(current)
        )
        # a variable whose terms were all constant among these rows has p NaN: remove it first
        p_values = p_by_variable.fillna(np.inf)
        worst = p_values.idxmax()
        if not p_values[worst] > p_remove:
            break
        step += 1
        removed.append({"step": step, "variable": worst, "p": float(p_by_variable[worst])})
        current = [v for v in current if v != worst]
    if profile_ci and outcome.fit.method == "firth":
        # the elimination needed only p-values; the final model's table gets its profile CIs
        outcome = fit_logistic_model(rows, label, current, name=name, categorical=categorical, alpha=alpha)
    if outcome.fit.status == "separation":
        notes.append(f"{name}: {outcome.fit.note}")
    status = outcome.fit.status if outcome.model is not None else "failed"
    notes.extend(n for n in outcome.notes if n not in notes and "separation" not in n)
    return MultivariableResult(
        name=name, candidates=candidates, univariate=univariate, entered=entered, selected=list(current),
        summary=outcome.summary, model=outcome.model, status=status, n=outcome.n, n_events=outcome.n_events,
        fallback=fallback, dropped_collinear=dropped, removed=removed, notes=notes,
    )


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC over every case-control pair (ties count half); NaN without both classes."""
    cases, controls = score[y == 1], score[y == 0]
    if cases.size == 0 or controls.size == 0:
        return float("nan")
    difference = cases[:, None] - controls[None, :]
    return float(((difference > 0).sum() + 0.5 * (difference == 0).sum()) / difference.size)


def numeric_matrix(rows: pd.DataFrame, candidates: list[str], categorical: list[str]) -> CandidateMatrix:
    """The candidates as the float-matrix selection takes them: numeric columns as floats (NaN missing),
    a categorical as one 0/1 column per level in ``sorted_levels`` order (NaN where missing); each
    fold's selection takes the first level present as the reference, as ``build_encoding`` does."""
    columns: list[np.ndarray] = []
    groups: list[list[int]] = []
    kinds: list[bool] = []
    for name in candidates:
        if name not in categorical:
            groups.append([len(columns)])
            columns.append(pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float))
            kinds.append(False)
            continue
        keys = as_keys(rows[name])
        missing = np.array([k is None for k in keys])
        levels = sorted_levels(k for k in keys if k is not None) or [""]
        group = []
        for level in levels:
            group.append(len(columns))
            columns.append(np.where(missing, np.nan, np.array([k == level for k in keys], dtype=float)))
        groups.append(group)
        kinds.append(True)
    X = np.column_stack(columns) if columns else np.zeros((len(rows), 0))
    return CandidateMatrix(X, groups, kinds)


def _fold_selector(rows: pd.DataFrame, label: str, candidates: list[str], categorical: list[str],
                   p_enter: float, p_remove: float, alpha: float):
    """``select(train_idx, test_idx, y) -> (held-out scores, selected names)`` for one model's rows.

    The selection runs :func:`engine.stats._select.select_numeric` on the candidates' float matrix
    (:func:`numeric_matrix`): :func:`multivariable_logistic`'s procedure, some 40 times faster.
    """
    matrix = numeric_matrix(rows, candidates, categorical)

    def select(train_idx, test_idx, y):
        model = matrix.select(train_idx, y[train_idx].astype(float), p_enter=p_enter, p_remove=p_remove)
        if model is None:
            return None, []
        return model.predict_proba(matrix.X[test_idx]), [candidates[v] for v in model.variables]

    return select


def corrected_cv_interval(fold_aucs: np.ndarray, folds: int, alpha: float = 0.05) -> tuple[float, float]:
    """Interval of the repeated-CV AUC, corrected for the folds' overlap (Nadeau & Bengio 2003).

    The ``k x r`` fold AUCs share training patients, so their naive standard error is far too
    small. The corrected resampled t (Nadeau & Bengio 2003; Bouckaert & Frank 2004) inflates the
    variance: ``mean +/- t_{kr-1} sqrt((1/(kr) + n_test/n_train) s^2)`` with
    ``n_test/n_train = 1/(k-1)`` and ``s^2`` the variance of the fold AUCs; clipped to [0, 1].
    """
    values = fold_aucs[np.isfinite(fold_aucs)]
    if values.size < 2 or folds < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(1.0 - alpha / 2.0, values.size - 1) * np.sqrt(
        (1.0 / values.size + 1.0 / (folds - 1)) * values.var(ddof=1))
    mean = values.mean()
    return float(max(0.0, mean - half)), float(min(1.0, mean + half))


def cross_validated_selection(
    df: pd.DataFrame,
    label: str,
    candidates: Iterable[str],
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    categorical: Iterable[str] | None = None,
    p_enter: float = 0.05,
    p_remove: float = 0.10,
    alpha: float = 0.05,
) -> dict:
    """Repeated stratified K-fold CV AUC of the whole selection: screen + backward elimination in each fold.

    Each fold runs the selection (univariable screen, collinearity, elimination, fit; as
    :func:`multivariable_logistic`) on its training part only and scores the held-out part with the
    model it selected. The splits are scikit-learn's ``RepeatedStratifiedKFold(folds, repeats,
    random_state=seed)``. Rows are the labelled rows of ``df``. When a class has fewer patients than
    ``folds``, the folds are reduced (noted).

    Returns
    -------
    dict
        ``mean`` (of the per-repeat CV AUCs, each the mean of its folds' AUCs), ``sd`` (ddof=1 across
        repeats; NaN with one repeat), ``interval`` (:func:`corrected_cv_interval`), ``per_repeat``,
        ``per_fold`` (repeat-major), ``fold_sd``, ``folds``, ``repeats``, ``n``, ``n_events``, ``seed``,
        ``selected_per_fold``, ``notes``.
    """
    candidates = list(candidates)
    categorical = resolve_categorical(df, candidates, categorical)
    y_all = label_vector(df[label])
    rows = df.loc[~np.isnan(y_all)].reset_index(drop=True)
    y = y_all[~np.isnan(y_all)].astype(int)
    notes: list[str] = []
    n_events = int(y.sum())
    smallest = int(min(n_events, len(y) - n_events))
    result = {"mean": float("nan"), "sd": float("nan"), "interval": [float("nan"), float("nan")],
              "per_repeat": [], "per_fold": [], "fold_sd": float("nan"), "folds": 0, "repeats": int(repeats),
              "n": int(len(y)), "n_events": n_events, "seed": int(seed), "selected_per_fold": [], "notes": notes}
    n_folds = min(int(folds), smallest)
    if n_folds < 2:
        notes.append(f"cross-validation not possible: {smallest} patient(s) in the smaller class")
        return result
    if n_folds < folds:
        notes.append(f"cross-validation reduced to {n_folds} folds: only {smallest} patients in the smaller class")
    select = _fold_selector(rows, label, candidates, categorical, p_enter, p_remove, alpha)
    aucs, selected = _run_folds(select, y, n_folds, int(repeats), int(seed), notes)
    values = np.asarray(aucs, dtype=float).reshape(int(repeats), n_folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a repeat whose folds are all NaN
        per_repeat = np.nanmean(values, axis=1)
    finite = per_repeat[np.isfinite(per_repeat)]
    all_folds = values[np.isfinite(values)]
    result.update(
        mean=float(finite.mean()) if finite.size else float("nan"),
        sd=float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
        interval=list(corrected_cv_interval(values.ravel(), n_folds)),
        per_repeat=[float(a) for a in per_repeat], per_fold=[float(a) for a in aucs],
        fold_sd=float(all_folds.std(ddof=1)) if all_folds.size > 1 else float("nan"),
        folds=n_folds, selected_per_fold=selected,
    )
    return result


def numeric_cv_mean(matrix: CandidateMatrix, y: np.ndarray, *, folds: int, repeats: int, seed: int,
                    p_enter: float = 0.05, p_remove: float = 0.10) -> float:
    """:func:`cross_validated_selection`'s ``mean`` on a :func:`numeric_matrix` (no DataFrame; resampling)."""
    y = np.asarray(y, dtype=int)
    n_folds = min(int(folds), int(y.sum()), int(y.size - y.sum()))
    if n_folds < 2:
        return float("nan")

    def select(train_idx, test_idx, labels):
        model = matrix.select(train_idx, labels[train_idx].astype(float), p_enter=p_enter, p_remove=p_remove)
        return (None, []) if model is None else (model.predict_proba(matrix.X[test_idx]), [])

    aucs, _ = _run_folds(select, y, n_folds, int(repeats), int(seed), [])
    values = np.asarray(aucs, dtype=float).reshape(int(repeats), n_folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_repeat = np.nanmean(values, axis=1)
    finite = per_repeat[np.isfinite(per_repeat)]
    return float(finite.mean()) if finite.size else float("nan")


def _run_folds(select, y: np.ndarray, folds: int, repeats: int, seed: int, notes: list[str]):
    # lazy: scikit-learn is heavy; only where it is used
    from sklearn.model_selection import RepeatedStratifiedKFold

    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    aucs, selected = [], []
    unscored = failed = 0
    for train_idx, test_idx in splitter.split(np.zeros(len(y)), y):
        score, names = select(train_idx, test_idx, y)
        selected.append(names)
        if score is None:
            failed += 1
            aucs.append(float("nan"))
            continue
        ok = ~np.isnan(score)
        unscored += int((~ok).sum())
        aucs.append(_auc(y[test_idx][ok], score[ok]))
    if failed:
        notes.append(f"{failed} of {folds * repeats} folds: no model could be selected")
    if unscored:
        notes.append(f"{unscored} held-out patient-fold(s) missing a selected feature not scored")
    return aucs, selected
