"""The cohort manifest (docs/method.md section 1): one CSV row per patient.

Run-level problems (missing required column, duplicate column or patient_id, a label that is
not 0/1, a misspelled engine column, a clinical column of file paths) raise
:class:`~engine.errors.ManifestError` naming the line and column, before any work starts. A stray
non-numeric value in a numeric clinical column is a per-patient problem: the cell becomes missing
and an ``errors.csv`` row says so.

Every column the engine does not know is a clinical variable, so two mistakes would otherwise
pass silently and cost a whole run (issue 13: ``ct_imgae`` failed every patient and became a
"clinical variable" with one level per file path):

* a column whose name, lower-cased with spaces, hyphens and dots read as underscores, is an
  engine column's or within a ``difflib`` similarity of 0.8 of one (``ct_imgae``, ``CT Image``,
  ``patientid``, ``labels``) is refused, naming the likely intended column. Clinical names seen
  in cohorts (``age``, ``patient_age``, ``ct_date``, ``mri_image_date``) stay below 0.8;
* a clinical column whose values are mostly file paths is refused (:func:`looks_like_path`).
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.contract import (
    ENGINE_COLUMNS,
    EXCLUSION_COLUMNS,
    MODALITIES,
    REQUIRED_COLUMNS,
    SPLITS,
    image_column,
    roi_column,
    segmentation_column,
)
from engine.errors import ManifestError, PatientError

IMAGE_COLUMNS = {m: (image_column(m), roi_column(m)) for m in MODALITIES}
# Columns holding paths, resolved against the manifest's folder: image, ROI and whole-body segmentation.
PATH_COLUMNS = {m: (image_column(m), roi_column(m), segmentation_column(m)) for m in MODALITIES}
# difflib.SequenceMatcher ratio at or above which a name is taken for a misspelled engine column
MISSPELLING_SIMILARITY = 0.8
# Endings of the image and mask files the engine reads (docs/method.md section 1), lower case.
IMAGE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")
# an absolute path with at least two components: /data/p1, ~/scans/p1, C:\data\p1, \\server\share
_ABSOLUTE_PATH = re.compile(r"^(?:/|~/|[A-Za-z]:[\\/]|\\\\)[^/\\\s][^/\\]*[/\\][^/\\\s]")


@dataclass
class Manifest:
    """A validated manifest.

    Attributes
    ----------
    table : DataFrame
        One row per patient, indexed by ``patient_id`` (sorted), with ``label`` (float 1/0/NaN),
        ``split`` (as given; ``""`` where empty), absolute image/ROI paths (``""`` where absent)
        and the clinical columns.
    clinical_columns : list of str
        Every column that is not an engine column, in manifest order.
    problems : list of PatientError
        Per-patient cell problems (stage ``manifest``); the patient still runs.
    """

    table: pd.DataFrame
    clinical_columns: list[str]
    problems: list[PatientError] = field(default_factory=list)
    source: Path | None = None

    @property
    def patient_ids(self) -> list[str]:
        return list(self.table.index)

    def inputs(self, patient_id: str, modality: str) -> tuple[str, str] | None:
        """(image path, ROI path) for one patient and modality, or None if it has none."""
        image_col, roi_col = IMAGE_COLUMNS[modality]
        row = self.table.loc[patient_id]
        image, roi = row.get(image_col, ""), row.get(roi_col, "")
        if not image and not roi and not self.segmentation(patient_id, modality):
            return None
        return image, roi

    def segmentation(self, patient_id: str, modality: str) -> str:
        """The whole-body segmentation path of one patient and modality (``""`` where none)."""
        return self.table.loc[patient_id].get(segmentation_column(modality), "") or ""


def _read_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (first physical line, cells) of every non-blank record.

    Line numbers are the file's, so a quoted cell spanning two lines does not shift the lines
    named in later errors. A row with more or fewer cells than the header is refused: its
    values would land in the wrong columns (a stray comma in a path, a cell lost in an edit).
    """
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        header = _check_header(next(reader))
    except StopIteration:
        raise ManifestError("the file is empty") from None
    except csv.Error as exc:
        raise ManifestError(f"not a readable CSV ({exc})", line=1) from None
    rows = []
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ManifestError(f"not a readable CSV ({exc})", line=line) from None
        if cells and any(c.strip() for c in cells):
            if len(cells) != len(header):
                raise ManifestError(f"the row has {len(cells)} cells but the header has {len(header)} columns; "
                                    "check for a stray or missing comma (quote cells that contain commas)",
                                    line=line)
            rows.append((line, [c.strip() for c in cells]))
        line = reader.line_num + 1
    return header, rows


def _check_header(header: list[str]) -> list[str]:
    header = [h.strip() for h in header]
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if not name:
            raise ManifestError(f"column {position} has an empty name", line=1)
        if name in seen:
            raise ManifestError(f"column name '{name}' appears twice (columns {seen[name]} and {position})",
                                line=1, column=name)
        seen[name] = position
        _check_column_name(name)
    return header


def _normal_name(name: str) -> str:
    return re.sub(r"[\s.\-]+", "_", name.strip().lower())


def _check_column_name(name: str) -> None:
    """Refuse a column the engine would misread as clinical: a misspelled or unsupported engine column."""
    if name in ENGINE_COLUMNS:
        return
    normal = _normal_name(name)
    match = normal if normal in ENGINE_COLUMNS else next(
        iter(difflib.get_close_matches(normal, ENGINE_COLUMNS, n=1, cutoff=MISSPELLING_SIMILARITY)), None)
    if match is not None:
        raise ManifestError(f"unknown column; did you mean '{match}'? Rename it (a column the engine does not "
                            "know is read as a clinical variable, and a clinical name must not look like an "
                            "engine column's)", line=1, column=name)


def looks_like_path(value: str, base: Path) -> bool:
    """Whether a manifest cell reads as a file path rather than a clinical value.

    A path is a value that ends in an image or mask file ending (``.nii``, ``.nii.gz``, ``.nrrd``,
    ``.nhdr``, ``.mha``, ``.mhd``, ``.dcm``, ``.dicom``, ``.ima``; any case), or is absolute with at
    least two components (``/data/p1``, ``~/scans/p1``, ``C:\\data\\p1``), or contains a ``/``
    or ``\\`` and exists relative to ``base`` (the manifest's folder). So ``24.5``, ``a/b``
    (an occupation code), ``2021/03/04`` or ``N/A`` are not paths unless such a file exists.
    """
    text = value.strip()
    if text.lower().endswith(IMAGE_FILE_SUFFIXES) or _ABSOLUTE_PATH.match(text):
        return True
    if "/" in text or "\\" in text:
        try:
            return (base / os.path.expanduser(text)).exists()
        except (OSError, ValueError):  # a name too long or with a NUL byte is not a path here
            return False
    return False


def _refuse_path_column(column: str, values: pd.Series, base: Path) -> None:
    """Refuse a clinical column whose non-empty values are mostly file paths (:func:`looks_like_path`)."""
    present = [v for v in values if v not in ("", "NA", "nan")]
    paths = [v for v in present if looks_like_path(v, base)]
    if present and 2 * len(paths) > len(present):
        names = ", ".join(c for c in ENGINE_COLUMNS if c.endswith(("_image", "_roi", "_segmentation")))
        raise ManifestError(f"holds file paths ({len(paths)} of {len(present)} values, e.g. '{paths[0]}'), not a "
                            f"clinical variable; an image or ROI column must be named one of {names}; otherwise "
                            "remove the column", column=column)


def _resolve(path_text: str, base: Path, data_root: Path | None, *, line: int, column: str) -> str:
    if not path_text:
        return ""
    path = Path(os.path.expanduser(path_text))
    if not path.is_absolute():
        path = base / path
    path = Path(os.path.abspath(path))
    if data_root is not None:
        # real paths: a symbolic link inside the root that points outside it is outside
        root = Path(os.path.realpath(data_root))
        if os.path.commonpath([root, os.path.realpath(path)]) != str(root):
            raise ManifestError(f"path '{path_text}' lies outside the data root {root}", line=line, column=column)
    return str(path)


def read_manifest(path: str | Path, *, data_root: str | Path | None = None) -> Manifest:
    """Read and validate a manifest CSV.

    Parameters
    ----------
    path : path-like
        The CSV. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted.
    data_root : path-like, optional
        If given, every image and ROI path must resolve inside it.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8") from None
    header, records = _read_rows(text)
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise ManifestError(f"required column '{column}' is missing (columns: {', '.join(header)})", column=column)
    if not any(c in header for c in ("ct_image", "mri_image")):
        raise ManifestError("needs at least one image column: ct_image or mri_image")

    if not records:
        raise ManifestError("the manifest has no patient rows (only a header)")
    table = pd.DataFrame([cells for _, cells in records], columns=header, dtype=str)
    base = path.parent
    root = Path(data_root) if data_root else None
    problems: list[PatientError] = []

    seen_ids: dict[str, int] = {}
    labels, splits = [], []
    for offset, (line, cells) in enumerate(records):
        record = dict(zip(header, cells, strict=True))
        pid = record["patient_id"]
        if not pid:
            raise ManifestError("patient_id is empty", line=line, column="patient_id")
        if pid in seen_ids:
            raise ManifestError(f"patient_id '{pid}' also appears on line {seen_ids[pid]}", line=line,
                                column="patient_id")
        seen_ids[pid] = line
        label_text = record["label"]
        if label_text in ("", "NA", "nan"):
            labels.append(np.nan)
        elif label_text in ("0", "1", "0.0", "1.0"):
            labels.append(float(label_text))
        else:
            raise ManifestError(f"label must be 1, 0 or empty, got '{label_text}'", line=line, column="label")
        split_text = record.get("split", "").lower()
        if split_text and split_text not in SPLITS:
            raise ManifestError(f"split must be one of {', '.join(SPLITS)} or empty, got '{record['split']}'",
                                line=line, column="split")
        splits.append(split_text)
        for columns in PATH_COLUMNS.values():
            for column in columns:
                if column in record:
                    table.iat[offset, header.index(column)] = _resolve(record[column], base, root,
                                                                      line=line, column=column)
    table["label"] = labels
    table["split"] = splits
    for column in ENGINE_COLUMNS:
        if column not in table.columns:
            table[column] = ""

    clinical = [c for c in header if c not in ENGINE_COLUMNS]
    for column in clinical:
        _refuse_path_column(column, table[column], base)
    for column in clinical:
        values = table[column].replace({"": np.nan, "NA": np.nan, "nan": np.nan})
        numeric = pd.to_numeric(values, errors="coerce")
        present = values.notna()
        bad = present & numeric.isna()
        # A column that is numeric apart from a few stray cells is numeric with missing cells;
        # a column that is mostly text is categorical (sex, occupation, yes/no).
        if present.sum() and bad.sum() <= 0.2 * present.sum():
            for pid, value in zip(table.loc[bad, "patient_id"], values[bad], strict=True):
                problems.append(PatientError(pid, "clinical", "manifest",
                                             f"clinical column '{column}' has the non-numeric value '{value}'; "
                                             "it is treated as missing"))
            table[column] = numeric
        else:
            table[column] = values
    table = table.set_index("patient_id", drop=False).sort_index()
    table.index.name = None
    return Manifest(table=table, clinical_columns=clinical, problems=problems, source=path)


def assign_splits(table: pd.DataFrame, *, train_fraction: float = 0.6, seed: int = 42) -> pd.Series:
    """The split of every patient: the manifest's where given, else a seeded stratified split.

    Rows with an empty split and a label are divided ``train_fraction : 1 - train_fraction``
    into train and validation, stratified on label. The draw depends only on the seed and the
    set of patient ids (rows are sorted by id first), never on manifest row order. Rows with an
    empty split and no label go to validation: they are scored, never fitted.
    """
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn is heavy; only where it is used

    split = table["split"].copy()
    empty = split == ""
    labelled = table.index[empty & table["label"].notna()]
    labelled = sorted(labelled)
    if labelled:
        y = table.loc[labelled, "label"].astype(int).to_numpy()
        counts = np.bincount(y, minlength=2)
        stratify = y if counts.min() >= 2 else None
        if len(labelled) >= 2:
            train_ids, _ = train_test_split(labelled, train_size=train_fraction, random_state=seed,
                                            stratify=stratify)
        else:
            train_ids = labelled
        train_ids = set(train_ids)
        for pid in labelled:
            split.loc[pid] = "train" if pid in train_ids else "validation"
    split[(split == "")] = "validation"
    return split


def exclude_reviewed(jobs: list[dict], exclusion_csv: str | None, manifest: Manifest, notes: list[str]) -> list[dict]:
    """The jobs less the patients flagged at review (config ``run.exclude``; issue 17).

    The exclusion list is a CSV with ``patient_id`` and optionally ``modality`` (empty: every
    modality) and ``reason``, relative to the manifest's folder. An excluded patient is not
    processed at all, so it enters no fit and gets no features; the run notes how many were left
    out. An id the manifest lacks is a run-level mistake (a list from another cohort).
    """

    if not exclusion_csv:
        return jobs
    path = Path(os.path.expanduser(exclusion_csv))
    if not path.is_absolute() and manifest.source is not None:
        path = manifest.source.parent / path
    if not path.is_file():
        raise ManifestError(f"exclusion list (run.exclude) not found: {path}")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if EXCLUSION_COLUMNS[0] not in table.columns:
        raise ManifestError(f"exclusion list {path.name} needs a '{EXCLUSION_COLUMNS[0]}' column "
                            f"(columns: {', '.join(table.columns)})")
    excluded: set[tuple[str, str]] = set()
    for _, row in table.iterrows():
        pid, modality = row[EXCLUSION_COLUMNS[0]].strip(), row.get(EXCLUSION_COLUMNS[1], "").strip().lower()
        if not pid:
            continue
        if pid not in manifest.table.index:
            raise ManifestError(f"exclusion list {path.name} names patient '{pid}', who is not in the manifest")
        if modality and modality not in MODALITIES:
            raise ManifestError(f"exclusion list {path.name}: modality must be one of {', '.join(MODALITIES)} or "
                                f"empty, got '{modality}' for patient '{pid}'")
        excluded |= {(pid, m) for m in ([modality] if modality else MODALITIES)}
    kept = [job for job in jobs if (job["patient_id"], job["modality"]) not in excluded]
    if len(kept) < len(jobs):
        notes.append(f"{len(jobs) - len(kept)} series excluded at review ({path.name})")
    return kept
