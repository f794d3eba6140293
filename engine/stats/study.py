"""The whole statistical study of the paper on one feature table: Tables 2-5, CV, a frozen bundle.

Models
------
* one per imaging model (``ct_otsu``, ``mri_gmm``...) over its feature columns,
* ``clinical`` over every clinical column,
* ``combined``: the clinical columns plus every feature of the best imaging model, selected by the
  same univariable screen + backward elimination on the training patients that have the best
  imaging model's features. The best imaging model is the one with the highest cross-validated
  AUC (ties: apparent AUC, then order). The paper has no such model; it answers "does imaging add
  to the clinical variables?", with DeLong tests against both parents in ``comparisons``.

Every model is fitted on the ``train`` split only, on the patients with a label and (for
imaging) every feature of the model; patients without them are excluded from that model and
the number is noted. A model with fewer than :data:`MIN_PER_CLASS` training patients in a class
is skipped with a note.

Honest figures
--------------
* Cross-validation repeats the whole selection (screen + elimination) inside every fold
  (:func:`engine.stats.logistic.cross_validated_selection`); the training AUC of the final model is
  "apparent" and never used to rank models.
* The Youden cut-off is chosen on the training split and applied unchanged to every split; a
  cut-off chosen on an evaluation split would be optimistic and is not reported.
* DeLong comparisons only on held-out splits (Demler, Pencina & D'Agostino 2012).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.stats._design import resolve_categorical
from engine.stats.chance import CHANCE_ALPHA, CandidateModel, ChanceResult, ChanceSettings, chance_test
from engine.stats.groups import TABLE2_COLUMNS, ordered_splits
from engine.stats.groups import table2 as make_table2
from engine.stats.logistic import MultivariableResult, cross_validated_selection, multivariable_logistic
from engine.stats.models import LogisticModel, label_vector
from engine.stats.roc import delong_test, roc_summary, youden_cutoff

#: Fewest training patients per outcome class for a model to be fitted.
MIN_PER_CLASS = 3

BUNDLE_FORMAT = "sarco-stats-bundle/1"

REGRESSION_COLUMNS = [
    "model", "variable", "term",
    "uni_n", "uni_n_events", "uni_coef", "uni_or", "uni_or_ci_low", "uni_or_ci_high", "uni_p",
    "uni_or_per_sd", "uni_or_per_sd_ci_low", "uni_or_per_sd_ci_high", "uni_status", "uni_note",
    "entered", "multi_role", "multi_n", "multi_coef", "multi_or", "multi_or_ci_low", "multi_or_ci_high",
    "multi_p", "multi_or_per_sd", "multi_or_per_sd_ci_low", "multi_or_per_sd_ci_high", "multi_status",
    "multi_note",
]

#: Table 5 has no per-split Youden cut-off: one chosen on an evaluation split is optimistic; the frozen
#: training cut-off is the honest one. The training split's AUC is "apparent".
TABLE5_COLUMNS = [
    "model", "split", "auc_kind", "n", "n_pos", "n_neg", "auc", "auc_ci_low", "auc_ci_high",
    "train_cutoff", "sensitivity", "specificity", "accuracy", "ppv", "npv", "note",
]

STUDY_FORMAT = "sarco-study/1"

CV_SELECTION = "univariable screen + backward elimination repeated inside every fold"

CHANCE_METHOD = ("training labels permuted; every model refitted with its selection inside the same repeated CV; "
                 "best CV AUC of each permutation against the observed best")

COMPARISON_COLUMNS = ["model_a", "model_b", "split", "n", "auc_a", "auc_b", "z", "p"]


@dataclass
class StudyResult:
    """Tables and frozen models of one study run.

    Attributes
    ----------
    table2 : DataFrame
        Clinical variables by group per split (:func:`engine.stats.groups.table2`).
    table3 : DataFrame
        Clinical model: univariate and multivariable logistic per term (:data:`REGRESSION_COLUMNS`).
    table4 : DataFrame
        Imaging models, same columns, ``model`` naming each.
    table5 : DataFrame
        Every model x split: AUC (DeLong CI), metrics at the training Youden cut-off, and the
        split's own Youden cut-off (:data:`TABLE5_COLUMNS`).
    cv : DataFrame
        Training cross-validated AUC per model: ``model, n, n_events, folds, auc_mean, auc_sd,
        auc_fold_1..k, note``.
    predictions : DataFrame
        Every patient: ``patient_id, split, label, p_<model>, call_<model>`` (call: 1 when
        ``p >= cutoffs[model]``, nullable Int64).
    notes : list of str
        Everything skipped, excluded, dropped or worked around.
    models : dict of LogisticModel
    cutoffs : dict of float
        Training Youden cut-off per model (on the predicted probability).
    table_combined : DataFrame
        The combined model's regression table (same columns as table3).
    comparisons : DataFrame
        DeLong tests: combined vs best imaging, combined vs clinical, best imaging vs clinical,
        per split on the patients scored by both.
    multivariable : dict of MultivariableResult
    best_imaging_model : str or None
    """

    table2: pd.DataFrame
    table3: pd.DataFrame
    table4: pd.DataFrame
    table5: pd.DataFrame
    cv: pd.DataFrame
    predictions: pd.DataFrame
    notes: list[str]
    models: dict[str, LogisticModel]
    cutoffs: dict[str, float]
    table_combined: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REGRESSION_COLUMNS))
    comparisons: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COMPARISON_COLUMNS))
    multivariable: dict[str, MultivariableResult] = field(default_factory=dict)
    best_imaging_model: str | None = None
    #: Why the combined model kept only the clinical model's variables (None: it did not).
    combined_same_as_clinical: str | None = None
    #: ``{"folds", "repeats", "seed"}`` of the repeated cross-validation
    cv_settings: dict = field(default_factory=dict)
    #: the best model (all models) and the best imaging model with the test against chance
    #: (:func:`_verdict`); None without a cross-validated model
    best_model: dict | None = None
    best_imaging: dict | None = None
    chance_permutations: int = 0
    chance_repeats: int = 0
    #: models that could not be fitted: name -> why
    not_fitted: dict[str, str] = field(default_factory=dict)

    def to_bundle(self) -> dict:
        """The frozen models and cut-offs, JSON-safe; :func:`score_bundle` scores with it."""
        order = [name for name in self.models]
        return {
            "format": BUNDLE_FORMAT,
            "order": order,
            "models": {name: self.models[name].to_dict() for name in order},
            "cutoffs": {name: float(self.cutoffs[name]) for name in order},
            "best_imaging_model": self.best_imaging_model,
            "best_model": self.best_model,
            "best_imaging": self.best_imaging,
        }


def _score(
    models: dict[str, LogisticModel], cutoffs: dict[str, float], df: pd.DataFrame, notes: list[str] | None
) -> pd.DataFrame:
    columns = {}
    for name, model in models.items():
        model_notes: list[str] = []
        p = model.predict_proba(df, notes=model_notes)
        if notes is not None:
            notes.extend(f"{name}: {n}" for n in model_notes)
        call = pd.array(np.where(np.isnan(p), 0, p >= cutoffs[name]).astype(int), dtype="Int64")
        call[np.isnan(p)] = pd.NA
        columns[f"p_{name}"] = p
        columns[f"call_{name}"] = call
    return pd.DataFrame(columns, index=df.index)


def score_bundle(bundle: dict, df: pd.DataFrame, *, notes: list[str] | None = None) -> pd.DataFrame:
    """Score patients with a bundle from :meth:`StudyResult.to_bundle` (no refitting).

    Returns
    -------
    DataFrame
        ``patient_id`` (when ``df`` has it), then ``p_<model>`` and ``call_<model>`` per model in
        the bundle's order. A patient missing a model's feature gets NaN / <NA> for that model.
        Unseen categorical levels are scored as the reference level; ``notes`` collects them.
    """
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"unsupported stats bundle format {bundle.get('format')!r}; expected {BUNDLE_FORMAT!r}")
    order = list(bundle.get("order") or bundle["models"].keys())
    models = {name: LogisticModel.from_dict(bundle["models"][name]) for name in order}
    cutoffs = {name: float(bundle["cutoffs"][name]) for name in order}
    for name, model in models.items():
        absent = [f for f in model.features if f not in df.columns]
        if absent:
            raise ValueError(f"model '{name}' needs column(s) {absent}, absent from the table to score")
    scored = _score(models, cutoffs, df, notes)
    if "patient_id" in df.columns:
        scored.insert(0, "patient_id", df["patient_id"].to_numpy())
    return scored.reset_index(drop=True)


def _regression_table(mv: MultivariableResult) -> pd.DataFrame:
    summary = mv.summary.iloc[1:].set_index("term") if len(mv.summary) else pd.DataFrame()
    removed = {r["variable"]: r for r in mv.removed}
    dropped = {d["variable"]: d for d in mv.dropped_collinear}
    rows = []
    for _, uni in mv.univariate.iterrows():
        variable, term = uni["variable"], uni["term"]
        row = {"model": mv.name, "variable": variable, "term": term}
        for key in ("n", "n_events", "coef", "or", "or_ci_low", "or_ci_high", "p", "or_per_sd",
                    "or_per_sd_ci_low", "or_per_sd_ci_high", "status", "note"):
            row[f"uni_{key}"] = uni[key]
        row["entered"] = variable in mv.entered
        if variable in mv.selected:
            row["multi_role"] = "selected"
            row["multi_n"] = mv.n
            row["multi_status"] = mv.status
            if term in summary.index:
                est = summary.loc[term]
                for key in ("coef", "or", "or_ci_low", "or_ci_high", "p", "or_per_sd", "or_per_sd_ci_low",
                            "or_per_sd_ci_high"):
                    row[f"multi_{key}"] = est[key]
            if mv.fallback:
                row["multi_note"] = "no candidate entered; best univariate candidate used"
        elif variable in removed:
            r = removed[variable]
            row["multi_role"] = "removed"
            row["multi_note"] = f"removed at step {r['step']} (p = {r['p']:.3g})"
        elif variable in dropped:
            row["multi_role"] = "collinear"
            row["multi_note"] = dropped[variable]["note"]
        else:
            row["multi_role"] = "not entered"
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in REGRESSION_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    return table[REGRESSION_COLUMNS]


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


@dataclass
class _Cohort:
    """The feature table with its outcome and split resolved, shared by every step of a study."""

    features: pd.DataFrame
    y: np.ndarray
    labelled: np.ndarray
    split_values: np.ndarray
    train: np.ndarray
    split: str
    label: str
    clinical: list[str]
    clinical_categorical: list[str]
    folds: int
    seed: int
    p_enter: float
    p_remove: float
    alpha: float
    repeats: int = 1
    notes: list[str] = field(default_factory=list)
    #: models that could not be fitted: name -> why
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fitted:
    """One model's selection on the training rows and its cross-validation."""

    mv: MultivariableResult
    rows: np.ndarray
    candidates: list[str]
    categorical: list[str]
    cv: dict
    apparent_auc: float


def _prepare_cohort(features, *, clinical_columns, label, split, categorical, folds, seed, p_enter, p_remove,
                    alpha, repeats=1) -> _Cohort:
    for column in ("patient_id", label, split):
        if column not in features.columns:
            raise ValueError(f"column '{column}' not in the feature table")
    features = features.reset_index(drop=True)
    notes: list[str] = []
    y = label_vector(features[label])
    labelled = ~np.isnan(y)
    split_values = features[split].where(features[split].notna(), "").astype(str).to_numpy()
    unsplit = int((labelled & (split_values == "")).sum())
    if unsplit:
        notes.append(f"{unsplit} labelled patient(s) without a split: in no table")
    clinical_columns = list(clinical_columns)
    absent = [c for c in clinical_columns if c not in features.columns]
    if absent:
        notes.append(f"clinical column(s) {absent} not in the feature table; ignored")
    clinical = [c for c in clinical_columns if c in features.columns]
    return _Cohort(
        features=features, y=y, labelled=labelled, split_values=split_values,
        train=labelled & (split_values == "train"), split=split, label=label, clinical=clinical,
        clinical_categorical=resolve_categorical(features, clinical, categorical), folds=folds, seed=seed,
        p_enter=p_enter, p_remove=p_remove, alpha=alpha, repeats=repeats, notes=notes,
    )


def _table2(cohort: _Cohort) -> pd.DataFrame:
    if not cohort.clinical:
        cohort.notes.append("no clinical columns: Table 2 and the clinical model are empty")
        return pd.DataFrame(columns=TABLE2_COLUMNS)
    return make_table2(cohort.features.loc[cohort.labelled], split=cohort.split, label=cohort.label,
                       variables=cohort.clinical, categorical=cohort.clinical_categorical)


def _fit_model(cohort: _Cohort, name: str, candidates: list[str], rows: np.ndarray,
               categorical: list[str]) -> _Fitted | None:
    """Select and fit one model on ``rows`` (training), then cross-validate the whole selection.

    A model whose numbers fail (an optimiser, a singular design) is that model's failure only: it
    is recorded in ``cohort.failed`` with the reason and the study goes on without it.
    """
    try:
        return _select_and_validate(cohort, name, candidates, rows, categorical)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        reason = f"could not be fitted ({type(exc).__name__}: {exc})"
        cohort.failed[name] = reason
        cohort.notes.append(f"{name}: {reason}; the study goes on without it")
        return None


def _select_and_validate(cohort: _Cohort, name: str, candidates: list[str], rows: np.ndarray,
                         categorical: list[str]) -> _Fitted | None:
    y = cohort.y
    n_pos, n_neg = int(np.sum(y[rows] == 1)), int(np.sum(y[rows] == 0))
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        cohort.notes.append(f"{name}: skipped, {n_pos} sarcopenia and {n_neg} non-sarcopenia training patients "
                            f"(at least {MIN_PER_CLASS} of each needed)")
        return None
    train_df = cohort.features.loc[rows]
    settings: dict[str, Any] = dict(p_enter=cohort.p_enter, p_remove=cohort.p_remove, categorical=categorical,
                                    alpha=cohort.alpha)
    mv = multivariable_logistic(train_df, cohort.label, candidates, name=name, **settings)
    cohort.notes.extend(mv.notes)
    if mv.model is None:
        cohort.notes.append(f"{name}: no model could be fitted; skipped")
        return _Fitted(mv, rows, candidates, categorical, {}, float("nan"))
    cv = cross_validated_selection(train_df, cohort.label, candidates, folds=cohort.folds, repeats=cohort.repeats,
                                   seed=cohort.seed, **settings)
    cohort.notes.extend(f"{name} cross-validation: {n}" for n in cv["notes"])
    p = mv.model.predict_proba(train_df)
    ok = ~np.isnan(p)
    apparent = roc_summary(y[rows][ok], p[ok])["auc"]
    return _Fitted(mv, rows, candidates, categorical, cv, apparent)


def _fit_imaging_models(cohort: _Cohort, imaging_models: dict[str, list[str]]) -> dict[str, _Fitted]:
    fitted: dict[str, _Fitted] = {}
    for name, columns in imaging_models.items():
        columns = list(columns)
        missing_columns = [c for c in columns if c not in cohort.features.columns]
        if missing_columns:
            cohort.notes.append(f"{name}: feature column(s) {missing_columns} absent (modality not processed?); "
                                f"skipped")
            continue
        complete = cohort.features[columns].apply(pd.to_numeric, errors="coerce").notna().all(axis=1).to_numpy()
        excluded = int(np.sum(cohort.train & ~complete))
        if excluded:
            cohort.notes.append(f"{name}: {excluded} training patient(s) without complete {name} features excluded")
        result = _fit_model(cohort, name, columns, cohort.train & complete, [])
        if result is not None:
            fitted[name] = result
    return fitted


def _rank_imaging(fitted: dict[str, _Fitted], names: list[str]) -> str | None:
    """The best imaging model: highest CV AUC of the whole selection, then apparent AUC, then order."""
    usable = [n for n in names if n in fitted and fitted[n].mv.model is not None]
    if not usable:
        return None

    def key(name):
        cv_mean = fitted[name].cv.get("mean", float("nan"))
        apparent = fitted[name].apparent_auc
        return (cv_mean if np.isfinite(cv_mean) else -np.inf, apparent if np.isfinite(apparent) else -np.inf,
                -usable.index(name))

    return max(usable, key=key)


def _fit_combined(cohort: _Cohort, fitted: dict[str, _Fitted], best: str | None) -> _Fitted | None:
    """Clinical candidates plus every feature of the best imaging model, selected the same way.

    The imaging candidates are the best model's whole feature set, not the features it selected on
    all training rows, so that the combined model's CV (selection inside the folds) stays honest.
    """
    if not cohort.clinical:
        cohort.notes.append("combined: no clinical columns; skipped")
        return None
    if best is None:
        cohort.notes.append("combined: no imaging model was fitted; skipped")
        return None
    imaging = [f for f in fitted[best].candidates if f not in cohort.clinical]
    return _fit_model(cohort, "combined", cohort.clinical + imaging, fitted[best].rows, cohort.clinical_categorical)


def _fmt_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3g}")


def combined_same_as_clinical(cohort: _Cohort, fitted: dict[str, _Fitted], best: str | None) -> str | None:
    """Why the combined model selected exactly the clinical model's variables, or None (issue 21).

    Without it a reader sees two identical rows in Tables 3-5 and suspects a bug. The reason is
    read from the combined selection: no feature of the best imaging model entered (its best
    univariable p), or the backward elimination removed those that did (their p).
    """
    if best is None or "combined" not in fitted or "clinical" not in fitted:
        return None
    combined, clinical = fitted["combined"].mv, fitted["clinical"].mv
    if combined.model is None or clinical.model is None or set(combined.selected) != set(clinical.selected):
        return None
    imaging = [v for v in combined.candidates if v not in cohort.clinical]
    entered = [v for v in combined.entered if v in imaging]
    if not entered:
        p_by = combined.univariate.groupby("variable", sort=False)["p_variable"].first().reindex(imaging)
        p_by = p_by.astype(float).dropna()
        strongest = (f" (the strongest, {p_by.idxmin()}: p = {_fmt_p(float(p_by.min()))})" if len(p_by) else "")
        why = f"no {best} feature had univariable p < {cohort.p_enter:g} on these patients{strongest}"
    else:
        removed = {r["variable"]: r["p"] for r in combined.removed}
        dropped = {d["variable"] for d in combined.dropped_collinear}
        parts = [f"{v} removed at p = {_fmt_p(removed[v])}" if v in removed else
                 f"{v} dropped as collinear" if v in dropped else v for v in entered]
        why = (f"the {best} features that entered left the model in the backward elimination "
               f"(p > {cohort.p_remove:g}): " + "; ".join(parts))
    same_rows = combined.n == clinical.n
    what = "is identical to" if same_rows else "selected the same variables as"
    rows = "" if same_rows else (f" (fitted on the {combined.n} training patients with {best} features, "
                                 f"the clinical model on {clinical.n})")
    return f"the combined model {what} the clinical model{rows}: {why}"


def _training_cutoffs(cohort: _Cohort, models: dict[str, LogisticModel]) -> dict[str, float]:
    """Youden cut-off of each model on the training split (frozen for every split); drops failures."""
    cutoffs: dict[str, float] = {}
    for name, model in list(models.items()):
        p = model.predict_proba(cohort.features.loc[cohort.train])
        ok = ~np.isnan(p)
        try:
            cutoffs[name] = youden_cutoff(cohort.y[cohort.train][ok], p[ok])[0]
        except ValueError as exc:
            cohort.notes.append(f"{name}: no training cut-off ({exc}); model dropped from the bundle")
            del models[name]
    return cutoffs


def _predictions(cohort: _Cohort, models: dict[str, LogisticModel], cutoffs: dict[str, float]) -> pd.DataFrame:
    scoring_notes: list[str] = []
    scored = _score(models, cutoffs, cohort.features, scoring_notes)
    cohort.notes.extend(scoring_notes)
    ids = pd.DataFrame({"patient_id": cohort.features["patient_id"].to_numpy(),
                        "split": cohort.features[cohort.split].to_numpy(), "label": cohort.y})
    return pd.concat([ids, scored.reset_index(drop=True)], axis=1)


def _splits(cohort: _Cohort) -> list[str]:
    return ordered_splits(cohort.features[cohort.split].dropna().unique())


def _table5(cohort: _Cohort, models, cutoffs, predictions: pd.DataFrame) -> pd.DataFrame:
    """AUC (DeLong CI) and metrics at the frozen training cut-off, per model and split."""
    rows = []
    for name in models:
        p = predictions[f"p_{name}"].to_numpy(dtype=float)
        for split_name in _splits(cohort):
            mask = cohort.labelled & (cohort.split_values == split_name) & ~np.isnan(p)
            summary = roc_summary(cohort.y[mask], p[mask], train_cutoff=cutoffs[name], alpha=cohort.alpha)
            row = {"model": name, "split": split_name,
                   "auc_kind": "apparent" if split_name == "train" else "held-out",
                   "n": summary["n"], "n_pos": summary["n_pos"], "n_neg": summary["n_neg"], "auc": summary["auc"],
                   "auc_ci_low": summary["ci"][0], "auc_ci_high": summary["ci"][1], "train_cutoff": cutoffs[name],
                   "note": summary["note"]}
            at = summary["at_train_cutoff"]
            if at is not None:
                row.update({k: at[k] for k in ("sensitivity", "specificity", "accuracy", "ppv", "npv")})
            rows.append(row)
    return pd.DataFrame(rows, columns=TABLE5_COLUMNS)


CV_COLUMNS = ["model", "n", "n_events", "folds", "repeats", "auc_mean", "auc_sd", "auc_ci_low", "auc_ci_high",
              "apparent_auc"]


def _cv_table(fitted: dict[str, _Fitted], models, failed: dict[str, str] | None = None) -> pd.DataFrame:
    """Repeated-CV AUC per model: mean, SD across repeats, corrected interval, each repeat's AUC.

    A model that could not be fitted has a row whose note says why.
    """
    names = [n for n in models if n in fitted and fitted[n].cv]
    max_repeats = max((len(fitted[n].cv["per_repeat"]) for n in names), default=0)
    rows = []
    for name in names:
        cv = fitted[name].cv
        row = {"model": name, "n": cv["n"], "n_events": cv["n_events"], "folds": cv["folds"],
               "repeats": cv["repeats"], "auc_mean": cv["mean"], "auc_sd": cv["sd"],
               "auc_ci_low": cv["interval"][0], "auc_ci_high": cv["interval"][1],
               "apparent_auc": fitted[name].apparent_auc, "selection": CV_SELECTION, "note": "; ".join(cv["notes"])}
        for i in range(max_repeats):
            row[f"auc_repeat_{i + 1}"] = cv["per_repeat"][i] if i < len(cv["per_repeat"]) else np.nan
        rows.append(row)
    for name, reason in (failed or {}).items():
        rows.append({"model": name, "selection": CV_SELECTION, "note": reason})
    columns = CV_COLUMNS + [f"auc_repeat_{i + 1}" for i in range(max_repeats)] + ["selection", "note"]
    return pd.DataFrame(rows, columns=columns)


#: The repeated-CV columns that Tables 4 and 5 carry beside each model's rows.
CV_BESIDE_COLUMNS = {"auc_mean": "cv_auc_mean", "auc_sd": "cv_auc_sd", "auc_ci_low": "cv_auc_ci_low",
                     "auc_ci_high": "cv_auc_ci_high"}


def _with_cv(table: pd.DataFrame, cv: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each model's repeated-CV mean, SD and interval (:data:`CV_BESIDE_COLUMNS`)."""
    values = cv.set_index("model")[list(CV_BESIDE_COLUMNS)].rename(columns=CV_BESIDE_COLUMNS) if len(cv) else None
    out = table.copy()
    for column in CV_BESIDE_COLUMNS.values():
        out[column] = out["model"].map(values[column]) if values is not None and len(out) else np.nan
    return out


def _best_model(fitted: dict[str, _Fitted], names: list[str]) -> str | None:
    """Highest repeated-CV AUC among ``names`` (ties: apparent AUC, then order); None without a CV."""
    usable = [n for n in names if n in fitted and fitted[n].mv.model is not None
              and np.isfinite(fitted[n].cv.get("mean", float("nan")))]
    if not usable:
        return None
    return max(usable, key=lambda n: (fitted[n].cv["mean"], np.nan_to_num(fitted[n].apparent_auc, nan=-np.inf),
                                      -usable.index(n)))


def _chance(cohort: _Cohort, fitted: dict[str, _Fitted], imaging_names: list[str], permutations: int,
            repeats: int, executor) -> ChanceResult:
    """The permutation test of the best model and of the best imaging model (:mod:`engine.stats.chance`).

    Its statistic is the best mean CV AUC over the first ``repeats`` repeats of the study's splitter
    (the same folds; the observed value is read from the study's own CV, no refit).
    """
    candidates = [CandidateModel(name, tuple(fitted[name].candidates), tuple(bool(v) for v in fitted[name].rows),
                                 tuple(fitted[name].categorical), imaging=name != "clinical")
                  for name in ["clinical", *imaging_names] if name in fitted and fitted[name].cv]
    repeats = max(1, min(int(repeats), cohort.repeats))
    settings = ChanceSettings(label=cohort.label, folds=cohort.folds, repeats=repeats, seed=cohort.seed,
                              p_enter=cohort.p_enter, p_remove=cohort.p_remove, alpha=cohort.alpha,
                              min_per_class=MIN_PER_CLASS, clinical=tuple(cohort.clinical),
                              clinical_categorical=tuple(cohort.clinical_categorical),
                              combined="combined" in fitted and bool(fitted["combined"].cv))
    observed = {name: _first_repeats_mean(f.cv, repeats) for name, f in fitted.items() if f.cv}
    return chance_test(cohort.features, cohort.y, cohort.train, candidates, settings, observed,
                       permutations=permutations, executor=executor)


def _first_repeats_mean(cv: dict, repeats: int) -> float:
    values = np.asarray(cv.get("per_repeat", [])[:repeats], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _verdict(fitted: dict[str, _Fitted], name: str | None, p: float, permutations: int) -> dict | None:
    """``{"name", "cv_auc", "cv_auc_interval", "chance_p", "permutations", "better_than_chance"}``
    (None without a model; p and the verdict None without a test)."""
    if name is None:
        return None
    cv = fitted[name].cv
    finite_p = bool(np.isfinite(p))
    return {"name": name, "cv_auc": float(cv["mean"]), "cv_auc_interval": [float(v) for v in cv["interval"]],
            "chance_p": float(p) if finite_p else None, "permutations": int(permutations) if finite_p else 0,
            "better_than_chance": bool(p <= CHANCE_ALPHA) if finite_p else None}


def _comparisons(cohort: _Cohort, predictions: pd.DataFrame, models, best: str | None) -> pd.DataFrame:
    """DeLong tests between correlated models, on held-out splits only.

    On the training rows the models were selected and fitted on, a DeLong test of nested models
    is not valid (Demler, Pencina & D'Agostino 2012), so the training split is never compared.
    """
    rows = []
    for a, b in [("combined", best), ("combined", "clinical"), (best, "clinical")]:
        if a not in models or b not in models:
            continue
        pa = predictions[f"p_{a}"].to_numpy(dtype=float)
        pb = predictions[f"p_{b}"].to_numpy(dtype=float)
        for split_name in [s for s in _splits(cohort) if s != "train"]:
            mask = cohort.labelled & (cohort.split_values == split_name) & ~np.isnan(pa) & ~np.isnan(pb)
            n_pos = int(np.sum(cohort.y[mask] == 1))
            if n_pos == 0 or n_pos == mask.sum():
                continue
            z, pval = delong_test(cohort.y[mask], pa[mask], pb[mask])
            rows.append({"model_a": a, "model_b": b, "split": split_name, "n": int(mask.sum()),
                         "auc_a": roc_summary(cohort.y[mask], pa[mask])["auc"],
                         "auc_b": roc_summary(cohort.y[mask], pb[mask])["auc"], "z": z, "p": pval})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _regression_tables(fitted: dict[str, _Fitted], imaging_names: Iterable[str]):
    def table(name):
        if name in fitted:
            return _regression_table(fitted[name].mv)
        return pd.DataFrame(columns=REGRESSION_COLUMNS)

    table4 = _concat([_regression_table(fitted[n].mv) for n in imaging_names if n in fitted], REGRESSION_COLUMNS)
    return table("clinical"), table4, table("combined")


def run_study(
    features: pd.DataFrame,
    *,
    clinical_columns: Iterable[str],
    imaging_models: dict[str, list[str]],
    label: str = "label",
    split: str = "split",
    folds: int = 5,
    seed: int = 0,
    p_enter: float = 0.05,
    p_remove: float = 0.10,
    categorical: Iterable[str] | None = None,
    alpha: float = 0.05,
    repeats: int = 1,
    permutations: int = 0,
    chance_repeats: int | None = None,
    executor=None,
) -> StudyResult:
    """Run the paper's statistics on a feature table (one row per patient).

    Parameters
    ----------
    features : DataFrame
        ``patient_id``, ``label`` (1/0/NaN), ``split`` (train/validation/prospective), the clinical
        columns and the imaging features ``{modality}_{method}_{tissue}_{stat}``.
    clinical_columns : list of str
        Candidates of the clinical model and rows of Table 2 (absent ones are noted and ignored).
    imaging_models : dict
        Model name -> its feature columns, e.g. ``{"ct_otsu": ["ct_otsu_fat_mean", ...]}``.
    categorical : list of str, optional
        Categorical clinical columns; default: the rule of :func:`engine.stats._design.is_categorical`.
        Imaging features are always numeric.
    folds, repeats, seed : int
        Repeated stratified K-fold cross-validation of the whole selection on the training split.
    permutations, chance_repeats : int
        Label permutations of the test against chance (:mod:`engine.stats.chance`; 0: no test) and
        the CV repeats its statistic averages (the first of the study's; None: all of them).
    executor : optional
        Where the permutations run (:mod:`engine.batch.executors`); None: in this process.
    p_enter, p_remove : float
        Univariate entry and backward-elimination thresholds.
    """
    cohort = _prepare_cohort(features, clinical_columns=clinical_columns, label=label, split=split,
                             categorical=categorical, folds=folds, seed=seed, p_enter=p_enter, p_remove=p_remove,
                             alpha=alpha, repeats=repeats)
    table2 = _table2(cohort)
    fitted: dict[str, _Fitted] = {}
    if cohort.clinical:  # clinical model first, as in the paper's Table 5
        clinical = _fit_model(cohort, "clinical", cohort.clinical, cohort.train, cohort.clinical_categorical)
        if clinical is not None:
            fitted["clinical"] = clinical
    fitted.update(_fit_imaging_models(cohort, imaging_models))
    best = _rank_imaging(fitted, list(imaging_models))
    if best is not None:
        cohort.notes.append(f"best imaging model by cross-validated AUC (selection inside the folds): {best}")
    combined = _fit_combined(cohort, fitted, best)
    if combined is not None:
        fitted["combined"] = combined
    same_as_clinical = combined_same_as_clinical(cohort, fitted, best)
    if same_as_clinical:
        cohort.notes.append(f"combined: {same_as_clinical}")
    models = {name: f.mv.model for name, f in fitted.items() if f.mv.model is not None}
    cutoffs = _training_cutoffs(cohort, models)
    predictions = _predictions(cohort, models, cutoffs)
    table3, table4, table_combined = _regression_tables(fitted, imaging_models)
    best_overall = _best_model(fitted, ["clinical", *imaging_models, "combined"])
    chance = _chance(cohort, fitted, list(imaging_models), permutations,
                     repeats if chance_repeats is None else chance_repeats, executor)
    cv_table = _cv_table(fitted, models, cohort.failed)
    return StudyResult(
        table2=table2, table3=table3, table4=_with_cv(table4, cv_table),
        table5=_with_cv(_table5(cohort, models, cutoffs, predictions), cv_table),
        cv=cv_table, predictions=predictions, notes=cohort.notes, models=models, cutoffs=cutoffs,
        table_combined=table_combined, comparisons=_comparisons(cohort, predictions, models, best),
        multivariable={name: f.mv for name, f in fitted.items()}, best_imaging_model=best,
        combined_same_as_clinical=same_as_clinical,
        cv_settings={"folds": int(folds), "repeats": int(repeats), "seed": int(seed)},
        best_model=_verdict(fitted, best_overall, chance.p_best, permutations),
        best_imaging=_verdict(fitted, best, chance.p_best_imaging, permutations), chance_permutations=int(permutations),
        chance_repeats=int(min(repeats, repeats if chance_repeats is None else chance_repeats)),
        not_fitted=dict(cohort.failed),
    )


def study_summary(result: StudyResult) -> dict:
    """The machine-readable ``study.json``: per model CV AUC, AUC with CI and n per split, features.

    ``{"format", "best_imaging_model", "models": {name: {"cv_auc_mean", "cv_auc_sd", "apparent_auc",
    "auc": {split: f}, "auc_ci": {split: [low, high]}, "n": {split: n}, "features": [...],
    "cutoff", "method", "status"}}}`` (and ``same_as_clinical``, the reason, on a combined model that
    kept only the clinical model's variables); non-finite numbers are ``None``. Also ``"cv": {"folds",
    "repeats", "seed"}``, per model ``cv_auc_interval``, ``"best_model"`` and ``"best_imaging"``
    (``{"name", "cv_auc", "cv_auc_interval", "chance_p", "better_than_chance"}`` or None),
    ``"chance_test"`` (permutations, alpha, method) and ``"not_fitted"`` (model -> why).
    """
    def number(x):
        return float(x) if x is not None and np.isfinite(x) else None

    cv = result.cv.set_index("model") if len(result.cv) else pd.DataFrame()
    models = {}
    for name, model in result.models.items():
        rows = result.table5[result.table5["model"] == name]
        models[name] = {
            "cv_auc_mean": number(cv.loc[name, "auc_mean"]) if name in cv.index else None,
            "cv_auc_sd": number(cv.loc[name, "auc_sd"]) if name in cv.index else None,
            "cv_auc_interval": ([number(cv.loc[name, "auc_ci_low"]), number(cv.loc[name, "auc_ci_high"])]
                                if name in cv.index else None),
            "apparent_auc": number(cv.loc[name, "apparent_auc"]) if name in cv.index else None,
            "auc": {r.split: number(r.auc) for r in rows.itertuples()},
            "auc_ci": {r.split: [number(r.auc_ci_low), number(r.auc_ci_high)] for r in rows.itertuples()},
            "n": {r.split: int(r.n) for r in rows.itertuples()},
            "features": list(model.features),
            "cutoff": number(result.cutoffs.get(name)),
            "method": model.method,
            "status": model.status,
        }
    if "combined" in models and result.combined_same_as_clinical:
        models["combined"]["same_as_clinical"] = result.combined_same_as_clinical
    return {"format": STUDY_FORMAT, "best_imaging_model": result.best_imaging_model,
            "cv_selection": CV_SELECTION, "cv": dict(result.cv_settings),
            "chance_test": {"permutations": result.chance_permutations, "cv_repeats": result.chance_repeats,
                            "alpha": CHANCE_ALPHA,
                            "method": CHANCE_METHOD},
            "best_model": result.best_model, "best_imaging": result.best_imaging,
            "not_fitted": dict(result.not_fitted), "models": models}
