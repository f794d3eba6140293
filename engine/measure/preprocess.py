"""Per-patient preprocessing (docs/method.md section 2): crop, 1 mm resample, N4, intensity window.

The output is a :class:`RoiSample`: the ROI voxels of one patient and modality in the
resampled space, compact enough to cache on disk and to ship to a GPU, plus the geometry
needed to write habitat maps back into physical space.

Grid definition
---------------
The whole-volume output grid keeps the image's origin and direction and has spacing
``spacing_mm`` and size ``round(size_in * spacing_in / spacing_out)`` per axis. The crop is a
sub-box of that grid (the ROI's bounding box plus a margin), and the input is cropped with a
2-voxel pad beyond what linear interpolation touches, so resampling the crop gives the same
values, voxel for voxel, as resampling the whole volume (tested against SimpleITK).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from engine.contract import NATIVE_SAMPLE_KEYS, REFERENCE_PREVIEW_KEY
from engine.errors import InputError
from engine.measure.standardize import (
    choose_reference,
    fat_suppression_problem,
    measure_references,
    standardization_record,
    subcutaneous_fat_measurement,
)
from engine.runfolder.outputs import atomic_path

# Interpolation needs the input voxels around each output point; 2 extra voxels make the
# crop's buffer edge unreachable from any output point.
_INPUT_PAD_VOXELS = 2


def _ints3(values) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in values)
    return x, y, z


def _floats3(values) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return x, y, z


@dataclass(frozen=True)
class Grid:
    """A physical sampling grid (SimpleITK conventions: x, y, z order; direction row-major)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(_ints3(image.GetSize()), _floats3(image.GetSpacing()), _floats3(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.size[2], self.size[1], self.size[0]

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class NativeRoi:
    """The ROI's own voxels: the image's values under the mask on the image grid, nothing resampled.

    The clinical reference (``fixed``, docs/method.md section 3) counts these, as Slice-O-Matic,
    Comp2Comp and TotalSegmentator's tissue types do; the fitted methods use the resampled sample.

    Attributes
    ----------
    values : (N,) float32 ndarray
        The image's value (HU) of every ROI voxel, C order of :attr:`grid`.
    flat_index : (N,) int64 ndarray
        Index of each voxel in :attr:`grid`'s (Z, Y, X) C-order array.
    in_window : (N,) bool ndarray
        Whether the value lies inside the intensity window.
    grid : Grid
        The ROI's bounding box on the image's own grid (habitat maps of the reference use it).
    """

    values: np.ndarray
    flat_index: np.ndarray
    in_window: np.ndarray
    grid: Grid

    @property
    def window_values(self) -> np.ndarray:
        return self.values[self.in_window]

    def label_volume(self, labels: np.ndarray) -> sitk.Image:
        """A (Z, Y, X) uint8 image on :attr:`grid`, 0 outside the ROI, ``labels`` inside."""
        volume = np.zeros(int(np.prod(self.grid.size)), np.uint8)
        volume[self.flat_index] = labels
        return self.grid.apply_to(sitk.GetImageFromArray(volume.reshape(self.grid.shape_zyx)))

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``.npz`` entries (:data:`engine.contract.NATIVE_SAMPLE_KEYS`)."""
        grid = np.concatenate([self.grid.size, self.grid.spacing, self.grid.origin, self.grid.direction])
        return dict(zip(NATIVE_SAMPLE_KEYS, (self.values, self.flat_index, self.in_window, grid), strict=True))

    @classmethod
    def from_arrays(cls, data) -> NativeRoi | None:
        if NATIVE_SAMPLE_KEYS[0] not in data.files:
            return None
        values, flat_index, in_window, grid = (data[k] for k in NATIVE_SAMPLE_KEYS)
        return cls(values, flat_index, in_window, Grid(_ints3(grid[:3]), _floats3(grid[3:6]), _floats3(grid[6:9]),
                                                       tuple(float(v) for v in grid[9:])))


def native_roi(image, mask: sitk.Image, window=None) -> NativeRoi:
    """The image's values under the mask on the image grid (the ROI's bounding box is decoded only).

    ``image``: a SimpleITK image or an :class:`engine.io.ImageSource` (a DICOM series decodes the
    ROI's slices, which the resampled crop has just decoded and the source keeps).
    """
    lower, upper = _bbox_index(sitk.GetArrayViewFromImage(mask))
    index, size = [int(v) for v in lower], [int(v) for v in upper - lower + 1]
    box = sitk.RegionOfInterest(image, size, index) if isinstance(image, sitk.Image) else image.read(index, size)
    roi = sitk.GetArrayViewFromImage(mask)[lower[2]:upper[2] + 1, lower[1]:upper[1] + 1, lower[0]:upper[0] + 1]
    flat_index = np.flatnonzero(roi.ravel() != 0).astype(np.int64)
    values = sitk.GetArrayViewFromImage(box).ravel()[flat_index].astype(np.float32)
    in_window = np.ones(values.size, bool) if window is None else (values >= window[0]) & (values <= window[1])
    return NativeRoi(values, flat_index, in_window, Grid.of(box))


@dataclass
class RoiSample:
    """The ROI voxels of one patient and modality after preprocessing.

    Attributes
    ----------
    values : (N,) float32 ndarray
        Intensity of every ROI voxel (HU for CT), in C order of the crop grid.
    flat_index : (N,) int64 ndarray
        Index of each voxel in the crop grid's (Z, Y, X) C-order array.
    in_window : (N,) bool ndarray
        Whether the voxel lies inside the intensity window (all True without a window).
    grid : Grid
        The resampled crop grid (the space of habitat maps).
    preview : (Y, X) float32 ndarray
        The resampled crop's axial slice with the most ROI voxels (for report overlays).
    preview_z : int
        Its z index in the crop grid.
    """

    values: np.ndarray
    flat_index: np.ndarray
    in_window: np.ndarray
    grid: Grid
    preview: np.ndarray
    preview_z: int
    #: MRI standardisation applied (``engine.measure.standardize``): method, reference signal, scale.
    #: Reported in the series summary; not stored in the ``.npz`` (the values are already scaled).
    standardization: dict | None = None
    #: (Y, X) bool: the MRI reference's region on the preview slice (issue 24; QA draws it);
    #: stored in the ``.npz`` only when there is one (key ``reference_preview``).
    reference_preview: np.ndarray | None = None
    #: The ROI's native voxels (:class:`NativeRoi`; CT, for the clinical reference); stored in the
    #: ``.npz`` only when there are some (keys :data:`engine.contract.NATIVE_SAMPLE_KEYS`).
    native: NativeRoi | None = None

    @property
    def roi_voxels(self) -> int:
        return int(self.values.size)

    @property
    def excluded_voxels(self) -> int:
        return int(self.values.size - np.count_nonzero(self.in_window))

    @property
    def window_values(self) -> np.ndarray:
        return self.values[self.in_window]

    def save(self, path: str | Path) -> None:
        """Write as an uncompressed ``.npz`` (no pickle; keys :data:`engine.contract.SAMPLE_KEYS`), atomically."""
        arrays: dict[str, Any] = {"values": self.values, "flat_index": self.flat_index, "in_window": self.in_window,
                  "size": np.asarray(self.grid.size, np.int64), "spacing": np.asarray(self.grid.spacing),
                  "origin": np.asarray(self.grid.origin), "direction": np.asarray(self.grid.direction),
                  "preview": self.preview, "preview_z": np.int64(self.preview_z)}
        if self.reference_preview is not None:
            arrays[REFERENCE_PREVIEW_KEY] = self.reference_preview
        if self.native is not None:
            arrays.update(self.native.arrays())
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> RoiSample:
        """Read a sample written by :meth:`save` (raises ``OSError``/``ValueError``/``KeyError`` if damaged)."""
        with np.load(path, allow_pickle=False) as data:
            grid = Grid(_ints3(data["size"]), _floats3(data["spacing"]), _floats3(data["origin"]),
                        tuple(float(v) for v in data["direction"]))
            reference = data[REFERENCE_PREVIEW_KEY] if REFERENCE_PREVIEW_KEY in data.files else None
            return cls(data["values"], data["flat_index"], data["in_window"], grid, data["preview"],
                       int(data["preview_z"]), reference_preview=reference, native=NativeRoi.from_arrays(data))

    def label_volume(self, labels: np.ndarray) -> sitk.Image:
        """A (Z, Y, X) uint8 image on :attr:`grid`, 0 outside the ROI, ``labels`` inside."""
        volume = np.zeros(int(np.prod(self.grid.size)), np.uint8)
        volume[self.flat_index] = labels
        image = sitk.GetImageFromArray(volume.reshape(self.grid.shape_zyx))
        return self.grid.apply_to(image)


def whole_volume_grid(image: sitk.Image, spacing_mm) -> Grid:
    """The grid a whole-volume resample of ``image`` to ``spacing_mm`` produces."""
    size_in, spacing_in = image.GetSize(), image.GetSpacing()
    size = _ints3(max(1, int(round(n * s / t))) for n, s, t in zip(size_in, spacing_in, spacing_mm, strict=True))
    return Grid(size, _floats3(spacing_mm), _floats3(image.GetOrigin()), tuple(image.GetDirection()))


def _bbox_index(mask_array_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (x, y, z) index bounds of the non-zero voxels."""
    # z first, then y and x inside the z-range: a ROI on a few slices of a long series costs little
    z = np.flatnonzero(mask_array_zyx.reshape(mask_array_zyx.shape[0], -1).any(axis=1))
    slab = mask_array_zyx[z[0]:z[-1] + 1]
    y = np.flatnonzero(slab.any(axis=(0, 2)))
    x = np.flatnonzero(slab[:, y[0]:y[-1] + 1].any(axis=(0, 1)))
    return np.array([x[0], y[0], z[0]]), np.array([x[-1], y[-1], z[-1]])


def _corners(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    return np.array([[(lower, upper)[i >> k & 1][k] for k in range(3)] for i in range(8)], dtype=float)


def _continuous_index(grid_origin, grid_spacing, grid_direction, points_mm: np.ndarray) -> np.ndarray:
    direction = np.asarray(grid_direction).reshape(3, 3)
    return (points_mm - np.asarray(grid_origin)) @ direction / np.asarray(grid_spacing)


def _physical(grid_origin, grid_spacing, grid_direction, index: np.ndarray) -> np.ndarray:
    direction = np.asarray(grid_direction).reshape(3, 3)
    return np.asarray(grid_origin) + (index * np.asarray(grid_spacing)) @ direction.T


def crop_grid(image: sitk.Image, mask: sitk.Image, spacing_mm, margin_mm: float) -> Grid:
    """The sub-box of the whole-volume output grid that covers the ROI plus ``margin_mm``."""
    full = whole_volume_grid(image, spacing_mm)
    lower, upper = _bbox_index(sitk.GetArrayViewFromImage(mask))
    # Voxel extents, not centres: half a voxel beyond the extreme centres.
    corners_idx = _corners(lower - 0.5, upper + 0.5)
    corners_mm = _physical(image.GetOrigin(), image.GetSpacing(), image.GetDirection(), corners_idx)
    out_idx = _continuous_index(full.origin, full.spacing, full.direction, corners_mm)
    margin_vox = np.ceil(margin_mm / np.asarray(full.spacing))
    start = np.maximum(np.floor(out_idx.min(axis=0)) - margin_vox, 0).astype(int)
    stop = np.minimum(np.ceil(out_idx.max(axis=0)) + margin_vox, np.asarray(full.size) - 1).astype(int)
    origin = _physical(full.origin, full.spacing, full.direction, start[None, :].astype(float))[0]
    return Grid(_ints3(stop - start + 1), full.spacing, _floats3(origin), full.direction)


def _input_region(image: sitk.Image, grid: Grid) -> tuple[list[int], list[int]]:
    corners_out = _corners(np.zeros(3), np.asarray(grid.size) - 1.0)
    corners_mm = _physical(grid.origin, grid.spacing, grid.direction, corners_out)
    in_idx = _continuous_index(image.GetOrigin(), image.GetSpacing(), image.GetDirection(), corners_mm)
    size_in = np.asarray(image.GetSize())
    start = np.clip(np.floor(in_idx.min(axis=0)) - _INPUT_PAD_VOXELS, 0, size_in - 1).astype(int)
    stop = np.clip(np.ceil(in_idx.max(axis=0)) + _INPUT_PAD_VOXELS, 0, size_in - 1).astype(int)
    return [int(v) for v in start], [int(v) for v in stop - start + 1]


def resample_to(image: sitk.Image, grid: Grid, *, interpolator, default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (identity transform)."""
    return sitk.Resample(image, list(grid.size), sitk.Transform(), interpolator, list(grid.origin),
                         list(grid.spacing), list(grid.direction), default_value, image.GetPixelID())


def crop_and_resample(image, mask: sitk.Image, spacing_mm, margin_mm: float,
                      *, default_value: float | None = None, grid: Grid | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Resample the ROI neighbourhood of ``image`` (linear) and ``mask`` (nearest) to ``spacing_mm``.

    Equal, inside the crop, to resampling the whole volume onto :func:`whole_volume_grid`.
    ``image`` is a SimpleITK image or an :class:`engine.io.ImageSource`, of which only the
    crop's input box is read (a DICOM series decodes those slices alone). Output points beyond
    the image's edge take ``default_value``, by default the lowest intensity of that box (air
    for CT, so such voxels fall outside the window). ``grid``: resample onto this sub-box of the
    whole-volume grid instead of the ROI's crop (:func:`whole_slices`).
    """
    if grid is None:
        grid = crop_grid(image, mask, spacing_mm, margin_mm)
    index, size = _input_region(image, grid)
    if isinstance(image, sitk.Image):
        image_crop = sitk.RegionOfInterest(image, size, index)
    else:
        image_crop = image.read(index, size)
    if default_value is None:
        default_value = float(np.min(sitk.GetArrayViewFromImage(image_crop)))
    mask_crop = sitk.RegionOfInterest(mask, size, index)
    resampled = resample_to(image_crop, grid, interpolator=sitk.sitkLinear, default_value=default_value)
    resampled_mask = resample_to(mask_crop, grid, interpolator=sitk.sitkNearestNeighbor)
    return resampled, resampled_mask


def whole_slices(crop: Grid, full: Grid) -> Grid:
    """``crop`` widened in-plane to the whole field of view (same slices, same output lattice).

    The MRI reference tissue (subcutaneous fat) lies at the body's edge, beyond the ROI's crop
    margin: it is measured on whole slices, N4-corrected together with the ROI.
    """
    start = np.rint(_continuous_index(full.origin, full.spacing, full.direction, np.asarray(crop.origin)))
    start = np.array([0, 0, int(start[2])])
    origin = _physical(full.origin, full.spacing, full.direction, start[None, :].astype(float))[0]
    return Grid((full.size[0], full.size[1], crop.size[2]), full.spacing, _floats3(origin),
                full.direction)


def sub_box(image: sitk.Image, box: Grid) -> sitk.Image:
    """The part of ``image`` on ``box``, a sub-box of the same output lattice (no resampling)."""
    start = np.rint(_continuous_index(image.GetOrigin(), image.GetSpacing(), image.GetDirection(),
                                      np.asarray(box.origin))).astype(int)
    return sitk.RegionOfInterest(image, list(box.size), [int(v) for v in start])


def n4_correct(image: sitk.Image, *, shrink_factor: int = 4, iterations=(50, 50, 50, 50),
               convergence_threshold: float = 1e-6) -> sitk.Image:
    """N4 bias-field correction (Tustison 2010, SimpleITK), estimated on a shrunk image.

    The field is estimated inside an Otsu foreground mask (tissue, not air) and applied at full
    resolution. One ITK thread: N4's threaded B-spline fit is not bit-reproducible across thread
    counts, and the engine promises identical features whatever the worker layout.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        raise InputError("preprocess", "MRI contains non-finite values; N4 cannot run")
    foreground = sitk.OtsuThreshold(image, 0, 1, 200)
    foreground = sitk.And(foreground, sitk.Cast(image > 0, sitk.sitkUInt8))
    if not sitk.GetArrayViewFromImage(foreground).any():
        raise InputError("preprocess", "MRI has no foreground tissue around the ROI for N4 (all voxels <= 0?)")
    factors = [max(1, min(shrink_factor, n // 4)) for n in image.GetSize()]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(foreground, factors)
    log_field = _fitted_n4(small, small_mask, iterations, convergence_threshold).GetLogBiasFieldAsImage(image)
    return sitk.Cast(image / sitk.Exp(log_field), sitk.sitkFloat32)


def _fitted_n4(small: sitk.Image, mask: sitk.Image, iterations, convergence_threshold: float):
    """SimpleITK's N4 filter after fitting ``small`` inside ``mask`` on one ITK thread (its threaded
    B-spline fit is not bit-reproducible across thread counts); read its field on any grid."""
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetConvergenceThreshold(convergence_threshold)
    corrector.SetNumberOfThreads(1)
    corrector.Execute(small, mask)
    return corrector


#: Fraction of the slab's 98th signal percentile above which a voxel is tissue for N4 (air and
#: the noise floor below; every tissue, dark muscle included, above: an Otsu split of a T2 slab
#: would keep only the bright fat and CSF and leave the muscle's field to extrapolation).
N4_TISSUE_FRACTION = 0.05


def _native_region(image, index: list[int], size: list[int]) -> sitk.Image:
    """The input voxels of ``image`` (a SimpleITK image or an :class:`engine.io.ImageSource`) in a box."""
    if isinstance(image, sitk.Image):
        return sitk.RegionOfInterest(image, size, index)
    return image.read(index, size)


def n4_tissue_mask(image: sitk.Image) -> sitk.Image:
    """uint8: the voxels of ``image`` above :data:`N4_TISSUE_FRACTION` x its 98th percentile."""
    array = sitk.GetArrayViewFromImage(image)
    mask = sitk.GetImageFromArray((array > N4_TISSUE_FRACTION * np.percentile(array, 98)).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


@dataclass(frozen=True)
class SeriesField:
    """One MRI series' bias field (:func:`series_log_field`) and the whole slices it was fitted on.

    ``log_field`` is on the grid N4 ran on (``n4_shrink_factor``); ``native`` is the slices as read,
    ``box`` their grid. :attr:`slab` is made only when a check needs it.
    """

    log_field: sitk.Image
    native: sitk.Image
    box: Grid

    @cached_property
    def slab(self) -> sitk.Image:
        """The slices at :data:`CHECK_SLAB_SHRINK`, corrected by the field (float32)."""
        return apply_log_field(_bin_shrink(self.native, self.box, CHECK_SLAB_SHRINK), self.log_field)


def series_log_field(image, slab: Grid, *, shrink_factor: int = 8, iterations=(50, 50, 50, 50),
                     convergence_threshold: float = 1e-6) -> SeriesField:
    """The log bias field of one MRI series: N4 once, on the native whole slices of ``slab``, shrunk.

    The slices the ROI's crop spans are read at their native resolution (whole field of view:
    the field's scale is the body's, not the ROI's), averaged down (``sitk.BinShrink``) in-plane
    to about ``shrink_factor`` output voxels (8 mm at 1 mm spacing; thick slices are not
    shrunk), and N4 (Tustison 2010, SimpleITK, one ITK thread: its threaded B-spline fit is not
    bit-reproducible across thread counts) estimates the field inside :func:`n4_tissue_mask`.
    The field is on the shrunk grid; :func:`apply_log_field` divides it out of any grid inside
    the slab, so the ROI's crop and the reference's slices share one correction (docs/mri.md).
    """
    index, size = _input_region(image, slab)
    native = sitk.Cast(_native_region(image, index, size), sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(native)
    if not np.isfinite(array).all():
        raise InputError("preprocess", "MRI contains non-finite values; N4 cannot run")
    small = _bin_shrink(native, slab, shrink_factor)
    mask = n4_tissue_mask(small)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise InputError("preprocess", "MRI has no foreground tissue around the ROI for N4 (all voxels <= 0?)")
    log_field = _fitted_n4(small, mask, iterations, convergence_threshold).GetLogBiasFieldAsImage(small)
    return SeriesField(log_field, native, slab)


#: In-plane output voxels per voxel of the corrected slab the fat-suppression check reads when the
#: crop has no subcutaneous fat (4 mm at 1 mm spacing). Finer than N4's own grid: at 8 mm the
#: subcutaneous fat band mixes with skin and air (a real fat-bright Dixon slab read as fat 1.33 x
#: muscle, "fat-suppressed"; 2.5-4 at 4 mm).
CHECK_SLAB_SHRINK = 4


def _bin_shrink(native: sitk.Image, slab: Grid, shrink_factor: int) -> sitk.Image:
    """``native`` averaged down (``sitk.BinShrink``) to about ``shrink_factor`` output voxels of
    ``slab`` per voxel in each direction (never below 4 voxels; thick slices are not shrunk)."""
    factors = [max(1, min(int(round(shrink_factor * out / spacing)), n // 4))
               for out, spacing, n in zip(slab.spacing, native.GetSpacing(), native.GetSize(), strict=True)]
    return sitk.BinShrink(native, factors)


def apply_log_field(volume: sitk.Image, log_field: sitk.Image) -> sitk.Image:
    """``volume / exp(log_field)``, the field linearly interpolated onto ``volume``'s grid (float32)."""
    on_grid = sitk.Resample(log_field, volume, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
    return sitk.Cast(sitk.Cast(volume, sitk.sitkFloat32) / sitk.Exp(on_grid), sitk.sitkFloat32)


def preprocess(image: sitk.Image, mask: sitk.Image, *, spacing_mm=(1.0, 1.0, 1.0), margin_mm: float = 5.0,
               window=None, n4: bool = False, n4_shrink_factor: int = 8, n4_iterations=(50, 50, 50, 50),
               n4_convergence_threshold: float = 1e-6, default_value: float | None = None,
               standardize: str = "none", standardize_target: float = 1000.0,
               reference: str = "auto") -> RoiSample:
    """Image + mask on the same grid -> the patient's ROI sample in the resampled space.

    Parameters
    ----------
    image : sitk.Image or engine.io.ImageSource
        float32, HU for CT; of a source, only the ROI's neighbourhood is read.
    mask : sitk.Image
        uint8 on the image grid, non-zero = ROI (see :func:`engine.io.read_mask`).
    spacing_mm : (3,) floats
        Output spacing (x, y, z).
    margin_mm : float
        Margin around the ROI bounding box kept for interpolation (and N4's context).
    window : (low, high) or None
        Voxels outside ``[low, high]`` are kept in the sample but flagged (``in_window``).
    n4 : bool
        N4 bias-field correction of the resampled crop (MRI).
    standardize : {"none", "reference"}
        ``reference`` (MRI): measure the reference tissues outside the ROI (CSF in the spinal
        canal, subcutaneous fat; :mod:`engine.measure.standardize`) on the N4-corrected crop, or on
        whole N4-corrected axial slices when the crop has no reliable one, pick one
        (``reference``: ``auto``, ``csf`` or ``subcutaneous_fat``) and scale the signal so
        that it lands on ``standardize_target``. ``none``: the study's processing.
    """
    mask_array = sitk.GetArrayViewFromImage(mask)
    if not mask_array.any():
        raise InputError("mask", "ROI mask is empty")
    crop = crop_grid(image, mask, spacing_mm, margin_mm)
    field = None
    if n4:   # one N4 per series, on its whole slices shrunk; the crop and the reference share it
        field = series_log_field(image, whole_slices(crop, whole_volume_grid(image, spacing_mm)),
                                     shrink_factor=n4_shrink_factor, iterations=n4_iterations,
                                     convergence_threshold=n4_convergence_threshold)
    resampled, resampled_mask = _resampled_region(image, mask, spacing_mm, margin_mm, crop, default_value,
                                                  field)
    standardization = reference_region = None
    if standardize == "reference":
        resampled, resampled_mask, standardization, reference_region = _standardize_on_reference(
            image, mask, (spacing_mm, margin_mm, default_value, field), crop, resampled, resampled_mask,
            standardize_target, reference)
    roi = sitk.GetArrayViewFromImage(resampled_mask).ravel() != 0
    flat_index = np.flatnonzero(roi).astype(np.int64)
    if flat_index.size == 0:
        raise InputError("preprocess", "the ROI vanishes after resampling to "
                         f"{'x'.join(f'{s:g}' for s in spacing_mm)} mm (thinner than one output voxel)")
    volume = sitk.GetArrayViewFromImage(resampled)
    values = volume.ravel()[flat_index].astype(np.float32)
    roi_per_slice = sitk.GetArrayViewFromImage(resampled_mask).reshape(volume.shape[0], -1).astype(bool).sum(axis=1)
    preview_z = int(np.argmax(roi_per_slice))
    if window is None:
        in_window = np.ones(values.size, bool)
    else:
        low, high = window
        in_window = (values >= low) & (values <= high)
    return RoiSample(values, flat_index, in_window, Grid.of(resampled), np.array(volume[preview_z], np.float32),
                     preview_z, standardization,
                     None if reference_region is None else np.array(reference_region[preview_z], bool))


def _resampled_region(image, mask: sitk.Image, spacing_mm, margin_mm: float, grid: Grid,
                      default_value: float | None, field: SeriesField | None) -> tuple[sitk.Image, sitk.Image]:
    """``grid``'s resampled image (the series' bias field divided out when ``field``) and mask."""
    resampled, resampled_mask = crop_and_resample(image, mask, spacing_mm, margin_mm, default_value=default_value,
                                                  grid=grid)
    if field is not None:
        resampled = apply_log_field(resampled, field.log_field)
    return resampled, resampled_mask


def _standardize_on_reference(image, mask: sitk.Image, resample_args: tuple, crop: Grid, resampled: sitk.Image,
                              resampled_mask: sitk.Image, target: float,
                              reference: str) -> tuple[sitk.Image, sitk.Image, dict, np.ndarray | None]:
    """(the crop scaled to its reference, the crop's mask, what was measured, the reference's
    region on the crop grid (Z, Y, X) bool, for QA).

    Every grid here is corrected by the series' one field (:func:`series_log_field`), so the ROI's
    values and the reference share one correction. The references are first looked for on the
    ROI's crop (the canal lies between the muscles, so CSF is always there; posterior fat with its
    air edge often is). When no reliable reference is found there, whole axial slices are resampled,
    corrected by the same field, the references measured on them and the crop cut back out. When the
    crop has no usable subcutaneous fat, it is measured on the series' corrected 4 mm slab, for
    the fat-suppression check alone (a fat-suppressed series is this patient's error); the recorded
    fat/CSF ratio (the per-scanner check) stays the crop's (the slab's partial volume would flag it).
    """

    def measure(volume_image: sitk.Image, roi_image: sitk.Image):
        return measure_references(sitk.GetArrayViewFromImage(volume_image),
                                  sitk.GetArrayViewFromImage(roi_image) != 0, volume_image.GetSpacing())

    measured = measure(resampled, resampled_mask)
    try:
        chosen, reason, flag = choose_reference(measured, reference)
    except InputError:
        chosen, flag = None, "none on the crop"
    measured_on = f"the ROI's crop (+{resample_args[1]:g} mm)"
    if chosen is None or flag:
        spacing_mm, margin_mm, default_value, field = resample_args
        region = whole_slices(crop, whole_volume_grid(image, spacing_mm))
        wide, wide_mask = _resampled_region(image, mask, spacing_mm, margin_mm, region, default_value, field)
        measured = measure(wide, wide_mask)
        chosen, reason, flag = choose_reference(measured, reference)
        resampled, resampled_mask = sub_box(wide, crop), sub_box(wide_mask, crop)
        measured_on = "whole slices"
    field, checked = resample_args[3], measured
    if not measured["subcutaneous_fat"].usable and field is not None:   # the shrunk slab: this check only
        checked = {**measured, "subcutaneous_fat": _slab_fat(field, mask)}
    roi_values = sitk.GetArrayViewFromImage(resampled)[sitk.GetArrayViewFromImage(resampled_mask) != 0]
    suppressed = fat_suppression_problem(checked, roi_values)
    if suppressed:
        raise InputError("preprocess", suppressed)
    record = standardization_record(measured, chosen, reason, flag, target)
    record["measured_on"] = measured_on
    reference_region = chosen.region_mask
    if reference_region is not None and measured_on == "whole slices":
        region_image = sitk.GetImageFromArray(reference_region.astype(np.uint8))
        region_image.CopyInformation(wide)
        reference_region = sitk.GetArrayFromImage(sub_box(region_image, crop)) != 0
    return sitk.Cast(resampled * record["scale"], sitk.sitkFloat32), resampled_mask, record, reference_region


def _slab_fat(field: SeriesField, mask: sitk.Image):
    """Subcutaneous fat on the corrected slab (:data:`CHECK_SLAB_SHRINK`; the ROI resampled onto it)."""
    roi = sitk.Resample(mask, field.slab, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return subcutaneous_fat_measurement(sitk.GetArrayViewFromImage(field.slab),
                                        sitk.GetArrayViewFromImage(roi) != 0, field.slab.GetSpacing())


__all__ = ["Grid", "NativeRoi", "RoiSample", "SeriesField", "apply_log_field", "crop_and_resample", "crop_grid",
           "n4_correct", "n4_tissue_mask", "native_roi", "preprocess", "resample_to", "series_log_field", "sub_box",
           "whole_slices", "whole_volume_grid"]
