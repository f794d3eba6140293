"""The QA strip's ROI profiles: counted on the ROI's bounding box, equal to whole-volume numpy counts.

Regression guard for issue 28 (pass 1 slower): the strip scanned the whole series' mask three
times with ``count_nonzero`` and twice with ``argwhere``; it now counts only the ROI's box. The
references are numpy's own whole-array reductions, so a box off by one row fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.qa.strip import _centroid_ijk, roi_profiles


def _roi(shape, box, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    roi = np.zeros(shape, np.uint8)
    (k0, k1), (j0, j1), (i0, i1) = box
    roi[k0:k1, j0:j1, i0:i1] = (rng.random((k1 - k0, j1 - j0, i1 - i0)) < 0.3) * rng.integers(1, 5)
    return roi


@pytest.mark.parametrize("box", [((0, 3), (5, 9), (2, 30)), ((40, 60), (0, 32), (0, 32)), ((7, 8), (31, 32), (0, 1)),
                                 ((10, 50), (3, 29), (11, 12))])
def test_roi_profiles_and_centroid_match_whole_volume_numpy(box):
    roi = _roi((60, 32, 32), box, seed=sum(map(sum, box)))
    profiles = roi_profiles(roi)
    for axis in range(3):
        expected = np.count_nonzero(roi, axis=tuple(a for a in range(3) if a != axis))
        np.testing.assert_array_equal(profiles[axis], expected)
    # bit for bit the centroid the strip used before: argwhere's (k, j, i) mean, reversed
    assert _centroid_ijk(profiles).tobytes() == np.argwhere(roi).mean(axis=0)[::-1].tobytes()


def test_roi_profiles_of_an_empty_roi_are_zero():
    profiles = roi_profiles(np.zeros((4, 5, 6), np.uint8))
    assert [p.tolist() for p in profiles] == [[0] * 4, [0] * 5, [0] * 6]
