"""The selection (univariable screen + backward elimination) on a numeric matrix, for resampling.

Repeated cross-validation and the permutation test against chance run the whole selection
thousands of times on a few dozen rows. :func:`engine.stats.logistic.multivariable_logistic`
does it on a DataFrame (encodings, summary tables, profile CIs, statsmodels' Logit): about
0.2 s a selection. :func:`select_numeric` runs the same procedure on a float matrix of numeric
candidates with NumPy only:

* univariable fits on each candidate's non-missing rows; separation first (for one predictor it
  is exact and closed-form: the cases' and the controls' values do not overlap, which is what the
  linear programme of :func:`engine.stats._fit.has_separation` finds in one dimension), maximum
  likelihood by Newton-Raphson (statsmodels' method, same tolerance) with Wald p, Firth's penalised
  likelihood with penalised likelihood-ratio p under separation;
* candidates with p < ``p_enter`` enter (none: the best one alone), complete cases over them,
  exactly collinear ones dropped (:func:`engine.stats.logistic.drop_collinear`'s rule), then the
  largest p removed while it is above ``p_remove``.

The choices are those of :func:`~engine.stats.logistic.multivariable_logistic` step for step; a
test runs both on random tables and compares the selected variables and the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

from engine.stats._fit import ABSURD_STD_COEF, _firth, constant_columns, firth_lr_test, has_separation

#: statsmodels' ``Logit.fit(method="newton", maxiter=100, tol=1e-10)``, as the DataFrame path uses.
NEWTON_MAXITER = 100
NEWTON_TOL = 1e-10
#: Residual RMS (in SD units) below which a column is an exact linear combination (as logistic.COLLINEAR_TOL).
COLLINEAR_TOL = 1e-7
#: Univariable p-values this close (relative) are a tie, broken by candidate order (x and 100 - x).
TIE_RTOL = 1e-9


@dataclass
class SelectedModel:
    """A selection's final model, in standardised space; ``columns`` index the candidate matrix."""

    columns: list[int]
    params: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    variables: list[int] = field(default_factory=list)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label = 1) per row of the candidate matrix ``X``; NaN where a selected column is missing."""
        Z = (X[:, self.columns] - self.means) / self.scales
        return special.expit(self.params[0] + Z @ self.params[1:])


def _newton(X1: np.ndarray, y: np.ndarray):
    """Maximum likelihood by Newton-Raphson: ``params, cov, converged`` (None when singular)."""
    beta = np.zeros(X1.shape[1])
    converged = False
    try:
        for _ in range(NEWTON_MAXITER):
            prob = special.expit(X1 @ beta)
            info = X1.T @ (X1 * (prob * (1.0 - prob))[:, None])
            step = np.linalg.solve(info, X1.T @ (y - prob))
            beta = beta + step
            if np.all(np.abs(step) < NEWTON_TOL):
                converged = True
                break
        prob = special.expit(X1 @ beta)
        cov = np.linalg.inv(X1.T @ (X1 * (prob * (1.0 - prob))[:, None]))
    except np.linalg.LinAlgError:
        return None, None, False
    return beta, cov, converged


def _wald_p(params: np.ndarray, cov: np.ndarray, indices: list[int]) -> float:
    """Joint Wald p that ``params[indices]`` are zero (one index: the two-sided z test)."""
    if len(indices) == 1:
        i = indices[0]
        return float(2.0 * special.ndtr(-abs(params[i]) / np.sqrt(max(cov[i, i], 0.0))))
    b = params[indices]
    try:
        chi2 = float(b @ np.linalg.solve(cov[np.ix_(indices, indices)], b))
    except np.linalg.LinAlgError:
        return float("nan")
    return float(special.chdtrc(len(indices), chi2))


def _fit(Z: np.ndarray, y: np.ndarray, separated: bool | None, owners: list[int] | None = None):
    """One fit on a standardised design, deciding as :func:`engine.stats._fit.fit_standardised` does.

    Returns ``(params, p per variable, status)`` (a variable: the columns of one ``owners`` value,
    tested jointly as the DataFrame path tests a categorical's dummies; default one per column).
    Status ``ok`` (maximum likelihood, Wald p),
    ``separation`` (Firth, penalised likelihood-ratio p), ``failed`` (maximum likelihood did not
    converge without separation: Firth's estimate and p, which a univariable screen does not use)
    or ``none`` (nothing could be fitted; params None). ``separated`` None: decided here, the linear
    programme only when Newton-Raphson does not converge (a converged Newton-Raphson has found the
    maximum, which does not exist under separation; the programme costs ten Newton fits).
    """
    X1 = np.hstack([np.ones((len(y), 1)), Z])
    k = Z.shape[1]
    owners = list(range(k)) if owners is None else owners
    groups = [[j + 1 for j in range(k) if owners[j] == o] for o in dict.fromkeys(owners)]
    if not separated:
        params, cov, converged = _newton(X1, y)
        if params is not None and np.all(np.isfinite(params)):
            if np.max(np.abs(params[1:]), initial=0.0) > ABSURD_STD_COEF:
                separated = True
            elif converged and np.all(np.isfinite(cov)):
                return params, np.array([_wald_p(params, cov, g) for g in groups]), "ok"
        if separated is None:
            separated = has_separation(X1, y)
    try:
        params, _, _, _, penalised = _firth(X1, y)
    except np.linalg.LinAlgError:
        return None, np.full(len(groups), np.nan), "none"
    if not np.all(np.isfinite(params)):
        return None, np.full(len(groups), np.nan), "none"
    p = np.array([firth_lr_test(X1, y, g, penalised)[1] for g in groups])
    return params, p, "separation" if separated else "failed"


def _standardise(X: np.ndarray):
    means = X.mean(axis=0)
    scales = X.std(axis=0, ddof=1) if len(X) > 1 else np.ones(X.shape[1])
    scales = np.where(np.isfinite(scales) & (scales > 0), scales, 1.0)
    return (X - means) / scales, means, scales


def _batched_newton(Z: np.ndarray, M: np.ndarray, y: np.ndarray):
    """Every univariable ML fit at once: column ``j`` of ``Z`` on the rows where ``M[:, j]`` is 1.

    Newton-Raphson on the 2 x 2 information of each column (closed-form inverse), statsmodels'
    iteration limit and tolerance. Returns ``intercepts, slopes, slope p (Wald), converged``.
    """
    k = Z.shape[1]
    b0, b1 = np.zeros(k), np.zeros(k)
    yM = y[:, None] * M
    converged = np.zeros(k, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(NEWTON_MAXITER):
            prob = special.expit(b0 + b1 * Z) * M
            w = prob * (1.0 - prob)
            resid = yM - prob
            g0, g1 = resid.sum(axis=0), (resid * Z).sum(axis=0)
            i00, i01, i11 = w.sum(axis=0), (w * Z).sum(axis=0), (w * Z * Z).sum(axis=0)
            det = i00 * i11 - i01 * i01
            s0, s1 = (i11 * g0 - i01 * g1) / det, (i00 * g1 - i01 * g0) / det
            moving = ~converged
            b0[moving] += s0[moving]
            b1[moving] += s1[moving]
            converged |= (np.abs(s0) < NEWTON_TOL) & (np.abs(s1) < NEWTON_TOL)
            if converged.all():
                break
        prob = special.expit(b0 + b1 * Z) * M
        w = prob * (1.0 - prob)
        i00, i01, i11 = w.sum(axis=0), (w * Z).sum(axis=0), (w * Z * Z).sum(axis=0)
        se1 = np.sqrt(i00 / (i00 * i11 - i01 * i01))
        p = 2.0 * special.ndtr(-np.abs(b1 / se1))
    converged &= np.isfinite(b0) & np.isfinite(b1) & np.isfinite(p)
    return b0, b1, p, converged


@dataclass
class _Screen:
    """The univariable screen: p per candidate and each fit's standardised params (NaN: not usable)."""

    p: np.ndarray
    params: np.ndarray  # (k, 2)
    means: np.ndarray
    scales: np.ndarray


def univariable_screen(X: np.ndarray, y: np.ndarray) -> _Screen:
    """Per candidate column: the univariable fit on its non-missing rows, as the DataFrame path decides.

    A candidate that is constant among its rows, has one outcome class there, or whose fit fails is
    not usable (p NaN). Separation (closed-form in one dimension) is fitted by Firth.
    """
    n, k = X.shape
    M = (~np.isnan(X)).astype(float)
    count = M.sum(axis=0)
    filled = np.where(M > 0, X, 0.0)
    means = np.where(count > 0, filled.sum(axis=0) / np.maximum(count, 1), 0.0)
    centred = (filled - means) * M
    scales = np.sqrt((centred**2).sum(axis=0) / np.maximum(count - 1, 1))
    events = (y[:, None] * M).sum(axis=0)
    present = M > 0
    high = np.where(present, X, -np.inf).max(axis=0, initial=-np.inf)
    low = np.where(present, X, np.inf).min(axis=0, initial=np.inf)
    size = np.maximum(np.maximum(np.abs(high), np.abs(low)), 1.0)
    constant = (high - low) <= 1e-12 * size  # constant_columns' rule, per column on its rows
    ok = (count > 1) & (events > 0) & (events < count) & ~constant
    scales = np.where(ok & (scales > 0), scales, 1.0)
    Z = centred / scales
    screen = _Screen(np.full(k, np.nan), np.full((k, 2), np.nan), means, scales)
    # one predictor is separated when the cases' and the controls' values do not overlap
    case, control = present & (y[:, None] > 0.5), present & (y[:, None] <= 0.5)
    case_low, case_high = np.where(case, X, np.inf).min(axis=0), np.where(case, X, -np.inf).max(axis=0)
    control_low, control_high = np.where(control, X, np.inf).min(axis=0), np.where(control, X, -np.inf).max(axis=0)
    separated = ok & ((case_low >= control_high) | (case_high <= control_low))
    plain = ok & ~separated
    if plain.any():
        b0, b1, p, converged = _batched_newton(Z[:, plain], M[:, plain], y)
        absurd = np.isfinite(b1) & (np.abs(b1) > ABSURD_STD_COEF)
        fine = converged & ~absurd
        index = np.flatnonzero(plain)
        screen.p[index[fine]] = p[fine]
        screen.params[index[fine]] = np.column_stack([b0, b1])[fine]
        separated[index[absurd]] = True  # an unbounded estimate: separation, as the ML path decides
    for j in np.flatnonzero(separated):
        rows = M[:, j] > 0
        params, p, status = _fit(Z[rows, j][:, None], y[rows], True)
        if status == "separation":
            screen.p[j], screen.params[j] = p[0], params
    return screen


@dataclass
class CandidateMatrix:
    """A model's candidates as the selection sees them: floats, categoricals as level indicators."""

    X: np.ndarray
    groups: list[list[int]]
    categorical: list[bool]

    def select(self, rows: np.ndarray, y: np.ndarray, *, p_enter: float = 0.05,
               p_remove: float = 0.10) -> SelectedModel | None:
        """:func:`select_numeric` on ``rows`` (indices) with their labels ``y``."""
        return select_numeric(self.X[rows], y, groups=self.groups, categorical=self.categorical, p_enter=p_enter,
                              p_remove=p_remove)


def _columns(X: np.ndarray, group: list[int], categorical: bool, rows: np.ndarray | None = None) -> list[int]:
    """A variable's design columns on ``rows``: a numeric one its column; a categorical one the 0/1
    columns of the levels present there but the first (the reference, as ``build_encoding``)."""
    if not categorical:
        return list(group)
    values = X[:, group] if rows is None else X[rows][:, group]
    present = [c for c, any_one in zip(group, (values == 1).any(axis=0), strict=True) if any_one]
    return present[1:]


def _drop_collinear(X: np.ndarray, order: list[int], groups: list[list[int]], categorical: list[bool]) -> list[int]:
    """Variables of ``order`` kept by :func:`engine.stats.logistic.drop_collinear`'s rule (rows: all of ``X``)."""
    n = len(X)
    kept: list[int] = []
    basis_columns = [np.ones(n)]
    for v in order:
        basis = np.column_stack(basis_columns)
        new_columns, collinear = [], False
        for j in _columns(X, groups[v], categorical[v]):
            column = X[:, j]
            sd = column.std(ddof=1) if n > 1 else 0.0
            if not np.isfinite(sd) or sd == 0:
                continue  # constant: the elimination removes it first
            target = (column - column.mean()) / sd
            coef, *_ = np.linalg.lstsq(basis, target, rcond=None)
            collinear |= bool(np.sqrt(np.mean((target - basis @ coef) ** 2)) < COLLINEAR_TOL)
            new_columns.append(target)
        if not collinear:
            kept.append(v)
            basis_columns.extend(new_columns)
    return kept


def _screen(X: np.ndarray, y: np.ndarray, groups: list[list[int]], categorical: list[bool]):
    """Univariable p per variable (NaN: not usable) and the numeric variables' fits."""
    numeric = [v for v in range(len(groups)) if not categorical[v]]
    p = np.full(len(groups), np.nan)
    screen = univariable_screen(X[:, [groups[v][0] for v in numeric]], y)
    fits = {}
    for i, v in enumerate(numeric):
        p[v] = screen.p[i]
        fits[v] = (screen.params[i], screen.means[[i]], screen.scales[[i]])
    for v in range(len(groups)):
        if not categorical[v]:
            continue
        rows = ~np.isnan(X[:, groups[v][0]])
        yr = y[rows]
        columns = _columns(X, groups[v], True, rows)
        if not columns or yr.size == 0 or yr.min() == yr.max():
            continue
        Z, _, _ = _standardise(X[rows][:, columns])
        _, p_variable, status = _fit(Z, yr, None, owners=[0] * len(columns))
        if status in ("ok", "separation"):
            p[v] = p_variable[0]
    return p, fits


def select_numeric(X: np.ndarray, y: np.ndarray, *, groups: list[list[int]] | None = None,
                   categorical: list[bool] | None = None, p_enter: float = 0.05,
                   p_remove: float = 0.10) -> SelectedModel | None:
    """The whole selection on the rows of ``X`` (n, columns; NaN missing) and ``y`` (0/1).

    ``groups``: each candidate variable's columns of ``X`` (default: one numeric variable per
    column); ``categorical``: per variable, whether its columns are the 0/1 indicators of its levels
    (all levels, in ``sorted_levels`` order; NaN where the value is missing). Returns the final model
    (``variables``: the selected variables), or None when no candidate can be fitted.
    """
    groups = [[j] for j in range(X.shape[1])] if groups is None else groups
    categorical = [False] * len(groups) if categorical is None else categorical
    p_uni, fits = _screen(X, y, groups, categorical)
    usable = np.flatnonzero(np.isfinite(p_uni))
    if usable.size == 0:
        return None
    entered = [int(v) for v in usable if p_uni[v] < p_enter]
    if not entered:
        entered = [int(v) for v in usable if p_uni[v] <= p_uni[usable].min() * (1.0 + TIE_RTOL)][:1]
    if len(entered) == 1 and entered[0] in fits:  # its univariable fit, on the same rows, is the model
        params, means, scales = fits[entered[0]]
        return SelectedModel(list(groups[entered[0]]), params.copy(), means, scales, entered)
    rows = ~np.isnan(X[:, [groups[v][0] for v in entered]]).any(axis=1)
    Xr, yr = X[rows], y[rows]
    if yr.size == 0 or yr.min() == yr.max():
        return None
    return _eliminate(Xr, yr, _drop_collinear(Xr, entered, groups, categorical), groups, categorical, p_remove)


def _eliminate(Xr: np.ndarray, yr: np.ndarray, current: list[int], groups: list[list[int]], categorical: list[bool],
               p_remove: float) -> SelectedModel | None:
    """Backward elimination on fixed rows: remove the largest variable p while it is above ``p_remove``."""
    while True:
        columns, owners = [], []
        for v in current:
            own = _columns(Xr, groups[v], categorical[v])
            columns.extend(own)
            owners.extend([v] * len(own))
        fitted = ~constant_columns(Xr[:, columns]) if columns else np.zeros(0, dtype=bool)
        Z, means, scales = _standardise(Xr[:, columns])
        fitted_owners = [o for o, f in zip(owners, fitted, strict=True) if f]
        params_fitted, p_fitted, _ = (_fit(Z[:, fitted], yr, None, owners=fitted_owners) if fitted.any()
                                      else (None, None, "none"))
        if len(current) <= 1 or params_fitted is None or p_fitted is None:
            break
        p_by = dict(zip(dict.fromkeys(fitted_owners), p_fitted, strict=True))
        p = np.array([p_by.get(v, np.inf) if np.isfinite(p_by.get(v, np.inf)) else np.inf for v in current])
        worst = int(np.argmax(p))
        if not p[worst] > p_remove:
            break
        current = [v for i, v in enumerate(current) if i != worst]
    if params_fitted is None:
        return None
    params = np.zeros(len(columns) + 1)
    params[0] = params_fitted[0]
    params[1:][fitted] = params_fitted[1:]
    return SelectedModel(columns, params, means, scales, list(current))
