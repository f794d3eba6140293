"""Benchmark: the ROI derived from a whole-body label map vs a hand ROI, on the same image grid.

Opportunistic CT comes with a whole-body segmentation (TotalSegmentator ``--ml``: one uint8
label map on the CT's grid, ~150 MB for 512 x 512 x 600) instead of a hand-drawn ROI. Side by
side in one process, on the same reference grid:

* ``hand``: :func:`engine.io.read_mask` of a hand ROI (the four muscles over a 20 mm slab), what
  the engine does with ``ct_roi``;
* ``derived``: :func:`engine.io.segmentation.derive_roi_from_file` of the whole-body label map
  (vertebrae L1-L5, both autochthon and iliopsoas muscles over the whole scan), what it does
  with ``ct_segmentation``; and ``read only``: reading that label map and nothing else, the floor.

Both files are written as ``.nii.gz`` and ``.nii``. Rows: median seconds over repeats and the
ratios derived/hand and derived/read-only. The synthetic map is boxes, not anatomy: it costs what
a real map of the same size costs to read and to search, which is what is measured.

Run ``python -m bench --only segmentation [--quick]``. ``--quick``: 256 x 256 x 150, 1 repeat;
full: 512 x 512 x 600 (0.8 x 0.8 x 1.0 mm), 3 repeats.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ._common import median_time, ratio


def _label_map(shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(whole-body label map, hand ROI) as (Z, Y, X) uint8, TotalSegmentator 'total' v2 values."""
    from engine.contract import TOTALSEGMENTATOR_TOTAL_V2 as ids

    nz, ny, nx = shape_zyx
    labels = np.zeros(shape_zyx, np.uint8)
    # vertebral bodies stacked along z (index k grows superiorly: identity direction, LPS +z),
    # 32 mm bodies with 8 mm discs around the middle of the scan
    step = max(nz // 15, 4)
    body = step * 4 // 5
    centre = nz // 2
    for n, name in enumerate(("L5", "L4", "L3", "L2", "L1")):
        start = centre + (n - 2) * step - body // 2
        labels[max(start, 0):max(start + body, 0), ny // 2 - ny // 16:ny // 2 + ny // 16,
               nx // 2 - nx // 16:nx // 2 + nx // 16] = ids[f"vertebrae_{name}"]
    muscles = {
        "autochthon_left": (ny // 2 + ny // 10, nx // 2 + nx // 20),
        "autochthon_right": (ny // 2 + ny // 10, nx // 2 - nx // 10),
        "iliopsoas_left": (ny // 2 - ny // 20, nx // 2 + nx // 8),
        "iliopsoas_right": (ny // 2 - ny // 20, nx // 2 - nx // 6),
    }
    size = max(ny // 20, 3)
    for name, (y, x) in muscles.items():
        labels[:, y:y + size, x:x + size] = ids[name]
    disc_k = centre - step // 2  # between L4 (below) and L3 (above)
    hand = np.zeros(shape_zyx, np.uint8)
    muscle = np.isin(labels, [ids[m] for m in muscles])
    hand[disc_k - 10:disc_k + 10] = muscle[disc_k - 10:disc_k + 10]
    return labels, hand


def _write(array: np.ndarray, path: Path, spacing) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))


def run(quick: bool = False, *, cache_dir=None, repeats: int | None = None) -> list[dict]:
    """Time hand ROI, derived ROI and the bare read on one synthetic whole-body label map."""
    import SimpleITK as sitk

    from engine.config import load_config
    from engine.io import read_mask
    from engine.io.segmentation import derive_roi_from_file

    shape = (150, 256, 256) if quick else (600, 512, 512)
    spacing = (1.6, 1.6, 1.0) if quick else (0.8, 0.8, 1.0)
    repeats = repeats or (1 if quick else 3)
    derive = load_config().roi.derive
    labels, hand = _label_map(shape)
    reference = sitk.Image([int(v) for v in shape[::-1]], sitk.sitkUInt8)  # the image's grid (voxels unused)
    reference.SetSpacing(spacing)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sarco-bench-seg-") as folder:
        for suffix in (".nii.gz", ".nii"):
            seg_path, roi_path = Path(folder) / f"total{suffix}", Path(folder) / f"hand_roi{suffix}"
            _write(labels, seg_path, spacing)
            _write(hand, roi_path, spacing)
            hand_t = median_time(lambda roi_path=roi_path: read_mask(roi_path, reference), repeats=repeats)
            read_t = median_time(lambda seg_path=seg_path: sitk.ReadImage(str(seg_path)), repeats=repeats)
            derived_t = median_time(lambda seg_path=seg_path: derive_roi_from_file(
                seg_path, reference, label_table=derive.label_table(), level=derive.level,
                thickness_mm=derive.thickness_mm, muscles=derive.muscles,
                level_checks="warn"), repeats=repeats)   # the quick map's 8 mm bodies are no adult's: time, not judge
            derived_voxels = int(sitk.GetArrayViewFromImage(derived_t.result.roi).astype(bool).sum())
            hand_voxels = int(hand.astype(bool).sum())
            rows.append({"file": suffix, "shape_zyx": "x".join(map(str, shape)),
                         "file_mb": round(seg_path.stat().st_size / 2**20, 1),
                         "hand_median_s": round(hand_t.median_s, 3), "read_only_median_s": round(read_t.median_s, 3),
                         "derived_median_s": round(derived_t.median_s, 3),
                         "derived_over_hand": round(ratio(derived_t.median_s, hand_t.median_s), 2),
                         "derived_over_read": round(ratio(derived_t.median_s, read_t.median_s), 2),
                         "roi_voxels_hand": hand_voxels, "roi_voxels_derived": derived_voxels})
    return rows
