"""Benchmark: QA pictures and the contact sheet at 2,000 patients (issue 23), against pass 1 side by side.

Per series of a synthetic cohort (CT and MRI), in this one process: pass 1 as a run does it
(:func:`engine.batch.tasks.ingest_and_preprocess`, forced, with the QA strip cut), pass 1 without the strip
(``run.qa: false``), and the QA task (:func:`engine.qa.render_series`: the picture drawn and
written, its record returned). Rows give the medians and the ratios to pass 1; the QA task is a
Dask task like pass 1's, so at 2,000 patients it adds about that ratio of pass 1's time to the run
on the same workers.

The contact sheet (:func:`engine.qa.render_sheet`) is timed on a synthetic run folder of 2,000
patients x 2 modalities (panels.json, features.csv, thresholds.json; no pictures needed):
the time to render and the page's size.

Run ``python -m bench --only qa [--quick]``. ``--quick``: one small patient, 1 repeat; full:
three small patients, 3 repeats. Both time the 2,000-patient sheet.
"""

from __future__ import annotations

import json
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from ._common import cohort_manifest, cohort_series, default_cache_dir, median_time, ratio


def _sheet_folder(root: Path, n_patients: int) -> Path:
    """A run folder holding only what the contact sheet reads, for ``n_patients`` x (CT, MRI)."""
    import pandas as pd

    from engine.contract import QA_DIR
    from engine.qa import write_panels

    rng = np.random.default_rng(0)
    ids = [f"SYN{i:05d}" for i in range(n_patients)]
    columns = {"patient_id": ids, "split": rng.choice(["train", "validation"], n_patients),
               "label": rng.integers(0, 2, n_patients)}
    for modality in ("ct", "mri"):
        for method in ("otsu", "kmeans", "gmm") + (("fixed",) if modality == "ct" else ()):
            columns[f"{modality}_{method}_fat_percent"] = rng.uniform(2, 40, n_patients)
        columns[f"{modality}_roi_volume"] = rng.normal(110_000, 15_000, n_patients)
        columns[f"{modality}_excluded_voxels"] = rng.integers(0, 500, n_patients).astype(float)
    for method in ("otsu", "kmeans", "gmm"):
        columns[f"ct_{method}_vs_fixed_percent"] = rng.uniform(0, 20, n_patients)
    (root / QA_DIR).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_csv(root / "features.csv", index=False)
    entry = {"methods": {m: {"threshold": t} for m, t in (("otsu", 5.0), ("kmeans", 6.0), ("gmm", 9.0))},
             "diagnostic": {"likely_one_tissue": False}}
    thresholds = {"modalities": {"ct": {**entry, "methods": {**entry["methods"], "fixed": {"threshold": -29.5}}},
                                 "mri": entry}}
    (root / "thresholds.json").write_text(json.dumps(thresholds), encoding="utf-8")
    write_panels(root, [{"patient_id": pid, "modality": m, "png": f"{pid}__{m}.png", "source": "hand ROI",
                         "roi_voxels": 110_000, "excluded_voxels": 100, "strip": True,
                         "midline": "gap between the ROI's left and right muscles", "strip_x_mm": 0.0,
                         "fields": {}} for pid in ids for m in ("ct", "mri")])
    return root


def _with_run_key(overrides: dict | None, **run_keys) -> dict:
    """``overrides`` with ``run_keys`` set in its ``run`` section."""
    overrides = dict(overrides or {})
    overrides["run"] = {**overrides.get("run", {}), **run_keys}
    return overrides


def run(quick: bool = False, *, cache_dir: str | Path | None = None, n_patients: int | None = None,
        repeats: int | None = None, sheet_patients: int | None = None,
        overrides: dict | None = None) -> list[dict]:
    """Pass 1 vs the QA task per series; the contact sheet's render time at ``sheet_patients`` x 2 series.

    ``overrides``: config overrides for pass 1 (the CI smoke test runs one N4 iteration).
    """
    from engine.batch.tasks import ingest_and_preprocess
    from engine.config import load_config
    from engine.qa import qa_specs, render_series, render_sheet
    from engine.runfolder import Thresholds

    n_patients = n_patients or (1 if quick else 3)
    repeats = repeats or (1 if quick else 3)
    sheet_patients = sheet_patients or 2000   # a few seconds: the figure to quote even in --quick
    manifest = cohort_manifest(cache_dir or default_cache_dir(), "small", n_patients)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-qa-") as tmp:
        run_dir = Path(tmp) / "run"
        for modality in ("ct", "mri"):
            with_qa = load_config(overrides=_with_run_key(overrides, qa=True))
            without_qa = load_config(overrides=_with_run_key(overrides, qa=False))
            for job in cohort_series(manifest, modality):
                cache = str(run_dir / "cache")
                warmup = 1 if modality == "ct" else 0   # an MRI pass 1 (N4) takes seconds: no warm-up call
                plain = median_time(partial(ingest_and_preprocess, job, without_qa, cache, force=True),
                                    repeats=repeats, warmup=warmup)
                pass1 = median_time(partial(ingest_and_preprocess, job, with_qa, cache, force=True),
                                    repeats=repeats, warmup=0)
                summary = pass1.result
                values = np.load(summary["sample"])["values"]
                entry = {"methods": {"otsu": {"threshold": float(np.median(values))}}, "diagnostic": {}}
                spec = qa_specs(Thresholds.from_json({"modalities": {modality: entry}}))[modality]
                qa = median_time(partial(render_series, summary, spec, str(run_dir), force=True),  # drawn each call,
                                 repeats=repeats, warmup=1)   # not a rerun's skip of an unchanged picture
                png = run_dir / "qa" / qa.result["png"]
                rows.append({"bench": "qa", "what": "per series", "series": f"{job['patient_id']}/{modality}",
                             "pass1_s": pass1.median_s, "pass1_without_strip_s": plain.median_s,
                             "qa_render_s": qa.median_s, "qa_vs_pass1": ratio(qa.median_s, pass1.median_s),
                             "strip_share_of_pass1": ratio(pass1.median_s - plain.median_s, pass1.median_s),
                             "png_kib": round(png.stat().st_size / 1024, 1), "repeats": repeats})
        folder = _sheet_folder(Path(tmp) / "sheet", sheet_patients)
        sheet = median_time(lambda: render_sheet(folder), repeats=repeats, warmup=0)
        rows.append({"bench": "qa", "what": "contact sheet", "series": f"{2 * sheet_patients} "
                     f"({sheet_patients} patients x CT, MRI)", "sheet_render_s": sheet.median_s,
                     "sheet_mib": round(sheet.result.stat().st_size / 2 ** 20, 2), "repeats": repeats})
    return rows
