"""DICOM series discovery and reading into SimpleITK images in physical space.

Discovery (:func:`scan_dicom_folder`) reads headers only and groups files by
SeriesInstanceUID; files without one (an anonymised export that blanked the UIDs) are grouped by
acquisition and geometry as GDCM does (:data:`NO_UID_GROUPING`, issue 23) under a stable
``no-uid-...`` key, with a note. A ``DICOMDIR`` found in a folder replaces the walk of that
folder's subtree by the files it references. Reading (:func:`read_dicom_series`) checks the geometry of the
chosen series before decoding any pixel data:

* slices are sorted by their position along the slice normal
  ``n = row_cosine x column_cosine`` (position ``d = IPP . n``), never by file name or
  InstanceNumber (DICOM PS3.3 C.7.6.2.1.1);
* the stack must be regular: no duplicated position, no missing slice (a gap larger than
  1.5 x the median spacing), uniform spacing, one orientation, slice offsets along the normal
  (no gantry tilt), one Rows/Columns/PixelSpacing;
* a header claiming more voxels than ``max_voxels`` is refused before decoding.

Pixel data are decoded by pydicom (the pylibjpeg/pyjpegls plugins decode JPEG Lossless,
JPEG-LS, JPEG 2000 and RLE), the Modality LUT or Rescale Slope/Intercept is applied
(:func:`pydicom.pixels.apply_rescale`; for enhanced multi-frame objects the Pixel Value
Transformation functional group), and the result is a float32 SimpleITK image: CT in HU.

Geometry conventions: spacing ``(x, y, z)`` = (column spacing, row spacing, measured slice
spacing), DICOM PixelSpacing being ``[row spacing, column spacing]``; origin = the
ImagePositionPatient of the first sorted slice; direction = the columns row cosine,
column cosine and slice normal, as a row-major 9-tuple (SimpleITK ``SetDirection``).

Every per-input problem raises :class:`engine.errors.InputError` (stage ``ingest``) with a
sentence that never quotes a DICOM identifier (names, IDs, dates, accession, institution).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import stat
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale
from pydicom.uid import UID

from engine.errors import InputError
from engine.io.geometry import first_item, functional_group_value, same_orientation, slice_axes, worst_tilt

__all__ = ["NO_UID_PREFIX", "DicomSeries", "SeriesInfo", "format_mm", "open_dicom_series", "read_dicom_series",
           "scan_dicom", "scan_dicom_folder", "series_key"]

STAGE = "ingest"
log = logging.getLogger("sarco")

# Modalities and SOP classes that carry no image to read (DICOM-SEG, SR, RT objects, ...).
_NON_IMAGE_MODALITIES = frozenset(
    {
        "SEG",
        "SR",
        "RTSTRUCT",
        "RTPLAN",
        "RTRECORD",
        "RTDOSE",
        "PR",
        "KO",
        "REG",
        "DOC",
        "RWV",
        "AU",
        "ECG",
        "PLAN",
        "FID",
    }
)
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # segmentation, registration, fiducials, surface seg
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports
    "1.2.840.10008.5.1.4.1.1.481",  # radiotherapy objects
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)

# Geometry tolerances. DS strings round cosines and positions (often to 1e-3..1e-4), so the
# checks are lenient with rounding and strict with real defects.
_DUPLICATE_TOL_MM = 0.01  # two slices closer than this along the normal are the same position
_GAP_FACTOR = 1.5  # a step larger than this x the median spacing is a missing slice
_SPACING_REL_TOL = 0.01  # relative deviation from the median spacing allowed
_SPACING_ABS_TOL_MM = 0.005
#: Decoded single-frame files a series keeps for a second read of the same slices (128 CT slices
#: of 512 x 512 int16 = 64 MB at most).
DECODED_FILES_KEPT = 128
_MAX_NOTES = 8  # skipped-file notes kept in full; the rest are counted


def format_mm(value: float) -> str:
    """A position or length for a message: two decimals at most, at least one (``-12.0``, ``-6.25``)."""
    text = f"{value:.2f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    if text in ("-0.0", "-0."):
        text = "0.0"
    return text


@dataclass(frozen=True)
class SeriesInfo:
    """What the engine knows about one DICOM series; no patient-identifying field.

    Geometry fields (``spacing``, ``origin``, ``direction``) are filled by
    :func:`read_dicom_series`; :func:`scan_dicom_folder` leaves them ``None``.

    Attributes
    ----------
    series_uid : str
        SeriesInstanceUID.
    modality : str
        Modality (``CT``, ``MR``, ``SEG``, ...).
    description : str
        SeriesDescription (may be empty).
    n_files : int
        Number of files in the series.
    rows, cols : int or None
        Rows and Columns of the (first) image; None for non-image objects.
    n_slices : int
        Number of 2-D frames (files x frames per file).
    transfer_syntax : str
        ``"<name> (<UID>)"``; several joined by ``"; "`` when the files differ.
    spacing, origin, direction : tuples or None
        SimpleITK (x, y, z) spacing (mm) and origin (mm, LPS); direction row-major 9-tuple.
    notes : tuple of str
        Files skipped while scanning (not DICOM, empty, truncated...) and other remarks.
    is_image : bool
        False for DICOM-SEG, SR, RT and other objects without an image to read.
    sop_class : str
        SOP class name (``CT Image Storage``...).
    frame_of_reference_uid : str
        FrameOfReferenceUID of the first file (empty when absent): masks stored as DICOM-SEG
        must share it.
    manufacturer, model : str
        Manufacturer and ManufacturerModelName of the first file (empty when absent): which
        scanner acquired the series (MRI signal scales differ between scanners, issue 16).
    field_strength_t : float or None
        MagneticFieldStrength (tesla) of the first file, MR only.
    files : tuple of pathlib.Path
        The series' files (not shown in ``repr``; not part of :meth:`as_dict`).
    """

    series_uid: str
    modality: str
    description: str
    n_files: int
    rows: int | None
    cols: int | None
    n_slices: int
    transfer_syntax: str
    spacing: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None
    notes: tuple[str, ...] = ()
    is_image: bool = True
    sop_class: str = ""
    frame_of_reference_uid: str = ""
    manufacturer: str = ""
    model: str = ""
    field_strength_t: float | None = None
    files: tuple[pathlib.Path, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict:
        """JSON-friendly dict of every field except ``files``."""
        out = dataclasses.asdict(self)
        out.pop("files")
        for key in ("spacing", "origin", "direction", "notes"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def summary(self) -> str:
        """One line: UID, modality, description, number of files."""
        description = self.description or "no description"
        return f"{self.series_uid} ({self.modality}, '{description}', {self.n_files} files)"


# --------------------------------------------------------------------------- scanning


@dataclass
class _Scan:
    groups: dict[str, list[tuple[pathlib.Path, object]]]  # series uid -> [(file, header dataset)]
    notes: list[str]
    # file -> (offset of its top-level PixelData element, file size): where a native decode seeks to
    pixel_at: dict[pathlib.Path, tuple[int, int]] = field(default_factory=dict)


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _summarise_notes(notes: list[str]) -> list[str]:
    if len(notes) <= _MAX_NOTES:
        return notes
    return notes[:_MAX_NOTES] + [f"... and {len(notes) - _MAX_NOTES} more skipped files"]


def _dicomdir_files(dicomdir: pathlib.Path, notes: list[str], root: pathlib.Path) -> list[pathlib.Path] | None:
    """Files referenced by a DICOMDIR (``ReferencedFileID``), or None when it cannot be parsed."""

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(dicomdir), force=False)
        records = ds.DirectoryRecordSequence
    except Exception as exc:  # noqa: BLE001 - any parse failure falls back to walking the folder
        notes.append(
            f"{_relative(dicomdir, root)}: DICOMDIR could not be read ({type(exc).__name__}); folder scanned instead"
        )
        return None
    files = []
    base = dicomdir.parent
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        candidate = base.joinpath(*[str(p) for p in parts])
        if not candidate.is_file():
            # ISO 9660 media are case-insensitive: try a case-insensitive match before giving up
            matched = _case_insensitive(base, [str(p) for p in parts])
            if matched is None:
                notes.append(f"{_relative(candidate, root)}: referenced by DICOMDIR but missing")
                continue
            candidate = matched
        files.append(candidate)
    return files


def _case_insensitive(base: pathlib.Path, parts: list[str]) -> pathlib.Path | None:
    current = base
    for part in parts:
        try:
            entries = {entry.lower(): entry for entry in os.listdir(current)}
        except OSError:
            return None
        name = entries.get(part.lower())
        if name is None:
            return None
        current = current / name
    return current if current.is_file() else None


def _collect_files(root: pathlib.Path, max_files: int, notes: list[str]) -> list[pathlib.Path]:
    """Every candidate file under ``root``; DICOMDIR subtrees contribute their referenced files."""
    files: list[pathlib.Path] = []

    def add(paths: Iterable[pathlib.Path]) -> None:
        for path in paths:
            files.append(path)
            if len(files) > max_files:
                raise InputError(
                    STAGE,
                    f"the folder holds more than {max_files} files; point the manifest at a single series "
                    "folder (or raise io.max_files_per_series in the config)",
                )

    if root.is_file():
        add([root])
        return files
    walk_errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=walk_errors.append):
        dirnames.sort()
        here = pathlib.Path(dirpath)
        if "DICOMDIR" in filenames:
            referenced = _dicomdir_files(here / "DICOMDIR", notes, root)
            if referenced is not None:
                add(referenced)
                dirnames[:] = []  # the DICOMDIR describes this subtree
                continue
        add(here / name for name in sorted(filenames) if name != "DICOMDIR")
    for error in walk_errors:
        notes.append(f"{_relative(pathlib.Path(error.filename or root), root)}: folder not readable ({error.strerror})")
    return files


#: The attributes the scan parses (with every item of the sequences named); the rest of a header,
#: names and dates included, is stepped over unread. Whatever the reader, inspection or the
#: series choice consult must be listed here.
HEADER_KEYWORDS = (
    "SOPClassUID", "Modality", "SeriesDescription", "SeriesInstanceUID", "FrameOfReferenceUID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "Manufacturer", "ManufacturerModelName", "MagneticFieldStrength",
    "StudyInstanceUID", "SeriesNumber", "SequenceName",
)

#: Files without a SeriesInstanceUID (anonymised exports blank it) are grouped by these, as GDCM's
#: series helper refines a series by its details (series number, sequence name, slice thickness,
#: rows, columns), plus modality, study, frame of reference, description and the slice geometry.
#: AcquisitionNumber is left out on purpose: a sequential (step-and-shoot) CT numbers every table
#: position as its own acquisition within one series; a repeated acquisition at the same
#: positions is caught by the stack checks (duplicated slice positions) instead.
NO_UID_GROUPING = ("Modality", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesNumber", "SeriesDescription",
                   "SequenceName", "SliceThickness", "Rows", "Columns", "ImageOrientationPatient", "PixelSpacing")
#: The key of a group of files without SeriesInstanceUID: this prefix and a digest of its
#: :data:`NO_UID_GROUPING` values (stable across runs; usable as ``ct_series_uid``).
NO_UID_PREFIX = "no-uid-"
_NO_UID_NOTE = ("{n} files have no SeriesInstanceUID (an anonymised export): grouped as GDCM does, by modality, "
                "study, frame of reference, series number and description, sequence, slice thickness, rows x "
                "columns, orientation and pixel spacing; check that this is one series")

#: (7FE0,0010) Pixel Data, as its tag is written in a little-endian data set.
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"


def _read_header(path: pathlib.Path, root: pathlib.Path, notes: list[str],
                 pixel_at: dict[pathlib.Path, tuple[int, int]] | None = None,
                 keywords: Sequence[str] | None = HEADER_KEYWORDS):
    """Header of one file (no pixel data), or None with a note saying why it was skipped.

    ``pixel_at`` receives ``(offset, size)`` when the header stopped at a little-endian Pixel
    Data element: ``offset`` is where that element starts, so a decode can seek straight to
    it instead of parsing the header a second time. ``keywords``: the attributes kept
    (:data:`HEADER_KEYWORDS`); None keeps the whole header, identities included (the export's).
    """

    label = _relative(path, root)
    try:
        st = path.stat()
    except OSError as exc:
        notes.append(f"{label}: skipped, cannot be accessed ({exc.strerror or type(exc).__name__})")
        return None
    size = st.st_size
    if not stat.S_ISREG(st.st_mode):  # a named pipe would block the read for ever
        notes.append(f"{label}: skipped, not a regular file (a named pipe, socket or device)")
        return None
    if size == 0:
        notes.append(f"{label}: skipped, empty file (0 bytes)")
        return None
    try:
        with warnings.catch_warnings(), open(path, "rb") as handle:
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(handle, stop_before_pixels=True, force=False,
                                 specific_tags=None if keywords is None else list(keywords))
            # pydicom stops silently at the end of a truncated file; reading stops before the
            # pixel data otherwise, so a header that ran to the end of the file is suspect
            stopped_at = handle.tell()
            at_end = stopped_at >= size
            # pydicom rewinds to the start of the element it stopped before
            at_pixels = not at_end and handle.read(4) == _PIXEL_DATA_TAG_LE
    except InvalidDicomError:
        notes.append(f"{label}: skipped, not a DICOM file")
        return None
    except PermissionError:
        notes.append(f"{label}: skipped, not readable (permission denied)")
        return None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt headers raise many types
        notes.append(f"{label}: skipped, truncated or corrupt DICOM header ({type(exc).__name__})")
        return None
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class == "1.2.840.10008.1.3.10":  # a DICOMDIR under another name
        notes.append(f"{label}: skipped, a DICOMDIR (directory) file")
        return None
    if not ds.get("SeriesInstanceUID") and at_end:
        notes.append(f"{label}: skipped, truncated or corrupt DICOM header (file ends inside the header)")
        return None
    if at_pixels and pixel_at is not None:
        pixel_at[path] = (stopped_at, size)
    return ds


def _scan(path, max_files: int, keywords: Sequence[str] | None = HEADER_KEYWORDS) -> _Scan:
    root = pathlib.Path(path)
    if not root.exists():
        raise InputError(STAGE, f"image file not found: {path}")
    if not os.access(root, os.R_OK):
        raise InputError(STAGE, f"image path is not readable (permission denied): {path}")
    notes: list[str] = []
    files = _collect_files(root, max_files, notes)
    base = root if root.is_dir() else root.parent
    scan = _Scan(groups={}, notes=notes)
    for file in files:
        header = _read_header(file, base, notes, scan.pixel_at, keywords)
        if header is None:
            continue
        scan.groups.setdefault(series_key(header), []).append((file, header))
    return scan


def _grouping_value(header, keyword: str) -> str:
    value = header.get(keyword)
    if value is None or value == "":
        return ""
    if keyword in ("ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        try:
            numbers = value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [value]
            return ",".join(f"{float(v):.4f}" for v in numbers)
        except (TypeError, ValueError):
            return str(value)
    return str(value).strip()


def series_key(header) -> str:
    """The series a file belongs to: its SeriesInstanceUID, else a ``no-uid-`` key of its acquisition.

    Without a SeriesInstanceUID the key is :data:`NO_UID_PREFIX` and the first 12 hex digits of
    the SHA-1 of the :data:`NO_UID_GROUPING` values (cosines and spacings rounded to 1e-4 mm):
    files of one acquisition and geometry share it; it carries no header text.
    """
    uid = header.get("SeriesInstanceUID")
    if uid:
        return str(uid)
    details = "|".join(f"{k}={_grouping_value(header, k)}" for k in NO_UID_GROUPING)
    return NO_UID_PREFIX + hashlib.sha1(details.encode("utf-8")).hexdigest()[:12]


def _ts_label(uid) -> str:

    uid = UID(str(uid)) if uid else None
    if uid is None:
        return "unknown transfer syntax"
    name = uid.name if uid.name != str(uid) else "unknown transfer syntax"
    return f"{name} ({uid})"


def _is_image(header) -> bool:
    modality = str(header.get("Modality", "") or "").upper()
    sop_class = str(header.get("SOPClassUID", "") or "")
    if modality in _NON_IMAGE_MODALITIES or sop_class.startswith(_NON_IMAGE_SOP_PREFIXES):
        return False
    return header.get("Rows") is not None and header.get("Columns") is not None


def _frames_in(header) -> int:
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _field_strength(header) -> float | None:
    try:
        value = header.get("MagneticFieldStrength")
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _series_info(uid: str, members: list[tuple[pathlib.Path, Any]], notes: Sequence[str]) -> SeriesInfo:
    first = members[0][1]
    syntaxes = sorted(
        {_ts_label(getattr(getattr(h, "file_meta", None), "TransferSyntaxUID", None)) for _, h in members}
    )
    sop = first.get("SOPClassUID")
    try:
        sop_name = sop.name if sop else ""
    except AttributeError:
        sop_name = str(sop)
    rows = first.get("Rows")
    cols = first.get("Columns")
    if uid.startswith(NO_UID_PREFIX):
        notes = (*notes, _NO_UID_NOTE.format(n=len(members)))
    return SeriesInfo(
        series_uid=uid,
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        n_files=len(members),
        rows=int(rows) if rows is not None else None,
        cols=int(cols) if cols is not None else None,
        n_slices=sum(_frames_in(h) for _, h in members),
        transfer_syntax="; ".join(syntaxes),
        notes=tuple(notes),
        is_image=all(_is_image(h) for _, h in members),
        sop_class=sop_name,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        manufacturer=str(first.get("Manufacturer", "") or ""),
        model=str(first.get("ManufacturerModelName", "") or ""),
        field_strength_t=_field_strength(first),
        files=tuple(f for f, _ in members),
    )


def scan_dicom(path, *, max_files: int = 5000) -> tuple[list[SeriesInfo], list[str]]:
    """:func:`scan_dicom_folder` and the notes on the files skipped, even when no series was found."""
    scan = _scan(path, max_files)
    notes = _summarise_notes(scan.notes)
    infos = [_series_info(uid, members, notes) for uid, members in scan.groups.items()]
    infos.sort(key=lambda s: (not s.is_image, s.modality, s.description, s.series_uid))
    return infos, notes


def scan_dicom_folder(path, *, max_files: int = 5000) -> list[SeriesInfo]:
    """Find the DICOM series under a folder (or in one file) from their headers only.

    Parameters
    ----------
    path : path-like
        A folder of loose files (any names, any depth), a folder holding a ``DICOMDIR``
        (its referenced files are used), or a single DICOM file.
    max_files : int
        Refuse folders with more files than this (a whole PACS export instead of a series).

    Returns
    -------
    list of SeriesInfo
        One per SeriesInstanceUID (or, without one, per acquisition and geometry:
        :func:`series_key`), image series first, sorted by modality, description and UID. Every
        entry carries the same ``notes``: the files skipped and why.

    Raises
    ------
    InputError
        The path does not exist, is unreadable, or holds more than ``max_files`` files.
    """
    return scan_dicom(path, max_files=max_files)[0]


# --------------------------------------------------------------------------- reading


@dataclass
class _Frame:
    """One 2-D frame: where it comes from and where it lies."""

    file_index: int
    frame_index: int | None  # None for single-frame files
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # 6 direction cosines
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    rows: int
    cols: int
    slope: float | None = None  # from functional groups (enhanced multi-frame)
    intercept: float | None = None


def _floats(value, count: int, what: str, modality: str) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        array = np.asarray([])
    if array.size != count or not np.all(np.isfinite(array)):
        raise InputError(STAGE, f"{modality} series has an invalid {what} value; the geometry cannot be determined")
    return array


def _modality_word(modality: str) -> str:
    return modality if modality else "DICOM"


def _frames_of_multiframe(header, file_index: int, modality: str) -> list[_Frame]:
    """Frames of an enhanced multi-frame object, placed by its functional groups."""
    n_frames = _frames_in(header)
    shared = first_item(header, "SharedFunctionalGroupsSequence")
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != n_frames:
        raise InputError(
            STAGE,
            f"{modality} multi-frame file has {n_frames} frames but no per-frame positions "
            "(PerFrameFunctionalGroupsSequence / PlanePositionSequence); the frames cannot be placed "
            "in physical space: export the series as single-frame files",
        )
    frames = []
    for index, item in enumerate(per_frame):

        def lookup(sequence: str, keyword: str, item=item):
            return functional_group_value(item, shared, sequence, keyword, fallback=header)

        position = lookup("PlanePositionSequence", "ImagePositionPatient")
        orientation = lookup("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = lookup("PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None:
            raise InputError(
                STAGE,
                f"{modality} multi-frame file has no position/orientation for frame {index + 1}; "
                "the frames cannot be placed in physical space: export the series as single-frame files",
            )
        if spacing is None:
            raise InputError(STAGE, f"{modality} multi-frame file has no PixelSpacing; the voxel size is unknown")
        slope = lookup("PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup("PixelValueTransformationSequence", "RescaleIntercept")
        spacing_values = _floats(spacing, 2, "PixelSpacing", modality)
        frames.append(
            _Frame(
                file_index=file_index,
                frame_index=index,
                position=_floats(position, 3, "ImagePositionPatient", modality),
                orientation=_floats(orientation, 6, "ImageOrientationPatient", modality),
                pixel_spacing=(float(spacing_values[0]), float(spacing_values[1])),
                rows=int(header.Rows),
                cols=int(header.Columns),
                slope=float(slope) if slope is not None else None,
                intercept=float(intercept) if intercept is not None else None,
            )
        )
    return frames


def _frames_of(headers: Sequence, modality: str) -> list[_Frame]:
    multi = [i for i, h in enumerate(headers) if _frames_in(h) > 1]
    if multi and len(headers) > 1:
        raise InputError(
            STAGE,
            f"{modality} series mixes {len(multi)} multi-frame file(s) with other files; "
            "export it as one multi-frame file or as single-frame files",
        )
    if multi:
        return _frames_of_multiframe(headers[0], 0, modality)
    frames = []
    for index, header in enumerate(headers):
        if header.get("ImagePositionPatient") is None or header.get("ImageOrientationPatient") is None:
            raise InputError(
                STAGE,
                f"{modality} image has no ImagePositionPatient/ImageOrientationPatient; it cannot be placed "
                "in physical space (secondary capture or an anonymiser removed the geometry)",
            )
        if header.get("PixelSpacing") is None:
            raise InputError(STAGE, f"{modality} image has no PixelSpacing; the voxel size is unknown")
        spacing_values = _floats(header.PixelSpacing, 2, "PixelSpacing", modality)
        frames.append(
            _Frame(
                file_index=index,
                frame_index=None,
                position=_floats(header.ImagePositionPatient, 3, "ImagePositionPatient", modality),
                orientation=_floats(header.ImageOrientationPatient, 6, "ImageOrientationPatient", modality),
                pixel_spacing=(float(spacing_values[0]), float(spacing_values[1])),
                rows=int(header.Rows),
                cols=int(header.Columns),
            )
        )
    return frames


@dataclass
class _Geometry:
    order: list[int]  # frame indices in slice order
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    notes: list[str]


def _check_geometry(frames: list[_Frame], modality: str, headers: Sequence) -> _Geometry:
    """Sort frames along the slice normal and check that they form a regular stack."""
    row_spacing, col_spacing = _check_frame_sizes(frames, modality)
    row_cosine, col_cosine, normal = _stack_axes(frames, modality)
    distances = np.array([float(np.dot(f.position, normal)) for f in frames])
    # stable sort with a deterministic tie-break (file, frame) for the duplicate check
    order = sorted(range(len(frames)), key=lambda i: (distances[i], frames[i].file_index, frames[i].frame_index or 0))
    notes: list[str] = []
    if len(frames) == 1:
        z_spacing = _single_slice_spacing(headers[frames[0].file_index], notes)
    else:
        z_spacing = _stack_spacing(frames, order, distances[order], normal, modality)
    axes = np.column_stack([row_cosine, col_cosine, normal])
    return _Geometry(
        order=order,
        spacing=(col_spacing, row_spacing, z_spacing),
        origin=_xyz(frames[order[0]].position),
        direction=tuple(float(v) for v in axes.reshape(-1)),
        notes=notes,
    )


def _check_frame_sizes(frames: list[_Frame], modality: str) -> tuple[float, float]:
    """One Rows x Columns and one positive PixelSpacing for every frame; returns (row, column) spacing."""
    shapes = {(f.rows, f.cols) for f in frames}
    if len(shapes) > 1:
        listed = ", ".join(f"{r} x {c}" for r, c in sorted(shapes))
        raise InputError(STAGE, f"{modality} series mixes image sizes (Rows x Columns: {listed}); it is not one volume")
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.max(np.abs(spacings - spacings[0])) > 1e-4:
        listed = ", ".join(f"{format_mm(r)} x {format_mm(c)}" for r, c in sorted({tuple(s) for s in spacings.tolist()}))
        raise InputError(STAGE, f"{modality} series mixes pixel spacings ({listed} mm); it is not one volume")
    row_spacing, col_spacing = frames[0].pixel_spacing
    if not (row_spacing > 0 and col_spacing > 0):
        raise InputError(STAGE, f"{modality} series has a non-positive PixelSpacing")
    return row_spacing, col_spacing


def _stack_axes(frames: list[_Frame], modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stack's row, column and normal unit vectors; every frame must share the orientation."""
    if not same_orientation([f.orientation for f in frames]):
        raise InputError(
            STAGE,
            f"{modality} series has slices with different orientations (gantry tilt, a localizer or "
            "several stacks in one series); export the axial stack alone",
        )
    axes = slice_axes(frames[0].orientation)
    if axes is None:
        raise InputError(STAGE, f"{modality} series has non-orthogonal ImageOrientationPatient cosines")
    return axes


def _single_slice_spacing(header, notes: list[str]) -> float:
    """A one-slice series' z spacing: SpacingBetweenSlices, else SliceThickness, else 1 mm (noted)."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = header.get(keyword)
        try:
            if value is not None and float(value) > 0:
                notes.append(f"single slice: z spacing taken from {keyword}")
                return float(value)
        except (TypeError, ValueError):
            pass
    notes.append("single slice: z spacing unknown, 1.0 mm assumed")
    return 1.0


def _xyz(values) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return x, y, z


def _stack_spacing(frames: list[_Frame], order: list[int], sorted_d: np.ndarray, normal: np.ndarray,
                   modality: str) -> float:
    """The z spacing of a regular stack: no duplicate, no tilt, no gap, uniform steps."""
    steps = np.diff(sorted_d)
    duplicated = np.nonzero(steps < _DUPLICATE_TOL_MM)[0]
    if duplicated.size:
        at = sorted_d[duplicated[0]]
        count = int(np.sum(np.abs(sorted_d - at) < _DUPLICATE_TOL_MM))
        raise InputError(
            STAGE,
            f"{modality} series has duplicated slice positions ({count} slices at z={format_mm(at)} mm, "
            f"{duplicated.size} duplicate(s) in all): duplicated files, or several acquisitions/echoes "
            "in one series; export a single acquisition",
        )
    tilt = worst_tilt([frames[i].position for i in order], normal)
    if tilt is not None:
        drift, along, angle = tilt
        raise InputError(
            STAGE,
            f"{modality} series has gantry tilt: slice positions drift {format_mm(drift)} mm sideways "
            f"over {format_mm(along)} mm along the slice normal (about {angle:.1f} degrees); "
            "export a tilt-corrected (resampled) reconstruction",
        )
    median = float(np.median(steps))
    gaps = np.nonzero(steps > _GAP_FACTOR * median)[0]
    if gaps.size:
        k = int(gaps[0])
        more = f" ({gaps.size} gaps in all)" if gaps.size > 1 else ""
        raise InputError(
            STAGE,
            f"{modality} series has a missing slice between z={format_mm(sorted_d[k])} and "
            f"z={format_mm(sorted_d[k + 1])} mm{more}; re-export the complete series",
        )
    tolerance = max(_SPACING_ABS_TOL_MM, _SPACING_REL_TOL * median)
    if np.max(np.abs(steps - median)) > tolerance:
        raise InputError(
            STAGE,
            f"{modality} series has non-uniform slice spacing (steps from {format_mm(steps.min())} to "
            f"{format_mm(steps.max())} mm, median {format_mm(median)} mm); re-export it with one spacing",
        )
    # the average step is the best estimate of the spacing on a regular stack
    return float((sorted_d[-1] - sorted_d[0]) / (len(frames) - 1))


#: How a caller of the reader chooses one series among several (ends the "several series" message).
DEFAULT_SERIES_HINT = (
    "name the one to use in the manifest's ct_series_uid/mri_series_uid column, or set io.series_description"
)


def _series_by_description(scan: _Scan, image_series: dict, pattern: str) -> str:
    """The UID of the one image series whose SeriesDescription matches ``pattern`` (``re.search``)."""
    matches = [uid for uid, members in image_series.items()
               if re.search(pattern, str(members[0][1].get("SeriesDescription", "") or ""))]
    if len(matches) == 1:
        return matches[0]
    infos = sorted((_series_info(uid, m, ()) for uid, m in scan.groups.items()),
                   key=lambda s: (not s.is_image, s.modality, s.description, s.series_uid))
    found = "; ".join(f"'{s.description}' ({s.n_files} files)" for s in infos) or "none"
    raise InputError(STAGE, f"io.series_description '{pattern}' matches {len(matches)} image series, "
                            f"expected exactly 1 (series found: {found})")


def _select_series(scan: _Scan, series_uid: str | None, where, hint: str = DEFAULT_SERIES_HINT,
                   series_description: str | None = None) -> tuple[str, list]:
    image_series = {uid: m for uid, m in scan.groups.items() if all(_is_image(h) for _, h in m)}
    notes = _summarise_notes(scan.notes)
    if series_uid is None and series_description and pathlib.Path(where).is_dir():
        series_uid = _series_by_description(scan, image_series, series_description)

    def listing(groups) -> str:
        infos = sorted(
            (_series_info(uid, m, ()) for uid, m in groups.items()),
            key=lambda s: (s.modality, s.description, s.series_uid),
        )
        return "; ".join(info.summary() for info in infos)

    if series_uid is not None:
        if series_uid in image_series:
            return series_uid, image_series[series_uid]
        available = listing(image_series) if image_series else "none"
        raise InputError(STAGE, f"series {series_uid} (the series UID asked for) is not among the image series found: "
                                f"{available}")
    if not image_series:
        skipped = f" ({len(scan.notes)} files skipped: {'; '.join(notes)})" if scan.notes else ""
        if not scan.groups and not scan.notes:
            skipped = " (the folder is empty)" if pathlib.Path(where).is_dir() else ""
        others = f"; non-image objects found: {listing(scan.groups)}" if scan.groups else ""
        raise InputError(STAGE, f"no DICOM image series found at {where}{others}{skipped}")
    if len(image_series) > 1:
        raise InputError(
            STAGE,
            f"{len(image_series)} image series found at {where}: {listing(image_series)}; {hint}",
        )
    uid = next(iter(image_series))
    return uid, image_series[uid]


# Native little-endian transfer syntaxes whose Pixel Data the reader takes straight from the
# file: UID -> explicit VR. Everything else (compressed, deflated, big endian) goes through pydicom.
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2": False, "1.2.840.10008.1.2.1": True}


def _is_native(transfer_syntax) -> bool:

    try:
        return not UID(str(transfer_syntax)).is_compressed
    except Exception:  # noqa: BLE001
        return False


def _check_grayscale(header, modality: str) -> None:
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2") or "")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            STAGE,
            f"{modality} series is a colour image ({photometric}, {samples} samples per pixel); "
            "a grayscale CT/MR series is needed",
        )


@dataclass(frozen=True)
class _NativeLayout:
    """Where and how the stored values of a native little-endian file lie."""

    offset: int  # of the Pixel Data element (its tag)
    header_length: int  # 12 (explicit VR OB/OW) or 8 (implicit VR)
    file_size: int
    dtype: np.dtype
    unused_bits: int  # BitsAllocated - BitsStored

    def value_bytes(self, frames: int, rows: int, cols: int) -> int:
        return frames * rows * cols * self.dtype.itemsize


def _native_layout(header, pixel_at: tuple[int, int] | None) -> _NativeLayout | None:
    """The layout of a file the reader can decode itself; None sends the file to pydicom."""
    if pixel_at is None:
        return None
    ts = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    explicit = _NATIVE_LITTLE_ENDIAN.get(ts)
    if explicit is None:
        return None
    try:
        allocated = int(header.get("BitsAllocated") or 0)
        stored = int(header.get("BitsStored") or allocated)
        signed = int(header.get("PixelRepresentation") or 0) == 1
    except (TypeError, ValueError):
        return None
    if allocated not in (8, 16, 32) or not 0 < stored <= allocated:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    return _NativeLayout(pixel_at[0], 12 if explicit else 8, pixel_at[1], dtype, allocated - stored)


def _short_pixel_data(modality: str, where: str, found: int, expected: int, name: str) -> InputError:
    return InputError(
        STAGE,
        f"{modality} slice at {where} has pixel data shorter than Rows x Columns "
        f"({found} of {expected} bytes; file {name}): the file is truncated, re-export it",
    )


def _decode_native(path: pathlib.Path, layout: _NativeLayout, frames: int, rows: int, cols: int, modality: str,
                   where: str) -> np.ndarray | None:
    """Stored values (frames, rows, cols) read straight from the file, or None to let pydicom decode.

    The values are those of pydicom's ``pixel_array`` for native data: little-endian integers
    of BitsAllocated bits with the unused high bits cleared (unsigned) or sign-extended (signed).
    """
    expected = layout.value_bytes(frames, rows, cols)
    try:
        with open(path, "rb") as handle:
            handle.seek(layout.offset)
            head = handle.read(layout.header_length)
            if len(head) < layout.header_length or head[:4] != _PIXEL_DATA_TAG_LE:
                return None
            if layout.header_length == 12:
                if head[4:6] not in (b"OB", b"OW"):
                    return None
                length = int.from_bytes(head[8:12], "little")
            else:
                length = int.from_bytes(head[4:8], "little")
            if length == 0xFFFFFFFF:  # encapsulated data under a native transfer syntax: pydicom's problem
                return None
            data = handle.read(min(length, expected))
    except PermissionError:
        raise InputError(STAGE, f"{modality} file is not readable (permission denied): {path.name}") from None
    except OSError as exc:
        raise InputError(
            STAGE, f"{modality} file {path.name} could not be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) < expected:
        raise _short_pixel_data(modality, where, len(data), expected, path.name)
    stored = np.frombuffer(data, dtype=layout.dtype).reshape(frames, rows, cols)
    if layout.unused_bits:
        stored = stored.copy()
        np.left_shift(stored, layout.unused_bits, out=stored)
        np.right_shift(stored, layout.unused_bits, out=stored)
    return stored


def _decode(
    path: pathlib.Path, frames_expected: int, rows: int, cols: int, modality: str, where: str
) -> tuple[np.ndarray, object]:
    """Decoded stored values of one file by pydicom, (frames, rows, cols), and its dataset."""

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), force=False)
    except PermissionError:
        raise InputError(STAGE, f"{modality} file is not readable (permission denied): {path.name}") from None
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            STAGE, f"{modality} file {path.name} could not be read ({type(exc).__name__}); it may be truncated"
        ) from None
    ts_uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts = _ts_label(ts_uid)
    if "PixelData" not in ds:
        raise InputError(STAGE, f"{modality} slice at {where} has no pixel data (file {path.name})")
    if _is_native(ts_uid):
        bits_allocated = int(ds.get("BitsAllocated", 16) or 16)
        expected = rows * cols * frames_expected * bits_allocated // 8
        if len(ds.PixelData) < expected:
            raise _short_pixel_data(modality, where, len(ds.PixelData), expected, path.name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        # pydicom lists every decoder's complaint on its own line after a generic first line
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines)[:240] if lines else type(exc).__name__
        raise InputError(
            STAGE,
            f"{modality} pixel data in transfer syntax {ts} could not be decoded (file {path.name}: {detail}); "
            "export the series uncompressed or as JPEG Lossless, JPEG-LS, JPEG 2000 or RLE",
        ) from None
    stored = np.asarray(stored)
    if stored.ndim == 2:
        stored = stored[None]
    if stored.shape != (frames_expected, rows, cols):
        raise InputError(
            STAGE,
            f"{modality} pixel data of file {path.name} decode to shape {stored.shape}, "
            f"expected {(frames_expected, rows, cols)} from the header",
        )
    return stored, ds


def _rescaled(stored: np.ndarray, ds, frame: _Frame) -> np.ndarray:
    """Real-world values (float32) of one frame: Modality LUT or Rescale Slope/Intercept."""

    if frame.slope is not None or frame.intercept is not None:
        slope = 1.0 if frame.slope is None else frame.slope
        intercept = 0.0 if frame.intercept is None else frame.intercept
        return (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    return np.asarray(apply_rescale(stored, ds), dtype=np.float64).astype(np.float32)


def geometry_carrier(spacing, origin, direction):
    """A 1-voxel SimpleITK image with this geometry: index <-> physical transforms by ITK's own
    arithmetic (ITK does not bound-check them) without allocating the whole grid."""

    carrier = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    carrier.SetSpacing(tuple(spacing))
    carrier.SetOrigin(tuple(origin))
    carrier.SetDirection(tuple(direction))
    return carrier


class DicomSeries:
    """One checked DICOM series whose pixel data are decoded on demand, box by box.

    :func:`open_dicom_series` reads the headers, chooses the series and checks its geometry;
    :meth:`read` decodes the slices a box covers and no others, so a caller that needs the
    ROI's neighbourhood of a 300-slice CT decodes those slices only. Files in a native
    little-endian transfer syntax are read straight from the Pixel Data offset the header
    scan found (no second parse); compressed and unusual files are decoded by pydicom.

    Attributes
    ----------
    info : SeriesInfo
        With ``spacing``, ``origin`` and ``direction`` filled.
    size : (x, y, z) ints
        Columns, rows and slices.
    carrier : SimpleITK.Image
        1 voxel with the series geometry (:func:`geometry_carrier`).
    """

    def __init__(self, *, info: SeriesInfo, files: Sequence[pathlib.Path], headers: Sequence, frames: list[_Frame],
                 geometry: _Geometry, modality: str, pixel_at: dict):
        self.info = info
        self._files = list(files)
        self._headers = list(headers)
        self._frames = frames
        self._geometry = geometry
        self._modality = modality
        first = frames[0]
        self.size = (first.cols, first.rows, len(frames))
        self.carrier = geometry_carrier(geometry.spacing, geometry.origin, geometry.direction)
        self._layouts = [_native_layout(h, pixel_at.get(f)) for f, h in zip(self._files, self._headers, strict=True)]
        self._first_frame: dict[int, _Frame] = {}  # file index -> its first frame, for messages
        for frame in frames:
            self._first_frame.setdefault(frame.file_index, frame)
        self._decoded: OrderedDict[int, tuple[np.ndarray, object]] = OrderedDict()

    @property
    def headers(self) -> list:
        """The header of each file of :attr:`info` ``.files``, in that order (no pixel data)."""
        return list(self._headers)

    def _where(self, frame: _Frame) -> str:
        normal = np.asarray(self._geometry.direction).reshape(3, 3)[:, 2]
        return f"z={format_mm(float(np.dot(frame.position, normal)))} mm"

    def check_lengths(self) -> None:
        """Refuse a native file cut short inside its pixel data, from file sizes alone (no read)."""
        rows, cols = self.size[1], self.size[0]
        for file_index, file in enumerate(self._files):
            layout = self._layouts[file_index]
            if layout is None:
                continue
            n_frames = _frames_in(self._headers[file_index])
            expected = layout.value_bytes(n_frames, rows, cols)
            found = layout.file_size - layout.offset - layout.header_length
            if found < expected:
                frame = self._first_frame[file_index]
                raise _short_pixel_data(self._modality, self._where(frame), max(found, 0), expected, file.name)

    def _stored(self, file_index: int, frames: int) -> tuple[np.ndarray, object]:
        rows, cols = self.size[1], self.size[0]
        file = self._files[file_index]
        where = self._where(self._first_frame[file_index])
        layout = self._layouts[file_index]
        if layout is not None:
            stored = _decode_native(file, layout, frames, rows, cols, self._modality, where)
            if stored is not None:
                return stored, self._headers[file_index]
        return _decode(file, frames, rows, cols, self._modality, where)

    def _stored_once(self, file_index: int) -> tuple[np.ndarray, object]:
        """:meth:`_stored`, remembering the last :data:`DECODED_FILES_KEPT` single-frame files decoded.

        Pass 1 reads two boxes of one series, the ROI's crop and the QA strip through it: the
        slices they share are decoded once. Multi-frame files (the whole series in one file) are
        not kept, so memory stays bounded by a few dozen slices whatever the read.
        """
        hit = self._decoded.get(file_index)
        if hit is not None:
            self._decoded.move_to_end(file_index)
            return hit
        n_frames = _frames_in(self._headers[file_index])
        decoded = self._stored(file_index, n_frames)
        if n_frames == 1:
            self._decoded[file_index] = decoded
            if len(self._decoded) > DECODED_FILES_KEPT:
                self._decoded.popitem(last=False)
        return decoded

    def read(self, index: Sequence[int] = (0, 0, 0), size: Sequence[int] | None = None):
        """The float32 SimpleITK image of the box ``index`` .. ``index + size`` (x, y, z; default everything).

        Real-world values (HU for CT); the box keeps the series' spacing and direction, its
        origin is the physical position of ``index``.
        """

        x0, y0, z0 = (int(v) for v in index)
        nx, ny, nz = (int(v) for v in (size if size is not None else self.size))
        if min(x0, y0, z0) < 0 or min(nx, ny, nz) < 1 or x0 + nx > self.size[0] or y0 + ny > self.size[1] \
                or z0 + nz > self.size[2]:
            raise ValueError(f"box {tuple(index)} + {(nx, ny, nz)} lies outside the series ({self.size})")
        slot_of = {self._geometry.order[z0 + k]: k for k in range(nz)}
        by_file: dict[int, list[int]] = {}
        for frame_index in slot_of:
            by_file.setdefault(self._frames[frame_index].file_index, []).append(frame_index)
        volume = np.empty((nz, ny, nx), dtype=np.float32)
        for file_index in sorted(by_file):
            try:
                stored, ds = self._stored_once(file_index)
            except (InputError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - a decoder failing in a way nobody foresaw is still a bad file
                frame = self._first_frame[file_index]
                raise InputError(STAGE, f"{self._modality} slice at {self._where(frame)} could not be decoded "
                                        f"(file {self._files[file_index].name}: unexpected {type(exc).__name__}: "
                                        f"{str(exc)[:200]})") from None
            for frame_index in by_file[file_index]:
                frame = self._frames[frame_index]
                plane = stored[frame.frame_index or 0, y0:y0 + ny, x0:x0 + nx]
                volume[slot_of[frame_index]] = _rescaled(plane, ds, frame)
            del stored, ds
        if not np.isfinite(volume).all():
            raise InputError(
                STAGE,
                f"{self._modality} series gives non-finite values after its Rescale Slope/Intercept "
                "or Modality LUT; the header is corrupt, re-export the series",
            )
        image = sitk.GetImageFromArray(volume, isVector=False)
        image.SetSpacing(self._geometry.spacing)
        image.SetOrigin(self.carrier.TransformIndexToPhysicalPoint((x0, y0, z0)))
        image.SetDirection(self._geometry.direction)
        return image


def open_dicom_series(path, *, series_uid: str | None = None, max_voxels: int = 400_000_000, max_files: int = 5000,
                      series_hint: str = DEFAULT_SERIES_HINT, series_description: str | None = None,
                      whole_headers: bool = False) -> DicomSeries:
    """Find, choose and check one DICOM series from its headers; decode nothing yet.

    Parameters are those of :func:`read_dicom_series`, and ``series_description``: when no
    ``series_uid`` is given and ``path`` is a folder, the series is the one image series whose
    SeriesDescription matches this regular expression (``re.search``); none or several is an
    error listing the series found. The folder is scanned once either way. Every check that needs no pixel value
    happens here: one modality, a regular stack, grayscale, the voxel limit, and native files
    cut short inside their pixel data. What only decoding can show (a corrupt compressed
    frame) is found by :meth:`DicomSeries.read`, for the slices it is asked to decode.

    ``whole_headers``: the scan keeps every attribute before the pixel data, identities included
    (:attr:`DicomSeries.headers`), for the export, which builds its objects from them; the run
    reads :data:`HEADER_KEYWORDS` only. Either way each file's header is parsed once.

    Raises
    ------
    InputError
        With a sentence naming the problem (stage ``ingest``).
    """
    scan = _scan(path, max_files, None if whole_headers else HEADER_KEYWORDS)
    uid, members = _select_series(scan, series_uid, path, series_hint, series_description)
    if uid.startswith(NO_UID_PREFIX):
        # the folder's name, not its path: run.log lives in the run folder, which holds no absolute path
        log.warning("%s: %d DICOM files without SeriesInstanceUID grouped by acquisition and geometry (%s)",
                    pathlib.Path(path).name, len(members), uid)
    headers = [h for _, h in members]
    files = [f for f, _ in members]
    modality = _modality_word(str(headers[0].get("Modality", "") or "").upper())
    modalities = [str(h.get("Modality", "") or "?").upper() for h in headers]
    if len(set(modalities)) > 1:
        counts = ", ".join(f"{m}: {modalities.count(m)} files" for m in sorted(set(modalities)))
        raise InputError(
            STAGE,
            f"DICOM series mixes modalities ({counts}) under one SeriesInstanceUID; the export merged "
            "files of different acquisitions: re-export the series alone",
        )

    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    n_frames = sum(_frames_in(h) for h in headers)
    claimed = rows * cols * n_frames
    if claimed > max_voxels:
        raise InputError(
            STAGE,
            f"{modality} series headers claim {rows} x {cols} x {n_frames} = {claimed} voxels, more than the "
            f"limit of {max_voxels} (io.max_voxels_per_volume); the header is corrupt or the series is not a "
            "lumbar volume",
        )
    if rows <= 0 or cols <= 0:
        raise InputError(STAGE, f"{modality} series headers claim an empty image ({rows} x {cols})")

    frames = _frames_of(headers, modality)
    try:
        geometry = _check_geometry(frames, modality, headers)
    except InputError as error:
        if not scan.notes:
            raise
        # a skipped file (empty, truncated, unreadable) is the usual cause of a hole in the stack
        notes = [note.replace(": skipped, ", ": ") for note in _summarise_notes(scan.notes)]
        skipped = f"{len(scan.notes)} file{'s' if len(scan.notes) > 1 else ''} skipped"
        raise InputError(STAGE, f"{error.reason} ({skipped}: {'; '.join(notes)})") from None
    for header in headers:
        _check_grayscale(header, modality)

    info = _series_info(uid, members, tuple(_summarise_notes(scan.notes)) + tuple(geometry.notes))
    info = dataclasses.replace(
        info,
        spacing=geometry.spacing,
        origin=geometry.origin,
        direction=geometry.direction,
        n_slices=len(frames),
    )
    series = DicomSeries(info=info, files=files, headers=headers, frames=frames, geometry=geometry, modality=modality,
                         pixel_at=scan.pixel_at)
    series.check_lengths()
    return series


def read_dicom_series(path, *, series_uid: str | None = None, max_voxels: int = 400_000_000, max_files: int = 5000,
                      series_hint: str = DEFAULT_SERIES_HINT):
    """Read one DICOM series into a float32 SimpleITK image in physical space.

    Parameters
    ----------
    path : path-like
        A series folder (loose files or a DICOMDIR tree) or a single DICOM file.
    series_uid : str, optional
        The SeriesInstanceUID to read when the folder holds several image series
        (the manifest's ``ct_series_uid``/``mri_series_uid`` column). DICOM-SEG, SR and other non-image
        objects are ignored.
    max_voxels : int
        Refuse (before decoding any pixel data) a series whose headers claim more voxels.
    max_files : int
        Refuse folders with more files than this.
    series_hint : str
        How the caller chooses a series, said when the folder holds several (the engine names
        the manifest's ``ct_series_uid``/``mri_series_uid`` column).

    Returns
    -------
    image : SimpleITK.Image
        float32, real-world values (HU for CT) after the Modality LUT / rescale;
        ``GetArrayFromImage`` gives (Z, Y, X) with slices sorted along the slice normal.
    info : SeriesInfo
        With ``spacing``, ``origin`` and ``direction`` filled.

    Raises
    ------
    InputError
        With a sentence naming the problem (stage ``ingest``).
    """
    series = open_dicom_series(path, series_uid=series_uid, max_voxels=max_voxels, max_files=max_files,
                               series_hint=series_hint)
    return series.read(), series.info
