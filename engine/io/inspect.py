"""``sarco inspect PATH``: what the engine sees in a series, a file or a mask.

:func:`inspect_path` returns a JSON-friendly dict; :func:`format_inspection` renders it for a
terminal. Neither contains a patient identifier: only geometry, value ranges, UIDs of series
(which identify a series, not a person), transfer syntaxes and file-level notes.
A problem the engine would refuse (a missing slice, several series...) is reported in the
dict (``error``) rather than raised, so the user sees everything that could be read; ``sarco
inspect`` then exits with status 1, so a script can tell an input the engine would refuse.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pydicom
import SimpleITK as sitk

from engine.errors import InputError, UsageError
from engine.io.dicom import read_dicom_series, scan_dicom
from engine.io.masks import read_mask_native, seg_nrrd_segments
from engine.io.volumes import _check_access, image_format, read_volume_file

__all__ = ["inspect_path", "format_inspection"]


def _value_range(image) -> tuple[float, float]:

    values = sitk.GetArrayViewFromImage(image)
    if values.size == 0:
        return (float("nan"), float("nan"))
    return float(np.min(values)), float(np.max(values))


def _geometry(image) -> dict:
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def _inspect_dicom(target: pathlib.Path, series_uid: str | None, kind: str) -> dict:

    series, skipped = scan_dicom(target)
    image_series = [s for s in series if s.is_image]
    out: dict = {"path": str(target), "format": kind, "series": [s.as_dict() for s in series]}
    # the files skipped and why, also when no series was found (issue 23: they were dropped then)
    notes = list(skipped)
    chosen = None
    if series_uid is not None:
        chosen = next((s for s in image_series if s.series_uid == series_uid), None)
    elif len(image_series) == 1:
        chosen = image_series[0]
    if chosen is None and len(series) == 1 and not series[0].is_image:
        out.update({"kind": "dicom-non-image", "modality": series[0].modality, "series_uid": series[0].series_uid,
                    "n_files": series[0].n_files, "transfer_syntax": series[0].transfer_syntax, "notes": notes})
        if series[0].modality.upper() == "SEG":
            out.update(_inspect_dicom_seg(series[0].files[0]))
        return out
    if chosen is None:
        out.update({"kind": "dicom", "notes": notes})
        if not image_series:
            out["error"] = "no DICOM image series found" + (" (the notes say which files were skipped and why)"
                                                            if skipped else "")
        elif series_uid is not None:
            out["error"] = f"series {series_uid} not found among the image series"
        else:
            out["error"] = (f"{len(image_series)} image series found; name one in the manifest's "
                            "ct_series_uid/mri_series_uid column, or set io.series_description")
        return out
    out.update({"kind": "dicom", "modality": chosen.modality, "series_uid": chosen.series_uid,
                "description": chosen.description, "n_files": chosen.n_files,
                "transfer_syntax": chosen.transfer_syntax, "notes": list(chosen.notes)})
    try:
        image, info = read_dicom_series(target, series_uid=chosen.series_uid)
    except InputError as error:
        out["error"] = error.reason
        out.update({"size": [chosen.cols, chosen.rows, chosen.n_slices]})
        return out
    low, high = _value_range(image)
    out.update(_geometry(image))
    out.update({"min": low, "max": high, "notes": list(info.notes)})
    return out


def _inspect_dicom_seg(path) -> dict:

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    segments = [f"{int(item.SegmentNumber)}: {item.get('SegmentLabel', '')}" for item in ds.get("SegmentSequence", [])]
    out: dict = {"kind": "dicom-seg", "segments": segments}
    try:
        mask = read_mask_native(path)
    except InputError as error:
        out["error"] = error.reason
        return out

    out.update(_geometry(mask))
    out["roi_voxels"] = int(sitk.GetArrayViewFromImage(mask).sum())
    return out


def inspect_path(path, *, series_uid: str | None = None) -> dict:
    """Describe an image or mask path as the engine reads it.

    Parameters
    ----------
    path : path-like
        DICOM folder or file, NIfTI, NRRD, MetaImage, 3D Slicer ``.seg.nrrd`` or DICOM-SEG.
    series_uid : str, optional
        The series to read in a folder holding several.

    Returns
    -------
    dict
        ``path``, ``format``, ``kind``; for images ``size`` (x, y, z), ``spacing`` (mm),
        ``origin`` (mm), ``direction`` (row-major), ``min``/``max`` (after rescale: HU for CT);
        DICOM adds ``modality``, ``series_uid``, ``description``, ``n_files``,
        ``transfer_syntax``, ``notes`` and ``series`` (every series found);
        ``.seg.nrrd`` and DICOM-SEG add ``segments``; ``error`` holds the reason the engine
        would refuse the input, if any.

    Raises
    ------
    UsageError
        When the path does not exist (the mistake is in the path given, not in an image).
    InputError
        When the path exists but cannot be read at all (permission, a named pipe, ...).
    """

    if not os.path.lexists(path):
        raise UsageError(f"'{path}' not found: give a DICOM folder or file, a NIfTI, NRRD or MetaImage file, "
                         "a .seg.nrrd or a DICOM-SEG")
    target = _check_access(path, "ingest", "image file")
    kind = image_format(target)
    if kind in ("dicom-folder", "dicom-file"):
        return _inspect_dicom(target, series_uid, kind)
    image = read_volume_file(target)
    out: dict = {"path": str(target), "format": kind, "kind": "volume"}
    if kind == "seg.nrrd":
        out["kind"] = "seg.nrrd"
        out["segments"] = [
            {"name": s["name"], "id": s["id"], "label_value": s["label_value"], "layer": s["layer"]}
            for s in seg_nrrd_segments(image)
        ]
        out["layers"] = image.GetNumberOfComponentsPerPixel()
    out["pixel_type"] = image.GetPixelIDTypeAsString()
    out["components"] = image.GetNumberOfComponentsPerPixel()
    out.update(_geometry(image))
    low, high = _value_range(image)
    out.update({"min": low, "max": high})
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        n_nan = int(np.isnan(values).sum())
        if n_nan:
            out["error"] = f"image contains {n_nan} NaN voxels"
    return out


def _fmt_vector(values, digits: int = 4) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


def format_inspection(d: dict) -> str:
    """Human-readable rendering of :func:`inspect_path`'s dict (one fact per line)."""
    lines = [f"path:            {d.get('path', '')}", f"format:          {d.get('format', '')} ({d.get('kind', '')})"]
    for key, label in (("modality", "modality"), ("series_uid", "series UID"), ("description", "description"),
                       ("n_files", "files"), ("transfer_syntax", "transfer syntax")):
        if d.get(key) not in (None, ""):
            lines.append(f"{label + ':':<17}{d[key]}")
    if "size" in d:
        lines.append(f"{'size (x, y, z):':<17}{' x '.join(str(v) for v in d['size'])}")
    if "spacing" in d:
        lines.append(f"{'spacing (mm):':<17}{_fmt_vector(d['spacing'], 6)}")
    if "origin" in d:
        lines.append(f"{'origin (mm):':<17}{_fmt_vector(d['origin'], 6)}")
    if "direction" in d:
        lines.append(f"{'direction:':<17}{_fmt_vector(d['direction'], 4)}")
    if "min" in d:
        unit = " HU" if str(d.get("modality", "")).upper() == "CT" else ""
        lines.append(f"{'value range:':<17}{d['min']:g} .. {d['max']:g}{unit}")
    if d.get("segments"):
        lines.append("segments:")
        for segment in d["segments"]:
            if isinstance(segment, dict):
                lines.append(f"  - {segment['name']} (label {segment['label_value']}, layer {segment['layer']})")
            else:
                lines.append(f"  - {segment}")
    if "roi_voxels" in d:
        lines.append(f"{'ROI voxels:':<17}{d['roi_voxels']}")
    series = d.get("series") or []
    if len(series) > 1:
        lines.append(f"series found ({len(series)}):")
        for s in series:
            kind = "" if s.get("is_image", True) else ", not an image"
            lines.append(f"  - {s['series_uid']}  {s['modality']}  '{s['description']}'  {s['n_files']} files{kind}")
    for note in d.get("notes") or []:
        lines.append(f"note: {note}")
    if d.get("error"):
        lines.append(f"ERROR: {d['error']}")
    return "\n".join(lines)
