"""Results back to the PACS (issue 22): DICOM-SEG, a TID 1500 measurement report and a QA capture.

The registry :data:`EXPORTERS` lists what an export writes, one :class:`Exporter` per object, in the
order they are built and sent (the SR references the SEG, so the SEG comes first). Adding one is one
entry plus its builder ``build(result, uids, built) -> Dataset | None`` (None: nothing to export for
this patient, logged as ``skipped``). Every object goes into the source study, with series and
instance UIDs derived from the run and the patient (:class:`ExportUids`): exporting the same run
again sends the same UIDs, so the PACS does not collect duplicate series.

:func:`export_run` is the batch: per patient and modality, read the source DICOM (found through the
manifest the user gives; the identities come from there, never from the run folder), build every
object (:func:`build_objects`), deliver each to every destination,
and log one row per object and destination (``export_log.csv``). A patient's failure is its rows'
status and reason; the batch goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydicom.uid import generate_uid

from engine.batch.executors import open_executor, progress
from engine.config import PacsConfig
from engine.contract import EXPORT_LOG_COLUMNS, EXPORT_LOG_CSV
from engine.errors import UsageError
from engine.exporters.delivery import Delivery, Journal, plan_exports
from engine.exporters.destinations import DicomwebDestination, DimseDestination, FolderDestination
from engine.exporters.sc import build_sc
from engine.exporters.seg import build_seg
from engine.exporters.source import ExportRun, PatientResult, complete_geometry, complete_identity
from engine.exporters.sr import build_sr
from engine.pacs.dimse import CALLING_AET, Timeouts, parse_address
from engine.runfolder.outputs import write_csv

log = logging.getLogger("sarco")


@dataclass(frozen=True)
class Exporter:
    """One object an export writes: its name (``seg``), what it is, its series number and description."""

    name: str
    writes: str
    series_number: int
    series_description: str
    build: Callable


EXPORTERS: dict[str, Exporter] = {e.name: e for e in (
    Exporter("seg", "DICOM-SEG: muscle and fat of every method on the source grid", 9101,
             "sarco habitats (SEG)", build_seg),
    Exporter("sr", "TID 1500 Comprehensive 3D SR: volume, mean, percent of ROI per method and tissue", 9102,
             "sarco measurements (SR)", build_sr),
    Exporter("sc", "Secondary Capture of the QA picture", 9103, "sarco QA (SC)", build_sc),
)}


class ExportUids:
    """UIDs of one patient's exports, derived from the run and the patient: stable across re-exports."""

    def __init__(self, identity: str, patient_id: str, modality: str):
        self._seed = [identity, patient_id, modality]

    def uid(self, *parts: str) -> str:

        return str(generate_uid(entropy_srcs=[*self._seed, *parts]))

    def series(self, kind: str) -> str:
        return self.uid(kind, "series")

    def instance(self, kind: str) -> str:
        return self.uid(kind, "instance")

    @staticmethod
    def number(kind: str) -> int:
        return EXPORTERS[kind].series_number

    @staticmethod
    def description(kind: str) -> str:
        return EXPORTERS[kind].series_description


@dataclass
class ExportResult:
    log: pd.DataFrame  # EXPORT_LOG_COLUMNS
    log_paths: list[Path] = field(default_factory=list)
    #: Destinations whose breaker tripped (:class:`~.destinations.Breaker`): the reason, by name.
    down: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(1 for _, ok in self._patients() if ok)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok in self._patients() if not ok)

    @property
    def earlier(self) -> int:
        """Objects not sent again: an earlier export delivered them."""
        return int((self.log["reason"] == EARLIER).sum())

    def _patients(self):
        for key, rows in self.log.groupby(["patient_id", "modality"], sort=True):
            yield key, bool(rows["status"].isin(DONE_STATUSES).all())


#: Series whose builds pay for a local cluster's start: about 3 s before its first result (the workers
#: start and each imports the engine, pandas, SimpleITK and highdicom) against ~0.12 s per series built
#: (the SR from a template, the SEG by highdicom). ``W`` workers save ``1 - 1/W`` of each build, so a
#: cluster is started from ``CLUSTER_BREAK_EVEN_SERIES * W / (W - 1)`` series (50 on 2 cores, 27 on 16)
#: and never for one worker (:func:`builds_inline`). Measured on the 2-core VM (load 0.4-1.5,
#: 2026-12-08, docs/pacs.md): 48 series 5.7-6.3 s inline against 5.9-6.4 s on a fresh cluster, 80
#: series 9.9-10.7 s against 9.1-9.5 s.
CLUSTER_BREAK_EVEN_SERIES = 25
#: Statuses of an object that reached its destination (or had nothing to send).
DONE_STATUSES = ("written", "stored", "skipped")
EARLIER = "delivered by an earlier export"


def build_objects(result: PatientResult, exporters: Sequence[Exporter] = tuple(EXPORTERS.values()),
                  new_study: bool = False) -> dict:
    """Every object of one patient (name -> Dataset or None), built from its result and source series.

    The source headers are completed first (:func:`complete_identity`): a source from another writer
    (Type 2 attributes absent, SOP UIDs in the file meta only) exports as one from the engine's own.
    """
    uids = ExportUids(result.identity, result.patient_id, result.modality)
    complete_identity(result.series.datasets, (lambda part: uids.uid("new study", part)) if new_study else None)
    complete_geometry(result.series)
    built: dict = {}
    for exporter in exporters:
        built[exporter.name] = exporter.build(result, uids, built)
    return built


def _destinations(dicom_dir, pacs, dicomweb, calling_aet, nodelay, settings: PacsConfig) -> list:

    timeouts = Timeouts(settings.connect_timeout_s, settings.timeout_s)
    breaker = settings.breaker_failures
    destinations: list = []
    if dicom_dir is not None:
        destinations.append(FolderDestination(dicom_dir, breaker_failures=breaker))
    if pacs is not None:
        destinations.append(DimseDestination(parse_address(pacs), calling_aet or CALLING_AET, nodelay=nodelay,
                                             timeouts=timeouts, breaker_failures=breaker))
    if dicomweb is not None:
        if not str(dicomweb).startswith(("http://", "https://")):
            raise UsageError(f"DICOMweb URL '{dicomweb}' must start with http:// or https://")
        destinations.append(DicomwebDestination(dicomweb, timeouts=timeouts, breaker_failures=breaker))
    if not destinations:
        raise UsageError("give where to export: --dicom OUT_DIR, --pacs AET@HOST:PORT or --dicomweb URL")
    return destinations


def export_run(run_dir, *, dicom_dir=None, pacs: str | None = None, dicomweb: str | None = None,
               objects: Sequence[str] = tuple(EXPORTERS), patients: Sequence[str] | None = None,
               calling_aet: str | None = None, nodelay: bool = True, settings: PacsConfig | None = None,
               scheduler: str | None = None, workers: int | None = None, new_study: bool = False,
               manifest=None) -> ExportResult:
    """Export a run's results into the source studies (``sarco export``).

    Parameters
    ----------
    run_dir : path-like
        A finished run or apply folder (``sarco run``/``sarco apply``).
    manifest : path-like
        A manifest naming each patient's source series (the one the run read): the run folder keeps
        no path to its sources. Each series is checked against the run's content digest.
    dicom_dir : path-like, optional
        Write DICOM files here (``{patient}__{modality}_{seg|sr|sc}.dcm``). Must lie outside the run
        folder, which never holds an identifier.
    pacs : str, optional
        ``AET@HOST:PORT``: C-STORE there.
    dicomweb : str, optional
        A DICOMweb root URL: STOW-RS there, confirmed by QIDO-RS.
    objects : sequence of str
        Names of :data:`EXPORTERS` to build (default all).
    patients : sequence of str, optional
        Only these patient ids.
    new_study : bool
        A source without a Study or Series Instance UID goes into a new study (its UIDs derived from
        the run and the patient) instead of failing; files only (``dicom_dir``), since a PACS would
        file it apart from the patient's images.
    settings : PacsConfig, optional
        Timeouts, the breaker's limit and the associations per destination (config ``pacs``).
    scheduler, workers
        Where the objects are built: ``"inline"`` (this process), a Dask scheduler's address, or
        None: a local cluster of ``workers`` processes (default one per core) when there are enough
        series to build for its start to pay (:func:`builds_inline`), else inline.

    Objects that ``cache/export_journal.csv`` records as delivered to a destination (same run, same
    input) are not sent there again: a second export after a failed or interrupted one sends the rest.
    """
    unknown = [o for o in objects if o not in EXPORTERS]
    if unknown:
        raise UsageError(f"unknown export object(s) {', '.join(unknown)}; choose from {', '.join(EXPORTERS)}")
    if "sr" in objects and "seg" not in objects:
        raise UsageError("the SR references the SEG's segments: export 'seg' with 'sr'")
    if new_study and (pacs is not None or dicomweb is not None or dicom_dir is None):
        raise UsageError("--new-study writes a new study, for files only: give --dicom OUT_DIR and no --pacs or "
                         "--dicomweb")
    run = ExportRun.open(run_dir, manifest)
    if dicom_dir is not None and Path(dicom_dir).resolve().is_relative_to(run.path.resolve()):
        raise UsageError(f"--dicom '{dicom_dir}' lies inside the run folder, which never holds an identifier; "
                         "give a folder outside it")
    settings = settings or PacsConfig()
    destinations = _destinations(dicom_dir, pacs, dicomweb, calling_aet, nodelay, settings)
    if run.manifest is None:
        raise UsageError("give the manifest the run read (--manifest M): the run folder keeps no path to its sources")
    series = [s for s in run.series() if patients is None or s[0] in patients]
    journal = Journal(run.path)
    plans = plan_exports(run, series, [o for o in EXPORTERS if o in objects], destinations, journal.read())
    sources = (None if manifest is None else str(Path(manifest).absolute()), new_study)
    rows = _deliver_all(run, plans, destinations, journal, settings, scheduler, workers, sources)
    frame = pd.DataFrame(rows, columns=list(EXPORT_LOG_COLUMNS))
    paths = [run.path / EXPORT_LOG_CSV] + ([Path(dicom_dir) / EXPORT_LOG_CSV] if dicom_dir is not None else [])
    for path in paths:
        write_csv(path, frame)
    return ExportResult(frame, paths, {d.name: d.breaker.why() for d in destinations if d.breaker.down})


def builds_inline(series: int, workers: int) -> bool:
    """Whether ``series`` builds are quicker in this process than on a fresh local cluster of ``workers``
    (:data:`CLUSTER_BREAK_EVEN_SERIES`): a cluster of one worker never is."""
    return workers < 2 or series * (workers - 1) < CLUSTER_BREAK_EVEN_SERIES * workers


def _deliver_all(run, plans, destinations, journal, settings, scheduler, workers, sources) -> list[dict]:
    """Build and deliver every plan (progress lines as the passes print them); the log rows."""
    to_build = sum(1 for p in plans if p.needs)
    if scheduler is None and builds_inline(to_build, workers or os.cpu_count() or 1):
        scheduler = "inline"
    rows: list[dict] = []
    journal.open()
    try:
        with open_executor(scheduler, workers, "cpu") as executor:
            delivery = Delivery(executor, run.path, destinations, settings.associations, sources)
            try:
                delivery.preflight(sorted({n for p in plans for n in p.needs}))
                for outcome in progress(delivery.run(plans), len(plans), "export"):
                    journal.append(outcome["rows"])
                    rows += outcome["rows"]
            finally:
                delivery.close()
    finally:
        journal.close()
        for destination in destinations:
            destination.close()
    return sorted(rows, key=lambda r: (r["patient_id"], r["modality"], EXPORT_ORDER.get(r["object"], 99)))



#: The log's order of objects within a patient: the registry's.
EXPORT_ORDER = {name: i for i, name in enumerate(EXPORTERS)}
