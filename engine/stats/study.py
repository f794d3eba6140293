"""The whole statistical study of the paper on one feature table: Tables 2-5, CV, a frozen bundle.

Models
------
* one per imaging model (``ct_otsu``, ``mri_gmm``...) over its feature columns,
* ``clinical`` over every clinical column,
* ``combined``: the clinical columns plus the features the best imaging model selected (best by
  training cross-validated AUC, ties broken by training AUC then by order), re-selected by the
  same univariate screening + backward elimination on the training patients that have the best
  imaging model's features. The paper has no such model; it answers "does imaging add to the
  clinical variables?", with DeLong tests against both parents in ``comparisons``.

Every model is fitted on the ``train`` split only, on the patients with a label and (for
imaging) every feature of the model; patients without them are excluded from that model and
the number is noted. The Youden cut-off is taken on the training split and applied unchanged to
every split (sensitivity, specificity, accuracy); each split's own Youden cut-off is reported
too, as the paper's Table 5 does. A model with fewer than :data:`MIN_PER_CLASS` training
patients in a class is skipped with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from ._design import resolve_categorical
from .groups import TABLE2_COLUMNS, ordered_splits, table2 as make_table2
from .logistic import MultivariableResult, multivariable_logistic
from .models import LogisticModel, cross_validated_auc, label_vector
from .roc import delong_test, roc_summary, youden_cutoff

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

TABLE5_COLUMNS = [
    "model", "split", "n", "n_pos", "n_neg", "auc", "auc_ci_low", "auc_ci_high",
    "train_cutoff", "sensitivity", "specificity", "accuracy", "ppv", "npv", "youden_j_at_train_cutoff",
    "youden_cutoff", "youden_sensitivity", "youden_specificity", "youden_j", "note",
]

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

    def to_bundle(self) -> dict:
        """The frozen models and cut-offs, JSON-safe; :func:`score_bundle` scores with it."""
        order = [name for name in self.models]
        return {
            "format": BUNDLE_FORMAT,
            "order": order,
            "models": {name: self.models[name].to_dict() for name in order},
            "cutoffs": {name: float(self.cutoffs[name]) for name in order},
            "best_imaging_model": self.best_imaging_model,
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
    folds, seed : int
        Stratified K-fold cross-validation on the training split.
    p_enter, p_remove : float
        Univariate entry and backward-elimination thresholds.
    """
    for column in ("patient_id", label, split):
        if column not in features.columns:
            raise ValueError(f"column '{column}' not in the feature table")
    features = features.reset_index(drop=True)
    notes: list[str] = []
    y = label_vector(features[label])
    labelled = ~np.isnan(y)
    split_values = features[split].where(features[split].notna(), "").astype(str).to_numpy()
    train = labelled & (split_values == "train")
    if (labelled & (split_values == "")).any():
        notes.append(f"{int((labelled & (split_values == '')).sum())} labelled patient(s) without a split: in no table")

    clinical_columns = list(clinical_columns)
    absent = [c for c in clinical_columns if c not in features.columns]
    if absent:
        notes.append(f"clinical column(s) {absent} not in the feature table; ignored")
    clinical_columns = [c for c in clinical_columns if c in features.columns]
    clinical_categorical = resolve_categorical(features, clinical_columns, categorical)

    if clinical_columns:
        table2 = make_table2(features.loc[labelled], split=split, label=label, variables=clinical_columns,
                             categorical=clinical_categorical)
    else:
        table2 = pd.DataFrame(columns=TABLE2_COLUMNS)
        notes.append("no clinical columns: Table 2 and the clinical model are empty")

    results: dict[str, MultivariableResult] = {}
    fit_rows: dict[str, np.ndarray] = {}
    cv_results: dict[str, dict] = {}

    def fit_one(name: str, candidates: list[str], rows: np.ndarray, categorical_columns: list[str]) -> None:
        n_pos = int(np.sum(y[rows] == 1))
        n_neg = int(np.sum(y[rows] == 0))
        if min(n_pos, n_neg) < MIN_PER_CLASS:
            notes.append(
                f"{name}: skipped, {n_pos} sarcopenia and {n_neg} non-sarcopenia training patients "
                f"(at least {MIN_PER_CLASS} of each needed)"
            )
            return
        train_df = features.loc[rows]
        mv = multivariable_logistic(
            train_df, label, candidates, p_enter=p_enter, p_remove=p_remove, categorical=categorical_columns,
            alpha=alpha, name=name,
        )
        notes.extend(mv.notes)
        results[name] = mv
        if mv.model is None:
            notes.append(f"{name}: no model could be fitted; skipped")
            return
        fit_rows[name] = rows
        cv = cross_validated_auc(train_df, label, mv.selected, folds=folds, seed=seed,
                                 categorical=categorical_columns)
        notes.extend(f"{name} cross-validation: {n}" for n in cv["notes"])
        cv_results[name] = cv

    # clinical model first, as in the paper's Table 5
    if clinical_columns:
        fit_one("clinical", clinical_columns, train, clinical_categorical)

    imaging_names: list[str] = []
    for name, columns in imaging_models.items():
        columns = list(columns)
        missing_columns = [c for c in columns if c not in features.columns]
        if missing_columns:
            notes.append(f"{name}: feature column(s) {missing_columns} absent (modality not processed?); skipped")
            continue
        complete = features[columns].apply(pd.to_numeric, errors="coerce").notna().all(axis=1).to_numpy()
        excluded = int(np.sum(train & ~complete))
        if excluded:
            notes.append(f"{name}: {excluded} training patient(s) without complete {name} features excluded")
        fit_one(name, columns, train & complete, [])
        if name in results and results[name].model is not None:
            imaging_names.append(name)

    best = None
    if imaging_names:
        def rank(name):
            cv_mean = cv_results[name]["mean"]
            model = results[name].model
            rows = fit_rows[name]
            train_auc = roc_summary(y[rows], model.predict_proba(features.loc[rows]))["auc"]
            return (
                cv_mean if np.isfinite(cv_mean) else -np.inf,
                train_auc if np.isfinite(train_auc) else -np.inf,
                -imaging_names.index(name),
            )

        best = max(imaging_names, key=rank)
        notes.append(f"best imaging model by training cross-validated AUC: {best}")
    if best is not None and clinical_columns:
        imaging_selected = [f for f in results[best].selected if f not in clinical_columns]
        fit_one("combined", clinical_columns + imaging_selected, fit_rows[best], clinical_categorical)
    elif clinical_columns:
        notes.append("combined: no imaging model was fitted; skipped")
    else:
        notes.append("combined: no clinical columns; skipped")

    models = {name: mv.model for name, mv in results.items() if mv.model is not None}

    # training Youden cut-offs, then predictions for every patient with the same scoring code
    cutoffs: dict[str, float] = {}
    for name, model in list(models.items()):
        p = model.predict_proba(features.loc[train])
        ok = ~np.isnan(p)
        try:
            cutoffs[name] = youden_cutoff(y[train][ok], p[ok])[0]
        except ValueError as exc:
            notes.append(f"{name}: no training cut-off ({exc}); model dropped from the bundle")
            del models[name]
    scoring_notes: list[str] = []
    scored = _score(models, cutoffs, features, scoring_notes)
    notes.extend(scoring_notes)
    predictions = pd.concat(
        [
            pd.DataFrame({"patient_id": features["patient_id"].to_numpy(), "split": features[split].to_numpy(),
                          "label": y}),
            scored.reset_index(drop=True),
        ],
        axis=1,
    )

    # Table 5
    splits = ordered_splits(features[split].dropna().unique())
    rows5 = []
    for name in models:
        p = predictions[f"p_{name}"].to_numpy(dtype=float)
        for split_name in splits:
            mask = labelled & (split_values == split_name) & ~np.isnan(p)
            summary = roc_summary(y[mask], p[mask], train_cutoff=cutoffs[name], alpha=alpha)
            row = {"model": name, "split": split_name, "n": summary["n"], "n_pos": summary["n_pos"],
                   "n_neg": summary["n_neg"], "auc": summary["auc"], "auc_ci_low": summary["ci"][0],
                   "auc_ci_high": summary["ci"][1], "train_cutoff": cutoffs[name], "note": summary["note"]}
            at = summary["at_train_cutoff"]
            if at is not None:
                row.update({k: at[k] for k in ("sensitivity", "specificity", "accuracy", "ppv", "npv")})
                row["youden_j_at_train_cutoff"] = at["sensitivity"] + at["specificity"] - 1.0
            yd = summary["youden"]
            if yd is not None:
                row.update(youden_cutoff=yd["cutoff"], youden_sensitivity=yd["sensitivity"],
                           youden_specificity=yd["specificity"], youden_j=yd["youden_j"])
            rows5.append(row)
    table5 = pd.DataFrame(rows5, columns=TABLE5_COLUMNS)

    # cross-validation table
    max_folds = max((cv["folds"] for cv in cv_results.values()), default=0)
    cv_rows = []
    for name in models:
        if name not in cv_results:
            continue
        cv = cv_results[name]
        row = {"model": name, "n": cv["n"], "n_events": cv["n_events"], "folds": cv["folds"],
               "auc_mean": cv["mean"], "auc_sd": cv["sd"], "note": "; ".join(cv["notes"])}
        for i in range(max_folds):
            row[f"auc_fold_{i + 1}"] = cv["per_fold"][i] if i < len(cv["per_fold"]) else np.nan
        cv_rows.append(row)
    cv_columns = ["model", "n", "n_events", "folds", "auc_mean", "auc_sd"] + [
        f"auc_fold_{i + 1}" for i in range(max_folds)] + ["note"]
    cv_table = pd.DataFrame(cv_rows, columns=cv_columns)

    # DeLong comparisons between correlated models
    pairs = [("combined", best), ("combined", "clinical"), (best, "clinical")]
    comparison_rows = []
    for a, b in pairs:
        if a not in models or b not in models:
            continue
        pa = predictions[f"p_{a}"].to_numpy(dtype=float)
        pb = predictions[f"p_{b}"].to_numpy(dtype=float)
        for split_name in splits:
            mask = labelled & (split_values == split_name) & ~np.isnan(pa) & ~np.isnan(pb)
            n_pos = int(np.sum(y[mask] == 1))
            if n_pos == 0 or n_pos == mask.sum():
                continue
            sa = roc_summary(y[mask], pa[mask])["auc"]
            sb = roc_summary(y[mask], pb[mask])["auc"]
            z, pval = delong_test(y[mask], pa[mask], pb[mask])
            comparison_rows.append({"model_a": a, "model_b": b, "split": split_name, "n": int(mask.sum()),
                                    "auc_a": sa, "auc_b": sb, "z": z, "p": pval})
    comparisons = pd.DataFrame(comparison_rows, columns=COMPARISON_COLUMNS)

    table3 = _regression_table(results["clinical"]) if "clinical" in results else pd.DataFrame(columns=REGRESSION_COLUMNS)
    table4 = _concat([_regression_table(results[n]) for n in imaging_models if n in results], REGRESSION_COLUMNS)
    table_combined = (_regression_table(results["combined"]) if "combined" in results
                      else pd.DataFrame(columns=REGRESSION_COLUMNS))

    return StudyResult(
        table2=table2, table3=table3, table4=table4, table5=table5, cv=cv_table, predictions=predictions,
        notes=notes, models=models, cutoffs=cutoffs, table_combined=table_combined, comparisons=comparisons,
        multivariable=results, best_imaging_model=best,
    )
