"""Read an image volume from a DICOM series folder, a DICOM file, NIfTI, NRRD or MetaImage.

Whatever the format, the result is a float32 SimpleITK image in physical space (LPS, mm)
and a small dict describing it (no patient identifiers).
"""

from __future__ import annotations

import errno
import gzip
import os
import pathlib
import stat
import zlib

import numpy as np
import SimpleITK as sitk

from engine.errors import InputError
from engine.io.dicom import DEFAULT_SERIES_HINT, geometry_carrier, open_dicom_series

__all__ = ["ImageSource", "open_image", "read_image", "image_format", "VOLUME_SUFFIXES"]

STAGE = "ingest"

#: File suffixes read with SimpleITK (everything else that is a file is tried as DICOM).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_format(path) -> str:
    """``dicom-folder``, ``dicom-file``, ``seg.nrrd``, or the volume suffix (``.nii.gz``...)."""
    target = pathlib.Path(path)
    if target.is_dir():
        return "dicom-folder"
    name = target.name.lower()
    if name.endswith(".seg.nrrd"):
        return "seg.nrrd"
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return "dicom-file"


def _check_access(path, stage: str, what: str) -> pathlib.Path:
    target = pathlib.Path(path)
    if not os.path.lexists(target):
        raise InputError(stage, f"{what} not found: {path}")
    try:
        mode = target.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(stage, f"{what} is a symbolic link that loops back on itself: {path}") from None
        raise InputError(stage, f"{what} is a broken symbolic link (its target does not exist): {path}") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        # a named pipe or a device would block or never end when read
        raise InputError(stage, f"{what} is not a regular file or folder (a named pipe, socket or device): {path}")
    if not os.access(target, os.R_OK) or (stat.S_ISDIR(mode) and not os.access(target, os.X_OK)):
        raise InputError(stage, f"{what} is not readable (permission denied): {path}")
    return target


def _nifti_opener(path):
    return gzip.open if str(path).lower().endswith(".gz") else open


def _nifti_header(header: bytes):
    """(byte order, dims, datatype, bits per voxel, data offset) of a single-file NIfTI-1/2 header, or None."""
    if len(header) < 348:
        return None
    for order in ("<", ">"):
        sizeof_hdr = int(np.frombuffer(header[:4], dtype=f"{order}i4")[0])
        if sizeof_hdr == 348 and header[344:347] == b"n+1":
            dims = np.frombuffer(header[40:56], dtype=f"{order}i2").astype(np.int64)
            datatype = int(np.frombuffer(header[70:72], dtype=f"{order}i2")[0])
            bitpix = int(np.frombuffer(header[72:74], dtype=f"{order}i2")[0])
            offset = int(float(np.frombuffer(header[108:112], dtype=f"{order}f4")[0]))
            return order, dims, datatype, bitpix, offset
        if sizeof_hdr == 540 and len(header) >= 540 and header[4:7] == b"n+2":
            dims = np.frombuffer(header[16:80], dtype=f"{order}i8").astype(np.int64)
            datatype = int(np.frombuffer(header[12:14], dtype=f"{order}i2")[0])
            bitpix = int(np.frombuffer(header[14:16], dtype=f"{order}i2")[0])
            offset = int(np.frombuffer(header[168:176], dtype=f"{order}i8")[0])
            return order, dims, datatype, bitpix, offset
    return None


def _nifti_voxel_count(dims) -> int | None:
    n_dims = int(dims[0])
    if not 1 <= n_dims <= 7:
        return None
    return int(np.prod(np.maximum(dims[1 : n_dims + 1], 1)))


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes (header, extensions and voxel data) the NIfTI header describes, or None if not understood."""
    parsed = _nifti_header(header)
    if parsed is None:
        return None
    _, dims, _, bitpix, offset = parsed
    count = _nifti_voxel_count(dims)
    if count is None or bitpix <= 0:
        return None
    return max(offset, 348) + count * bitpix // 8


def _gzip_trailer_size(path) -> int | None:
    """ISIZE of a gzip file: its last 4 bytes, the uncompressed length modulo 2**32 (RFC 1952)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            tail = handle.read(4)
    except OSError:
        return None
    return int.from_bytes(tail, "little") if len(tail) == 4 else None


def _nifti_short_by(path) -> str | None:
    """Why a NIfTI file is incomplete (it ends before the voxel data its header describes), or None.

    ITK's NIfTI reader fills the missing end of a truncated ``.nii`` or ``.nii.gz`` with zeros
    without telling, which turns an interrupted copy into a smaller ROI or a black slab of
    image; so the data length is checked here. For ``.nii`` the file size says it. For
    ``.nii.gz``, a complete stream ends with its uncompressed length (the gzip trailer): when
    that matches the header the file is whole, as a cut stream ends in compressed data that
    match by a 1-in-2**32 chance; otherwise the stream is read to its end (which also checks
    its CRC) to say what is wrong. None when the file is complete or its header is not understood.
    """

    opener = _nifti_opener(path)
    try:
        with opener(path, "rb") as handle:
            expected = _nifti_expected_bytes(handle.read(540))
    except (EOFError, OSError, zlib.error):
        return None  # the header itself is unreadable: ITK says so
    if expected is None:
        return None
    if opener is open:
        found = os.path.getsize(path)
        return f"its header describes {expected} bytes, the file holds only {found}" if found < expected else None
    if _gzip_trailer_size(path) == expected % 2**32:
        return None
    found = 0
    try:
        with opener(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                found += len(block)
    except (EOFError, OSError, zlib.error):  # a gzip stream cut short, or a bad CRC
        return f"its compressed data are cut short or corrupt (the header describes {expected} bytes)"
    if found < expected:
        return f"its header describes {expected} bytes, the file holds only {found}"
    return None


def _nifti_nonfinite(path) -> tuple[int, int] | None:
    """(NaN count, infinite count) of a floating-point NIfTI file, read from the raw data.

    ITK's NIfTI reader replaces NaN and infinite voxels by 0 without telling, which would turn
    a hole in an image into plausible tissue (0 HU is inside the CT window); so floating-point
    NIfTI data are scanned here. Returns None for non-float data or a header this parser does
    not understand (SimpleITK has read the file already, so it is not an error).
    """
    with _nifti_opener(path)(path, "rb") as handle:
        parsed = _nifti_header(handle.read(540))
        if parsed is None:
            return None
        order, dims, datatype, _, offset = parsed
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        count = _nifti_voxel_count(dims)
        if dtype is None or count is None:
            return None
        handle.seek(offset)  # gzip files seek by decompressing: fine for one pass
        data = np.frombuffer(handle.read(count * int(dtype[1])), dtype=f"{order}{dtype}")
    n_nan = int(np.isnan(data).sum())
    n_inf = int(np.isinf(data).sum())
    return n_nan, n_inf


def _nonfinite_message(n_nan: int, n_inf: int) -> str:
    parts = []
    if n_nan:
        parts.append(f"{n_nan} NaN voxels")
    if n_inf:
        parts.append(f"{n_inf} infinite voxels")
    return (f"image contains {' and '.join(parts)} (no-data markers of a converter or a registration step); "
            "re-export it with real intensities everywhere")


def read_volume_file(path, *, stage: str = STAGE, what: str = "image file", max_voxels: int | None = None):
    """Read a NIfTI/NRRD/MetaImage file with SimpleITK, as written (no cast).

    Raises InputError when the file cannot be read or claims more than ``max_voxels``.
    """

    target = _check_access(path, stage, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(target))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(
            stage, f"{what} could not be read (corrupt or not a {image_format(target)} file): {path}"
        ) from None
    size = reader.GetSize()
    n_voxels = int(np.prod(size, dtype=np.int64)) * int(reader.GetNumberOfComponents())
    if max_voxels is not None and n_voxels > max_voxels:
        raise InputError(
            stage,
            f"{what} header claims {' x '.join(str(s) for s in size)} voxels, more than the limit of "
            f"{max_voxels} (io.max_voxels_per_volume); the header is corrupt or the file is not a lumbar "
            f"volume: {path}",
        )
    if image_format(target) in (".nii", ".nii.gz"):
        short = _nifti_short_by(target)
        if short is not None:
            raise InputError(stage, f"{what} is truncated or damaged: {short} (an interrupted copy or export); "
                                    f"re-export it: {path}")
    try:
        return reader.Execute()
    except RuntimeError:
        raise InputError(stage, f"{what} could not be read (truncated or corrupt data): {path}") from None


class ImageSource:
    """An image in physical space whose voxels are read on demand, one box at a time.

    A DICOM series is checked when opened (headers, geometry) and decoded only where
    :meth:`read` asks: the ROI's neighbourhood, not the whole series. Other formats are read
    whole when opened (their readers cannot read part of a file). The geometry getters follow
    SimpleITK, so grid arithmetic treats a source like an image.

    Attributes
    ----------
    info : dict
        As :func:`read_image` returns it.
    """

    def __init__(self, info: dict, *, series=None, image=None):
        self.info = info
        self._series = series
        self._image = image
        if series is not None:
            self._size, self._carrier = tuple(series.size), series.carrier
        else:
            self._size = tuple(int(v) for v in image.GetSize())
            self._carrier = geometry_carrier(image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def GetDimension(self):  # SimpleITK's names (this stands in for an sitk.Image)
        return 3

    def GetSize(self):
        return self._size

    def GetSpacing(self):
        return self._carrier.GetSpacing()

    def GetOrigin(self):
        return self._carrier.GetOrigin()

    def GetDirection(self):
        return self._carrier.GetDirection()

    def TransformIndexToPhysicalPoint(self, index):
        return self._carrier.TransformIndexToPhysicalPoint([int(v) for v in index])

    def TransformContinuousIndexToPhysicalPoint(self, index):
        return self._carrier.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])

    def read(self, index=(0, 0, 0), size=None):
        """float32 SimpleITK image of the box ``index`` .. ``index + size`` (x, y, z; default all)."""

        if self._series is not None:
            return self._series.read(index, size)
        if size is None and tuple(index) == (0, 0, 0):
            return self._image
        size = list(self._image.GetSize()) if size is None else [int(v) for v in size]
        return sitk.RegionOfInterest(self._image, size, [int(v) for v in index])


def _geometry_info(image) -> dict:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
            "direction": list(image.GetDirection())}


def open_image(path, *, series_uid: str | None = None, max_voxels: int = 400_000_000, max_files: int = 5000,
               series_hint: str | None = None, series_description: str | None = None) -> ImageSource:
    """Open an image for reading by boxes; a DICOM series is checked now and decoded later.

    Parameters and errors are those of :func:`read_image`, except that pixel-level problems of
    a DICOM series (a corrupt compressed frame) surface when :meth:`ImageSource.read` decodes
    the slices concerned. ``series_description`` chooses a DICOM folder's series by a regular
    expression on its description (:func:`engine.io.dicom.open_dicom_series`).
    """

    target = _check_access(path, STAGE, "image file")
    kind = image_format(target)
    if kind in ("dicom-folder", "dicom-file"):
        series = open_dicom_series(target, series_uid=series_uid, max_voxels=max_voxels, max_files=max_files,
                                   series_description=series_description,
                                   series_hint=DEFAULT_SERIES_HINT if series_hint is None else series_hint)
        info = {"format": kind, **series.info.as_dict(), "size": list(series.size)}
        return ImageSource(info, series=series)
    image = read_volume_file(target, max_voxels=max_voxels)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            STAGE,
            f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            f"a grayscale volume is needed: {path}",
        )
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(STAGE, f"image is {image.GetDimension()}-D; a 3-D volume is needed: {path}")
    if kind in (".nii", ".nii.gz") and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        counts = _nifti_nonfinite(target)
        if counts is not None and (counts[0] or counts[1]):
            raise InputError(STAGE, _nonfinite_message(*counts))
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if not finite.all():
        n_nan = int(np.isnan(values).sum())
        raise InputError(STAGE, _nonfinite_message(n_nan, int(values.size - finite.sum() - n_nan)))
    return ImageSource({"format": kind, **_geometry_info(image)}, image=image)


def read_image(path, *, series_uid: str | None = None, max_voxels: int = 400_000_000, max_files: int = 5000,
               series_hint: str | None = None):
    """Read an image in physical space as float32.

    Parameters
    ----------
    path : path-like
        A DICOM series folder (or DICOMDIR tree), a single DICOM file, or a
        ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha`` volume.
    series_uid : str, optional
        Which DICOM series to read when a folder holds several
        (the manifest's ``ct_series_uid``/``mri_series_uid`` column).
    max_voxels : int
        Refuse volumes whose header claims more voxels (before reading the data).
    max_files : int
        Refuse DICOM folders holding more files (a whole PACS export instead of one series).
    series_hint : str, optional
        How the caller chooses one DICOM series among several (said in that error).

    Returns
    -------
    image : SimpleITK.Image
        3-D, float32; CT in HU. ``GetArrayFromImage`` gives (Z, Y, X).
    info : dict
        ``format``, ``size`` (x, y, z), ``spacing``, ``origin``, ``direction``; DICOM adds
        ``modality``, ``series_uid``, ``description``, ``n_files``, ``transfer_syntax``, ``notes``.

    Raises
    ------
    InputError
        Missing or unreadable path, a DICOM problem (see :func:`engine.io.dicom.read_dicom_series`),
        a non-3-D or multi-component volume, or NaN/Inf voxels.
    """
    source = open_image(path, series_uid=series_uid, max_voxels=max_voxels, max_files=max_files,
                        series_hint=series_hint)
    return source.read(), source.info
