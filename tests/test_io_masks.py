"""ROI masks: every format back onto the image grid, resampling, and the refusals."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from engine.errors import InputError
from engine.io import read_dicom_series, read_mask, read_mask_native, same_grid
from engine.synthetic import write_dicom_seg, write_dicom_series, write_mask

SHAPE = (10, 32, 40)  # (Z, Y, X)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-12.0, 5.0, -20.0)


def _reference(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    image = sitk.Image(SHAPE[2], SHAPE[1], SHAPE[0], sitk.sitkFloat32)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction)
    return image


def _labels() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:7, 5:15, 6:20] = 1  # "psoas"
    mask[3:9, 18:28, 22:35] = 2  # "erector"
    mask[4, 20:22, 10:12] = 5  # a stray label
    return mask


def _array(image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _check_on_reference(result, reference, expected):
    assert result.GetPixelID() == sitk.sitkUInt8
    assert result.GetSize() == reference.GetSize()
    assert result.GetSpacing() == reference.GetSpacing()
    assert result.GetOrigin() == reference.GetOrigin()
    assert result.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(_array(result), expected.astype(np.uint8))


# --------------------------------------------------------------------------- label maps


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_label_map_round_trip(tmp_path, suffix):
    labels = _labels()
    path = write_mask(tmp_path / f"roi{suffix}", labels, spacing_mm=SPACING, origin_mm=ORIGIN)
    reference = _reference()
    _check_on_reference(read_mask(path, reference), reference, labels != 0)
    _check_on_reference(read_mask(path, reference, labels=[2]), reference, labels == 2)
    _check_on_reference(read_mask(path, reference, labels=[1, 5]), reference, np.isin(labels, [1, 5]))
    with pytest.raises(InputError, match="none of the labels 7") as error:
        read_mask(path, reference, labels=[7])
    assert "labels found: 1, 2, 5" in error.value.reason and error.value.stage == "mask"


def test_float_label_map_with_tiny_geometry_noise_is_not_resampled(tmp_path):
    labels = _labels()
    image = sitk.GetImageFromArray(labels.astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(tuple(o + 5e-5 for o in ORIGIN))  # within the 1e-4 tolerance
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / "roi.nrrd"))
    reference = _reference()
    _check_on_reference(read_mask(tmp_path / "roi.nrrd", reference), reference, labels != 0)


# --------------------------------------------------------------------------- 3D Slicer


def test_seg_nrrd_single_layer(tmp_path):
    labels = _labels()
    path = write_mask(
        tmp_path / "roi.seg.nrrd",
        labels,
        spacing_mm=SPACING,
        origin_mm=ORIGIN,
        segment_names={1: "psoas", 2: "erector", 5: "stray"},
    )
    reference = _reference()
    _check_on_reference(read_mask(path, reference), reference, labels != 0)
    _check_on_reference(read_mask(path, reference, segments=["psoas"]), reference, labels == 1)
    _check_on_reference(read_mask(path, reference, segments=["ERECTOR", "psoas"]), reference, np.isin(labels, [1, 2]))
    _check_on_reference(read_mask(path, reference, segments=["Segment_2"]), reference, labels == 2)  # by ID
    _check_on_reference(read_mask(path, reference, labels=[5]), reference, labels == 5)
    with pytest.raises(InputError, match="no segment 'iliacus'") as error:
        read_mask(path, reference, segments=["iliacus"])
    assert "'psoas' (label 1)" in error.value.reason


def test_seg_nrrd_segment_names_as_a_list(tmp_path):
    labels = _labels()
    labels[labels == 5] = 3
    path = write_mask(
        tmp_path / "roi.seg.nrrd",
        labels,
        spacing_mm=SPACING,
        origin_mm=ORIGIN,
        segment_names=["psoas", "erector", "qlumb"],
    )
    reference = _reference()
    _check_on_reference(read_mask(path, reference, segments=["qlumb"]), reference, labels == 3)


def _write_slicer_multilayer(path, layers: np.ndarray, segments: list[tuple[str, int, int]]):
    """A 4-D seg.nrrd as 3D Slicer writes overlapping segments: 'kinds: list domain domain domain'."""
    n_layers = layers.shape[-1]
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        "type: unsigned char",
        "dimension: 4",
        "space: left-posterior-superior",
        f"sizes: {n_layers} {SHAPE[2]} {SHAPE[1]} {SHAPE[0]}",
        f"space directions: none ({SPACING[0]},0,0) (0,{SPACING[1]},0) (0,0,{SPACING[2]})",
        "kinds: list domain domain domain",
        "encoding: raw",
        f"space origin: ({ORIGIN[0]},{ORIGIN[1]},{ORIGIN[2]})",
        "measurement frame: (1,0,0) (0,1,0) (0,0,1)",
        "Segmentation_MasterRepresentation:=Binary labelmap",
        "Segmentation_ContainedRepresentationNames:=Binary labelmap|",
    ]
    for index, (name, label, layer) in enumerate(segments):
        lines += [f"Segment{index}_ID:=Segment_{index + 1}", f"Segment{index}_Name:={name}",
                  f"Segment{index}_LabelValue:={label}", f"Segment{index}_Layer:={layer}",
                  f"Segment{index}_Color:=0.5 0.5 0.5", f"Segment{index}_Extent:=0 1 0 1 0 1"]
    header = "\n".join(lines) + "\n\n"
    path.write_bytes(header.encode("ascii") + np.ascontiguousarray(layers, dtype=np.uint8).tobytes())
    return path


def test_seg_nrrd_multi_layer(tmp_path):
    # psoas and erector overlap, so Slicer stores them in two layers; layer 0 also holds "fat"
    psoas = np.zeros(SHAPE, bool)
    psoas[2:7, 5:20, 6:25] = True
    erector = np.zeros(SHAPE, bool)
    erector[4:9, 15:28, 20:35] = True
    fat = np.zeros(SHAPE, bool)
    fat[0:2, 0:4, 0:4] = True
    layers = np.zeros(SHAPE + (2,), np.uint8)
    layers[..., 0][psoas] = 1
    layers[..., 0][fat] = 3
    layers[..., 1][erector] = 1
    path = _write_slicer_multilayer(
        tmp_path / "roi.seg.nrrd", layers, [("psoas", 1, 0), ("erector", 1, 1), ("fat", 3, 0)]
    )
    reference = _reference()
    _check_on_reference(read_mask(path, reference, segments=["psoas"]), reference, psoas)
    _check_on_reference(read_mask(path, reference, segments=["erector"]), reference, erector)
    _check_on_reference(read_mask(path, reference, segments=["psoas", "erector"]), reference, psoas | erector)
    _check_on_reference(read_mask(path, reference, labels=[3]), reference, fat)
    _check_on_reference(read_mask(path, reference), reference, psoas | erector | fat)


# --------------------------------------------------------------------------- DICOM-SEG


@pytest.fixture
def ct_series(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 2000, size=SHAPE).astype(np.uint16)
    files = write_dicom_series(
        tmp_path / "ct", stored, spacing_mm=SPACING, origin_mm=ORIGIN, rescale_intercept=-1024, shuffle_seed=5
    )
    image, _ = read_dicom_series(tmp_path / "ct")
    return files, image


def test_dicom_seg_round_trip(tmp_path, ct_series):
    files, image = ct_series
    labels = _labels()
    path = write_dicom_seg(
        tmp_path / "roi_seg.dcm", labels, files, segment_names={1: "psoas", 2: "erector", 5: "stray"}
    )
    assert pydicom.dcmread(path, stop_before_pixels=True).Modality == "SEG"
    _check_on_reference(read_mask(path, image), image, labels != 0)
    _check_on_reference(read_mask(path, image, segments=["erector"]), image, labels == 2)
    # segment numbers follow the label order: 1 -> 1, 2 -> 2, 5 -> 3
    _check_on_reference(read_mask(path, image, labels=[1, 3]), image, np.isin(labels, [1, 5]))
    with pytest.raises(InputError, match="no segment 'liver'") as error:
        read_mask(path, image, segments=["liver"])
    assert "'psoas' (label 1)" in error.value.reason
    # a folder holding the one SEG is accepted too
    (tmp_path / "segdir").mkdir()
    path.rename(tmp_path / "segdir" / "x")
    _check_on_reference(read_mask(tmp_path / "segdir", image), image, labels != 0)


def test_synthetic_dicom_seg_is_reproducible(tmp_path, ct_series):
    """The same mask on the same series writes the same bytes (highdicom's clock and random
    dimension UID pinned): a grown benchmark cache keeps its earlier patients' digests."""
    files, _ = ct_series
    first = write_dicom_seg(tmp_path / "a" / "roi_seg.dcm", _labels(), files).read_bytes()
    second = write_dicom_seg(tmp_path / "b" / "roi_seg.dcm", _labels(), files).read_bytes()
    assert first == second
    seg = pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True)
    uids = {item.DimensionOrganizationUID for item in seg.DimensionIndexSequence}
    assert uids == {seg.DimensionOrganizationSequence[0].DimensionOrganizationUID}


def test_dicom_seg_onto_a_resampled_reference(tmp_path, ct_series):
    files, image = ct_series
    labels = _labels()
    path = write_dicom_seg(tmp_path / "roi_seg.dcm", labels, files)
    finer = sitk.Resample(
        image,
        [80, 64, 25],
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [0.4, 0.45, 1.0],
        image.GetDirection(),
    )
    native = read_mask_native(path)
    assert same_grid(native, image)
    expected = sitk.Resample(native, finer, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    _check_on_reference(read_mask(path, finer), finer, _array(expected))


def test_highdicom_reads_our_seg_like_we_do(tmp_path, ct_series):
    """Independent decode: highdicom's own volume reconstruction of the same SEG file."""
    import highdicom as hd

    files, image = ct_series
    labels = _labels()
    path = write_dicom_seg(tmp_path / "roi_seg.dcm", labels, files)
    seg = hd.seg.segread(path)
    volume = seg.get_volume(combine_segments=True, relabel=True)  # its own slice order and affine
    theirs = sitk.Cast(volume.to_simpleitk() != 0, sitk.sitkUInt8)
    ours = read_mask_native(path)
    # same physical voxels: put theirs on our grid (a pure re-indexing, no interpolation)
    theirs_on_ours = sitk.Resample(theirs, ours, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    np.testing.assert_array_equal(_array(ours), _array(theirs_on_ours))
    assert int(_array(theirs).sum()) == int((labels != 0).sum())
    _check_on_reference(read_mask(path, image), image, labels != 0)


def test_a_ct_image_is_not_a_mask(ct_series):
    files, image = ct_series
    with pytest.raises(InputError, match="not a DICOM Segmentation"):
        read_mask(files[0], image)


# --------------------------------------------------------------------------- grids and refusals


def test_coarser_shifted_mask_is_resampled_nearest_neighbour(tmp_path):
    reference = _reference()
    coarse = np.zeros((5, 16, 20), np.uint8)
    coarse[1:4, 3:10, 4:15] = 1
    coarse[2, 12:14, 15:18] = 2
    coarse_spacing = (1.6, 1.8, 5.0)
    coarse_origin = (ORIGIN[0] + 1.3, ORIGIN[1] - 0.7, ORIGIN[2] + 1.1)
    path = write_mask(tmp_path / "coarse.nii.gz", coarse, spacing_mm=coarse_spacing, origin_mm=coarse_origin)

    result = read_mask(path, reference)

    native = sitk.ReadImage(str(path))
    expected = sitk.Resample(native != 0, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    _check_on_reference(result, reference, _array(expected))
    # and by hand: nearest coarse voxel of each reference voxel centre (no ties at these offsets)
    z, y, x = np.indices(SHAPE)
    physical = [ORIGIN[a] + (x, y, z)[a] * SPACING[a] for a in range(3)]
    index = [np.rint((physical[a] - coarse_origin[a]) / coarse_spacing[a]).astype(int) for a in range(3)]
    inside = np.all([(index[a] >= 0) & (index[a] < coarse.shape[2 - a]) for a in range(3)], axis=0)
    by_hand = np.zeros(SHAPE, np.uint8)
    by_hand[inside] = coarse[index[2][inside], index[1][inside], index[0][inside]] != 0
    np.testing.assert_array_equal(_array(result), by_hand)
    assert by_hand.sum() > 0


def test_oblique_reference_grid(tmp_path):
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    direction = (c, -s, 0, s, c, 0, 0, 0, 1)
    reference = _reference(direction)
    labels = _labels()
    path = write_mask(tmp_path / "axial.nrrd", labels, spacing_mm=SPACING, origin_mm=ORIGIN)  # not rotated
    result = read_mask(path, reference)
    expected = sitk.Resample(
        sitk.ReadImage(str(path)) != 0, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    _check_on_reference(result, reference, _array(expected))


def test_mask_outside_the_image(tmp_path):
    labels = _labels()
    far = (ORIGIN[0] + 500.0, ORIGIN[1], ORIGIN[2])
    path = write_mask(tmp_path / "far.nii.gz", labels, spacing_mm=SPACING, origin_mm=far)
    with pytest.raises(InputError, match="does not overlap") as error:
        read_mask(path, _reference())
    reason = error.value.reason
    assert error.value.stage == "mask"
    # ROI extent: x from 488 + 6 * 0.8 to 488 + 34 * 0.8; image extent: x from -12 to -12 + 39 * 0.8
    assert "x [492.8, 515.2]" in reason and "x [-12.0, 19.2]" in reason and "mm" in reason


def test_empty_mask(tmp_path):
    path = write_mask(tmp_path / "empty.nrrd", np.zeros(SHAPE, np.uint8), spacing_mm=SPACING, origin_mm=ORIGIN)
    with pytest.raises(InputError, match="ROI mask is empty"):
        read_mask(path, _reference())


def test_missing_and_unknown_mask_files(tmp_path):
    with pytest.raises(InputError, match="ROI mask file not found: nowhere.nii.gz") as error:
        read_mask("nowhere.nii.gz", _reference())
    assert error.value.stage == "mask"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a DICOM file nor a known mask format"):
        read_mask(tmp_path / "notes.txt", _reference())
