"""Issue 23: the L3/4 plane between the vertebral *bodies*, on masks shaped like real ones.

A real TotalSegmentator vertebra label holds its posterior elements (the cranial vertebra's
reach below its body) and stray voxels of a neighbour; the plane must still be the disc
between the bodies. Two kinds of truth, neither taken from the engine: a hand-built phantom
whose disc, canal and slab are written out by hand, and the synthetic cohort's phantom, whose
disc lies at ``disc_z_mm`` (the body's centre column) and whose canal is the CSF it renders.
Both storage orientations are read: LPS/DICOM order, and RAS as TotalSegmentator writes
(SimpleITK's Flip keeps every voxel at its physical place).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from engine.contract import TOTALSEGMENTATOR_TOTAL_V2 as TS
from engine.io.segmentation import derive_roi_from_file
from engine.synthetic import cohort as synth

L4, L3, AUTO_L, AUTO_R, PSOAS_L, PSOAS_R = 28, 29, 86, 87, 88, 89
SLICE_MM = 3.0


def _hand_phantom() -> sitk.Image:
    """(Z=24, Y=20, X=16) label map, 2 x 2 x 3 mm, origin 0: slice k lies at z = 3k mm.

    Each vertebra: a body (j 2..7, anterior: LPS y small) and an arch ring behind it (j 8..15,
    i 3..12) around the canal (j 10..13, i 6..9: 64 mm^2, centre x 15, y 23 mm). L3's body spans
    k 11..19 (caudal endplate z = 33), L4's k 2..8 (cranial endplate z = 24): the disc plane is
    z = 28.5, halfway between slices k 9 (27) and k 10 (30). L3's spinous process (j 14..15,
    i 7..8) reaches down to k 6 (z = 18), and 2 L3 voxels sit inside L4's body at k 3 (z = 9):
    the lowest L3 voxel is 19.5 mm below the disc.
    """
    labels = np.zeros((24, 20, 16), np.uint8)
    for value, slices in ((L4, slice(2, 9)), (L3, slice(11, 20))):
        labels[slices, 2:8, 4:12] = value
        labels[slices, 8:16, 3:13] = value
        labels[slices, 10:14, 6:10] = 0
    labels[6:11, 14:16, 7:9] = L3           # spinous process below the body
    labels[3, 4, 6:8] = L3                  # stray voxels inside L4's body
    labels[:, 16:19, 13:16] = AUTO_L     # left-named muscles at the patient's left (LPS +x)
    labels[:, 16:19, 0:3] = AUTO_R
    labels[:, 0:2, 13:16] = PSOAS_L
    labels[:, 0:2, 0:3] = PSOAS_R
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((2.0, 2.0, SLICE_MM))
    return image


def _ras(image: sitk.Image) -> sitk.Image:
    moved = sitk.Flip(image, [True, True, False])
    assert moved.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    return moved


def _derive(image, tmp_path, **kwargs):
    path = tmp_path / "seg.nii.gz"
    sitk.WriteImage(image, str(path))
    return derive_roi_from_file(path, image, label_table=TS, **kwargs)


def _slices(derived, like) -> list[int]:
    back = sitk.Resample(derived.roi, like, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sorted(set(np.nonzero(sitk.GetArrayViewFromImage(back))[0].tolist()))


@pytest.mark.parametrize("stored", ["lps", "ras"])
def test_issue23_plane_between_the_bodies_despite_posterior_elements_and_strays(tmp_path, stored):
    seg = _hand_phantom()
    image = seg if stored == "lps" else _ras(seg)
    derived = _derive(image, tmp_path, thickness_mm=6.0)
    assert derived.plane_mm == pytest.approx(28.5)
    assert derived.method == "endplates_canal"
    assert derived.canal_xy_mm == pytest.approx((15.0, 23.0))
    assert (derived.canal_x_mm, derived.canal_y_mm) == derived.canal_xy_mm
    assert derived.dropped_voxels == 2
    assert derived.extents_mm == {"L3": (33.0, 57.0), "L4": (6.0, 24.0)}
    assert _slices(derived, seg) == [9, 10]          # [25.5, 31.5): z 27 and 30


def test_issue23_an_arch_without_enclosed_canal_falls_back_to_the_anterior_part(tmp_path):
    seg = _hand_phantom()
    labels = sitk.GetArrayFromImage(seg)
    labels[:, 13, 6:10][np.isin(labels[:, 13, 6:10], (L3, L4))] = 0    # nothing changes: the hole's edge
    labels[:, 14:16, 3:13][np.isin(labels[:, 14:16, 3:13], (L3, L4))] = 0   # open the arch behind the canal
    opened = sitk.GetImageFromArray(labels)
    opened.CopyInformation(seg)
    derived = _derive(opened, tmp_path, thickness_mm=6.0)
    assert derived.method == "endplates_anterior"
    assert derived.canal_xy_mm is None
    assert derived.plane_mm == pytest.approx(28.5)


# ------------------------------------------------------------------ item 6: the slab's rule on 3 mm data

@pytest.mark.parametrize(("thickness_mm", "slices", "bounds"), [
    (3.0, [9], (27.0, 30.0)),            # "a single slice": the plane halfway, the caudal slice wins the tie
    (1.0, [9], (27.0, 30.0)),            # thinner than a slice: widened to the nearest, caudal on a tie
    (6.0, [9, 10], (25.5, 31.5)),
    (9.0, [8, 9, 10], (24.0, 33.0)),     # z 33 on the open cranial bound: out
])
def test_issue23_slab_rule_on_3mm_slices(tmp_path, thickness_mm, slices, bounds):
    seg = _hand_phantom()
    derived = _derive(seg, tmp_path, thickness_mm=thickness_mm)
    assert _slices(derived, seg) == slices
    assert derived.slab_mm == pytest.approx(bounds, abs=1e-5)
    assert (derived.slab_min_z_mm, derived.slab_max_z_mm) == derived.slab_mm      # the names the QA strip reads


def test_issue23_three_mm_slab_is_one_slice_wherever_the_plane_falls(tmp_path):
    seg = _hand_phantom()
    labels = sitk.GetArrayFromImage(seg)
    for shift in range(3):                  # move L3's caudal endplate by whole slices: plane on and off slices
        moved = labels.copy()
        moved[11:11 + shift][moved[11:11 + shift] == L3] = 0
        image = sitk.GetImageFromArray(moved)
        image.CopyInformation(seg)
        derived = _derive(image, tmp_path, thickness_mm=3.0)
        assert len(_slices(derived, seg)) == 1


# ------------------------------------------------------------------ the synthetic cohort's real-shaped masks

@pytest.fixture(scope="module")
def simulated():
    """Three simulated patients (the synthesizer's own draws; no DICOM written)."""
    return [synth._simulate(11, index, "small") for index in range(3)]


def _truth_canal_xy(rendered, grid, disc_w: float = 0.0) -> tuple[float, float]:
    """LPS centre of the CSF the phantom renders on the slice nearest the disc."""
    k = int(np.argmin(np.abs(grid.w - disc_w)))
    rows, cols = np.nonzero(rendered.tissue[k] == synth.CSF)
    return (grid.origin_mm[0] + cols.mean() * grid.spacing_mm[0], grid.origin_mm[1] + rows.mean() * grid.spacing_mm[1])


@pytest.mark.parametrize("form", ["multilabel", "folder"])
@pytest.mark.parametrize("ras", [False, True])
def test_issue23_synthetic_masks_plane_within_2mm_of_the_body_disc(tmp_path, simulated, form, ras):
    for sim in simulated:
        for key, modality in (("ct", "ct"), ("mr", "mri")):
            grid = sim[key]["grid"]
            labels = synth._totalsegmentator_labels(sim[key]["rendered"], grid, sim["vertebra"])
            # the masks are what users feed in: L3's posterior elements below the disc, strays
            l3 = np.nonzero((labels == L3).any(axis=(1, 2)))[0]
            assert grid.w[l3.min()] < -sim["vertebra"].disc_half_mm - 5.0
            folder = tmp_path / f"p{sim['index']}_{modality}_{form}_{ras}"
            folder.mkdir()
            ml, per_structure = synth._write_totalsegmentator(folder, modality, labels, grid, ras=ras)
            stored = sitk.ReadImage(str(ml))
            assert (stored.GetDirection()[0] < 0) == ras
            reference = sitk.Image([int(grid.u.size), int(grid.v.size), int(grid.w.size)], sitk.sitkUInt8)
            reference.SetSpacing(grid.spacing_mm)
            reference.SetOrigin(grid.origin_mm)
            derived = derive_roi_from_file(ml if form == "multilabel" else per_structure, reference,
                                           label_table=TS, thickness_mm=3.0)
            where = f"patient {sim['index']} {modality}"
            assert abs(derived.plane_mm - sim[key]["disc_z_mm"]) <= 2.0, where
            assert derived.method == "endplates_canal", where
            assert derived.dropped_voxels > 0, where
            canal_error = np.subtract(derived.canal_xy_mm, _truth_canal_xy(sim[key]["rendered"], grid))
            assert np.hypot(*canal_error) <= 3.0, where


def test_issue23_storage_alternates_so_each_form_comes_in_both_orientations():
    ras = [synth.segmentation_storage_is_ras(i) for i in range(4)]
    forms = ["multilabel" if i % 2 == 0 else "folder" for i in range(4)]
    assert set(zip(forms, ras, strict=True)) == {("multilabel", False), ("folder", False), ("multilabel", True),
                                                 ("folder", True)}
