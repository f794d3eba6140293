"""The one synthetic cohort a test session shares.

Synthesizing is the most expensive fixture of the suite (seconds per patient on a loaded 2-core
CI machine), and a patient depends only on the seed and its index, never on the cohort's size.
So the session writes one cohort of :data:`N_PATIENTS` once, and each suite takes the first
``n`` rows of its manifest (:func:`first_patients`), which are exactly the patients a cohort of
``n`` would hold. The synthesizer's own tests, the engine's end-to-end runs, the bad-input
corpus, the PHI scan and the statistics' end-to-end run all read this folder; none writes into
a patient's files (the corpus writes its corrupted copies beside them).
"""

from __future__ import annotations

import csv
from pathlib import Path

SEED = 11
N_PATIENTS = 40
_SESSION: dict[str, Path] = {}


def shared_cohort(tmp_path_factory) -> Path:
    """The session cohort's ``manifest.csv`` (synthesized on first use)."""
    if "manifest" not in _SESSION:
        from engine.synthetic import synthesize_cohort

        root = tmp_path_factory.mktemp("shared_cohort")
        _SESSION["manifest"] = synthesize_cohort(root, n_patients=N_PATIENTS, seed=SEED, size="small", workers=2)
    return _SESSION["manifest"]


def first_patients(manifest: Path, n: int, name: str) -> Path:
    """A manifest beside ``manifest`` holding its first ``n`` rows (same relative paths)."""
    if n > N_PATIENTS:
        raise ValueError(f"the shared cohort has {N_PATIENTS} patients, {n} were asked for")
    path = manifest.parent / f"manifest_{name}.csv"
    if not path.exists():
        with open(manifest, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header, rows = reader.fieldnames, list(reader)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows[:n])
    return path


def few_patients(tmp_path_factory, n: int, name: str) -> Path:
    """The first ``n`` patients of the session cohort: taken from it when this session already wrote it,
    else synthesized alone (the same patients: a patient depends only on the seed and its index)."""
    if "manifest" in _SESSION:
        return first_patients(_SESSION["manifest"], n, name)
    from engine.synthetic import synthesize_cohort

    return synthesize_cohort(tmp_path_factory.mktemp(f"cohort_{name}"), n_patients=n, seed=SEED, size="small",
                             workers=1)
