"""The run folder's contract: every name a producer and a consumer share, defined once.

Feature columns and their parts, manifest columns, table and output file names, habitat label
values, the per-patient cache layout (ROI sample ``.npz`` keys included), error columns and the
temporary-file pattern of atomic writes. The pipeline, the tasks, the statistics glue, the
report, the manifest reader, the config schema and the tests import these names; none of them
re-derives a layout by hand. Adding a table touches this module only; adding a feature stat touches
:mod:`engine.measure.features` only, adding a fit method :mod:`engine.measure.methods` only (issue 21).

Deliberately imports nothing but the standard library: a report renderer, a test or a tool
that only reads a run folder should not pay for numpy, pandas or Dask to learn its layout.
"""

from __future__ import annotations

from pathlib import Path

from engine.measure.features import stat_names

# ----------------------------------------------------------------------------- vocabulary
MODALITIES = ("ct", "mri")
MODALITY_NAMES = {"ct": "CT", "mri": "MRI"}
#: DICOM Modality (0008,0060) each manifest modality must carry.
DICOM_MODALITY = {"ct": "CT", "mri": "MR"}
#: The clinical reference method (docs/method.md section 3): fixed Hounsfield ranges, nothing fitted, CT
#: only. Every fit method (name, display name, modalities) is an entry of :mod:`engine.measure.methods`;
#: this name is here because the ``*_vs_fixed_percent`` columns are built from it.
FIXED = "fixed"
TISSUES = ("fat", "muscle")
SPLITS = ("train", "validation", "prospective")
SPLIT_NAMES = {"train": "Training", "validation": "Retrospective validation",
               "prospective": "Prospective validation"}

#: Habitat map values (docs/method.md section 4). Muscle and fat are the classify kernel's own codes
#: (``kernels.MUSCLE``/``kernels.FAT``; a test keeps them equal).
HABITAT_LABELS = {"outside_roi": 0, "muscle": 1, "fat": 2, "outside_window": 3}


# ----------------------------------------------------------------------------- features
def feature_name(modality: str, method: str, tissue: str, stat: str) -> str:
    """``{modality}_{method}_{tissue}_{stat}`` (docs/method.md section 4)."""
    return f"{modality}_{method}_{tissue}_{stat}"


def method_features(modality: str, method: str) -> list[str]:
    """The features of one (modality, method), one per tissue and registered stat (:mod:`engine.measure.features`):
    one imaging model's candidates."""
    return [feature_name(modality, method, tissue, stat) for tissue in TISSUES for stat in stat_names()]


def roi_volume_column(modality: str) -> str:
    return f"{modality}_roi_volume"


def excluded_voxels_column(modality: str) -> str:
    return f"{modality}_excluded_voxels"


def vs_fixed_column(modality: str, method: str) -> str:
    """Per-patient disagreement of a fitted method with the fixed HU bound (``ct_otsu_vs_fixed_percent``).

    100 x ROI voxels in the window that ``method``'s cohort threshold and the fixed bound classify
    differently / window voxels. A diagnostic, not a body-composition feature: no imaging model
    and no clinical candidate uses it (``parse_feature`` returns None for it).
    """
    return f"{modality}_{method}_vs_{FIXED}_percent"


def vs_fixed_columns(modality: str, methods) -> list[str]:
    """The disagreement columns of a modality: one per other method, when ``fixed`` is among ``methods``.

    ``methods``: those that apply to ``modality`` (:func:`engine.measure.methods.modality_methods`).
    """
    if FIXED not in methods:
        return []
    return [vs_fixed_column(modality, m) for m in methods if m != FIXED]


def feature_names(modality: str, methods) -> list[str]:
    """The feature columns of one modality, in canonical order.

    ``methods``: those that apply to ``modality`` (:func:`engine.measure.methods.modality_methods`).
    """
    names = [name for method in methods for name in method_features(modality, method)]
    return names + [roi_volume_column(modality), excluded_voxels_column(modality)] + vs_fixed_columns(modality, methods)


#: Every per-patient column the engine produces that is neither a body-composition feature of a
#: (modality, method) model nor a clinical variable: ``sarco study --table`` and the statistics
#: recognise them by :func:`is_diagnostic_column`, built from the same name functions (issue 21).
#: A stage that adds a diagnostic column to :func:`feature_names` adds its family there.
def is_diagnostic_column(column: str) -> bool:
    """Whether ``column`` is one of the names :func:`feature_names` builds besides the model features:
    ``{modality}_roi_volume``, ``{modality}_excluded_voxels`` or ``{modality}_{method}_vs_fixed_percent``
    for any method (registered fit methods included)."""
    for modality in MODALITIES:
        if column in (roi_volume_column(modality), excluded_voxels_column(modality)):
            return True
        prefix, suffix = f"{modality}_", vs_fixed_column(modality, "")[len(modality) + 1:]
        method = column[len(prefix):-len(suffix)] if column.startswith(prefix) and column.endswith(suffix) else ""
        if method and method.isalnum() and column == vs_fixed_column(modality, method):
            return True
    return False


def model_name(modality: str, method: str) -> str:
    """An imaging model's name in the statistics (``ct_otsu``)."""
    return f"{modality}_{method}"


def imaging_models(methods_by_modality: dict) -> dict[str, list[str]]:
    """One model per (modality, method) over its features (docs/method.md section 5).

    ``methods_by_modality``: modality -> the methods that apply to it.
    """
    return {model_name(m, method): method_features(m, method) for m, methods in methods_by_modality.items()
            for method in methods}


def parse_feature(column: str) -> tuple[str, str, str, str] | None:
    """(modality, method, tissue, stat) of a method feature column, or None for any other column."""
    parts = column.split("_")
    if len(parts) != 4 or parts[0] not in MODALITIES or parts[2] not in TISSUES or parts[3] not in stat_names():
        return None
    return parts[0], parts[1], parts[2], parts[3]


# ----------------------------------------------------------------------------- manifest columns
PATIENT_ID = "patient_id"
LABEL = "label"
SPLIT = "split"


def image_column(modality: str) -> str:
    return f"{modality}_image"


def roi_column(modality: str) -> str:
    return f"{modality}_roi"


def series_uid_column(modality: str) -> str:
    return f"{modality}_series_uid"


def segmentation_column(modality: str) -> str:
    return f"{modality}_segmentation"


def study_uid_column(modality: str) -> str:
    """A StudyInstanceUID for ``sarco fetch`` to retrieve this modality's series from (issue 22)."""
    return f"{modality}_study_uid"


#: Every column the engine reads itself; any other manifest column is a clinical variable.
ENGINE_COLUMNS = (PATIENT_ID, LABEL, SPLIT) + tuple(
    column(m) for m in MODALITIES
    for column in (image_column, roi_column, series_uid_column, segmentation_column, study_uid_column))
REQUIRED_COLUMNS = (PATIENT_ID, LABEL)

# ----------------------------------------------------------------------------- run folder
FEATURES_CSV = "features.csv"
FEATURES_PARQUET = "features.parquet"
THRESHOLDS_JSON = "thresholds.json"
ERRORS_CSV = "errors.csv"
SPLIT_CSV = "split.csv"
PREDICTIONS_CSV = "predictions.csv"
MODEL_JSON = "model.json"
PROVENANCE_JSON = "provenance.json"
REPORT_HTML = "report.html"
#: StudyResult attribute -> file under tables/ (engine.study writes them, the report reads them).
TABLE_FILES = {
    "table2": "table2_groups.csv",
    "table3": "table3_clinical_logistic.csv",
    "table4": "table4_imaging_logistic.csv",
    "table5": "table5_performance.csv",
    "cv": "cv_auc.csv",
    "table_combined": "combined_logistic.csv",
    "comparisons": "model_comparisons.csv",
}

#: One row per series of pass 1 (issue 21): what the report and QA need of each series beyond its
#: features (scanner, standardisation, where the ROI came from), published so they never read ``cache/``.
SERIES_CSV = "series.csv"
SERIES_COLUMNS = ("patient_id", "modality", "status", "scanner", "roi_source", "roi_level", "standardization_method",
                  "standardization_scale")

#: Machine-readable summary of every statistical model (``sarco run`` and ``sarco study``).
STUDY_JSON = "study.json"
RUN_LOG = "run.log"
LOCK_FILE = ".sarco.lock"
TABLES_DIR = "tables"
HABITATS_DIR = "habitats"
CACHE_DIR = "cache"
#: Per-patient feature rows of pass 2, under the cache folder.
FEATURE_CACHE_DIR = "features"
#: Per-patient keys of the QA pictures drawn last, under the cache folder.
QA_CACHE_DIR = "qa"

#: ``sarco export`` (issue 22): one row per patient, modality, object and destination.
EXPORT_LOG_CSV = "export_log.csv"
EXPORT_LOG_COLUMNS = ("patient_id", "modality", "object", "destination", "status", "reason")
#: Every object an export delivered, under the cache folder, appended as each is confirmed (it
#: outlives an interrupted export and a rerun into the folder, which retracts export_log.csv):
#: the next export skips what it records. ``key`` digests the object's UIDs (run, input, patient,
#: object), so changed results are sent again.
EXPORT_JOURNAL_CSV = "export_journal.csv"
EXPORT_JOURNAL_COLUMNS = (*EXPORT_LOG_COLUMNS, "key")

#: Issue 24: the MRI intensity reference of every standardised series (engine diagnostics, never
#: statistics candidates: the report and the QA sheet read it).
MRI_REFERENCE_CSV = "mri_reference.csv"
MRI_REFERENCE_COLUMNS = ("patient_id", "scanner", "reference", "reason", "region", "value", "voxels", "spread",
                         "scale", "fat_to_csf", "scanner_fat_to_csf", "flag")

#: The run-level outputs a finished run publishes. A new run into the same folder retracts them
#: (and ``tables/*.csv``) before it writes its first one, so a folder never shows one run's
#: thresholds.json beside another run's model.json; habitat maps and the cache are per patient
#: and keyed, not retracted.
PUBLISHED_OUTPUTS = (THRESHOLDS_JSON, FEATURES_CSV, FEATURES_PARQUET, ERRORS_CSV, SPLIT_CSV, PREDICTIONS_CSV,
                     MODEL_JSON, PROVENANCE_JSON, REPORT_HTML, STUDY_JSON, EXPORT_LOG_CSV, MRI_REFERENCE_CSV,
                     SERIES_CSV)

#: Attribute of a log record that is also one of the command's notes (:func:`engine.runfolder.rundir.add_note`):
#: the CLI prints notes in its summary and keeps such records off the terminal's log handler.
NOTE_RECORD = "sarco_note"

#: One row per failed patient and modality (docs/method.md section 6).
ERROR_COLUMNS = ("patient_id", "modality", "stage", "reason")

#: provenance.json's map ``{patient_id}/{modality}`` -> whether the manifest chose the series by its
#: ``{modality}_series_uid`` cell; no path and no UID (the run folder holds no identifier).
#: ``sarco export`` finds the sources through the manifest the user gives it.
SOURCES_KEY = "sources"
SOURCE_SERIES_UID = "series_uid"


def source_key(patient_id: str, modality: str) -> str:
    """The key of one series in provenance.json's ``input_blake3`` and ``sources`` (``SYN0001/ct``)."""
    return f"{patient_id}/{modality}"


#: ``sarco fetch`` (issue 22): the cache's series folders, the manifest it writes and its log.
FETCH_SERIES_DIR = "series"
FETCH_MANIFEST = "manifest.csv"
FETCH_LOG_CSV = "fetch_log.csv"
FETCH_LOG_COLUMNS = ("patient_id", "modality", "status", "files", "reason")

MODEL_FORMAT = "sarco-model"
MODEL_FORMAT_VERSION = 1
#: ``model.json`` of ``sarco study --table``: statistics only, no thresholds to apply to images, so
#: ``sarco apply`` refuses it by this format (issue 21).
TABLE_MODEL_FORMAT = "sarco-table-study/1"


def patient_stem(patient_id: str, modality: str) -> str:
    return f"{patient_id}__{modality}"


def sample_path(cache_dir: str | Path, patient_id: str, modality: str) -> Path:
    """Pass 1's cached ROI sample of one patient and modality."""
    return Path(cache_dir) / f"{patient_stem(patient_id, modality)}.npz"


def summary_path(cache_dir: str | Path, patient_id: str, modality: str) -> Path:
    """Pass 1's cached summary (status, cache key, value range) next to the sample."""
    return Path(cache_dir) / f"{patient_stem(patient_id, modality)}.json"


def features_cache_path(cache_dir: str | Path, patient_id: str, modality: str) -> Path:
    """Pass 2's cached feature row of one patient and modality."""
    return Path(cache_dir) / FEATURE_CACHE_DIR / f"{patient_stem(patient_id, modality)}.features.json"


def habitat_path(habitat_dir: str | Path, patient_id: str, modality: str, method: str) -> Path:
    return Path(habitat_dir) / f"{patient_id}_{modality}_{method}.nii.gz"


#: Arrays of an ROI sample ``.npz`` (:class:`engine.measure.preprocess.RoiSample`).
SAMPLE_KEYS = ("values", "flat_index", "in_window", "size", "spacing", "origin", "direction", "preview",
               "preview_z")
#: Optional array of an MRI sample: the intensity reference's region on the preview slice (issue 24).
REFERENCE_PREVIEW_KEY = "reference_preview"
#: Optional arrays of a CT sample: the ROI's native voxels (values, flat index, in window, grid as 18
#: numbers: size, spacing, origin, direction), which the clinical reference counts (issue 30).
NATIVE_SAMPLE_KEYS = ("native_values", "native_flat_index", "native_in_window", "native_grid")

# ----------------------------------------------------------------------------- derived ROI (issue 17)
#: Label values of a derived ROI (and of the synthetic cohort's hand ROIs): the four muscles of the
#: study, kept apart so per-muscle features can follow. Every non-zero value is ROI.
ROI_MUSCLE_LABELS = {"left_psoas": 1, "right_psoas": 2, "left_paraspinal": 3, "right_paraspinal": 4}
#: ``roi.derive.muscles`` choices -> the ROI muscles they take.
ROI_MUSCLE_GROUPS = {"psoas": ("left_psoas", "right_psoas"), "paraspinal": ("left_paraspinal", "right_paraspinal")}
#: Whole-body segmentation structure (TotalSegmentator name) -> the ROI muscle it becomes.
SEGMENTATION_MUSCLES = {"iliopsoas_left": "left_psoas", "iliopsoas_right": "right_psoas",
                        "autochthon_left": "left_paraspinal", "autochthon_right": "right_paraspinal"}
#: Vertebrae from cranial to caudal, as TotalSegmentator names them after ``vertebrae_``.
VERTEBRAE = tuple([f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
                  + ["S1"])


def vertebra_structure(vertebra: str) -> str:
    """The segmentation structure of a vertebra (``L3`` -> ``vertebrae_L3``)."""
    return f"vertebrae_{vertebra}"


#: TotalSegmentator v2 task "total" label values of the structures the derivation reads
#: (``totalsegmentator --ml``; the per-structure folder names its files ``{structure}.nii.gz``).
TOTALSEGMENTATOR_TOTAL_V2 = {
    **{vertebra_structure(v): 50 - i for i, v in enumerate(VERTEBRAE[:-1])},  # C1 50 ... L5 27
    vertebra_structure("S1"): 26,
    "autochthon_left": 86, "autochthon_right": 87, "iliopsoas_left": 88, "iliopsoas_right": 89,
    # anchors of the level checks (issue 30): the sacrum below L5, the 12th ribs at T12
    "sacrum": 25, "rib_left_12": 103, "rib_right_12": 115,
}
#: Structures of a label table other than vertebrae and muscles: the level checks' anchors.
ANCHOR_STRUCTURES = ("sacrum", "rib_left_12", "rib_right_12")
#: Derived ROIs (NIfTI on the image grid, labels :data:`ROI_MUSCLE_LABELS`), for review in 3D Slicer
#: and for reuse as a manual ``ct_roi``/``mri_roi``.
DERIVED_ROI_DIR = "derived_roi"
#: One QA PNG per patient and modality, and the sortable contact sheet.
QA_DIR = "qa"
QA_INDEX = "index.html"
#: One record per QA picture (written by the QA tasks; the contact sheet is rendered from it).
QA_PANELS_JSON = "panels.json"
#: ``run.exclude``: a CSV of patients flagged at review; these columns are read (modality may be
#: empty = every modality; reason is free text).
EXCLUSION_COLUMNS = ("patient_id", "modality", "reason")


#: Issue 23: where each derived ROI's level plane lies and how it was found, one row per patient and
#: modality, in the run's derived_roi/ folder (``disc_planes_path``). Positions are physical LPS mm
#: as SimpleITK reports them (+z superior); the slab's voxel centres z satisfy
#: ``slab_min_z_mm <= z < slab_max_z_mm``; ``canal_x_mm``/``canal_y_mm`` (the spinal canal's centre
#: at the level) are empty where no vertebra encloses it; ``method`` is ``{how}_{body}``
#: (:data:`engine.io.segmentation.PLANE_METHODS`, ``BODY_SOURCES``); ``dropped_voxels`` counts the
#: stray voxels of the two vertebra labels left out. A review table, never a feature: no column of
#: it reaches features.csv or the statistics.
DISC_PLANES_CSV = "disc_planes.csv"
#: Issue 30: the anatomy checks' figures in disc_planes.csv (engine.io.anatomy): body heights of the
#: level's vertebrae (``L3:27.5 L4:28``; a body cut by the field of view has none), the gap between
#: their facing endplates, the vertebrae near the level as found cranial to caudal, the anchors seen
#: (``sacrum below L5``, ``rib 12 at T12``), the mean signed LPS x offset (mm, + = patient left) of
#: the left- and right-named muscles from the midline, and the contradiction a ``level_checks: warn``
#: run accepted (empty when none).
ANATOMY_COLUMNS = ("body_heights_mm", "disc_gap_mm", "vertebrae_order", "anchors", "left_offset_mm",
                   "right_offset_mm", "anatomy_warning")
DISC_PLANE_COLUMNS = ("patient_id", "modality", "level", "upper_vertebra", "lower_vertebra", "disc_z_mm",
                      "slab_min_z_mm", "slab_max_z_mm", "thickness_mm", "canal_x_mm", "canal_y_mm", "method",
                      "dropped_voxels", *ANATOMY_COLUMNS)
#: Key of a pass-1 series summary holding its DISC_PLANE_COLUMNS values (less patient_id, modality).
DISC_PLANE_KEY = "disc_plane"


def disc_planes_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DERIVED_ROI_DIR / DISC_PLANES_CSV


def derived_roi_path(run_dir: str | Path, patient_id: str, modality: str) -> Path:
    return Path(run_dir) / DERIVED_ROI_DIR / f"{patient_stem(patient_id, modality)}_roi.nii.gz"


#: Published per-series preview slices (issue 21): what the report's overlays draw, so that the report
#: never reads ``cache/``. Written by pass 1, atomically, keyed like the habitat maps.
PREVIEWS_DIR = "previews"
#: Arrays of a published preview ``.npz`` (:mod:`engine.runfolder.previews`): the axial slice with most ROI
#: voxels, the ROI's pixels on it (row, column, value, in window) and the crop grid's geometry.
PREVIEW_KEYS = ("preview", "preview_z", "roi_rows", "roi_columns", "roi_values", "roi_in_window", "spacing",
                "direction")

def preview_path(run_dir: str | Path, patient_id: str, modality: str) -> Path:
    """The published preview slice (an ``.npz``, :data:`PREVIEW_KEYS`) of one series."""
    return Path(run_dir) / PREVIEWS_DIR / f"{patient_stem(patient_id, modality)}.preview.npz"


def qa_strip_path(cache_dir: str | Path, patient_id: str, modality: str) -> Path:
    """Pass 1's cached sagittal strip (an ``.npz``) that the QA task draws during the run."""
    return Path(cache_dir) / f"{patient_stem(patient_id, modality)}.strip.npz"


def qa_png_path(run_dir: str | Path, patient_id: str, modality: str) -> Path:
    return Path(run_dir) / QA_DIR / f"{patient_stem(patient_id, modality)}.png"


def qa_key_path(cache_dir: str | Path, patient_id: str, modality: str) -> Path:
    """The key of the QA picture drawn last (a rerun with the same key does not draw it again)."""
    return Path(cache_dir) / QA_CACHE_DIR / f"{patient_stem(patient_id, modality)}.json"


# ----------------------------------------------------------------------------- atomic writes
#: Every file is written as ``.tmp-<pid>-<name>`` beside its destination and renamed into place
#: (:func:`engine.runfolder.outputs.atomic_path`); the run lock sweeps this pattern, and the crash-safety
#: test asserts nothing matching it survives a completed rerun.
TEMP_PREFIX = ".tmp-"
TEMP_GLOB = f"{TEMP_PREFIX}*"


def temp_name(name: str, pid: int) -> str:
    return f"{TEMP_PREFIX}{pid}-{name}"


# ----------------------------------------------------------------------------- scanners (issue 16)
#: Key of a pass-1 series summary holding the scanner that acquired it (:func:`scanner_of`).
SCANNER_KEY = "scanner"
#: Key of a pass-1 MRI series summary holding its intensity standardisation (scale, reference).
STANDARDIZATION_KEY = "standardization"
#: The scanner fields, read from the DICOM header (empty for NIfTI/NRRD inputs).
SCANNER_FIELDS = ("manufacturer", "model", "field_strength_t")
#: Key of a modality's entry of thresholds.json listing the scanners of its training cohort.
SCANNERS_KEY = "scanners"


def scanner_of(info: dict | None) -> dict:
    """``{manufacturer, model, field_strength_t}`` of an image's ``info`` (empty strings/None if unknown)."""
    info = info or {}
    return {"manufacturer": str(info.get("manufacturer") or "").strip(),
            "model": str(info.get("model") or "").strip(),
            "field_strength_t": info.get("field_strength_t")}


def scanner_label(scanner: dict | None) -> str:
    """One readable name: ``SIEMENS Aera 1.5 T``; ``unknown scanner`` without a header."""
    scanner = scanner or {}
    parts = [scanner.get("manufacturer") or "", scanner.get("model") or ""]
    strength = scanner.get("field_strength_t")
    if strength:
        parts.append(f"{float(strength):g} T")
    text = " ".join(p for p in parts if p)
    return text or "unknown scanner"
#: Key of a model's entry in study.json: per split, patients labelled, used and left out (and why).
PATIENTS_KEY = "patients"

#: GPU-stack distributions whose versions provenance.json and bench.json record. CuPy is one
#: distribution per CUDA major: cupy-cuda12x (the [gpu] extra) or cupy-cuda13x (CUDA 13 hosts).
GPU_DISTRIBUTIONS = ("cupy-cuda12x", "cupy-cuda13x", "dask-cuda", "cuml-cu12")
