"""The QA strip shows the level (issue 30 item 3): it spans the vertebra above the level to the one
below, each body labelled at its centre, the plane and slab drawn.

Checked on a phantom whose bodies are boxes (centres known by construction) and on the real CT of
``../shared/realdata/totalseg_ct_t11_l2`` with TotalSegmentator's labels (bodies found here with
numpy alone: the label's anterior part, as a reader would point at it).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from engine.config import load_config
from engine.contract import vertebra_structure
from engine.io.segmentation import derive_roi_from_file
from engine.qa import panel as qa_panel
from engine.qa.strip import sagittal_strip, strip_vertebrae, vertebra_bodies

from .cohorts import few_patients

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "totalseg_ct_t11_l2"
LABELS = load_config().roi.derive.label_table()
SPACING = (2.0, 2.0, 2.0)
#: Phantom bodies: vertebra -> (lowest, highest) z index of a 14 x 12 box (x by y voxels) with an arch
#: behind it; discs 3 voxels.
BODIES = {"L2": (60, 73), "L3": (43, 56), "L4": (26, 39), "L5": (9, 22)}
BODY_X, BODY_Y = (13, 27), (8, 20)


def test_strip_vertebrae_one_above_and_one_below():
    assert strip_vertebrae("L3/L4") == ("L2", "L3", "L4", "L5")
    assert strip_vertebrae("L3") == ("L2", "L3", "L4")
    assert strip_vertebrae("L5/S1") == ("L4", "L5", "S1")


def _phantom(tmp_path: Path) -> tuple[sitk.Image, Path, sitk.Image]:
    """(CT, its label map file, an ROI slab at the L3/L4 disc) on one 40 x 60 x 80 grid of 2 mm voxels."""
    shape = (80, 60, 40)                                       # (Z, Y, X)
    hu = np.full(shape, 40.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    for name, (low, high) in BODIES.items():
        value = LABELS[vertebra_structure(name)]
        labels[low:high + 1, BODY_Y[0]:BODY_Y[1], BODY_X[0]:BODY_X[1]] = value
        hu[low:high + 1, BODY_Y[0]:BODY_Y[1], BODY_X[0]:BODY_X[1]] = 300.0
        # the arch: walls around a canal (y 20..25, x 17..23) right behind the body, as a real label has
        labels[low:high + 1, 20:28, 15:26] = value
        labels[low:high + 1, 20:26, 17:24] = 0
    labels[44:46, 10:12, 15:17] = LABELS[vertebra_structure("L2")]  # a stray L2 piece inside L3's body
    labels[0:2, BODY_Y[0]:BODY_Y[1], BODY_X[0]:BODY_X[1]] = LABELS[vertebra_structure("S1")]  # S1 cut by the FOV
    roi = np.zeros(shape, np.uint8)
    roi[36:46, 30:50, 4:14] = 3
    roi[36:46, 30:50, 26:36] = 4

    def image(array):
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(SPACING)
        return out

    path = tmp_path / "seg.nii.gz"
    sitk.WriteImage(image(labels), str(path))
    return image(hu), path, image(roi)


def _label_z(strip: dict) -> dict[str, float]:
    """LPS z of the display row each drawn label is centred on, at the panel's scale (2 px per mm)."""
    n_rows, n_cols = np.asarray(strip["strip"]).shape
    rows = round(n_rows * strip["row_mm"] * qa_panel.PIXELS_PER_MM)
    cols = round(n_cols * strip["col_mm"] * qa_panel.PIXELS_PER_MM)
    z = np.asarray(strip["z_mm"])
    return {label.name: float(np.interp((label.row + 0.5) * n_rows / rows - 0.5, np.arange(n_rows), z))
            for label in qa_panel.vertebra_labels(strip, rows, cols)}


def test_phantom_strip_spans_l2_to_l5_with_labels_at_the_bodies(tmp_path):
    ct, seg, roi = _phantom(tmp_path)
    bodies = vertebra_bodies(seg, LABELS, strip_vertebrae("L3/L4"))
    assert list(bodies) == ["L2", "L3", "L4", "L5"]           # S1's 2-slice sliver is no body to label
    for name, (low, high) in BODIES.items():
        # the box's centre (L3 less the stray L2 piece it holds), not the stray's
        assert bodies[name][1] == pytest.approx((low + high) / 2 * SPACING[2], abs=0.1)
        assert bodies[name][0] == pytest.approx((BODY_Y[0] + BODY_Y[1] - 1) / 2 * SPACING[1], abs=0.1)
    strip = sagittal_strip(ct, roi, None, bodies=bodies)
    z = np.asarray(strip["z_mm"])
    assert z.max() >= BODIES["L2"][1] * SPACING[2] and z.min() <= BODIES["L5"][0] * SPACING[2]
    drawn = _label_z(strip)
    assert list(drawn) == ["L2", "L3", "L4", "L5"]            # top to bottom
    for name, (low, high) in BODIES.items():
        assert drawn[name] == pytest.approx((low + high) / 2 * SPACING[2], abs=strip["row_mm"])


def test_phantom_panel_draws_the_labels_inside_the_strip(tmp_path):
    from engine.measure.preprocess import preprocess

    ct, seg, roi = _phantom(tmp_path)
    derived = SimpleNamespace(level="L3/L4", vertebrae=("L3", "L4"), plane_mm=82.0, thickness_mm=20.0,
                              canal_x_mm=None)
    strip = sagittal_strip(ct, roi, derived, bodies=vertebra_bodies(seg, LABELS, strip_vertebrae("L3/L4")))
    assert strip["vertebra_at_level"].tolist() == [False, True, True, False]
    choice = qa_panel.OverlayChoice(None, None, "no tissues")
    sample = preprocess(ct, roi, spacing_mm=SPACING, window=(-190, 150))
    with_labels = np.asarray(qa_panel.render_panel(sample, strip, modality="ct", fat_is="low", choice=choice,
                                                   title="x"))
    without = np.asarray(qa_panel.render_panel(sample, {**strip, "vertebra_names": np.array([], str)},
                                               modality="ct", fat_is="low", choice=choice, title="x"))
    heights = [sample.preview.shape[0] * sample.grid.spacing[1], strip["strip"].shape[0] * strip["row_mm"]]
    scale = min(qa_panel.PIXELS_PER_MM, qa_panel.MAX_IMAGE_HEIGHT_PX / max(heights))
    axial = qa_panel.axial_image(sample, choice, "low", "ct", scale)[0]
    side = qa_panel.strip_image(strip, "ct", scale)[0]
    top, left = qa_panel.FONT_PX + 14 + qa_panel.MARGIN_PX, 3 * qa_panel.MARGIN_PX + axial.shape[1]
    band = slice(top, top + max(axial.shape[0], side.shape[0]))
    changed = np.argwhere((with_labels[band] != without[band]).any(axis=2))
    assert changed.size and changed[:, 1].min() >= left                  # on the strip, not on the slice
    assert changed[:, 1].max() < left + side.shape[1]
    # the level's two names in orange, the neighbours in white
    for colour in (qa_panel.PLANE_RGB, qa_panel.TEXT_RGB):
        assert (np.all(with_labels[band] == colour, axis=2).sum() > np.all(without[band] == colour, axis=2).sum())


def _independent_body_centre(labels: np.ndarray, image: sitk.Image, value: int) -> tuple[float, float]:
    """(y, z) LPS centre of the anterior 40 % of a label's antero-posterior extent (numpy alone)."""
    kk, jj, ii = np.nonzero(labels == value)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())[None, :]
    points = np.asarray(image.GetOrigin()) + np.stack([ii, jj, kk], axis=1) @ matrix.T
    y = points[:, 1]
    body = y <= y.min() + 0.4 * (y.max() - y.min())            # LPS: anterior is the smaller y
    return float(points[body, 1].mean()), float(points[body, 2].mean())


@pytest.fixture(scope="module")
def real_strip():
    if not (REAL / "example_ct_sm.nii.gz").is_file():
        pytest.skip("../shared/realdata/totalseg_ct_t11_l2 is not there")
    ct = sitk.ReadImage(str(REAL / "example_ct_sm.nii.gz"), sitk.sitkFloat32)
    derived = derive_roi_from_file(REAL / "example_seg.nii.gz", ct, label_table=LABELS, level="L1/L2")
    bodies = vertebra_bodies(REAL / "example_seg.nii.gz", LABELS, strip_vertebrae("L1/L2"))
    return ct, derived, bodies, sagittal_strip(ct, derived.roi, derived, bodies=bodies)


def test_real_ct_strip_labels_t12_l1_l2_at_their_bodies(real_strip):
    ct, derived, bodies, strip = real_strip
    assert list(bodies) == ["T12", "L1", "L2"]                # L3 lies below this CT's field of view
    seg = sitk.ReadImage(str(REAL / "example_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(seg)
    drawn = _label_z(strip)
    assert list(drawn) == ["T12", "L1", "L2"]
    for name in drawn:
        y, z = _independent_body_centre(labels, seg, LABELS[vertebra_structure(name)])
        assert bodies[name][1] == pytest.approx(z, abs=4.0), name    # within 1.3 voxels of 3 mm
        assert bodies[name][0] == pytest.approx(y, abs=10.0), name   # inside a body ~35 mm deep
        assert drawn[name] == pytest.approx(bodies[name][1], abs=strip["row_mm"]), name
    # the disc plane lies between the two labels of the level, the neighbour beyond them
    assert drawn["L2"] < derived.plane_mm < drawn["L1"] < drawn["T12"]


def test_real_ct_strip_spans_the_neighbouring_bodies(real_strip):
    ct, derived, bodies, strip = real_strip
    z = np.asarray(strip["z_mm"])
    top_of_image = max(ct.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, ct.GetSize()[2] - 1))
    assert z.max() >= min(bodies["T12"][3], top_of_image) - 1e-6   # T12's body in full view (or to the image's top)
    assert z.min() <= bodies["L2"][2]                               # down to L2's lower endplate
    assert z.max() - z.min() > 80.0                                 # was the slab +- 25 mm: 70 mm
    marks = np.sort(np.asarray(strip["marks_mm"]))
    assert marks[1] == pytest.approx(derived.plane_mm)


def test_folder_and_label_map_give_the_same_bodies(tmp_path_factory):
    """TotalSegmentator's two output forms (the synthetic cohort writes both) name the same bodies."""
    patient = few_patients(tmp_path_factory, 1, "strip_folder").parent / "patients" / "SYN0001"
    names = strip_vertebrae("L3/L4")
    from_folder = vertebra_bodies(patient / "ct_totalseg", LABELS, names)
    from_map = vertebra_bodies(patient / "ct_totalseg.nii.gz", LABELS, names)
    assert {"L3", "L4"} <= set(from_folder) and list(from_folder) == list(from_map)
    for name, body in from_folder.items():
        assert body == pytest.approx(from_map[name]), name
