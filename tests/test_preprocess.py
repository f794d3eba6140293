"""Crop-then-resample equals SimpleITK's whole-volume resample inside the ROI (issue 2)."""

import numpy as np
import pytest
import SimpleITK as sitk

from engine.errors import InputError
from engine.measure.preprocess import (
    RoiSample,
    crop_and_resample,
    n4_correct,
    preprocess,
    resample_to,
    whole_volume_grid,
)


def _volume(direction_angle=0.0, seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[0:14, 0:96, 0:100]
    array = (40 * np.sin(xx / 7.0) + 30 * np.cos(yy / 5.0) + 20 * zz + rng.normal(0, 15, zz.shape)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.71, 0.69, 3.0))
    image.SetOrigin((-35.2, -28.7, -21.0))
    c, s = np.cos(direction_angle), np.sin(direction_angle)
    image.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    mask_array = np.zeros(array.shape, np.uint8)
    mask_array[4:11, 30:62, 20:45] = 1
    mask_array[5:9, 40:70, 60:90] = 2
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    return image, mask


@pytest.mark.parametrize("angle", [0.0, 0.15])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.0)])
def test_crop_then_resample_equals_whole_volume_resample(angle, spacing):
    image, mask = _volume(angle)
    cropped, cropped_mask = crop_and_resample(image, mask, spacing, 5.0, default_value=-1024.0)
    grid = whole_volume_grid(image, spacing)
    whole = resample_to(image, grid, interpolator=sitk.sitkLinear, default_value=-1024.0)
    whole_mask = resample_to(mask, grid, interpolator=sitk.sitkNearestNeighbor)
    start = whole.TransformPhysicalPointToIndex(cropped.GetOrigin())
    reference = sitk.GetArrayFromImage(sitk.RegionOfInterest(whole, cropped.GetSize(), start))
    reference_mask = sitk.GetArrayFromImage(sitk.RegionOfInterest(whole_mask, cropped.GetSize(), start))
    ours, ours_mask = sitk.GetArrayFromImage(cropped), sitk.GetArrayFromImage(cropped_mask)
    np.testing.assert_array_equal(ours_mask, reference_mask)
    roi = reference_mask != 0
    assert roi.sum() > 1000
    assert np.abs(ours[roi] - reference[roi]).max() < 1e-3
    # ...and the crop holds every ROI voxel of the whole-volume resample.
    assert roi.sum() == (sitk.GetArrayFromImage(whole_mask) != 0).sum()


def test_window_flags_voxels_and_sample_round_trips(tmp_path):
    image, mask = _volume()
    sample = preprocess(image, mask, window=(-50.0, 80.0))
    inside = (sample.values >= -50) & (sample.values <= 80)
    np.testing.assert_array_equal(sample.in_window, inside)
    assert sample.excluded_voxels == (~inside).sum() > 0
    sample.save(tmp_path / "s.npz")
    again = RoiSample.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(again.values, sample.values)
    np.testing.assert_array_equal(again.flat_index, sample.flat_index)
    assert again.grid == sample.grid
    labels = np.where(sample.in_window, 1, 3).astype(np.uint8)
    habitat = sitk.GetArrayFromImage(again.label_volume(labels))
    assert (habitat == 3).sum() == sample.excluded_voxels
    assert (habitat != 0).sum() == sample.roi_voxels


def test_empty_mask_is_a_clear_error():
    image, mask = _volume()
    with pytest.raises(InputError, match="ROI mask is empty"):
        preprocess(image, mask * 0)


def test_n4_removes_a_smooth_multiplicative_field():
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[0:24, 0:64, 0:64].astype(np.float32)
    tissue = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 28 ** 2, 400.0, 0.0).astype(np.float32)
    field = 1.0 + 0.3 * (xx - 32) / 32
    array = tissue * field + np.abs(rng.normal(0, 5, tissue.shape))
    image = sitk.GetImageFromArray(array.astype(np.float32))
    corrected = sitk.GetArrayFromImage(n4_correct(image, shrink_factor=2, iterations=(30, 30)))
    inside = tissue > 0
    before = np.std(array[inside]) / np.mean(array[inside])
    after = np.std(corrected[inside]) / np.mean(corrected[inside])
    assert after < 0.5 * before
