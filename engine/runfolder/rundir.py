"""The run folder as a place: one writer at a time, swept after a crash, retracted before a rerun.

Everything here is about the folder, not the science: the lock, the sweep of temporary files a
killed run left (:data:`engine.contract.TEMP_GLOB`), the retraction of the previous run's
published outputs, the run log, the tables every run writes, and provenance.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd

from engine import __version__
from engine.contract import (
    ERROR_COLUMNS,
    ERRORS_CSV,
    FEATURES_CSV,
    FEATURES_PARQUET,
    GPU_DISTRIBUTIONS,
    LOCK_FILE,
    NOTE_RECORD,
    PROVENANCE_JSON,
    PUBLISHED_OUTPUTS,
    RUN_LOG,
    SCANNER_KEY,
    SERIES_COLUMNS,
    SERIES_CSV,
    SOURCE_SERIES_UID,
    SOURCES_KEY,
    SPLIT_CSV,
    STANDARDIZATION_KEY,
    TABLES_DIR,
    TEMP_GLOB,
    scanner_label,
    source_key,
)
from engine.errors import SarcoError, UsageError
from engine.runfolder.outputs import write_csv, write_parquet

log = logging.getLogger("sarco")


def add_note(notes: list[str], message: str) -> None:
    """Append ``message`` to the command's ``notes`` and log it as a warning marked :data:`NOTE_RECORD`.

    The command prints its notes once, in its summary, so the terminal's log handler skips
    these records; run.log keeps them (issue 21: every warning was printed twice).
    """
    notes.append(message)
    log.warning("%s", message, extra={NOTE_RECORD: True})


class RunFailed(SarcoError):
    """The run could not complete (``--strict`` with a failed patient, no training data, ...)."""


@contextmanager
def run_lock(out_dir: Path):
    """One run at a time per folder; temp files of a killed earlier run are removed first.

    Outputs are written under hidden temporary names and renamed into place, so a killed run
    leaves at most such temp files, never a half-written output; they are swept here.
    """
    lock = out_dir / LOCK_FILE
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid):
            raise RunFailed(f"another sarco process (pid {pid}) is writing into {out_dir}; wait for it or "
                            "choose another --out") from None
        lock.unlink(missing_ok=True)  # left by a killed run
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        sweep_temp_files(out_dir)
        yield
    finally:
        lock.unlink(missing_ok=True)


def sweep_temp_files(out_dir: Path) -> list[Path]:
    """Remove every temporary file of an atomic write under ``out_dir`` (call under the lock)."""
    stale = list(Path(out_dir).rglob(TEMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def retract_outputs(out_dir: Path) -> None:
    """Remove the previous run's published outputs (cheap to rebuild from the cache)."""
    for name in PUBLISHED_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    tables = out_dir / TABLES_DIR
    if tables.is_dir():
        for table in tables.glob("*.csv"):
            table.unlink()


@contextmanager
def run_log(out_dir: Path):
    """The engine's log lines also go to ``run.log`` in the run folder while the block runs."""
    handler = logging.FileHandler(out_dir / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def error_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(ERROR_COLUMNS))
    return frame.sort_values(["patient_id", "modality", "stage"], kind="stable").reset_index(drop=True)


def error_rows(results: list[dict]) -> list[dict]:
    """errors.csv rows of the failed task results of a pass."""
    return [{k: r[k] for k in ERROR_COLUMNS} for r in results if r["status"] == "error"]


def write_tables(out_dir: Path, features: pd.DataFrame, errors: pd.DataFrame, split_frame: pd.DataFrame) -> None:
    write_csv(out_dir / FEATURES_CSV, features)
    write_parquet(out_dir / FEATURES_PARQUET, features)
    write_csv(out_dir / ERRORS_CSV, errors)
    write_csv(out_dir / SPLIT_CSV, split_frame)


def series_frame(summaries: list[dict]) -> pd.DataFrame:
    """series.csv: one row per series of pass 1, what the report and QA show of it (issue 21).

    Published so that neither reads pass 1's cache (``cache/`` may be deleted after a run).
    """
    rows = []
    for s in sorted(summaries, key=lambda s: (s["patient_id"], s["modality"])):
        derived = s.get("derived_roi") or {}
        standardization = s.get(STANDARDIZATION_KEY) or {}
        ok = s["status"] == "ok"
        rows.append({"patient_id": s["patient_id"], "modality": s["modality"], "status": s["status"],
                     "scanner": scanner_label(s.get(SCANNER_KEY)) if ok else "",
                     "roi_source": ("derived" if derived else "hand") if ok else "",
                     "roi_level": derived.get("level", ""), "standardization_method": standardization.get("method", ""),
                     "standardization_scale": standardization.get("scale")})
    return pd.DataFrame(rows, columns=list(SERIES_COLUMNS))


def write_series(out_dir: Path, summaries: list[dict]) -> None:
    write_csv(out_dir / SERIES_CSV, series_frame(summaries))


def _versions() -> dict:

    versions = {"python": platform.python_version(), "sarco-engine": __version__}
    for name in ("numpy", "scipy", "pandas", "scikit-learn", "statsmodels", "SimpleITK", "pydicom", "pylibjpeg",
                 "dask", "distributed", *GPU_DISTRIBUTIONS):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def source_entries(jobs: list[dict]) -> dict:
    """provenance.json's ``sources``: which series the run read, and whether the manifest chose each by
    its ``{modality}_series_uid`` cell; never a path or a UID (the run folder holds no identifier).
    ``sarco export`` finds the sources through the manifest the user gives it again."""
    entries = {}
    for job in jobs:
        if job.get("image"):
            entries[source_key(job["patient_id"], job["modality"])] = {SOURCE_SERIES_UID: bool(job.get("series_uid"))}
    return dict(sorted(entries.items()))


def manifest_identity(manifest_path) -> dict:
    """Which manifest a run read: its file name and a digest of its resolved path (the path itself
    may name a person or a site, so only its digest is kept)."""
    path = Path(manifest_path).resolve()
    return {"name": path.name, "path_sha256": hashlib.sha256(str(path).encode("utf-8")).hexdigest()}


def check_folder_owner(out_dir: Path, manifest_path, mode: str, force: bool) -> None:
    """Refuse, before any work, to overwrite a finished run folder made by another manifest (issue 21).

    A ``run`` folder is reused by a rerun of the same manifest (resume: the cache is kept);
    ``apply`` folders take a new manifest each night by design. Refused unless ``force``: a
    ``run`` into a finished folder of another manifest, and a ``run`` or ``apply`` into a folder
    that the other command made. A folder of an older engine (no manifest recorded) is reused.
    """
    if force:
        return
    try:
        previous = json.loads((Path(out_dir) / PROVENANCE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no finished run there (or one we cannot read: the retraction replaces it)
    if not isinstance(previous, dict) or not isinstance(previous.get("manifest"), dict):
        return
    before, now = previous["manifest"], manifest_identity(manifest_path)
    other_mode = previous.get("mode") not in (None, mode)
    if other_mode or (mode == "run" and before.get("path_sha256") != now["path_sha256"]):
        what = f"a finished 'sarco {previous.get('mode') or 'run'}' of manifest '{before.get('name')}'"
        raise UsageError(f"'{out_dir}' holds {what}; give another --out, or add --force to overwrite it")


def provenance(config: dict, backend: str, summaries: list[dict], started: float, mode: str,
               sources: dict | None = None, manifest_path=None) -> dict:
    """provenance.json: input digests, config, versions, backend, timing, sources and manifest of one run or apply."""
    inputs = {source_key(s["patient_id"], s["modality"]): s.get("input_blake3") for s in summaries
              if s.get("input_blake3")}
    return {"engine_version": __version__, "mode": mode, "backend": backend, "config": config,
            "manifest": manifest_identity(manifest_path) if manifest_path is not None else None,
            "versions": _versions(), "platform": platform.platform(), "input_blake3": dict(sorted(inputs.items())),
            SOURCES_KEY: sources or {}, "started_unix": round(started, 3), "finished_unix": round(time.time(), 3)}
