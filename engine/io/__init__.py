"""Ingest layer: DICOM series, NIfTI/NRRD volumes, ROI masks, inspection (readers only; the
synthetic writers live in :mod:`engine.synthetic`).

Every per-input problem raises :class:`engine.errors.InputError` (stage ``ingest`` for images,
``mask`` for masks) with a sentence a radiographer can act on and no patient identifier.
Images come back as float32 SimpleITK images in physical space (CT in HU); masks as uint8 0/1
on the image's grid.
"""

from engine.io.dicom import DicomSeries, SeriesInfo, open_dicom_series, read_dicom_series, scan_dicom_folder
from engine.io.inspect import format_inspection, inspect_path
from engine.io.masks import read_mask, read_mask_native, same_grid
from engine.io.volumes import ImageSource, open_image, read_image

__all__ = [
    "DicomSeries",
    "ImageSource",
    "SeriesInfo",
    "scan_dicom_folder",
    "open_dicom_series",
    "open_image",
    "read_dicom_series",
    "read_image",
    "read_mask",
    "read_mask_native",
    "same_grid",
    "inspect_path",
    "format_inspection",
]
