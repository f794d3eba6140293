"""QA for thousands of patients (issues 17, 23): one picture per series, drawn in the workers, and a contact sheet.

    pass 1      cuts each series' sagittal strip through the canal (:mod:`.strip`) while the series is open
    QA pass     one Dask task per series (:func:`render_series`): the picture (:mod:`.panel`, in the
                radiological convention of :mod:`.orientation`) and its ``qa/panels.json`` record
    sheet       ``qa/index.html`` from the published files (:mod:`.sheet`): sortable, filterable by
                warning, click to enlarge, an exclusion list for ``run.exclude``
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from engine.contract import CACHE_DIR, MODALITY_NAMES, STANDARDIZATION_KEY, qa_key_path, qa_png_path, qa_strip_path
from engine.qa.panel import OverlayChoice, load_strip, overlay_choice, png_bytes, render_panel
from engine.qa.reference import reference_caption
from engine.qa.sheet import SHEET_FIELDS, SHEET_WARNINGS, SheetField, panel_record, render_sheet, write_panels
from engine.runfolder.outputs import write_bytes, write_json
from engine.runfolder.thresholds import Thresholds

__all__ = ["SHEET_FIELDS", "SHEET_WARNINGS", "SheetField", "qa_specs", "render_series", "render_sheet",
           "write_panels"]


def qa_specs(thresholds: Thresholds) -> dict[str, dict]:
    """Per modality of ``thresholds.json``: what its QA tasks need (``fat_is``, the overlay choice as a dict).

    Plain dicts, not the typed entries: a spec travels to the workers and enters the pictures' cache keys.
    """
    return {modality: {"fat_is": entry.fat_is, "overlay": dataclasses.asdict(overlay_choice(entry))}
            for modality, entry in thresholds.modalities.items()}


def series_source(summary: dict) -> str:
    derived = summary.get("derived_roi")
    return f"derived {derived['level']}" if derived else "hand ROI"


#: Version of the pictures' drawing: a change that alters the pictures bumps it, so a rerun redraws them.
QA_PANEL_FORMAT = 2


def _panel_key(summary: dict, spec: dict, strip_file: Path) -> str:
    """What a picture depends on: the series' pass-1 key, the modality's spec, its strip file, the drawing."""
    try:
        stat = strip_file.stat()
        strip = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        strip = None
    text = json.dumps({"sample": summary.get("key"), "spec": spec, "strip": strip, "format": QA_PANEL_FORMAT},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _drawn_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def render_series(summary: dict, spec: dict, run_dir: str, force: bool = False) -> dict:
    """QA task (one Dask task per series): draw ``qa/<patient>__<modality>.png``; return its sheet record.

    Parameters
    ----------
    summary : dict
        The series' pass-1 summary (``status`` ok: its ``sample`` path).
    spec : dict
        The modality's entry of :func:`qa_specs`.
    run_dir : str
        The run folder.
    force : bool
        Draw it even when the picture of the same key is there (``sarco run --force``).

    Returns
    -------
    dict
        The ``panels.json`` record (:func:`engine.qa.sheet.panel_record`), with ``error`` set and
        ``png`` empty when the picture could not be drawn (the sheet shows the series without
        one and the batch goes on).
    """
    from engine.measure.preprocess import RoiSample  # lazy: SimpleITK; the sheet alone (sarco report) does not need it

    pid, modality = summary["patient_id"], summary["modality"]
    target = qa_png_path(run_dir, pid, modality)
    cache = Path(run_dir) / CACHE_DIR
    strip_file = qa_strip_path(cache, pid, modality)
    strip = load_strip(strip_file)
    record = panel_record(summary, target.name, strip)
    key, key_file = _panel_key(summary, spec, strip_file), qa_key_path(cache, pid, modality)
    if not force and target.is_file() and _drawn_key(key_file) == key:
        return record   # a nightly rerun draws only the new or changed series
    try:
        sample = RoiSample.load(summary["sample"])
        title = f"{pid}   {MODALITY_NAMES.get(modality, modality)}   {series_source(summary)}"
        if summary.get(STANDARDIZATION_KEY):   # issue 24: the reference, outlined on the slice
            title += f"   ref {reference_caption(summary[STANDARDIZATION_KEY])}"
        picture = render_panel(sample, strip, modality=modality, fat_is=spec["fat_is"],
                               choice=OverlayChoice(**spec["overlay"]), title=title)
        write_bytes(target, png_bytes(picture))
        write_json(key_file, {"key": key})
    except Exception as exc:  # noqa: BLE001 - a QA picture must never fail a patient; the sheet shows it missing
        record.update(status="error", error=f"{type(exc).__name__}: {exc}", png="")
    return record
