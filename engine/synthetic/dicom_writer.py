"""Writers for synthetic inputs: DICOM series, label-map masks, Slicer ``.seg.nrrd`` and DICOM-SEG.

These writers exist for the synthetic cohort (``sarco synth``/``sarco demo``) and for the
tests of the readers in :mod:`engine.io.dicom`, :mod:`engine.io.volumes` and
:mod:`engine.io.masks`. They write what a PACS export or a 3D Slicer session would write, so
the readers are exercised on realistic files:

* geometry in DICOM patient coordinates (LPS, mm) taken from SimpleITK-style
  ``spacing_mm``/``origin_mm``/``direction`` (x, y, z order; direction row-major 9-tuple whose
  columns are the axis directions);
* ``InstanceNumber`` assigned in a scrambled order, so a reader that sorts by it fails;
* optionally meaningless file names written in shuffled order (``shuffle_seed``).

Every file is written through :func:`engine.runfolder.outputs.atomic_path`, so an interrupted run never
leaves a half-written file under the final name. Test-data generation only: no reader in
:mod:`engine.io` imports this module.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

from engine.runfolder.outputs import atomic_path
from engine.synthetic.jpeg_lossless import encode_sv1

__all__ = ["write_dicom_series", "write_mask", "write_dicom_seg", "TRANSFER_SYNTAXES"]

#: Short names accepted by :func:`write_dicom_series` and the transfer syntax UID each writes.
#: ``jpeg_lossless`` (JPEG Lossless, Non-Hierarchical, First-Order Prediction, Selection Value 1)
#: is encoded by :mod:`engine.synthetic.jpeg_lossless`, since pydicom ships no encoder for it.
TRANSFER_SYNTAXES = {
    "explicit_le": "1.2.840.10008.1.2.1",
    "implicit_le": "1.2.840.10008.1.2",
    "big_endian": "1.2.840.10008.1.2.2",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg_ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "jpeg_lossless": "1.2.840.10008.1.2.4.70",
}

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_IMPLEMENTATION_VERSION = "SARCO_ENGINE_01"


# --------------------------------------------------------------------------- helpers


def _direction_matrix(direction: Sequence[float]) -> np.ndarray:
    """(3, 3) matrix whose columns are the x, y, z axis directions (SimpleITK convention)."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    return matrix


def _ds(value: float) -> str:
    """A DICOM DS string (<= 16 characters) for ``value``."""
    text = f"{float(value):.10g}"
    if len(text) > 16:
        text = f"{float(value):.8g}"
    if len(text) > 16:
        text = f"{float(value):.6e}"
    return text


def _uid(entropy: Sequence[object] | None = None) -> str:

    if entropy is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[str(e) for e in entropy])


def _suffix_of(path: pathlib.Path) -> str:
    name = path.name.lower()
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _segment_name_map(segment_names) -> dict[int, str]:
    """Label value -> name from a mapping, or from a sequence naming labels 1, 2, 3, ... in order."""
    if segment_names is None:
        return {}
    if hasattr(segment_names, "items"):
        return {int(label): str(name) for label, name in segment_names.items()}
    if isinstance(segment_names, str):
        raise ValueError("segment_names must be a mapping label -> name or a sequence of names, not a string")
    return {index + 1: str(name) for index, name in enumerate(segment_names)}


# --------------------------------------------------------------------------- DICOM series


def write_dicom_series(
    out_dir,
    stored_values,
    *,
    spacing_mm,
    origin_mm,
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
    modality="CT",
    rescale_slope=1.0,
    rescale_intercept=0.0,
    bits_stored=12,
    slice_thickness_mm=None,
    transfer_syntax="explicit_le",
    patient=None,
    header=None,
    series_description="",
    series_uid=None,
    study_uid=None,
    series_number=1,
    manufacturer="",
    shuffle_seed=None,
) -> list[pathlib.Path]:
    """Write a volume of stored pixel values as a single-frame CT or MR DICOM series.

    Parameters
    ----------
    out_dir : path-like
        Folder to write into (created if needed).
    stored_values : (Z, Y, X) ndarray, uint16 or int16
        Stored pixel values; int16 writes PixelRepresentation 1 (two's complement).
        Real-world values are ``stored * rescale_slope + rescale_intercept`` (HU for CT).
    spacing_mm : (x, y, z) floats, mm
        Column spacing, row spacing, and the distance between slice centres.
    origin_mm : (x, y, z) floats, mm
        Centre of the first voxel of slice 0 (LPS patient coordinates).
    direction : 9 floats
        Row-major 3x3 matrix whose columns are the unit directions of the x (column index),
        y (row index) and z (slice index) axes, as SimpleITK's ``GetDirection``.
        Slice ``k`` is at ``origin + k * spacing_z * direction[:, 2]``.
    modality : {"CT", "MR"}
    rescale_slope, rescale_intercept : float
        Written as RescaleSlope/RescaleIntercept (CT always; MR only if not the identity).
    bits_stored : int
        BitsStored (HighBit = BitsStored - 1, BitsAllocated 16); values must fit.
    slice_thickness_mm : float, optional
        SliceThickness (default: the z spacing). SpacingBetweenSlices is always the z spacing.
    transfer_syntax : str
        One of :data:`TRANSFER_SYNTAXES`.
    patient : mapping, optional
        DICOM keywords and values (PatientName, PatientID, StudyDate, ...) written into every file.
    header : mapping, optional
        Further DICOM keywords and values that override the defaults (an MR scanner's
        ManufacturerModelName, MagneticFieldStrength, RepetitionTime, EchoTime, ...).
    series_description, series_number, manufacturer : optional header values
    series_uid, study_uid : str, optional
        Generated when absent. When both are given the output is deterministic (SOP and
        frame-of-reference UIDs are derived from them).
    shuffle_seed : int, optional
        When given, files get meaningless hex names and are written in a shuffled order.

    Returns
    -------
    list of pathlib.Path
        The file paths, in slice order (slice 0 first).
    """
    values, modality, bits_stored = _checked_series(stored_values, modality, bits_stored, transfer_syntax)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or _uid()
    series_uid = series_uid or _uid()
    axes = _direction_matrix(direction)
    spacing = [float(s) for s in spacing_mm]
    series = {
        "modality": modality, "spacing": spacing, "origin": np.asarray(origin_mm, dtype=float), "axes": axes,
        "thickness": float(spacing[2] if slice_thickness_mm is None else slice_thickness_mm),
        "bits_stored": bits_stored, "signed": values.dtype == np.int16, "transfer_syntax": transfer_syntax,
        "rescale": (float(rescale_slope), float(rescale_intercept)), "study_uid": study_uid,
        "series_uid": series_uid, "frame_of_reference_uid": _uid([study_uid, "frame-of-reference"]),
        "series_number": int(series_number), "series_description": series_description,
        "manufacturer": manufacturer, "rows": values.shape[1], "cols": values.shape[2],
    }
    names, write_order, instance_numbers = _file_plan(values.shape[0], shuffle_seed)
    paths = [out / name for name in names]
    for k in write_order:
        ds = _slice_dataset(series, k, int(instance_numbers[k]))
        for keyword, value in {**(patient or {}), **(header or {})}.items():
            setattr(ds, keyword, value)
        _set_pixels(ds, np.ascontiguousarray(values[k]), transfer_syntax, bits_stored)
        with atomic_path(paths[k]) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return paths


def _checked_series(stored_values, modality, bits_stored, transfer_syntax) -> tuple[np.ndarray, str, int]:
    """The stored values as an array, the modality upper-cased and BitsStored as int, all checked."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax={transfer_syntax!r}; expected one of {sorted(TRANSFER_SYNTAXES)}")
    modality = str(modality).upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality={modality!r}; expected 'CT' or 'MR'")
    values = np.asarray(stored_values)
    if values.ndim != 3:
        raise ValueError(f"stored_values must be (Z, Y, X); got shape {values.shape}")
    if values.dtype not in (np.uint16, np.int16):
        raise ValueError(f"stored_values dtype must be uint16 or int16; got {values.dtype}")
    signed = values.dtype == np.int16
    if not 1 <= int(bits_stored) <= 16:
        raise ValueError(f"bits_stored={bits_stored}; expected 1..16")
    bits_stored = int(bits_stored)
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    if values.size and (int(values.min()) < lo or int(values.max()) > hi):
        raise ValueError(
            f"stored values [{int(values.min())}, {int(values.max())}] do not fit bits_stored={bits_stored}"
            f" ({'signed' if signed else 'unsigned'})"
        )
    if transfer_syntax == "jpeg2000" and min(values.shape[1:]) < 32:
        # pylibjpeg-openjpeg always uses 6 DWT resolutions, which needs >= 32 pixels per side
        raise ValueError(f"jpeg2000 needs Rows and Columns >= 32; got {values.shape[1]} x {values.shape[2]}")
    return values, modality, bits_stored


def _file_plan(n_slices: int, shuffle_seed) -> tuple[list[str], list[int], np.ndarray]:
    """File names, the order they are written in, and InstanceNumbers (scrambled: readers must not sort by it)."""
    rng = np.random.default_rng(12345 if shuffle_seed is None else shuffle_seed)
    instance_numbers = rng.permutation(n_slices) + 1
    if shuffle_seed is None:
        return [f"IM{k + 1:05d}.dcm" for k in range(n_slices)], list(range(n_slices)), instance_numbers
    names = [rng.bytes(8).hex() for _ in range(n_slices)]
    return names, [int(k) for k in rng.permutation(n_slices)], instance_numbers


def _slice_dataset(series: dict, k: int, instance_number: int):
    """The header of slice ``k`` (no pixel data yet)."""

    modality = series["modality"]
    sop_class = _CT_IMAGE_STORAGE if modality == "CT" else _MR_IMAGE_STORAGE
    sop_uid = _uid([series["series_uid"], "instance", k])
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid, series["transfer_syntax"])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
                    "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "PositionReferenceIndicator"):
        setattr(ds, keyword, "")
    ds.Modality = modality
    ds.Manufacturer = series["manufacturer"]
    ds.SeriesDescription = series["series_description"]
    ds.BodyPartExamined = "LSPINE"
    _set_acquisition(ds, modality)
    _set_geometry(ds, series, k)
    ds.StudyInstanceUID = series["study_uid"]
    ds.SeriesInstanceUID = series["series_uid"]
    ds.SeriesNumber = series["series_number"]
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = series["frame_of_reference_uid"]
    _set_pixel_module(ds, series)
    return ds


def _file_meta(sop_class: str, sop_uid: str, transfer_syntax: str):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES[transfer_syntax])
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    return meta


def _set_acquisition(ds, modality: str) -> None:
    """Typical lumbar-spine acquisition values (``header`` overrides them per scanner)."""
    if modality == "CT":
        ds.KVP = "120"
        return
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "3000"
    ds.EchoTime = "100"
    ds.EchoTrainLength = "16"
    ds.MagneticFieldStrength = "1.5"


def _set_geometry(ds, series: dict, k: int) -> None:
    """Image plane module of slice ``k``: position, orientation, spacing, thickness."""
    axes, spacing = series["axes"], series["spacing"]
    row_cosine, col_cosine, slice_axis = axes[:, 0], axes[:, 1], axes[:, 2]
    position = series["origin"] + k * spacing[2] * slice_axis
    ds.SliceThickness = _ds(series["thickness"])
    ds.SpacingBetweenSlices = _ds(spacing[2])
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *col_cosine)]
    ds.SliceLocation = _ds(float(np.dot(position, np.cross(row_cosine, col_cosine))))
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # [row spacing (y), column spacing (x)]


def _set_pixel_module(ds, series: dict) -> None:
    modality, (slope, intercept) = series["modality"], series["rescale"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = series["rows"]
    ds.Columns = series["cols"]
    ds.BitsAllocated = 16
    ds.BitsStored = series["bits_stored"]
    ds.HighBit = series["bits_stored"] - 1
    ds.PixelRepresentation = 1 if series["signed"] else 0
    if modality == "CT" or slope != 1.0 or intercept != 0.0:
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU" if modality == "CT" else "US"


def _set_pixels(ds, frame: np.ndarray, transfer_syntax: str, bits_stored: int) -> None:
    """PixelData of one frame in ``transfer_syntax`` (native, JPEG Lossless SV1, or pydicom's encoders)."""

    if transfer_syntax in ("explicit_le", "implicit_le", "big_endian"):
        byte_order: Literal["<", ">"] = ">" if transfer_syntax == "big_endian" else "<"
        ds.PixelData = frame.astype(frame.dtype.newbyteorder(byte_order)).tobytes()
        ds["PixelData"].VR = "OW"
    elif transfer_syntax == "jpeg_lossless":
        unsigned = frame.astype(np.int64) & ((1 << bits_stored) - 1)  # two's complement in P bits
        ds.PixelData = pydicom.encaps.encapsulate([encode_sv1(unsigned, bits_stored)])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = frame.tobytes()
        ds["PixelData"].VR = "OW"
        ds.compress(ds.file_meta.TransferSyntaxUID, frame, generate_instance_uid=False)


# --------------------------------------------------------------------------- masks


def _label_image(mask: np.ndarray, spacing_mm, origin_mm, direction):
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask))
    image.SetSpacing([float(s) for s in spacing_mm])
    image.SetOrigin([float(o) for o in origin_mm])
    image.SetDirection([float(d) for d in direction])
    return image


def write_mask(
    path, mask, *, spacing_mm, origin_mm, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), segment_names=None
) -> pathlib.Path:
    """Write a label-map mask as NIfTI, NRRD or a 3D Slicer ``.seg.nrrd`` (chosen by suffix).

    Parameters
    ----------
    path : path-like
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.seg.nrrd``.
    mask : (Z, Y, X) ndarray, uint8
        Label map (0 = background).
    spacing_mm, origin_mm, direction
        Geometry, SimpleITK (x, y, z) order; direction row-major.
    segment_names : mapping int -> str, or sequence of str, optional
        For ``.seg.nrrd``: the name of each label value (default ``Segment_<label>``); a
        sequence names labels 1, 2, 3, ... in order.
        Every non-zero label present becomes one segment in layer 0, as Slicer writes a
        single-layer binary-labelmap segmentation.
    """

    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(mask)
    if labels.ndim != 3:
        raise ValueError(f"mask must be (Z, Y, X); got shape {labels.shape}")
    suffix = _suffix_of(target)
    if suffix not in (".seg.nrrd", ".nii", ".nii.gz", ".nrrd", ".mha"):
        raise ValueError(f"unsupported mask suffix for {target.name!r}")
    image = _label_image(labels.astype(np.uint8), spacing_mm, origin_mm, direction)
    if suffix == ".seg.nrrd":
        present = [int(v) for v in np.unique(labels) if v != 0]
        names = _segment_name_map(segment_names)
        palette = [(0.5, 0.68, 0.5), (0.94, 0.84, 0.57), (0.69, 0.48, 0.4), (0.44, 0.72, 0.82)]
        image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
        image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
        image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
        image.SetMetaData("Segmentation_ConversionParameters", "")
        for index, label in enumerate(present):
            zz, yy, xx = np.nonzero(labels == label)
            extent = f"{xx.min()} {xx.max()} {yy.min()} {yy.max()} {zz.min()} {zz.max()}"
            color = palette[index % len(palette)]
            prefix = f"Segment{index}_"
            image.SetMetaData(prefix + "ID", f"Segment_{label}")
            image.SetMetaData(prefix + "Name", str(names.get(label, f"Segment_{label}")))
            image.SetMetaData(prefix + "NameAutoGenerated", "0")
            image.SetMetaData(prefix + "Color", " ".join(f"{c:g}" for c in color))
            image.SetMetaData(prefix + "ColorAutoGenerated", "0")
            image.SetMetaData(prefix + "Extent", extent)
            image.SetMetaData(prefix + "LabelValue", str(label))
            image.SetMetaData(prefix + "Layer", "0")
            image.SetMetaData(prefix + "Tags", "|")
    with atomic_path(target) as tmp:  # the temp name keeps the suffix SimpleITK chooses its IO by
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return target


def write_dicom_seg(path, mask, source_files, *, segment_names=None) -> pathlib.Path:
    """Write a binary DICOM Segmentation (highdicom) of a label map on a DICOM series' grid.

    Parameters
    ----------
    path : path-like
        Output file.
    mask : (Z, Y, X) ndarray
        Label map on the grid of the series as :func:`engine.io.dicom.read_dicom_series` returns
        it: slice ``k`` is the ``k``-th source image sorted by position along the slice normal.
        Each non-zero label becomes one segment (segment numbers 1..N in ascending label order).
    source_files : sequence of path-like
        The source series' files (any order).
    segment_names : mapping int -> str, or sequence of str, optional
        SegmentLabel per label value (default ``Segment_<label>``); a sequence names labels
        1, 2, 3, ... in order.
    """
    import highdicom as hd  # lazy: highdicom is heavy; export only

    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(mask)
    sources = [pydicom.dcmread(str(f)) for f in source_files]
    if not sources:
        raise ValueError("source_files is empty")
    orientation = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    sources.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(
            f"mask shape {labels.shape} does not match the source series "
            f"({len(sources)}, {sources[0].Rows}, {sources[0].Columns})"
        )
    present = [int(v) for v in np.unique(labels) if v != 0]
    if not present:
        raise ValueError("mask is empty: DICOM-SEG needs at least one segment")
    names = _segment_name_map(segment_names)
    descriptions = []
    for number, label in enumerate(present, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(names.get(label, f"Segment_{label}")),
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.SkeletalMuscle,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    stacked = np.stack([(labels == label) for label in present], axis=-1).astype(np.uint8)
    series_uid = _uid([sources[0].SeriesInstanceUID, "seg", target.name])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=int(getattr(sources[0], "SeriesNumber", 1) or 1) + 1000,
        sop_instance_uid=_uid([series_uid, "instance"]),
        instance_number=1,
        manufacturer="sarco-engine",
        manufacturer_model_name="synthetic",
        software_versions="0.1.0",
        device_serial_number="0",
        omit_empty_frames=False,
    )
    _pin_generated(seg, sources[0], series_uid)
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    return target


def _pin_generated(seg, source, series_uid: str) -> None:
    """Replace what highdicom draws at build time (the clock, the dimension organisation's random
    UID) by values derived from the source, so the same mask and series write the same bytes: a
    grown benchmark cache then leaves its earlier patients' digests alone."""
    date = str(getattr(source, "StudyDate", "") or "20000101")
    seg.InstanceCreationDate = seg.ContentDate = date
    seg.InstanceCreationTime = seg.ContentTime = "120000"
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{date}120000"
    organisation = _uid([series_uid, "dimension-organization"])
    for sequence in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(sequence, []):
            item.DimensionOrganizationUID = organisation
