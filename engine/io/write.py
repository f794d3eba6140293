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

Every file is written under a temporary name in its target folder and moved into place with
:func:`os.replace`, so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = ["write_dicom_series", "write_mask", "write_dicom_seg", "TRANSFER_SYNTAXES"]

#: Short names accepted by :func:`write_dicom_series` and the transfer syntax UID each writes.
#: ``jpeg_lossless`` (JPEG Lossless, Non-Hierarchical, First-Order Prediction, Selection Value 1)
#: is encoded by a small baseline encoder in this module, since pydicom ships no encoder for it.
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


def _atomic_target(final_path: pathlib.Path, suffix: str = "") -> pathlib.Path:
    """A fresh temporary path in the folder of ``final_path`` (same file system: os.replace is atomic).

    ``suffix`` keeps the extension that SimpleITK uses to choose its image IO.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".partial" + suffix, dir=final_path.parent)
    os.close(fd)
    return pathlib.Path(tmp)


def _replace_into_place(tmp: pathlib.Path, final_path: pathlib.Path) -> None:
    os.replace(tmp, final_path)


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


def _uid(entropy: Sequence[str] | None = None) -> str:
    from pydicom.uid import generate_uid

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


# --------------------------------------------------------------------------- JPEG Lossless SV1 encoder


def _jpeg_lossless_sv1_encode(frame: np.ndarray, precision: int) -> bytes:
    """Encode one 2-D frame as JPEG Lossless, Process 14, first-order prediction (SV1).

    ITU-T T.81 Annex H: predictor 1 (Ra, the left neighbour); the first row uses Ra, the first
    column of each later row uses Rb (above), the first sample uses 2**(P-1). Differences are
    taken modulo 2**16 and coded with one Huffman table (DC-style categories 0..16) built from
    the frame's category histogram (Annex K.2), so the stream is small and self-contained.

    Parameters
    ----------
    frame : (Y, X) ndarray of unsigned stored values, < 2**precision
    precision : int
        Sample precision P (2..16).
    """
    samples = frame.astype(np.int64)
    rows, cols = samples.shape
    predicted = np.empty_like(samples)
    predicted[0, 0] = 1 << (precision - 1)
    predicted[0, 1:] = samples[0, :-1]
    predicted[1:, 0] = samples[:-1, 0]
    predicted[1:, 1:] = samples[1:, :-1]
    diff = (samples - predicted) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)  # in [-32768, 32767]
    magnitude = np.abs(diff)
    category = np.zeros_like(magnitude)
    nonzero = magnitude > 0
    category[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int64) + 1
    # -32768 is coded as category 16 with no extra bits (H.1.2.2)
    category = np.where(diff == -32768, 16, category)

    # Huffman table (Annex K.2) from the category frequencies; one reserved code point.
    freq = np.bincount(category.ravel(), minlength=17).astype(np.int64).tolist() + [1]  # 17 = reserved
    code_size = [0] * 18
    others = [-1] * 18
    freq = list(freq)
    while True:
        v1 = -1
        for i in range(18):
            if freq[i] > 0 and (v1 < 0 or freq[i] <= freq[v1]):
                v1 = i
        v2 = -1
        for i in range(18):
            if i != v1 and freq[i] > 0 and (v2 < 0 or freq[i] <= freq[v2]):
                v2 = i
        if v2 < 0:
            break
        freq[v1] += freq[v2]
        freq[v2] = 0
        code_size[v1] += 1
        while others[v1] >= 0:
            v1 = others[v1]
            code_size[v1] += 1
        others[v1] = v2
        code_size[v2] += 1
        while others[v2] >= 0:
            v2 = others[v2]
            code_size[v2] += 1
    bits = [0] * 33
    for i in range(18):
        if code_size[i]:
            bits[code_size[i]] += 1
    i = 32
    while i > 16:  # limit code lengths to 16 bits (K.2, Figure K.3)
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
        i -= 1
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code point
    huffval = []
    for size in range(1, 33):
        for value in range(17):
            if code_size[value] == size:
                huffval.append(value)
    # canonical codes (Annex C)
    huffsize = []
    for length in range(1, 17):
        huffsize += [length] * bits[length]
    codes_list = []
    code = 0
    size = huffsize[0] if huffsize else 0
    k = 0
    while k < len(huffsize):
        while k < len(huffsize) and huffsize[k] == size:
            codes_list.append(code)
            code += 1
            k += 1
        code <<= 1
        size += 1
    ehufco = {v: c for v, c in zip(huffval, codes_list)}
    ehufsi = {v: s for v, s in zip(huffval, huffsize)}

    # bit stream: per sample, Huffman code of the category then `category` extra bits
    cat = category.ravel()
    d = diff.ravel()
    code_of = np.zeros(17, dtype=np.int64)
    size_of = np.zeros(17, dtype=np.int64)
    for v in ehufco:
        code_of[v] = ehufco[v]
        size_of[v] = ehufsi[v]
    extra_bits = np.where(d >= 0, d, d + (1 << cat) - 1) & ((1 << cat) - 1)
    extra_bits = np.where(cat == 16, 0, extra_bits)
    extra_len = np.where(cat == 16, 0, cat)
    words = (code_of[cat] << extra_len) | extra_bits
    lengths = size_of[cat] + extra_len
    # pack variable-length words into a bit array (MSB first)
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    starts = ends - lengths
    bit_array = np.zeros(total + 7, dtype=np.uint8)
    max_len = int(lengths.max()) if lengths.size else 0
    for b in range(max_len):
        has = lengths > b
        positions = starts[has] + b
        shift = lengths[has] - 1 - b
        bit_array[positions] = (words[has] >> shift) & 1
    pad = (-total) % 8
    bit_array[total : total + pad] = 1  # pad with 1-bits (F.1.2.3)
    packed = np.packbits(bit_array[: total + pad]).tobytes()
    # byte stuffing after 0xFF
    packed = packed.replace(b"\xff", b"\xff\x00")

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0x00]) + bytes(bits[1:17]) + bytes(huffval)
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns=1, Cs=1 Td=0, Ss=predictor 1, Se=0, Ah/Al=0
    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + packed + b"\xff\xd9"


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
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

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
    n_slices, rows, cols = values.shape
    spacing = [float(s) for s in spacing_mm]
    origin = np.asarray(origin_mm, dtype=float)
    axes = _direction_matrix(direction)
    row_cosine, col_cosine, slice_axis = axes[:, 0], axes[:, 1], axes[:, 2]
    thickness = float(spacing[2] if slice_thickness_mm is None else slice_thickness_mm)
    ts_uid = UID(TRANSFER_SYNTAXES[transfer_syntax])
    if transfer_syntax == "jpeg2000" and min(rows, cols) < 32:
        # pylibjpeg-openjpeg always uses 6 DWT resolutions, which needs >= 32 pixels per side
        raise ValueError(f"jpeg2000 needs Rows and Columns >= 32; got {rows} x {cols}")

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or _uid()
    series_uid = series_uid or _uid()
    frame_of_reference_uid = _uid([study_uid, "frame-of-reference"])
    rng = np.random.default_rng(12345 if shuffle_seed is None else shuffle_seed)
    instance_numbers = rng.permutation(n_slices) + 1  # scrambled on purpose: readers must not sort by it
    if shuffle_seed is None:
        names = [f"IM{k + 1:05d}.dcm" for k in range(n_slices)]
        write_order = list(range(n_slices))
    else:
        names = [rng.bytes(8).hex() for _ in range(n_slices)]
        write_order = [int(k) for k in rng.permutation(n_slices)]

    sop_class = _CT_IMAGE_STORAGE if modality == "CT" else _MR_IMAGE_STORAGE
    paths = [out / name for name in names]
    for k in write_order:
        sop_uid = _uid([series_uid, "instance", k])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ts_uid
        meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ""
        ds.StudyTime = ""
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = manufacturer
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description
        ds.PatientName = ""
        ds.PatientID = ""
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.BodyPartExamined = "LSPINE"
        if modality == "CT":
            ds.KVP = "120"
        else:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "SK"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = "3000"
            ds.EchoTime = "100"
            ds.EchoTrainLength = "16"
            ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = _ds(thickness)
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = int(instance_numbers[k])
        position = origin + k * spacing[2] * slice_axis
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *col_cosine)]
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(np.dot(position, np.cross(row_cosine, col_cosine))))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # [row spacing (y), column spacing (x)]
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if modality == "CT" or float(rescale_slope) != 1.0 or float(rescale_intercept) != 0.0:
            ds.RescaleIntercept = _ds(rescale_intercept)
            ds.RescaleSlope = _ds(rescale_slope)
            ds.RescaleType = "HU" if modality == "CT" else "US"
        for keyword, value in (patient or {}).items():
            setattr(ds, keyword, value)

        frame = np.ascontiguousarray(values[k])
        if transfer_syntax in ("explicit_le", "implicit_le", "big_endian"):
            byte_order = ">" if transfer_syntax == "big_endian" else "<"
            ds.PixelData = frame.astype(frame.dtype.newbyteorder(byte_order)).tobytes()
            ds["PixelData"].VR = "OW"
        elif transfer_syntax == "jpeg_lossless":
            unsigned = frame.astype(np.int64) & ((1 << bits_stored) - 1)  # two's complement in P bits
            ds.PixelData = pydicom.encaps.encapsulate([_jpeg_lossless_sv1_encode(unsigned, bits_stored)])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = frame.tobytes()
            ds["PixelData"].VR = "OW"
            ds.compress(ts_uid, frame, generate_instance_uid=False)
        tmp = _atomic_target(paths[k])
        try:
            ds.save_as(tmp, enforce_file_format=True)
            _replace_into_place(tmp, paths[k])
        finally:
            if tmp.exists():
                tmp.unlink()
    return paths


# --------------------------------------------------------------------------- masks


def _label_image(mask: np.ndarray, spacing_mm, origin_mm, direction):
    import SimpleITK as sitk

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
    import SimpleITK as sitk

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
    tmp = _atomic_target(target, suffix=".nrrd" if suffix == ".seg.nrrd" else suffix)
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        _replace_into_place(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
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
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

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
    tmp = _atomic_target(target)
    try:
        seg.save_as(tmp)
        _replace_into_place(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
