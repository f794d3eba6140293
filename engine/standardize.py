"""MRI intensity standardisation on a reference tissue (METHOD.md section 2, step 4; issue 16).

T2 signal has no absolute unit: two scanners (or one scanner with another receiver gain) put the
same muscle at different values, so a threshold fitted on pooled voxels falls between the
scanners' muscle peaks. ``preprocess.mri.standardize: reference`` rescales each N4-corrected
series so that a reference tissue found automatically *outside* the ROI lands on a fixed value
(``standardize_target``). The scale is never derived from the ROI's own histogram: that would
rescale a fatty ROI differently from a lean one and erase the very difference the study measures.

Reference tissue
----------------
On non-fat-suppressed T2 the natural reference is subcutaneous fat: the brightest large tissue at
the body's periphery, present in every patient, and far from the paraspinal/psoas ROI. It is
found on the same N4-corrected image the ROI values come from (N4's output scale depends on the
region it corrected, so a reference measured on another correction would not cancel it):

1. body = voxels above ``AIR_FRACTION`` x the image median, per axial slice with holes filled
   (bowel gas, vessels, cortical bone are inside the body) and the largest component kept;
2. peripheral band = body voxels at an in-plane depth of ``BAND_MM`` from the air boundary; the
   FOV edge is not a boundary (a lumbar FOV often cuts the flanks); the outermost
   ``SKIN_MM`` are left out (air/fat partial volume, skin);
3. the ROI dilated by ``ROI_GUARD_MM`` is removed (never measure the ROI);
4. fat = the bright class of an Otsu split of the band (muscle of the abdominal wall and back
   is the dark class); its core = the fat class eroded by one voxel in-plane, so voxels that
   share a muscle/fat border (partial volume) drop out;
5. reference signal = the median of the core (robust to Rician noise and to what is left of the
   bias field, which the median averages over the whole ring of fat).

scale = ``target / reference signal``; the ROI's values (and the preview slice) are multiplied by it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError

#: Body vs air: above this fraction of the image's median signal (air and the table are ~0;
#: flow voids and cortical bone are darker too but lie inside the body and are filled).
AIR_FRACTION = 0.2
#: In-plane depth range (mm) of the peripheral band searched for subcutaneous fat.
SKIN_MM, BAND_MM = 2.0, 30.0
#: Margin (mm) around the ROI that the reference never touches.
ROI_GUARD_MM = 5.0
#: Fewer core fat voxels than this: no trustworthy reference (a patient error, not a guess).
MIN_REFERENCE_VOXELS = 200


def _body_mask(volume: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: the body on each axial slice (holes filled, largest component)."""
    level = AIR_FRACTION * float(np.median(volume))
    body = volume > level
    for z in range(body.shape[0]):
        plane = ndimage.binary_fill_holes(body[z])
        labels, n = ndimage.label(plane)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            plane = labels == int(np.argmax(sizes))
        body[z] = plane
    return body


def _depth_mm(body: np.ndarray, spacing_xyz) -> np.ndarray:
    """In-plane distance (mm) of each body voxel from the air; the FOV edge is not air."""
    sampling = (float(spacing_xyz[1]), float(spacing_xyz[0]))
    depth = np.zeros(body.shape, np.float32)
    for z in range(body.shape[0]):
        padded = np.pad(body[z], 1, constant_values=True)
        if padded.all():  # no air on this slice: no edge to measure from
            depth[z] = np.inf
            continue
        depth[z] = ndimage.distance_transform_edt(padded, sampling=sampling)[1:-1, 1:-1]
    return depth


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values))


def reference_fat_signal(volume: np.ndarray, roi: np.ndarray, spacing_xyz) -> dict:
    """Median signal of the subcutaneous-fat core of one N4-corrected series.

    Parameters
    ----------
    volume : (Z, Y, X) float ndarray
        N4-corrected T2 signal on whole axial slices around the ROI (1 mm grid).
    roi : (Z, Y, X) bool ndarray
        The ROI on the same grid (excluded, with a guard margin).
    spacing_xyz : (3,) floats
        Voxel spacing (x, y, z) in mm.

    Returns
    -------
    dict
        ``reference_signal`` (median of the fat core), ``reference_voxels`` (core size),
        ``reference_iqr`` (interquartile range of the core, a noise/bias-remainder check),
        ``band_threshold`` (the Otsu split of the band).

    Raises
    ------
    InputError
        Fewer than ``MIN_REFERENCE_VOXELS`` core fat voxels (no body edge in the field of view,
        no subcutaneous fat): the series cannot be standardised.
    """
    body = _body_mask(volume)
    depth = _depth_mm(body, spacing_xyz)
    guard_vox = [max(1, int(round(ROI_GUARD_MM / s))) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    guard = ndimage.binary_dilation(roi, structure=np.ones([2 * g + 1 for g in guard_vox], bool))
    band = body & (depth >= SKIN_MM) & (depth <= BAND_MM) & ~guard
    if np.count_nonzero(band) < 2 * MIN_REFERENCE_VOXELS:
        raise InputError("preprocess", "MRI standardisation: no body edge with subcutaneous fat found around "
                                       "the ROI (is the body outline inside the field of view?); use "
                                       "preprocess.mri.standardize: none for this cohort")
    split = _otsu(volume[band])
    fat = band & (volume > split)
    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0, 1, :] = in_plane[0, :, 1] = True
    core = ndimage.binary_erosion(fat, structure=in_plane)
    if np.count_nonzero(core) < MIN_REFERENCE_VOXELS:
        core = fat  # thin fat: every fat voxel is a border voxel; better than none
    n = int(np.count_nonzero(core))
    if n < MIN_REFERENCE_VOXELS:
        raise InputError("preprocess", f"MRI standardisation: only {n} subcutaneous-fat voxels found outside the "
                                       f"ROI (at least {MIN_REFERENCE_VOXELS} needed); use "
                                       "preprocess.mri.standardize: none for this cohort")
    values = volume[core]
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"reference_signal": float(median), "reference_voxels": n, "reference_iqr": float(q75 - q25),
            "band_threshold": split}


__all__ = ["reference_fat_signal"]
