"""Does a segmentation agree with anatomy? Laterality and level checks on a derived ROI.

A segmentation model (or a hand-made mask) can be wrong in ways that still give a plausible
number: a mirrored mask or header puts the left-named muscles on the patient's right, and a
vertebra labelled one level off moves the ROI to the wrong disc. Both are checked here, in
physical space (LPS: +x patient left, +z superior), from what the derivation already holds:

* **laterality**: each left-named ROI muscle's centre lies at the patient's left (+x) of the
  midline (the canal's centre at the level, else the vertebral bodies' centre), each right-named
  one at its right. A contradiction always stops the patient: nothing can be measured from a
  mirrored mask.
* **level**: the vertebral bodies near the level lie in cranio-caudal order, no label is
  missing between two present ones, each body's height and each facing-endplate gap is
  plausible for an adult, and two anatomical anchors agree with the labels where they are in
  view: the sacrum directly below L5, and the 12th rib's head at T12. A contradiction stops
  the patient unless ``roi.derive.level_checks: warn`` accepts it with a QA warning.

The thresholds are wide on purpose: they catch labels that cannot be right (two bodies under one
label, an unlabelled vertebra between two labels, a shifted count against an anchor), not
anatomy that is merely unusual. What they cannot see is in ``docs/segmentation.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from engine.contract import VERTEBRAE

#: Plausible adult vertebral body height (mm): the median over the body's columns of its
#: cranio-caudal extent plus one slice. Adult lumbar bodies are 24-32 mm, lower thoracic 20-26 mm;
#: below 12 mm is a fragment, above 50 mm two bodies under one label.
BODY_HEIGHT_MM = (12.0, 50.0)
#: Plausible gap between facing endplates (mm): median over shared columns, less one slice. Adult
#: lumbar discs are 7-14 mm; over 25 mm an unlabelled vertebra or a missing body lies between.
DISC_GAP_MAX_MM = 25.0
#: Plausible distance between the centres of adjacent vertebral bodies (mm): 25-45 mm in adults;
#: over 60 mm a vertebra between them carries no label.
CENTRE_STEP_MAX_MM = 60.0
#: Plausible distance from L5's centre down to the sacrum's cranial end (mm): half a body and a
#: disc, 20-30 mm in adults; over 45 mm a vertebra between them carries no label.
SACRUM_GAP_MAX_MM = 45.0
#: A label whose voxels outside its largest component outnumber this share of its body's voxels
#: holds a second vertebra (strays of a neighbour are a few hundred voxels).
SECOND_BODY_FRACTION = 0.5
#: A gap along the cranio-caudal axis inside a body's columns (median over columns, less one slice)
#: wider than this (mm) is a disc: two bodies under one label. A body's own columns have none.
INNER_GAP_MAX_MM = 4.0
#: The 12th rib's head: its voxels within this share of the rib's voxels nearest the midline.
RIB_HEAD_FRACTION = 0.1

LATERALITY_PROBLEM = "left and right swapped: mirrored mask or header"


@dataclass
class LevelFigures:
    """The level checks' figures (``disc_planes.csv``) and the contradictions found.

    Attributes
    ----------
    order : str
        The vertebrae near the level as found, cranial to caudal (``T12 L1 L2``).
    heights_mm : dict
        Vertebra -> body height (mm); absent where the field of view cuts the body.
    disc_gap_mm : float or None
        Gap between the level's facing endplates (mm), None for a single-vertebra level.
    anchors : str
        The anchors seen and what they found (``sacrum below L5``; ``rib 12 at T12``).
    problems : list of str
        One sentence per contradiction.
    """

    order: str = ""
    heights_mm: dict = field(default_factory=dict)
    disc_gap_mm: float | None = None
    anchors: str = ""
    problems: list = field(default_factory=list)


def column_spans(columns: np.ndarray, z_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column ids, min z, max z) per column of a body (a column is one cranio-caudal line)."""
    order = np.lexsort((z_mm, columns))
    sorted_columns, sorted_z = columns[order], z_mm[order]
    ids, first = np.unique(sorted_columns, return_index=True)
    last = np.r_[first[1:], sorted_columns.size] - 1
    return ids, sorted_z[first], sorted_z[last]


def body_height_mm(body, slice_mm: float) -> float:
    """Median over the body's columns of its cranio-caudal extent, plus one slice (mm)."""
    _, low, high = column_spans(body.columns, body.z_mm)
    return float(np.median(high - low)) + slice_mm


def inner_gap_mm(body, slice_mm: float) -> float:
    """Median over the body's columns of the widest gap between its voxels along the column (mm), less
    one slice: 0 for one body, the disc's height where a label holds two."""
    order = np.lexsort((body.z_mm, body.columns))
    columns, z = body.columns[order], body.z_mm[order]
    same = columns[1:] == columns[:-1]
    steps = np.where(same, np.diff(z), 0.0)
    starts = np.flatnonzero(np.r_[True, ~same])
    widest = np.maximum.reduceat(np.r_[steps, 0.0], starts) if steps.size else np.zeros(1)
    return max(float(np.median(widest)) - slice_mm, 0.0)


def disc_gap_mm(upper, lower, slice_mm: float) -> float | None:
    """Median over the columns both bodies hold of the gap between their facing endplates (mm).

    Voxel centres bound the gap, so one slice is taken off; None if the bodies share no column.
    """
    up_ids, up_min, _ = column_spans(upper.columns, upper.z_mm)
    low_ids, _, low_max = column_spans(lower.columns, lower.z_mm)
    _, in_up, in_low = np.intersect1d(up_ids, low_ids, assume_unique=True, return_indices=True)
    if in_up.size == 0:
        return None
    return float(np.median(up_min[in_up] - low_max[in_low])) - slice_mm


def _centre(body) -> float:
    return float(np.median(body.z_mm))


def _order_problems(bodies: dict) -> tuple[str, list[str]]:
    """The vertebrae as found cranial to caudal, and what contradicts the expected order."""
    present = [v for v in VERTEBRAE if bodies.get(v) is not None]
    found = sorted(present, key=lambda v: -_centre(bodies[v]))
    problems = []
    if found != present:
        problems.append(f"vertebra labels out of cranio-caudal order: {' '.join(found)} from head to feet, "
                        f"expected {' '.join(present)}")
    if present:
        run = VERTEBRAE[VERTEBRAE.index(present[0]):VERTEBRAE.index(present[-1]) + 1]
        for missing in [v for v in run if v not in present]:
            above, below = VERTEBRAE[VERTEBRAE.index(missing) - 1], VERTEBRAE[VERTEBRAE.index(missing) + 1]
            problems.append(f"{missing} missing between {above} and {below} (a level shifted by one, or a vertebra "
                            "left unlabelled)")
    for upper, lower in zip(present, present[1:], strict=False):
        step = _centre(bodies[upper]) - _centre(bodies[lower])
        if VERTEBRAE.index(lower) == VERTEBRAE.index(upper) + 1 and step > CENTRE_STEP_MAX_MM:
            problems.append(f"{upper} and {lower} lie {step:.0f} mm apart (centres; adults: under "
                            f"{CENTRE_STEP_MAX_MM:g} mm): a vertebra between them carries no label")
    return " ".join(found), problems


def _height_problems(bodies: dict, cut: set, slice_mm: float, level_vertebrae) -> tuple[dict, list[str]]:
    heights, problems = {}, []
    for vertebra in level_vertebrae:
        body = bodies.get(vertebra)
        if body is None:
            continue
        height = body_height_mm(body, slice_mm)     # where the view cuts the body: a lower bound
        if vertebra not in cut:
            heights[vertebra] = round(height, 1)
        low, high = BODY_HEIGHT_MM
        if body.dropped_voxels > SECOND_BODY_FRACTION * body.z_mm.size:
            problems.append(f"the {vertebra} label holds a second piece as large as half its body "
                            f"({body.dropped_voxels} voxels apart): two vertebrae under one label")
        elif (inner := inner_gap_mm(body, slice_mm)) > INNER_GAP_MAX_MM:
            problems.append(f"the {vertebra} label holds two bodies {inner:.0f} mm apart (a disc between them): "
                            "two vertebrae under one label")
            continue
        if height > high:
            problems.append(f"the {vertebra} body is {height:.0f} mm tall (adults: {low:g}-{high:g} mm): two "
                            "vertebrae under one label")
        elif height < low and vertebra not in cut:
            problems.append(f"the {vertebra} body is {height:.0f} mm tall (adults: {low:g}-{high:g} mm): a fragment "
                            "labelled as a vertebra")
    return heights, problems


def _sacrum_problem(bodies: dict, sacrum_top_mm: float | None) -> tuple[str, list[str]]:
    """The sacrum in view: the lowest lumbar label must be L5, directly above it."""
    if sacrum_top_mm is None:
        return "", []
    lumbar = [v for v in VERTEBRAE if v.startswith("L") and bodies.get(v) is not None]
    if not lumbar:
        return "sacrum in view, no lumbar vertebra near it", []
    lowest = lumbar[-1]
    gap = _centre(bodies[lowest]) - sacrum_top_mm
    if lowest != "L5":
        return f"sacrum below {lowest}", [f"the vertebra directly above the sacrum is labelled {lowest}, not L5: a "
                                          "level shifted by one (a sacralised L5 or a lumbarised S1 counted as a "
                                          "vertebra, or a label missing)"]
    if gap > SACRUM_GAP_MAX_MM:
        return "sacrum far below L5", [f"L5 lies {gap:.0f} mm above the sacrum: a vertebra between them carries no "
                                       "label"]
    return "sacrum below L5", []


def _rib_problem(bodies: dict, rib_head_mm: float | None) -> tuple[str, list[str]]:
    """The 12th rib's head in view: it meets the body labelled T12."""
    if rib_head_mm is None:
        return "", []
    present = [v for v in VERTEBRAE if bodies.get(v) is not None]
    if not present:
        return "", []
    at = min(present, key=lambda v: _distance(bodies[v], rib_head_mm))
    if at == "T12":
        return "rib 12 at T12", []
    return f"rib 12 at {at}", [f"the 12th rib meets the vertebra labelled {at}, not T12 (rib head at "
                               f"z={rib_head_mm:.0f} mm): a level shifted by one, unless this patient has 11 or "
                               "13 rib pairs"]


def _distance(body, z_mm: float) -> float:
    low, high = body.extent_mm
    return 0.0 if low <= z_mm <= high else min(abs(z_mm - low), abs(z_mm - high))


def check_level(bodies: dict, level_vertebrae, *, slice_mm: float, cut: set, sacrum_top_mm: float | None = None,
                rib_head_mm: float | None = None) -> LevelFigures:
    """Cranio-caudal order, contiguity, body heights, the disc gap and the two anchors.

    Parameters
    ----------
    bodies : dict
        Vertebra name -> :class:`engine.io.segmentation.VertebralBody` (None where absent) for the
        vertebrae near the level.
    level_vertebrae : sequence of str
        The level's vertebrae (cranial first).
    slice_mm : float
        Voxel spacing along the cranio-caudal axis.
    cut : set of str
        Vertebrae whose body touches the field of view's cranial or caudal end (height unknown).
    sacrum_top_mm, rib_head_mm : float, optional
        LPS z of the sacrum's cranial end and of the 12th rib's head, where in view.
    """
    figures = LevelFigures()
    figures.order, problems = _order_problems(bodies)
    figures.heights_mm, more = _height_problems(bodies, cut, slice_mm, level_vertebrae)
    problems += more
    if len(level_vertebrae) == 2 and all(bodies.get(v) is not None for v in level_vertebrae):
        gap = disc_gap_mm(bodies[level_vertebrae[0]], bodies[level_vertebrae[1]], slice_mm)
        figures.disc_gap_mm = None if gap is None else round(gap, 1)
        if gap is not None and gap > DISC_GAP_MAX_MM:
            problems.append(f"the {'/'.join(level_vertebrae)} disc is {gap:.0f} mm high (adults: under "
                            f"{DISC_GAP_MAX_MM:g} mm): a vertebra between them carries no label")
    anchors = []
    for seen, found in (_sacrum_problem(bodies, sacrum_top_mm), _rib_problem(bodies, rib_head_mm)):
        if seen:
            anchors.append(seen)
        problems += found
    figures.anchors = "; ".join(anchors)
    figures.problems = problems
    return figures


def rib_head_z_mm(positions: np.ndarray, midline_x_mm: float) -> float | None:
    """LPS z (mm) of a rib's head: the median z of its :data:`RIB_HEAD_FRACTION` voxels nearest the midline.

    ``positions`` is (N, 3) LPS of the rib's voxel centres; None if there are none.
    """
    if positions.shape[0] == 0:
        return None
    distance = np.abs(positions[:, 0] - midline_x_mm)
    keep = max(1, int(np.ceil(RIB_HEAD_FRACTION * distance.size)))
    nearest = np.argsort(distance, kind="stable")[:keep]
    return float(np.median(positions[nearest, 2]))


@dataclass(frozen=True)
class Laterality:
    """Signed offsets (mm, LPS +x = patient left) of the left- and right-named muscles from the midline."""

    left_offset_mm: float | None
    right_offset_mm: float | None
    problem: str | None


def check_laterality(x_by_side: dict[str, dict[str, float]], midline_x_mm: float, midline: str) -> Laterality:
    """Each left-named muscle's centre must lie at +x of the midline, each right-named one at -x.

    Parameters
    ----------
    x_by_side : dict
        ``{"left": {muscle: centre x (mm)}, "right": {...}}`` for the muscles present.
    midline_x_mm : float
        LPS x of the midline.
    midline : str
        What the midline is, for the message (``the canal``).
    """
    offsets = {side: {m: x - midline_x_mm for m, x in muscles.items()} for side, muscles in x_by_side.items()}
    wrong = [f"{m.replace('_', ' ')} {abs(o):.0f} mm to the patient's right of {midline}"
             for m, o in offsets.get("left", {}).items() if o <= 0]
    wrong += [f"{m.replace('_', ' ')} {abs(o):.0f} mm to the patient's left of {midline}"
              for m, o in offsets.get("right", {}).items() if o >= 0]
    problem = f"{LATERALITY_PROBLEM} ({'; '.join(wrong)}; LPS +x is the patient's left)" if wrong else None
    return Laterality(_mean(offsets.get("left")), _mean(offsets.get("right")), problem)


def _mean(values: dict | None) -> float | None:
    return round(float(np.mean(list(values.values()))), 1) if values else None


def mask_centre_x_mm(mask) -> float | None:
    """LPS x (mm) of the centre of a mask's non-zero voxels (a SimpleITK image), None if empty.

    The physical position is linear in the index, so the centre is the mean index mapped once.
    """
    array = sitk.GetArrayViewFromImage(mask)
    index = np.nonzero(array)
    if index[0].size == 0:
        return None
    mean_kji = [float(i.mean()) for i in index]
    return float(mask.TransformContinuousIndexToPhysicalPoint(mean_kji[::-1])[0])


def check_hand_laterality(left_x_mm: float | None, right_x_mm: float | None, sides) -> str | None:
    """A hand ROI's left-named labels must lie at the patient's left (+x) of its right-named ones.

    ``sides`` is ``io.mask_sides`` (its ``left`` and ``right`` label lists). None when they do, or
    when one side has no voxel (nothing to compare).
    """
    if left_x_mm is None or right_x_mm is None or left_x_mm > right_x_mm:
        return None
    return (f"{LATERALITY_PROBLEM} (the ROI's left labels {list(sides.left)} lie {right_x_mm - left_x_mm:.0f} mm "
            f"to the patient's right of its right labels {list(sides.right)}; LPS +x is the patient's left; "
            "io.mask_sides names the labels)")
