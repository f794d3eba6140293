"""The real Siemens CT of ../shared/realdata prepared as an engine input (the export tests share it).

``siemens_ct_dicom_jpeg2000``: a real anonymised Siemens CT DICOM series (JPEG 2000 lossless; empty
Study, Series and SOP Instance UIDs in the data set). Its hand ROI (:func:`siemens_roi`) is
TotalSegmentator's autochthon (labels 86 and 87) of it, as 0/1.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

REALDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"
SIEMENS = REALDATA / "siemens_ct_dicom_jpeg2000"


def siemens_roi(out: Path) -> Path:
    """A hand ROI for the Siemens CT, written to ``out``: TotalSegmentator's autochthon (86, 87) of it, as 0/1."""
    seg = sitk.ReadImage(str(SIEMENS / "example_seg_dicom.nii.gz"))
    roi = sitk.Cast(sitk.BinaryThreshold(seg, 86, 87, 1, 0), sitk.sitkUInt8)
    sitk.WriteImage(roi, str(out))
    return out
