"""The L3/4 paraspinal + psoas ROI from a whole-body segmentation (issue 17).

A TotalSegmentator output (the ``--ml`` multilabel NIfTI, or its folder of per-structure masks
``vertebrae_L3.nii.gz``, ``autochthon_left.nii.gz``, ...) or any label map with a label table
gives the vertebrae and the muscles; the study's ROI is the chosen muscles within a slab around
the chosen level:

* the level is found in physical space, along the patient's cranio-caudal axis (LPS +z,
  superior), never along an array axis: each structure's extent is the range of the LPS z of
  its voxel centres (index -> physical through origin, spacing and direction), so any
  orientation works;
* for a pair (``L3/L4``, the disc) the plane lies halfway between the caudal end of the cranial
  vertebra and the cranial end of the caudal one; for a single vertebra, at its mid-height;
* the slab is the image's voxels whose centres lie within +-thickness/2 of that plane; the ROI
  is the chosen muscles inside it, resampled nearest-neighbour from the segmentation's grid and
  kept as separate labels (:data:`engine.contract.ROI_MUSCLE_LABELS`).

Only what the level and the ROI need is read: the folder form reads the two vertebra files
whole and the four muscle files only over the slab (``ImageFileReader`` extract region); the
multilabel file is read once as stored (uint8, never cast to float), the slab is cut from it,
and only the slab is resampled onto the image grid.

Problems are :class:`engine.errors.InputError` (stage ``segmentation``), one sentence naming
what is wrong: a vertebra absent (naming those present), the order of the vertebrae, the slab
outside the image, an empty ROI, a segmentation that does not overlap the image.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from engine.contract import ROI_MUSCLE_GROUPS, ROI_MUSCLE_LABELS, SEGMENTATION_MUSCLES, VERTEBRAE, vertebra_structure
from engine.errors import InputError
from engine.io.anatomy import LevelFigures, check_laterality, check_level, column_spans, rib_head_z_mm
from engine.io.masks import format_box, physical_bounds
from engine.io.volumes import _check_access

__all__ = ["DerivedRoi", "DiscPlane", "Level", "VertebralBody", "derive_roi", "derive_roi_from_file",
           "facing_endplates_mm", "in_slab", "level_plane_mm", "parse_level", "place_level", "slab_bounds_mm",
           "superior_extent_mm", "superior_mm", "vertebral_body"]

STAGE = "segmentation"
#: File endings of a per-structure mask in a TotalSegmentator output folder, in preference order.
_STRUCTURE_SUFFIXES = (".nii.gz", ".nii")


# --------------------------------------------------------------------------- geometry


def _geometry(image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(size, spacing, origin, direction 3x3) of a SimpleITK image or anything with its getters."""
    return (np.asarray(image.GetSize(), dtype=np.int64), np.asarray(image.GetSpacing(), dtype=float),
            np.asarray(image.GetOrigin(), dtype=float), np.asarray(image.GetDirection(), dtype=float).reshape(3, 3))


def _superior_coefficients(image) -> tuple[float, np.ndarray]:
    """LPS z of voxel centres as ``z0 + c . (i, j, k)`` (index order x, y, z): (z0, c) in mm."""
    _, spacing, origin, direction = _geometry(image)
    return float(origin[2]), direction[2] * spacing


def superior_mm(image, index_xyz: np.ndarray) -> np.ndarray:
    """LPS z (mm, + superior) of voxel centres given as an (N, 3) array of (i, j, k) indices."""
    z0, c = _superior_coefficients(image)
    return z0 + np.asarray(index_xyz, dtype=float) @ c


def superior_extent_mm(labels: np.ndarray, image, value: int) -> tuple[float, float] | None:
    """(caudal, cranial) LPS z in mm of the voxel centres holding ``value``, or None if none do.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray
        The label map as SimpleITK's ``GetArrayFromImage`` returns it (array axis 0 is index k).
    image : SimpleITK.Image
        Its geometry.
    value : int

    Notes
    -----
    One comparison pass over the map finds the array planes (axis 0) that hold ``value``; the
    voxel positions are then listed only inside that run of planes. A vertebra spans a few dozen
    of a whole-body map's hundreds of planes, so this is several times faster than listing the
    voxels of the whole map (bench ``segmentation``); the result is the same, whatever the
    orientation, because every voxel holding ``value`` lies in those planes.
    """
    planes = np.flatnonzero((labels == value).any(axis=(1, 2)))
    if planes.size == 0:
        return None
    first, last = int(planes[0]), int(planes[-1])
    kk, jj, ii = np.nonzero(labels[first:last + 1] == value)
    kk = kk + first
    z0, c = _superior_coefficients(image)
    z = z0 + c[0] * ii + c[1] * jj + c[2] * kk  # LPS z of each voxel centre (linear in the index)
    return float(z.min()), float(z.max())


# --------------------------------------------------------------------------- the level


@dataclass(frozen=True)
class Level:
    """A vertebral level: a disc between two adjacent vertebrae (``L3/L4``) or one vertebra (``L3``)."""

    cranial: str
    caudal: str | None = None

    @property
    def name(self) -> str:
        return f"{self.cranial}/{self.caudal}" if self.caudal else self.cranial

    @property
    def vertebrae(self) -> tuple[str, ...]:
        return (self.cranial, self.caudal) if self.caudal else (self.cranial,)


def parse_level(text: str) -> Level:
    """``L3/L4`` (or ``L3-L4``, ``L3/4``) -> Level('L3', 'L4'); ``L3`` -> Level('L3').

    Raises ValueError for an unknown vertebra or a pair that is not adjacent cranial/caudal.
    """
    parts = [p.strip().upper() for p in str(text).replace("-", "/").split("/")]
    if len(parts) == 2 and parts[1].isdigit() and parts[0][:1].isalpha():
        parts[1] = parts[0][0] + parts[1]            # L3/4 -> L3/L4
    for part in parts:
        if part not in VERTEBRAE:
            raise ValueError(f"'{part}' is not a vertebra ({VERTEBRAE[0]}..{VERTEBRAE[-1]})")
    if len(parts) == 1:
        return Level(parts[0])
    if len(parts) != 2 or VERTEBRAE.index(parts[1]) != VERTEBRAE.index(parts[0]) + 1:
        raise ValueError(f"'{text}' is not a disc between adjacent vertebrae, cranial first (e.g. L3/L4)")
    return Level(parts[0], parts[1])


def level_plane_mm(extents: dict[str, tuple[float, float] | None], level: Level) -> float:
    """LPS z (mm) of the level's plane from the vertebrae's (caudal, cranial) extents.

    A pair: halfway between the caudal end of the cranial vertebra and the cranial end of the
    caudal one (the disc). One vertebra: its mid-height.

    Raises
    ------
    InputError
        A vertebra of the level is absent (the message names it and the vertebrae present), or
        the cranial vertebra does not lie cranial to the caudal one.
    """
    absent = [v for v in level.vertebrae if extents.get(v) is None]
    if absent:
        present = [v for v in VERTEBRAE if extents.get(v) is not None]
        raise InputError(STAGE, f"the segmentation has no {' and no '.join(absent)} (vertebrae present: "
                                f"{', '.join(present) or 'none'}); the {level.name} level cannot be placed; "
                                "check that the scan covers it, or give the ROI by hand")
    upper = extents[level.cranial]
    assert upper is not None                      # absent vertebrae raised above
    if level.caudal is None:
        return (upper[0] + upper[1]) / 2.0
    lower = extents[level.caudal]
    assert lower is not None
    if (upper[0] + upper[1]) / 2.0 <= (lower[0] + lower[1]) / 2.0:
        raise InputError(STAGE, f"{level.cranial} is not cranial to {level.caudal} in the segmentation "
                                f"({level.cranial} centre at z={(upper[0] + upper[1]) / 2:.1f} mm, {level.caudal} "
                                f"at z={(lower[0] + lower[1]) / 2:.1f} mm, LPS +z superior): the labels are swapped "
                                "or the image orientation in the header is wrong")
    return (upper[0] + lower[1]) / 2.0


# --------------------------------------------------------------------------- the vertebral bodies (issue 23)

#: How the plane was found (``method`` of :data:`engine.contract.DISC_PLANE_COLUMNS`): how the
#: plane was placed, then where the body came from.
#: ``endplates``: the median over the columns the two bodies share of the midpoint between the
#: cranial body's caudal endplate and the caudal body's cranial endplate; ``extent``: the bodies
#: share no column, halfway between the caudal end of one and the cranial end of the other;
#: ``midheight``: a single-vertebra level, the body's mid-height.
#: ``canal``: the body is the label's part anterior of the spinal canal, found as the hole the
#: arch encloses in the label's axial projection; ``anterior``: no enclosed canal (a cut or
#: broken arch), the anterior :data:`ANTERIOR_BODY_FRACTION` of the label's antero-posterior extent.
PLANE_METHODS = ("endplates", "extent", "midheight")
BODY_SOURCES = ("canal", "anterior")
#: Lumbar body depth ~35 mm of a vertebra's ~90 mm (body, canal, arch, spinous process).
ANTERIOR_BODY_FRACTION = 0.4
#: Smallest enclosed hole (mm^2) taken for the canal (a lumbar canal is 150-300 mm^2).
MIN_CANAL_AREA_MM2 = 30.0


@dataclass(frozen=True)
class VertebralBody:
    """The body of one vertebra label, as physical voxel centres.

    Attributes
    ----------
    columns : (N,) int64
        Column of each body voxel: its index in the plane of the two array axes other than the
        one along which LPS z changes most (one column = one line along the cranio-caudal axis).
    z_mm : (N,) float
        LPS z of each body voxel centre.
    canal_xy_mm : (x, y) or None
        Centre of the spinal canal (LPS, mm) if the arch encloses it.
    dropped_voxels : int
        Voxels of the label outside its largest connected component (stray components).
    centre_x_mm : float
        Mean LPS x of the body's voxel centres (the midline where no canal is enclosed).
    """

    columns: np.ndarray
    z_mm: np.ndarray
    canal_xy_mm: tuple[float, float] | None
    dropped_voxels: int
    #: LPS y of each body voxel centre (the QA strip places the vertebra's label at the body's centre).
    y_mm: np.ndarray | None = None
    centre_x_mm: float = float("nan")

    @property
    def extent_mm(self) -> tuple[float, float]:
        return float(self.z_mm.min()), float(self.z_mm.max())


def _crop_to(present: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(the cropped boolean block, its first array index) of the bounding box of ``present``."""
    spans = []
    for axis in range(3):
        hit = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        spans.append((int(hit[0]), int(hit[-1]) + 1))
    block = present[tuple(slice(a, b) for a, b in spans)]
    return block, np.array([a for a, _ in spans], dtype=np.int64)


def _largest_component(block: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 26-connected component of a boolean block, and how many voxels lay outside it."""

    components, count = ndimage.label(block, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return block, 0
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    keep = int(np.argmax(sizes))
    return components == keep, int(sizes.sum() - sizes[keep])


def _physical(image, index_xyz: np.ndarray) -> np.ndarray:
    """LPS positions (N, 3) of voxel centres given as (N, 3) continuous (i, j, k) indices."""
    _, spacing, origin, direction = _geometry(image)
    return origin + (np.asarray(index_xyz, dtype=float) * spacing) @ direction.T


def _canal_hole(projection: np.ndarray, pixel_mm2: float) -> np.ndarray | None:
    """The 2-D pixels of the largest hole the projected vertebra encloses (the canal), or None."""

    holes = ndimage.binary_fill_holes(projection) & ~projection
    found, count = ndimage.label(holes)
    if count == 0:
        return None
    sizes = np.bincount(found.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    if sizes[largest] * pixel_mm2 < MIN_CANAL_AREA_MM2:
        return None
    return found == largest


def vertebral_body(labels: np.ndarray, image, value) -> VertebralBody | None:
    """The body of the vertebra labelled ``value``: largest component, part anterior of the canal.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray
        The label map as SimpleITK's ``GetArrayFromImage`` returns it.
    image : SimpleITK.Image
        Its geometry.
    value : int or bool
        The vertebra's label.

    Returns
    -------
    VertebralBody or None
        None where no voxel holds ``value``.

    Notes
    -----
    A real vertebra label holds its posterior elements (which reach well below the body: the
    spinous process of L1 ~15 mm) and may carry stray voxels of a neighbour. Steps: keep the
    label's largest 26-connected component (strays dropped, counted); project it along the
    array axis closest to the cranio-caudal one; the largest hole the projection encloses is
    the vertebral foramen (the canal); the body is the component's voxels whose LPS y lies
    anterior (smaller y) of the canal's anterior edge. Without an enclosed canal, the anterior
    :data:`ANTERIOR_BODY_FRACTION` of the component's antero-posterior extent.
    """
    planes = np.flatnonzero((labels == value).any(axis=(1, 2)))
    if planes.size == 0:
        return None
    cropped = _crop_to(labels[planes[0]:planes[-1] + 1] == value)
    if cropped is None:
        return None
    block, first = cropped
    first[0] += planes[0]
    component, dropped = _largest_component(block)
    _, spacing, _, _ = _geometry(image)
    _, c = _superior_coefficients(image)
    along = int(np.argmax(np.abs(c)))            # index axis (x, y, z order) closest to cranio-caudal
    np_axis = 2 - along
    kk, jj, ii = np.nonzero(component)
    index = np.stack([ii + first[2], jj + first[1], kk + first[0]], axis=1)
    position = _physical(image, index)
    in_plane = [a for a in range(3) if a != along]
    size, _, _, _ = _geometry(image)
    columns = index[:, in_plane[0]] + size[in_plane[0]] * index[:, in_plane[1]]
    projection = np.asarray(component.any(axis=np_axis))   # 2-D, array axes in (k, j, i) order minus np_axis
    hole = _canal_hole(projection, float(spacing[in_plane[0]] * spacing[in_plane[1]]))
    canal = None
    if hole is not None:
        rows, cols = np.nonzero(hole)                 # array order: the higher index axis first
        hole_index = np.zeros((rows.size, 3))
        hole_index[:, in_plane[1]] = rows + first[2 - in_plane[1]]
        hole_index[:, in_plane[0]] = cols + first[2 - in_plane[0]]
        hole_index[:, along] = float(index[:, along].mean())
        hole_xy = _physical(image, hole_index)[:, :2]
        canal = (float(hole_xy[:, 0].mean()), float(hole_xy[:, 1].mean()))
        body = position[:, 1] < hole_xy[:, 1].min()
    else:
        y = position[:, 1]
        body = y <= y.min() + ANTERIOR_BODY_FRACTION * (y.max() - y.min())
    if not body.any():                                # a degenerate label: keep it whole
        body = np.ones(position.shape[0], dtype=bool)
    return VertebralBody(columns[body], position[body, 2], canal, dropped, position[body, 1],
                         float(position[body, 0].mean()))


def facing_endplates_mm(upper: VertebralBody, lower: VertebralBody) -> float | None:
    """Median over shared columns of the midpoint between the facing endplates, or None.

    In each column (a line along the cranio-caudal axis) both bodies hold, the cranial body's
    lowest voxel centre and the caudal body's highest one bound the disc; the midpoint of each
    such gap is the disc's mid-plane in that column (a tilted disc gives a tilted set of
    midpoints, centred on the disc's centre). The median ignores the rim's osteophytes and any
    column where the bodies touch or overlap.
    """
    up_ids, up_min, _ = column_spans(upper.columns, upper.z_mm)
    low_ids, _, low_max = column_spans(lower.columns, lower.z_mm)
    shared, in_up, in_low = np.intersect1d(up_ids, low_ids, assume_unique=True, return_indices=True)
    if shared.size == 0:
        return None
    gap_low, gap_high = low_max[in_low], up_min[in_up]
    open_gap = gap_high > gap_low
    if not open_gap.any():
        return None
    return float(np.median((gap_high[open_gap] + gap_low[open_gap]) / 2.0))


@dataclass(frozen=True)
class DiscPlane:
    """Where the level's plane lies and how it was found (one row of ``disc_planes.csv``).

    ``canal_xy_mm`` is the canal centre at the level (the mean of the vertebrae's where both
    enclose it), None if neither does; ``dropped_voxels`` counts both vertebrae's strays.
    """

    level: Level
    plane_mm: float
    method: str
    canal_xy_mm: tuple[float, float] | None
    dropped_voxels: int
    extents_mm: dict


def place_level(bodies: dict[str, VertebralBody | None], level: Level) -> DiscPlane:
    """The level's plane from the vertebral bodies (see :data:`PLANE_METHODS`).

    Raises
    ------
    InputError
        A vertebra of the level is absent, or the cranial one does not lie cranial to the other.
    """
    extents = {v: (b.extent_mm if b is not None else None) for v, b in bodies.items()}
    by_extent = level_plane_mm(extents, level)     # raises: absent vertebra, wrong order
    chosen = [bodies[v] for v in level.vertebrae]
    present = [b for b in chosen if b is not None]
    canals = [b.canal_xy_mm for b in present if b.canal_xy_mm is not None]
    source = "canal" if len(canals) == len(present) else "anterior"
    plane, how = by_extent, ("midheight" if level.caudal is None else "extent")
    if level.caudal is not None:
        upper, lower = chosen
        assert upper is not None and lower is not None   # level_plane_mm raised otherwise
        endplates = facing_endplates_mm(upper, lower)
        if endplates is not None:
            plane, how = endplates, "endplates"
    canal = (float(np.mean([c[0] for c in canals])), float(np.mean([c[1] for c in canals]))) if canals else None
    return DiscPlane(level, plane, f"{how}_{source}", canal, sum(b.dropped_voxels for b in present),
                     {v: extents.get(v) for v in level.vertebrae})


# --------------------------------------------------------------------------- the slab on the image grid


#: Floating-point slack (mm) of the slab's bounds: a voxel centre within it of a bound counts as on it.
_BOUND_SLACK_MM = 1e-6


def in_slab(z_mm: np.ndarray, low_mm: float, high_mm: float) -> np.ndarray:
    """The slab's membership rule: ``low <= z < high`` (closed caudally, open cranially).

    Half-open, so that a slab of thickness ``n`` x the slice spacing holds exactly ``n`` slices
    of an axial series wherever the plane falls; a slice centre exactly on a bound belongs to
    the slab at its caudal bound and not at its cranial one (the tie rule). Bounds are compared
    with :data:`_BOUND_SLACK_MM` of slack so that a centre computed 1e-12 mm off a bound ties.
    """
    z = np.asarray(z_mm, dtype=float)
    return (z >= low_mm - _BOUND_SLACK_MM) & (z < high_mm - _BOUND_SLACK_MM)


def slab_bounds_mm(reference, plane_mm: float, half_mm: float) -> tuple[float, float]:
    """``(low, high)`` LPS z of the slab: ``plane +- half``, widened to hold at least one slice.

    When no slice centre lies in ``[plane - half, plane + half)`` (a slab thinner than the slice
    spacing, the plane between slices), the slab grows symmetrically until the nearest slice
    centre enters it: the caudal one of two at the same distance, as the half-open rule implies.
    Slice centres are taken along the array axis closest to the cranio-caudal one, at index 0 of
    the other two (exact for an axial series).
    """
    size, _, _, _ = _geometry(reference)
    z0, c = _superior_coefficients(reference)
    axis = int(np.argmax(np.abs(c)))
    centres = z0 + c[axis] * np.arange(int(size[axis]))
    low, high = plane_mm - half_mm, plane_mm + half_mm
    if in_slab(centres, low, high).any():
        return low, high
    offsets = centres - plane_mm
    nearest = float(np.min(np.abs(offsets)))
    caudal_tie = bool(np.any(np.abs(offsets + nearest) <= _BOUND_SLACK_MM))
    widened = nearest if caudal_tie else nearest + 2 * _BOUND_SLACK_MM
    return plane_mm - widened, plane_mm + widened


def _slab_box(reference, low_mm: float, high_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (i, j, k) index box of the reference's voxels whose centres may lie in the slab.

    The box spans the reference's full extent on every axis but the one along which LPS z
    changes most; along that one it is exact when the image is axial (z depends on that axis
    only) and conservative otherwise.
    """
    size, _, _, _ = _geometry(reference)
    z0, c = _superior_coefficients(reference)
    axis = int(np.argmax(np.abs(c)))
    others = [a for a in range(3) if a != axis]
    # z contributed by the other axes over the image: [low, high]
    contribution = [sorted((0.0, c[a] * (size[a] - 1))) for a in others]
    low = z0 + sum(r[0] for r in contribution)
    high = z0 + sum(r[1] for r in contribution)
    # k (along axis) with c_k * k + [low, high] meeting [slab low, slab high]
    bounds = sorted(((low_mm - high) / c[axis], (high_mm - low) / c[axis]))
    first = max(int(np.ceil(bounds[0] - 1e-6)), 0)
    last = min(int(np.floor(bounds[1] + 1e-6)), int(size[axis]) - 1)
    lo, hi = np.zeros(3, dtype=np.int64), size - 1
    lo[axis], hi[axis] = first, last
    return lo, hi


def _check_slab_inside(reference, plane_mm: float, half_mm: float, level: Level) -> None:
    size, _, _, _ = _geometry(reference)
    corners = np.array([[x, y, z] for x in (0, size[0] - 1) for y in (0, size[1] - 1) for z in (0, size[2] - 1)])
    z = superior_mm(reference, corners)
    _, c = _superior_coefficients(reference)
    tolerance = 0.5 * float(np.max(np.abs(c)))        # half a voxel along the cranio-caudal axis
    if plane_mm - half_mm < z.min() - tolerance or plane_mm + half_mm > z.max() + tolerance:
        raise InputError(STAGE, f"the {level.name} slab (z {plane_mm - half_mm:.1f} to {plane_mm + half_mm:.1f} mm, "
                                f"LPS +z superior) is not inside the image (z {z.min():.1f} to {z.max():.1f} mm): "
                                "the series does not cover the level; use a thinner roi.derive.thickness_mm or "
                                "give the ROI by hand")


def _reference_block(reference, lo: np.ndarray, hi: np.ndarray):
    """A geometry-only SimpleITK image of the reference's index box ``lo..hi`` (inclusive)."""

    block = sitk.Image([int(v) for v in hi - lo + 1], sitk.sitkUInt8)
    block.SetSpacing(reference.GetSpacing())
    block.SetDirection(reference.GetDirection())
    block.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    return block


def _outer_corners(image) -> list:
    """Physical positions of the 8 outer corners (voxel edges, not centres) of an image's grid."""
    size = np.asarray(image.GetSize())
    return [image.TransformContinuousIndexToPhysicalPoint([float(x), float(y), float(z)])
            for x in (-0.5, size[0] - 0.5) for y in (-0.5, size[1] - 0.5) for z in (-0.5, size[2] - 0.5)]


def _segmentation_box(segmentation_geometry, block) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive index box of the segmentation covering ``block`` (one voxel of margin), or None if disjoint."""
    return _segmentation_box_of(segmentation_geometry, _outer_corners(block))


def _segmentation_box_of(segmentation_geometry, corners) -> tuple[np.ndarray, np.ndarray] | None:
    indices = np.array([segmentation_geometry.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    seg_size = np.asarray(segmentation_geometry.GetSize())
    lo = np.maximum(np.floor(indices.min(axis=0)).astype(np.int64) - 1, 0)
    hi = np.minimum(np.ceil(indices.max(axis=0)).astype(np.int64) + 1, seg_size - 1)
    if np.any(lo > hi):
        return None
    return lo, hi


def _muscle_lut(label_table: dict[str, int], muscles) -> np.ndarray:
    """Segmentation value -> ROI muscle label (0 elsewhere), for the chosen muscle groups."""
    wanted = {m for group in muscles for m in ROI_MUSCLE_GROUPS[group]}
    pairs = [(int(label_table[s]), ROI_MUSCLE_LABELS[m]) for s, m in SEGMENTATION_MUSCLES.items()
             if m in wanted and s in label_table]
    lut = np.zeros(max([v for v, _ in pairs] + [0]) + 1, dtype=np.uint8)
    for value, roi_label in pairs:
        lut[value] = roi_label
    return lut


def _relabel(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    out = np.zeros(values.shape, dtype=np.uint8)
    inside = values < lut.size
    out[inside] = lut[values[inside]]
    return out


@dataclass
class DerivedRoi:
    """A derived ROI on the image grid and how it was placed.

    Attributes
    ----------
    roi : SimpleITK.Image
        uint8 on the reference grid: :data:`engine.contract.ROI_MUSCLE_LABELS` inside the slab, 0 elsewhere.
    level : str
    plane_mm : float
        LPS z of the level's plane.
    thickness_mm : float
    extents_mm : dict
        Vertebra -> (caudal, cranial) LPS z of the vertebral body (strays and posterior elements left out).
    slab_mm : (low, high)
        The slab's LPS z bounds: its voxel centres ``z`` have ``low <= z < high`` (:func:`in_slab`).
    method : str
        How the plane was found (:data:`PLANE_METHODS` ``_`` :data:`BODY_SOURCES`).
    canal_xy_mm : (x, y) or None
        LPS centre of the spinal canal at the level, None if no vertebra encloses it.
    dropped_voxels : int
        Stray voxels of the level's vertebra labels ignored (outside each label's largest component).
    checks : dict
        The anatomy checks' figures (:func:`anatomy_row`): body heights, disc gap, order, anchors,
        laterality offsets, and the contradiction accepted by ``level_checks: warn`` (empty if none).
    """

    roi: object
    level: str
    plane_mm: float
    thickness_mm: float
    extents_mm: dict
    slab_mm: tuple[float, float] = (float("nan"), float("nan"))
    method: str = ""
    canal_xy_mm: tuple[float, float] | None = None
    dropped_voxels: int = 0
    checks: dict = field(default_factory=dict)

    @property
    def slab_min_z_mm(self) -> float:
        return float(self.slab_mm[0])

    @property
    def slab_max_z_mm(self) -> float:
        return float(self.slab_mm[1])

    @property
    def canal_x_mm(self) -> float | None:
        return None if self.canal_xy_mm is None else float(self.canal_xy_mm[0])

    @property
    def canal_y_mm(self) -> float | None:
        return None if self.canal_xy_mm is None else float(self.canal_xy_mm[1])

    @property
    def vertebrae(self) -> tuple[str, str]:
        """(upper, lower) vertebra of the level; lower is empty for a single-vertebra level."""
        names = list(self.extents_mm)
        return names[0], (names[1] if len(names) > 1 else "")


def _slab_roi(muscles_block, reference, lo, hi, slab_mm: tuple[float, float]):
    """Place a (Z, Y, X) block of ROI labels over the reference's box, zero outside the exact slab."""

    kk, jj, ii = np.meshgrid(*(np.arange(lo[a], hi[a] + 1) for a in (2, 1, 0)), indexing="ij")
    z0, c = _superior_coefficients(reference)
    muscles_block[~in_slab(z0 + c[0] * ii + c[1] * jj + c[2] * kk, *slab_mm)] = 0
    size = reference.GetSize()
    roi = np.zeros((size[2], size[1], size[0]), dtype=np.uint8)
    roi[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = muscles_block
    image = sitk.GetImageFromArray(roi)
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    return image


def _check_overlap(segmentation_geometry, reference) -> None:
    # the reference's corners directly: a geometry-only image of the whole grid would allocate its voxels
    if _segmentation_box_of(segmentation_geometry, _outer_corners(reference)) is None:
        raise InputError(STAGE, f"the segmentation does not overlap the image: it spans "
                                f"{format_box(*physical_bounds(segmentation_geometry))} mm, the image "
                                f"{format_box(*physical_bounds(reference))} mm (LPS); "
                                "check that it belongs to this image")


# --------------------------------------------------------------------------- anatomy checks (issue 30)

#: ``roi.derive.level_checks``: a contradiction of the level checks stops the patient, or is
#: measured with a QA warning.
LEVEL_CHECK_MODES = ("error", "warn")
#: Structures that mark the sacrum (TotalSegmentator v2 names both), and the 12th ribs.
SACRUM_STRUCTURES = ("sacrum", "vertebrae_S1")
RIB12_STRUCTURES = ("rib_left_12", "rib_right_12")


@dataclass(frozen=True)
class Anchors:
    """LPS z (mm) of the sacrum's cranial end and of the 12th rib's head, None where not in view."""

    sacrum_top_mm: float | None = None
    rib_head_mm: float | None = None


def check_window(level: Level) -> tuple[str, ...]:
    """The vertebrae whose bodies the level checks read: two either side of the level and, for a
    lumbar level, T11 to L5 (so the sacrum and the 12th rib can anchor the count). S1 is the sacrum."""
    first = VERTEBRAE.index(level.cranial)
    last = VERTEBRAE.index(level.caudal or level.cranial)
    names = set(VERTEBRAE[max(0, first - 2):last + 3])
    if any(v.startswith("L") for v in level.vertebrae):
        names |= set(VERTEBRAE[VERTEBRAE.index("T11"):VERTEBRAE.index("L5") + 1])
    return tuple(v for v in VERTEBRAE if v in names and v != "S1")


def _cut_by_view(body, geometry) -> bool:
    """Whether a body reaches the segmentation's cranial or caudal end (its height is then unknown)."""
    size, _, _, _ = _geometry(geometry)
    corners = np.array([[x, y, z] for x in (0, size[0] - 1) for y in (0, size[1] - 1) for z in (0, size[2] - 1)])
    z = superior_mm(geometry, corners)
    _, c = _superior_coefficients(geometry)
    slack = float(np.max(np.abs(c))) + _BOUND_SLACK_MM
    low, high = body.extent_mm
    return bool(low <= z.min() + slack or high >= z.max() - slack)


#: A neighbour's label whose body holds fewer voxels than this share of the level's bodies (median),
#: and that the field of view does not cut, is only stray voxels (its vertebra is out of view).
STRAY_BODY_FRACTION = 0.2


def _without_strays(bodies: dict, level: Level, cut: set) -> dict:
    """The neighbours' bodies less those that are only strays inside another vertebra."""
    sizes = [bodies[v].z_mm.size for v in level.vertebrae if bodies.get(v) is not None]
    if not sizes:
        return bodies
    smallest = STRAY_BODY_FRACTION * float(np.median(sizes))
    return {v: (None if b is not None and v not in level.vertebrae and v not in cut and b.z_mm.size < smallest
                else b) for v, b in bodies.items()}


def judge_level(bodies: dict, level: Level, geometry, anchors: Anchors, mode: str) -> LevelFigures:
    """Run the level checks (:func:`engine.io.anatomy.check_level`); raise or keep the contradictions.

    ``mode`` ``error``: the first contradictions become the patient's InputError; ``warn``: they
    stay in the figures (``problems``) for the QA sheet.
    """
    _, c = _superior_coefficients(geometry)
    near = {v: b for v, b in bodies.items() if v in check_window(level) or v in level.vertebrae}
    cut = {v for v, b in near.items() if b is not None and _cut_by_view(b, geometry)}
    near = _without_strays(near, level, cut)
    rib_judged = all(v in check_window(level) for v in ("T11", "T12", "L1"))
    figures = check_level(near, level.vertebrae, slice_mm=float(np.max(np.abs(c))), cut=cut,
                          sacrum_top_mm=anchors.sacrum_top_mm,
                          rib_head_mm=anchors.rib_head_mm if rib_judged else None)
    if figures.problems and mode == "error":
        raise InputError(STAGE, f"the vertebra labels contradict anatomy at {level.name}: "
                                f"{'; '.join(figures.problems)}; check the segmentation (or accept it with "
                                "roi.derive.level_checks: warn)")
    return figures


def anatomy_row(figures: LevelFigures, left_offset_mm, right_offset_mm) -> dict:
    """The checks' columns of ``disc_planes.csv`` (:data:`engine.contract.ANATOMY_COLUMNS`)."""
    heights = figures.heights_mm
    return {"body_heights_mm": " ".join(f"{v}:{h:g}" for v, h in heights.items()),
            "disc_gap_mm": figures.disc_gap_mm, "vertebrae_order": figures.order, "anchors": figures.anchors,
            "left_offset_mm": left_offset_mm, "right_offset_mm": right_offset_mm,
            "anatomy_warning": "; ".join(figures.problems)}


def _midline(placed: DiscPlane, level_bodies) -> tuple[float, str]:
    """LPS x of the midline at the level: the canal's centre, else the vertebral bodies' centre."""
    if placed.canal_xy_mm is not None:
        return float(placed.canal_xy_mm[0]), "the canal"
    xs = [b.centre_x_mm for b in level_bodies if b is not None]
    return float(np.mean(xs)), "the vertebral body"


def muscle_centres_x(block: np.ndarray, reference, lo: np.ndarray) -> dict[str, dict[str, float]]:
    """``{"left": {muscle: mean LPS x}, "right": {...}}`` of the ROI muscles in a (Z, Y, X) label block.

    ``lo`` is the block's first (i, j, k) index on the reference grid.
    """
    sides: dict[str, dict[str, float]] = {"left": {}, "right": {}}
    for muscle, value in ROI_MUSCLE_LABELS.items():
        kk, jj, ii = np.nonzero(block == value)
        if ii.size == 0:
            continue
        index = np.stack([ii + lo[0], jj + lo[1], kk + lo[2]], axis=1)
        sides[muscle.split("_", 1)[0]][muscle] = float(_physical(reference, index)[:, 0].mean())
    return sides


def derive_roi(read_block, segmentation_geometry, reference, bodies: dict, label_table: dict[str, int], *,
               level: Level, thickness_mm: float, muscles=("paraspinal", "psoas"), anchors: Anchors | None = None,
               level_checks: str = "error") -> DerivedRoi:
    """The chosen muscles within the level's slab, on the reference grid.

    Parameters
    ----------
    read_block : callable(lo, hi) -> (SimpleITK.Image, {roi value: bool mask} or labels)
        Returns the segmentation's ROI-muscle labels (uint8, :data:`ROI_MUSCLE_LABELS`) over its
        inclusive index box ``lo..hi`` with that box's geometry; lets a caller read only the slab.
    segmentation_geometry : SimpleITK.Image
        The segmentation's grid (voxels unused).
    reference : SimpleITK.Image or engine.io.ImageSource
        The image the ROI is for.
    bodies : dict
        Vertebra name -> :class:`VertebralBody`, or None where absent.
    label_table : dict
        Structure name -> label value (used for nothing but the muscle choice check here).
    level, thickness_mm, muscles, level_checks
        As ``roi.derive`` in the config.
    anchors : Anchors, optional
        The sacrum's and the 12th rib's positions, where the segmentation holds them.

    Raises
    ------
    InputError
        Besides the placement's problems: left and right swapped (always), and a contradiction of
        the level checks unless ``level_checks`` is ``warn`` (:mod:`engine.io.anatomy`).
    """
    _check_overlap(segmentation_geometry, reference)
    placed = place_level(bodies, level)
    figures = judge_level(bodies, level, segmentation_geometry, anchors or Anchors(), level_checks)
    plane = placed.plane_mm
    half = thickness_mm / 2.0
    _check_slab_inside(reference, plane, half, level)
    slab = slab_bounds_mm(reference, plane, half)
    lo, hi = _slab_box(reference, *slab)
    if np.any(lo > hi):
        raise InputError(STAGE, f"no image voxel centre lies within {half:g} mm of the {level.name} plane "
                                f"(z={plane:.1f} mm); increase roi.derive.thickness_mm")
    block = _reference_block(reference, lo, hi)
    seg_box = _segmentation_box(segmentation_geometry, block)
    if seg_box is None:
        raise InputError(STAGE, f"the segmentation does not reach the {level.name} slab of the image "
                                f"(z={plane:.1f} +- {half:g} mm)")

    muscles_native = read_block(*seg_box)
    on_block = sitk.Resample(muscles_native, block, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    muscles_block = sitk.GetArrayFromImage(on_block)
    roi = _slab_roi(muscles_block, reference, lo, hi, slab)      # zeroes the block outside the slab
    if not sitk.GetArrayViewFromImage(roi).any():
        chosen = " and ".join(muscles)
        raise InputError(STAGE, f"the derived ROI is empty: no {chosen} voxel of the segmentation lies within "
                                f"{half:g} mm of the {level.name} plane (z={plane:.1f} mm); check the label table "
                                "(roi.derive.labels) and that the muscles were segmented")
    midline_x, midline = _midline(placed, [bodies[v] for v in level.vertebrae])
    sides = check_laterality(muscle_centres_x(muscles_block, reference, lo), midline_x, midline)
    if sides.problem:
        raise InputError(STAGE, sides.problem)
    checks = anatomy_row(figures, sides.left_offset_mm, sides.right_offset_mm)
    return DerivedRoi(roi, level.name, plane, thickness_mm, placed.extents_mm, slab, placed.method,
                      placed.canal_xy_mm, placed.dropped_voxels, checks)


# --------------------------------------------------------------------------- reading a segmentation


def _reader(path: pathlib.Path, *, information: bool = True):
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if information:
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(STAGE, f"segmentation file could not be read (not NIfTI/NRRD, or truncated): "
                                    f"{path}") from None
        if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
            raise InputError(STAGE, f"segmentation is not a 3-D label map ({reader.GetDimension()}-D, "
                                    f"{reader.GetNumberOfComponents()} component(s)): {path}")
    return reader


def _read_region(path, lo, hi):
    """A label file's inclusive index box as uint8, read through ITK's region extraction."""

    reader = _reader(path)
    reader.SetExtractIndex([int(v) for v in lo])
    reader.SetExtractSize([int(v) for v in np.asarray(hi) - np.asarray(lo) + 1])
    image = reader.Execute()
    if image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16):
        image = sitk.Cast(sitk.Round(image) if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) else image,
                          sitk.sitkUInt16)
    return image


def _structure_file(folder: pathlib.Path, structure: str) -> pathlib.Path | None:
    for suffix in _STRUCTURE_SUFFIXES:
        candidate = folder / f"{structure}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _vertebrae_in_folder(folder: pathlib.Path) -> dict:
    """Every vertebra with a non-empty mask file in a TotalSegmentator folder (the error path only)."""

    present = {}
    for vertebra in VERTEBRAE:
        file = _structure_file(folder, vertebra_structure(vertebra))
        if file is not None and sitk.GetArrayViewFromImage(sitk.ReadImage(str(file))).any():
            present[vertebra] = (0.0, 0.0)
    return present


def _same_grid(a, b) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def _label_positions(labels: np.ndarray, image, value) -> np.ndarray:
    """(N, 3) LPS positions of the voxel centres holding ``value`` (only the planes that hold it are scanned)."""
    planes = np.flatnonzero((labels == value).any(axis=(1, 2)))
    if planes.size == 0:
        return np.zeros((0, 3))
    kk, jj, ii = np.nonzero(labels[planes[0]:planes[-1] + 1] == value)
    return _physical(image, np.stack([ii, jj, kk + planes[0]], axis=1))


def _anchors(positions_of, bodies: dict) -> Anchors:
    """The sacrum's top and the 12th rib's head from ``positions_of(structure) -> (N, 3) LPS or None``."""
    tops = [float(p[:, 2].max()) for p in map(positions_of, SACRUM_STRUCTURES) if p is not None and p.shape[0]]
    present = [b for b in bodies.values() if b is not None]
    canals = [b.canal_xy_mm[0] for b in present if b.canal_xy_mm is not None]
    midline = float(np.mean(canals or [b.centre_x_mm for b in present] or [0.0]))
    found = [rib_head_z_mm(p, midline) for p in map(positions_of, RIB12_STRUCTURES) if p is not None]
    heads = [h for h in found if h is not None]
    return Anchors(max(tops) if tops else None, float(np.mean(heads)) if heads and present else None)


def _needed_vertebrae(level: Level) -> tuple[str, ...]:
    return tuple(v for v in VERTEBRAE if v in level.vertebrae or v in check_window(level))


def _folder_mask(folder, structure: str, geometry):
    """A per-structure mask file on ``geometry``'s grid (the first read sets it), or (None, geometry)."""
    file = _structure_file(folder, structure)
    if file is None:
        return None, geometry
    mask = _reader(file).Execute()
    if geometry is None:
        geometry = mask
    elif not _same_grid(mask, geometry):     # columns are compared on one grid
        mask = sitk.Resample(mask, geometry, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return mask, geometry


def _derive_from_folder(folder, reference, level, thickness_mm, muscles, level_checks):
    bodies: dict[str, VertebralBody | None] = {}
    geometry = None
    for vertebra in _needed_vertebrae(level):
        mask, geometry = _folder_mask(folder, vertebra_structure(vertebra), geometry)
        bodies[vertebra] = None if mask is None else vertebral_body(sitk.GetArrayViewFromImage(mask) != 0, mask, True)
    if any(bodies[v] is None for v in level.vertebrae):
        found = _vertebrae_in_folder(folder)
        level_plane_mm({**found, **{k: b.extent_mm for k, b in bodies.items() if b is not None}}, level)

    def positions_of(structure):
        mask, _ = _folder_mask(folder, structure, geometry)
        return None if mask is None else _label_positions(sitk.GetArrayViewFromImage(mask) != 0, mask, True)

    anchors = _anchors(positions_of, bodies)
    files = {}
    for structure, muscle in SEGMENTATION_MUSCLES.items():
        if any(muscle in ROI_MUSCLE_GROUPS[g] for g in muscles):
            file = _structure_file(folder, structure)
            if file is not None:
                files[ROI_MUSCLE_LABELS[muscle]] = file
    if not files:
        raise InputError(STAGE, f"the segmentation folder has none of the muscle files "
                                f"({', '.join(s + '.nii.gz' for s in SEGMENTATION_MUSCLES)}): {folder}")

    def read_block(lo, hi):
        labels = None
        for value, file in sorted(files.items()):
            part = _read_region(file, lo, hi)
            if labels is None:
                labels = sitk.Image(part.GetSize(), sitk.sitkUInt8)
                labels.CopyInformation(part)
                array = np.zeros(sitk.GetArrayViewFromImage(part).shape, dtype=np.uint8)
            array[(sitk.GetArrayViewFromImage(part) != 0) & (array == 0)] = value
        result = sitk.GetImageFromArray(array)
        result.CopyInformation(labels)
        return result

    return derive_roi(read_block, geometry, reference, bodies, {}, level=level, thickness_mm=thickness_mm,
                      muscles=muscles, anchors=anchors, level_checks=level_checks)


def _derive_from_label_map(path, reference, label_table, level, thickness_mm, muscles, level_checks):
    reader = _reader(path)
    image = reader.Execute()          # read once, as stored (uint8 for TotalSegmentator): never cast to float
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(sitk.Round(image), sitk.sitkUInt16)
    labels = sitk.GetArrayViewFromImage(image)
    bodies: dict[str, VertebralBody | None] = {}
    for vertebra in _needed_vertebrae(level):
        value = label_table.get(vertebra_structure(vertebra))
        bodies[vertebra] = None if value is None else vertebral_body(labels, image, int(value))
    if any(bodies[v] is None for v in level.vertebrae):
        values = {int(v) for v in np.unique(labels)}
        found = {v: (0.0, 0.0) for v in VERTEBRAE if label_table.get(vertebra_structure(v)) in values}
        level_plane_mm({**found, **{k: b.extent_mm for k, b in bodies.items() if b is not None}}, level)
    anchors = _anchors(lambda s: None if s not in label_table else _label_positions(labels, image, int(label_table[s])),
                       bodies)
    lut = _muscle_lut(label_table, muscles)
    if not lut.any():
        raise InputError(STAGE, "the label table names none of the chosen muscles "
                                f"({', '.join(SEGMENTATION_MUSCLES)}); set roi.derive.labels")

    def read_block(lo, hi):
        block = labels[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
        result = sitk.GetImageFromArray(_relabel(block, lut))
        result.SetSpacing(image.GetSpacing())
        result.SetDirection(image.GetDirection())
        result.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in lo]))
        return result

    return derive_roi(read_block, image, reference, bodies, label_table, level=level, thickness_mm=thickness_mm,
                      muscles=muscles, anchors=anchors, level_checks=level_checks)


def derive_roi_from_file(path, reference, *, label_table: dict[str, int], level: str = "L3/L4",
                         thickness_mm: float = 20.0, muscles=("paraspinal", "psoas"),
                         level_checks: str = "error") -> DerivedRoi:
    """Derive the ROI from a segmentation file (label map) or a TotalSegmentator folder.

    Parameters
    ----------
    path : path-like
        A label map (NIfTI/NRRD; TotalSegmentator ``--ml``) read with ``label_table``, or a folder
        of per-structure masks named ``{structure}.nii.gz`` (TotalSegmentator's default output).
    reference : SimpleITK.Image or engine.io.ImageSource
        The image the ROI is for (its geometry only).
    label_table : dict
        Structure name (``vertebrae_L3``, ``autochthon_left``, ...) -> label value.
    level : str
        ``L3/L4`` (a disc between adjacent vertebrae) or ``L3`` (one vertebra).
    thickness_mm : float
        Slab thickness: the voxels whose centres lie in ``[plane - thickness/2, plane + thickness/2)``,
        at least one slice (:func:`slab_bounds_mm`).
    muscles : sequence of {"paraspinal", "psoas"}
    level_checks : {"error", "warn"}
        What a contradiction of the level checks does (:func:`judge_level`); left and right
        swapped always stops the patient.
    """

    target = _check_access(path, STAGE, "segmentation")
    chosen = parse_level(level)
    if target.is_dir():
        return _derive_from_folder(target, reference, chosen, thickness_mm, tuple(muscles), level_checks)
    return _derive_from_label_map(target, reference, label_table, chosen, thickness_mm, tuple(muscles), level_checks)
