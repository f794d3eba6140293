"""Benchmark: ``sarco synth`` time per patient, and the 200-patient time it implies.

:func:`engine.synthetic.synthesize_cohort` (what ``sarco synth`` calls) writes N patients (CT and
MRI DICOM series, ROI masks, manifest, truth) into a fresh temporary folder, once per size and
worker count. Rows give the wall time, the time per patient and ``extrapolated_200_s``, the
time of ``sarco synth --patients 200`` at that rate (``total_s * 200 / N``). With 2 workers the
process pool's start (spawn: each worker imports numpy, scipy and pydicom) is inside
``total_s``; at small N it weighs on the rate, so the extrapolation is an upper bound there.
Interpreter start and CLI parsing (under a second) are not included.

Run ``python -m bench --only synth_time [--quick]``. ``--quick``: N = 2; full: N = 20; both
sizes (small, clinical) and workers 1 and 2.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

EXTRAPOLATE_TO = 200


def run(quick: bool = False, *, n_patients: int | None = None, sizes=("small", "clinical"),
        workers=(1, 2), cache_dir: str | Path | None = None) -> list[dict]:
    """Time the synthesis of ``n_patients`` (quick 2, full 20) per size and worker count.

    ``cache_dir`` is accepted for a uniform interface and unused: synthesis is what is timed,
    so it always writes into a fresh temporary folder.
    """
    from engine.synthetic import synthesize_cohort

    n_patients = n_patients or (2 if quick else 20)
    rows = []
    for size in sizes:
        for n_workers in workers:
            out_dir = Path(tempfile.mkdtemp(prefix="sarco-bench-synth-"))
            try:
                start = time.perf_counter()
                synthesize_cohort(out_dir, n_patients=n_patients, seed=0, size=size, workers=n_workers)
                total = time.perf_counter() - start
                written_mib = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file()) / 2**20
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
            rows.append({"bench": "synth_time", "size": size, "workers": n_workers, "n_patients": n_patients,
                         "total_s": total, "s_per_patient": total / n_patients,
                         "mib_per_patient": written_mib / n_patients,
                         f"extrapolated_{EXTRAPOLATE_TO}_s": total * EXTRAPOLATE_TO / n_patients})
    return rows
