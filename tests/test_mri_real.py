"""MRI fat measures meet real MRI (../shared/realdata; tests/realmri.py prepares them).

* A fat-suppressed T2 (CHAOS T2 SPIR): fat is dark, so the engine says so in one line (the
  series' error) instead of a fat percentage.
* A real lumbar Dixon pair (MyoSegmenTUM TUM02): water + fat is a fat-bright image with a hand
  mask; slab by slab as pseudo-patients, every slab is measured, its reference is named, and the
  engine's fat % is put next to the Dixon fat fraction (docs/mri.md discusses what it says).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.config import load_config
from engine.errors import InputError
from tests.realmri import CHAOS, DIXON, chaos_with_roi, dixon_arrays, write_dixon_slabs

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHAOS.exists() and DIXON.exists()), reason="../shared/realdata is missing")]


def _mri_options(config) -> dict:
    prep = config.modality_preprocess("mri")
    return {"spacing_mm": config.preprocess.spacing_mm, "margin_mm": prep.crop_margin_mm, "window": prep.window,
            "n4": prep.n4, "n4_shrink_factor": prep.n4_shrink_factor, "n4_iterations": prep.n4_iterations,
            "n4_convergence_threshold": prep.n4_convergence_threshold, "standardize": prep.standardize,
            "standardize_target": prep.standardize_target, "reference": prep.reference}


def test_a_fat_suppressed_t2_is_named_not_measured(tmp_path):
    """Issue 32: CHAOS T2 SPIR (fat-suppressed) gives one line naming it, not fat percentages."""
    from engine.io import open_image, read_mask
    from engine.measure.preprocess import preprocess

    image_path, roi_path = chaos_with_roi(tmp_path)
    image = open_image(str(image_path))
    with pytest.raises(InputError, match="looks fat-suppressed") as error:
        preprocess(image, read_mask(str(roi_path), image), **_mri_options(load_config()))
    assert error.value.stage == "preprocess" and "\n" not in error.value.reason


def test_the_dixon_truth_is_what_the_readme_says():
    """The pairing is voxel by voxel: the fat fraction is low in muscle, high under the skin."""
    _, water, fat, mask = dixon_arrays()
    fraction = fat / np.maximum(water + fat, 1e-6)
    muscle = fraction[mask > 0]
    assert np.median(muscle) < 0.2 and sorted(np.unique(mask)) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def dixon_run(tmp_path_factory):
    from engine.batch.pipeline import run

    root = tmp_path_factory.mktemp("dixon")
    manifest = write_dixon_slabs(root / "slabs")
    config = load_config(overrides={
        "run": {"backend": "cpu", "scheduler": "inline", "report": False, "habitats": False, "qa": False},
        "stats": {"enabled": False}})
    result = run(manifest, out_dir=root / "run", config=config)
    features = pd.read_csv(root / "run" / "features.csv", dtype={"patient_id": str})
    truth = pd.read_csv(manifest.parent / "truth.csv", dtype={"patient_id": str})
    return root / "run", result, truth.merge(features, on="patient_id", how="left")


def test_every_dixon_slab_is_measured_with_its_reference_named(dixon_run):
    from engine.contract import MRI_REFERENCE_CSV

    out, result, merged = dixon_run
    print(merged[["patient_id", "slices", "dixon_fat_fraction", "mri_otsu_fat_percent",
                  "mri_kmeans_fat_percent", "mri_gmm_fat_percent"]].to_string())
    assert result.errors.empty, result.errors.to_string()
    assert merged["mri_otsu_fat_percent"].notna().all()
    table = pd.read_csv(out / MRI_REFERENCE_CSV, keep_default_na=False)
    assert len(table) == len(merged) and (table["reason"] != "").all()
    # a healthy volunteer's muscle: the Dixon fat fraction is a few percent in every slab
    assert merged["dixon_fat_fraction"].between(0.0, 0.2).all()
