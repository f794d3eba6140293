"""Benchmark: one clinical-size CT series from DICOM files to ROI histogram and tissue statistics.

Three contenders on the same files, side by side in one process (files in the page cache after
the warm-up call, so all three pay decoding, not the disk):

* ``floor``: ``pydicom.dcmread`` of every file + ``pixel_array`` + ``pydicom.pixels.apply_rescale``,
  sorted on z and stacked into a (Z, Y, X) float32 HU array. Nothing else: no checks, no
  geometry, no mask, no resampling. A reader that does useful work cannot beat it by much.
* ``ours``: :func:`engine.batch.tasks.ingest_and_preprocess` for the CT job (header scan and checks,
  mask read, decode of the slices the crop needs, crop to the ROI + 5 mm, 1 mm resample of the
  crop, window, cached ROI sample with the BLAKE3 digest of its inputs), then
  :func:`engine.batch.tasks.patient_histogram` and :func:`kernels.tissue_stats` on the cached sample:
  what pass 1, the histogram task and pass 2 cost for one series.
* ``naive``: SimpleITK ``ImageSeriesReader`` (GDCM) of the whole series, ``sitk.Resample`` of the
  whole volume to 1 mm (linear) and of the mask onto the same grid (nearest), numpy masking and
  window, then the same histogram and tissue statistics.

Two series per synthetic patient: the phantom's own slab (17 slices of 3 mm around L3/4, all of
them inside the ROI's crop) and the same slab padded to a whole lumbar CT (85 slices, 255 mm,
L1 to S1, the ROI unchanged), as PACS exports arrive. Every contender runs on one core (ITK
threads = 1), as a Dask worker runs a task.

Goals: ours / floor <= 1.5 (the checks and the crop-resample cost little beyond decoding) and
naive / ours >= 5 (resampling only the ROI neighbourhood instead of the whole volume). The row
also checks that ours and naive agree: the same ROI voxel count and the same mean HU inside the
window (the crop-resample is the whole-volume resample restricted to the crop).

Run ``python -m bench --only e2e [--quick]``. ``--quick``: one patient, 3 repeats; full: two
patients (explicit VR little endian and RLE), 7 repeats.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from ._common import cohort_manifest, cohort_series, default_cache_dir, median_time, ratio

SPACING_MM = (1.0, 1.0, 1.0)
# Any fixed threshold times the same work; this one sits between fat and muscle HU.
THRESHOLD_HU = -30.0
MEAN_HU_TOLERANCE = 0.01
GOAL_OURS_VS_FLOOR = 1.5
GOAL_NAIVE_VS_OURS = 5.0
LUMBAR_SLICES = 85  # 255 mm at 3 mm: L1 to S1


def floor_read(ct_dir: str) -> np.ndarray:
    """(Z, Y, X) float32 HU: pydicom decode + rescale of every file, stacked in z order."""
    import pydicom
    from pydicom.pixels import apply_rescale

    slices = []
    for path in sorted(Path(ct_dir).iterdir()):
        if not path.is_file():
            continue
        dataset = pydicom.dcmread(path)
        hu = apply_rescale(dataset.pixel_array, dataset).astype(np.float32)
        slices.append((float(dataset.ImagePositionPatient[2]), hu))
    slices.sort(key=lambda item: item[0])
    return np.stack([hu for _, hu in slices])


def _measure(window_values: np.ndarray, roi_voxels: int, window) -> dict:
    from kernels import histogram, tissue_stats

    counts = histogram(window_values, lo=window[0], hi=window[1], bin_width=1.0)
    stats = tissue_stats(window_values, THRESHOLD_HU, fat_is="low")
    return {"roi_voxels": roi_voxels, "window_voxels": int(counts.sum()),
            "mean_hu": float(window_values.mean(dtype=np.float64)) if window_values.size else math.nan,
            "fat_count": stats.fat_count}


def ours(job: dict, config, cache_dir: str) -> dict:
    """Pass 1 + histogram + tissue statistics of one series, as the pipeline runs them."""
    from engine.batch.tasks import ingest_and_preprocess, patient_histogram
    from engine.measure.preprocess import RoiSample
    from kernels import tissue_stats

    summary = ingest_and_preprocess(job, config, cache_dir, force=True)
    if summary["status"] != "ok":
        raise RuntimeError(f"ours failed on {job['patient_id']}: [{summary['stage']}] {summary['reason']}")
    low, high = config.preprocess.ct.window
    counts = patient_histogram(summary["sample"], low, high, 1.0, "cpu")
    window_values = RoiSample.load(summary["sample"]).window_values
    stats = tissue_stats(window_values, THRESHOLD_HU, fat_is="low")
    return {"roi_voxels": int(summary["roi_voxels"]), "window_voxels": int(counts.sum()),
            "mean_hu": float(window_values.mean(dtype=np.float64)), "fat_count": stats.fat_count}


def _naive_mask(roi_path: str, image):
    import SimpleITK as sitk

    name = Path(roi_path).name.lower()
    if name.endswith((".nii", ".nii.gz", ".nrrd")) and not name.endswith(".seg.nrrd"):
        return sitk.ReadImage(roi_path)
    # Slicer segmentations and DICOM-SEG need more than ReadImage: borrow the engine's reader.
    from engine.io import read_mask

    return read_mask(roi_path, image)


def naive(ct_dir: str, roi_path: str, window) -> dict:
    """Whole-series GDCM read, whole-volume 1 mm resample of image and mask, numpy masking."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(ct_dir))
    image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    mask = _naive_mask(roi_path, image)
    size = [
        max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), SPACING_MM, strict=True)
    ]
    background = float(np.min(sitk.GetArrayViewFromImage(image)))
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), SPACING_MM,
                              image.GetDirection(), background, sitk.sitkFloat32)
    resampled_mask = sitk.Resample(mask, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                                   SPACING_MM, image.GetDirection(), 0, mask.GetPixelID())
    volume = sitk.GetArrayViewFromImage(resampled)
    roi = sitk.GetArrayViewFromImage(resampled_mask) != 0
    values = volume[roi]
    window_values = values[(values >= window[0]) & (values <= window[1])]
    return _measure(window_values, int(values.size), window)


def lumbar_job(job: dict, out_dir: Path, n_slices: int = LUMBAR_SLICES, transfer_syntax: str | None = None) -> dict:
    """The job's CT slab padded with copies of its end slices to ``n_slices``, and its ROI on that grid.

    Written in the slab's own transfer syntax unless ``transfer_syntax`` names one (a key of
    :data:`engine.synthetic.dicom_writer.TRANSFER_SYNTAXES`); the ROI keeps its physical
    position, so the engine's crop and features are those of the slab while the files are
    those of a whole lumbar CT.
    """
    import pydicom
    import SimpleITK as sitk

    from engine.io import read_dicom_series, read_mask
    from engine.synthetic.dicom_writer import TRANSFER_SYNTAXES, write_dicom_series

    image, info = read_dicom_series(job["image"])
    first = pydicom.dcmread(next(p for p in sorted(Path(job["image"]).iterdir()) if p.is_file()),
                            stop_before_pixels=True)
    slope, intercept = float(first.get("RescaleSlope", 1)), float(first.get("RescaleIntercept", 0))
    stored = np.rint((sitk.GetArrayFromImage(image).astype(np.float64) - intercept) / slope).astype(np.uint16)
    mask = sitk.GetArrayFromImage(read_mask(job["roi"], image))
    below = (n_slices - stored.shape[0]) // 2
    above = n_slices - stored.shape[0] - below
    tall = np.concatenate([np.repeat(stored[:1], below, 0), stored, np.repeat(stored[-1:], above, 0)])
    tall_mask = np.concatenate([np.zeros((below, *mask.shape[1:]), mask.dtype), mask,
                                np.zeros((above, *mask.shape[1:]), mask.dtype)])
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) - below * image.GetSpacing()[2] * direction[:, 2]
    syntax = transfer_syntax or {uid: name for name, uid in TRANSFER_SYNTAXES.items()}[
        str(first.file_meta.TransferSyntaxUID)]
    ct_dir = out_dir / f"{job['patient_id']}-lumbar" / "ct"
    write_dicom_series(ct_dir, tall, spacing_mm=image.GetSpacing(), origin_mm=tuple(origin),
                       direction=image.GetDirection(), rescale_slope=slope, rescale_intercept=intercept,
                       transfer_syntax=syntax, series_description="AX LUMBAR 3mm", shuffle_seed=0)
    roi = sitk.GetImageFromArray(tall_mask)
    roi.SetSpacing(image.GetSpacing())
    roi.SetOrigin(tuple(float(v) for v in origin))
    roi.SetDirection(image.GetDirection())
    roi_path = ct_dir.parent / "ct_roi.nii.gz"
    sitk.WriteImage(roi, str(roi_path), True)
    return {**job, "patient_id": f"{job['patient_id']}-lumbar", "image": str(ct_dir), "roi": str(roi_path)}


def _series_facts(ct_dir: str) -> dict:
    import pydicom

    files = [p for p in Path(ct_dir).iterdir() if p.is_file()]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {"n_files": len(files), "matrix": f"{header.Rows}x{header.Columns}",
            "transfer_syntax": header.file_meta.TransferSyntaxUID.name}


def _time_series(job: dict, config, window, work_dir: str, repeats: int) -> dict:
    warmup = 1 if repeats > 1 else 0   # one repeat is a smoke run (CI): no warm-up call
    t_floor = median_time(lambda: floor_read(job["image"]), repeats=repeats, warmup=warmup)
    t_ours = median_time(lambda: ours(job, config, work_dir), repeats=repeats, warmup=warmup)
    t_naive = median_time(lambda: naive(job["image"], job["roi"], window), repeats=repeats, warmup=warmup)
    mine, theirs = t_ours.result, t_naive.result
    mean_diff = mine["mean_hu"] - theirs["mean_hu"]
    ours_vs_floor = ratio(t_ours.median_s, t_floor.median_s)
    naive_vs_ours = ratio(t_naive.median_s, t_ours.median_s)
    return {
        "bench": "e2e", "series": f"{job['patient_id']}/ct", **_series_facts(job["image"]),
        "repeats": repeats,
        "floor_s": t_floor.median_s, "ours_s": t_ours.median_s, "naive_s": t_naive.median_s,
        "ours_vs_floor": ours_vs_floor, "goal_ours_vs_floor_max": GOAL_OURS_VS_FLOOR,
        "naive_vs_ours": naive_vs_ours, "goal_naive_vs_ours_min": GOAL_NAIVE_VS_OURS,
        "goals_met": ours_vs_floor <= GOAL_OURS_VS_FLOOR and naive_vs_ours >= GOAL_NAIVE_VS_OURS,
        "roi_voxels_ours": mine["roi_voxels"], "roi_voxels_naive": theirs["roi_voxels"],
        "mean_hu_ours": mine["mean_hu"], "mean_hu_diff": mean_diff,
        "same_result": (mine["roi_voxels"] == theirs["roi_voxels"]
                        and mine["window_voxels"] == theirs["window_voxels"]
                        and abs(mean_diff) <= MEAN_HU_TOLERANCE),
    }


def run(quick: bool = False, *, cache_dir: str | Path | None = None, n_series: int | None = None,
        repeats: int | None = None) -> list[dict]:
    """Time floor / ours / naive on ``n_series`` clinical-size CT slabs (quick 1, full 2) and their lumbar versions."""
    import SimpleITK as sitk

    from engine.config import load_config

    n_series = n_series or (1 if quick else 2)
    repeats = repeats or (3 if quick else 7)
    manifest = cohort_manifest(cache_dir or default_cache_dir(), "clinical", n_series)
    config = load_config(overrides={"run": {"backend": "cpu"}})
    window = tuple(config.preprocess.ct.window)
    rows = []
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="sarco-bench-e2e-") as work_dir:
            for job in cohort_series(manifest, "ct"):
                for series in (job, lumbar_job(job, Path(work_dir))):
                    rows.append(_time_series(series, config, window, work_dir, repeats))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return rows
