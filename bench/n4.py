"""Benchmark: N4 bias-field correction time per T2 MRI series, shrink factor 4 vs 2.

The engine runs N4 (:func:`engine.measure.preprocess.n4_correct`, SimpleITK, one ITK thread) on the
resampled ROI neighbourhood of each MRI series: the ROI's bounding box + 20 mm at 1 mm
spacing, which is what is timed here. The series is read, masked and crop-resampled once,
untimed, exactly as pass 1 does; then N4 runs with the configured iterations (50, 50, 50, 50)
at shrink factor 4 (the default) and 2 (a finer field estimate, about 8x the voxels to fit).

Rows: one per MRI series and shrink factor, with the crop size, the median over repeats and
the ratio to shrink 4 on the same series. The synthetic MR series are 10 slices; small-size
matrices are 128-192, clinical 256-512.

Both sizes give crops of about the same size (the crop follows the anatomy, not the matrix),
so the time per series is set by the ROI's extent and the shrink factor.

A last row per series times the MRI pass 1 itself (:func:`engine.measure.preprocess.preprocess` with the
default MRI options: the series' one N4 on its whole slices shrunk, the field divided out of the
crop, the reference measured and the crop scaled; the series opened and masked untimed) and its
ratio to the crop's N4 at shrink 4 (the goal: at most 2).

Run ``python -m bench --only n4 [--quick]``. ``--quick``: one small series, 1 repeat; full: two
small and two clinical series, 3 repeats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import cohort_manifest, cohort_series, default_cache_dir, median_time, ratio

SHRINK_FACTORS = (4, 2)


def resampled_crop(job: dict, config):
    """The MRI crop N4 sees in pass 1: open, mask, crop + margin, 1 mm resample (untimed)."""
    from engine.io import open_image, read_mask
    from engine.measure.preprocess import crop_and_resample

    image = open_image(job["image"])
    mask = read_mask(job["roi"], image)
    prep = config.modality_preprocess("mri")
    crop, _ = crop_and_resample(image, mask, config.preprocess.spacing_mm, prep.crop_margin_mm)
    return crop


def run(quick: bool = False, *, cache_dir: str | Path | None = None, sizes=None,
        n_series: int | None = None, repeats: int | None = None, overrides: dict | None = None,
        shrink_factors: tuple[int, ...] = SHRINK_FACTORS) -> list[dict]:
    """Time N4 at each shrink factor on ``n_series`` MRI series per size (quick 1 small; full 2 of each).

    ``overrides``: config overrides; with ``shrink_factors``, what the CI smoke test shrinks (one
    N4 iteration at coarse shrink factors).
    """
    from engine.config import load_config
    from engine.measure.preprocess import n4_correct

    sizes = sizes or (("small",) if quick else ("small", "clinical"))
    n_series = n_series or (1 if quick else 2)
    repeats = repeats or (1 if quick else 3)
    config = load_config(overrides=overrides)
    prep = config.modality_preprocess("mri")
    rows = []
    for size in sizes:
        manifest = cohort_manifest(cache_dir or default_cache_dir(), size, n_series)
        for job in cohort_series(manifest, "mri"):
            crop = resampled_crop(job, config)
            reference = None
            for shrink in shrink_factors:
                timing = median_time(
                    lambda crop=crop, shrink=shrink: n4_correct(
                        crop,
                        shrink_factor=shrink,
                        iterations=prep.n4_iterations,
                        convergence_threshold=prep.n4_convergence_threshold,
                    ),
                    repeats=repeats,
                    warmup=0,
                )
                reference = reference or timing.median_s
                rows.append({"bench": "n4", "size": size, "series": f"{job['patient_id']}/mri",
                             "what": f"N4 on the crop, shrink {shrink}",
                             "crop_xyz": "x".join(str(n) for n in crop.GetSize()),
                             "crop_voxels": int(np.prod(crop.GetSize())), "shrink_factor": shrink,
                             "iterations": list(prep.n4_iterations), "repeats": repeats,
                             "median_s": timing.median_s, "min_s": timing.min_s,
                             "ratio_vs_shrink4": ratio(timing.median_s, reference)})
            rows.append(_pass1_row(job, config, size, crop, repeats, reference))
    return rows


def _pass1_row(job: dict, config, size: str, crop, repeats: int, crop_n4_s: float) -> dict:
    """The MRI pass 1 of one series (preprocess with the default MRI options), timed; ratio to the crop's N4."""
    from engine.io import open_image, read_mask
    from engine.measure.preprocess import preprocess

    prep = config.modality_preprocess("mri")
    image = open_image(job["image"])
    mask = read_mask(job["roi"], image)
    timing = median_time(lambda: preprocess(
        image, mask, spacing_mm=config.preprocess.spacing_mm, margin_mm=prep.crop_margin_mm, window=prep.window,
        n4=prep.n4, n4_shrink_factor=prep.n4_shrink_factor, n4_iterations=prep.n4_iterations,
        n4_convergence_threshold=prep.n4_convergence_threshold, standardize=prep.standardize,
        standardize_target=prep.standardize_target, reference=prep.reference), repeats=repeats, warmup=0)
    return {"bench": "n4", "size": size, "series": f"{job['patient_id']}/mri", "what": "MRI pass 1",
            "crop_xyz": "x".join(str(n) for n in crop.GetSize()), "crop_voxels": int(np.prod(crop.GetSize())),
            "shrink_factor": prep.n4_shrink_factor, "iterations": list(prep.n4_iterations), "repeats": repeats,
            "median_s": timing.median_s, "min_s": timing.min_s, "ratio_vs_shrink4": ratio(timing.median_s, crop_n4_s)}
