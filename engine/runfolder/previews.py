"""The preview slice of one series: published for the report, and its tissues classified once.

Pass 1 has the ROI sample in memory; it publishes the axial slice with most ROI voxels and the
ROI's pixels on it (``previews/<patient>__<modality>.preview.npz``). The report reads these files, never
``cache/`` (issue 21): a run folder renders on another machine, and ``cache/`` can be deleted.
The QA task, which draws during the run, takes the same :class:`Preview` of the sample in memory,
and both classify its pixels with :func:`tissue_masks`: the overlay's tissues are computed once.

The writer and the reader live here together so the layout (:data:`engine.contract.PREVIEW_KEYS`)
is written once; the file is an ``.npz`` without pickles, written atomically.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.contract import PREVIEW_KEYS
from engine.runfolder.outputs import write_bytes
from kernels import FAT, MUSCLE, classify


@dataclass(frozen=True)
class Preview:
    """The preview slice of one series and its ROI pixels.

    Attributes
    ----------
    image : (Y, X) float ndarray
        The resampled crop's axial slice with the most ROI voxels (HU for CT), storage order.
    z : int
        Its index in the crop grid.
    rows, columns : (K,) int ndarray
        Pixel coordinates of the ROI voxels on the slice.
    values : (K,) float32 ndarray
        Their intensities (the voxels the classify kernel sees).
    in_window : (K,) bool ndarray
        Whether each lies inside the intensity window.
    spacing : (3,) float ndarray
        The crop grid's spacing (x, y, z), mm.
    direction : (9,) float ndarray
        The crop grid's direction cosines (row-major 3 x 3), for drawing in a fixed orientation.
    """

    image: np.ndarray
    z: int
    rows: np.ndarray
    columns: np.ndarray
    values: np.ndarray
    in_window: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray


def preview_of(sample) -> Preview | None:
    """The :class:`Preview` of an :class:`engine.measure.preprocess.RoiSample` in memory, or None if inconsistent."""
    arrays = preview_arrays(sample)
    return None if arrays is None else _from_arrays(arrays)


def _from_arrays(data: dict) -> Preview:
    return Preview(np.asarray(data["preview"], float), int(data["preview_z"]), np.asarray(data["roi_rows"]),
                   np.asarray(data["roi_columns"]), np.asarray(data["roi_values"]),
                   np.asarray(data["roi_in_window"], bool), np.asarray(data["spacing"]),
                   np.asarray(data["direction"]))


def tissue_masks(preview: Preview, threshold: float | None,
                 fat_is: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(roi, muscle, fat) boolean (Y, X) masks of the slice, storage order.

    The ROI's in-window pixels are classified by the engine's classify kernel at ``threshold``
    (a method's frozen threshold; None: no tissue), so the overlay is the habitat map's slice,
    voxel for voxel. Out-of-window pixels are ROI but neither tissue.
    """

    roi, muscle, fat = (np.zeros(preview.image.shape, bool) for _ in range(3))
    roi[preview.rows, preview.columns] = True
    inside = preview.in_window
    if threshold is not None and inside.any():
        labels = np.asarray(classify(preview.values[inside], [float(threshold)], fat_is=fat_is)[0])
        rows, columns = preview.rows[inside], preview.columns[inside]
        muscle[rows[labels == MUSCLE], columns[labels == MUSCLE]] = True
        fat[rows[labels == FAT], columns[labels == FAT]] = True
    return roi, muscle, fat


def preview_arrays(sample) -> dict[str, np.ndarray] | None:
    """The :data:`PREVIEW_KEYS` arrays of an :class:`engine.measure.preprocess.RoiSample`, or None if inconsistent."""
    size = np.asarray(sample.grid.size, dtype=np.int64).ravel()
    image = np.asarray(sample.preview)
    if size.size != 3 or image.ndim != 2 or image.shape != (int(size[1]), int(size[0])):
        return None
    plane = int(size[0] * size[1])
    flat = np.asarray(sample.flat_index, dtype=np.int64)
    on_slice = flat // plane == int(sample.preview_z)
    rows, columns = np.divmod(flat[on_slice] % plane, int(size[0]))
    arrays = {"preview": image.astype(np.float32), "preview_z": np.int64(sample.preview_z),
              "roi_rows": rows.astype(np.int32), "roi_columns": columns.astype(np.int32),
              "roi_values": np.asarray(sample.values)[on_slice],
              "roi_in_window": np.asarray(sample.in_window, bool)[on_slice],
              "spacing": np.asarray(sample.grid.spacing, float), "direction": np.asarray(sample.grid.direction, float)}
    assert tuple(arrays) == PREVIEW_KEYS
    return arrays


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_preview(path: str | Path, sample) -> bool:
    """Publish the preview of ``sample`` at ``path`` (atomically); False if the sample has none."""
    arrays = preview_arrays(sample)
    if arrays is None:
        return False
    write_bytes(Path(path), _npz_bytes(arrays))
    return True


def _load(path: str | Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: (data[k] if data[k].ndim else data[k].item()) for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing or damaged: drawn as missing
        return None


def read_preview(path: str | Path) -> Preview | None:
    """The published preview at ``path``, or None if it is missing or damaged."""
    data = _load(path)
    if data is None or any(k not in data for k in PREVIEW_KEYS):
        return None
    return _from_arrays(data)
