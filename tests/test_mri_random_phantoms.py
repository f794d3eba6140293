"""MRI fat % on random phantoms nobody tuned to (engine/synthetic/random_mri.py).

Every patient draws its own anatomy, field (up to +-40 %, a posterior coil profile), slice count
(5-30), slice gap, canal, noise and field of view. The three cohort seeds below were fixed and
committed before the engine first ran on any of them; they are never changed after seeing a
result. The truth is the phantom's fat fraction (truth.csv), never a value the engine computed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.config import load_config

#: Pre-registered cohort seeds (committed before the first run; see docs/mri.md for every seed run).
SEEDS = (3217, 48821, 905113)
#: Patients per cohort in the test (the README's figures use 40).
N_PATIENTS = 8
#: Goal r of MRI fat % against the true fat fraction, per method.
R_MIN = {"otsu": 0.95, "kmeans": 0.95, "gmm": 0.90}

pytestmark = pytest.mark.slow


def _config():
    return load_config(overrides={
        "run": {"backend": "cpu", "scheduler": "inline", "report": False, "habitats": False, "qa": False},
        "stats": {"enabled": False}})


#: Seeds whose goal is not met yet, with why (docs/mri.md): kept, never re-drawn; strict, so a fix shows.
NOT_MET = {905113: "one-point CSF scaling: the phantom's per-patient fat/CSF ratio (0.60-1.03) moves fat "
                   "across the pooled threshold (r 0.73 / 0.73 / 0.85 on 8 patients, 0.93 / 0.93 / 0.92 on 40)"}


def test_random_phantoms_are_drawn_per_patient():
    from engine.synthetic.random_mri import draw, patient_rng

    draws = [draw(patient_rng(SEEDS[0], i), i) for i in range(12)]
    assert len({d.n_slices for d in draws}) > 1 and len({round(d.fov_mm) for d in draws}) > 1
    assert all(5 <= d.n_slices <= 30 and 0.1 <= d.field_strength <= 0.4 for d in draws)
    assert {d.vendor for d in draws} == {0, 1}
    assert draw(patient_rng(SEEDS[0], 3), 3) == draws[3], "a patient depends only on the seed and its index"


class _RandomCohort:
    """One pre-registered cohort: its run is computed once per class. One class per seed, so that
    pytest-xdist (``--dist loadscope``) can run the three cohorts on different workers."""

    seed: int

    @pytest.fixture(scope="class")
    def random_run(self, tmp_path_factory):
        from engine.batch.pipeline import run
        from engine.synthetic.random_mri import write_random_mri_cohort

        root = tmp_path_factory.mktemp(f"random_mri_{self.seed}")
        manifest = write_random_mri_cohort(root / "cohort", n_patients=N_PATIENTS, seed=self.seed)
        result = run(manifest, out_dir=root / "run", config=_config())
        features = pd.read_csv(root / "run" / "features.csv", dtype={"patient_id": str})
        truth = pd.read_csv(manifest.parent / "truth.csv", dtype={"patient_id": str})
        return self.seed, result, truth.merge(features, on="patient_id", how="left")

    @pytest.mark.parametrize("method", sorted(R_MIN))
    def test_mri_fat_tracks_the_truth_on_random_phantoms(self, random_run, method):
        seed, result, merged = random_run
        assert len(merged) == N_PATIENTS
        measured = merged[f"mri_{method}_fat_percent"]
        assert measured.notna().all(), result.errors.to_string()
        r = float(np.corrcoef(measured, merged["mri_true_fat_fraction"])[0, 1])
        print(f"random phantoms seed {seed}, {method}: r = {r:.4f}")
        assert r >= R_MIN[method], f"seed {seed}, {method}: r = {r:.3f}"


def _cohort_class(seed: int) -> type:
    marks = [pytest.mark.xfail(reason=NOT_MET[seed], strict=True)] if seed in NOT_MET else []
    return type(f"TestSeed{seed}", (_RandomCohort,), {"seed": seed, "pytestmark": marks})


TestSeed3217, TestSeed48821, TestSeed905113 = (_cohort_class(seed) for seed in SEEDS)
