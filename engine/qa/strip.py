"""The sagittal strip of a QA picture: a plane through the spinal canal, with the level drawn (issue 23).

Pass 1 cuts it while the series is open (only the ROI's slices plus a margin are decoded) and
caches it beside the ROI sample; the QA panel draws it. The plane is the sagittal plane through
the canal's x, found, in order of preference:

1. the disc plane's canal centre (``canal_x_mm``) when the derivation from a segmentation gives one;
2. the gap between the ROI's left and right muscles: the middle of the run of columns with the
   fewest ROI voxels nearest the middle of the ROI's left-right extent (searched in its middle
   fifth; the spine lies between the paraspinal muscles, and between the psoas muscles), which
   a hand ROI has too;
3. the middle of the ROI's left-right extent.

A strip at the ROI's median x, as before, fell inside one paraspinal muscle whenever the two sides
were not the same size.

For a derived ROI the strip shows the level (issue 30): it runs from the vertebral body above the
level to the one below (L2 to L5 for L3/L4), each body present in the segmentation labelled at its
centre (:func:`vertebra_bodies`), so a reader counts the vertebrae and confirms the level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine.contract import VERTEBRAE, vertebra_structure
from engine.io.segmentation import _structure_file, parse_level, vertebral_body
from engine.qa.orientation import continuous_index, index_axes_of, index_axis_along, slice_view

#: Image above and below the ROI that the strip shows (mm along the slice axis).
STRIP_MARGIN_MM = 25.0
#: Share of the ROI's left-right extent, around its middle, searched for the gap between the sides.
MIDLINE_SEARCH_FRACTION = 0.2
#: Vertebrae shown beyond the level's own, on each side (1: L2 to L5 for L3/L4).
NEIGHBOURS = 1
#: Smallest body labelled (mL): a lumbar body holds 30-45 mL, a thoracic 15-30 mL.
MIN_BODY_ML = 5.0
#: Image kept beyond the outermost bodies shown (mm): their endplates and the next disc in view.
BODY_MARGIN_MM = 8.0
#: Half the antero-posterior extent kept around a body's centre (mm): a lumbar body is ~35 mm deep.
BODY_HALF_DEPTH_MM = 25.0

MIDLINE_FROM_PLANE = "disc plane (canal centre)"
MIDLINE_FROM_GAP = "gap between the ROI's left and right muscles"
MIDLINE_FROM_EXTENT = "middle of the ROI's left-right extent"


def _index_to_physical(origin, spacing, direction, index: np.ndarray) -> np.ndarray:
    """(N, 3) continuous (i, j, k) indices -> (N, 3) LPS points, mm."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)[None, :]
    return np.asarray(origin, dtype=float)[None, :] + np.atleast_2d(index) @ matrix.T


def midline_x_mm(roi_kji: np.ndarray, origin, spacing, direction) -> tuple[float, str]:
    """The LPS x of the spine's midline from an ROI (any non-zero voxel), and how it was found.

    Parameters
    ----------
    roi_kji : (Z, Y, X) ndarray
        The ROI on the image grid (storage order).
    """
    x_axis = index_axis_along(direction, 0)
    return _midline_from_counts(roi_profiles(roi_kji)[2 - x_axis], x_axis, origin, spacing, direction)


def roi_profiles(roi_kji: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROI's voxel count per index along each array axis: ``(per k, per j, per i)``, int64.

    Each equals ``np.count_nonzero(roi_kji, axis=<the other two>)``; only the ROI's bounding box
    is counted, after a short-circuiting ``any`` per slice, so a ROI on a few slices of a long
    series costs a scan of the slices, not three full counts (pass 1's time, issue 28).
    """
    flat = roi_kji.reshape(roi_kji.shape[0], -1)
    k = np.flatnonzero(flat.any(axis=1))
    profiles = [np.zeros(n, np.int64) for n in roi_kji.shape]
    if k.size == 0:
        return profiles[0], profiles[1], profiles[2]
    slab = roi_kji[k[0]:k[-1] + 1]
    j = np.flatnonzero(slab.any(axis=(0, 2)))
    i = np.flatnonzero(slab[:, j[0]:j[-1] + 1].any(axis=(0, 1)))
    box = slab[:, j[0]:j[-1] + 1, i[0]:i[-1] + 1] != 0
    for axis, first in enumerate((k[0], j[0], i[0])):
        counts = np.count_nonzero(box, axis=tuple(a for a in range(3) if a != axis))
        profiles[axis][first:first + counts.size] = counts
    return profiles[0], profiles[1], profiles[2]


def _centroid_ijk(profiles: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(i, j, k) mean index of the ROI's voxels, from its profiles.

    The same float64 as ``np.argwhere(roi).mean(axis=0)[::-1]``: the index sums are integers,
    exact below 2**53 in any summation order, divided once by the voxel count.
    """
    total = int(profiles[0].sum())
    sums = [int(np.dot(np.arange(p.size, dtype=np.int64), p)) for p in profiles]
    return np.asarray(sums[::-1], dtype=np.float64) / total


def _midline_from_counts(counts: np.ndarray, x_axis: int, origin, spacing, direction) -> tuple[float, str]:
    """:func:`midline_x_mm` given the ROI's voxel count per index along ``x_axis``."""
    columns = np.flatnonzero(counts)
    first, last = int(columns[0]), int(columns[-1])
    middle = (first + last) / 2.0
    half_band = MIDLINE_SEARCH_FRACTION * (last - first) / 2.0
    band = np.arange(int(np.ceil(middle - half_band)), int(np.floor(middle + half_band)) + 1)
    how = MIDLINE_FROM_EXTENT
    column = middle
    if band.size and counts[band].min() < counts[first:last + 1].max():
        fewest = counts[band].min()
        nearest = int(band[counts[band] == fewest][np.argmin(np.abs(band[counts[band] == fewest] - middle))])
        low, high = nearest, nearest   # the whole run of such columns, beyond the band if it goes on
        while low > first and counts[low - 1] == fewest:
            low -= 1
        while high < last and counts[high + 1] == fewest:
            high += 1
        column = (low + high) / 2.0
        how = MIDLINE_FROM_GAP
    index = np.zeros(3)
    index[x_axis] = column
    return float(_index_to_physical(origin, spacing, direction, index)[0, 0]), how


def strip_vertebrae(level: str) -> tuple[str, ...]:
    """The vertebrae a strip shows: the level's and :data:`NEIGHBOURS` on each side (L3/L4 -> L2..L5)."""
    chosen = parse_level(level).vertebrae
    first = max(VERTEBRAE.index(chosen[0]) - NEIGHBOURS, 0)
    return VERTEBRAE[first:VERTEBRAE.index(chosen[-1]) + NEIGHBOURS + 1]


def vertebra_bodies(segmentation, label_table: dict[str, int], names) -> dict[str, tuple[float, float, float, float]]:
    """Vertebra -> (y, z, lowest z, highest z), LPS mm, of each body of ``names`` the segmentation holds.

    The body is :func:`engine.io.segmentation.vertebral_body`'s (largest component, anterior of
    the canal), the derivation's own; (y, z) is its centroid. A body under :data:`MIN_BODY_ML` (a
    sliver the field of view cuts, or a stray piece inside a neighbour) is left out: its centre
    would not be the vertebra's. ``segmentation``: a label map read with ``label_table``, or a
    folder of ``vertebrae_<name>.nii.gz`` files.
    """
    path = Path(segmentation)
    found: dict[str, tuple[float, float, float, float]] = {}
    image = None if path.is_dir() else sitk.ReadImage(str(path))
    if image is not None and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(sitk.Round(image), sitk.sitkUInt16)
    for name in names:
        if image is None:
            file = _structure_file(path, vertebra_structure(name))
            if file is None:
                continue
            mask = sitk.ReadImage(str(file))
            body = vertebral_body(sitk.GetArrayViewFromImage(mask) != 0, mask, True)
        else:
            value = label_table.get(vertebra_structure(name))
            body = None if value is None else vertebral_body(sitk.GetArrayViewFromImage(image), image, int(value))
        voxel_ml = float(np.prod((mask if image is None else image).GetSpacing())) / 1000.0
        if body is not None and body.y_mm is not None and body.z_mm.size * voxel_ml >= MIN_BODY_ML:
            found[name] = (float(body.y_mm.mean()), float(body.z_mm.mean()), float(body.z_mm.min()),
                           float(body.z_mm.max()))
    return found


def _plane_marks(derived, roi_z_mm: tuple[float, float]) -> tuple[list[float], str]:
    """(z marks, label): the slab's bounds and the disc plane of a derived ROI, else the ROI's extent."""
    if derived is None:
        return sorted(roi_z_mm), "hand ROI extent"
    plane = float(derived.plane_mm)
    low = getattr(derived, "slab_min_z_mm", None)
    high = getattr(derived, "slab_max_z_mm", None)
    if low is None or high is None:
        low, high = plane - derived.thickness_mm / 2, plane + derived.thickness_mm / 2
    return [float(low), plane, float(high)], f"{derived.level} disc plane and slab"


def _extent(profiles: tuple[np.ndarray, np.ndarray, np.ndarray], axis: int) -> tuple[int, int]:
    """First and last index along index axis ``axis`` holding ROI voxels (from :func:`roi_profiles`)."""
    occupied = np.flatnonzero(profiles[2 - axis])
    return int(occupied[0]), int(occupied[-1])


def _bodies_box(bodies: dict, x_mm: float, origin, spacing, direction) -> tuple[np.ndarray, np.ndarray] | None:
    """(lowest, highest) continuous (i, j, k) index of the box around the bodies and their margins."""
    if not bodies:
        return None
    corners = [continuous_index((x_mm, y + dy, z), origin, spacing, direction)
               for y, _, low, high in bodies.values()
               for dy in (-BODY_HALF_DEPTH_MM, BODY_HALF_DEPTH_MM)
               for z in (low - BODY_MARGIN_MM, high + BODY_MARGIN_MM)]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def _marks_of_bodies(bodies: dict | None, derived) -> dict:
    """The strip's vertebra labels: names, LPS y and z of each body's centre, whether it is the level's."""
    bodies = bodies or {}
    level = set(getattr(derived, "vertebrae", ()) or ())
    return {"vertebra_names": np.array(list(bodies), dtype=str),
            "vertebra_y_mm": np.array([b[0] for b in bodies.values()], dtype=float),
            "vertebra_z_mm": np.array([b[1] for b in bodies.values()], dtype=float),
            "vertebra_at_level": np.array([name in level for name in bodies], dtype=bool)}


def sagittal_strip(image, mask, derived=None, margin_mm: float = STRIP_MARGIN_MM, bodies: dict | None = None) -> dict:
    """The strip through the canal, in display order (superior up, anterior on the left).

    Parameters
    ----------
    image : ImageSource or SimpleITK.Image
        The series (``read(index, size)`` decodes a box; a SimpleITK image is cropped).
    mask : SimpleITK.Image
        The ROI on the image grid.
    derived : DerivedRoi, optional
        The derivation from a segmentation (its plane, slab and, when known, the canal's x).
    bodies : dict, optional
        :func:`vertebra_bodies`: the strip also spans these bodies, and labels them.

    Returns
    -------
    dict
        ``strip`` (rows, cols) float32 image values; ``z_mm`` LPS z of each row; ``y_mm`` LPS y of
        each column; ``row_mm``, ``col_mm`` pixel size; ``marks_mm`` z of the lines to draw (slab
        bounds and plane, or the ROI's extent); ``level`` what they are; ``x_mm`` the strip's LPS
        x; ``midline`` how it was found; ``top``/``bottom``/``left``/``right`` side letters;
        ``vertebra_names``/``vertebra_y_mm``/``vertebra_z_mm``/``vertebra_at_level`` the labels.
    """

    origin, spacing, direction = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    size = image.GetSize()
    profiles = roi_profiles(sitk.GetArrayViewFromImage(mask))
    x_axis, y_axis, z_axis = index_axes_of(direction)
    x_mm = getattr(derived, "canal_x_mm", None) if derived is not None else None
    how = MIDLINE_FROM_PLANE
    if x_mm is None or not np.isfinite(x_mm):
        x_mm, how = _midline_from_counts(profiles[2 - x_axis], x_axis, origin, spacing, direction)
    centre = _centroid_ijk(profiles)                       # (i, j, k) of the ROI's centroid
    point = _index_to_physical(origin, spacing, direction, centre)[0]
    point[0] = x_mm
    column = round(float(continuous_index(point, origin, spacing, direction)[x_axis]))
    column = int(np.clip(column, 0, size[x_axis] - 1))
    start, extent = [0, 0, 0], list(size)
    start[x_axis], extent[x_axis] = column, 1
    around_bodies = _bodies_box(bodies or {}, x_mm, origin, spacing, direction)
    for axis in (y_axis, z_axis):  # the ROI's extent plus a margin, and the bodies', in z and in y
        first, last = _extent(profiles, axis)
        margin = int(np.ceil(margin_mm / float(spacing[axis])))
        low, high = first - margin, last + margin
        if around_bodies is not None:
            low = min(low, int(np.floor(around_bodies[0][axis])))
            high = max(high, int(np.ceil(around_bodies[1][axis])))
        start[axis] = max(low, 0)
        extent[axis] = min(high, size[axis] - 1) - start[axis] + 1
    read = getattr(image, "read", None)   # an ImageSource decodes the box only; an image is cropped
    region = read(tuple(start), tuple(extent)) if read else sitk.RegionOfInterest(image, extent, start)
    box = sitk.GetArrayFromImage(region)  # (k, j, i) with one i/j/k of length 1
    plane = np.take(box, 0, axis=2 - x_axis)
    row_axis, col_axis = [a for a in (2, 1, 0) if a != x_axis]  # the kept index axes, in array order
    view = slice_view(direction, row_axis, col_axis)
    strip = view.apply(plane.astype(np.float32))
    # the LPS position of every pixel, turned like the pixels: z down the middle column, y along the middle row
    rr, cc = np.indices(plane.shape)
    index = np.tile(np.asarray(start, dtype=float), (rr.size, 1))
    index[:, row_axis] += rr.ravel()
    index[:, col_axis] += cc.ravel()
    position = view.apply(_index_to_physical(origin, spacing, direction, index).reshape(plane.shape + (3,)))
    z_mm, y_mm = position[:, position.shape[1] // 2, 2], position[position.shape[0] // 2, :, 1]
    ends = np.tile(centre, (2, 1))
    ends[:, z_axis] = _extent(profiles, z_axis)
    roi_z = _index_to_physical(origin, spacing, direction, ends)[:, 2]
    marks, level = _plane_marks(derived, (float(roi_z[0]), float(roi_z[1])))
    down_rows_axis, across_axis = (col_axis, row_axis) if view.transpose else (row_axis, col_axis)
    return {"strip": strip, "z_mm": z_mm, "y_mm": y_mm, "row_mm": float(spacing[down_rows_axis]),
            "col_mm": float(spacing[across_axis]), "marks_mm": np.asarray(marks, dtype=float), "level": level,
            "x_mm": float(x_mm), "midline": how, "top": view.top, "bottom": view.bottom, "left": view.left,
            "right": view.right, **_marks_of_bodies(bodies, derived)}
