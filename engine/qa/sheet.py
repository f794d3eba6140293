"""``qa/index.html``: the contact sheet a reader works through at 2,000 patients (issues 17, 23).

Rendered from the run folder's published files only: ``qa/panels.json`` (one record per QA
picture, written by the QA tasks), ``features.csv``, ``thresholds.json`` and, when the derivation
wrote it, ``derived_roi/disc_planes.csv``. So ``sarco report`` can re-render it on another
machine, without ``cache/``.

One row per series, the same columns for CT and MRI (the row's own modality's values): sortable
by any column, filterable by warning, modality and id, a picture that enlarges on click (arrow
keys step through the filtered rows), and an "exclude" button that adds the series' line to the
exclusion list shown at the top (copy or download it as the CSV ``run.exclude`` reads: a static
page cannot write files). Self-contained: no network.

Extra per-row fields: append a :class:`SheetField` to :data:`SHEET_FIELDS`. ``from_summary``
takes the series' pass-1 summary (evaluated when the picture is drawn, stored in
``panels.json``); ``from_row`` takes the sheet row (features, thresholds entry, record).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.contract import (
    EXCLUSION_COLUMNS,
    FEATURES_CSV,
    FIXED,
    MODALITY_NAMES,
    QA_DIR,
    QA_INDEX,
    QA_PANELS_JSON,
    STANDARDIZATION_KEY,
    THRESHOLDS_JSON,
    TISSUES,
    disc_planes_path,
    excluded_voxels_column,
    feature_name,
    roi_volume_column,
)
from engine.io.segmentation import BODY_SOURCES, PLANE_METHODS
from engine.measure.methods import display_name, method_order
from engine.qa.cohort import OUTLIER_Z, VS_FIXED_WARN_PERCENT, cohort_warnings, robust_z, vs_fixed_flags
from engine.qa.panel import overlay_choice
from engine.qa.reference import reference_caption
from engine.runfolder import ModalityThresholds, Thresholds, read_table, read_thresholds
from engine.runfolder.outputs import write_json, write_text

#: How the disc plane is found when nothing goes wrong (engine.io.segmentation.PLANE_METHODS, BODY_SOURCES).
PREFERRED_PLANE_METHOD = f"{PLANE_METHODS[0]}_{BODY_SOURCES[0]}"
#: Warn when more than this share of the ROI's voxels lies outside the intensity window.
EXCLUDED_WARN_PERCENT = 5.0
#: Fewest series of a modality for outliers to mean anything.
OUTLIER_MIN_SERIES = 8


@dataclass(frozen=True)
class SheetField:
    """One extra column of the contact sheet.

    Attributes
    ----------
    key : str
        Its id (a ``panels.json`` record's ``fields`` key for ``from_summary``).
    header : str
        Column header, unit included (``Reference (signal)``).
    description : str
        The header's tooltip.
    from_summary : callable, optional
        ``summary -> value`` (number, text or None), evaluated in the QA task.
    from_row : callable, optional
        ``row -> value``: ``row`` has ``record``, ``features`` (the patient's feature row, a dict),
        ``entry`` (the modality's :class:`~engine.runfolder.thresholds.ModalityThresholds`, None
        where thresholds.json has none) and ``modality``.
    decimals : int
        Digits shown after the point for numbers.
    """

    key: str
    header: str
    description: str = ""
    from_summary: Callable[[dict], object] | None = None
    from_row: Callable[[dict], object] | None = None
    decimals: int = 1


def _disc_plane(row: dict) -> object:
    plane = row["record"].get("disc_plane") or {}
    value = plane.get("disc_z_mm")
    return None if value is None else float(value)


def _dropped_voxels(row: dict) -> object:
    value = (row["record"].get("disc_plane") or {}).get("dropped_voxels")
    return None if value is None else float(value)


def _plane_method(row: dict) -> str:
    method = (row["record"].get("disc_plane") or {}).get("method")
    return method if isinstance(method, str) else ""


def _mri_reference(summary: dict) -> dict | None:
    return summary.get(STANDARDIZATION_KEY) if summary.get("modality") == "mri" else None


def _reference_name(summary: dict) -> object:
    record = _mri_reference(summary)
    return reference_caption(record) if record else None


def _reference_spread(summary: dict) -> object:
    record = _mri_reference(summary)
    return None if not record or record.get("reference_spread") is None else float(record["reference_spread"])


def _reference_flag(summary: dict) -> object:
    record = _mri_reference(summary)
    return (record.get("flag") or "") if record else None


#: Extra columns (see the module docstring).
SHEET_FIELDS: list[SheetField] = [
    SheetField("disc_z_mm", "Disc z (mm)", "LPS z of the disc plane the derived ROI is centred on "
               "(derived_roi/disc_planes.csv)", from_row=_disc_plane),
    SheetField("dropped_voxels", "Stray voxels", "stray voxels of the level's vertebra labels left out when "
               "the disc plane was found (derived_roi/disc_planes.csv)", from_row=_dropped_voxels, decimals=0),
    # issue 24: each MRI series' intensity reference (mri_reference.csv; outlined green on the picture)
    SheetField("mri_reference", "MRI reference", "the tissue the MRI series was scaled on, its signal before "
               "scaling and the scale (mri_reference.csv)", from_summary=_reference_name),
    SheetField("mri_reference_spread", "Reference spread", "IQR / median of the reference's voxels: a wide spread "
               "means a mixed or noisy region", from_summary=_reference_spread, decimals=3),
    SheetField("mri_reference_flag", "Reference flag", "why the reference is doubtful (too few voxels, a wide "
               "spread, a fat/CSF ratio off its scanner's)", from_summary=_reference_flag),
]


@dataclass(frozen=True)
class SheetWarning:
    key: str
    label: str
    description: str
    applies: Callable[[dict], bool]


def _excluded_percent(row: dict) -> float:
    roi = row["record"].get("roi_voxels") or 0
    return 100.0 * float(row["record"].get("excluded_voxels") or 0) / roi if roi else float("nan")


#: The warnings a row can carry (filter menu order). ``applies`` takes the row (see SheetField.from_row)
#: plus ``outliers`` (set of keys flagged by the cohort-wide robust z). Cohort-level facts (one tissue,
#: a split inside one tissue, a method-wide disagreement with fixed) are not row warnings: the
#: header says them once (:mod:`engine.qa.cohort`, issue 30).
SHEET_WARNINGS: list[SheetWarning] = [
    SheetWarning("anatomy", "segmentation contradicts anatomy", "the vertebra labels contradict anatomy near the "
                 "level and roi.derive.level_checks: warn accepted them (derived_roi/disc_planes.csv, column "
                 "anatomy_warning): confirm the level on the strip", lambda r: bool(_anatomy_warning(r))),
    SheetWarning("vs_fixed", f"fitted vs fixed > {VS_FIXED_WARN_PERCENT:g} %", "a fitted method and the fixed "
                 f"HU bound classify more than {VS_FIXED_WARN_PERCENT:g} % of the ROI differently (where that is "
                 "the method's on most series, only where this series is an outlier)",
                 lambda r: bool(r.get("vs_fixed_methods"))),
    SheetWarning("excluded", f"> {EXCLUDED_WARN_PERCENT:g} % outside window", "more than "
                 f"{EXCLUDED_WARN_PERCENT:g} % of the ROI's voxels lie outside the intensity window",
                 lambda r: _excluded_percent(r) > EXCLUDED_WARN_PERCENT),
    SheetWarning("roi_volume_outlier", "ROI volume outlier", f"ROI volume more than {OUTLIER_Z:g} robust SDs "
                 "from the modality's median", lambda r: "roi_volume" in r["outliers"]),
    SheetWarning("fat_outlier", "fat % outlier", f"fat % (painted method) more than {OUTLIER_Z:g} robust SDs "
                 "from the modality's median", lambda r: "fat" in r["outliers"]),
    SheetWarning("methods_disagree", "methods disagree", "the fitted methods' fat % differ on this series "
                 f"(highest minus lowest) more than {OUTLIER_Z:g} robust SDs above the modality's median "
                 "difference: one method's threshold lies close to this series' main tissue (on MRI, often "
                 "its intensity scale: a lean patient read as fatty by GMM); check the picture",
                 lambda r: "methods" in r["outliers"]),
    SheetWarning("plane_fallback", "disc plane: fallback", "the disc plane was not found from the facing "
                 f"endplates of bodies located from the canal ({PREFERRED_PLANE_METHOD}) but by a fallback "
                 "(derived_roi/disc_planes.csv, column method): check the strip",
                 lambda r: _plane_method(r) not in ("", PREFERRED_PLANE_METHOD)),
    SheetWarning("no_strip", "no sagittal strip", "the sagittal strip could not be cut",
                 lambda r: not r["record"].get("strip")),
    SheetWarning("no_picture", "no picture", "the QA picture could not be drawn", lambda r: not r["record"].get("png")),
    SheetWarning("mri_reference", "MRI reference flagged", "the MRI intensity reference is doubtful: too few "
                 "voxels, a wide spread or a fat/CSF ratio off its scanner's (mri_reference.csv)",
                 lambda r: bool(r["record"].get("fields", {}).get("mri_reference_flag"))),
]


def _anatomy_warning(row: dict) -> str:
    value = (row["record"].get("disc_plane") or {}).get("anatomy_warning")
    return value if isinstance(value, str) else ""


def panel_record(summary: dict, png_name: str, strip: dict | None) -> dict:
    """A series' ``panels.json`` record (drawn in the QA task from its pass-1 summary and strip)."""
    derived = summary.get("derived_roi")
    record = {"patient_id": summary["patient_id"], "modality": summary["modality"], "png": png_name,
              "source": f"derived {derived['level']}" if derived else "hand ROI",
              "roi_voxels": summary.get("roi_voxels"), "excluded_voxels": summary.get("excluded_voxels"),
              "strip": strip is not None,
              "midline": str(strip["midline"]) if strip is not None else "",
              "strip_x_mm": round(float(strip["x_mm"]), 2) if strip is not None else None, "fields": {}}
    for field in SHEET_FIELDS:
        if field.from_summary is not None:
            try:
                record["fields"][field.key] = field.from_summary(summary)
            except (KeyError, TypeError, ValueError):
                record["fields"][field.key] = None
    return record


def write_panels(run_dir, records: list[dict]) -> Path:
    """Publish the QA tasks' records as ``qa/panels.json`` (sorted by modality, patient)."""
    path = Path(run_dir) / QA_DIR / QA_PANELS_JSON
    write_json(path, sorted(records, key=lambda r: (r["modality"], r["patient_id"])))
    return path


def _disc_planes(run_dir: Path) -> dict[tuple[str, str], dict]:
    path = disc_planes_path(run_dir)
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "modality": str})
    except (OSError, ValueError):
        return {}
    return {(str(r["patient_id"]), str(r["modality"])): r for r in table.to_dict("records")}


def _robust_outliers(values: pd.Series, above_only: bool = False) -> pd.Series:
    """Robust z (:func:`engine.qa.cohort.robust_z`) beyond :data:`OUTLIER_Z` (``above_only``: above the median;
    a disagreement is only ever too large); nothing from fewer than :data:`OUTLIER_MIN_SERIES` series."""
    if int(np.isfinite(values).sum()) < OUTLIER_MIN_SERIES:
        return pd.Series(False, index=values.index)
    return (robust_z(values, above_only) > OUTLIER_Z).fillna(False)


def _methods_spread(fat: dict[str, float], fitted: list[str]) -> float:
    """Highest minus lowest fat % of the fitted methods measured on a series (NaN with fewer than two)."""
    measured = [fat[m] for m in fitted if math.isfinite(fat.get(m, float("nan")))]
    return max(measured) - min(measured) if len(measured) >= 2 else float("nan")


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number


def sheet_rows(records: list[dict], features: pd.DataFrame, thresholds: Thresholds,
               disc_planes: dict[tuple[str, str], dict]) -> tuple[list[dict], list[str]]:
    """The sheet's rows (one per record) and the method columns (canonical names) it shows."""
    by_id = {str(pid): row for pid, row in zip(features["patient_id"].astype(str),
                                               features.to_dict("records"), strict=True)}
    entries = thresholds.modalities
    present = {m for entry in entries.values() for m in entry.methods}
    methods = method_order(sorted(present))
    rows = []
    for record in records:
        pid, modality = str(record["patient_id"]), record["modality"]
        record = {**record, "disc_plane": disc_planes.get((pid, modality))}
        values = by_id.get(pid, {})
        entry = entries.get(modality)
        fat = {m: _number(values.get(feature_name(modality, m, "fat", "percent"))) for m in methods}
        rows.append({"record": record, "features": values, "entry": entry, "modality": modality,
                     "patient_id": pid, "fat": fat, "split": str(values.get("split", "") or ""),
                     "label": _number(values.get("label")),
                     "roi_volume_cm3": _number(values.get(roi_volume_column(modality))) / 1000.0,
                     "excluded_percent": _excluded_percent({"record": record}),
                     "excluded_voxels": _number(values.get(excluded_voxels_column(modality))),
                     "outliers": set()})
    for modality in {r["modality"] for r in rows}:
        mine = [r for r in rows if r["modality"] == modality]
        painted = _painted_method(entries.get(modality))
        for key, series in (("roi_volume", pd.Series([r["roi_volume_cm3"] for r in mine])),
                            ("fat", pd.Series([r["fat"].get(painted, float("nan")) if painted else float("nan")
                                               for r in mine]))):
            for r, flagged in zip(mine, _robust_outliers(series.astype(float)), strict=True):
                if flagged:
                    r["outliers"].add(key)
        entry = entries.get(modality)
        fitted = [m for m in method_order(entry.methods) if m != FIXED] if entry is not None else []
        spread = pd.Series([_methods_spread(r["fat"], fitted) for r in mine], dtype=float)
        for r, flagged in zip(mine, _robust_outliers(spread, above_only=True), strict=True):
            if flagged:
                r["outliers"].add("methods")
    _flag_vs_fixed(rows, entries, features)
    for row in rows:
        row["warnings"] = [w.key for w in SHEET_WARNINGS if w.applies(row)]
    return rows, methods


def _flag_vs_fixed(rows: list[dict], entries: Mapping[str, ModalityThresholds], features: pd.DataFrame) -> None:
    """Each row's ``vs_fixed_methods``: the methods whose disagreement with fixed is this series' own."""
    for modality in {r["modality"] for r in rows}:
        mine = [r for r in rows if r["modality"] == modality]
        entry = entries.get(modality)
        if entry is None:   # no fit of this modality: no method to compare with fixed
            for row in mine:
                row["vs_fixed_methods"] = []
            continue
        _, flags = vs_fixed_flags(entry, pd.DataFrame([r["features"] for r in mine]))
        for position, row in enumerate(mine):
            row["vs_fixed_methods"] = [m for m in flags.columns if bool(flags[m].iloc[position])]


def _painted_method(entry: ModalityThresholds | None) -> str | None:
    return overlay_choice(entry).method if entry is not None else None


def _cell(value, decimals: int = 1, text: str | None = None) -> str:
    if isinstance(value, str):
        return f'<td class="t" data-v="{html.escape(value)}">{html.escape(text or value)}</td>'
    number = _number(value)
    if not math.isfinite(number):
        return '<td data-v="">&ndash;</td>'
    return f'<td data-v="{number:.6g}">{html.escape(text) if text else f"{number:,.{decimals}f}"}</td>'


def _why(record: dict) -> str:
    return f": {html.escape(record['error'])}" if record.get("error") else ""


def _field_value(field: SheetField, row: dict):
    if field.from_row is not None:
        try:
            return field.from_row(row)
        except (KeyError, TypeError, ValueError):
            return None
    return row["record"].get("fields", {}).get(field.key)


def _stats_tip(row: dict, method: str, stats) -> str:
    """A method cell's tooltip: every stat of the run folder's stat list, per tissue (``fat: mean -80.2 HU, ...``)."""
    unit = row["entry"].unit if row["entry"] is not None else ""
    parts = []
    for tissue in TISSUES:
        values = []
        for stat in stats:
            number = _number(row["features"].get(feature_name(row["modality"], method, tissue, stat.name)))
            shown = number * stat.display_scale if stat.display_unit is not None else number
            shown_unit = stat.display_unit if stat.display_unit is not None else stat.stored_unit(unit)
            values.append(f"{stat.label} {shown:.4g} {shown_unit}".rstrip() if math.isfinite(number) else
                          f"{stat.label} –")
        parts.append(f"{tissue}: {', '.join(values)}")
    return html.escape(f"{display_name(method)}: {'; '.join(parts)}")


def render_html(rows: list[dict], methods: list[str], thresholds: Thresholds, run_name: str,
                features: pd.DataFrame | None = None) -> str:
    """The contact sheet's HTML (self-contained: inline CSS and script, pictures by relative path)."""
    fields = [f for f in SHEET_FIELDS if any(_field_value(f, r) not in (None, "") for r in rows)]
    stats = thresholds.stats
    method_heads = [(f"Fat % {display_name(m)}", f"{{modality}}_{m}_fat_percent: fat voxels / ROI voxels in "
                     "the window x 100") for m in methods]
    heads = ([("Patient", "patient_id; its button adds the series to the exclusion list"),
              ("Mod.", "modality"), ("Split", "split of the study"),
              ("Label", "1 = sarcopenia, 0 = not"), ("QA picture", "click to enlarge")] + method_heads
             + [("ROI cm³", "{modality}_roi_volume / 1000: ROI volume in cm³ after resampling"),
                ("Outside window %", "ROI voxels outside the intensity window / ROI voxels x 100")]
             + [(f.header, f.description) for f in fields] + [("Warnings", "filter with the menu above")])
    head_html = "".join(
        f'<th{" class=nosort" if title == "QA picture" else ""} title="{html.escape(tip)}">'
        f'{html.escape(title)}</th>' for title, tip in heads)
    labels = {w.key: w.label for w in SHEET_WARNINGS}
    descriptions = {w.key: w.description for w in SHEET_WARNINGS}
    body = []
    for row in rows:
        record = row["record"]
        pid, modality = row["patient_id"], row["modality"]
        name = MODALITY_NAMES.get(modality, modality)
        caption = f"{pid} {name} ({record.get('source', '')})"
        picture = (f'<img loading="lazy" src="{html.escape(record["png"])}" alt="QA picture of {html.escape(caption)}"'
                   f' title="{html.escape(caption)}: click to enlarge">' if record.get("png")
                   else f'<span class="missing">no picture{_why(record)}</span>')
        badges = "".join(f'<span class="w" title="{html.escape(descriptions[k])}">{html.escape(labels[k])}</span>'
                         for k in row["warnings"])
        reason = "; ".join(labels[k] for k in row["warnings"]) or "flagged at QA review"
        label_text = {1.0: "1", 0.0: "0"}.get(row["label"], "")
        cells = [f'<td class="t" data-v="{html.escape(pid)}">{html.escape(pid)}<br><button type="button" class="ex" '
                 'title="add to the exclusion list and copy its line">exclude</button></td>',
                 _cell(modality, text=name), _cell(row["split"]),
                 _cell(row["label"], 0, label_text or None),
                 f'<td class="pic">{picture}</td>']
        cells += [_cell(row["fat"].get(m), 1).replace("<td", f'<td title="{_stats_tip(row, m, stats)}"', 1)
                  for m in methods]
        cells += [_cell(row["roi_volume_cm3"], 1), _cell(row["excluded_percent"], 1)]
        cells += [_cell(v if isinstance(v := _field_value(f, row), str) else _number(v), f.decimals) for f in fields]
        cells.append(f'<td class="ws" data-v="{len(row["warnings"])}">{badges}</td>')
        body.append(f'<tr data-id="{html.escape(pid)}" data-mod="{html.escape(modality)}" '
                    f'data-w="{html.escape(" ".join(row["warnings"]))}" data-reason="{html.escape(reason)}">'
                    + "".join(cells) + "</tr>")
    counts = {w.key: sum(w.key in r["warnings"] for r in rows) for w in SHEET_WARNINGS}
    options = "".join(f'<option value="{w.key}">{html.escape(w.label)} ({counts[w.key]})</option>'
                      for w in SHEET_WARNINGS if counts[w.key])
    modalities = sorted({r["modality"] for r in rows})
    mod_options = "".join(f'<option value="{m}">{MODALITY_NAMES.get(m, m)}</option>' for m in modalities)
    legends = []
    for modality, entry in thresholds.modalities.items():
        choice = overlay_choice(entry)
        style = ' class="warn"' if choice.one_tissue else ""
        legends.append(f"<li{style}><b>{MODALITY_NAMES.get(modality, modality)}</b>: {html.escape(choice.legend)}</li>")
    n_warned = sum(bool(r["warnings"]) for r in rows)
    header_line = ",".join(EXCLUSION_COLUMNS)
    cohort = "".join(f"<li>{html.escape(w.text)}</li>" for w in cohort_warnings(thresholds, features))
    return _PAGE.format(
        cohort=f'<ul class="cohort warn" title="facts about the whole cohort, not flagged on each row">{cohort}</ul>'
        if cohort else "",
        title=html.escape(f"QA contact sheet: {run_name}"), n=len(rows), n_warned=n_warned, options=options,
        mod_options=mod_options, legends="".join(legends), head=head_html, body="\n".join(body),
        header_line=html.escape(header_line), header_json=json.dumps(header_line), run_json=json.dumps(run_name))


def render_sheet(run_dir) -> Path:
    """(Re)write ``qa/index.html`` from the run folder's published files; returns its path."""
    run_dir = Path(run_dir)
    records = json.loads((run_dir / QA_DIR / QA_PANELS_JSON).read_text(encoding="utf-8"))
    features = read_table(run_dir, FEATURES_CSV) if (run_dir / FEATURES_CSV).is_file() \
        else pd.DataFrame({"patient_id": []})
    # without thresholds.json: no modality's fit, and this process's registered stats
    thresholds = read_thresholds(run_dir) if (run_dir / THRESHOLDS_JSON).is_file() else Thresholds.from_json({})
    rows, methods = sheet_rows(records, features, thresholds, _disc_planes(run_dir))
    index = run_dir / QA_DIR / QA_INDEX
    write_text(index, render_html(rows, methods, thresholds, run_dir.resolve().name, features))
    return index


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root {{ --thumb: 270px; }}
* {{ box-sizing: border-box; }}
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d1d1f;
        background: #fafafa; }}
header {{ position: sticky; top: 0; z-index: 3; background: #fff; border-bottom: 1px solid #ccc; padding: 8px 16px; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.controls {{ display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; }}
.controls label {{ white-space: nowrap; }}
select, input, button {{ font: inherit; }}
button {{ cursor: pointer; border: 1px solid #999; border-radius: 4px; background: #f4f4f4; padding: 1px 8px; }}
button:hover {{ background: #e6e6e6; }}
details {{ margin: 4px 0 0; }}
details ul {{ margin: 4px 0; padding-left: 20px; }}
.warn {{ color: #9a5b00; }}
ul.cohort {{ margin: 4px 0; font-weight: bold; }}
main {{ padding: 0 16px 40px; }}
table {{ border-collapse: collapse; width: 100%; background: #fff; }}
th {{ position: sticky; top: var(--head, 96px); z-index: 2; background: #eceff3; padding: 6px 6px; text-align: right;
      font-weight: 600; cursor: pointer; user-select: none; border-bottom: 1px solid #bbb; vertical-align: bottom;
      max-width: 7.5em; }}
th.nosort {{ cursor: default; text-align: left; }}
th[aria-sort=ascending]::after {{ content: " \\25B2"; }}
th[aria-sort=descending]::after {{ content: " \\25BC"; }}
td {{ border-top: 1px solid #e2e2e2; padding: 4px 6px; text-align: right; vertical-align: middle;
      font-variant-numeric: tabular-nums; }}
td.t {{ text-align: left; }}
button.ex {{ margin-top: 4px; font-size: 12px; }}
td.ws {{ text-align: left; max-width: 12em; }}
td.pic {{ width: calc(var(--thumb) + 12px); }}
td.pic img {{ width: var(--thumb); display: block; cursor: zoom-in; border-radius: 2px; }}
tr.marked td {{ background: #fde8e8; }}
.w {{ display: inline-block; background: #fff1d6; border: 1px solid #e0b060; border-radius: 3px; padding: 0 4px;
      margin: 1px 2px 1px 0; font-size: 12px; white-space: nowrap; }}
.missing {{ color: #a00; }}
#excl {{ width: 100%; height: 5.5em; font: 12px ui-monospace, monospace; }}
#box {{ position: fixed; top: 0; left: 0; width: 100vw; height: 100vh;
        background: rgba(0,0,0,.88); display: none; z-index: 10; color: #eee;
        flex-direction: column; align-items: center; justify-content: center; }}
#box.open {{ display: flex; }}
#box img {{ height: calc(100vh - 90px); max-width: 96vw; object-fit: contain; }}
#box .bar {{ margin: 8px; display: flex; gap: 12px; align-items: center; }}
#box button {{ background: #333; color: #eee; border-color: #777; }}
</style></head><body>
<header>
<h1>{title}</h1>
<div class="controls">
<span id="count">{n} series</span>
<label>Warning <select id="fw"><option value="">all series</option><option value="*">any warning ({n_warned})</option>
<option value="-">no warning</option>{options}</select></label>
<label>Modality <select id="fm"><option value="">all</option>{mod_options}</select></label>
<label>Patient <input id="fq" size="12" placeholder="id contains"></label>
<label>Picture size <input id="fs" type="range" min="180" max="640" step="10" value="270"></label>
<span>Exclusion list: <b id="nexcl">0</b> <button type="button" id="copyall">copy CSV</button>
<button type="button" id="download">download flagged.csv</button></span>
</div>
{cohort}
<details><summary>How to read this page</summary><ul>
<li>Each picture: the axial slice with the most ROI voxels (anterior up, the patient's right on image-left:
radiological convention, letters at the edges) with the ROI outline (yellow) and the tissue colours (blue muscle,
red fat); beside it a sagittal strip through the spinal canal (superior up, anterior left) with the disc plane
(orange) and the slab (dashed), or the hand ROI's extent. The cyan dashed line on the slice is where the strip
is cut.</li>
{legends}
<li>Click a header to sort (again to reverse); click a picture to enlarge (arrow keys: previous / next; x: exclude;
Esc: close). A link keeps a view: <code>index.html#w=vs_fixed&amp;m=ct&amp;open</code>.</li>
<li>"exclude" adds the series' line ({header_line}) to the exclusion list and copies it. Save the list as a CSV
beside the manifest and set <code>run.exclude</code> to it for the next run: those series are left out.</li>
</ul>
<textarea id="excl" readonly placeholder="the series you exclude appear here"></textarea></details>
</div>
</header>
<main>
<table id="sheet"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
</main>
<div id="box" role="dialog" aria-label="enlarged QA picture"><div class="bar">
<button type="button" id="prev">&larr; previous</button><span id="cap"></span>
<button type="button" id="boxex">exclude</button><button type="button" id="next">next &rarr;</button>
<button type="button" id="close">close (Esc)</button></div><img id="big" alt=""></div>
<script>
"use strict";
const HEADER = {header_json}, KEY = "sarco-qa-exclude:" + {run_json};
const tbody = document.querySelector("#sheet tbody");
const allRows = Array.from(tbody.rows);
const marked = new Map(JSON.parse(localStorage.getItem(KEY) || "[]"));
function line(tr) {{ return [tr.dataset.id, tr.dataset.mod, tr.dataset.reason].map(csv).join(","); }}
function csv(v) {{ return /[",\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
function listText() {{ return [HEADER, ...marked.values()].join("\\n") + "\\n"; }}
function copy(text) {{
  if (navigator.clipboard && window.isSecureContext) {{
    navigator.clipboard.writeText(text).catch(() => fallback(text));
  }}
  else fallback(text);
}}
function fallback(text) {{
  const area = document.createElement("textarea"); area.value = text; document.body.appendChild(area);
  area.select(); try {{ document.execCommand("copy"); }} catch (e) {{}} area.remove();
}}
function refreshList() {{
  document.getElementById("nexcl").textContent = marked.size;
  document.getElementById("excl").value = marked.size ? listText() : "";
  localStorage.setItem(KEY, JSON.stringify(Array.from(marked.entries())));
  for (const tr of allRows) {{
    const on = marked.has(tr.dataset.id + "/" + tr.dataset.mod);
    tr.classList.toggle("marked", on);
    tr.querySelector("button.ex").textContent = on ? "undo" : "exclude";
  }}
}}
function toggle(tr) {{
  const k = tr.dataset.id + "/" + tr.dataset.mod;
  if (marked.has(k)) marked.delete(k); else {{ marked.set(k, line(tr)); copy(line(tr)); }}
  refreshList();
}}
tbody.addEventListener("click", e => {{
  const tr = e.target.closest("tr");
  if (e.target.matches("button.ex")) toggle(tr);
  else if (e.target.tagName === "IMG") openBox(tr);
}});
document.getElementById("copyall").onclick = () => copy(listText());
document.getElementById("download").onclick = () => {{
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([listText()], {{type: "text/csv"}})); a.download = "flagged.csv"; a.click();
}};
let lastCol = -1, dir = 1;
document.querySelectorAll("#sheet th").forEach((th, col) => {{
  if (th.classList.contains("nosort")) return;
  th.addEventListener("click", () => {{
    dir = col === lastCol ? -dir : 1; lastCol = col;
    document.querySelectorAll("#sheet th").forEach(h => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    const key = r => r.cells[col].dataset.v;
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {{
      const x = parseFloat(key(a)), y = parseFloat(key(b));
      const xn = isNaN(x), yn = isNaN(y);
      if (!xn && !yn) return dir * (x - y);
      if (xn !== yn) return xn ? 1 : -1;     // empty cells last either way
      return dir * String(key(a)).localeCompare(String(key(b)), undefined, {{numeric: true}});
    }});
    rows.forEach(r => tbody.appendChild(r));
  }});
}});
function applyFilter() {{
  const w = document.getElementById("fw").value, m = document.getElementById("fm").value;
  const q = document.getElementById("fq").value.trim().toLowerCase();
  let shown = 0;
  for (const tr of allRows) {{
    const ws = tr.dataset.w ? tr.dataset.w.split(" ") : [];
    const ok = (!m || tr.dataset.mod === m) && (!q || tr.dataset.id.toLowerCase().includes(q)) &&
      (!w || (w === "*" ? ws.length > 0 : w === "-" ? ws.length === 0 : ws.includes(w)));
    tr.hidden = !ok; shown += ok;
  }}
  document.getElementById("count").textContent = shown + " of " + allRows.length + " series";
}}
["fw", "fm"].forEach(id => document.getElementById(id).addEventListener("change", applyFilter));
document.getElementById("fq").addEventListener("input", applyFilter);
document.getElementById("fs").addEventListener("input", e =>
  document.documentElement.style.setProperty("--thumb", e.target.value + "px"));
const box = document.getElementById("box"), big = document.getElementById("big");
let current = null;
function visible() {{ return Array.from(tbody.rows).filter(r => !r.hidden && r.querySelector("img")); }}
function openBox(tr) {{
  current = tr; const img = tr.querySelector("img");
  big.src = img.getAttribute("src"); big.alt = img.alt;
  const rows = visible();
  document.getElementById("cap").textContent = img.title.replace(": click to enlarge", "") + "  (" +
    (rows.indexOf(tr) + 1) + " of " + rows.length + ")" + (tr.dataset.w ? "  warnings: " + tr.dataset.reason : "");
  document.getElementById("boxex").textContent = tr.classList.contains("marked") ? "undo exclude" : "exclude (x)";
  box.classList.add("open");
}}
function step(d) {{
  const rows = visible(), i = rows.indexOf(current);
  if (i >= 0 && rows[i + d]) {{ openBox(rows[i + d]); rows[i + d].scrollIntoView({{block: "center"}}); }}
}}
document.getElementById("prev").onclick = () => step(-1);
document.getElementById("next").onclick = () => step(1);
document.getElementById("close").onclick = () => box.classList.remove("open");
document.getElementById("boxex").onclick = () => {{ toggle(current); openBox(current); }};
box.addEventListener("click", e => {{ if (e.target === box) box.classList.remove("open"); }});
document.addEventListener("keydown", e => {{
  if (!box.classList.contains("open")) return;
  if (e.key === "Escape") box.classList.remove("open");
  else if (e.key === "ArrowRight" || e.key === "ArrowDown") {{ e.preventDefault(); step(1); }}
  else if (e.key === "ArrowLeft" || e.key === "ArrowUp") {{ e.preventDefault(); step(-1); }}
  else if (e.key === "x") {{ toggle(current); openBox(current); }}
}});
function fitHead() {{
  document.documentElement.style.setProperty("--head", document.querySelector("header").offsetHeight + "px");
}}
window.addEventListener("resize", fitHead);
document.querySelector("details").addEventListener("toggle", fitHead);
fitHead(); refreshList();
// a link can carry a view: index.html#w=one_tissue&m=ct&open (warning filter, modality, first picture enlarged)
const wanted = new URLSearchParams(location.hash.slice(1));
if (wanted.has("w")) document.getElementById("fw").value = wanted.get("w");
if (wanted.has("m")) document.getElementById("fm").value = wanted.get("m");
if (wanted.has("w") || wanted.has("m")) applyFilter();
if (wanted.has("open")) {{ const first = visible()[0]; if (first) openBox(first); }}
</script></body></html>
"""
