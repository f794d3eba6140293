"""One patient's result as the exporters see it: the run folder's numbers and maps, and the source series.

The run folder holds no identifier (docs/method.md section 6): the identities (patient, study, series,
SOP instances, frame of reference) are read here, at export time, from the DICOM files the run read,
found again through provenance.json's ``sources`` (the manifest's image path). Nothing read here is
written back into the run folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import SimpleITK as sitk

from ..contract import (
    DERIVED_ROI_DIR,
    FEATURES_CSV,
    FIXED,
    HABITAT_LABELS,
    HABITATS_DIR,
    PROVENANCE_JSON,
    ROI_MUSCLE_GROUPS,
    ROI_MUSCLE_LABELS,
    SOURCE_IMAGE,
    SOURCE_SERIES_UID,
    SOURCES_KEY,
    THRESHOLDS_JSON,
    derived_roi_path,
    feature_name,
    habitat_path,
    qa_png_path,
    source_key,
    vs_fixed_column,
)
from ..errors import InputError, SarcoError, UsageError
from ..io.dicom import open_dicom_series
from ..methods import modality_methods
from ..userfiles import require_run_folder


class ExportError(SarcoError):
    """One patient's export cannot go on; ``step`` names where (source, seg, sr, sc, store)."""

    def __init__(self, step: str, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"[{step}] {reason}")


@dataclass
class SourceSeries:
    """The source series on its own grid: datasets sorted along the slice normal and the grid they span."""

    datasets: list  # pydicom Datasets, sorted by position along the normal (slice k = index k)
    spacing: tuple[float, ...]  # (x, y, z), mm
    origin: tuple[float, ...]  # (x, y, z), mm, LPS
    direction: tuple[float, ...]  # row-major 3x3, columns the axis directions

    @property
    def size(self) -> tuple[int, int, int]:
        first = self.datasets[0]
        return int(first.Columns), int(first.Rows), len(self.datasets)

    def reference_image(self):
        """An empty SimpleITK image on the source grid (the resampling target)."""

        image = sitk.Image(list(self.size), sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass
class PatientResult:
    """What one patient and modality's exports are built from.

    ``features`` holds the features.csv row (volumes in mm^3, as the run wrote them); ``methods``
    the methods measured, in the run's order; ``habitats`` the habitat map of each method (resampled
    1 mm grid, :data:`engine.contract.HABITAT_LABELS`); ``muscles`` the ROI muscles when the ROI was
    derived from a whole-body segmentation (empty for a hand-drawn ROI); ``qa_png`` the QA picture
    (None when the run drew none); ``identity`` the seed of every UID of this patient's exports.
    """

    patient_id: str
    modality: str
    methods: list[str]
    features: dict[str, float | None]
    thresholds: dict[str, float]
    diagnostic: dict
    habitats: dict[str, Path]
    muscles: tuple[str, ...]
    qa_png: Path | None
    identity: str
    source: SourceSeries | None = None
    extras: dict = field(default_factory=dict)

    @property
    def series(self) -> SourceSeries:
        """The source series (read by :func:`read_source`; an export step before it is a bug)."""
        if self.source is None:
            raise ExportError("source", "the source series was not read")
        return self.source

    def feature(self, method: str, tissue: str, stat: str) -> float:
        value = self.features.get(feature_name(self.modality, method, tissue, stat), math.nan)
        return float(value) if value is not None else math.nan

    def vs_fixed(self, method: str) -> float:
        value = self.features.get(vs_fixed_column(self.modality, method))
        return math.nan if value is None else float(value)


@dataclass
class RunFolder:
    """The published files of a run that the exporters read (no cache, no identifier)."""

    path: Path
    features: pd.DataFrame
    thresholds: dict
    provenance: dict

    @classmethod
    def open(cls, run_dir) -> RunFolder:

        path = require_run_folder(run_dir)
        provenance_file = path / PROVENANCE_JSON
        if not provenance_file.is_file():
            raise UsageError(f"run folder '{run_dir}' has no {PROVENANCE_JSON}; the run did not finish")
        provenance = json.loads(provenance_file.read_text(encoding="utf-8"))
        if SOURCES_KEY not in provenance:
            raise UsageError(f"run folder '{run_dir}' was written by an engine that did not record its sources; "
                             "rerun it (the cache makes that quick) before exporting")
        thresholds = json.loads((path / THRESHOLDS_JSON).read_text(encoding="utf-8"))
        features = pd.read_csv(path / FEATURES_CSV, dtype={"patient_id": str}, keep_default_na=True)
        return cls(path, features, thresholds, provenance)

    @property
    def digest(self) -> str:
        """The run's identity: its frozen thresholds (a rerun of the same fit keeps it)."""
        text = json.dumps(self.thresholds, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def series(self) -> list[tuple[str, str]]:
        """(patient_id, modality) of every measured series, in features.csv order."""
        out = []
        for modality in self.thresholds.get("modalities", {}):
            methods = self.methods(modality)
            if not methods:
                continue
            column = feature_name(modality, methods[0], "muscle", "volume")
            if column not in self.features:
                continue
            for pid, value in zip(self.features["patient_id"], self.features[column], strict=True):
                if value == value:  # not NaN: this series was measured
                    out.append((str(pid), modality))
        return sorted(out, key=lambda item: (item[0], item[1]))

    def methods(self, modality: str) -> list[str]:
        fitted = self.thresholds.get("modalities", {}).get(modality, {}).get("methods", {})
        methods = self.provenance.get("config", {}).get("fit", {}).get("methods") or list(fitted)
        return [m for m in modality_methods(modality, methods) if m in fitted]

    def result(self, patient_id: str, modality: str) -> PatientResult:
        """The run folder's part of one patient's result (no DICOM read yet)."""
        row = self.features.loc[self.features["patient_id"] == patient_id].iloc[0]
        methods = self.methods(modality)
        fit = self.thresholds["modalities"][modality]
        habitats = {m: habitat_path(self.path / HABITATS_DIR, patient_id, modality, m) for m in methods}
        missing = [m for m, p in habitats.items() if not p.is_file()]
        if missing:
            raise ExportError("source", f"no habitat map for {', '.join(missing)} in {HABITATS_DIR}/ "
                                        "(the run had run.habitats off?); rerun with habitat maps to export a SEG")
        png = qa_png_path(self.path, patient_id, modality)
        digest = self.provenance.get("input_blake3", {}).get(source_key(patient_id, modality), "")
        return PatientResult(
            patient_id=patient_id, modality=modality, methods=methods,
            features={k: (None if v != v else float(v)) for k, v in row.items() if isinstance(v, (int, float))},
            thresholds={m: float(fit["methods"][m]["threshold"]) for m in methods},
            diagnostic=fit.get("diagnostic") or {}, habitats=habitats,
            muscles=derived_muscles(self.path, patient_id, modality), qa_png=png if png.is_file() else None,
            identity=f"{self.digest}/{digest}", extras={"fixed": fit["methods"].get(FIXED)})

    def source_entry(self, patient_id: str, modality: str) -> dict:
        entry = self.provenance[SOURCES_KEY].get(source_key(patient_id, modality))
        if not entry or not entry.get(SOURCE_IMAGE):
            raise ExportError("source", "the run recorded no image path for this series")
        return entry

    def series_description_pattern(self, modality: str) -> str | None:
        patterns = self.provenance.get("config", {}).get("io", {}).get("series_description") or {}
        return patterns.get(modality)


def derived_muscles(run_dir: Path, patient_id: str, modality: str) -> tuple[str, ...]:
    """The ROI muscle groups (``psoas``, ``paraspinal``) of a derived ROI; empty for a hand-drawn ROI."""
    path = derived_roi_path(run_dir, patient_id, modality)
    if not path.is_file() or path.parent.name != DERIVED_ROI_DIR:
        return ()

    present = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).tolist())
    return tuple(group for group, muscles in ROI_MUSCLE_GROUPS.items()
                 if any(ROI_MUSCLE_LABELS[m] in present for m in muscles))


def read_source(run: RunFolder, patient_id: str, modality: str):
    """The source series of one patient (checked again: it may have moved since the run)."""

    entry = run.source_entry(patient_id, modality)
    image = Path(entry[SOURCE_IMAGE])
    if not image.exists():
        raise ExportError("source", f"the source series '{image}' is gone (moved or deleted since the run)")
    if not image.is_dir() and not _looks_dicom(image):
        raise ExportError("source", f"the source '{image.name}' is not DICOM; only DICOM sources can go back to a PACS")
    try:
        series = open_dicom_series(image, series_uid=entry.get(SOURCE_SERIES_UID) or None,
                                   series_description=run.series_description_pattern(modality))
    except InputError as exc:
        raise ExportError("source", f"the source series no longer reads: {exc.reason}") from None
    info = series.info
    datasets = [pydicom.dcmread(str(f)) for f in info.files]
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ExportError("source", "the source is a multi-frame (enhanced) object; exporting onto it is not "
                                    "supported yet")
    if not all(str(getattr(ds, "FrameOfReferenceUID", "") or "") for ds in datasets):
        raise ExportError("source", "the source series has no Frame of Reference UID, so a DICOM-SEG cannot be "
                                    "placed on it; the PACS export of this study is incomplete")
    normal = np.asarray(info.direction or (1, 0, 0, 0, 1, 0, 0, 0, 1), dtype=float).reshape(3, 3)[:, 2]
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    if info.spacing is None or info.origin is None or info.direction is None:
        raise ExportError("source", "the source series has no geometry")
    return SourceSeries(datasets, tuple(info.spacing), tuple(info.origin), tuple(info.direction))


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def habitats_on_source(result: PatientResult) -> dict[str, np.ndarray]:
    """Each method's habitat labels resampled onto the source grid (nearest neighbour), (Z, Y, X) uint8.

    Slice ``k`` is ``result.source.datasets[k]``; outside the habitat map's extent the label is
    :data:`HABITAT_LABELS` ``outside_roi`` (0).
    """

    reference = result.series.reference_image()
    labels = {}
    for method, path in result.habitats.items():
        habitat = sitk.ReadImage(str(path))
        resampled = sitk.Resample(habitat, reference, sitk.Transform(), sitk.sitkNearestNeighbor,
                                  HABITAT_LABELS["outside_roi"], sitk.sitkUInt8)
        labels[method] = sitk.GetArrayFromImage(resampled)
    return labels
