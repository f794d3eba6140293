"""Logistic fits on a standardised design, separation handling, and reporting in original units.

Every fit in the stats layer goes through :func:`fit_standardised`:

1. Separation check first, exactly, as a linear programme (Konis 2007; the method of R's
   ``detectseparation``): the data are (quasi-)completely separated iff a direction ``b`` exists
   with ``s_i x_i^T b >= 0`` for all rows (``s_i = +1`` for a case, ``-1`` for a control) and
   strict inequality for at least one; then the maximum likelihood estimate does not exist and
   any software's "estimate" is where its optimiser gave up.
2. Without separation: statsmodels ``Logit`` (Newton-Raphson). A ``PerfectSeparationWarning`` or
   a standardised coefficient above :data:`ABSURD_STD_COEF` is treated as separation too.
3. With separation: Firth's penalised likelihood (Firth 1993; Heinze & Schemper 2002, R's
   ``logistf``), which always has a finite estimate. Inference follows logistf's defaults, never
   Wald (the Wald SE of a separated predictor is meaningless, and that predictor is usually the
   strongest one): the p-value of a term (or the joint p of a variable's terms) is the penalised
   likelihood-ratio test ``2 (l*(b) - l*(b | b_J = 0))`` against chi-square(|J|), where the
   restricted fit keeps the penalty of the full design (logistf's ``col.fit``), and the CI is the
   profile penalised-likelihood interval ``{b_j : 2 (l*(b) - max l*(. | b_j)) <= chi2_1(1 - alpha)}``.
   Both are invariant under the z-scoring below, so they hold in original units.

The design is z-scored (mean, sample SD with ddof=1) before fitting for numerical stability
(volumes in mm^3 next to percentages); :func:`term_table` maps the estimates back to original
units exactly (the MLE and its Wald covariance are equivariant under an affine change of the
covariates), so the coefficients, CIs and p-values equal those of a fit on raw data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

#: |coefficient per SD| above this is an unbounded estimate, not an effect (OR per SD > 1e13).
ABSURD_STD_COEF = 30.0


@dataclass
class LogitFit:
    """A fit in standardised space. ``params``/``cov`` include the intercept first."""

    params: np.ndarray
    cov: np.ndarray
    status: str  # 'ok' | 'separation' | 'failed'
    method: str  # 'ml' | 'firth' | 'none'
    converged: bool
    llf: float
    note: str = ""
    #: design with the intercept column and outcome, kept for Firth's likelihood-ratio inference
    X1: np.ndarray | None = None
    y: np.ndarray | None = None
    penalised_llf: float = float("nan")
    #: positions in ``params`` of the columns of ``X1`` (None: all, in order)
    fitted_index: np.ndarray | None = None

    @property
    def usable(self) -> bool:
        return self.method != "none" and bool(np.all(np.isfinite(self.params)))

    def firth_lr_p(self, indices: list[int]) -> float:
        """Penalised likelihood-ratio p that the coefficients at ``indices`` are all zero."""
        if self.method != "firth" or self.X1 is None or self.y is None or not indices:
            return float("nan")
        return firth_lr_test(self.X1, self.y, self._positions(indices), self.penalised_llf)[1]

    def _positions(self, indices: list[int]) -> list[int]:
        if self.fitted_index is None:
            return list(indices)
        lookup = {int(full): pos for pos, full in enumerate(self.fitted_index)}
        return [lookup[int(i)] for i in indices]

    def firth_profile_ci(self, index: int, alpha: float = 0.05) -> tuple[float, float]:
        """Profile penalised-likelihood CI of ``params[index]`` (standardised space)."""
        if self.method != "firth" or self.X1 is None or self.y is None:
            return float("nan"), float("nan")
        full = np.arange(self.params.size) if self.fitted_index is None else np.asarray(self.fitted_index)
        params, cov = self.params[full], self.cov[np.ix_(full, full)]
        return firth_profile_ci(self.X1, self.y, params, cov, self._positions([index])[0], self.penalised_llf, alpha)


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means and sample SDs (ddof=1); a constant column gets scale 1 (it is not fitted)."""
    means = X.mean(axis=0) if X.shape[0] else np.zeros(X.shape[1])
    scales = X.std(axis=0, ddof=1) if X.shape[0] > 1 else np.ones(X.shape[1])
    scales = np.where(np.isfinite(scales) & (scales > 0), scales, 1.0)
    return (X - means) / scales, means, scales


def constant_columns(X: np.ndarray) -> np.ndarray:
    """Boolean mask of columns with a single value (to relative precision)."""
    if X.shape[0] == 0:
        return np.ones(X.shape[1], dtype=bool)
    span = X.max(axis=0) - X.min(axis=0)
    size = np.maximum(np.abs(X).max(axis=0), 1.0)
    return span <= 1e-12 * size


def has_separation(X1: np.ndarray, y: np.ndarray) -> bool:
    """Exact (quasi-)separation check by linear programming (Konis 2007).

    Parameters
    ----------
    X1 : (n, p) ndarray
        Design including the intercept column, preferably standardised.
    y : (n,) ndarray of 0/1
    """
    sign = np.where(y > 0.5, 1.0, -1.0)
    A = sign[:, None] * X1
    n, p = A.shape
    # maximise sum(A b) subject to A b >= 0 and -1 <= b <= 1 (the box keeps the LP bounded)
    result = optimize.linprog(
        c=-A.sum(axis=0), A_ub=-A, b_ub=np.zeros(n), bounds=[(-1.0, 1.0)] * p, method="highs"
    )
    if result.status != 0:
        return False
    # HiGHS' feasibility tolerance is 1e-7 per row: allow that much slack in the objective
    return bool(-result.fun > 1e-6 * max(n, 1))


def _penalised(X1: np.ndarray, y: np.ndarray, beta: np.ndarray):
    """Firth's penalised log-likelihood ``l(b) + 0.5 log det I(b)`` and its pieces."""
    eta = X1 @ beta
    prob = special.expit(eta)
    w = prob * (1.0 - prob)
    info = X1.T @ (X1 * w[:, None])
    sign, logdet = np.linalg.slogdet(info)
    loglik = float(np.sum(y * special.log_expit(eta) + (1.0 - y) * special.log_expit(-eta)))
    value = loglik + 0.5 * logdet if sign > 0 else -np.inf
    return value, info, prob, w, loglik


def _firth(
    X1: np.ndarray,
    y: np.ndarray,
    *,
    start: np.ndarray | None = None,
    free: np.ndarray | None = None,
    maxiter: int = 200,
    tol: float = 1e-9,
    max_step: float = 5.0,
):
    """Firth-penalised logistic regression by modified-score Newton steps with step halving.

    ``free`` (boolean, one per column of ``X1``) restricts the fit to those coefficients, the
    others staying at ``start``; the penalty always uses the full design (logistf's ``col.fit``).
    Returns ``beta, cov (inverse full information), converged, loglik, penalised loglik``.
    """
    p = X1.shape[1]
    beta = np.zeros(p) if start is None else np.asarray(start, dtype=float).copy()
    free = np.ones(p, dtype=bool) if free is None else np.asarray(free, dtype=bool)
    current, info, prob, w, loglik = _penalised(X1, y, beta)
    converged = False
    for _ in range(maxiter):
        inv = np.linalg.inv(info)
        hat = w * np.einsum("ij,jk,ik->i", X1, inv, X1)
        score = X1.T @ (y - prob + hat * (0.5 - prob))
        step = np.zeros(p)
        if free.any():
            step[free] = np.linalg.solve(info[np.ix_(free, free)], score[free])
        largest = np.max(np.abs(step), initial=0.0)
        if largest > max_step:
            step *= max_step / largest
        candidate = None
        for _halving in range(40):
            candidate = _penalised(X1, y, beta + step)
            if candidate[0] >= current - 1e-12:
                break
            step /= 2.0
        beta = beta + step
        assert candidate is not None  # the halving loop ran at least once
        current, info, prob, w, loglik = candidate
        if np.max(np.abs(step), initial=0.0) < tol:
            converged = True
            break
    cov = np.linalg.inv(info)
    return beta, cov, converged, loglik, current


def firth_lr_test(X1: np.ndarray, y: np.ndarray, indices: list[int], penalised_full: float) -> tuple[float, float]:
    """Penalised likelihood-ratio test that ``beta[indices] = 0`` (Heinze & Schemper 2002).

    Returns ``(chi2, p)`` with ``chi2 = 2 (l*_full - l*_restricted)`` on ``len(indices)`` df.
    """
    free = np.ones(X1.shape[1], dtype=bool)
    free[list(indices)] = False
    _, _, _, _, restricted = _firth(X1, y, free=free)
    chi2 = max(0.0, 2.0 * (penalised_full - restricted))
    return float(chi2), float(stats.chi2.sf(chi2, df=len(indices)))


def firth_profile_ci(
    X1: np.ndarray, y: np.ndarray, beta: np.ndarray, cov: np.ndarray, index: int, penalised_full: float,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Profile penalised-likelihood CI of ``beta[index]`` (logistf's default ``pl = TRUE``).

    The bounds solve ``2 (l*_full - max_{b: b_index = t} l*(b)) = chi2_1(1 - alpha)`` on each side
    of the estimate, by bracketing outwards in steps of the Wald SE and then Brent's method.

    The profile deficit at ``t`` is a function of ``t`` alone (a warm start from the previous
    evaluation made its value depend on the path, so a bracket's two ends could share a sign). Under
    separation the penalised likelihood can have several local maxima at a fixed ``t``, so each
    evaluation keeps the better of two fits: one from the estimate with ``b_index = t``, one from
    the Wald ridge (the other coefficients moved by their regression on ``b_index``,
    ``cov[:, index] / cov[index, index] * (t - b_index)``), which follows the profile far out. A
    side whose deficit never reaches the critical value within the search is open (``-inf`` /
    ``+inf``: the profile is unbounded there); a side that cannot be solved is NaN. Never raises.
    """
    target = stats.chi2.ppf(1.0 - alpha, df=1) / 2.0
    free = np.ones(X1.shape[1], dtype=bool)
    free[index] = False
    se = float(np.sqrt(max(cov[index, index], 1e-12)))
    ridge = cov[:, index] / cov[index, index] if cov[index, index] > 0 else np.zeros(beta.size)

    def deficit(t: float) -> float:
        at_estimate = beta.copy()
        at_estimate[index] = t
        best = -np.inf
        for start in (at_estimate, beta + ridge * (t - beta[index])):
            start[index] = t
            _, _, _, _, value = _firth(X1, y, start=start, free=free, maxiter=200, tol=1e-10)
            best = max(best, value)
        return (penalised_full - best) - target

    low = _profile_bound(deficit, float(beta[index]), -1.0, se)
    high = _profile_bound(deficit, float(beta[index]), 1.0, se)
    return low, high


def _profile_bound(deficit, estimate: float, direction: float, se: float) -> float:
    """One side of a profile interval: bracket ``deficit`` outwards from ``estimate``, then Brent."""
    inner, outer = estimate, estimate + direction * se
    try:
        outer_value = deficit(outer)
        for _ in range(60):
            if outer_value > 0:
                break
            inner, outer = outer, outer + direction * se
            se *= 1.5
            outer_value = deficit(outer)
        else:
            return direction * np.inf  # the deficit never reaches the critical value: open on this side
        inner_value = deficit(inner)
        if not (np.isfinite(outer_value) and np.isfinite(inner_value)) or inner_value > 0:
            return float("nan")
        return float(optimize.brentq(deficit, min(inner, outer), max(inner, outer), xtol=1e-9))
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
        return float("nan")


def _ml(X1: np.ndarray, y: np.ndarray):
    # lazy: statsmodels is heavy; only where a model is fitted
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    separation_warned = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sm.Logit(y, X1).fit(method="newton", maxiter=100, disp=0, tol=1e-10)
        except Exception as exc:  # noqa: BLE001 - PerfectSeparationError in old statsmodels, LinAlgError...
            if "separation" in type(exc).__name__.lower() or "separation" in str(exc).lower():
                return None, True, str(exc)
            return None, False, f"{type(exc).__name__}: {exc}"
    for w in caught:
        if issubclass(w.category, PerfectSeparationWarning):
            separation_warned = True
    return result, separation_warned, ""


def fit_standardised(Z: np.ndarray, y: np.ndarray) -> LogitFit:
    """Fit ``logit P(y=1) = b0 + Z b`` (``Z`` already standardised, no intercept column)."""
    n, k = Z.shape
    X1 = np.hstack([np.ones((n, 1)), Z])
    nan_fit = LogitFit(np.full(k + 1, np.nan), np.full((k + 1, k + 1), np.nan), "failed", "none", False, np.nan)
    if n == 0 or y.min() == y.max():
        nan_fit.note = "only one outcome class among the rows"
        return nan_fit
    separated = has_separation(X1, y)
    note = ""
    if not separated:
        result, warned, error = _ml(X1, y)
        if result is not None and not warned:
            params = np.asarray(result.params, dtype=float)
            cov = np.asarray(result.cov_params(), dtype=float)
            converged = bool(result.mle_retvals.get("converged", False))
            if np.all(np.isfinite(params)) and np.max(np.abs(params[1:]), initial=0.0) > ABSURD_STD_COEF:
                separated = True
            elif converged and np.all(np.isfinite(cov)):
                return LogitFit(params, cov, "ok", "ml", True, float(result.llf))
            else:
                note = "maximum likelihood did not converge; Firth-penalised estimate used"
        elif warned or (result is None and not error):
            separated = True
        else:
            note = f"maximum likelihood failed ({error}); Firth-penalised estimate used"
    try:
        params, cov, converged, llf, penalised = _firth(X1, y)
    except np.linalg.LinAlgError as exc:
        nan_fit.note = (note + "; " if note else "") + f"Firth fit failed: {exc}"
        return nan_fit
    if separated:
        return LogitFit(
            params, cov, "separation", "firth", converged, float(llf),
            "(quasi-)complete separation: the maximum likelihood estimate does not exist; estimates from "
            "Firth's penalised likelihood, p-values from penalised likelihood-ratio tests, profile CIs",
            X1=X1, y=y, penalised_llf=float(penalised),
        )
    return LogitFit(params, cov, "failed", "firth", converged, float(llf), note, X1=X1, y=y,
                    penalised_llf=float(penalised))


def wald_p(fit: LogitFit, indices: list[int]) -> float:
    """Joint Wald test p-value that the coefficients at ``indices`` (into ``params``) are all zero."""
    if not fit.usable or not indices:
        return float("nan")
    b = fit.params[indices]
    V = fit.cov[np.ix_(indices, indices)]
    try:
        chi2 = float(b @ np.linalg.solve(V, b))
    except np.linalg.LinAlgError:
        return float("nan")
    return float(stats.chi2.sf(chi2, df=len(indices)))


def to_original_units(params: np.ndarray, cov: np.ndarray, means: np.ndarray, scales: np.ndarray):
    """Map standardised-space estimates to original units.

    With ``z_j = (x_j - m_j) / s_j``: ``beta_j = b_j / s_j`` and
    ``beta_0 = b_0 - sum_j b_j m_j / s_j``, i.e. ``beta = T b`` and ``Cov(beta) = T Cov(b) T^T``.
    """
    k = len(means)
    T = np.zeros((k + 1, k + 1))
    T[0, 0] = 1.0
    T[0, 1:] = -means / scales
    T[1:, 1:] = np.diag(1.0 / scales)
    return T @ params, T @ cov @ T.T


TERM_COLUMNS = [
    "variable", "term", "coef", "se", "z", "p", "p_variable", "or", "or_ci_low", "or_ci_high",
    "or_per_sd", "or_per_sd_ci_low", "or_per_sd_ci_high",
]


def term_table(
    fit: LogitFit,
    columns: list[str],
    owners: list[str],
    means: np.ndarray,
    scales: np.ndarray,
    *,
    dummy: list[bool],
    fitted: np.ndarray | None = None,
    alpha: float = 0.05,
    intercept: bool = True,
    profile_ci: bool = True,
) -> pd.DataFrame:
    """One row per term in original units (plus the intercept first when ``intercept``).

    ``or`` is per unit of the column (per presence for a dummy), ``or_per_sd`` per one sample SD
    (``exp(b_std)``; NaN for dummies, where it has no reading). A Firth fit (``method == "firth"``)
    reports its penalised estimates with penalised likelihood-ratio p-values and, when
    ``profile_ci``, profile penalised-likelihood CIs (NaN otherwise: they cost ~30 refits each).
    ``fitted`` marks the columns that were fitted (constant columns are not: their rows are NaN).
    """
    k = len(columns)
    fitted = np.ones(k, dtype=bool) if fitted is None else fitted
    zcrit = stats.norm.ppf(1.0 - alpha / 2.0)
    coef, cov = to_original_units(fit.params, fit.cov, means, scales)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    se_std = np.sqrt(np.clip(np.diag(fit.cov), 0.0, None))
    firth = fit.method == "firth"
    z = coef / se
    p = 2.0 * stats.norm.sf(np.abs(z))
    report_estimates = fit.usable and fit.status in ("ok", "separation")
    variable_index: dict[str, list[int]] = {}
    for j, owner in enumerate(owners):
        if fitted[j]:
            variable_index.setdefault(owner, []).append(j + 1)
    rows: list[dict[str, Any]] = []
    if intercept:
        # the intercept's own test is not reported for Firth fits (its zero is not the z-scored zero)
        rows.append({"variable": "(intercept)", "term": "(intercept)",
                     "coef": coef[0] if report_estimates else np.nan,
                     "se": se[0] if report_estimates else np.nan,
                     "z": np.nan if firth or not report_estimates else z[0],
                     "p": np.nan if firth else p[0], "p_variable": np.nan if firth else p[0]})
    for j in range(k):
        row: dict[str, Any] = {"variable": owners[j], "term": columns[j]}
        if not fitted[j]:
            rows.append(row)
            continue
        i = j + 1
        members = variable_index.get(owners[j], [])
        if firth:
            # penalised likelihood-ratio tests (logistf), never Wald
            row["p"] = fit.firth_lr_p([i])
            row["p_variable"] = row["p"] if members == [i] else fit.firth_lr_p(members)
        else:
            row["p"] = p[i]
            row["p_variable"] = wald_p(fit, members)
        if report_estimates:
            if firth:
                low_std, high_std = fit.firth_profile_ci(i, alpha) if profile_ci else (np.nan, np.nan)
            else:
                low_std, high_std = fit.params[i] - zcrit * se_std[i], fit.params[i] + zcrit * se_std[i]
            # a slope's CI maps to original units by the same positive scale as the slope
            low, high = low_std / scales[j], high_std / scales[j]
            row.update(coef=coef[i], se=se[i], z=np.nan if firth else z[i],
                       **{"or": np.exp(coef[i]), "or_ci_low": np.exp(low), "or_ci_high": np.exp(high)})
            if not dummy[j]:
                row.update(or_per_sd=np.exp(fit.params[i]), or_per_sd_ci_low=np.exp(low_std),
                           or_per_sd_ci_high=np.exp(high_std))
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in TERM_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    return table[TERM_COLUMNS]
