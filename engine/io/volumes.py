"""Read an image volume from a DICOM series folder, a DICOM file, NIfTI, NRRD or MetaImage.

Whatever the format, the result is a float32 SimpleITK image in physical space (LPS, mm)
and a small dict describing it (no patient identifiers).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from engine.errors import InputError

__all__ = ["read_image", "image_format", "VOLUME_SUFFIXES"]

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
    if not target.exists():
        raise InputError(stage, f"{what} is a broken link: {path}")
    if not os.access(target, os.R_OK) or (target.is_dir() and not os.access(target, os.X_OK)):
        raise InputError(stage, f"{what} is not readable (permission denied): {path}")
    return target


def _nifti_nonfinite(path) -> tuple[int, int] | None:
    """(NaN count, infinite count) of a floating-point NIfTI file, read from the raw data.

    ITK's NIfTI reader replaces NaN and infinite voxels by 0 without telling, which would turn
    a hole in an image into plausible tissue (0 HU is inside the CT window); so floating-point
    NIfTI data are scanned here. Returns None for non-float data or a header this parser does
    not understand (SimpleITK has read the file already, so it is not an error).
    """
    import gzip

    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        header = handle.read(540)
        if len(header) < 348:
            return None
        for order in ("<", ">"):
            sizeof_hdr = int(np.frombuffer(header[:4], dtype=f"{order}i4")[0])
            if sizeof_hdr == 348:
                dims = np.frombuffer(header[40:56], dtype=f"{order}i2").astype(np.int64)
                datatype = int(np.frombuffer(header[70:72], dtype=f"{order}i2")[0])
                offset = int(float(np.frombuffer(header[108:112], dtype=f"{order}f4")[0]))
                break
            if sizeof_hdr == 540:
                dims = np.frombuffer(header[16:80], dtype=f"{order}i8").astype(np.int64)
                datatype = int(np.frombuffer(header[12:14], dtype=f"{order}i2")[0])
                offset = int(np.frombuffer(header[168:176], dtype=f"{order}i8")[0])
                break
        else:
            return None
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        n_dims = int(dims[0])
        if dtype is None or not 1 <= n_dims <= 7:
            return None
        count = int(np.prod(dims[1 : n_dims + 1]))
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
    return f"image contains {' and '.join(parts)}"


def read_volume_file(path, *, stage: str = STAGE, what: str = "image file", max_voxels: int | None = None):
    """Read a NIfTI/NRRD/MetaImage file with SimpleITK, as written (no cast).

    Raises InputError when the file cannot be read or claims more than ``max_voxels``.
    """
    import SimpleITK as sitk

    target = _check_access(path, stage, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(target))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(stage, f"{what} could not be read (corrupt or not a {image_format(target)} file): {path}") from None
    size = reader.GetSize()
    n_voxels = int(np.prod(size, dtype=np.int64)) * int(reader.GetNumberOfComponents())
    if max_voxels is not None and n_voxels > max_voxels:
        raise InputError(
            stage,
            f"{what} header claims {' x '.join(str(s) for s in size)} voxels, more than the limit of "
            f"{max_voxels} (io.max_voxels): {path}",
        )
    try:
        return reader.Execute()
    except RuntimeError:
        raise InputError(stage, f"{what} could not be read (truncated or corrupt data): {path}") from None


def read_image(path, *, series_uid: str | None = None, max_voxels: int = 400_000_000):
    """Read an image in physical space as float32.

    Parameters
    ----------
    path : path-like
        A DICOM series folder (or DICOMDIR tree), a single DICOM file, or a
        ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha`` volume.
    series_uid : str, optional
        Which DICOM series to read when a folder holds several (config ``io.series_uid``).
    max_voxels : int
        Refuse volumes whose header claims more voxels (before reading the data).

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
    import SimpleITK as sitk

    from engine.io.dicom import read_dicom_series

    target = _check_access(path, STAGE, "image file")
    kind = image_format(target)
    if kind in ("dicom-folder", "dicom-file"):
        image, series = read_dicom_series(target, series_uid=series_uid, max_voxels=max_voxels)
        info = {"format": kind, **series.as_dict()}
    else:
        image = read_volume_file(target, max_voxels=max_voxels)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                STAGE, f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel; a grayscale volume is needed: {path}"
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
        info = {"format": kind}
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if not finite.all():
        n_nan = int(np.isnan(values).sum())
        raise InputError(STAGE, _nonfinite_message(n_nan, int(values.size - finite.sum() - n_nan)))
    info.update(
        size=list(image.GetSize()),
        spacing=list(image.GetSpacing()),
        origin=list(image.GetOrigin()),
        direction=list(image.GetDirection()),
    )
    return image, info
