"""Segmentations that contradict anatomy: laterality and level checks (issue 30).

Real inputs the project did not write (``../shared/realdata``): TotalSegmentator's own output on a
real 3 mm CT (T11 to L2), mirrored (the array flipped, or the header) and with its vertebrae
relabelled by one; TPTBox's vertebra masks (another label convention, PIR storage, a crop that
cuts the muscles). The truths are anatomy's (left is LPS +x; T12 carries the 12th rib; L5 sits on
the sacrum) and independent measurements (SimpleITK's label statistics), never the engine's own
output. Synthetic box phantoms with transitional anatomy (a sacralised L5, six lumbar vertebrae)
show what the checks can and cannot see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine.batch.tasks import _check_hand_sides
from engine.config import load_config
from engine.contract import ROI_MUSCLE_LABELS
from engine.contract import TOTALSEGMENTATOR_TOTAL_V2 as TS
from engine.errors import ConfigError, InputError
from engine.io.anatomy import check_hand_laterality, mask_centre_x_mm
from engine.io.segmentation import Anchors, Level, derive_roi_from_file, judge_level, vertebral_body

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"
TOTALSEG = REAL / "totalseg_ct_t11_l2"
TPTBOX = REAL / "tptbox_ct_l3"
SWAPPED = "left and right swapped: mirrored mask or header"


def _like(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(like)
    return image


@pytest.fixture(scope="module")
def real():
    """(CT, its TotalSegmentator label map, the map's array) of the real T11-L2 case."""
    ct = sitk.ReadImage(str(TOTALSEG / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(TOTALSEG / "example_seg.nii.gz"))
    return ct, seg, sitk.GetArrayFromImage(seg)


def _derive(seg: sitk.Image, ct, tmp_path, name="seg.nii.gz", **kwargs):
    path = tmp_path / name
    sitk.WriteImage(seg, str(path))
    kwargs.setdefault("level", "L1/L2")
    return derive_roi_from_file(path, ct, label_table=TS, **kwargs)


def _relabelled(array: np.ndarray, mapping: dict[str, str]) -> np.ndarray:
    out = array.copy()
    for source, target in mapping.items():
        out[array == TS[f"vertebrae_{source}"]] = TS[f"vertebrae_{target}"]
    return out


# ----------------------------------------------------------------------------- the real CT, as segmented


def test_real_ct_passes_every_check_and_records_its_figures(real, tmp_path):
    ct, seg, _ = real
    derived = _derive(seg, ct, tmp_path)
    checks = derived.checks
    assert checks["vertebrae_order"] == "T11 T12 L1 L2"
    assert checks["anchors"] == "rib 12 at T12" and checks["anatomy_warning"] == ""
    # L2 reaches the scan's caudal end: no height; L1 is an adult lumbar body (24-32 mm +- a 3 mm slice)
    assert set(checks["body_heights_mm"].split()) == {f"L1:{float(checks['body_heights_mm'][3:]):g}"}
    assert 20.0 <= float(checks["body_heights_mm"][3:]) <= 35.0
    assert 3.0 <= checks["disc_gap_mm"] <= 15.0
    # the offsets against SimpleITK's own physical centroids of the ROI's labels
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(derived.roi)
    counts = {v: stats.GetNumberOfPixels(v) for v in stats.GetLabels()}
    x = {v: stats.GetCentroid(v)[0] - derived.canal_xy_mm[0] for v in counts}
    left = [ROI_MUSCLE_LABELS["left_psoas"], ROI_MUSCLE_LABELS["left_paraspinal"]]
    right = [ROI_MUSCLE_LABELS["right_psoas"], ROI_MUSCLE_LABELS["right_paraspinal"]]
    assert checks["left_offset_mm"] == pytest.approx(np.mean([x[v] for v in left]), abs=0.06)
    assert checks["right_offset_mm"] == pytest.approx(np.mean([x[v] for v in right]), abs=0.06)
    assert checks["left_offset_mm"] > 20 and checks["right_offset_mm"] < -20


@pytest.mark.parametrize("how", ["array", "header"])
def test_real_mask_mirrored_stops_the_patient(real, tmp_path, how):
    """Issue 30: the real mask flipped left-right gave exit 0 and a fixed-HU fat % of 6.90 instead of 0.64."""
    ct, seg, array = real
    if how == "array":
        mirrored = _like(array[:, :, ::-1], seg)
    else:   # same voxels, the x axis of the header reversed over the same extent
        mirrored = sitk.Image(seg)
        direction = list(seg.GetDirection())
        direction[0] = -direction[0]
        origin = list(seg.GetOrigin())
        origin[0] = seg.TransformIndexToPhysicalPoint((seg.GetSize()[0] - 1, 0, 0))[0]
        mirrored.SetDirection(direction)
        mirrored.SetOrigin(origin)
    with pytest.raises(InputError, match=SWAPPED) as caught:
        _derive(mirrored, ct, tmp_path)
    assert caught.value.stage == "segmentation" and "left psoas" in caught.value.reason


def test_real_vertebrae_relabelled_by_one_stop_the_patient(real, tmp_path):
    """Every vertebra named one lower (T12 called L1, ...): L1/L2 would be measured at T12/L1. The
    12th rib, which meets T12, contradicts the count."""
    ct, seg, array = real
    shifted = _relabelled(array, {"T11": "T12", "T12": "L1", "L1": "L2", "L2": "L3"})
    with pytest.raises(InputError, match="12th rib meets the vertebra labelled L1, not T12"):
        _derive(_like(shifted, seg), ct, tmp_path)
    accepted = _derive(_like(shifted, seg), ct, tmp_path, level_checks="warn")
    assert "12th rib" in accepted.checks["anatomy_warning"] and accepted.checks["anchors"] == "rib 12 at L1"


def test_real_vertebra_merged_into_its_neighbour_stops_the_patient(real, tmp_path):
    """T12 labelled L1 as well: the L1 label holds two bodies and T12 is missing between T11 and L1."""
    ct, seg, array = real
    merged = _relabelled(array, {"T12": "L1"})
    with pytest.raises(InputError) as caught:
        _derive(_like(merged, seg), ct, tmp_path)
    assert "T12 missing between T11 and L1" in caught.value.reason
    assert "two vertebrae under one label" in caught.value.reason


def test_real_tptbox_labels_through_the_config_pir_storage_and_a_cropped_view(tmp_path):
    """TPTBox's convention (21, 22, 23 = L2, L3, L4), stored PIR, an 11 cm crop: the level checks read
    it (order, heights) and the derivation ends on one clear line, as the crop holds no muscle label."""
    seg = sitk.ReadImage(str(TPTBOX / "sub-ct_seg-vert_label-22_msk.nii.gz"))
    ct = sitk.ReadImage(str(TPTBOX / "sub-ct_label-22_ct.nii.gz"))
    assert sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(seg.GetDirection()) == "PIR"
    cfg = load_config(overrides={"roi": {"derive": {"preset": None, "level": "L3/L4", "labels": {
        "vertebrae_L2": 21, "vertebrae_L3": 22, "vertebrae_L4": 23}}}})
    table = cfg.roi.derive.label_table()
    labels = sitk.GetArrayViewFromImage(seg)
    bodies = {v: vertebral_body(labels, seg, table[f"vertebrae_{v}"]) for v in ("L2", "L3", "L4")}
    figures = judge_level(bodies, Level("L3", "L4"), seg, _no_anchors(), "error")
    assert figures.order == "L2 L3 L4" and figures.problems == []
    assert 20.0 <= figures.heights_mm["L3"] <= 35.0        # L3 whole in the crop: an adult lumbar body
    assert 3.0 <= figures.disc_gap_mm <= 15.0
    with pytest.raises(InputError, match="names none of the chosen muscles"):
        derive_roi_from_file(TPTBOX / "sub-ct_seg-vert_label-22_msk.nii.gz", ct, label_table=table, level="L3/L4")
    # L3 relabelled L2 on the same real masks: two bodies under one label, L3 gone
    relabelled = sitk.GetArrayFromImage(seg)
    relabelled[relabelled == 22] = 21
    merged = _like(relabelled, seg)
    merged_bodies = {v: vertebral_body(sitk.GetArrayViewFromImage(merged), merged, table[f"vertebrae_{v}"])
                     for v in ("L2", "L3", "L4")}
    assert merged_bodies["L3"] is None
    figures = judge_level(merged_bodies, Level("L2", "L3"), merged, _no_anchors(), "warn")
    assert any("L3 missing" in p or "two vertebrae" in p for p in figures.problems)


def _no_anchors() -> Anchors:
    return Anchors()


# ----------------------------------------------------------------------------- transitional anatomy, synthetic

#: Box phantom: 2 mm voxels, bodies 26 mm tall, discs 10 mm: one vertebra per 36 mm.
VOXEL_MM, BODY, DISC = 2.0, 13, 5


def _spine(names: list[str], *, sacrum_bodies: int = 1, rib_at: int | None = 0) -> sitk.Image:
    """A label map of vertebral bodies (with arch and canal) named cranial to caudal by ``names``
    (None = unlabelled), then ``sacrum_bodies`` bodies labelled sacrum, the 12th ribs at body
    ``rib_at`` (None: out of view), the four muscles along the whole spine."""
    n = len(names) + sacrum_bodies
    depth = n * (BODY + DISC) + 4
    labels = np.zeros((depth, 30, 40), np.uint8)
    values = [TS[f"vertebrae_{v}"] if v else 0 for v in names] + [TS["sacrum"]] * sacrum_bodies
    for i, value in enumerate(values):
        top = depth - 2 - i * (BODY + DISC)           # array axis 0 runs caudal -> cranial (LPS +z)
        rows = slice(top - BODY, top)
        labels[rows, 4:14, 14:26] = value               # body (anterior: small LPS y)
        labels[rows, 14:24, 15:25] = value              # arch
        labels[rows, 16:21, 18:22] = 0                  # canal
        if rib_at is not None and i == rib_at:
            labels[top - 4:top, 18:20, 25:38] = TS["rib_left_12"]
            labels[top - 4:top, 18:20, 2:15] = TS["rib_right_12"]
    labels[:, 24:29, 26:34] = TS["autochthon_left"]     # left = LPS +x = high x index
    labels[:, 24:29, 6:14] = TS["autochthon_right"]
    labels[:, 4:10, 28:36] = TS["iliopsoas_left"]
    labels[:, 4:10, 4:12] = TS["iliopsoas_right"]
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((VOXEL_MM,) * 3)
    return image


def _problems(image: sitk.Image, tmp_path, level="L3/L4") -> str:
    return _derive(image, image, tmp_path, level=level, level_checks="warn").checks["anatomy_warning"]


NORMAL = ["T12", "L1", "L2", "L3", "L4", "L5"]


def test_normal_spine_phantom_passes(tmp_path):
    derived = _derive(_spine(NORMAL), _spine(NORMAL), tmp_path, level="L3/L4")
    assert derived.checks["anatomy_warning"] == ""
    assert derived.checks["vertebrae_order"] == "T12 L1 L2 L3 L4 L5"
    assert derived.checks["anchors"] == "sacrum below L5; rib 12 at T12"
    assert derived.checks["body_heights_mm"] == "L3:26 L4:26" and derived.checks["disc_gap_mm"] == pytest.approx(10)


def test_sacralised_l5_labelled_sacrum_is_seen(tmp_path):
    """Four free lumbar vertebrae, L5 fused to (and labelled as) the sacrum: the label above the
    sacrum is L4. The check cannot tell a true sacralisation from a mislabel: a reader can accept it."""
    image = _spine(NORMAL[:-1], sacrum_bodies=2)
    with pytest.raises(InputError, match="directly above the sacrum is labelled L4, not L5"):
        _derive(image, image, tmp_path)
    assert "above the sacrum" in _problems(image, tmp_path)


def test_sacralised_l5_counted_from_the_sacrum_is_seen_only_with_the_12th_rib(tmp_path):
    """The same spine labelled upwards from the sacrum (true L4 called L5 ... true T12 called L1):
    only the 12th rib contradicts it. With the ribs out of view nothing can: a silent shift."""
    names = ["L1", "L2", "L3", "L4", "L5"]                  # true T12, L1, L2, L3, L4
    assert "12th rib meets the vertebra labelled L1" in _problems(_spine(names, sacrum_bodies=2), tmp_path)
    assert _problems(_spine(names, sacrum_bodies=2, rib_at=None), tmp_path) == ""


def test_six_lumbar_vertebrae(tmp_path):
    """A sixth lumbar vertebra. Counted from T12 with the sixth left unlabelled: seen (L5 far above
    the sacrum). Labelled upwards from the sacrum (the rib-bearing T12 called T11): seen through the
    12th rib; without it, not seen."""
    unlabelled = _spine([*NORMAL, None])
    assert "L5 lies" in _problems(unlabelled, tmp_path) and "carries no label" in _problems(unlabelled, tmp_path)
    from_sacrum = ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    assert "12th rib meets the vertebra labelled T11" in _problems(_spine(from_sacrum), tmp_path)
    assert _problems(_spine(from_sacrum, rib_at=None), tmp_path) == ""


def test_labels_out_of_order_and_a_missing_label(tmp_path):
    swapped = _spine(["T12", "L1", "L3", "L2", "L4", "L5"])
    assert "out of cranio-caudal order" in _problems(swapped, tmp_path, level="L4/L5")
    skipped = _spine(["T12", "L1", "L2", "L4", "L5"], sacrum_bodies=1)
    assert "L3 missing between L2 and L4" in _problems(skipped, tmp_path, level="L4/L5")


# ----------------------------------------------------------------------------- a hand ROI's sides


def _hand_roi(left_at_high_x: bool) -> sitk.Image:
    roi = np.zeros((4, 20, 30), np.uint8)
    high, low = (3, 4) if left_at_high_x else (4, 3)      # left_paraspinal 3, right_paraspinal 4
    roi[:, 5:10, 20:26] = high
    roi[:, 5:10, 4:10] = low
    image = sitk.GetImageFromArray(roi)
    image.SetSpacing((1.0, 1.0, 3.0))
    return image


def test_hand_roi_sides_where_the_config_names_them(tmp_path):
    cfg = load_config(overrides={"io": {"mask_sides": {"left": [1, 3], "right": [2, 4]}}})
    sides = cfg.io.mask_sides

    def centres(image):
        out = []
        for labels in (sides.left, sides.right):
            array = sitk.GetArrayFromImage(image)
            selected = _like(np.isin(array, labels).astype(np.uint8), image)
            out.append(mask_centre_x_mm(selected))
        return out

    assert check_hand_laterality(*centres(_hand_roi(True)), sides) is None
    problem = check_hand_laterality(*centres(_hand_roi(False)), sides)
    assert problem is not None and SWAPPED in problem and "[1, 3]" in problem
    # RAS storage of the correct ROI: the same physical places, so no problem
    assert check_hand_laterality(*centres(sitk.Flip(_hand_roi(True), [True, True, False])), sides) is None


def test_mask_sides_config_is_validated():
    with pytest.raises(ConfigError, match="mask_sides"):
        load_config(overrides={"io": {"mask_sides": {"left": [1, 3], "right": [3, 4]}}})
    with pytest.raises(ConfigError, match="level_checks"):
        load_config(overrides={"roi": {"derive": {"level_checks": "ignore"}}})


def test_hand_roi_sides_are_checked_where_pass_one_reads_the_roi(tmp_path):
    """Pass 1's own check (engine.batch.tasks) on a written label map, mirrored and not: one line, stage mask."""
    cfg = load_config(overrides={"io": {"mask_sides": {"left": [1, 3], "right": [2, 4]}}})
    good, mirrored = tmp_path / "good.nii.gz", tmp_path / "mirrored.nii.gz"
    sitk.WriteImage(_hand_roi(True), str(good))
    sitk.WriteImage(_hand_roi(False), str(mirrored))
    _check_hand_sides(str(good), cfg)
    with pytest.raises(InputError, match=SWAPPED) as caught:
        _check_hand_sides(str(mirrored), cfg)
    assert caught.value.stage == "mask"
