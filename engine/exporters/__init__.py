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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydicom.uid import generate_uid

from ..contract import EXPORT_LOG_COLUMNS, EXPORT_LOG_CSV, MODALITY_NAMES
from ..errors import UsageError
from ..outputs import write_csv
from ..pacs import CALLING_AET, parse_address
from .destinations import DeliveryError, DicomwebDestination, DimseDestination, FolderDestination
from .sc import build_sc
from .seg import build_seg
from .source import ExportError, PatientResult, RunFolder, complete_geometry, complete_identity, read_source
from .sr import build_sr

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

    @property
    def done(self) -> int:
        return sum(1 for _, ok in self._patients() if ok)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok in self._patients() if not ok)

    def _patients(self):
        for key, rows in self.log.groupby(["patient_id", "modality"], sort=True):
            yield key, bool(rows["status"].isin(DONE_STATUSES).all())


#: Statuses of an object that reached its destination (or had nothing to send).
DONE_STATUSES = ("written", "stored", "skipped")


def _destinations(dicom_dir, pacs, dicomweb, calling_aet, nodelay) -> list:

    destinations: list = []
    if dicom_dir is not None:
        destinations.append(FolderDestination(dicom_dir))
    if pacs is not None:
        destinations.append(DimseDestination(parse_address(pacs), calling_aet or CALLING_AET, nodelay=nodelay))
    if dicomweb is not None:
        if not str(dicomweb).startswith(("http://", "https://")):
            raise UsageError(f"DICOMweb URL '{dicomweb}' must start with http:// or https://")
        destinations.append(DicomwebDestination(dicomweb))
    if not destinations:
        raise UsageError("give where to export: --dicom OUT_DIR, --pacs AET@HOST:PORT or --dicomweb URL")
    return destinations


def export_run(run_dir, *, dicom_dir=None, pacs: str | None = None, dicomweb: str | None = None,
               objects: Sequence[str] = tuple(EXPORTERS), patients: Sequence[str] | None = None,
               calling_aet: str | None = None, nodelay: bool = True, new_study: bool = False,
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
    """
    unknown = [o for o in objects if o not in EXPORTERS]
    if unknown:
        raise UsageError(f"unknown export object(s) {', '.join(unknown)}; choose from {', '.join(EXPORTERS)}")
    if "sr" in objects and "seg" not in objects:
        raise UsageError("the SR references the SEG's segments: export 'seg' with 'sr'")
    if new_study and (pacs is not None or dicomweb is not None or dicom_dir is None):
        raise UsageError("--new-study writes a new study, for files only: give --dicom OUT_DIR and no --pacs or "
                         "--dicomweb")
    run = RunFolder.open(run_dir, manifest)
    if dicom_dir is not None and Path(dicom_dir).resolve().is_relative_to(run.path.resolve()):
        raise UsageError(f"--dicom '{dicom_dir}' lies inside the run folder, which never holds an identifier; "
                         "give a folder outside it")
    destinations = _destinations(dicom_dir, pacs, dicomweb, calling_aet, nodelay)
    if run.manifest is None:
        raise UsageError("give the manifest the run read (--manifest M): the run folder keeps no path to its sources")
    rows: list[dict] = []
    try:
        for patient_id, modality in run.series():
            if patients is not None and patient_id not in patients:
                continue
            rows += _export_one(run, patient_id, modality, [EXPORTERS[o] for o in EXPORTERS if o in objects],
                                destinations, new_study=new_study)
    finally:
        for destination in destinations:
            destination.close()
    frame = pd.DataFrame(rows, columns=list(EXPORT_LOG_COLUMNS))
    paths = [run.path / EXPORT_LOG_CSV] + ([Path(dicom_dir) / EXPORT_LOG_CSV] if dicom_dir is not None else [])
    for path in paths:
        write_csv(path, frame)
    return ExportResult(frame, paths)


def _row(patient_id, modality, kind, destination, status, reason=""):
    return {"patient_id": patient_id, "modality": modality, "object": kind, "destination": destination,
            "status": status, "reason": reason}


def _build(run: RunFolder, patient_id: str, modality: str, exporters,
           new_study: bool = False) -> tuple[PatientResult, dict]:
    result = run.result(patient_id, modality)
    result.source = read_source(run, patient_id, modality)
    return result, build_objects(result, exporters, new_study)


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


def _export_one(run: RunFolder, patient_id: str, modality: str, exporters, destinations,
                new_study: bool = False) -> list[dict]:
    """The log rows of one patient and modality: reach the destinations, build everything, deliver each object.

    A destination that cannot be reached (dead port, refused association) fails this patient's rows
    for it before anything is built; it is tried again for the next patient.
    """
    rows, reachable = [], []
    for destination in destinations:
        try:
            destination.open()
            reachable.append(destination)
        except DeliveryError as exc:
            log.info("export %s (%s) to %s: %s", patient_id, modality, destination.name, exc.reason)
            rows += [_row(patient_id, modality, e.name, destination.name, "failed", exc.reason) for e in exporters]
    if not reachable:
        return rows
    where = ", ".join(d.name for d in reachable)
    try:
        _, built = _build(run, patient_id, modality, exporters, new_study)
    except ExportError as exc:
        log.info("export %s (%s) [%s]: %s", patient_id, modality, exc.step, exc.reason)
        return rows + [_row(patient_id, modality, e.name, where, "failed", f"[{exc.step}] {exc.reason}")
                       for e in exporters]
    except Exception as exc:  # noqa: BLE001 - one patient's unforeseen problem must not stop the night's export
        reason = f"unexpected {type(exc).__name__} while building the {MODALITY_NAMES[modality]} export: {exc}"
        log.info("export %s (%s): %s", patient_id, modality, reason)
        return rows + [_row(patient_id, modality, e.name, where, "failed", reason) for e in exporters]
    for destination in reachable:
        rows += _deliver(patient_id, modality, exporters, built, destination)
    return rows


def _deliver(patient_id: str, modality: str, exporters, built: dict, destination) -> list[dict]:
    """Send one patient's objects in order; after a failure the rest are 'not sent' (the SR needs its SEG)."""
    rows, failed = [], None
    for exporter in exporters:
        dataset = built[exporter.name]
        if dataset is None:
            rows.append(_row(patient_id, modality, exporter.name, destination.name, "skipped",
                             "nothing to export (no QA picture in the run)"))
        elif failed is not None:
            rows.append(_row(patient_id, modality, exporter.name, destination.name, "not sent",
                             f"the {failed} was not stored"))
        else:
            try:
                status = destination.deliver(patient_id, modality, exporter.name, dataset)
                rows.append(_row(patient_id, modality, exporter.name, destination.name, status))
            except DeliveryError as exc:
                failed = exporter.name.upper()
                log.info("export %s (%s) %s to %s: %s", patient_id, modality, exporter.name, destination.name,
                         exc.reason)
                rows.append(_row(patient_id, modality, exporter.name, destination.name, "failed", exc.reason))
    return rows
