"""The MRI bias field: one N4 per series, shared by the ROI's crop and the reference (issue 32).

The phantom is engine/synthetic/random_mri.py's (development seed 999, patient 19: 5 slices, a
field of +-27 %); its truth is the tissues' relative signal, never a value the engine computed.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from engine.config import load_config

DEV_SEED, PATIENT = 999, 19


def _image(array: np.ndarray, spacing, origin) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def test_the_crop_and_the_reference_slices_share_one_correction():
    """The field divided out of the crop equals the crop of the field divided out of whole slices."""
    from engine.measure.preprocess import Grid, apply_log_field, sub_box, whole_slices, whole_volume_grid

    rng = np.random.default_rng(32)
    native = _image(rng.uniform(100, 200, (12, 90, 100)).astype(np.float32), (1.3, 1.3, 4.0), (-60.0, -50.0, 0.0))
    log_field = sitk.BinShrink(_image(np.zeros((12, 90, 100), np.float32), (1.3, 1.3, 4.0), (-60.0, -50.0, 0.0)),
                               [4, 4, 1])
    log_field = _image((0.3 * rng.standard_normal(sitk.GetArrayViewFromImage(log_field).shape)).astype(np.float32),
                       log_field.GetSpacing(), log_field.GetOrigin())
    full = whole_volume_grid(native, (1.0, 1.0, 1.0))
    crop = Grid((40, 30, 20), full.spacing, (-20.0, -10.0, 8.0), full.direction)
    slab = whole_slices(crop, full)
    resample = lambda grid: sitk.Resample(native, list(grid.size), sitk.Transform(), sitk.sitkLinear,  # noqa: E731
                                          list(grid.origin), list(grid.spacing), list(grid.direction))
    on_crop = sitk.GetArrayFromImage(apply_log_field(resample(crop), log_field))
    cut = sitk.GetArrayFromImage(sub_box(apply_log_field(resample(slab), log_field), crop))
    np.testing.assert_allclose(on_crop, cut, rtol=1e-5)
    assert not np.allclose(on_crop, sitk.GetArrayFromImage(resample(crop)), rtol=0.01), "a field was applied"


@pytest.fixture(scope="module")
def corrected_phantom():
    from engine.measure.preprocess import preprocess
    from engine.synthetic.random_mri import simulate

    sim = simulate(DEV_SEED, PATIENT)
    image = _image(sim["stored"].astype(np.float32), sim["spacing_mm"], sim["origin_mm"])
    mask = _image((sim["roi"] > 0).astype(np.uint8), sim["spacing_mm"], sim["origin_mm"])
    prep = load_config().preprocess.mri
    sample = preprocess(image, mask, margin_mm=prep.crop_margin_mm, n4=True, n4_shrink_factor=prep.n4_shrink_factor,
                        n4_iterations=prep.n4_iterations, n4_convergence_threshold=prep.n4_convergence_threshold,
                        standardize="reference")
    # the phantom's labels on the sample's grid (nearest): muscle = ROI voxels that are not fat
    grid = sample.grid
    labels = np.where(sim["fat"], 2, np.where(sim["roi"] > 0, 1, 0)).astype(np.uint8)
    labels = sitk.Resample(_image(labels, sim["spacing_mm"], sim["origin_mm"]), list(grid.size), sitk.Transform(),
                           sitk.sitkNearestNeighbor, list(grid.origin), list(grid.spacing), list(grid.direction))
    labels = sitk.GetArrayFromImage(labels)
    lean = ndimage.binary_erosion(labels == 1, np.ones((3, 3, 3))).ravel()[sample.flat_index]
    return sim, sample, lean


def test_csf_and_muscle_keep_their_true_ratio_after_the_correction(corrected_phantom):
    """Issue 32: the CSF reference lands on 1000 and the muscle on 1000 / (CSF / muscle) of the phantom.

    With N4 on the ROI's crop inside an Otsu mask (fat and CSF only), the canal was partly taken
    for field: CSF came out near the fat's level and every muscle above its true value.
    """
    sim, sample, lean = corrected_phantom
    assert sample.standardization["reference"] == "csf"
    muscle = float(np.median(sample.values[lean]))
    expected = sample.standardization["target"] / sim["draw"]["csf_rel"]
    assert muscle == pytest.approx(expected, rel=0.05)
    ratio = sample.standardization["fat_to_csf"]
    assert ratio == pytest.approx(sim["draw"]["fat_rel"] / sim["draw"]["csf_rel"], rel=0.1)
