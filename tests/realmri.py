"""Real MRI from ../shared/realdata prepared as engine inputs (tests and docs/mri.md share them).

* ``dixon_tum02``: water + fat (a fat-bright image) with the hand mask of the erector spinae and
  multifidus, cut into slabs of :data:`SLAB_SLICES` slices, each a pseudo-patient; the truth of a
  slab is the Dixon fat fraction of its ROI: the fraction of ROI voxels with fat / (water + fat)
  > 0.5. Water and fat share one voxel grid but not one header origin: paired voxel by voxel, on
  the fat image's (and mask's) geometry.
* ``chaos_mr_t2spir``: a fat-suppressed T2 with no mask; :data:`CHAOS_ROI` is a hand-placed ROI
  of the left and right paraspinal muscles on its four lowest slices (read off the image: the
  canal's centre lies at x 128, y 150 on those slices, the muscles behind it).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REALDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"
DIXON = REALDATA / "dixon_tum02"
CHAOS = REALDATA / "chaos_mr_t2spir" / "10_T2SPIR_DICOM_anon_img.nii.gz"
SLAB_SLICES = 5
#: (slices, ((x, y) centre, (x, y) half-axes) per ellipse), voxel indices of the CHAOS image.
CHAOS_ROI = (range(0, 4), (((108, 170), (12, 11)), ((149, 170), (12, 11))))


def dixon_arrays() -> tuple[sitk.Image, np.ndarray, np.ndarray, np.ndarray]:
    """(the fat image, for its geometry; water, fat, mask arrays (Z, Y, X))."""
    fat = sitk.ReadImage(str(DIXON / "TUM02_fat_img_img_L2-L5.nii.gz"))
    water = sitk.ReadImage(str(DIXON / "TUM02_water_img_img_L2-L5.nii.gz"))
    mask = sitk.ReadImage(str(DIXON / "TUM02_fat_manual_label_segmentation_L2-L5.nii.gz"))
    return fat, *(sitk.GetArrayFromImage(im).astype(np.float64) for im in (water, fat, mask))


def write_dixon_slabs(out_dir: Path, slab_slices: int = SLAB_SLICES) -> Path:
    """One pseudo-patient per slab of water + fat with its mask; ``manifest.csv`` (and ``truth.csv``)."""
    geometry, water, fat, mask = dixon_arrays()
    signal = (water + fat).astype(np.float32)
    fraction = fat / np.maximum(water + fat, 1e-6)
    rows, truth = [], []
    for k, start in enumerate(range(0, signal.shape[0] - slab_slices + 1, slab_slices)):
        pid, part = f"TUM02_{k + 1}", slice(start, start + slab_slices)
        roi = mask[part] > 0
        origin = geometry.TransformIndexToPhysicalPoint((0, 0, start))
        for name, array in (("mri", signal[part]), ("mri_roi", roi.astype(np.uint8))):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(geometry.GetSpacing())
            image.SetOrigin(origin)
            image.SetDirection(geometry.GetDirection())
            (out_dir / pid).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(out_dir / pid / f"{name}.nii.gz"))
        rows.append({"patient_id": pid, "label": k % 2, "split": "train", "mri_image": f"{pid}/mri.nii.gz",
                     "mri_roi": f"{pid}/mri_roi.nii.gz"})
        truth.append({"patient_id": pid, "slices": f"{start}-{start + slab_slices - 1}",
                      "dixon_fat_fraction": float(np.mean(fraction[part][roi] > 0.5)),
                      "dixon_mean_fat_fraction": float(np.mean(fraction[part][roi]))})
    _write(out_dir / "truth.csv", truth)
    return _write(out_dir / "manifest.csv", rows)


def chaos_with_roi(out_dir: Path) -> tuple[Path, Path]:
    """(the CHAOS T2 SPIR image, :data:`CHAOS_ROI` written beside it as NIfTI on its grid)."""
    image = sitk.ReadImage(str(CHAOS))
    roi = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    y, x = np.mgrid[0:roi.shape[1], 0:roi.shape[2]]
    slices, ellipses = CHAOS_ROI
    for label, ((cx, cy), (ax, ay)) in enumerate(ellipses, start=1):
        inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
        for z in slices:
            roi[z][inside] = label
    mask = sitk.GetImageFromArray(roi)
    mask.CopyInformation(image)
    out_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mask, str(out_dir / "chaos_roi.nii.gz"))
    return CHAOS, out_dir / "chaos_roi.nii.gz"


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
