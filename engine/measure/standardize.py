"""MRI intensity standardisation on a reference tissue (docs/method.md section 2, step 4; issues 16, 24).

T2 signal has no absolute unit: two scanners (or one scanner with another receiver gain) put the
same muscle at different values, so a threshold fitted on pooled voxels falls between the
scanners' muscle peaks. ``preprocess.mri.standardize: reference`` (the default) rescales each
N4-corrected series so that a reference tissue found *outside* the ROI lands on a fixed value
(``standardize_target``). The scale is never derived from the ROI's own histogram: that would
rescale a fatty ROI differently from a lean one and erase the very difference the study measures.

References
----------
Both are measured on the same N4-corrected whole axial slices the ROI values come from (N4's
output scale depends on the region it corrected, so a reference measured on another correction
would not cancel it).

``csf``: cerebrospinal fluid in the spinal canal (:func:`canal_csf_signal`). Every lumbar T2
field of view contains it, at every level, a few millimetres from the paraspinal muscles, so it
survives a spine protocol's 160-220 mm FOV and an obese patient with no air in the image. The
canal is found from the ROI's anatomy: it lies on the midline between the left and right
muscles, inside the ROI's antero-posterior extent; the bright class of that midline box (a
histogram Otsu split, outside the ROI and a 2 mm guard) is CSF (and whatever fat the box holds);
its largest connected component is the canal. A canal is accepted when it is found on at least
half of the slices with a plausible cross-section (``CANAL_AREA_MM2``).

``subcutaneous_fat``: the posterior (and any other) subcutaneous fat where a body edge is
visible (:func:`reference_fat_signal`): the bright class of a 2-30 mm band inside the body's air
boundary (the FOV edge is not a boundary), away from the ROI.

Either reference's signal is the median of its *core* (the region eroded by one voxel in-plane,
so voxels sharing a border with another tissue drop out); its ``spread`` is the interquartile
range over the median (noise, flow, the bias field's remainder, a mixed region).

Selection (``preprocess.mri.reference``, :func:`choose_reference`)
----------------------------------------------------------------
``auto`` (default): CSF when it is reliable (one reference for the whole cohort; the canal is
always in the field of view), else subcutaneous fat when it is reliable, else the usable one
with a flag; ``csf`` / ``subcutaneous_fat`` force one. Reliable = at least
``MIN_RELIABLE_VOXELS`` core voxels and a spread of at most ``MAX_SPREAD``; usable = at least
``MIN_USABLE_VOXELS``. A series scaled on an unreliable reference is flagged (its row of
``mri_reference.csv``, the QA sheet, a run note), never scaled silently; a series without any
usable reference is that patient's error, naming what was missing. Both references are measured
whenever they exist, and their ratio (fat / CSF) is checked per scanner after pass 1
(:func:`flag_inconsistent_ratios`).

Nyúl-Udupa histogram landmarks are a documented alternative only where their landmarks come
from such a reference region, never from the ROI's histogram; they are not built (README).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from engine.contract import MRI_REFERENCE_COLUMNS, SCANNER_KEY, STANDARDIZATION_KEY, scanner_label
from engine.errors import InputError

#: The references ``preprocess.mri.reference`` names (``auto`` picks one per series).
REFERENCES = ("csf", "subcutaneous_fat")
REFERENCE_NAMES = {"csf": "CSF in the spinal canal", "subcutaneous_fat": "subcutaneous fat"}

#: Body vs air: above this fraction of the image's median signal (air and the table are ~0;
#: flow voids and cortical bone are darker too but lie inside the body and are filled).
AIR_FRACTION = 0.2
#: In-plane depth range (mm) of the peripheral band searched for subcutaneous fat.
SKIN_MM, BAND_MM = 2.0, 30.0
#: Margin (mm) around the ROI that the fat reference never touches.
ROI_GUARD_MM = 5.0
#: Margin (mm) around the ROI that the canal search never touches (the canal lies a few mm from
#: the paraspinal muscles; partial volume with the ROI's border stays out).
CANAL_GUARD_MM = 2.0
#: Half-width (mm) of the midline box searched for the canal.
CANAL_HALF_WIDTH_MM = 16.0
#: Radius (mm) of the in-plane opening that detaches the canal from thin bright structures.
CANAL_OPENING_MM = 3.0
#: Two Otsu classes whose means differ by less than this factor are one tissue plus noise.
DISTINCT_TISSUES = 1.3
#: Plausible in-plane cross-section (mm^2) of the lumbar thecal sac on one slice.
CANAL_AREA_MM2 = (40.0, 700.0)
#: Core voxels below this: not usable (the series is that patient's error without another).
MIN_USABLE_VOXELS = 50
#: Core voxels below this, or a spread (IQR / median) above ``MAX_SPREAD``: unreliable (flagged).
MIN_RELIABLE_VOXELS = 200
MAX_SPREAD = 0.3
#: fat / CSF ratio further than this (relative) from its scanner's median: flagged.
MAX_RATIO_DEVIATION = 0.25
#: fat / CSF below this: the fat is dark, the series is fat-suppressed (fat-bright T2: about 0.5-1.1).
FAT_SUPPRESSED_RATIO = 0.4
#: subcutaneous fat / the ROI's lower quartile below this: fat no brighter than muscle (fat-bright: 2.5-4).
FAT_OVER_MUSCLE = 1.5
#: Key of a pass-1 summary whose MRI reference is doubtful but kept (measured, out of the cohort fit).
DOUBTFUL_KEY = "reference_doubtful"
#: Kept for callers of issue 16's single-reference API.
MIN_REFERENCE_VOXELS = MIN_RELIABLE_VOXELS


@dataclass(frozen=True)
class ReferenceMeasurement:
    """One reference tissue measured on one series.

    ``value`` is the median signal of the core (None when the tissue was not found), ``voxels``
    the core's size, ``spread`` its IQR / median, ``region`` where it was measured (words and
    the in-plane centre in voxel indices of the whole slices), ``problem`` why it is unusable or
    unreliable ('' when reliable).
    """

    reference: str
    value: float | None
    voxels: int
    spread: float | None
    region: str
    problem: str
    centre_yx: tuple[float, float] | None = None
    #: (Z, Y, X) bool: the voxels measured (before the core's erosion), for QA.
    region_mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        return self.value is not None and self.value > 0 and self.voxels >= MIN_USABLE_VOXELS

    @property
    def reliable(self) -> bool:
        return self.usable and not self.problem


def _in_plane_cross() -> np.ndarray:
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    return cross


def _disk(radius_mm: float, spacing_xyz) -> np.ndarray:
    """(1, Y, X) bool in-plane disk of ``radius_mm``."""
    ry, rx = (max(1, int(radius_mm // float(s))) for s in (spacing_xyz[1], spacing_xyz[0]))
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return ((yy * float(spacing_xyz[1])) ** 2 + (xx * float(spacing_xyz[0])) ** 2 <= radius_mm ** 2)[None]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` on a ``bins``-bin histogram (low class: x <= t).

    numpy only (scikit-image is a test extra); the bin centre returned is the one
    ``skimage.filters.threshold_otsu(values, nbins=bins)`` returns.
    """
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    counts = counts.astype(float)
    weight_low = np.cumsum(counts)
    weight_high = np.cumsum(counts[::-1])[::-1]
    mean_low = np.cumsum(counts * centres) / np.maximum(weight_low, 1e-300)
    mean_high = (np.cumsum((counts * centres)[::-1]) / np.maximum(weight_high[::-1], 1e-300))[::-1]
    between = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    return float(centres[:-1][int(np.argmax(between))])


def _core_statistics(volume: np.ndarray, region: np.ndarray) -> tuple[float | None, int, float | None]:
    """(median, voxels, IQR / median) of the region eroded by one voxel in-plane (the region if too thin)."""
    core = ndimage.binary_erosion(region, structure=_in_plane_cross())
    if np.count_nonzero(core) < MIN_USABLE_VOXELS:
        core = region  # thin: every voxel is a border voxel; better than none
    n = int(np.count_nonzero(core))
    if n == 0:
        return None, 0, None
    q25, median, q75 = np.percentile(volume[core], [25, 50, 75])
    spread = float((q75 - q25) / median) if median > 0 else None
    return float(median), n, spread


def _judge(reference: str, value, voxels: int, spread, region: str, centre=None,
           mask: np.ndarray | None = None) -> ReferenceMeasurement:
    """A measurement with its problem in words ('' when reliable)."""
    name = REFERENCE_NAMES[reference]
    if value is None or voxels < MIN_USABLE_VOXELS:
        problem = f"{name}: only {voxels} voxels found (at least {MIN_USABLE_VOXELS} needed)"
    elif not value > 0:
        problem = f"{name}: no signal"
    elif voxels < MIN_RELIABLE_VOXELS:
        problem = f"{name}: only {voxels} voxels (fewer than {MIN_RELIABLE_VOXELS})"
    elif spread is None or spread > MAX_SPREAD:
        problem = f"{name}: wide spread (IQR/median {spread:.2f} > {MAX_SPREAD:g})"
    else:
        problem = ""
    return ReferenceMeasurement(reference, value, voxels, spread, region, problem, centre, mask)


def _absent(reference: str, why: str) -> ReferenceMeasurement:
    return ReferenceMeasurement(reference, None, 0, None, "", f"{REFERENCE_NAMES[reference]}: {why}")


def _guard(roi: np.ndarray, spacing_xyz, margin_mm: float) -> np.ndarray:
    guard_vox = [max(1, int(round(margin_mm / s))) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    # a dilation by a box, as a separable maximum filter (the same voxels, a fraction of the time)
    return ndimage.maximum_filter(np.asarray(roi, np.uint8), size=[2 * g + 1 for g in guard_vox],
                                  mode="constant", cval=0).astype(bool)


# ----------------------------------------------------------------------------- CSF in the canal
def _canal_search_box(roi: np.ndarray, spacing_xyz) -> np.ndarray | None:
    """(Z, Y, X) bool: the midline box between the ROI's left and right muscles, on every slice."""
    zz, yy, xx = np.nonzero(roi)
    if xx.size == 0:
        return None
    x_mid = 0.5 * (float(np.percentile(xx, 2)) + float(np.percentile(xx, 98)))  # bilateral muscles
    half = CANAL_HALF_WIDTH_MM / float(spacing_xyz[0])
    box = np.zeros(roi.shape, bool)
    x0, x1 = max(int(np.floor(x_mid - half)), 0), min(int(np.ceil(x_mid + half)) + 1, roi.shape[2])
    y0, y1 = int(yy.min()), int(yy.max()) + 1
    box[:, y0:y1, x0:x1] = True
    return box


def _largest(labels: np.ndarray) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _canal_component(volume: np.ndarray, labels: np.ndarray, pixel_mm2: float) -> np.ndarray:
    """The canal among the bright midline components: canal-shaped, then the brightest.

    A component is canal-shaped when its cross-section is plausible (``CANAL_AREA_MM2``) on at
    least half of the slices; of those, the one with the highest median signal is the canal (CSF
    is brighter than fat on T2). Size alone picked a fat pad beside the canal whenever it was the
    larger. Without a canal-shaped component, the largest (the caller's area check names why).
    """
    low, high = CANAL_AREA_MM2
    best, best_value = 0, -np.inf
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        component = labels[box] == k
        area = component.reshape(component.shape[0], -1).sum(axis=1) * pixel_mm2
        if np.count_nonzero((area >= low) & (area <= high)) < max(1, labels.shape[0] // 2):
            continue
        value = float(np.median(volume[box][component]))
        if value > best_value:
            best, best_value = k, value
    return labels == best if best else _largest(labels)


def _brightest_tissue(volume: np.ndarray, region: np.ndarray, spacing_xyz) -> np.ndarray:
    """The region's brightest tissue: split by Otsu while its two classes are distinct tissues.

    The bright component around the canal can still hold a ring of another tissue (cancellous
    bone of the arch, the disc's nucleus); CSF is the bright class of the region. Two classes
    whose means differ by less than ``DISTINCT_TISSUES`` are one tissue and noise: stop.
    """
    for _ in range(3):
        values = volume[region]
        if values.size < 2 * MIN_USABLE_VOXELS:
            break
        split = otsu_threshold(values)
        low, high = values[values <= split], values[values > split]
        if low.size == 0 or high.size == 0 or high.mean() < DISTINCT_TISSUES * low.mean():
            break
        bright = ndimage.binary_opening(region & (volume > split), structure=_disk(1.0, spacing_xyz))
        labels, n = ndimage.label(bright)
        if n == 0:
            break
        region = _largest(labels)
    return region


def canal_csf_signal(volume: np.ndarray, roi: np.ndarray, spacing_xyz,
                     canal: np.ndarray | None = None) -> ReferenceMeasurement:
    """CSF in the spinal canal of one N4-corrected series (see the module notes).

    Parameters
    ----------
    volume : (Z, Y, X) float ndarray
        N4-corrected T2 signal on whole axial slices around the ROI.
    roi : (Z, Y, X) bool ndarray
        The ROI (bilateral psoas and paraspinal muscles) on the same grid; never measured.
    spacing_xyz : (3,) floats
        Voxel spacing (x, y, z) in mm.
    canal : (Z, Y, X) bool ndarray, optional
        The canal from a segmentation (e.g. TotalSegmentator's ``spinal_cord``); without it the
        canal is found in the image.
    """
    pixel_mm2 = float(spacing_xyz[0]) * float(spacing_xyz[1])
    outside = ~_guard(roi, spacing_xyz, CANAL_GUARD_MM)
    if canal is not None and np.count_nonzero(canal & outside):
        region = canal & outside
        where = "spinal canal (segmentation)"
    else:
        box = _canal_search_box(roi, spacing_xyz)
        if box is None:
            return _absent("csf", "no ROI to find the midline from")
        search = box & outside & (volume > 0)
        if np.count_nonzero(search) < 2 * MIN_USABLE_VOXELS:
            return _absent("csf", "the midline between the muscles is not in the image")
        bright = search & (volume > otsu_threshold(volume[search]))
        # an in-plane opening breaks thin bright bridges (fat planes between the muscles, 2-4 mm)
        # that would join the canal to other bright tissue; the thecal sac (>= 10 mm) survives it
        bright = ndimage.binary_opening(bright, structure=_disk(CANAL_OPENING_MM, spacing_xyz))
        labels, n = ndimage.label(bright)
        if n == 0:
            return _absent("csf", "no bright structure on the midline between the muscles")
        region = _brightest_tissue(volume, _canal_component(volume, labels, pixel_mm2), spacing_xyz)
        where = "spinal canal (image)"
    area = region.reshape(region.shape[0], -1).sum(axis=1) * pixel_mm2
    present = area > 0
    low, high = CANAL_AREA_MM2
    plausible = present & (area >= low) & (area <= high)
    if np.count_nonzero(plausible) < max(1, present.size // 2):
        median_area = float(np.median(area[present])) if present.any() else 0.0
        return _absent("csf", f"no canal-shaped region (median cross-section {median_area:.0f} mm2 on "
                              f"{int(np.count_nonzero(present))} of {present.size} slices; "
                              f"{low:g}-{high:g} mm2 expected on at least half)")
    region &= plausible[:, None, None]
    value, voxels, spread = _core_statistics(volume, region)
    _, yy, xx = np.nonzero(region)
    centre = (float(yy.mean()), float(xx.mean()))
    where = f"{where}, {int(np.count_nonzero(plausible))} slices, {float(np.median(area[plausible])):.0f} mm2 each"
    return _judge("csf", value, voxels, spread, where, centre, region)


# ----------------------------------------------------------------------------- subcutaneous fat
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


def subcutaneous_fat_measurement(volume: np.ndarray, roi: np.ndarray, spacing_xyz) -> ReferenceMeasurement:
    """The subcutaneous fat of one N4-corrected series where a body edge is visible.

    1. body = voxels above ``AIR_FRACTION`` x the image median, per slice, holes filled, largest
       component; 2. band = body voxels 2-30 mm in-plane from the air boundary (the FOV edge is
       not a boundary); 3. the ROI dilated by ``ROI_GUARD_MM`` removed; 4. fat = the bright
       class of the band's Otsu split (the muscle of the wall and back is the dark class).
    """
    body = _body_mask(volume)
    depth = _depth_mm(body, spacing_xyz)
    band = body & (depth >= SKIN_MM) & (depth <= BAND_MM) & ~_guard(roi, spacing_xyz, ROI_GUARD_MM)
    if np.count_nonzero(band) < 2 * MIN_USABLE_VOXELS:
        return _absent("subcutaneous_fat", "no body edge in the field of view (no air beside the body)")
    fat = band & (volume > otsu_threshold(volume[band]))
    value, voxels, spread = _core_statistics(volume, fat)
    if voxels:
        _, yy, xx = np.nonzero(fat)
        centre = (float(yy.mean()), float(xx.mean()))
    else:
        centre = None
    return _judge("subcutaneous_fat", value, voxels, spread,
                  f"subcutaneous fat, {SKIN_MM:g}-{BAND_MM:g} mm inside the body edge", centre, fat)


def reference_fat_signal(volume: np.ndarray, roi: np.ndarray, spacing_xyz) -> dict:
    """Median signal of the subcutaneous-fat core of one N4-corrected series (issue 16's API).

    Returns ``reference_signal``, ``reference_voxels`` and ``reference_iqr``; raises
    :class:`InputError` ("no body edge ...") when the fat is not usable.
    """
    measured = subcutaneous_fat_measurement(volume, roi, spacing_xyz)
    if not measured.usable or measured.value is None:
        raise InputError("preprocess", f"MRI standardisation: {measured.problem}")
    return {"reference_signal": measured.value, "reference_voxels": measured.voxels,
            "reference_iqr": (measured.spread or 0.0) * measured.value}


# ----------------------------------------------------------------------------- selection
def measure_references(volume: np.ndarray, roi: np.ndarray, spacing_xyz,
                       canal: np.ndarray | None = None) -> dict[str, ReferenceMeasurement]:
    """Every reference of one series (both are measured, for the per-scanner consistency check)."""
    return {"csf": canal_csf_signal(volume, roi, spacing_xyz, canal),
            "subcutaneous_fat": subcutaneous_fat_measurement(volume, roi, spacing_xyz)}


def choose_reference(measured: dict[str, ReferenceMeasurement], reference: str = "auto"
                     ) -> tuple[ReferenceMeasurement, str, str]:
    """(the reference to scale on, the reason in words, a flag ('' when reliable)).

    Raises
    ------
    InputError
        No usable reference (forced: the one named), naming what was missing.
    """
    if reference not in ("auto", *REFERENCES):
        raise ValueError(f"reference must be auto or one of {REFERENCES}, got {reference!r}")
    if reference != "auto":
        chosen = measured[reference]
        if not chosen.usable:
            raise InputError("preprocess", f"MRI standardisation (preprocess.mri.reference: {reference}): "
                                           f"{chosen.problem}; try preprocess.mri.reference: auto")
        return chosen, "named in the config (preprocess.mri.reference)", \
            "" if chosen.reliable else f"unreliable reference: {chosen.problem}"
    csf, fat = measured["csf"], measured["subcutaneous_fat"]
    if csf.reliable:
        return csf, "CSF reliable (preferred: in every lumbar FOV, beside the ROI)", ""
    if fat.reliable:
        return fat, f"CSF not reliable ({csf.problem})", ""
    for candidate in (csf, fat):
        if candidate.usable:
            return candidate, "no reliable reference; the usable one", f"unreliable reference: {candidate.problem}"
    raise InputError("preprocess", f"MRI standardisation: no usable reference tissue ({csf.problem}; "
                                   f"{fat.problem}); give the canal via the segmentation, or set "
                                   "preprocess.mri.standardize: none for this cohort")


def fat_to_csf(measured: dict[str, ReferenceMeasurement]) -> float | None:
    """Subcutaneous fat / CSF when both are usable, else None."""
    csf, fat = measured["csf"], measured["subcutaneous_fat"]
    return fat.value / csf.value if csf.usable and fat.usable and fat.value and csf.value else None


def fat_suppression_problem(measured: dict[str, ReferenceMeasurement], roi_values: np.ndarray) -> str:
    """Why the series looks fat-suppressed ('' when it does not, or when it cannot be told).

    On a fat-bright T2 (or a water + fat image) subcutaneous fat is about 0.5-1.1 x CSF and 2.5-4 x
    muscle. Under fat suppression (SPIR, STIR, a water image) fat is dark: its ratio to CSF falls
    below :data:`FAT_SUPPRESSED_RATIO`, or it is no brighter than :data:`FAT_OVER_MUSCLE` x the
    ROI's lower quartile (muscle unless the ROI is over 75 % fat). The bright class of the ROI is
    then not fat, so its fat percentage would measure something else.
    """
    fat, ratio = measured["subcutaneous_fat"], fat_to_csf(measured)
    if not fat.usable or fat.value is None or roi_values.size == 0:
        return ""
    muscle = float(np.percentile(roi_values, 25))
    if ratio is not None and ratio < FAT_SUPPRESSED_RATIO:
        why = f"subcutaneous fat is {ratio:.2f} x the CSF signal (fat-bright: about 0.5-1.1)"
    elif muscle > 0 and fat.value < FAT_OVER_MUSCLE * muscle:
        why = f"subcutaneous fat is {fat.value / muscle:.2f} x the ROI's muscle (fat-bright: 2.5-4)"
    else:
        return ""
    return (f"the MRI looks fat-suppressed: {why}; fat is dark, so no fat percentage is measured "
            "(give the series without fat suppression)")


def standardization_record(measured: dict[str, ReferenceMeasurement], chosen: ReferenceMeasurement, reason: str,
                           flag: str, target: float) -> dict:
    """The series summary's ``standardization`` entry (JSON-ready)."""
    ratio = fat_to_csf(measured)
    if chosen.value is None:
        raise ValueError(f"{chosen.reference} has no value to scale on")
    return {"method": "reference", "reference": chosen.reference, "reason": reason, "flag": flag,
            "target": float(target), "scale": float(target) / chosen.value,
            "reference_signal": chosen.value, "reference_voxels": chosen.voxels, "reference_spread": chosen.spread,
            "region": chosen.region,
            "fat_to_csf": ratio,
            "measured": {name: {"value": m.value, "voxels": m.voxels, "spread": m.spread, "problem": m.problem}
                         for name, m in measured.items()}}


def flag_inconsistent_ratios(rows: list[dict], frozen: Mapping[str, float] | None = None) -> list[dict]:
    """Per scanner, flag a series whose fat / CSF ratio is off its scanner's median.

    ``rows``: dicts with ``scanner``, ``fat_to_csf`` (None when one reference is missing) and
    ``flag``; returned with the flag extended and ``scanner_fat_to_csf`` (the scanner's median)
    set. The median is ``frozen[scanner]`` where given (``sarco apply``: the training run's,
    :func:`scanner_ratio_medians`, so a night of one patient is checked too), else the rows' own,
    which needs at least three series with both references on that scanner.
    """
    by_scanner: dict[str, list[float]] = {}
    for row in rows:
        if row.get("fat_to_csf") is not None:
            by_scanner.setdefault(row["scanner"], []).append(float(row["fat_to_csf"]))
    medians = {k: float(np.median(v)) for k, v in by_scanner.items() if len(v) >= 3}
    medians.update({str(k): float(v) for k, v in (frozen or {}).items()})
    out = []
    for row in rows:
        row = dict(row)
        median = medians.get(row["scanner"])
        row["scanner_fat_to_csf"] = median
        ratio = row.get("fat_to_csf")
        if median and ratio is not None and abs(ratio / median - 1.0) > MAX_RATIO_DEVIATION:
            note = (f"fat/CSF ratio {ratio:.2f} is {100 * abs(ratio / median - 1):.0f}% off its scanner's "
                    f"median {median:.2f}: one reference is doubtful")
            row["flag"] = f"{row['flag']}; {note}" if row.get("flag") else note
        out.append(row)
    return out


def scanner_ratio_medians(rows: list[dict]) -> dict[str, float]:
    """{scanner: the fat / CSF median its series were checked against} of :func:`reference_rows`' rows
    (scanners with too few series to check are absent): what ``model.json`` freezes for ``sarco apply``."""
    return {str(row["scanner"]): float(row["scanner_fat_to_csf"]) for row in rows
            if row.get("scanner_fat_to_csf") is not None}


def reference_rows(summaries: list[dict], frozen: Mapping[str, float] | None = None) -> list[dict]:
    """The rows of ``mri_reference.csv`` (:data:`MRI_REFERENCE_COLUMNS`) from pass-1 summaries.

    One row per standardised MRI series, the per-scanner ratio check applied (against ``frozen``
    medians where given: :func:`flag_inconsistent_ratios`); [] when none.
    """
    rows = []
    for summary in summaries:
        record = summary.get(STANDARDIZATION_KEY) if summary.get("status") == "ok" else None
        if summary.get("modality") != "mri" or not record:
            continue
        rows.append({"patient_id": summary["patient_id"], "scanner": scanner_label(summary.get(SCANNER_KEY)),
                     "reference": record.get("reference", "subcutaneous_fat"), "reason": record.get("reason", ""),
                     "region": record.get("region", ""), "value": record.get("reference_signal"),
                     "voxels": record.get("reference_voxels"), "spread": record.get("reference_spread"),
                     "scale": record.get("scale"), "fat_to_csf": record.get("fat_to_csf"),
                     "flag": record.get("flag", "")})
    rows = flag_inconsistent_ratios(rows, frozen)
    return [{k: row.get(k) for k in MRI_REFERENCE_COLUMNS} for row in rows]


__all__ = ["DOUBTFUL_KEY", "REFERENCES", "ReferenceMeasurement", "canal_csf_signal", "choose_reference",
           "fat_suppression_problem", "fat_to_csf", "flag_inconsistent_ratios",
           "measure_references", "otsu_threshold", "reference_fat_signal", "reference_rows", "scanner_ratio_medians",
           "standardization_record",
           "subcutaneous_fat_measurement"]
