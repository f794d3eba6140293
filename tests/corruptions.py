"""A corpus of broken inputs built from the synthetic cohort (the nightly PACS export's bad night).

Every kind of defect a PACS export, a segmentation tool or a hand-edited manifest produces is
written on purpose into a copy of one clean synthetic patient, under a new ``patient_id``, so
that one corrupted manifest carries every kind at once and one run shows that each costs only
its own patient. :func:`build_corrupt_cohort` writes the copies under ``<cohort>/corrupt/`` and a
manifest beside the clean one (paths relative to the manifest's folder, as a user writes them).

Each :class:`Corruption` says what the engine must do with it: record one ``errors.csv`` row with
``stage`` and a reason containing ``needles`` (words a radiographer can act on), or, where
``stage`` is None, process the patient normally (``same_as_source``: with the clean source
patient's features, bit for bit).

Manifest- and config-level kinds (:data:`MANIFEST_KINDS`, :data:`CONFIG_KINDS`) stop the run
before any work; they are small texts, tested apart.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORRUPT_DIR = "corrupt"
N_CLEAN = 8
SEED = 11
#: Explicit splits of the clean patients: both runs (clean, corrupted) fit on the same five.
CLEAN_SPLITS = {f"SYN{i:04d}": ("train" if i <= 5 else "validation") for i in range(1, N_CLEAN + 1)}
#: The run settings every test of the corpus shares (CT only, no statistics or report: they
#: cost seconds and change nothing here). ``mask_labels`` makes "unexpected labels" an error.
RUN_OVERRIDES = {"run": {"backend": "cpu", "scheduler": "inline", "report": False},
                 "stats": {"enabled": False}, "io": {"mask_labels": [1, 2, 3, 4]}}
#: The same settings as a config file, for runs through the command line.
RUN_CONFIG_YAML = ("io:\n  mask_labels: [1, 2, 3, 4]\nrun:\n  report: false\nstats:\n  enabled: false\n")
#: Files a rerun must reproduce byte for byte.
IDENTICAL_FILES = ("features.csv", "thresholds.json", "split.csv", "errors.csv", "model.json")

_SESSION: dict = {}


@dataclass(frozen=True)
class Corruption:
    """One kind of broken input, applied to a copy of one clean patient.

    Attributes
    ----------
    kind : str
        What it is, in the words of the issue ("truncated DICOM file").
    patient_id : str
        The corrupted copy's id in the corrupted manifest.
    stage : str or None
        The ``errors.csv`` stage expected; None: the patient is processed without an error.
    needles : tuple of str
        Words the reason must contain (case-insensitive).
    build : callable (cohort_dir, patient_dir, source_dir) -> dict
        Writes the broken inputs into ``patient_dir`` (a fresh folder) and returns the manifest
        cells to set (paths relative to ``cohort_dir``).
    source : str
        The clean patient copied.
    same_as_source : bool
        The features must equal the source's, bit for bit (harmless oddities, bad clinical cells).
    modality : str
        The ``errors.csv`` modality of the expected row (``ct`` or ``clinical``).
    """

    kind: str
    patient_id: str
    stage: str | None
    needles: tuple[str, ...]
    build: Callable[[Path, Path, Path], dict]
    source: str = "SYN0001"
    same_as_source: bool = False
    modality: str = "ct"


# ----------------------------------------------------------------------------- helpers
def _dcmread(path, **kwargs):
    import pydicom

    return pydicom.dcmread(str(path), **kwargs)


def slices_by_z(folder: Path) -> list[Path]:
    """The files of a single-frame axial series sorted by ImagePositionPatient z (mm)."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return sorted(files, key=lambda p: float(_dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _edit(path: Path, **changes) -> None:
    ds = _dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(str(path))


def _rel(path: Path, cohort: Path) -> str:
    return path.relative_to(cohort).as_posix()


def _intact(cohort: Path, target: Path, source: Path) -> dict:
    """An intact copy of the source's CT series and ROI in ``target``; their manifest cells."""
    shutil.copytree(source / "ct", target / "ct")
    [roi] = [p for p in source.iterdir() if p.name.startswith("ct_roi")]
    shutil.copy2(roi, target / roi.name)
    return {"ct_image": _rel(target / "ct", cohort), "ct_roi": _rel(target / roi.name, cohort)}


def _series_edit(edit: Callable[[list[Path]], None]):
    """A build step that copies the source and edits its CT slices (sorted by z) in place."""

    def build(cohort: Path, target: Path, source: Path) -> dict:
        cells = _intact(cohort, target, source)
        edit(slices_by_z(cohort / cells["ct_image"]))
        return cells

    return build


def _roi_edit(edit: Callable[[object], object]):
    """A build step that rewrites the source's label-map ROI through SimpleITK (as NIfTI)."""

    def build(cohort: Path, target: Path, source: Path) -> dict:
        import SimpleITK as sitk

        cells = _intact(cohort, target, source)
        roi_path = cohort / cells["ct_roi"]
        image = sitk.ReadImage(str(roi_path))
        roi_path.unlink()
        new_path = target / "ct_roi.nii.gz"
        sitk.WriteImage(edit(image), str(new_path), useCompression=True)
        cells["ct_roi"] = _rel(new_path, cohort)
        return cells

    return build


def _with_array(image, array):
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


# ----------------------------------------------------------------------------- series defects
def _truncate_middle(files: list[Path]) -> None:
    victim = files[len(files) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.6)])  # the transfer stopped inside the pixel data


def _zero_byte_slice(files: list[Path]) -> None:
    files[len(files) // 2].write_bytes(b"")


def _stray_files(files: list[Path]) -> None:
    folder = files[0].parent
    (folder / "README.txt").write_text("exported by PACS night job\n")
    (folder / "Thumbs.db").write_bytes(np.random.default_rng(0).bytes(512))
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))


def _missing_slice(files: list[Path]) -> None:
    files[len(files) // 2].unlink()


def _duplicated_slice(files: list[Path]) -> None:
    victim = files[len(files) // 2]
    shutil.copy2(victim, victim.with_name(victim.name + "_copy"))


def _non_uniform(files: list[Path]) -> None:
    # the upper half of the stack moves up by 0.6 mm: one step of 3.6 mm among steps of 3 mm
    for path in files[len(files) // 2:]:
        ds = _dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, round(z + 0.6, 3)]
        ds.save_as(str(path))


def _gantry_tilt(files: list[Path]) -> None:
    # positions drift along y as z advances (a 15 degree tilted acquisition, not resampled)
    z0 = float(_dcmread(files[0], stop_before_pixels=True).ImagePositionPatient[2])
    for path in files:
        ds = _dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, round(y + (z - z0) * math.tan(math.radians(15)), 3), z]
        ds.save_as(str(path))


def _localizer(files: list[Path]) -> None:
    # a coronal scout saved into the axial series (same SeriesInstanceUID)
    from pydicom.uid import generate_uid

    ds = _dcmread(files[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["corrupt scout", str(ds.SOPInstanceUID)])
    ds.save_as(str(files[0].with_name("scout")))


def _mixed_modalities(files: list[Path]) -> None:
    for path in files[::2]:
        _edit(path, Modality="MR")


def _unsupported_syntax(files: list[Path]) -> None:
    # MPEG-2 (video) is not an image transfer syntax any decoder here supports
    from pydicom.encaps import encapsulate

    for path in files:
        ds = _dcmread(path)
        ds.PixelData = encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.save_as(str(path))


def _undecodable(files: list[Path]) -> None:
    """Corrupt the RLE header of one compressed slice (its segment count becomes 99)."""
    from pydicom.encaps import encapsulate, generate_fragments

    victim = files[len(files) // 2]
    ds = _dcmread(victim)
    fragments = list(generate_fragments(ds.PixelData))
    broken = bytearray(fragments[0])
    broken[0:4] = (99).to_bytes(4, "little")
    ds.PixelData = encapsulate([bytes(broken)] + fragments[1:])
    ds.save_as(str(victim))


def _short_pixel_data(files: list[Path]) -> None:
    victim = files[len(files) // 2]
    ds = _dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(str(victim))


def _huge_header(files: list[Path]) -> None:
    # Rows and Columns are US (at most 65535): 65535 x 65535 x 17 slices = 7.3e10 voxels claimed
    for path in files:
        _edit(path, Rows=65535, Columns=65535)


def _blank_uids(files: list[Path]) -> None:
    """An anonymiser that blanks every UID (issue 23): GDCM and SimpleITK still read the series."""
    for path in files:
        ds = _dcmread(path)
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            setattr(ds, keyword, "")
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(str(path))


def _two_series(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    for path in (cohort / "patients" / "SYN0002" / "ct").iterdir():
        shutil.copy2(path, cohort / cells["ct_image"] / f"other_{path.name}")
    return cells


def _seg_in_series_folder(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    shutil.copy2(cohort / cells["ct_roi"], cohort / cells["ct_image"] / "segmentation.dcm")
    return cells


def _fifo_in_folder(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    os.mkfifo(cohort / cells["ct_image"] / "pipe")  # opening it for reading would block for ever
    return cells


def _wrong_modality(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    shutil.copytree(source / "mri", target / "mri")
    return {**cells, "ct_image": _rel(target / "mri", cohort)}


def _huge_nrrd(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    header = target / "ct.nhdr"
    header.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 1000000 1000000 17\n"
                      "space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,3)\n"
                      "space origin: (0,0,0)\nencoding: raw\nendian: little\ndata file: ct.raw\n")
    (target / "ct.raw").write_bytes(bytes(64))
    return {**cells, "ct_image": _rel(header, cohort)}


def _nan_nifti(cohort: Path, target: Path, source: Path) -> dict:
    import SimpleITK as sitk

    from engine.io import read_image

    cells = _intact(cohort, target, source)
    image, _ = read_image(cohort / cells["ct_image"])
    array = sitk.GetArrayFromImage(image)
    array[array.shape[0] // 2, 100:104, 100:105] = np.nan  # a converter's "no data" marker
    path = target / "ct.nii.gz"
    sitk.WriteImage(_with_array(image, array), str(path), useCompression=True)
    shutil.rmtree(cohort / cells["ct_image"])
    return {**cells, "ct_image": _rel(path, cohort)}


def _image_is_a_pdf(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    path = target / "ct_report.pdf"
    path.write_bytes(b"%PDF-1.4\n% not an image\n")
    return {**cells, "ct_image": _rel(path, cohort)}


def _empty_folder(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    shutil.rmtree(cohort / cells["ct_image"])
    (cohort / cells["ct_image"]).mkdir()
    return cells


def _missing_image_path(cohort: Path, target: Path, source: Path) -> dict:
    return {**_intact(cohort, target, source), "ct_image": ""}


def _image_not_found(cohort: Path, target: Path, source: Path) -> dict:
    return {**_intact(cohort, target, source), "ct_image": _rel(target, cohort) + "/ct_series_not_exported"}


def _symlink_loop(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    os.symlink("loop_b", target / "loop_a")
    os.symlink("loop_a", target / "loop_b")
    return {**cells, "ct_image": _rel(target / "loop_a", cohort)}


# ----------------------------------------------------------------------------- mask defects
def _missing_roi_path(cohort: Path, target: Path, source: Path) -> dict:
    # no ROI and no whole-body segmentation to derive one from (with one, the ROI is derived: #17)
    return {**_intact(cohort, target, source), "ct_roi": "", "ct_segmentation": ""}


def _roi_not_found(cohort: Path, target: Path, source: Path) -> dict:
    return {**_intact(cohort, target, source), "ct_roi": _rel(target, cohort) + "/ct_roi_final.nii.gz"}


def _unreadable_roi(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    os.chmod(cohort / cells["ct_roi"], 0)
    return cells


def _roi_is_a_pipe(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    (cohort / cells["ct_roi"]).unlink()
    os.mkfifo(cohort / cells["ct_roi"])
    return cells


def _truncated_roi(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    path = cohort / cells["ct_roi"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return cells


def _empty_mask(image):
    import SimpleITK as sitk

    return _with_array(image, np.zeros_like(sitk.GetArrayFromImage(image)))


def _shifted_mask(image):
    import SimpleITK as sitk

    out = sitk.Image(image)
    x, y, z = image.GetOrigin()
    out.SetOrigin((x, y, z + 400.0))  # drawn on another study's slab
    return out


def _relabelled_mask(image):
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    return _with_array(image, np.where(array > 0, array + 4, 0).astype(array.dtype))


def _edge_mask(image):
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    array[0] = array[array.shape[0] // 2]  # the ROI reaches the first ...
    array[-1] = array[array.shape[0] // 2]  # ... and the last slice
    return _with_array(image, array)


def _air_mask(image):
    import SimpleITK as sitk

    array = np.zeros_like(sitk.GetArrayFromImage(image))
    array[:, :6, :6] = 1  # a corner of the field of view: air only
    return _with_array(image, array)


def _other_grid_mask(image):
    """The ROI on a coarser grid with another origin (a segmentation exported at 2 mm, say)."""
    import SimpleITK as sitk

    spacing = [s * 2.0 for s in image.GetSpacing()[:2]] + [image.GetSpacing()[2]]
    size = [max(1, int(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)]
    origin = [o + 0.3 for o in image.GetOrigin()]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, spacing,
                         image.GetDirection(), 0, image.GetPixelID())


def _seg_other_frame(cohort: Path, target: Path, source: Path) -> dict:
    cells = _intact(cohort, target, source)
    path = cohort / cells["ct_roi"]
    assert path.suffix == ".dcm", f"source {source.name} has no DICOM-SEG ROI"
    _edit(path, FrameOfReferenceUID="1.2.826.0.1.3680043.8.498.1.999")
    return cells


# ----------------------------------------------------------------------------- manifest cells
def _missing_label(cohort: Path, target: Path, source: Path) -> dict:
    # in the train split on purpose: an unlabelled row must still never enter the fit
    return {**_intact(cohort, target, source), "label": "", "split": "train"}


def _non_numeric_clinical(cohort: Path, target: Path, source: Path) -> dict:
    return {**_intact(cohort, target, source), "albumin": "n/a (haemolysed)"}


def _k(kind, name, stage, needles, build, **kwargs) -> Corruption:
    return Corruption(kind, f"BAD-{name}", stage, tuple(needles), build, **kwargs)


#: Per-patient kinds: each corrupts one copy of a clean patient in the corrupted manifest.
PATIENT_KINDS: tuple[Corruption, ...] = (
    # --- the DICOM series
    _k("truncated DICOM file", "truncated", "ingest", ["truncated", "re-export"], _series_edit(_truncate_middle)),
    _k("zero-byte file replacing a slice", "zerobyte", "ingest", ["missing slice", "empty file (0 bytes)"],
       _series_edit(_zero_byte_slice)),
    _k("non-DICOM files in the series folder (processed)", "strayfiles", None, [], _series_edit(_stray_files),
       same_as_source=True),
    _k("missing slice", "missingslice", "ingest", ["missing slice between z="], _series_edit(_missing_slice)),
    _k("duplicated slice", "dupslice", "ingest", ["duplicated slice positions"], _series_edit(_duplicated_slice)),
    _k("non-uniform slice spacing", "spacing", "ingest", ["non-uniform slice spacing"], _series_edit(_non_uniform)),
    _k("gantry tilt", "tilt", "ingest", ["gantry tilt", "tilt-corrected"], _series_edit(_gantry_tilt)),
    _k("localizer inside the axial series", "localizer", "ingest", ["different orientations"],
       _series_edit(_localizer)),
    _k("two series in one folder", "twoseries", "ingest", ["2 image series", "ct_series_uid"], _two_series),
    _k("anonymised series without SeriesInstanceUID or SOP UIDs (processed)", "nouids", None, [],
       _series_edit(_blank_uids), same_as_source=True),
    _k("mixed modalities in one series", "mixedmod", "ingest", ["mixes modalities"],
       _series_edit(_mixed_modalities)),
    _k("CT column pointing at an MR series", "wrongmod", "ingest", ["CT column points to an MR series"],
       _wrong_modality),
    _k("unsupported transfer syntax", "syntax", "ingest", ["could not be decoded", "MPEG2"],
       _series_edit(_unsupported_syntax)),
    _k("undecodable compressed pixel data", "undecodable", "ingest", ["could not be decoded", "RLE"],
       _series_edit(_undecodable), source="SYN0002"),
    _k("pixel data shorter than Rows x Columns", "shortpixels", "ingest", ["shorter than Rows x Columns"],
       _series_edit(_short_pixel_data)),
    _k("DICOM header claiming 65535 x 65535 pixels", "hugedicom", "ingest",
       ["65535 x 65535", "io.max_voxels_per_volume"], _series_edit(_huge_header)),
    _k("FIFO (named pipe) in the series folder (processed)", "fifo", None, [], _fifo_in_folder,
       same_as_source=True),
    _k("DICOM-SEG stored inside the series folder (processed)", "seginfolder", None, [], _seg_in_series_folder,
       source="SYN0004", same_as_source=True),
    # --- other image files and paths
    _k("NRRD header claiming 10^6 x 10^6 pixels", "hugenrrd", "ingest",
       ["1000000 x 1000000", "io.max_voxels_per_volume"], _huge_nrrd),
    _k("NaN voxels in a NIfTI image", "nan", "ingest", ["20 NaN voxels"], _nan_nifti),
    _k("image path is not an image (a PDF)", "notimage", "ingest", ["no DICOM image series", "not a DICOM file"],
       _image_is_a_pdf),
    _k("empty series folder", "emptyfolder", "ingest", ["no DICOM image series", "folder is empty"], _empty_folder),
    _k("missing image path in the manifest", "noimagepath", "ingest", ["no CT image path"], _missing_image_path),
    _k("image path that does not exist", "imagenotfound", "ingest", ["not found", "ct_series_not_exported"],
       _image_not_found),
    _k("symlink loop as the image path", "symlinkloop", "ingest", ["symbolic link that loops"], _symlink_loop),
    # --- the ROI mask
    _k("missing ROI path in the manifest", "noroipath", "mask", ["no CT ROI path"], _missing_roi_path),
    _k("ROI path that does not exist", "roinotfound", "mask", ["ROI mask file not found", "ct_roi_final.nii.gz"],
       _roi_not_found),
    _k("unreadable ROI file (permission denied)", "unreadable", "mask", ["not readable", "permission denied"],
       _unreadable_roi),
    _k("ROI path is a named pipe", "roipipe", "mask", ["not a regular file"], _roi_is_a_pipe),
    _k("truncated ROI file", "truncroi", "mask", ["truncated or damaged", "re-export"], _truncated_roi),
    _k("empty mask", "emptymask", "mask", ["ROI mask is empty"], _roi_edit(_empty_mask)),
    _k("non-overlapping mask", "nooverlap", "mask", ["does not overlap the image"], _roi_edit(_shifted_mask)),
    _k("mask with labels other than expected", "labels", "mask", ["none of the labels 1, 2, 3, 4", "5, 6, 7, 8"],
       _roi_edit(_relabelled_mask)),
    _k("DICOM-SEG mask on another frame of reference", "otherframe", "mask", ["frame of reference"],
       _seg_other_frame, source="SYN0004"),
    _k("mask on another grid (resampled, processed)", "othergrid", None, [], _roi_edit(_other_grid_mask)),
    _k("ROI touching the volume edge (processed)", "edge", None, [], _roi_edit(_edge_mask)),
    _k("ROI entirely outside the intensity window", "airroi", "preprocess", ["no ROI voxel lies inside"],
       _roi_edit(_air_mask)),
    # --- manifest cells
    _k("missing label (processed, never fitted)", "nolabel", None, [], _missing_label, same_as_source=True),
    _k("non-numeric clinical value", "clinical", "manifest", ["albumin", "n/a (haemolysed)", "treated as missing"],
       _non_numeric_clinical, same_as_source=True, modality="clinical"),
)


# ----------------------------------------------------------------------------- manifests
def read_rows(manifest: Path) -> tuple[list[str], list[dict]]:
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def write_rows(path: Path, header: list[str], rows: list[dict], *, bom: bool = False) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(("\ufeff" if bom else "") + buffer.getvalue(), encoding="utf-8")
    return path


def ct_only_rows(manifest: Path, splits: dict[str, str]) -> tuple[list[str], list[dict]]:
    """The clean manifest without the MRI columns and with explicit splits."""
    header, rows = read_rows(manifest)
    header = [h for h in header if not h.startswith("mri_")]  # every MRI input column
    return header, [{**{k: row[k] for k in header}, "split": splits[row["patient_id"]]} for row in rows
                    if row["patient_id"] in splits]


def build_corrupt_cohort(cohort: Path, header: list[str], clean_rows: list[dict], kinds=PATIENT_KINDS) -> Path:
    """Write every per-patient corruption beside the clean cohort; return the corrupted manifest.

    The corrupted manifest holds the clean rows unchanged plus one row per kind, in the
    ``validation`` split unless the kind says otherwise, so the training set (and therefore
    the thresholds) is the clean run's. It is written with a UTF-8 byte-order mark, as Excel's
    "CSV UTF-8" does, which must not matter.
    """
    by_id = {row["patient_id"]: row for row in clean_rows}
    rows = [dict(row) for row in clean_rows]
    for corruption in kinds:
        target = cohort / CORRUPT_DIR / corruption.patient_id
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        source = cohort / "patients" / corruption.source
        row = dict(by_id[corruption.source], patient_id=corruption.patient_id, split="validation")
        row.update(corruption.build(cohort, target, source))
        rows.append(row)
    return write_rows(cohort / "manifest_corrupt.csv", header, rows, bom=True)


#: Manifest texts that must stop the run before any work: (kind, text, words of the message).
MANIFEST_KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("duplicate patient_id", "patient_id,label,ct_image,ct_roi\nP1,0,a,b\nP2,1,c,d\nP1,1,e,f\n",
     ("line 4", "patient_id 'P1' also appears on line 2")),
    ("duplicate column names", "patient_id,label,ct_image,ct_image\nP1,0,a,b\n",
     ("line 1", "'ct_image' appears twice")),
    ("missing required column", "patient_id,ct_image,ct_roi\nP1,a,b\n", ("required column 'label' is missing",)),
    ("no image column", "patient_id,label,age\nP1,1,70\n", ("ct_image or mri_image",)),
    ("label that is not 0/1", "patient_id,label,ct_image\nP1,0,a\nP2,yes,b\n", ("line 3", "label must be 1, 0")),
    ("unknown split", "patient_id,label,split,ct_image\nP1,1,test,a\n", ("line 2", "split must be one of")),
    ("empty patient_id", "patient_id,label,ct_image\nP1,0,a\n,1,b\n", ("line 3", "patient_id is empty")),
    ("row with more cells than the header", "patient_id,label,ct_image\nP1,0,a\nP2,1,b,extra\n",
     ("line 3", "4 cells", "3 columns")),
    ("row with fewer cells than the header", "patient_id,label,ct_image,ct_roi\nP1,0,a,b\nP2,1,c\n",
     ("line 3", "3 cells", "4 columns")),
    ("line numbers after a quoted cell spanning two lines",
     'patient_id,label,ct_image,note\nP1,0,a,"two\nlines"\nP2,x,b,ok\n', ("line 4", "label must be 1, 0")),
    ("empty file", "", ("empty",)),
    ("header only", "patient_id,label,ct_image\n", ("no patient rows",)),
)

#: Config YAML texts that must stop the run before any work: (kind, yaml, words of the message).
CONFIG_KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("unknown key", "fit:\n  methods: [otsu]\n  bin_widht: 2\n", ("fit.bin_widht", "unknown key")),
    ("unknown section", "preprocessing:\n  spacing_mm: [1, 1, 1]\n", ("preprocessing", "unknown key")),
    ("YAML tag (code execution attempt)", "run: !!python/object/apply:os.system ['echo pwned']\n",
     ("YAML tags are not allowed", "line 1")),
    ("custom YAML tag", "fit:\n  methods: !include methods.yaml\n", ("YAML tags are not allowed", "line 2")),
    ("bad value", "preprocess:\n  ct:\n    window: [150, -190]\n", ("preprocess.ct.window", "low < high")),
    ("not a mapping", "- otsu\n- kmeans\n", ("mapping",)),
)


# ----------------------------------------------------------------------------- the session's runs
def run_config():
    from engine.config import load_config

    return load_config(overrides=RUN_OVERRIDES)


def synthetic_cohort(tmp_path_factory) -> Path:
    """The session's shared cohort folder (:mod:`tests.cohorts`); the corpus uses its first patients."""
    from tests.cohorts import shared_cohort

    return shared_cohort(tmp_path_factory).parent


def clean_ct_manifest(tmp_path_factory) -> Path:
    """The clean cohort's CT-only manifest with explicit splits (beside the cohort's manifest)."""
    cohort = synthetic_cohort(tmp_path_factory)
    path = cohort / "manifest_clean_ct.csv"
    if not path.exists():
        header, rows = ct_only_rows(cohort / "manifest.csv", CLEAN_SPLITS)
        write_rows(path, header, rows)
    return path


def clean_run(tmp_path_factory) -> Path:
    """The uninterrupted reference run of the clean CT manifest (in this process, inline)."""
    if "clean_run" not in _SESSION:
        from engine.batch.pipeline import run

        out = tmp_path_factory.mktemp("corpus_clean_run")
        run(clean_ct_manifest(tmp_path_factory), out_dir=out, config=run_config())
        _SESSION["clean_run"] = out
    return _SESSION["clean_run"]


# ----------------------------------------------------------------------------- PHI scan
def planted_phi(cohort: Path) -> list[str]:
    import json

    return json.loads((cohort / "phi_planted.json").read_text(encoding="utf-8"))


def phi_patterns(planted: list[str]) -> dict[str, re.Pattern[bytes]]:
    """Byte patterns of every planted identifier, in the spellings a leak could take.

    Names (``LAST^FIRST``) also with a space, a comma or nothing for ``^`` and as "FIRST LAST";
    dates also as 1936-02-12, 12.02.1936 and 12/02/1936; an ID's digits without its letter
    prefix. Case is ignored. Spellings that start or end with a digit match only as whole
    numbers (not inside a longer number, where a float's digits would match by chance).
    """

    patterns = {}
    for value in planted:
        spellings = {value}
        if "^" in value:
            parts = [p for p in value.split("^") if p]
            spellings |= {" ".join(parts), "".join(parts), " ".join(reversed(parts)), ", ".join(parts)}
        digits = value.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        if digits != value and digits.isdigit() and len(digits) >= 6:
            spellings.add(digits)  # MRN12345678 -> 12345678: a leak that dropped the prefix
        if value.isdigit() and len(value) == 8:
            y, m, d = value[:4], value[4:6], value[6:]
            spellings |= {f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"}
        for spelling in spellings:
            body = re.escape(spelling.lower().encode())
            if spelling[0].isdigit():
                body = rb"(?<![0-9])" + body
            if spelling[-1].isdigit():
                body = body + rb"(?![0-9])"
            patterns[spelling] = re.compile(body)
    return patterns


_PRINTABLE_RUN = None


def _text_runs(data: bytes) -> bytes:
    """The printable-ASCII runs of 6+ bytes of ``data``, lower-cased, one per line (``strings``).

    Every planted identifier is printable ASCII of 6+ characters, so it can only occur inside
    such a run; voxel data and compressed streams shrink to almost nothing, which keeps a scan
    of every output byte fast.
    """

    global _PRINTABLE_RUN
    if _PRINTABLE_RUN is None:
        _PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{6,}")
    return b"\n".join(_PRINTABLE_RUN.findall(data)).lower()


def _search(text: bytes, patterns: dict) -> list[str]:
    found = []
    for spelling, pattern in patterns.items():
        if spelling.lower().encode() in text and pattern.search(text):  # cheap test first
            found.append(spelling)
    return found


def readable_bytes(path: Path) -> list[bytes]:
    """Every byte a reader of this output could see: raw, gunzipped, and Parquet decoded to CSV."""
    data = path.read_bytes()
    views = [data]
    if data[:2] == b"\x1f\x8b":
        views.append(gzip.decompress(data))
    if path.suffix == ".parquet":
        import pandas as pd

        views.append(pd.read_parquet(path).to_csv().encode())
    return views


def every_view(path: Path) -> list[bytes]:
    """:func:`readable_bytes`, and each member of a zip archive (``.npz``) decompressed."""
    views = readable_bytes(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            views += [archive.read(name) for name in archive.namelist()]
    return views


def find_bytes(folder: Path, needles: set[bytes]) -> list[str]:
    """``file: needle`` for every needle (a UID, a path) found in any view of any file under ``folder``."""
    return sorted({f"{p.relative_to(folder)}: {n.decode()}" for p in folder.rglob("*") if p.is_file()
                   for view in every_view(p) for n in needles if n in view})


def find_phi(folder: Path, planted: list[str]) -> list[str]:
    """``file: spelling`` for every planted identifier found in any file under ``folder``."""
    patterns = phi_patterns(planted)
    leaks = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        for view in readable_bytes(path):
            leaks += [f"{path.relative_to(folder)}: {spelling!r}" for spelling in _search(_text_runs(view), patterns)]
    return sorted(set(leaks))


def find_phi_in_text(text: str, planted: list[str]) -> list[str]:
    """The spellings of planted identifiers found in one string (a reason, a log line)."""
    return sorted(_search(text.encode("utf-8").lower(), phi_patterns(planted)))
