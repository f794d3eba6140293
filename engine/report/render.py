"""``report.html``: the run folder's published files -> one self-contained page for clinicians.

:func:`render_report` reads the run folder's published outputs only (``features.csv``,
``thresholds.json``, ``series.csv``, ``errors.csv``, ``provenance.json``, ``model.json``,
``study.json``, ``tables/*.csv``, ``predictions.csv`` and ``previews/``), never ``cache/``, so a run
folder renders on another machine and its cache can be deleted (issue 21). Every figure is a PNG
embedded as a base64 ``data:`` URI and the CSS is inline, so the file opens offline from a shared
drive with no request to anything outside it. The sections follow the study (Tables 2-5,
Figures 3-5):

1. header (engine version, date of the run, backend),
2. cohort (patients per split and label, patients with CT / MRI features, failures),
3. cohort-level thresholds (a table and the pooled training histogram with the three boundaries),
4. the study's tables (groups, clinical and imaging logistic regression, performance, CV AUC),
5. ROC curves per split (Figure 5), 6. feature box plots by label (Figure 3),
7. segmentation overlays (Figure 4), 8. errors, 9. provenance.

Only ``features.csv`` and ``thresholds.json`` are required; any other missing or unreadable piece
is reported in the page ("not available ...") instead of stopping the render, because a report
that says what is missing is more useful to a clinician than no report.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml

from engine.contract import (
    ERRORS_CSV,
    FEATURES_CSV,
    FIXED,
    MODALITIES,
    MODALITY_NAMES,
    MODEL_JSON,
    MRI_REFERENCE_CSV,
    PATIENTS_KEY,
    PREDICTIONS_CSV,
    PROVENANCE_JSON,
    QA_DIR,
    QA_INDEX,
    QA_PANELS_JSON,
    REPORT_HTML,
    SERIES_CSV,
    SPLIT_NAMES,
    SPLITS,
    STUDY_JSON,
    TABLES_DIR,
    THRESHOLDS_JSON,
    feature_name,
    parse_feature,
    preview_path,
    roi_volume_column,
    vs_fixed_column,
)
from engine.contract import TABLE_FILES as STUDY_TABLE_FILES
from engine.measure.methods import display_name, method_order
from engine.qa.cohort import modality_cohort_warnings
from engine.report.figures import box_figure, overlay_figure, roc_figure, safe_figure, threshold_figure
from engine.report.format import (
    format_number,
    format_threshold,
    html_table,
    model_label,
    plain_table,
    threshold_decimals,
)
from engine.report.tables import RENDERERS, study_overview
from engine.runfolder import MethodFit, Thresholds, read_table, read_thresholds
from engine.runfolder.outputs import write_text
from engine.runfolder.previews import Preview, read_preview

#: The page template, shipped with the package.
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


# Title and lead of each table the statistics stage writes; the file names come from the stage
# itself (engine.contract.TABLE_FILES), so the report never re-derives them.
TABLE_TEXT = {
    "table2": ("Table 2. Clinical characteristics by group",
               "Each clinical variable in patients without and with sarcopenia, per cohort: mean ± SD (median "
               "[Q1, Q3] where the test is Mann-Whitney U) or n (%), "
               "the test used (chosen as SPSS users expect: Lilliefors normality, Levene, Student/Welch t, "
               "Mann-Whitney U; Pearson chi-square or Fisher's exact test) and its p."),
    "table3": ("Table 3. Logistic regression of clinical variables",
               "Odds ratios for sarcopenia in the training cohort: each variable alone (univariable) and together "
               "after backward elimination (multivariable)."),
    "table4": ("Table 4. Logistic regression of imaging features",
               "Odds ratios for sarcopenia per one standard deviation of each muscle/fat feature, univariable and "
               "multivariable, per imaging model, in the training cohort."),
    "table5": ("Table 5. Diagnostic performance",
               "AUC with 95% CI (DeLong) per model and cohort, and sensitivity, specificity and accuracy at the "
               "cut-off chosen on the training cohort and applied unchanged elsewhere."),
    "cv": ("Cross-validated AUC (model selection)",
           "Stratified 5-fold cross-validation on the training cohort with the whole variable selection repeated "
           "inside every fold: the honest estimate that ranks the models. The apparent AUC is measured on the "
           "patients the model was fitted to."),
    "table_combined": ("Combined model (clinical + best imaging model)",
                       "Odds ratios of the model that adds the best imaging model's features to the clinical "
                       "variables (imaging ORs per SD)."),
    "comparisons": ("Model comparisons (DeLong)",
                    "Paired DeLong tests between the combined, best imaging and clinical models, on the held-out "
                    "cohorts only (on the training cohort such a test is not valid)."),
}


# ----------------------------------------------------------------------------------------------
# reading the run folder


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from the run folder {path.parent}: the report needs "
                                f"it (re-run the study, or point `sarco report` at a finished run)")
    return path


def _read_json_quiet(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_json(path: Path, notes: list[str], what: str) -> dict | None:
    if not path.is_file():
        notes.append(f"{path.name} not found: {what} not available.")
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}): {what} not available.")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} does not hold a JSON object: {what} not available.")
        return None
    return data


def _read_csv(path: Path, notes: list[str], what: str) -> pd.DataFrame | None:
    if not path.is_file():
        notes.append(f"{path.name} not found: {what} not available.")
        return None
    try:
        return read_table(path.parent, path.name)  # the table's read options are the run folder API's
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}): {what} not available.")
        return None


def _utc(timestamp) -> str | None:
    try:
        return datetime.fromtimestamp(float(timestamp), tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return None



def scanner_sections(thresholds: Thresholds) -> list[dict]:
    """Issue 16: the scanners of each modality's training cohort and, for standardised MRI, their scales.

    Kept apart from the threshold tables so the report's table code can change without it.
    """
    sections = []
    for modality, entry in thresholds.modalities.items():
        scanners = entry.scanners
        if not scanners:
            continue
        standardize = entry.standardize
        rows = []
        for scanner in scanners:
            rows.append([scanner.label, "" if scanner.n_patients is None else str(scanner.n_patients),
                         format_number(scanner.scale_median) if scanner.scale_median is not None else "–",
                         " – ".join(format_number(v) for v in scanner.scale_range) if scanner.scale_range else "–"])
        mixed = modality == "mri" and standardize == "none" and len(scanners) > 1
        sections.append({
            "name": MODALITY_NAMES.get(modality, modality.upper()), "warn": mixed,
            "message": (f"{len(scanners)} scanners pooled without intensity standardisation: one threshold on "
                        "signal without a unit; the MRI fat features are not comparable between scanners."
                        if mixed else (f"standardisation: {standardize}" if standardize else "")),
            "table": plain_table(["Scanner (header)", "Training patients", "Scale (median)", "Scale (range)"], rows,
                            [False, True, True, True]),
        })
    return sections


def read_series(run_dir: Path, notes: list[str] | None = None) -> pd.DataFrame | None:
    """series.csv (one row per series of pass 1), or None if the run folder has none."""
    path = run_dir / SERIES_CSV
    if not path.is_file():
        if notes is not None:
            notes.append(f"{SERIES_CSV} not found: the scanners of the MRI series not available.")
        return None
    try:
        return read_table(run_dir, SERIES_CSV)
    except (OSError, ValueError):
        return None


def mri_references(run_dir: Path) -> dict[str, dict]:
    """Issue 24: the run folder's ``mri_reference.csv`` by patient id ({} when absent or unreadable)."""
    try:
        table = pd.read_csv(Path(run_dir) / MRI_REFERENCE_CSV, dtype={"patient_id": str}, keep_default_na=False)
    except (OSError, ValueError):
        return {}
    return {str(row["patient_id"]): row for row in table.to_dict("records")}


def _reference_cells(reference: dict) -> list[str]:
    """Issue 24: a series' reference (region), its signal before scaling, why it was chosen, its flag."""
    region = f"{reference['reference']} ({reference['region']})" if reference.get("region") else reference["reference"]
    return [str(region), format_number(float(reference["value"])), str(reference.get("reason") or ""),
            str(reference.get("flag") or "")]


def mri_series_by_scanner(run_dir: Path, features: pd.DataFrame | None) -> dict | None:
    """Issue 16: each MRI series' scanner and fitted scale (series.csv) with its intensity reference
    (mri_reference.csv, issue 24), and the MRI fat percent per scanner and method (median over its
    patients), so a scanner the pooled threshold treats differently shows."""
    series = read_series(Path(run_dir))
    if features is None or "patient_id" not in features or series is None or series.empty:
        return None
    measured = set(features["patient_id"].astype(str))
    mri = series[(series["modality"] == "mri") & (series["status"] == "ok") & series["patient_id"].isin(measured)]
    references = mri_references(run_dir)
    rows: list[list[str]] = []
    by_scanner: dict[str, list[str]] = {}
    for record in mri.itertuples(index=False):
        scale = pd.to_numeric(record.standardization_scale, errors="coerce")
        by_scanner.setdefault(record.scanner, []).append(record.patient_id)
        reference = references.get(record.patient_id)
        rows.append([record.patient_id, record.scanner, format_number(scale) if pd.notna(scale) else "–",
                     *(_reference_cells(reference) if reference else ["–", "–", "–", ""])])
    if not rows:
        return None
    methods = [m for m in _feature_methods(features, "mri") if feature_name("mri", m, "fat", "percent") in features]
    indexed = features.set_index(features["patient_id"].astype(str))
    result_rows = []
    for label, pids in sorted(by_scanner.items()):
        cells = [format_number(pd.to_numeric(indexed.loc[pids, feature_name("mri", m, "fat", "percent")],
                                             errors="coerce").median()) for m in methods]
        result_rows.append([label, str(len(pids)), *cells])
    return {
        "flagged": [pid for pid, r in references.items() if r.get("flag")],
        "series": plain_table(["Patient", "Scanner", "Scale", "Reference (region)", "Reference signal", "Reason",
                               "Flag"], rows, [False, False, True, False, True, False, False]),
        "result": plain_table(["Scanner", "Patients", *[f"{display_name(m)} fat % (median)" for m in methods]],
                              result_rows, [False, True, *[True] * len(methods)]),
    }


def patients_per_model(study: dict | None) -> dict | None:
    """Issue 16: per model and split, patients labelled, used and left out (from study.json)."""
    rows = []
    for name, model in ((study or {}).get("models") or {}).items():
        for split, entry in (model.get(PATIENTS_KEY) or {}).items():
            dropped = entry.get("dropped") or {}
            rows.append([model_label(name), SPLIT_NAMES.get(split, split), str(entry.get("labelled", "")),
                         str(entry.get("used", "")), "; ".join(f"{v}: {k}" for k, v in dropped.items()) or "–"])
    if not rows:
        return None
    return plain_table(["Model", "Split", "Labelled", "Used", "Left out (why)"], rows,
                       [False, False, True, True, False])



def _overlay_examples(run_dir: Path, features: pd.DataFrame, modality: str) -> list[tuple[int, str, Preview]]:
    """One label-1 and one label-0 patient with a published preview: first by patient_id, training split first."""
    labels = pd.to_numeric(features["label"], errors="coerce")
    split = features["split"].astype(str)
    examples = []
    for label in (1, 0):
        chosen = None
        for in_train in (True, False):
            rows = features[(labels == label) & ((split == "train") == in_train)]
            for pid in sorted(rows["patient_id"].astype(str)):
                preview = read_preview(preview_path(run_dir, pid, modality))
                if preview is not None:
                    chosen = (label, pid, preview)
                    break
            if chosen:
                break
        if chosen:
            examples.append(chosen)
    return examples


def _modality_has_features(features: pd.DataFrame, modality: str) -> pd.Series:
    cols = [c for c in features.columns
            if (parse_feature(str(c)) or ("",))[0] == modality or c == roi_volume_column(modality)]
    if not cols:
        return pd.Series(False, index=features.index)
    return features[cols].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)


def _cohort_section(features: pd.DataFrame, errors: pd.DataFrame | None) -> dict:
    split = features["split"].fillna("").astype(str).replace({"nan": ""})
    labels = pd.to_numeric(features["label"], errors="coerce")
    order = [s for s in SPLITS if (split == s).any()] + sorted(set(split) - set(SPLITS))
    rows = []
    for s in order:
        in_split = split == s
        rows.append([SPLIT_NAMES.get(s, s or "(none)"), str(int((in_split & (labels == 1)).sum())),
                     str(int((in_split & (labels == 0)).sum())), str(int((in_split & labels.isna()).sum())),
                     str(int(in_split.sum()))])
    rows.append(["All", str(int((labels == 1).sum())), str(int((labels == 0).sum())), str(int(labels.isna().sum())),
                 str(len(features))])
    modality_rows = []
    for m in MODALITIES:
        has = _modality_has_features(features, m)
        failed = 0 if errors is None or errors.empty or "modality" not in errors else \
            int(errors.loc[errors["modality"].astype(str) == m, "patient_id"].nunique())
        modality_rows.append([MODALITY_NAMES[m], str(int(has.sum())), str(failed)])
    n_failures = 0 if errors is None else len(errors)
    failed_patients = 0 if errors is None or errors.empty or "patient_id" not in errors \
        else int(errors["patient_id"].nunique())
    return {"splits": plain_table(["Split", "Sarcopenia (1)", "Non-sarcopenia (0)", "Unlabelled", "Total"], rows,
                             [False, True, True, True, True]),
            "modalities": plain_table(["Modality", "Patients with features", "Patients with an error"], modality_rows,
                                 [False, True, True]),
            "n_patients": len(features), "n_failures": n_failures, "failed_patients": failed_patients,
            # without errors.csv (a 'sarco study --table' folder) failures are unknown, not absent
            "errors_known": errors is not None}


def _fit_details(fit: MethodFit) -> str:
    """A method's entry as thresholds.json records it (every key but the threshold), in a line."""
    parts = []
    for key, value in fit.recorded().items():
        if key in ("threshold", "method"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{key} {format_number(value)}")
        elif isinstance(value, list) and 0 < len(value) <= 4 and all(isinstance(v, (int, float)) for v in value):
            parts.append(f"{key} " + ", ".join(format_number(v) for v in value))
        elif isinstance(value, str) and len(value) < 40:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


def diagnostic_sections(thresholds: Thresholds, features: pd.DataFrame | None) -> list[dict]:
    """Issue 18: per modality, the bimodality diagnostic and the per-patient disagreement with fixed.

    Kept apart from the threshold tables so the report's table code can change without it.
    """
    sections = []
    for modality, entry in thresholds.modalities.items():
        diagnostic = entry.diagnostic
        if diagnostic is None:
            continue
        rows = []
        for method in [m for m in method_order(entry.methods) if m != FIXED]:
            column = vs_fixed_column(modality, method)
            if features is None or column not in features.columns or not features[column].notna().any():
                continue
            values = features[column].dropna()
            shift = entry.methods[method].vs_fixed_fat_bound_hu
            rows.append([display_name(method), format_number(shift), format_number(values.median()),
                         format_number(values.max())])
        sections.append({
            "name": MODALITY_NAMES.get(modality, modality.upper()), "warn": diagnostic.likely_one_tissue,
            "message": diagnostic.message,
            # issue 30: each method's split judged, method-wide disagreements with fixed said once
            "cohort_warnings": [w.text for w in modality_cohort_warnings(entry, features) if w.key != "one_tissue"],
            "table": plain_table(["Method", "Threshold − fixed fat bound (HU)",
                                  "Median % of ROI classified differently", "Max %"],
                                 rows, [False, True, True, True]) if rows else None,
        })
    return sections


def _threshold_sections(thresholds: Thresholds, notes: list[str]) -> list[dict]:
    """Per modality: the table of its fits, its fat side and the pooled histogram's figure."""
    sections = []
    for modality, entry in thresholds.modalities.items():
        unit = entry.unit
        bin_width = entry.histogram.bin_width if entry.histogram is not None else None
        decimals = threshold_decimals(bin_width)
        fat_low = entry.fat_is == "low"
        rows = []
        for method in method_order(entry.methods):
            fit = entry.methods[method]
            text = format_threshold(fit.threshold, bin_width)
            if not text:
                classification = "not fitted"
            else:
                classification = f"fat ≤ {text} < muscle" if fat_low else f"muscle ≤ {text} < fat"
            rows.append([display_name(method), text or "–", unit, classification, _fit_details(fit)])
        figure = None
        if entry.histogram is not None:
            figure = safe_figure(notes, f"The {MODALITY_NAMES.get(modality, modality)} histogram figure",
                                  threshold_figure, modality, entry, decimals)
        else:
            notes.append(f"thresholds.json has no pooled histogram for {modality.upper()}: no histogram figure.")
        sections.append({
            "modality": modality, "name": MODALITY_NAMES.get(modality, modality.upper()), "unit": unit,
            "fat_side": ("fat is the low class: voxels at or below the threshold are fat, above it muscle"
                         if fat_low else "fat is the high class: voxels above the threshold are fat, at or below "
                                         "it muscle"),
            "n_patients": entry.n_patients, "n_voxels": format_number(entry.n_voxels),
            "table": plain_table(["Method", "Threshold", "Unit", "Classification", "Fit details"], rows,
                            [False, True, False, False, False]),
            "figure": figure,
        })
    return sections


def _tables_section(run_dir: Path) -> tuple[list[dict], str | None]:
    tables_dir = run_dir / TABLES_DIR
    if not tables_dir.is_dir():
        return [], ("not available: the run folder has no tables/ folder (statistics were disabled or failed; "
                    "see the notes below)")
    tables = []
    study = _read_json_quiet(run_dir / STUDY_JSON) or {}
    # a combined model that kept only the clinical variables says why (issue 21)
    same_as_clinical = ((study.get("models") or {}).get("combined") or {}).get("same_as_clinical")
    for key, (title, lead) in TABLE_TEXT.items():
        filename = STUDY_TABLE_FILES[key]
        path = tables_dir / filename
        if key == "table_combined" and same_as_clinical:
            lead = f"{lead} Why it matches the clinical model: {same_as_clinical}."
        entry: dict[str, Any] = {"key": key, "title": title, "lead": lead, "table": None, "missing": None}
        if not path.is_file():
            if key in ("table_combined", "comparisons"):
                continue  # optional tables: absent when there is nothing to combine or compare
            entry["missing"] = f"not available: tables/{filename} was not written by this run."
        else:
            try:
                frame = pd.read_csv(path)
                entry["table"] = _render_table(RENDERERS.get(key), frame)
                if frame.empty:
                    entry["missing"] = f"tables/{filename} has no rows."
            except pd.errors.EmptyDataError:
                entry["missing"] = f"tables/{filename} is empty."
            except (OSError, ValueError) as exc:
                entry["missing"] = f"not available: tables/{filename} could not be read ({exc})."
        tables.append(entry)
    # Tables the statistics stage writes beyond those it names: shown as they are.
    known = set(STUDY_TABLE_FILES.values())
    for path in sorted(tables_dir.glob("*.csv")):
        if path.name in known:
            continue
        entry = {"key": path.stem, "title": path.stem.replace("_", " ").capitalize(),
                 "lead": f"Additional table written by the statistics stage (tables/{path.name}).",
                 "table": None, "missing": None}
        try:
            entry["table"] = html_table(pd.read_csv(path))
        except pd.errors.EmptyDataError:
            entry["missing"] = f"tables/{path.name} is empty."
        except (OSError, ValueError) as exc:
            entry["missing"] = f"tables/{path.name} could not be read ({exc})."
        tables.append(entry)
    return tables, None


def _render_table(renderer, frame: pd.DataFrame) -> dict:
    """The clinician's layout of a statistics table; the plain CSV layout for a table of another shape."""
    if renderer is not None and len(frame):
        try:
            return renderer(frame)
        except (KeyError, ValueError, TypeError):
            pass  # a CSV from another engine version: shown as it is rather than not at all
    return html_table(frame)


def _errors_section(errors: pd.DataFrame | None) -> dict:
    if errors is None:
        return {"available": False, "table": None, "by_stage": None, "count": 0}
    columns = [c for c in ("patient_id", "modality", "stage", "reason") if c in errors.columns]
    frame = errors[columns] if columns else errors
    by_stage = None
    if "stage" in errors and not errors.empty:
        counts = errors["stage"].fillna("").astype(str).replace("", "(unknown)").value_counts()
        by_stage = plain_table(["Stage", "Errors"], [[s, str(int(n))] for s, n in counts.items()], [False, True])
    headers = {"patient_id": "Patient", "modality": "Modality", "stage": "Stage", "reason": "Reason"}
    table = plain_table([headers.get(c, c) for c in frame.columns],
                   [["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False, name=None)],
                   [False] * len(frame.columns))
    return {"available": True, "table": table, "by_stage": by_stage, "count": len(errors)}


def _config_text(config: Any) -> str:
    if config is None:
        return ""
    try:

        class _Dumper(yaml.SafeDumper):
            pass

        def _list(dumper, value):
            # [1, 1, 1] reads better than three lines of "- 1"; nested lists stay in block style
            flow = all(not isinstance(v, (list, dict)) for v in value)
            return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

        _Dumper.add_representer(list, _list)
        _Dumper.add_representer(tuple, _list)
        return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True).rstrip()
    except Exception:  # noqa: BLE001 - a value YAML cannot represent: fall back to JSON
        return json.dumps(config, indent=2, default=str)


def _run_name(run_dir: Path, provenance: dict | None, model: dict | None) -> str:
    """What identifies the run (issue 21: the folder's name alone, often ``run``): the command and the
    manifest (or feature table) it read, when it started, and the folder."""
    provenance = provenance or {}
    read = provenance.get("manifest")
    manifest = read if isinstance(read, dict) else {}
    source_table = (model or {}).get("source_table")
    parts = []
    if manifest.get("name"):
        parts.append(f"sarco {provenance.get('mode') or 'run'} of {manifest['name']}")
    elif source_table:
        parts.append(f"sarco study --table {Path(str(source_table)).name}")
    started = _utc(provenance.get("started_unix"))
    if started:
        parts.append(f"started {started}")
    parts.append(f"folder {run_dir.resolve().name}")
    return ", ".join(parts)


def _provenance_section(provenance: dict | None) -> dict | None:
    if provenance is None:
        return None
    versions = provenance.get("versions") or {}
    started: Any = provenance.get("started_unix")
    finished: Any = provenance.get("finished_unix")
    duration = None
    try:
        seconds = float(finished) - float(started)
        duration = f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
    except (TypeError, ValueError):
        pass
    hashes = provenance.get("input_blake3") or {}
    return {
        "config": _config_text(provenance.get("config")),
        "versions": plain_table(["Package", "Version"], [[str(k), str(v)] for k, v in versions.items()],
                                [False, False]),
        "platform": provenance.get("platform"), "backend": provenance.get("backend"),
        "mode": provenance.get("mode"), "started": _utc(started), "finished": _utc(finished),
        "duration": duration, "n_hashes": len(hashes) if isinstance(hashes, dict) else 0,
    }


def _feature_methods(features: pd.DataFrame, modality: str) -> list[str]:
    found = [parts[1] for parts in map(parse_feature, map(str, features.columns)) if parts and parts[0] == modality]
    return method_order(dict.fromkeys(found))


# ----------------------------------------------------------------------------------------------
# entry point


def _box_sections(features: pd.DataFrame, thresholds: Thresholds, figure_notes: list[str]) -> list[dict]:
    """Figure 3 per modality with features: each feature by label (units and labels from the stat list)."""
    boxes = []
    for modality in MODALITIES:
        methods = _feature_methods(features, modality)
        if not methods:
            continue
        unit = thresholds[modality].unit if modality in thresholds else ("HU" if modality == "ct" else "")
        image = safe_figure(figure_notes, f"The {modality.upper()} box-plot figure", box_figure, modality,
                             features, methods, unit, thresholds.stats)
        if image is None:
            figure_notes.append(f"No labelled training patient with {modality.upper()} features: no box plots.")
        boxes.append({"name": MODALITY_NAMES[modality], "figure": image})
    return boxes


def _overlay_sections(run_dir: Path, features: pd.DataFrame, thresholds: Thresholds,
                      figure_notes: list[str]) -> list[dict]:
    """Figure 4 per fitted modality (the engine's modalities first): one patient of each label."""
    overlays = []
    for modality in [m for m in MODALITIES if m in thresholds] + \
            [m for m in thresholds.modalities if m not in MODALITIES]:
        examples = safe_figure(figure_notes, f"The {modality.upper()} overlay examples", _overlay_examples,
                                run_dir, features, modality) or []
        image = None
        if examples:
            image = safe_figure(figure_notes, f"The {modality.upper()} overlay figure", overlay_figure, modality,
                                 thresholds[modality], examples)
        else:
            figure_notes.append(f"No published {modality.upper()} preview "
                                f"(previews/<patient>__{modality}.preview.npz) of a labelled patient: "
                                "no overlay figure.")
        overlays.append({"name": MODALITY_NAMES.get(modality, modality.upper()), "figure": image,
                         "patients": [f"{pid} ({'sarcopenia' if lab == 1 else 'non-sarcopenia'})"
                                      for lab, pid, _ in examples]})
    return overlays


def _statistics_section(run_dir: Path, model: dict | None, features: pd.DataFrame,
                        predictions: pd.DataFrame | None, missing: list[str], figure_notes: list[str]) -> dict:
    """The template's statistics context: summary, tables, notes of the stage, ROC figure."""
    summary = _read_json(run_dir / STUDY_JSON, missing, "the summary of the models") \
        if (run_dir / TABLES_DIR).is_dir() else None
    statistics = (model or {}).get("statistics") if model else None
    notes = [str(n) for n in ((statistics or {}).get("notes") or [])] if isinstance(statistics, dict) else []
    if model is not None and statistics is None:
        missing.append("model.json holds no statistics (the statistics stage was disabled or failed).")
    tables, tables_missing = _tables_section(run_dir)
    roc = None
    if predictions is not None and not predictions.empty:
        roc = safe_figure(figure_notes, "The ROC figure", roc_figure, predictions, figure_notes)
    return {"overview": study_overview(summary, features), "tables": tables, "tables_missing": tables_missing,
            "stats_notes": notes, "roc": roc}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _qa_sheet_link(run_dir: Path) -> dict | None:
    """The QA contact sheet's link (relative, so the folder can move) and its series count (issue 23)."""
    if not (run_dir / QA_DIR / QA_INDEX).is_file():
        return None
    try:
        n = str(len(json.loads((run_dir / QA_DIR / QA_PANELS_JSON).read_text(encoding="utf-8"))))
    except (OSError, ValueError):
        n = "?"
    return {"href": f"{QA_DIR}/{QA_INDEX}", "n": n}


def render_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report.html``, one self-contained page of the run for clinicians.

    Parameters
    ----------
    run_dir : path
        A run folder as ``sarco run`` writes it. ``features.csv`` and ``thresholds.json`` are
        required; every other file is optional and its absence is stated in the page.

    Returns
    -------
    pathlib.Path
        The path of ``report.html``, written atomically (temporary name in the same folder, then
        ``os.replace``), so a reader never sees a half-written report.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` is not a folder, or ``features.csv`` or ``thresholds.json`` is missing
        (the message names the file).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    features = read_table(_require(run_dir / FEATURES_CSV).parent, FEATURES_CSV)
    thresholds = read_thresholds(_require(run_dir / THRESHOLDS_JSON).parent)
    for column in ("patient_id", "split", "label"):
        if column not in features:
            raise ValueError(f"features.csv in {run_dir} has no `{column}` column")

    missing: list[str] = []   # what is absent from the run folder
    figure_notes: list[str] = []  # what a figure had to leave out
    provenance = _read_json(run_dir / PROVENANCE_JSON, missing, "provenance")
    model = _read_json(run_dir / MODEL_JSON, missing, "model notes")
    errors = _read_csv(run_dir / ERRORS_CSV, missing, "the error list")
    predictions = _read_csv(run_dir / PREDICTIONS_CSV, missing, "ROC curves")

    statistics = _statistics_section(run_dir, model, features, predictions, missing, figure_notes)
    threshold_sections = _threshold_sections(thresholds, figure_notes)
    boxes = _box_sections(features, thresholds, figure_notes)
    overlays = _overlay_sections(run_dir, features, thresholds, figure_notes)

    engine_version = (provenance or {}).get("engine_version") or thresholds.engine_version or \
        (model or {}).get("engine_version") or "unknown"
    context = {
        "engine_version": engine_version,
        "run_date": _utc((provenance or {}).get("finished_unix")) or "unknown",
        "backend": (provenance or {}).get("backend") or "unknown",
        "generated": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "run_name": _run_name(run_dir, provenance, model),
        "cohort": _cohort_section(features, errors),
        "thresholds": threshold_sections,
        "diagnostics": diagnostic_sections(thresholds, features),
        "scanners": scanner_sections(thresholds),
        "mri_series": mri_series_by_scanner(run_dir, features),
        "patients_per_model": patients_per_model(_read_json_quiet(run_dir / STUDY_JSON)),
        **statistics,
        "boxes": boxes, "overlays": overlays,
        "errors": _errors_section(errors),
        "provenance": _provenance_section(provenance),
        "missing": missing, "figure_notes": figure_notes,
        "qa_sheet": _qa_sheet_link(run_dir),
    }
    html = _environment().get_template("report.html.j2").render(**context)

    out = run_dir / REPORT_HTML
    write_text(out, html)  # atomic: a killed render leaves only a swept .tmp- file
    return out
