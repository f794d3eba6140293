"""The L3/4 ROI derived from a whole-body segmentation (issue 17), on hand-built tiny label maps.

The expected ROIs are written out by hand from the phantom's layout; the reoriented cases are
made with SimpleITK's own Flip/PermuteAxes (which keep every voxel at its physical place), and
their results are brought back with SimpleITK's nearest-neighbour resampling.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from engine.contract import TOTALSEGMENTATOR_TOTAL_V2 as TS
from engine.errors import InputError
from engine.io.segmentation import derive_roi_from_file, parse_level

L4, L3, AUTO_L, AUTO_R, PSOAS_L, PSOAS_R = 28, 29, 86, 87, 88, 89


def _phantom(l3=True, l4=True, swap=False):
    """(Z=20, Y=8, X=10) label map; slice k lies at LPS z = -20 + 2k mm.

    L4 on k 2..7 (cranial end z = -6), L3 on k 11..17 (caudal end z = 2): the L3/L4 plane is
    z = -2 (k = 9). The four muscles run through every slice.
    """
    labels = np.zeros((20, 8, 10), np.uint8)
    lower, upper = (L3, L4) if swap else (L4, L3)
    if l4 or swap:
        labels[2:8, 2:5, 3:7] = lower
    if l3 or swap:
        labels[11:18, 2:5, 3:7] = upper
    labels[:, 5:7, 7:9] = AUTO_L     # left-named muscles at the patient's left: LPS +x, high array index
    labels[:, 5:7, 1:3] = AUTO_R
    labels[:, 0:2, 7:10] = PSOAS_L
    labels[:, 0:2, 0:3] = PSOAS_R
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((10.0, -5.0, -20.0))
    return image


def _expected(slices=(8, 9, 10)):
    """The ROI by hand: the muscles as ROI labels (psoas 1/2, paraspinal 3/4) on the slab's slices."""
    roi = np.zeros((20, 8, 10), np.uint8)
    for k in slices:
        roi[k, 5:7, 7:9] = 3
        roi[k, 5:7, 1:3] = 4
        roi[k, 0:2, 7:10] = 1
        roi[k, 0:2, 0:3] = 2
    return roi


def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


def _derive(path, reference, **kwargs):
    kwargs.setdefault("thickness_mm", 6.0)   # [-5, 1) mm around z = -2: slices k 8, 9, 10
    return derive_roi_from_file(path, reference, label_table=TS, **kwargs)


def test_the_total_v2_ids_of_the_issue():
    assert (TS["vertebrae_L4"], TS["vertebrae_L3"]) == (28, 29)
    assert (TS["autochthon_left"], TS["autochthon_right"], TS["iliopsoas_left"], TS["iliopsoas_right"]) == (
        86,
        87,
        88,
        89,
    )
    assert (TS["vertebrae_L5"], TS["vertebrae_L1"], TS["vertebrae_T12"], TS["vertebrae_C1"]) == (27, 31, 32, 50)


def test_multilabel_slab_keeps_the_muscle_labels(tmp_path):
    seg = _phantom()
    derived = _derive(_write(seg, tmp_path / "seg.nii.gz"), seg)
    assert derived.plane_mm == pytest.approx(-2.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(derived.roi), _expected())


def test_single_vertebra_level_and_muscle_choice(tmp_path):
    seg = _phantom()
    # L3 spans z 2..14: mid-height 8 (k = 14); 2 mm thick keeps k 14 only; psoas only
    derived = _derive(_write(seg, tmp_path / "seg.nii.gz"), seg, level="L3", thickness_mm=2.0, muscles=["psoas"])
    expected = _expected((14,))
    expected[expected > 2] = 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(derived.roi), expected)


def test_folder_form_reads_the_same_roi(tmp_path):
    seg = _phantom()
    labels = sitk.GetArrayFromImage(seg)
    folder = tmp_path / "ts"
    folder.mkdir()
    for name, value in TS.items():
        if value in (L3, L4, AUTO_L, AUTO_R, PSOAS_L, PSOAS_R) or name == "vertebrae_L2":
            mask = sitk.GetImageFromArray((labels == value).astype(np.uint8))
            mask.CopyInformation(seg)
            _write(mask, folder / f"{name}.nii.gz")
    derived = _derive(folder, seg)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(derived.roi), _expected())


@pytest.mark.parametrize("orient", ["flip_z", "flip_xz", "permute_zxy", "permute_flip"])
def test_any_orientation_finds_the_same_physical_slab(tmp_path, orient):
    """Array axis 0 is not the cranio-caudal axis, or runs caudal->cranial reversed: same ROI in space."""
    seg = _phantom()
    moved = {"flip_z": lambda im: sitk.Flip(im, [False, False, True]),
             "flip_xz": lambda im: sitk.Flip(im, [True, False, True]),
             "permute_zxy": lambda im: sitk.PermuteAxes(im, [2, 0, 1]),
             "permute_flip": lambda im: sitk.Flip(sitk.PermuteAxes(im, [1, 2, 0]), [True, False, False])}[orient](seg)
    assert moved.GetDirection() != seg.GetDirection()
    derived = _derive(_write(moved, tmp_path / "seg.nii.gz"), moved)
    assert derived.plane_mm == pytest.approx(-2.0)
    back = sitk.Resample(derived.roi, seg, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), _expected())


def test_segmentation_on_another_grid_is_resampled_nearest_neighbour(tmp_path):
    seg = _phantom()
    # the image: half the in-plane spacing, same slices; each segmentation voxel becomes 2 x 2
    image = sitk.Image([20, 16, 20], sitk.sitkFloat32)
    image.SetSpacing((0.4, 0.45, 2.0))
    image.SetOrigin((10.0 - 0.2, -5.0 - 0.225, -20.0))
    derived = _derive(_write(seg, tmp_path / "seg.nii.gz"), image)
    expected = _expected().repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(derived.roi), expected)


@pytest.mark.parametrize("missing, named, present", [(dict(l4=False), "no L4", "vertebrae present: L3"),
                                                     (dict(l3=False), "no L3", "vertebrae present: L4")])
def test_absent_vertebra_is_named(tmp_path, missing, named, present):
    seg = _phantom(**missing)
    with pytest.raises(InputError) as error:
        _derive(_write(seg, tmp_path / "seg.nii.gz"), seg)
    assert error.value.stage == "segmentation"
    assert named in error.value.reason and present in error.value.reason


def test_absent_vertebra_in_the_folder_form_is_named(tmp_path):
    seg = _phantom()
    labels = sitk.GetArrayFromImage(seg)
    folder = tmp_path / "ts"
    folder.mkdir()
    for name in ("vertebrae_L3", "vertebrae_L4", "autochthon_left"):
        mask = sitk.GetImageFromArray((labels == TS[name]).astype(np.uint8) * (name != "vertebrae_L4"))
        mask.CopyInformation(seg)
        _write(mask, folder / f"{name}.nii.gz")     # L4's file exists but is empty, as TotalSegmentator writes it
    with pytest.raises(InputError, match=r"no L4 \(vertebrae present: L3\)"):
        _derive(folder, seg)


def test_l3_caudal_to_l4_is_refused(tmp_path):
    seg = _phantom(swap=True)
    with pytest.raises(InputError, match="L3 is not cranial to L4"):
        _derive(_write(seg, tmp_path / "seg.nii.gz"), seg)


def test_slab_outside_the_image(tmp_path):
    seg = _phantom()
    image = sitk.Image([10, 8, 4], sitk.sitkFloat32)   # z -20..-14: the plane at -2 is above it
    image.SetSpacing(seg.GetSpacing())
    image.SetOrigin(seg.GetOrigin())
    with pytest.raises(InputError, match="slab .* is not inside the image"):
        _derive(_write(seg, tmp_path / "seg.nii.gz"), image)


def test_empty_derived_roi(tmp_path):
    seg = _phantom()
    labels = sitk.GetArrayFromImage(seg)
    labels[6:13][labels[6:13] >= AUTO_L] = 0        # no muscle near the disc
    empty = sitk.GetImageFromArray(labels)
    empty.CopyInformation(seg)
    with pytest.raises(InputError, match="derived ROI is empty"):
        _derive(_write(empty, tmp_path / "seg.nii.gz"), seg)


def test_segmentation_that_does_not_overlap_the_image(tmp_path):
    seg = _phantom()
    image = sitk.Image(seg.GetSize(), sitk.sitkFloat32)
    image.CopyInformation(seg)
    image.SetOrigin((500.0, -5.0, -20.0))
    with pytest.raises(InputError, match="does not overlap the image"):
        _derive(_write(seg, tmp_path / "seg.nii.gz"), image)


@pytest.mark.parametrize("text, cranial, caudal", [("L3/L4", "L3", "L4"), ("l3-4", "L3", "L4"), ("L5/S1", "L5", "S1"),
                                                   ("T12/L1", "T12", "L1"), ("L3", "L3", None)])
def test_parse_level(text, cranial, caudal):
    level = parse_level(text)
    assert (level.cranial, level.caudal) == (cranial, caudal)


@pytest.mark.parametrize("text", ["L4/L3", "L3/L5", "L6", "X"])
def test_parse_level_refuses(text):
    with pytest.raises(ValueError):
        parse_level(text)
