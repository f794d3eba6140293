"""What every benchmark shares: timing, peak memory, the machine description, Markdown tables,
and the synthetic cohorts the benchmarks read (synthesized once, cached, never timed).

Timings are wall-clock medians of ``time.perf_counter`` over repeats after warm-up calls: the
median is robust to the odd slow repeat on a shared machine, and ``min_s`` is reported beside it
for readers who prefer the best case (timeit's advice).
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import hashlib
import importlib.util
import io
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.contract import GPU_DISTRIBUTIONS

#: Packages whose versions go into the machine block of bench.json / bench.md.
KEY_PACKAGES = ("sarco-engine", "numpy", "scipy", "SimpleITK", "pydicom", "pylibjpeg", "dask", "distributed",
                "scikit-learn", "psutil", *GPU_DISTRIBUTIONS)

SYNTH_SEED = 0


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock times of repeated calls (seconds) and the last call's result."""

    times_s: list[float]
    result: Any

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed with ``perf_counter``.

    The garbage collector runs before each timed call (not during it), so one call's garbage
    is not collected on the next call's clock.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return Timing(times, result)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


# ----------------------------------------------------------------------------- memory
def _maxrss_mb(who: int) -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(who).ru_maxrss * scale


def peak_rss_self_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return _maxrss_mb(resource.RUSAGE_SELF)


def peak_rss_children_mb() -> float:
    """Largest peak RSS of any waited-for child process so far (MiB; a max, not a sum)."""
    return _maxrss_mb(resource.RUSAGE_CHILDREN)


class TreeRssSampler:
    """Peak of the summed RSS of this process and all its descendants, sampled every ``interval_s``.

    ``ru_maxrss`` is per process: a Dask run's memory lives in worker processes whose peaks do
    not add up in ``RUSAGE_CHILDREN`` (a max) and which are not always reaped by this process.
    Sampling the tree with psutil sees the whole footprint at once; a spike shorter than the
    interval can be missed, so the per-process ``ru_maxrss`` is reported beside it.
    """

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> float:
        import psutil

        root = psutil.Process()
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / (1024 * 1024)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._sample())


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1024 * 1024), 1)
    except OSError:
        pass
    return None


def _gpu_name() -> str | None:
    # Only ask CuPy where it is installed: a CPU-only install never imports it.
    if importlib.util.find_spec("cupy") is None:
        return None
    from engine.batch.backend import gpu_status

    available, description = gpu_status()
    return description if available else None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict:
    """CPU, cores, RAM, GPU, Python and key package versions, load and date (UTC)."""
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "ram_gib": _ram_gib(),
        "gpu": _gpu_name(),
        "platform": platform.platform(),
        "load_average_1_5_15": load,
        "versions": versions,
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ----------------------------------------------------------------------------- Markdown
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub Markdown table; columns default to the union of the rows' keys, first seen first."""
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def machine_markdown(machine: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    load = machine.get("load_average_1_5_15")
    lines = [
        f"- CPU: {machine.get('cpu')} ({machine.get('cores')} cores, {machine.get('usable_cores')} usable)",
        f"- RAM: {machine.get('ram_gib')} GiB",
        f"- GPU: {machine.get('gpu') or 'none seen by CuPy'}",
        f"- load average at start (1/5/15 min): {_cell(load) if load else 'n/a'}",
        f"- {machine.get('platform')}",
        f"- versions: {versions}",
        f"- date (UTC): {machine.get('date_utc')}",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- cohorts
def cohort_manifest(cache_dir: str | Path, size: str, n_patients: int, *, workers: int | None = None) -> Path:
    """A manifest of the first ``n_patients`` synthetic patients of ``size``, synthesized once.

    Patient ``i`` of a synthetic cohort does not depend on the cohort's size, so one cohort per
    size is kept under ``cache_dir/synth-<size>-seed0-<code>`` and grown when a larger one is asked
    for; a smaller cohort is a manifest of its first rows (``manifest-<n>.csv``, paths relative to
    it). ``<code>`` hashes the synthesizer's source, so a changed phantom is not read from a stale cache.
    """
    from engine.synthetic import synthesize_cohort

    root = Path(cache_dir) / f"synth-{size}-seed{SYNTH_SEED}-{synth_code_hash()}"
    full = root / "manifest.csv"
    rows = _read_rows(full) if full.exists() else []
    if len(rows) < n_patients:
        synthesize_cohort(root, n_patients=n_patients, seed=SYNTH_SEED, size=size,
                          workers=workers or usable_cores())
        rows = _read_rows(full)
    if len(rows) == n_patients:
        return full
    subset = root / f"manifest-{n_patients}.csv"
    if not subset.exists():
        from engine.runfolder.outputs import write_text

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[:n_patients])
        write_text(subset, buffer.getvalue())
    return subset


def synth_code_hash() -> str:
    """First 10 hex digits of SHA-256 over the synthesizer's source files (engine.synthetic)."""
    import engine.synthetic.cohort
    import engine.synthetic.dicom_writer
    import engine.synthetic.jpeg_lossless

    digest = hashlib.sha256()
    for module in (engine.synthetic.cohort, engine.synthetic.dicom_writer, engine.synthetic.jpeg_lossless):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def cohort_series(manifest: Path, modality: str) -> list[dict]:
    """(patient_id, image, roi) of every patient in a manifest, as absolute paths."""
    base = manifest.parent
    return [{"patient_id": row["patient_id"], "modality": modality,
             "image": str((base / row[f"{modality}_image"]).resolve()),
             "roi": str((base / row[f"{modality}_roi"]).resolve()), "series_uid": None}
            for row in _read_rows(manifest)]


def default_cache_dir() -> Path:
    """Where cohorts live when a benchmark is run on its own: ``$SARCO_BENCH_CACHE`` or ./bench-results/cache."""
    return Path(os.environ.get("SARCO_BENCH_CACHE", "bench-results/cache"))
