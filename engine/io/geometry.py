"""DICOM plane geometry, once: functional-group lookup, slice axes, orientation and tilt checks.

Both readers that place 2-D frames in patient space use this module: the image series reader
(:mod:`engine.io.dicom`, single-frame files and enhanced multi-frame objects) and the DICOM-SEG
reader (:mod:`engine.io.masks`). One set of tolerances therefore decides what "the same
orientation" and "no gantry tilt" mean for an image and for the mask drawn on it.
"""

from __future__ import annotations

import math

import numpy as np

#: Largest absolute difference between the direction cosines of two frames of one stack.
ORIENTATION_TOL = 1e-3
#: |row . column| above this: the two cosines are not orthogonal.
ORTHOGONALITY_TOL = 1e-3
#: In-plane drift of slice positions allowed: this many mm ...
TILT_ABS_TOL_MM = 0.02
#: ... plus this fraction of the distance along the normal (~0.3 degree).
TILT_REL_TOL = 0.005


def first_item(dataset, sequence: str):
    """The first item of ``dataset.<sequence>``, or None."""
    seq = dataset.get(sequence) if dataset is not None else None
    return seq[0] if seq else None


def functional_group_value(item, shared, sequence: str, keyword: str, fallback=None):
    """``keyword`` of ``sequence`` in a frame's per-frame group, else in the shared group (PS3.3 C.7.6.16).

    ``fallback`` (a dataset, e.g. the file's top level) is asked last; None when no one has it.
    """
    for group in (item, shared):
        sub = first_item(group, sequence)
        if sub is not None and sub.get(keyword) is not None:
            return sub.get(keyword)
    return fallback.get(keyword) if fallback is not None else None


def same_orientation(orientations) -> bool:
    """Whether every 6-cosine ImageOrientationPatient equals the first within :data:`ORIENTATION_TOL`."""
    orientations = np.asarray(orientations, dtype=float)
    return float(np.max(np.abs(orientations - orientations[0]))) <= ORIENTATION_TOL


def slice_axes(orientation) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row cosine, column cosine, slice normal) as unit vectors; None when they are not orthogonal."""
    orientation = np.asarray(orientation, dtype=float)
    row_cosine = orientation[:3] / np.linalg.norm(orientation[:3])
    col_cosine = orientation[3:] / np.linalg.norm(orientation[3:])
    if abs(float(np.dot(row_cosine, col_cosine))) > ORTHOGONALITY_TOL:
        return None
    normal = np.cross(row_cosine, col_cosine)
    return row_cosine, col_cosine, normal / np.linalg.norm(normal)


def worst_tilt(positions_mm, normal) -> tuple[float, float, float] | None:
    """The worst sideways drift of a stack, or None when every slice lies along the normal.

    ``positions_mm`` are the frames' ImagePositionPatient in slice order. A slice may drift
    :data:`TILT_ABS_TOL_MM` plus :data:`TILT_REL_TOL` x its distance along the normal from the
    first. Returns ``(drift_mm, along_mm, angle_degrees)`` of the worst offender.
    """
    positions = np.asarray(positions_mm, dtype=float)
    offsets = positions - positions[0]
    along = offsets @ normal
    drift = np.linalg.norm(offsets - along[:, None] * normal[None, :], axis=1)
    allowed = TILT_ABS_TOL_MM + TILT_REL_TOL * np.abs(along)
    if not np.any(drift > allowed):
        return None
    worst = int(np.argmax(drift - allowed))
    angle = math.degrees(math.atan2(drift[worst], abs(along[worst]))) if along[worst] else 90.0
    return float(drift[worst]), float(abs(along[worst])), angle
