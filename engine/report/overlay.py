"""The report's habitat overlay of a preview slice (Figure 4).

The tissues are :mod:`engine.runfolder.previews`' (QA's too).

The overlay classifies the published preview's ROI pixels with the engine's classify kernel, so
it is the habitat map's slice, voxel for voxel (muscle blue, fat red, as in the study's Figure 4).
"""

from __future__ import annotations

import numpy as np

from engine.runfolder.previews import Preview, tissue_masks

# CT display window for overlays (HU): soft tissue, wide enough to show fat (-100) and muscle (+50).
CT_DISPLAY_WINDOW_HU = (-200.0, 250.0)
# Overlay colours (RGBA) as in the study's Figure 4: muscle blue, fat red, half transparent.
MUSCLE_RGBA = (0.12, 0.35, 1.0, 0.5)
FAT_RGBA = (1.0, 0.1, 0.1, 0.5)


def display_window(modality: str, image: np.ndarray) -> tuple[float, float]:
    """Grey-level window of a slice: the CT soft-tissue window; MRI (no unit) its 1st-99th percentile."""
    if modality == "ct":
        return CT_DISPLAY_WINDOW_HU
    finite = np.asarray(image, dtype=float)
    finite = finite[np.isfinite(finite)]
    low, high = (float(v) for v in np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)
    return (low, high) if high > low else (low, low + 1.0)


def habitat_overlay(preview: Preview, threshold: float, fat_is: str) -> tuple[np.ndarray, float]:
    """(RGBA image of the slice's shape, fat % of the ROI's in-window pixels on the slice).

    The tissues are :func:`engine.runfolder.previews.tissue_masks`' (the QA panel's too).
    """
    _, muscle, fat = tissue_masks(preview, threshold, fat_is)
    overlay = np.zeros(preview.image.shape + (4,), dtype=float)
    overlay[muscle] = MUSCLE_RGBA
    overlay[fat] = FAT_RGBA
    n = int(muscle.sum() + fat.sum())
    share = 100.0 * int(fat.sum()) / n if n else float("nan")
    return overlay, share


def roi_mask(preview: Preview) -> np.ndarray:
    """The ROI on the slice as a float image (1 inside), for an outline contour."""
    return tissue_masks(preview, None, "low")[0].astype(float)
