"""Read an ROI mask and put it on the image's grid.

Formats:

* NIfTI / NRRD / MetaImage label maps: non-zero = ROI, or the voxels whose value is in
  ``labels``;
* 3D Slicer segmentations (``.seg.nrrd``): one 3-D layer, or several layers stored as a 4-D
  (vector) image; segments described by the ``Segment{i}_Name``, ``Segment{i}_LabelValue`` and
  ``Segment{i}_Layer`` header keys; select with ``segments`` (names or IDs) or ``labels``
  (label values); default every segment;
* DICOM-SEG (binary or fractional): frames placed by their PlanePositionSequence along the
  shared orientation (read with pydicom); select with ``segments`` (SegmentLabel) or ``labels``
  (SegmentNumber); default every segment.

The binary mask (uint8 0/1) is returned on the reference image's grid. A mask on another grid
is resampled with nearest neighbour (:func:`SimpleITK.Resample`, identity transform) as MRI
preprocessing pipelines do (docs/method.md section 2, step 2). Masks with nothing selected, and masks
that do not overlap the image in physical space, raise :class:`engine.errors.InputError`
(stage ``mask``).
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from engine.errors import InputError
from engine.io.dicom import format_mm, scan_dicom_folder
from engine.io.geometry import first_item, functional_group_value, same_orientation, slice_axes, worst_tilt
from engine.io.volumes import _check_access, image_format, read_volume_file

__all__ = ["read_mask", "read_mask_native", "same_grid", "physical_bounds", "seg_nrrd_segments", "GRID_TOLERANCE"]

STAGE = "mask"

#: Two grids are the same when sizes match and spacing/origin/direction differ by at most this.
GRID_TOLERANCE = 1e-4

_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


# --------------------------------------------------------------------------- geometry helpers


def same_grid(a, b, tolerance: float = GRID_TOLERANCE) -> bool:
    """True when two SimpleITK images share size, and spacing/origin/direction within ``tolerance``."""
    if a.GetDimension() != b.GetDimension() or tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        if np.max(np.abs(np.subtract(getattr(a, getter)(), getattr(b, getter)()))) > tolerance:
            return False
    return True


def physical_bounds(image, index_min=None, index_max=None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (mm, LPS) of a block of voxel centres.

    Parameters
    ----------
    image : SimpleITK.Image
    index_min, index_max : (x, y, z) int, optional
        Inclusive voxel index range; default the whole image.

    Returns
    -------
    low, high : (3,) ndarray, mm
        Component-wise min and max over the 8 corner voxel centres.
    """
    size = image.GetSize()
    lo = [0, 0, 0] if index_min is None else [int(v) for v in index_min]
    hi = [s - 1 for s in size] if index_max is None else [int(v) for v in index_max]
    corners = []
    for cx in (lo[0], hi[0]):
        for cy in (lo[1], hi[1]):
            for cz in (lo[2], hi[2]):
                corners.append(image.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz))))
    points = np.asarray(corners)
    return points.min(axis=0), points.max(axis=0)


def format_box(low: np.ndarray, high: np.ndarray) -> str:
    """An axis-aligned physical box for a message: ``x [lo, hi], y [..], z [..]`` (mm)."""
    return ", ".join(
        f"{axis} [{format_mm(lo)}, {format_mm(hi)}]" for axis, lo, hi in zip("xyz", low, high, strict=True)
    )


def _roi_bounds(mask) -> tuple[np.ndarray, np.ndarray]:

    array = sitk.GetArrayViewFromImage(mask)
    zz, yy, xx = np.nonzero(array)
    return physical_bounds(mask, (xx.min(), yy.min(), zz.min()), (xx.max(), yy.max(), zz.max()))


def _binary_image(selected: np.ndarray, like):
    """uint8 0/1 SimpleITK image from a boolean (Z, Y, X) array with the geometry of ``like``."""

    image = sitk.GetImageFromArray(selected.astype(np.uint8))
    image.SetSpacing(like.GetSpacing())
    image.SetOrigin(like.GetOrigin())
    image.SetDirection(like.GetDirection())
    return image


def _values_found(values: Iterable) -> str:
    found = sorted({float(v) for v in values if v != 0})
    text = ", ".join(f"{v:g}" for v in found[:20])
    if len(found) > 20:
        text += f", ... ({len(found)} values)"
    return text or "none (the mask is all zero)"


# --------------------------------------------------------------------------- label maps


def _as_3d(image, path):
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(STAGE, f"ROI mask is {image.GetDimension()}-D; a 3-D label map is needed: {path}")
    return image


def _read_label_map(path, labels, max_voxels):
    image = _as_3d(read_volume_file(path, stage=STAGE, what="ROI mask file", max_voxels=max_voxels), path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            STAGE,
            f"ROI mask has {image.GetNumberOfComponentsPerPixel()} components per voxel; a label map is needed "
            "(for a multi-layer 3D Slicer segmentation, name the file .seg.nrrd)",
        )
    values = sitk.GetArrayViewFromImage(image)
    if labels is None:
        selected = values != 0
    else:
        wanted = [float(v) for v in labels]
        selected = np.isin(values, wanted)
        if not selected.any() and values.any():
            raise InputError(
                STAGE,
                f"ROI mask has none of the labels {', '.join(f'{v:g}' for v in wanted)} (config labels); "
                f"labels found: {_values_found(np.unique(values))}",
            )
    return _binary_image(selected, image)


# --------------------------------------------------------------------------- 3D Slicer .seg.nrrd


def seg_nrrd_segments(image) -> list[dict]:
    """Segments described in a 3D Slicer ``.seg.nrrd`` header.

    Returns
    -------
    list of dict
        ``index``, ``id``, ``name``, ``label_value`` (default 1), ``layer`` (default 0), in
        header order.
    """
    keys = set(image.GetMetaDataKeys())
    segments = []
    index = 0
    while any(key.startswith(f"Segment{index}_") for key in keys):

        def get(suffix: str, default=None, index=index):
            key = f"Segment{index}_{suffix}"
            return image.GetMetaData(key).strip() if key in keys else default

        try:
            label_value = int(float(get("LabelValue", "1")))
            layer = int(float(get("Layer", "0")))
        except ValueError:
            raise InputError(
                STAGE, f"3D Slicer segmentation has an invalid LabelValue/Layer for segment {index}"
            ) from None
        segments.append(
            {
                "index": index,
                "id": get("ID", f"Segment_{index}"),
                "name": get("Name", get("ID", f"Segment_{index}")),
                "label_value": label_value,
                "layer": layer,
            }
        )
        index += 1
    return segments


def _match_segments(available: list[dict], segments, labels, label_key: str, kind: str) -> list[dict]:
    """Segments named in ``segments`` (name or ID, exact then case-insensitive) or numbered in ``labels``."""
    if segments is None and labels is None:
        return list(available)
    chosen: list[dict] = []
    missing: list[str] = []
    for wanted in segments or ():
        matches = [s for s in available if s["name"] == wanted or s.get("id") == wanted]
        if not matches:
            matches = [s for s in available if str(s["name"]).lower() == str(wanted).lower()]
        if not matches:
            missing.append(f"'{wanted}'")
        chosen += [s for s in matches if s not in chosen]
    for wanted in labels or ():
        matches = [s for s in available if s[label_key] == int(wanted)]
        if not matches:
            missing.append(f"label {int(wanted)}")
        chosen += [s for s in matches if s not in chosen]
    if not chosen:
        listing = ", ".join(f"'{s['name']}' (label {s[label_key]})" for s in available) or "none"
        raise InputError(
            STAGE, f"{kind} has no segment {', '.join(missing)} (config segments/labels); segments found: {listing}"
        )
    return chosen


def _read_seg_nrrd(path, labels, segments, max_voxels):
    image = read_volume_file(path, stage=STAGE, what="ROI mask file", max_voxels=max_voxels)
    if image.GetDimension() == 4:
        # a 4-D scalar NRRD (layers as the 4th axis) rather than a vector image
        size = list(image.GetSize())
        layers = [sitk.Extract(image, size[:3] + [0], [0, 0, 0, k]) for k in range(size[3])]
        image = sitk.Compose(layers) if len(layers) > 1 else layers[0]
    image = _as_3d(image, path)
    available = seg_nrrd_segments(image)
    values = sitk.GetArrayViewFromImage(image)  # (Z, Y, X) or (Z, Y, X, layers)
    n_layers = image.GetNumberOfComponentsPerPixel()
    if not available:
        # a plain label map that happens to be named .seg.nrrd
        if n_layers != 1:
            raise InputError(STAGE, "3D Slicer segmentation has several layers but no Segment*_ header keys")
        if segments is not None:
            raise InputError(
                STAGE, "3D Slicer segmentation has no segment names in its header; select with labels instead"
            )
        return _read_label_map(path, labels, max_voxels)
    chosen = _match_segments(available, segments, labels, "label_value", "3D Slicer segmentation")
    selected = np.zeros(image.GetSize()[::-1], dtype=bool)
    for segment in chosen:
        if not 0 <= segment["layer"] < n_layers:
            raise InputError(
                STAGE,
                f"3D Slicer segment '{segment['name']}' is in layer {segment['layer']}, "
                f"but the file has {n_layers} layer(s)",
            )
        layer = values if n_layers == 1 else values[..., segment["layer"]]
        selected |= layer == segment["label_value"]
    scalar_like = sitk.VectorIndexSelectionCast(image, 0) if n_layers > 1 else image
    return _binary_image(selected, scalar_like)


# --------------------------------------------------------------------------- DICOM-SEG


def _dicom_seg_dataset(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), force=False)
    except InvalidDicomError:
        raise InputError(
            STAGE,
            "ROI mask file is not a DICOM file nor a known mask format "
            f"(.nii, .nii.gz, .nrrd, .seg.nrrd, DICOM-SEG): {path}",
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise InputError(STAGE, f"ROI mask file could not be read ({type(exc).__name__}; truncated?): {path}") from None
    if str(ds.get("SOPClassUID", "")) != _SEG_SOP_CLASS and str(ds.get("Modality", "")).upper() != "SEG":
        raise InputError(
            STAGE,
            f"ROI mask file is a DICOM {ds.get('Modality', 'object')} object, not a DICOM Segmentation (SEG): {path}",
        )
    return ds


def _read_dicom_seg(path, labels, segments, max_voxels, frame_of_reference_uid=None):
    """A DICOM-SEG's chosen segments as a 0/1 volume in the frame its functional groups describe."""
    ds = _dicom_seg_dataset(path)
    _check_seg_frame_of_reference(ds, frame_of_reference_uid)
    available = [
        {"name": str(item.get("SegmentLabel", "")), "number": int(item.SegmentNumber), "id": str(item.SegmentNumber)}
        for item in ds.get("SegmentSequence", [])
    ]
    chosen_numbers = {s["number"] for s in _match_segments(available, segments, labels, "number", "DICOM-SEG")}
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if max_voxels is not None and rows * cols * n_frames > max_voxels:
        raise InputError(STAGE, f"DICOM-SEG header claims {rows} x {cols} x {n_frames} voxels, more than the limit "
                                f"of {max_voxels} (io.max_voxels_per_volume)")
    plane = _seg_plane(ds, n_frames)
    frames = _seg_frames(ds)
    slot, step = _seg_slots(plane)
    selected = np.zeros((int(slot.max()) + 1, rows, cols), dtype=bool)
    for i, number in enumerate(plane["numbers"]):
        if number in chosen_numbers:
            selected[slot[i]] |= frames[i]
    return _binary_image(selected, _seg_reference_image(plane, step, rows, cols))


def _check_seg_frame_of_reference(ds, frame_of_reference_uid: str | None) -> None:
    seg_frame = str(ds.get("FrameOfReferenceUID", "") or "")
    if frame_of_reference_uid and seg_frame and seg_frame != frame_of_reference_uid:
        # positions in another frame of reference are not comparable with the image's, even
        # when they happen to overlap
        raise InputError(
            STAGE,
            "ROI mask (DICOM-SEG) was drawn in another frame of reference than the image "
            "(FrameOfReferenceUID differs): it belongs to another series or study; export the "
            "segmentation of this series",
        )


def _seg_plane(ds, n_frames: int) -> dict:
    """Each frame's position and segment number, the stack's axes and pixel measures (functional groups)."""
    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != n_frames:
        raise InputError(
            STAGE, "DICOM-SEG has no per-frame functional groups; its frames cannot be placed in physical space"
        )

    def lookup(item, sequence, keyword):
        return functional_group_value(item, shared, sequence, keyword)

    orientation = lookup(per_frame[0], "PlaneOrientationSequence", "ImageOrientationPatient")
    pixel_spacing = lookup(per_frame[0], "PixelMeasuresSequence", "PixelSpacing")
    if orientation is None or pixel_spacing is None:
        raise InputError(
            STAGE,
            "DICOM-SEG has no PlaneOrientationSequence/PixelMeasuresSequence; it cannot be placed in physical space",
        )
    orientation = [float(v) for v in orientation]
    orientations, positions, numbers = [], [], []
    for index, item in enumerate(per_frame):
        frame_orientation = lookup(item, "PlaneOrientationSequence", "ImageOrientationPatient")
        orientations.append([float(v) for v in frame_orientation] if frame_orientation is not None else orientation)
        position = lookup(item, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            raise InputError(
                STAGE, f"DICOM-SEG frame {index + 1} has no ImagePositionPatient; it cannot be placed in physical space"
            )
        positions.append([float(v) for v in position])
        number = lookup(item, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        numbers.append(int(number) if number is not None else 1)
    if not same_orientation(orientations):
        raise InputError(STAGE, "DICOM-SEG frames have different orientations; it is not one volume")
    axes = slice_axes(orientation)
    if axes is None:
        raise InputError(STAGE, "DICOM-SEG has non-orthogonal ImageOrientationPatient cosines")
    measures = {k: lookup(per_frame[0], "PixelMeasuresSequence", k) for k in ("SpacingBetweenSlices", "SliceThickness")}
    return {"axes": axes, "positions": np.asarray(positions), "numbers": numbers,
            "pixel_spacing": [float(v) for v in pixel_spacing], **measures}


def _seg_frames(ds) -> np.ndarray:
    """(frames, rows, cols) bool: each frame's pixels in its segment (fractional: occupancy > 0.5)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001
        raise InputError(STAGE, f"DICOM-SEG pixel data could not be decoded ({type(exc).__name__})") from None
    if frames.ndim == 2:
        frames = frames[None]
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        return frames > maximum / 2.0
    return frames != 0


def _seg_slots(plane: dict) -> tuple[np.ndarray, float]:
    """Each frame's slice index on the stack's regular grid, and the grid's step (mm).

    The step is SpacingBetweenSlices when declared, else the smallest distinct step, else the
    slice thickness (one slice). A stack off that grid, or tilted, cannot be a volume.
    """
    normal = plane["axes"][2]
    positions = plane["positions"]
    distances = positions @ normal
    unique_d = np.unique(np.round(distances, 3))
    declared, thickness = plane["SpacingBetweenSlices"], plane["SliceThickness"]
    if declared is not None and float(declared) > 0:
        step = float(declared)
    elif unique_d.size > 1:
        step = float(np.min(np.diff(unique_d)))
    else:
        step = float(thickness) if thickness is not None and float(thickness) > 0 else 1.0
    first = int(np.argmin(distances))
    slot = np.rint((distances - distances[first]) / step).astype(int)
    if np.max(np.abs((distances - distances[first]) - slot * step)) > 0.1 * step:
        raise InputError(STAGE, "DICOM-SEG frames are not on a regular slice grid; it cannot be rebuilt as a volume")
    if worst_tilt(positions[np.argsort(distances, kind="stable")], normal) is not None:
        raise InputError(
            STAGE, "DICOM-SEG frames are shifted in-plane (tilted stack); it cannot be rebuilt as a volume"
        )
    plane["origin"] = positions[first]
    return slot, step


def _seg_reference_image(plane: dict, step: float, rows: int, cols: int):
    row_cosine, col_cosine, normal = plane["axes"]
    image = sitk.Image(cols, rows, 1, sitk.sitkUInt8)  # carries the geometry only
    spacing = plane["pixel_spacing"]
    image.SetSpacing((spacing[1], spacing[0], step))
    image.SetOrigin(tuple(float(v) for v in plane["origin"]))
    image.SetDirection(tuple(np.column_stack([row_cosine, col_cosine, normal]).reshape(-1).tolist()))
    return image


# --------------------------------------------------------------------------- public API


def mask_format(path) -> str:
    """``seg.nrrd``, ``dicom-seg``, ``dicom-folder`` or a label-map suffix (``.nii.gz``...)."""
    kind = image_format(path)
    return "dicom-seg" if kind == "dicom-file" else kind


def _seg_file_in_folder(folder: pathlib.Path) -> pathlib.Path:

    try:
        found = scan_dicom_folder(folder)
    except InputError as error:
        raise InputError(STAGE, error.reason) from None
    series = [s for s in found if s.modality.upper() == "SEG"]
    files = [f for s in series for f in s.files]
    if len(files) != 1:
        raise InputError(
            STAGE,
            f"ROI mask folder holds {len(files)} DICOM-SEG files; "
            f"point the manifest at the one SEG file to use: {folder}",
        )
    return files[0]


def read_mask_native(
    path,
    *,
    labels: Sequence | None = None,
    segments: Sequence[str] | None = None,
    max_voxels: int | None = 400_000_000,
    frame_of_reference_uid: str | None = None,
):
    """Read and select a mask on its own grid: uint8 0/1 SimpleITK image (no resampling, no emptiness check).

    ``frame_of_reference_uid``: the image's; a DICOM-SEG of another frame of reference is refused.
    """
    target = _check_access(path, STAGE, "ROI mask file")
    kind = mask_format(target)
    if kind == "dicom-folder":
        target = _seg_file_in_folder(target)
        kind = "dicom-seg"
    if kind == "seg.nrrd":
        return _read_seg_nrrd(target, labels, segments, max_voxels)
    if kind == "dicom-seg":
        return _read_dicom_seg(target, labels, segments, max_voxels, frame_of_reference_uid)
    return _read_label_map(target, labels, max_voxels)


def read_mask(
    path,
    reference,
    *,
    labels: Sequence | None = None,
    segments: Sequence[str] | None = None,
    max_voxels: int | None = 400_000_000,
    frame_of_reference_uid: str | None = None,
):
    """Read an ROI mask and return it as uint8 0/1 on the reference image's grid.

    Parameters
    ----------
    path : path-like
        NIfTI/NRRD/MetaImage label map, 3D Slicer ``.seg.nrrd``, or DICOM-SEG file (or a
        folder holding exactly one DICOM-SEG).
    reference : SimpleITK.Image or engine.io.ImageSource
        The image the mask belongs to (only its geometry is used); the result has its size,
        spacing, origin and direction.
    labels : sequence of int, optional
        Label values to keep (label maps: voxel values; ``.seg.nrrd``: ``Segment{i}_LabelValue``;
        DICOM-SEG: SegmentNumber). Default: every non-zero value / every segment.
    segments : sequence of str, optional
        Segment names (``.seg.nrrd`` Name or ID; DICOM-SEG SegmentLabel). A segment is kept
        when it matches ``segments`` or ``labels``. Plain label maps have no names and
        ignore this argument.
    max_voxels : int, optional
        Refuse masks whose header claims more voxels.
    frame_of_reference_uid : str, optional
        The image's FrameOfReferenceUID (DICOM series): a DICOM-SEG drawn in another frame of
        reference is refused even where its positions overlap the image.

    Returns
    -------
    SimpleITK.Image
        uint8, 1 inside the ROI, on the reference grid.

    Raises
    ------
    InputError
        Unreadable file, unknown labels/segments, an empty mask ("ROI mask is empty"), or a
        mask that does not overlap the image (both physical extents given, in mm).

    Notes
    -----
    A mask whose size differs, or whose spacing, origin or direction differ by more than
    :data:`GRID_TOLERANCE`, is resampled onto the reference grid with nearest neighbour
    (identity transform); otherwise its voxels are taken as they are.
    """

    if reference.GetDimension() != 3:
        raise ValueError(f"reference must be a 3-D image; got {reference.GetDimension()}-D")
    native = read_mask_native(path, labels=labels, segments=segments, max_voxels=max_voxels,
                              frame_of_reference_uid=frame_of_reference_uid)
    if not sitk.GetArrayViewFromImage(native).any():
        raise InputError(STAGE, "ROI mask is empty (every voxel is 0): the segmentation was not saved, or another "
                                "file was exported; re-export the ROI")
    if same_grid(native, reference):
        # the mask is freshly read and ours: take the reference's exact geometry in place, no copy
        native.SetSpacing(reference.GetSpacing())
        native.SetOrigin(reference.GetOrigin())
        native.SetDirection(reference.GetDirection())
        return native
    on_reference = sitk.Resample(native, list(reference.GetSize()), sitk.Transform(), sitk.sitkNearestNeighbor,
                                 reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection(), 0,
                                 sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(on_reference).any():
        mask_low, mask_high = _roi_bounds(native)
        image_low, image_high = physical_bounds(reference)
        raise InputError(
            STAGE,
            "ROI mask does not overlap the image: the ROI spans "
            f"{format_box(mask_low, mask_high)} mm, the image spans {format_box(image_low, image_high)} mm "
            "(patient coordinates, LPS); check that the mask belongs to this image",
        )
    return on_reference
