"""A frozen logistic model that scores new patients with numpy alone, and its cross-validation.

:class:`LogisticModel` is what ``model.json`` stores for each model of the study: the ordered
features, the categorical encoding learnt at fit time (one-hot against a reference level), the
standardisation (training mean and sample SD of every design column) and the coefficients in
standardised space, intercept first. Scoring is

    z_j = (x_j - mean_j) / scale_j,    eta = coef_0 + sum_j coef_j z_j,    p = 1 / (1 + exp(-eta))

evaluated column by column (no BLAS reduction), so a patient's probability does not depend on
which other rows are scored with it and ``sarco apply`` reproduces the training run bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special

from engine.stats._design import build_encoding, design_columns, design_matrix, missing_rows, resolve_categorical
from engine.stats._fit import LogitFit, constant_columns, fit_standardised, standardise, term_table, to_original_units

BUNDLE_MODEL_FORMAT = "sarco-logistic-model/1"


@dataclass
class LogisticModel:
    """A fitted logistic model, JSON-serialisable, scored with numpy only.

    Attributes
    ----------
    name : str
        Model name (``ct_otsu``, ``clinical``, ``combined``...).
    features : list of str
        Input columns, in order.
    encoding : dict
        Per feature ``{"kind": "numeric"}`` or
        ``{"kind": "categorical", "levels": [...], "reference": level}``.
    design_columns : list of str
        Columns of the design matrix (a categorical feature contributes ``feature[level]`` for every
        non-reference level).
    means, scales : list of float
        Standardisation of each design column (training mean, sample SD with ddof=1).
    coef : list of float
        Intercept then one coefficient per design column, in standardised space.
    method : str
        ``ml`` (statsmodels maximum likelihood) or ``firth`` (penalised, after separation).
    """

    name: str
    features: list[str]
    encoding: dict[str, dict]
    design_columns: list[str]
    means: list[float]
    scales: list[float]
    coef: list[float]
    method: str = "ml"
    status: str = "ok"
    n_train: int = 0
    n_events: int = 0
    notes: list[str] = field(default_factory=list)

    def design_matrix(self, df: pd.DataFrame, *, notes: list[str] | None = None) -> np.ndarray:
        """Design matrix in original units, ``(len(df), len(design_columns))``; NaN where missing."""
        return design_matrix(df, self.features, self.encoding, notes=notes)

    def linear_predictor(self, df: pd.DataFrame, *, notes: list[str] | None = None) -> np.ndarray:
        """``eta`` (log-odds) per row; NaN for a row missing any feature."""
        X = self.design_matrix(df, notes=notes)
        coef = np.asarray(self.coef, dtype=float)
        eta = np.full(X.shape[0], coef[0], dtype=float)
        for j in range(X.shape[1]):
            eta = eta + coef[j + 1] * ((X[:, j] - self.means[j]) / self.scales[j])
        return eta

    def predict_proba(self, df: pd.DataFrame, *, notes: list[str] | None = None) -> np.ndarray:
        """Probability of sarcopenia per row, ``(len(df),)``; NaN where a feature is missing.

        A categorical level unseen at fit time is scored as the reference level and a note is
        appended to ``notes`` when given.
        """
        return special.expit(self.linear_predictor(df, notes=notes))

    def coefficients(self) -> pd.DataFrame:
        """Coefficients in original units (intercept first) with the per-unit and per-SD odds ratios."""
        coef = np.asarray(self.coef, dtype=float)
        means = np.asarray(self.means, dtype=float)
        scales = np.asarray(self.scales, dtype=float)
        original, _ = to_original_units(coef, np.zeros((coef.size, coef.size)), means, scales)
        names = ["(intercept)"] + list(self.design_columns)
        return pd.DataFrame(
            {
                "term": names,
                "coef": original,
                "or": np.r_[np.nan, np.exp(original[1:])],
                "or_per_sd": np.r_[np.nan, np.exp(coef[1:])],
            }
        )

    def to_dict(self) -> dict:
        """JSON-safe dict (floats, lists, strings); :meth:`from_dict` restores it exactly."""
        return {
            "format": BUNDLE_MODEL_FORMAT,
            "name": str(self.name),
            "features": [str(f) for f in self.features],
            "encoding": {
                str(k): (
                    {"kind": "categorical", "levels": [str(x) for x in v["levels"]],
                     "reference": None if v["reference"] is None else str(v["reference"])}
                    if v["kind"] == "categorical" else {"kind": "numeric"}
                )
                for k, v in self.encoding.items()
            },
            "design_columns": [str(c) for c in self.design_columns],
            "means": [float(x) for x in self.means],
            "scales": [float(x) for x in self.scales],
            "coef": [float(x) for x in self.coef],
            "method": str(self.method),
            "status": str(self.status),
            "n_train": int(self.n_train),
            "n_events": int(self.n_events),
            "notes": [str(n) for n in self.notes],
        }

    @classmethod
    def from_dict(cls, data: dict) -> LogisticModel:
        fmt = data.get("format", BUNDLE_MODEL_FORMAT)
        if fmt != BUNDLE_MODEL_FORMAT:
            raise ValueError(f"unsupported model format {fmt!r}; expected {BUNDLE_MODEL_FORMAT!r}")
        model = cls(
            name=data["name"],
            features=list(data["features"]),
            encoding={k: dict(v) for k, v in data["encoding"].items()},
            design_columns=list(data["design_columns"]),
            means=[float(x) for x in data["means"]],
            scales=[float(x) for x in data["scales"]],
            coef=[float(x) for x in data["coef"]],
            method=data.get("method", "ml"),
            status=data.get("status", "ok"),
            n_train=int(data.get("n_train", 0)),
            n_events=int(data.get("n_events", 0)),
            notes=list(data.get("notes", [])),
        )
        if len(model.coef) != len(model.design_columns) + 1 or not (
            len(model.means) == len(model.scales) == len(model.design_columns)
        ):
            raise ValueError(f"model '{model.name}': coefficient, mean and scale lengths do not match its design")
        return model


@dataclass
class FitOutcome:
    """A model fitted on one set of rows, with its term table (original units, intercept first)."""

    model: LogisticModel | None
    fit: LogitFit
    summary: pd.DataFrame
    n: int
    n_events: int
    notes: list[str]


def label_vector(series: pd.Series) -> np.ndarray:
    """Outcome as float 0/1 (NaN where unknown); anything else raises ``ValueError``."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0))
    raw_bad = series.notna().to_numpy() & np.isnan(values)
    if bad.any() or raw_bad.any():
        examples = sorted({str(v) for v in series[bad | raw_bad].tolist()})[:5]
        raise ValueError(f"label column '{series.name}' must be 1, 0 or empty; found {examples}")
    return values


def fit_logistic_model(
    df: pd.DataFrame,
    label: str,
    features: list[str],
    *,
    name: str = "model",
    categorical: Iterable[str] | None = None,
    alpha: float = 0.05,
    profile_ci: bool = True,
) -> FitOutcome:
    """Fit ``label ~ features`` on the rows with the label and every feature present.

    The design is z-scored on these rows; constant design columns are not fitted (coefficient 0,
    noted). Separation is handled as described in :mod:`engine.stats._fit`.
    """
    features = list(features)
    categorical = resolve_categorical(df, features, categorical)
    y_all = label_vector(df[label])
    kinds = {f: {"kind": "categorical" if f in categorical else "numeric"} for f in features}
    keep = ~np.isnan(y_all) & ~missing_rows(df, features, kinds)
    rows = df.loc[keep]
    y = y_all[keep]
    notes: list[str] = []
    encoding = build_encoding(rows, features, categorical)
    columns, owners = design_columns(features, encoding)
    X = design_matrix(rows, features, encoding)
    constant = constant_columns(X)
    if constant.any():
        notes.append(
            f"{name}: column(s) {[c for c, k in zip(columns, constant, strict=True) if k]} constant among the "
            f"{len(rows)} fitting rows; not fitted (coefficient 0)"
        )
    Z, means, scales = standardise(X)
    fitted = ~constant
    sub = fit_standardised(Z[:, fitted], y)
    k = len(columns)
    params = np.zeros(k + 1)
    cov = np.zeros((k + 1, k + 1))
    index = np.r_[0, 1 + np.flatnonzero(fitted)]
    params[index] = sub.params
    cov[np.ix_(index, index)] = sub.cov
    fit = LogitFit(params, cov, sub.status, sub.method, sub.converged, sub.llf, sub.note, X1=sub.X1, y=sub.y,
                   penalised_llf=sub.penalised_llf, fitted_index=index)
    if sub.note:
        notes.append(f"{name}: {sub.note}")
    dummy = [encoding[o]["kind"] == "categorical" for o in owners]
    summary = term_table(fit, columns, owners, means, scales, dummy=dummy, fitted=fitted, alpha=alpha,
                         profile_ci=profile_ci)
    n_events = int(y.sum()) if y.size else 0
    model = None
    if sub.usable:
        model = LogisticModel(
            name=name, features=features, encoding=encoding, design_columns=columns,
            means=[float(m) for m in means], scales=[float(s) for s in scales],
            coef=[float(c) for c in params], method=sub.method, status=sub.status,
            n_train=int(len(rows)), n_events=n_events, notes=list(notes),
        )
    return FitOutcome(model, fit, summary, int(len(rows)), n_events, notes)


def cross_validated_auc(
    df: pd.DataFrame,
    label: str,
    features: list[str],
    *,
    folds: int = 5,
    seed: int = 0,
    categorical: Iterable[str] | None = None,
) -> dict:
    """Stratified K-fold cross-validated AUC of a fixed feature set.

    The features are NOT reselected inside the folds: each fold refits the same feature set
    (with its standardisation and categorical encoding learnt on the fold's training part) and
    is scored on the held-out part. When the feature set was selected on the same rows, this
    leaks the selection into the held-out folds (on noise it equals the apparent AUC), so the
    study ranks models with :func:`engine.stats.logistic.cross_validated_selection` instead; this
    function remains for a feature set fixed in advance.
    When a class has fewer patients than ``folds``, the number of folds is reduced to it (noted).

    Returns
    -------
    dict
        ``mean``, ``sd`` (sample SD over folds, ddof=1), ``per_fold`` (list), ``folds``, ``n``,
        ``n_events``, ``seed``, ``notes``.
    """
    # lazy: scikit-learn is heavy; only where it is used
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    features = list(features)
    categorical = resolve_categorical(df, features, categorical)
    kinds = {f: {"kind": "categorical" if f in categorical else "numeric"} for f in features}
    y_all = label_vector(df[label])
    keep = ~np.isnan(y_all) & ~missing_rows(df, features, kinds)
    rows = df.loc[keep].reset_index(drop=True)
    y = y_all[keep].astype(int)
    notes: list[str] = []
    n_events = int(y.sum())
    smallest = int(min(n_events, len(y) - n_events))
    result = {"mean": float("nan"), "sd": float("nan"), "per_fold": [], "folds": 0, "n": int(len(y)),
              "n_events": n_events, "seed": int(seed), "notes": notes}
    n_folds = min(int(folds), smallest)
    if n_folds < 2:
        notes.append(f"cross-validation not possible: {smallest} patient(s) in the smaller class")
        return result
    if n_folds < folds:
        notes.append(f"cross-validation reduced to {n_folds} folds: only {smallest} patients in the smaller class")
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    aucs = []
    for fold, (train_idx, test_idx) in enumerate(splitter.split(np.zeros(len(y)), y), start=1):
        outcome = fit_logistic_model(rows.iloc[train_idx], label, features, name=f"fold {fold}",
                                     categorical=categorical)
        if outcome.model is None:
            notes.append(f"fold {fold}: fit failed ({outcome.fit.note})")
            aucs.append(float("nan"))
            continue
        if outcome.fit.status == "separation":
            notes.append(f"fold {fold}: separation in the training part; Firth estimate used")
        fold_notes: list[str] = []
        score = outcome.model.predict_proba(rows.iloc[test_idx], notes=fold_notes)
        notes.extend(f"fold {fold}: {n}" for n in fold_notes)
        aucs.append(float(roc_auc_score(y[test_idx], score)))
    values = np.asarray(aucs, dtype=float)
    finite = values[np.isfinite(values)]
    result.update(
        mean=float(finite.mean()) if finite.size else float("nan"),
        sd=float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
        per_fold=[float(a) for a in aucs],
        folds=n_folds,
    )
    return result
