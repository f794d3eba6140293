"""ROC analysis: AUC with DeLong variance and CI, DeLong's paired test, Youden cut-off, metrics.

Conventions
-----------
* The AUC is ``P(score_case > score_control) + 0.5 P(tie)`` (the Mann-Whitney form; equal to
  scikit-learn's ``roc_auc_score``).
* A patient is called positive when ``score >= cutoff``; the cut-offs are the distinct scores
  (scikit-learn's ``roc_curve`` thresholds), so a cut-off is always an observed score.
* The CI is the plain normal interval ``auc +/- z_{1-alpha/2} sqrt(var)`` clipped to [0, 1],
  as R's pROC does for ``ci.auc(method="delong")``; with a perfect AUC the variance is 0 and
  the CI collapses to [1, 1].
* DeLong variance: DeLong, DeLong & Clarke-Pearson (1988), computed with the O(n log n)
  midrank algorithm of Sun & Xu (2014), "Fast implementation of DeLong's algorithm for
  comparing the areas under correlated receiver operating characteristic curves", IEEE SPL 21.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _as_binary(y_true) -> np.ndarray:
    y = np.asarray(y_true, dtype=float).ravel()
    if np.any(~np.isin(y, (0.0, 1.0))):
        raise ValueError("y_true must contain only 0 and 1")
    return y.astype(int)


def _clean(y_true, *scores):
    """Drop rows with a missing label or any missing score."""
    y = np.asarray(y_true, dtype=float).ravel()
    arrays = [np.asarray(s, dtype=float).ravel() for s in scores]
    for a in arrays:
        if a.shape != y.shape:
            raise ValueError(f"y_true has {y.size} values but a score has {a.size}")
    keep = ~np.isnan(y)
    for a in arrays:
        keep &= ~np.isnan(a)
    return (_as_binary(y[keep]), *[a[keep] for a in arrays])


def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based; tied values share the mean of their ranks), O(n log n)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    first = last - counts + 1
    return (0.5 * (first + last))[inverse.ravel()].astype(float)


def _delong_components(positives: np.ndarray, negatives: np.ndarray):
    """AUCs and structural components for ``k`` scores.

    Parameters
    ----------
    positives : (k, m) ndarray
    negatives : (k, n) ndarray

    Returns
    -------
    aucs : (k,), v10 : (k, m), v01 : (k, n)
    """
    k, m = positives.shape
    n = negatives.shape[1]
    aucs = np.empty(k)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        tx = _midrank(positives[r])
        ty = _midrank(negatives[r])
        tz = _midrank(np.concatenate([positives[r], negatives[r]]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    return aucs, v10, v01


def _delong_cov(y: np.ndarray, scores: np.ndarray):
    positives = scores[:, y == 1]
    negatives = scores[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("the AUC needs at least one case (1) and one control (0)")
    aucs, v10, v01 = _delong_components(positives, negatives)
    if m < 2 or n < 2:
        return aucs, np.full((scores.shape[0], scores.shape[0]), np.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_auc_variance(y_true, score) -> tuple[float, float]:
    """AUC and its DeLong variance.

    Parameters
    ----------
    y_true : (n,) array of 0/1
    score : (n,) array, higher = more likely a case

    Returns
    -------
    auc, variance : float
        ``variance = S10 / m + S01 / n`` with ``S10``, ``S01`` the sample variances (ddof=1) of the
        structural components over the ``m`` cases and ``n`` controls; NaN when a class has
        fewer than 2 patients. Rows with a NaN label or score are dropped.
    """
    y, s = _clean(y_true, score)
    aucs, cov = _delong_cov(y, s[None, :])
    return float(aucs[0]), float(cov[0, 0])


def auc_ci(y_true, score, alpha: float = 0.05) -> tuple[float, float, float]:
    """AUC with its DeLong normal CI ``auc +/- z sqrt(var)``, clipped to [0, 1] (as pROC)."""
    auc, variance = delong_auc_variance(y_true, score)
    if not np.isfinite(variance):
        return auc, float("nan"), float("nan")
    half = stats.norm.ppf(1.0 - alpha / 2.0) * np.sqrt(max(variance, 0.0))
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def delong_test(y_true, score1, score2) -> tuple[float, float]:
    """DeLong's test of two correlated AUCs measured on the same patients.

    Returns
    -------
    z, p : float
        ``z = (auc1 - auc2) / sqrt(var1 + var2 - 2 cov12)``, two-sided normal p. When the
        difference's variance is 0 (e.g. identical rankings) and the AUCs are equal, ``(0, 1)``;
        NaN when it cannot be computed.
    """
    y, s1, s2 = _clean(y_true, score1, score2)
    aucs, cov = _delong_cov(y, np.vstack([s1, s2]))
    diff = aucs[0] - aucs[1]
    variance = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    if not np.isfinite(variance):
        return float("nan"), float("nan")
    if variance <= 1e-15:
        if abs(diff) < 1e-12:
            return 0.0, 1.0
        return float("nan"), float("nan")
    z = diff / np.sqrt(variance)
    return float(z), float(2.0 * stats.norm.sf(abs(z)))


def binary_metrics(y_true, score, cutoff: float) -> dict:
    """Confusion counts and rates when ``score >= cutoff`` is called positive.

    Returns ``sensitivity, specificity, accuracy, ppv, npv, tp, fp, tn, fn`` (rates NaN when
    their denominator is 0). Rows with a NaN label or score are dropped.
    """
    y, s = _clean(y_true, score)
    call = s >= cutoff
    tp = int(np.sum(call & (y == 1)))
    fp = int(np.sum(call & (y == 0)))
    tn = int(np.sum(~call & (y == 0)))
    fn = int(np.sum(~call & (y == 1)))

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    return {
        "cutoff": float(cutoff),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def youden_cutoff(y_true, score) -> tuple[float, float, float, float]:
    """Cut-off maximising Youden's J = sensitivity + specificity - 1, with exact ties.

    Candidate cut-offs are the distinct observed scores; positive means ``score >= cutoff``.
    J is compared exactly as the integer ``P N J = tp N - fp P`` (``P`` cases, ``N`` controls,
    ``tp``/``fp`` called positive at the cut-off): in floating point ``tp/P - fp/N`` can differ
    in the last bit between cut-offs whose J is equal, and ``argmax`` would then pick an
    arbitrary one. Among exact ties the highest cut-off wins, the first that R's pROC lists
    (``coords(roc, "best", best.method = "youden")``).

    Returns
    -------
    cutoff, sensitivity, specificity, youden_j : float
    """
    y, s = _clean(y_true, score)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("the Youden cut-off needs at least one case (1) and one control (0)")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    cutoffs, inverse = np.unique(s, return_inverse=True)
    cutoffs = cutoffs[::-1]  # highest first
    inverse = cutoffs.size - 1 - inverse.ravel()
    tp = np.cumsum(np.bincount(inverse, weights=y, minlength=cutoffs.size)).astype(np.int64)
    fp = np.cumsum(np.bincount(inverse, weights=1 - y, minlength=cutoffs.size)).astype(np.int64)
    scaled_j = tp * n_neg - fp * n_pos  # exact integers
    best = int(np.argmax(scaled_j))  # the first maximum is the highest cut-off
    sensitivity = tp[best] / n_pos
    specificity = 1.0 - fp[best] / n_neg
    return float(cutoffs[best]), float(sensitivity), float(specificity), float(scaled_j[best] / (n_pos * n_neg))


def roc_summary(y_true, score, *, train_cutoff: float | None = None, alpha: float = 0.05) -> dict:
    """Everything Table 5 reports for one model on one split.

    Returns
    -------
    dict
        ``n, n_pos, n_neg, auc, auc_variance, ci`` ([low, high]), ``alpha``, ``youden`` (the
        split's own Youden cut-off and its :func:`binary_metrics` plus ``youden_j``),
        ``at_train_cutoff`` (metrics at ``train_cutoff``, or None) and ``note``. With a single
        class the AUC and the Youden cut-off are NaN/None and ``note`` says why.
    """
    y, s = _clean(y_true, score)
    n_pos = int(y.sum())
    out = {
        "n": int(y.size), "n_pos": n_pos, "n_neg": int(y.size - n_pos),
        "auc": float("nan"), "auc_variance": float("nan"), "ci": [float("nan"), float("nan")],
        "alpha": float(alpha), "youden": None, "at_train_cutoff": None, "note": "",
    }
    if train_cutoff is not None and np.isfinite(train_cutoff) and y.size:
        out["at_train_cutoff"] = binary_metrics(y, s, train_cutoff)
    if n_pos == 0 or n_pos == y.size:
        out["note"] = "AUC undefined: only one outcome class" if y.size else "no patients"
        return out
    auc, variance = delong_auc_variance(y, s)
    _, low, high = auc_ci(y, s, alpha=alpha)
    cutoff, _, _, j = youden_cutoff(y, s)
    youden = binary_metrics(y, s, cutoff)
    youden["youden_j"] = j
    out.update(auc=auc, auc_variance=variance, ci=[low, high], youden=youden)
    if not np.isfinite(variance):
        out["note"] = "DeLong variance undefined: fewer than 2 patients in a class"
    return out
