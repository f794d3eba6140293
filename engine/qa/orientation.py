"""One display convention for every QA picture, whatever order the voxels were stored in (issue 23).

A RAS-stored NIfTI and an LPS-stored DICOM series hold the same anatomy in opposite index orders:
drawn in storage order, one shows posterior up and the other anterior up, and a left/right swap
cannot be spotted on a contact sheet that mixes them. Every slice is therefore turned, from the
image's direction matrix, into the radiological convention before it is drawn:

========  ==================  ======================
slice     up                  image-left
========  ==================  ======================
axial     anterior (A)        patient's right (R)
sagittal  superior (S)        anterior (A)
coronal   superior (S)        patient's right (R)
========  ==================  ======================

Physical axes are LPS, as SimpleITK reports them (+x patient's left, +y posterior, +z superior).
An oblique index axis counts as the physical axis it is closest to.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

#: (physical axis, sign) -> the letter of the side that direction points to (LPS).
SIDE_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}
#: Slice normal (physical axis) -> ((physical axis, sign) down the rows, (physical axis, sign) along the columns).
CONVENTIONS = {
    2: ((1, 1), (0, 1)),    # axial: rows run anterior -> posterior, columns patient's right -> left
    0: ((2, -1), (1, 1)),   # sagittal: rows superior -> inferior, columns anterior -> posterior
    1: ((2, -1), (0, 1)),   # coronal: rows superior -> inferior, columns right -> left
}
SLICE_NAMES = {2: "axial", 0: "sagittal", 1: "coronal"}


@dataclass(frozen=True)
class View:
    """How a 2-D slice in storage order is turned into the display convention, and its side letters.

    ``apply`` transposes first (when asked), then flips rows, then columns.
    """

    transpose: bool
    flip_rows: bool
    flip_cols: bool
    top: str
    bottom: str
    left: str
    right: str
    #: ``axial``, ``sagittal`` or ``coronal``: the plane the slice is closest to.
    plane: str

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` : (rows, cols, ...) in storage order -> the same data in display order."""
        out = np.swapaxes(array, 0, 1) if self.transpose else array
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def display_index(self, row: float, col: float, shape: tuple[int, int]) -> tuple[float, float]:
        """Where the storage pixel (``row``, ``col``) of a slice of ``shape`` lands on the display."""
        rows, cols = shape
        if self.transpose:
            row, col, rows, cols = col, row, cols, rows
        if self.flip_rows:
            row = rows - 1 - row
        if self.flip_cols:
            col = cols - 1 - col
        return row, col


def direction_matrix(direction) -> np.ndarray:
    """SimpleITK's row-major 9-tuple -> (3, 3) ndarray; column c is index axis c's unit vector (LPS)."""
    return np.asarray(direction, dtype=float).reshape(3, 3)


def in_plane_axes(direction, row_axis: int, col_axis: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((physical axis, sign) of the rows' index axis, same for the columns' index axis).

    The two index axes get two different physical axes, the pair closest to them (largest
    summed |cosine|), so a 45-degree oblique slice still gets two sides.
    """
    matrix = direction_matrix(direction)
    best = max(permutations(range(3), 2),
               key=lambda pair: abs(matrix[pair[0], row_axis]) + abs(matrix[pair[1], col_axis]))
    row_phys, col_phys = best
    return ((row_phys, 1 if matrix[row_phys, row_axis] >= 0 else -1),
            (col_phys, 1 if matrix[col_phys, col_axis] >= 0 else -1))


def slice_view(direction, row_axis: int, col_axis: int) -> View:
    """The :class:`View` that puts a slice whose rows/columns run along index axes ``row_axis``/``col_axis``
    (0 = i, 1 = j, 2 = k of the image) into the display convention of its plane.

    Parameters
    ----------
    direction : sequence of 9 floats
        The image's direction matrix as SimpleITK's ``GetDirection`` returns it.
    row_axis, col_axis : int
        The index axes down the slice array's rows and along its columns: an axial slice of a
        (Z, Y, X) array is ``row_axis=1, col_axis=0``.
    """
    (row_phys, row_sign), (col_phys, col_sign) = in_plane_axes(direction, row_axis, col_axis)
    normal = ({0, 1, 2} - {row_phys, col_phys}).pop()
    (want_row, want_row_sign), (want_col, want_col_sign) = CONVENTIONS[normal]
    transpose = row_phys != want_row
    if transpose:
        row_sign, col_sign = col_sign, row_sign
    return View(transpose=transpose, flip_rows=row_sign != want_row_sign, flip_cols=col_sign != want_col_sign,
                top=SIDE_LETTERS[(want_row, -want_row_sign)], bottom=SIDE_LETTERS[(want_row, want_row_sign)],
                left=SIDE_LETTERS[(want_col, -want_col_sign)], right=SIDE_LETTERS[(want_col, want_col_sign)],
                plane=SLICE_NAMES[normal])


def physical_axis_of(direction, index_axis: int) -> int:
    """The physical axis (0 x, 1 y, 2 z) an index axis runs closest to."""
    return int(np.argmax(np.abs(direction_matrix(direction)[:, index_axis])))


def index_axes_of(direction) -> tuple[int, int, int]:
    """The index axes running closest to physical x, y and z, each a different one."""
    matrix = np.abs(direction_matrix(direction))
    best = max(permutations(range(3)), key=lambda axes: sum(matrix[p, a] for p, a in enumerate(axes)))
    return int(best[0]), int(best[1]), int(best[2])


def index_axis_along(direction, physical_axis: int) -> int:
    """The index axis that runs closest to ``physical_axis`` (:func:`index_axes_of`)."""
    return index_axes_of(direction)[physical_axis]


def continuous_index(point_mm, origin, spacing, direction) -> np.ndarray:
    """The continuous (i, j, k) index of a physical point: (D diag(spacing))^-1 (p - origin)."""
    matrix = direction_matrix(direction) * np.asarray(spacing, dtype=float)[None, :]
    return np.linalg.solve(matrix, np.asarray(point_mm, dtype=float) - np.asarray(origin, dtype=float))
