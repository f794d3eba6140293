"""One patient's result as the exporters see it: the run folder's numbers and maps, and the source series.

The run folder holds no identifier and no path to its sources (docs/method.md section 6): the sources
are found through the manifest the user gives to ``sarco export --manifest`` (the one the run read,
or any naming the same patients and files), and each is checked against the run's content digest
of that series (provenance.json's ``input_blake3``), so a manifest that points elsewhere fails that
patient instead of exporting onto the wrong images. The identities (patient, study, series, SOP
instances, frame of reference) are read from those DICOM files at export time; nothing read here is
written back into the run folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from pydicom.datadict import tag_for_keyword

from engine.batch.tasks import content_digest
from engine.contract import (
    DERIVED_ROI_DIR,
    FEATURES_CSV,
    HABITAT_LABELS,
    HABITATS_DIR,
    PROVENANCE_JSON,
    ROI_MUSCLE_GROUPS,
    ROI_MUSCLE_LABELS,
    THRESHOLDS_JSON,
    derived_roi_path,
    feature_name,
    habitat_path,
    qa_png_path,
    series_uid_column,
    source_key,
    vs_fixed_column,
)
from engine.errors import InputError, ManifestError, SarcoError, UsageError
from engine.inputs.manifest import Manifest, read_manifest
from engine.inputs.userfiles import read_json_object, require_folder
from engine.io.dicom import open_dicom_series
from engine.measure.methods import modality_methods
from engine.runfolder import BimodalityDiagnostic, MethodFit, StatInfo, Thresholds, read_table, registered_stats


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
    diagnostic: BimodalityDiagnostic | None
    habitats: dict[str, Path]
    muscles: tuple[str, ...]
    qa_png: Path | None
    identity: str
    source: SourceSeries | None = None
    extras: dict = field(default_factory=dict)
    fits: dict[str, MethodFit] = field(default_factory=dict)  # each method's typed fit (family, classes)
    stats: tuple[StatInfo, ...] = field(default_factory=registered_stats)  # the run folder's stat list

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
class ExportRun:
    """The published files of a run or apply folder that the exporters read (no cache, no identifier),
    and the manifest that says where its sources are.

    ``thresholds`` is the file as written (its bytes name the run: :attr:`digest`); every read goes
    through :attr:`fits`, the typed view (:class:`engine.runfolder.thresholds.Thresholds`).
    """

    path: Path
    features: pd.DataFrame
    thresholds: dict
    provenance: dict
    manifest: Manifest | None = None

    @classmethod
    def open(cls, run_dir, manifest=None) -> ExportRun:
        path = require_folder(run_dir, "run folder")
        provenance = _read_provenance(path, run_dir)
        thresholds = _read_thresholds(path, run_dir)
        if not (path / FEATURES_CSV).is_file():
            raise UsageError(f"'{run_dir}' is not a sarco run folder: {FEATURES_CSV} is missing")
        return cls(path, read_table(path, FEATURES_CSV), thresholds, provenance, _read_sources(manifest))

    @cached_property
    def fits(self) -> Thresholds:
        """The typed thresholds (parsed once)."""
        return Thresholds.from_json(self.thresholds)

    @property
    def digest(self) -> str:
        """The run's identity: its frozen thresholds (a rerun of the same fit keeps it)."""
        text = json.dumps(self.thresholds, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def series(self) -> list[tuple[str, str]]:
        """(patient_id, modality) of every measured series, in features.csv order."""
        out = []
        for modality in self.fits.modalities:
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
        fitted = self.fits[modality].methods if modality in self.fits else {}
        methods = self.provenance.get("config", {}).get("fit", {}).get("methods") or list(fitted)
        return [m for m in modality_methods(modality, methods) if m in fitted]

    def result(self, patient_id: str, modality: str) -> PatientResult:
        """The run folder's part of one patient's result (no DICOM read yet)."""
        row = self.features.loc[self.features["patient_id"] == patient_id].iloc[0]
        methods = self.methods(modality)
        fit = self.fits[modality]
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
            thresholds={m: fit.methods[m].threshold for m in methods},
            diagnostic=fit.diagnostic, habitats=habitats,
            muscles=derived_muscles(self.path, patient_id, modality), qa_png=png if png.is_file() else None,
            identity=f"{self.digest}/{digest}", fits={m: fit.methods[m] for m in methods}, stats=self.fits.stats)

    def source_entry(self, patient_id: str, modality: str) -> tuple[Path, str | None]:
        """(image path, SeriesInstanceUID or None) of one series, from the manifest, checked against the run."""
        manifest = self.manifest
        if manifest is None:
            raise ExportError("source", "no manifest was given to find the source series")
        inputs = manifest.inputs(patient_id, modality) if patient_id in manifest.table.index else None
        if inputs is None or not inputs[0]:
            raise ExportError("source", f"the manifest names no {modality} image for this patient")
        image, roi = inputs
        expected = self.provenance.get("input_blake3", {}).get(source_key(patient_id, modality))
        if expected and Path(image).exists():
            # the digest the run took of the same files (engine.batch.tasks): image and ROI, or the segmentation
            found = content_digest(image, roi or manifest.segmentation(patient_id, modality))
            if found != expected:
                raise ExportError("source", "the manifest's files for this series are not the ones the run "
                                            "measured (changed or another series); give the manifest the run read")
        uid = manifest.table.loc[patient_id].get(series_uid_column(modality), "") or None
        return Path(image), uid

    def series_description_pattern(self, modality: str) -> str | None:
        patterns = self.provenance.get("config", {}).get("io", {}).get("series_description") or {}
        return patterns.get(modality)


def _read_provenance(path: Path, run_dir) -> dict:
    provenance_file = path / PROVENANCE_JSON
    if not provenance_file.is_file():
        raise UsageError(f"run folder '{run_dir}' has no {PROVENANCE_JSON}; the run did not finish")
    return read_json_object(provenance_file, "provenance file")


def _read_thresholds(path: Path, run_dir) -> dict:
    """The thresholds the objects state: the run's fit, or the frozen model's in an apply folder."""
    if not (path / THRESHOLDS_JSON).is_file():
        raise UsageError(f"'{run_dir}' is not a sarco run or apply folder: {THRESHOLDS_JSON} is missing; give the "
                         "--out folder of a finished `sarco run` or `sarco apply` (an apply folder of an older "
                         "engine: rerun the same `sarco apply`, its cache makes that quick)")
    return read_json_object(path / THRESHOLDS_JSON, "thresholds file")


def _read_sources(manifest) -> Manifest | None:
    """The manifest that names the sources (None: none given; the command line requires one)."""
    if manifest is None:
        return None
    try:
        return read_manifest(manifest)
    except ManifestError as exc:
        raise UsageError(f"--manifest: {exc}") from None


def derived_muscles(run_dir: Path, patient_id: str, modality: str) -> tuple[str, ...]:
    """The ROI muscle groups (``psoas``, ``paraspinal``) of a derived ROI; empty for a hand-drawn ROI."""
    path = derived_roi_path(run_dir, patient_id, modality)
    if not path.is_file() or path.parent.name != DERIVED_ROI_DIR:
        return ()

    present = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).tolist())
    return tuple(group for group, muscles in ROI_MUSCLE_GROUPS.items()
                 if any(ROI_MUSCLE_LABELS[m] in present for m in muscles))


def read_source(run: ExportRun, patient_id: str, modality: str):
    """The source series of one patient (checked again: it may have moved since the run)."""

    image, series_uid = run.source_entry(patient_id, modality)
    if not image.exists():
        raise ExportError("source", f"the source series '{image}' is gone (moved or deleted since the run)")
    if not image.is_dir() and not _looks_dicom(image):
        raise ExportError("source", f"the source '{image.name}' is not DICOM; only DICOM sources can go back to a PACS")
    try:
        # the exporters need the headers only (geometry and identity), never the pixels: the scan that
        # chooses and checks the series keeps them whole, so each file is parsed once
        series = open_dicom_series(image, series_uid=series_uid,
                                   series_description=run.series_description_pattern(modality), whole_headers=True)
    except InputError as exc:
        raise ExportError("source", f"the source series no longer reads: {exc.reason}") from None
    info = series.info
    datasets = series.headers
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ExportError("source", "the source is a multi-frame (enhanced) object; exporting onto it is not "
                                    "supported yet")
    normal = np.asarray(info.direction or (1, 0, 0, 0, 1, 0, 0, 0, 1), dtype=float).reshape(3, 3)[:, 2]
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    if info.spacing is None or info.origin is None or info.direction is None:
        raise ExportError("source", "the source series has no geometry")
    return SourceSeries(datasets, tuple(info.spacing), tuple(info.origin), tuple(info.direction))


#: Modules whose attributes the exported objects take from the source: the Patient and Study
#: information entities (highdicom copies their root attributes into every object) and the General
#: Series and General Equipment modules (read for references and the SC's body part).
COPIED_ENTITIES = ("Patient", "Study")
READ_MODULES = ("general-series", "general-equipment")
#: The source attributes every exported object needs a value for (Type 1 in the objects).
REQUIRED_UIDS = {"StudyInstanceUID": "Study Instance UID", "SeriesInstanceUID": "Series Instance UID"}


@lru_cache(maxsize=8)
def copied_modules(sop_class_uid: str) -> tuple[tuple[str, bool, dict[str, str]], ...]:
    """The modules the exports copy from a source of this SOP class, from the standard's tables (PS3.3,
    as highdicom ships them): (module key, mandatory, {keyword: type ``1``, ``2``, ``2C``, ``3``...})
    of the root attributes, for the Patient and Study entities and :data:`READ_MODULES`."""
    # lazy: highdicom is heavy; export only
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return ()
    table = get_module_attribute_map()
    return tuple((m["key"], m["usage"] == "M", {str(a["keyword"]): str(a["type"]) for a in table[m["key"]]
                                                 if not a["path"]})
                 for m in get_iod_module_map()[iod] if m["ie"] in COPIED_ENTITIES or m["key"] in READ_MODULES)


@lru_cache(maxsize=8)
def _copied_tags(sop_class_uid: str) -> tuple[tuple[bool, tuple[tuple[int, str, str], ...]], ...]:
    """:func:`copied_modules` by tag: (mandatory, ((tag, keyword, type), ...)) per module, the keywords
    the dictionary does not know left out (a tag is looked up in a data set many times faster than a
    keyword, and a series has one header per slice)."""
    modules = []
    for _, mandatory, attributes in copied_modules(sop_class_uid):
        known = []
        for keyword, kind in attributes.items():
            tag = tag_for_keyword(keyword)
            if tag is not None:
                known.append((tag, keyword, kind))
        modules.append((mandatory, tuple(known)))
    return tuple(modules)


def _complete_modules(ds) -> None:
    """Absent Type 2 attributes of the mandatory modules, and of the optional ones the source has, added
    empty (an optional module the source lacks stays absent: half a Clinical Trial module is invalid);
    an empty Type 3 sequence removed (it says nothing, and a module that defines its items wants one)."""
    present = set(ds.keys())
    for mandatory, attributes in _copied_tags(str(ds.SOPClassUID)):
        if not (mandatory or any(tag in present for tag, _, _ in attributes)):
            continue
        for tag, keyword, kind in attributes:
            if kind == "2" and tag not in present:
                setattr(ds, keyword, None)  # None: the attribute present with an empty value
                present.add(tag)
            elif kind == "3" and tag in present and ds[tag].VR == "SQ" and not ds[tag].value:
                del ds[tag]
                present.discard(tag)


def complete_identity(datasets: list, new_study: Callable[[str], str] | None = None) -> None:
    """Make the source headers (in memory only) something every exported object can be built from.

    The SOP Class and Instance UIDs are taken from the file meta when the data set left them empty;
    Type 2 attributes of the copied modules that are absent are added empty (an anonymiser or a
    converter may drop them; PS3.5 7.4.2: Type 2 is present, possibly empty), Type 3 ones are left
    as they are. Without a Study or Series Instance UID the objects cannot go back into the source
    study: an :class:`ExportError`, unless ``new_study`` is given, which then names the new study
    and series (``new_study("study")``, ``new_study("series")``). A source with both UIDs keeps them.
    """
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                      ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(keyword, "") or "") and meta is not None and str(meta.get(meta_keyword, "") or ""):
                setattr(ds, keyword, str(meta.get(meta_keyword)))
    missing = [name for keyword, name in REQUIRED_UIDS.items()
               if not all(str(ds.get(keyword, "") or "") for ds in datasets)]
    if missing and new_study is None:
        raise ExportError("source", f"the source series has no {' and no '.join(missing)} (an anonymiser removed "
                                    "them?), so its results cannot go back into its study; export it to files "
                                    "as a new study with --dicom OUT --new-study")
    if missing and new_study is not None:
        for ds in datasets:
            ds.StudyInstanceUID = new_study("study")
            ds.SeriesInstanceUID = new_study("series")
    if not all(str(getattr(ds, "FrameOfReferenceUID", "") or "") for ds in datasets):
        raise ExportError("source", "the source series has no Frame of Reference UID, so a DICOM-SEG cannot be "
                                    "placed on it; the PACS export of this study is incomplete")
    if not all(str(ds.get("SOPInstanceUID", "") or "") and str(ds.get("SOPClassUID", "") or "") for ds in datasets):
        raise ExportError("source", "a source image has no SOP Instance UID (in its data set or file meta), so "
                                    "the exported objects cannot reference it")
    for ds in datasets:
        _complete_modules(ds)


def complete_geometry(series: SourceSeries) -> None:
    """Slice Thickness where a source left it absent or empty (Type 2 in the Image Plane module; a
    minimal writer such as SimpleITK's omits it): the slice spacing, since the SEG's Pixel Measures
    need a value. In memory only, like :func:`complete_identity`."""
    for ds in series.datasets:
        if ds.get("SliceThickness") in (None, ""):
            ds.SliceThickness = round(float(series.spacing[2]), 6)


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def habitat_grid_mm(result: PatientResult) -> tuple[float, float, float]:
    """The spacing (x, y, z) in mm of the grid the run measured on: its habitat maps' (header only)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(next(iter(result.habitats.values()))))
    reader.ReadImageInformation()
    x, y, z = reader.GetSpacing()
    return float(x), float(y), float(z)


def source_grid_volumes_mm3(labels: dict[str, np.ndarray], series: SourceSeries) -> dict[tuple[str, str], float]:
    """(method, tissue) -> volume in mm^3 of that habitat on the source grid: its voxels in ``labels``
    (:func:`habitats_on_source`) times the source voxel's volume, as a reader of the DICOM-SEG counts it."""
    voxel_mm3 = float(np.prod(series.spacing))
    return {(method, tissue): float(np.count_nonzero(values == HABITAT_LABELS[tissue])) * voxel_mm3
            for method, values in labels.items() for tissue in ("muscle", "fat")}


def habitats_on_source(result: PatientResult) -> dict[str, np.ndarray]:
    """Each method's habitat labels resampled onto the source grid (nearest neighbour), (Z, Y, X) uint8.

    Slice ``k`` is ``result.source.datasets[k]``; outside the habitat map's extent the label is
    :data:`HABITAT_LABELS` ``outside_roi`` (0). Only the box of the source grid that the map's extent
    reaches is resampled (:func:`habitat_box`); every voxel outside it is outside the map, so the labels
    are those of a resampling onto the whole grid, at a fraction of its cost (a lumbar ROI's box is a
    few percent of a CT series).
    """

    reference = result.series.reference_image()
    labels = {}
    for method, path in result.habitats.items():
        habitat = sitk.ReadImage(str(path))
        on_source = np.full(tuple(reversed(reference.GetSize())), HABITAT_LABELS["outside_roi"], dtype=np.uint8)
        box = habitat_box(habitat, reference)
        if box is not None:
            (x0, y0, z0), (nx, ny, nz) = box
            target = sitk.Image([nx, ny, nz], sitk.sitkUInt8)
            target.SetSpacing(reference.GetSpacing())
            target.SetDirection(reference.GetDirection())
            target.SetOrigin(reference.TransformIndexToPhysicalPoint((x0, y0, z0)))
            resampled = sitk.Resample(habitat, target, sitk.Transform(), sitk.sitkNearestNeighbor,
                                      HABITAT_LABELS["outside_roi"], sitk.sitkUInt8)
            on_source[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] = sitk.GetArrayViewFromImage(resampled)
        labels[method] = on_source
    return labels


def habitat_box(habitat, reference) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The box of ``reference``'s grid, ``((x0, y0, z0), (nx, ny, nz))``, holding every voxel whose centre
    may fall inside ``habitat``'s extent (None: none does).

    The extent is the map's voxels' outer faces (continuous index -0.5 to size - 0.5, where a nearest-neighbour
    resampler still reads a voxel); its eight corners on the reference grid, widened by one voxel
    against rounding, bound the box.
    """
    size = habitat.GetSize()
    corners = [reference.TransformPhysicalPointToContinuousIndex(habitat.TransformContinuousIndexToPhysicalPoint(
        [(-0.5 if high == "0" else n - 0.5) for high, n in zip(f"{corner:03b}", size, strict=True)]))
        for corner in range(8)]
    low = np.floor(np.min(corners, axis=0)).astype(int) - 1
    high = np.ceil(np.max(corners, axis=0)).astype(int) + 1
    low = np.maximum(low, 0)
    high = np.minimum(high, np.asarray(reference.GetSize()) - 1)
    if np.any(high < low):
        return None
    x0, y0, z0 = (int(v) for v in low)
    nx, ny, nz = (int(v) for v in high - low + 1)
    return (x0, y0, z0), (nx, ny, nz)
