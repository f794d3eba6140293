"""The work of one patient and modality, as plain functions a Dask worker runs.

Arguments and results are small and picklable (paths, dicts, numbers); volumes and ROI samples
never travel through the scheduler: pass 1 writes the ROI sample to the cache and returns a
summary, the histogram task reads it back and returns counts (a few thousand int64), pass 2
reads it again and returns one feature row. Memory therefore stays flat in the number of
patients. Every result is cached on disk under a key that covers its inputs, so a rerun
recomputes only what is missing or stale.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import SimpleITK as sitk

from engine import __version__
from engine.batch.backend import to_device, to_host
from engine.config import Config
from engine.contract import (
    DICOM_MODALITY,
    DISC_PLANE_KEY,
    FIXED,
    HABITAT_LABELS,
    SCANNER_KEY,
    STANDARDIZATION_KEY,
    TISSUES,
    excluded_voxels_column,
    feature_name,
    features_cache_path,
    habitat_path,
    qa_strip_path,
    roi_volume_column,
    sample_path,
    scanner_of,
    summary_path,
    vs_fixed_column,
)
from engine.errors import InputError
from engine.io import open_image, read_mask
from engine.io.anatomy import check_hand_laterality, mask_centre_x_mm
from engine.io.masks import read_mask_native
from engine.io.segmentation import derive_roi_from_file
from engine.measure.features import TissueMeasure, measure, stat_names
from engine.measure.methods import get as get_method
from engine.measure.methods import modality_methods, registered
from engine.measure.plugins import import_plugins
from engine.measure.preprocess import RoiSample, native_roi, preprocess
from engine.qa.strip import sagittal_strip, strip_vertebrae, vertebra_bodies
from engine.runfolder import ModalityThresholds
from engine.runfolder.outputs import write_bytes, write_image, write_json
from engine.runfolder.previews import write_preview
from kernels import classify, histogram, tissue_stats

#: Version of the cached QA strip's layout (:mod:`engine.qa.strip`): a series cached with another
#: (or without one) is redone when QA is on. 2: through the spinal canal, display-oriented (issue 23);
#: 3: spans the vertebrae around the level, labelled (issue 30).
QA_STRIP_FORMAT = 3
#: Version of the cached ROI sample's layout: 2 adds the ROI's native voxels (CT; issue 30), so a
#: series cached before them is read again.
SAMPLE_FORMAT = 2


def _hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        files: list[Path] = []
        for root, dirs, names in os.walk(path, followlinks=False):
            dirs.sort()
            files.extend(Path(root) / name for name in sorted(names))
        return files
    return [path]


def stat_signature(*paths: str) -> list:
    """(relative name, size, mtime) of every input file: the cache's staleness check.

    Like make and rsync, a file that changed has a new size or mtime; reading every byte of a
    2,000-patient export on each nightly rerun would cost more than the work it saves.
    """
    signature: list[Any] = []
    for text in paths:
        if not text:
            signature.append(None)
            continue
        path = Path(text)
        if not path.exists():
            signature.append([text, "missing"])
            continue
        entries: list[list[Any]] = []
        for file in _files_under(path):
            try:
                st = file.stat()
                entries.append([os.path.relpath(file, path) if path.is_dir() else file.name, st.st_size,
                                st.st_mtime_ns])
            except OSError:
                entries.append([str(file), "unreadable"])
        signature.append(entries)
    return signature


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def content_digest(*paths: str) -> str:
    """BLAKE3 over the names and bytes of every input file in a stable order (for provenance.json).

    BLAKE3 rather than SHA-256: as collision-resistant, and 4-5x faster on one core (about
    10 GB/s against 2), which matters when the digest costs as much as decoding the series.

    Only regular files are read: opening a named pipe left in a series folder would block the
    worker for ever (the ingest skips such files too).
    """

    digest = blake3.blake3()
    for text in paths:
        if not text or not Path(text).exists():
            continue
        for file in _files_under(Path(text)):
            digest.update(file.name.encode())
            if not _is_regular_file(file):
                digest.update(b"<not a regular file>")
                continue
            try:
                with open(file, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            except OSError:
                digest.update(b"<unreadable>")
    return digest.hexdigest()


def one_itk_thread() -> None:
    """ITK's filters run on one thread in every task, inline runs included.

    N4's B-spline fit is not bit-reproducible across thread counts (its internal filters follow
    ITK's global default, not the corrector's own setting), so MRI features depended on where a
    task ran: on an H200 machine the 16-core inline run and a LocalCUDACluster worker gave different
    thresholds (device check, issue 25). One thread also keeps a Dask worker, which already has a
    core per task, from oversubscribing the machine.
    """
    if sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() != 1:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data) -> None:

    write_json(path, data)


def _as_written(reason: str, job: dict) -> str:
    """A reason with the job's absolute input paths shown relative to the manifest's folder.

    The manifest's paths were written relative to its folder (docs/method.md section 1), so that is
    how a radiographer finds them again. Applies when the job carries ``manifest_dir``.
    """
    base = job.get("manifest_dir")
    if not base:
        return reason
    for path in sorted((job.get("image") or "", job.get("roi") or "", job.get("segmentation") or ""), key=len,
                       reverse=True):
        if path and os.path.isabs(path) and path in reason:
            try:
                shown = os.path.relpath(path, base)
            except ValueError:  # another drive (Windows)
                continue
            if not shown.startswith(".."):
                reason = reason.replace(path, shown)
    return reason


def _derive_roi(segmentation: str, image, cfg, write_to: str | None):
    """The ROI from a whole-body segmentation (``roi.derive``), written to ``write_to`` for review."""

    derive = cfg.roi.derive
    derived = derive_roi_from_file(segmentation, image, label_table=derive.label_table(), level=derive.level,
                                   thickness_mm=derive.thickness_mm, muscles=derive.muscles,
                                   level_checks=derive.level_checks)
    if write_to:
        # on the image grid, labels kept: open it over the image in 3D Slicer, correct, give it back as *_roi
        write_image(write_to, derived.roi)
    return derived


def _disc_plane_row(derived) -> dict:
    """The derivation's row of disc_planes.csv (less patient_id and modality; issue 23)."""
    upper, lower = derived.vertebrae
    canal = derived.canal_xy_mm
    return {"level": derived.level, "upper_vertebra": upper, "lower_vertebra": lower,
            "disc_z_mm": round(derived.plane_mm, 3), "slab_min_z_mm": round(derived.slab_mm[0], 3),
            "slab_max_z_mm": round(derived.slab_mm[1], 3), "thickness_mm": derived.thickness_mm,
            "canal_x_mm": round(canal[0], 2) if canal else None, "canal_y_mm": round(canal[1], 2) if canal else None,
            "method": derived.method, "dropped_voxels": int(derived.dropped_voxels), **derived.checks}


def _save_qa_strip(image, mask, derived, path: Path, segmentation: str = "", label_table=None) -> None:
    """Cache the QA panel's sagittal strip through the spinal canal (:func:`engine.qa.strip.sagittal_strip`).

    Cut here, while the series is open: only the strip's slices are decoded. A derived ROI's strip
    spans the vertebrae around the level, labelled (read again from ``segmentation``).
    """

    bodies = None
    if derived is not None and segmentation:
        bodies = vertebra_bodies(segmentation, label_table or {}, strip_vertebrae(derived.level))
    buffer = io.BytesIO()
    np.savez(buffer, **sagittal_strip(image, mask, derived, bodies=bodies))
    write_bytes(path, buffer.getvalue())


def _standardize_options(prep) -> dict:
    """The MRI standardisation keywords of :func:`engine.measure.preprocess.preprocess` (CT has none)."""
    if getattr(prep, "standardize", "none") == "none":
        return {}
    return {"standardize": prep.standardize, "standardize_target": prep.standardize_target,
            "reference": prep.reference}


def _validated(cfg) -> Config:
    """The run's config as it crosses into a task: validated once, before the run (issue 21).

    A task never re-validates: the frozen :class:`~engine.config.Config` travels to the workers as
    it is (it pickles). A plain mapping is refused, so a caller cannot skip the validation.
    The run's plug-ins (``run.plugins``, installed entry points) are imported here, once per
    process, so every Dask worker, local or external, has the stats and methods the client has.
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"a task takes the run's validated Config (engine.config.load_config), got "
                        f"{type(cfg).__name__}")
    import_plugins(cfg.run.plugins)
    return cfg


def ingest_and_preprocess(job: dict, cfg: Config, cache_dir: str, force: bool = False) -> dict:
    """Pass 1 for one patient and modality: read, check, resample, N4, window -> cached ROI sample.

    Returns a summary dict: ``status`` ``ok`` (with the sample path and its size and value range)
    or ``error`` (with ``stage`` and ``reason``). Errors are cached too, under the same key: a
    broken study is not re-read every night until its files change.
    """
    cfg = _validated(cfg)
    pid, modality = job["patient_id"], job["modality"]
    # the segmentation counts only when it is used: an explicit ROI wins over it
    derive_from = job.get("segmentation") or "" if not job["roi"] else ""
    key = _hash({"inputs": stat_signature(job["image"], job["roi"], *([derive_from] if derive_from else [])),
                 "series_uid": job.get("series_uid"),
                 "config": cfg.preprocess_key(modality), "engine": __version__, "sample": SAMPLE_FORMAT})
    cache = Path(cache_dir)
    if not force:
        cached = _cached_summary(job, key, cache, derive_from, need_strip=cfg.run.qa)
        if cached is not None:
            return cached
    base = {"patient_id": pid, "modality": modality, "key": key, "cached": False}
    reached = {"stage": "ingest"}  # the step an unforeseen error happened in
    one_itk_thread()
    try:
        summary = {**base, **_ingest(job, cfg, cache, derive_from, reached)}
    except InputError as exc:
        summary = {**base, "status": "error", "stage": exc.stage, "reason": _as_written(exc.reason, job)}
    except MemoryError:
        summary = {**base, "status": "error", "stage": reached["stage"],
                   "reason": "ran out of memory reading this study"}
    except Exception as exc:  # noqa: BLE001 - an input we did not foresee must not stop the night's batch
        summary = {**base, "status": "error", "stage": reached["stage"],
                   "reason": _as_written(f"unexpected {type(exc).__name__} while reading this study: {exc}", job)}
    cache.mkdir(parents=True, exist_ok=True)
    _write_json(summary_path(cache, pid, modality), _without_paths(summary))
    return summary


def _without_paths(summary: dict) -> dict:
    """The cached summary as written: file names, not absolute paths (the run folder holds no path,
    and a moved folder finds its files again: :func:`_cached_summary` puts the path back)."""
    written = dict(summary)
    if "sample" in written:
        written["sample"] = Path(written["sample"]).name
    if isinstance(written.get("derived_roi"), dict) and written["derived_roi"].get("path"):
        written["derived_roi"] = {**written["derived_roi"], "path": Path(written["derived_roi"]["path"]).name}
    return written


def _cached_summary(job: dict, key: str, cache: Path, derive_from: str, *, need_strip: bool) -> dict | None:
    """The cached pass-1 summary under ``key`` if it and its files are still there, else None.

    ``need_strip``: QA is on, so a series cached by a run without QA (its strip never drawn) is
    redone; one whose strip could not be drawn is not retried on every rerun.
    """
    pid, modality = job["patient_id"], job["modality"]
    cached = _read_json(summary_path(cache, pid, modality))
    sample_file = sample_path(cache, pid, modality)
    derived_file = job.get("derived_roi")
    derived_ok = not (derive_from and derived_file) or Path(derived_file).exists()
    # the published preview must be there too (a run folder whose previews/ was deleted redraws them)
    preview_ok = not job.get("preview") or Path(job["preview"]).exists()
    if not cached or cached.get("key") != key:
        return None
    if cached["status"] != "error" and not (sample_file.exists() and derived_ok and preview_ok):
        return None
    if cached["status"] == "ok" and need_strip and cached.get("qa_strip_attempted") != QA_STRIP_FORMAT:
        return None
    if cached["status"] == "ok" and derive_from and DISC_PLANE_KEY not in cached:
        return None   # derived before the body-based disc plane (issue 23): place it again
    cached["cached"] = True
    if cached["status"] == "ok":
        cached["sample"] = str(sample_file)  # where it is now: a run folder may have been moved
    return cached


def _open_checked_image(job: dict, cfg):
    """The series (checked now, decoded later where the ROI's crop needs it) of the right modality."""

    modality = job["modality"]
    if not job["image"]:
        raise InputError("ingest", f"no {modality.upper()} image path in the manifest although an ROI is given")
    hint = (f"write the SeriesInstanceUID of the one to use in the manifest's {modality}_series_uid column, "
            f"or set io.series_description.{modality} in the config to a pattern of its description")
    image = open_image(job["image"], series_uid=job.get("series_uid"), max_voxels=cfg.io.max_voxels_per_volume,
                       max_files=cfg.io.max_files_per_series, series_hint=hint,
                       series_description=cfg.io.series_description.get(modality))
    found = (image.info or {}).get("modality")
    expected = DICOM_MODALITY[modality]
    if found and found in ("CT", "MR") and found != expected:
        article = "an" if found == "MR" else "a"
        raise InputError("ingest", f"the {modality.upper()} column points to {article} {found} series; "
                                   f"give the {expected} series in {modality}_image")
    return image


def _roi_mask(job: dict, image, cfg, derive_from: str, reached: dict):
    """(ROI mask on the image grid, the derivation or None): the manifest's ROI, else one derived."""

    reached["stage"] = "mask"
    if derive_from:
        reached["stage"] = "segmentation"
        derived = _derive_roi(derive_from, image, cfg, job.get("derived_roi"))
        return derived.roi, derived
    info = image.info or {}
    mask = read_mask(job["roi"], image, labels=cfg.io.mask_labels, segments=cfg.io.mask_segments,
                     max_voxels=cfg.io.max_voxels_per_volume,
                     frame_of_reference_uid=info.get("frame_of_reference_uid") or None)
    if cfg.io.mask_sides is not None:
        _check_hand_sides(job["roi"], cfg)
    return mask, None


def _check_hand_sides(roi: str, cfg) -> None:
    """``io.mask_sides``: a hand ROI's left labels must lie at the patient's left of its right ones (issue 30)."""
    sides = cfg.io.mask_sides
    centres = [mask_centre_x_mm(read_mask_native(roi, labels=labels, max_voxels=cfg.io.max_voxels_per_volume))
               for labels in (sides.left, sides.right)]
    problem = check_hand_laterality(centres[0], centres[1], sides)
    if problem:
        raise InputError("mask", problem)


def _ingest(job: dict, cfg, cache: Path, derive_from: str, reached: dict) -> dict:
    """The work of pass 1 for one series; returns the ``ok`` part of its summary, or raises InputError."""

    pid, modality = job["patient_id"], job["modality"]
    if not job["roi"] and not derive_from:
        raise InputError("mask", f"no {modality.upper()} ROI path in the manifest although an image is given "
                                 f"(give {modality}_roi, or {modality}_segmentation to derive it)")
    image = _open_checked_image(job, cfg)
    mask, derived = _roi_mask(job, image, cfg, derive_from, reached)
    reached["stage"] = "preprocess"
    prep = cfg.modality_preprocess(modality)
    sample = preprocess(image, mask, spacing_mm=cfg.preprocess.spacing_mm, margin_mm=prep.crop_margin_mm,
                        window=prep.window, n4=prep.n4, n4_shrink_factor=prep.n4_shrink_factor,
                        n4_iterations=prep.n4_iterations, n4_convergence_threshold=prep.n4_convergence_threshold,
                        **_standardize_options(prep))
    in_window = sample.window_values
    if in_window.size == 0:
        low, high = prep.window
        raise InputError("preprocess", f"no ROI voxel lies inside the intensity window [{low:g}, {high:g}] "
                                       f"({sample.roi_voxels} ROI voxels, all excluded)")
    if modality_methods(modality, [m.name for m in registered() if m.reference]):
        # the clinical reference counts the ROI's own voxels on the image grid (issue 30)
        sample.native = native_roi(image, mask, prep.window)
    cache.mkdir(parents=True, exist_ok=True)
    if cfg.run.qa:  # a run without QA pages does not pay for their strip
        try:
            _save_qa_strip(image, mask, derived, qa_strip_path(cache, pid, modality), derive_from,
                           cfg.roi.derive.label_table())
        except Exception:  # noqa: BLE001 - a QA picture must never fail a patient; the sheet shows it missing
            pass
    if job.get("preview"):  # the report's overlays and the QA sheet draw it (published: cache/ may go)
        write_preview(job["preview"], sample)
    sample_file = sample_path(cache, pid, modality)
    sample.save(sample_file)
    info = image.info
    summary = {"status": "ok", "sample": str(sample_file), "roi_voxels": sample.roi_voxels,
               "excluded_voxels": sample.excluded_voxels, "window_voxels": int(in_window.size),
               "min": float(in_window.min()), "max": float(in_window.max()),
               "voxel_volume_mm3": sample.grid.voxel_volume_mm3,
               **_native_summary(sample),
               "input_blake3": content_digest(job["image"], job["roi"] or derive_from),
               "image": {k: info[k] for k in ("modality", "size", "spacing", "transfer_syntax") if info and k in info},
               SCANNER_KEY: scanner_of(info), "qa_strip_attempted": QA_STRIP_FORMAT if cfg.run.qa else 0}
    if derived is not None:
        summary["derived_roi"] = {"level": derived.level, "plane_mm": round(derived.plane_mm, 2),
                                  "thickness_mm": derived.thickness_mm, "path": job.get("derived_roi")}
        summary[DISC_PLANE_KEY] = _disc_plane_row(derived)
    if sample.standardization is not None:
        summary[STANDARDIZATION_KEY] = sample.standardization
    return summary


def _native_summary(sample: RoiSample) -> dict:
    """The native voxels' counts of a pass-1 summary (empty without them)."""
    native = sample.native
    if native is None:
        return {}
    return {"native_roi_voxels": int(native.values.size), "native_window_voxels": int(native.in_window.sum()),
            "native_voxel_volume_mm3": native.grid.voxel_volume_mm3}


def patient_histogram(sample_path: str, lo: float, hi: float, bin_width: float, backend: str = "cpu") -> np.ndarray:
    """The in-window ROI histogram of one patient on the cohort's bins (int64, host memory)."""

    values = RoiSample.load(sample_path).window_values
    counts = histogram(to_device(values, backend), lo=lo, hi=hi, bin_width=bin_width)
    return to_host(counts).astype(np.int64)


def group_histogram(sample_paths: list[str], lo: float, hi: float, bin_width: float,
                    backend: str = "cpu") -> np.ndarray:
    """The summed histograms of a group of patients: the leaf of the cohort reduction.

    One partial per group rather than per patient: a partial has one int64 per bin (34,000 bins
    for an MRI signal range), and a per-patient partial for each of 1,200 training patients
    waiting for the reduction held ~330 MB on the workers (#4).
    """
    total = patient_histogram(sample_paths[0], lo, hi, bin_width, backend)
    for path in sample_paths[1:]:
        total += patient_histogram(path, lo, hi, bin_width, backend)
    return total


def sum_histograms(*histograms: np.ndarray) -> np.ndarray:
    """Partial histograms add exactly (int64): the combine step of the cohort reduction."""
    total = np.zeros_like(histograms[0])
    for counts in histograms:
        total += counts
    return total


def disagreement_with_fixed(modality: str, methods: list[str], all_stats, n_window: int) -> dict[str, float]:
    """Per fitted method: 100 x window voxels it and the fixed bound classify differently / window voxels.

    Both are thresholds on the same intensity axis with the same ``fat_is``, so the voxels
    classified differently are exactly those between the two thresholds, and their count is the
    difference of the two fat counts: no second read of the voxels.
    """
    if FIXED not in methods:
        return {}
    fixed_fat = int(all_stats[methods.index(FIXED)].fat_count)
    return {vs_fixed_column(modality, method): 100.0 * abs(int(stats.fat_count) - fixed_fat) / n_window
            for method, stats in zip(methods, all_stats, strict=True) if method != FIXED}


def _native_methods(sample: RoiSample, methods: list[str]) -> list[int]:
    """Indices of the methods measured on the ROI's native voxels: the clinical references (issue 30)."""
    if sample.native is None:
        return []
    return [i for i, method in enumerate(methods) if get_method(method).reference]


def _on_own_voxels(sample: RoiSample, methods: list[str], thresholds: list[float], fat_is: str, backend: str,
                   resampled_stats) -> list[tuple]:
    """Per method: (tissue stats, voxel volume mm³, window voxels) on the voxels it measures.

    The fitted methods on the resampled sample (``resampled_stats``); the clinical reference
    (``fixed``) on the ROI's native voxels with the native voxel volume, as the clinical tools
    count it (docs/method.md section 3).
    """
    own = [(stats, sample.grid.voxel_volume_mm3, int(sample.window_values.size)) for stats in resampled_stats]
    native = sample.native
    chosen = _native_methods(sample, methods)
    if native is None or not chosen:
        return own
    native_stats = tissue_stats(to_device(native.window_values, backend), [thresholds[i] for i in chosen],
                                fat_is=fat_is)
    for i, stats in zip(chosen, native_stats, strict=True):
        own[i] = (stats, native.grid.voxel_volume_mm3, int(native.in_window.sum()))
    return own


def _write_habitats(sample: RoiSample, window_values, methods: list[str], thresholds: list[float], fat_is: str,
                    backend: str, path_of) -> None:
    """Each method's habitat map on the grid it measured: 1 mm for the fitted ones, the image's own for fixed.

    ``window_values``: the sample's in-window values, already on the backend's device.
    """
    all_labels = to_host(classify(window_values, thresholds, fat_is=fat_is))
    native = sample.native
    chosen = _native_methods(sample, methods)
    if native is not None and chosen:
        native_labels = to_host(classify(to_device(native.window_values, backend), [thresholds[i] for i in chosen],
                                         fat_is=fat_is))
    for i, method in enumerate(methods):
        on = native if (native is not None and i in chosen) else sample
        labels = np.full(on.in_window.size, HABITAT_LABELS["outside_window"], np.uint8)
        labels[on.in_window] = native_labels[chosen.index(i)] if on is native else all_labels[i]
        write_image(path_of(method), on.label_volume(labels))


def classify_and_measure(summary: dict, thresholds: ModalityThresholds | dict, cfg: Config,
                         habitat_dir: str | None, cache_dir: str, backend: str = "cpu", force: bool = False) -> dict:
    """Pass 2 for one patient and modality: frozen thresholds -> features (+ habitat maps).

    ``thresholds`` is the modality's frozen fit (:class:`engine.runfolder.ModalityThresholds`,
    whose fat side is the one recorded at the fit), or a mapping method -> threshold (fat side from
    the config). Returns ``{"status": "ok", "features": {...}}`` or an error dict as pass 1 does.
    The cache key covers the registered stats: a stat added since a patient was cached recomputes it.
    """

    cfg = _validated(cfg)
    pid, modality = summary["patient_id"], summary["modality"]
    if isinstance(thresholds, ModalityThresholds):
        fat_is, thresholds = thresholds.fat_is, thresholds.values()
    else:
        fat_is = cfg.modality_fit(modality).fat_is
    methods = [m for m in cfg.fit.methods if m in thresholds]  # a method whose fit failed has no threshold
    key = _hash({"sample": summary["key"], "thresholds": {m: thresholds[m] for m in methods}, "fat_is": fat_is,
                 "stats": stat_names(), "habitats": habitat_dir is not None, "engine": __version__})
    cache_path = features_cache_path(cache_dir, pid, modality)
    base = {"patient_id": pid, "modality": modality, "key": key}
    if not force:
        cached = _read_json(cache_path)
        if cached and cached.get("key") == key:
            cached["cached"] = True
            return cached
    stage = "classify"
    try:
        sample = RoiSample.load(summary["sample"])
        voxel_mm3 = sample.grid.voxel_volume_mm3
        window_values = to_device(sample.window_values, backend)  # one host-to-device copy per patient
        n_window = int(sample.window_values.size)
        features: dict[str, float] = {}
        if methods:
            # One read of the voxels for every method's threshold (the kernels take a sequence).
            method_thresholds = [float(thresholds[m]) for m in methods]
            all_stats = tissue_stats(window_values, method_thresholds, fat_is=fat_is)
            measured = _on_own_voxels(sample, methods, method_thresholds, fat_is, backend, all_stats)
            for method, (stats, mm3, n) in zip(methods, measured, strict=True):
                for tissue in TISSUES:
                    tissue_measure = TissueMeasure(int(getattr(stats, f"{tissue}_count")),
                                                   float(getattr(stats, f"{tissue}_sum")), mm3, n)
                    for stat, value in measure(tissue_measure).items():  # every registered stat
                        features[feature_name(modality, method, tissue, stat)] = value
            # voxel by voxel on the one grid both classify: the resampled voxels (fixed's bound included)
            features.update(disagreement_with_fixed(modality, methods, all_stats, n_window))
            if habitat_dir is not None:
                stage = "write"
                _write_habitats(sample, window_values, methods, method_thresholds, fat_is, backend,
                                lambda method: habitat_path(habitat_dir, pid, modality, method))
                stage = "classify"
        features[roi_volume_column(modality)] = sample.roi_voxels * voxel_mm3
        features[excluded_voxels_column(modality)] = float(sample.excluded_voxels)
        result = {**base, "status": "ok", "features": features}
    except InputError as exc:
        result = {**base, "status": "error", "stage": exc.stage, "reason": exc.reason}
    except Exception as exc:  # noqa: BLE001 - an unforeseen failure is this patient's error, the batch goes on
        result = {**base, "status": "error", "stage": stage,
                  "reason": f"unexpected {type(exc).__name__} while measuring: {exc}"}
    _write_json(cache_path, result)
    result["cached"] = False
    return result
