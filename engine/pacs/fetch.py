"""``sarco fetch``: series from a PACS into a local cache by C-GET, and a manifest the engine runs as it is.

Requests come from a manifest (per patient, ``{modality}_series_uid`` or ``{modality}_study_uid``;
every other column is copied, relative paths made absolute) or from the command line (``--study``,
``--series``, ``--query KEY=VALUE`` matched by C-FIND at series level; one row per study, its patient
id a digest of the StudyInstanceUID, never the PACS's PatientID). Each series lands in
``series/<digest of its UID>/`` (no UID, no name in a path that reaches a run folder), written under
a temporary name and renamed once the C-GET reported every sub-operation done: a folder there is a
complete series, and a nightly rerun fetches only what it does not have yet (incremental).

Retrieval is by C-GET on the query association, or, for a PACS that allows only C-MOVE, by C-MOVE
to a storage SCP that fetch runs itself for the duration (``move_port``): the PACS must know our AE
title (``--aet``) with this machine's address and that port. A query that matches nothing raises
:class:`NothingMatched` (``sarco fetch`` exits 1 naming the query) and writes no manifest.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from engine.config import PacsConfig
from engine.contract import (
    DICOM_MODALITY,
    FETCH_LOG_COLUMNS,
    FETCH_LOG_CSV,
    FETCH_MANIFEST,
    FETCH_SERIES_DIR,
    LABEL,
    MODALITIES,
    PATIENT_ID,
    SPLIT,
    image_column,
    roi_column,
    segmentation_column,
    series_uid_column,
    study_uid_column,
    temp_name,
)
from engine.errors import SarcoError, UsageError
from engine.inputs.userfiles import check_output_folder, require_file
from engine.pacs.dimse import CALLING_AET, PacsAddress, PacsError, Timeouts, associate, parse_address
from engine.runfolder.outputs import write_csv

#: Storage SOP classes accepted as C-GET sub-operations: the images the engine reads.
RETRIEVED_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
                         "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1")
#: Transfer syntaxes accepted for them, each in a context of its own, so a PACS that does not
#: transcode can send a series as it stored it (the engine reads every one of these).
RETRIEVED_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70",
                      "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                      "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.2")
_STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
_STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


class NothingMatched(SarcoError):
    """The PACS holds nothing the request named (an empty PACS, an unknown UID, a query without hits)."""
_MODALITY_OF = {dicom: m for m, dicom in DICOM_MODALITY.items()}


@dataclass
class FetchResult:
    manifest: Path
    fetched: int = 0
    reused: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Request:
    patient_id: str
    modality: str
    series_uid: str = ""
    study_uid: str = ""


def series_folder(out_dir: Path, series_uid: str) -> Path:
    """Where one series is cached: a digest of its UID, so no identifier reaches a path."""
    return Path(out_dir) / FETCH_SERIES_DIR / hashlib.sha256(series_uid.encode()).hexdigest()[:16]


def fetch(pacs: str, out_dir, *, manifest=None, studies=(), series=(), query=(),
          calling_aet: str = CALLING_AET, settings: PacsConfig | None = None,
          move_port: int | None = None) -> FetchResult:
    """Retrieve series by C-GET (or C-MOVE to ``move_port``) into ``out_dir`` and write ``out_dir/manifest.csv``.

    ``settings``: the timeouts, and the failed associations in a row after which the PACS is taken
    as down and the remaining requests fail at once (config ``pacs``). Raises :class:`NothingMatched`
    when the request matched no series (nothing written).
    """
    settings = settings or PacsConfig()
    address = parse_address(pacs)
    out = check_output_folder(out_dir, "cache folder")
    if manifest is None and not (studies or series or query):
        raise UsageError("say what to fetch: --manifest M, --study UID, --series UID or --query KEY=VALUE")
    filters = _query_filters(query)
    rows, header, base = (_manifest_rows(manifest) if manifest is not None else ([], [PATIENT_ID, LABEL, SPLIT], None))
    result = FetchResult(out / FETCH_MANIFEST)
    log_rows: list[dict] = []
    client = _Client(address, calling_aet, Timeouts(settings.connect_timeout_s, settings.timeout_s), move_port,
                     settings.breaker_failures)
    try:
        if manifest is None:
            rows, header = _ad_hoc_rows(client, studies, series, filters, header)
            if not rows:
                raise NothingMatched(f"nothing on {address} matched {_describe(studies, series, query)}; "
                                     "no manifest written")
        out.mkdir(parents=True, exist_ok=True)
        for row in rows:
            for request in _requests(row):
                status, files, reason = _fetch_request(client, request, row, out, result)
                log_rows.append({"patient_id": request.patient_id, "modality": request.modality, "status": status,
                                 "files": files, "reason": reason})
            if base is not None:
                _absolute_paths(row, base)
    finally:
        client.close()

    for modality in MODALITIES:
        for column in (image_column(modality), series_uid_column(modality)):
            if any(column in row for row in rows) and column not in header:
                header.append(column)
    write_csv(out / FETCH_MANIFEST, pd.DataFrame([{c: row.get(c, "") for c in header} for row in rows],
                                                 columns=header, dtype=str))
    write_csv(out / FETCH_LOG_CSV, pd.DataFrame(log_rows, columns=list(FETCH_LOG_COLUMNS)))
    return result


def _describe(studies, series, query) -> str:
    """The request as the command line gave it (``--study X --query Modality=CT``)."""
    parts = [f"--study {u}" for u in studies] + [f"--series {u}" for u in series] + [f"--query {q}" for q in query]
    return " ".join(parts)


def _query_filters(query) -> dict[str, str]:

    filters = {}
    for item in query:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--query '{item}' is not KEY=VALUE (for example Modality=CT)")
        if tag_for_keyword(key.strip()) is None:
            raise UsageError(f"--query '{item}': '{key.strip()}' is not a DICOM keyword (for example StudyDate)")
        filters[key.strip()] = value.strip()
    return filters


def _manifest_rows(path) -> tuple[list[dict], list[str], Path]:
    path = require_file(path, "manifest")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [dict(row) for row in reader]
    if PATIENT_ID not in header:
        raise UsageError(f"manifest '{path}' has no {PATIENT_ID} column")
    wanted = [c for m in MODALITIES for c in (series_uid_column(m), study_uid_column(m))]
    if not any(c in header for c in wanted):
        raise UsageError(f"manifest '{path}' names nothing to fetch: give {', '.join(wanted)} columns")
    return rows, header, path.parent


def _requests(row: dict) -> list[_Request]:
    requests = []
    for modality in MODALITIES:
        series_uid = (row.get(series_uid_column(modality)) or "").strip()
        study_uid = (row.get(study_uid_column(modality)) or "").strip()
        if series_uid or study_uid:
            requests.append(_Request(str(row[PATIENT_ID]), modality, series_uid, study_uid))
    return requests


def _absolute_paths(row: dict, base: Path) -> None:
    for modality in MODALITIES:
        for column in (roi_column(modality), segmentation_column(modality)):
            value = (row.get(column) or "").strip()
            if value and not Path(value).is_absolute():
                row[column] = str((base / value).resolve())


def _ad_hoc_rows(client, studies, series, filters, header) -> tuple[list[dict], list[str]]:
    """One row per study of the series asked for on the command line (the first series per modality)."""
    found: list[dict] = []
    for uid in studies:
        found += client.find_series(StudyInstanceUID=uid, **filters)
    for uid in series:
        found += client.find_series(SeriesInstanceUID=uid, **filters)
    if filters and not (studies or series):
        found += client.find_series(**filters)
    rows: dict[str, dict] = {}
    for item in sorted(found, key=lambda s: (s["StudyInstanceUID"], int(s.get("SeriesNumber") or 0))):
        modality = _MODALITY_OF.get(item.get("Modality", ""))
        if modality is None:
            continue
        study = item["StudyInstanceUID"]
        row = rows.setdefault(study, {PATIENT_ID: "S" + hashlib.sha256(study.encode()).hexdigest()[:10], LABEL: "",
                                      SPLIT: ""})
        row.setdefault(series_uid_column(modality), item["SeriesInstanceUID"])
    return list(rows.values()), header


def _fetch_request(client, request: _Request, row: dict, out: Path, result: FetchResult) -> tuple[str, int, str]:
    """Fetch one patient's series; fills the row's image column; returns (status, files, reason)."""
    column = image_column(request.modality)
    name = request.modality.upper()
    try:
        series_uid, study_uid = _resolve(client, request)
        target = series_folder(out, series_uid)
        row[series_uid_column(request.modality)] = series_uid
        if target.is_dir():
            result.reused += 1
            row[column] = str(target.relative_to(out))
            return "cached", len(list(target.iterdir())), ""
        files = client.get_series(study_uid, series_uid, target)
    except PacsError as exc:
        row[column] = ""
        result.problems.append(f"patient {request.patient_id} ({request.modality}): {exc}")
        return "failed", 0, str(exc)
    result.fetched += 1
    row[column] = str(target.relative_to(out))
    return "fetched", files, f"{name} series"


def _resolve(client, request: _Request) -> tuple[str, str]:
    """(series UID, study UID) of a request: the study's one series of the modality, or the series named."""
    dicom_modality = DICOM_MODALITY[request.modality]
    if request.series_uid:
        matches = client.find_series(SeriesInstanceUID=request.series_uid)
        if not matches:
            raise PacsError(f"the PACS has no series {request.series_uid}")
        return request.series_uid, matches[0]["StudyInstanceUID"]
    matches = [s for s in client.find_series(StudyInstanceUID=request.study_uid) if s.get("Modality") == dicom_modality]
    if not matches:
        raise PacsError(f"study {request.study_uid} holds no {dicom_modality} series")
    if len(matches) > 1:
        raise PacsError(f"study {request.study_uid} holds {len(matches)} {dicom_modality} series; write the one to "
                        f"use in {series_uid_column(request.modality)}")
    return matches[0]["SeriesInstanceUID"], request.study_uid


class _Client:
    """One association for every C-FIND and C-GET (or C-MOVE) of a fetch (opened on first use)."""

    def __init__(self, address: PacsAddress, calling_aet: str, timeouts: Timeouts, move_port: int | None = None,
                 breaker_failures: int = 3):
        self.address = address
        self.breaker_failures = breaker_failures
        self._failures: list[str] = []  # failed associations in a row
        self.calling_aet = calling_aet
        self.timeouts = timeouts
        self.move_port = move_port
        self._assoc = None
        self._scp: Any = None
        self._target: Path | None = None
        self._received = 0

    def _association(self):
        from pynetdicom import AE, build_role, evt  # lazy: network client; fetch/export only

        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        if len(self._failures) >= self.breaker_failures:
            raise PacsError(f"not attempted: the PACS is down ({len(self._failures)} failed associations in a row; "
                            f"last: {self._failures[-1]})")
        ae = AE(ae_title=self.calling_aet)
        ae.add_requested_context(_STUDY_ROOT_FIND)
        kwargs: dict = {}
        if self.move_port is not None:
            ae.add_requested_context(_STUDY_ROOT_MOVE)
        else:
            ae.add_requested_context(_STUDY_ROOT_GET)
            for sop_class in RETRIEVED_SOP_CLASSES:
                for syntax in RETRIEVED_SYNTAXES:
                    ae.add_requested_context(sop_class, [syntax])
            kwargs = {"ext_neg": [build_role(sop_class, scp_role=True) for sop_class in RETRIEVED_SOP_CLASSES],
                      "evt_handlers": [(evt.EVT_C_STORE, self._on_store)]}
        try:
            self._assoc = associate(ae, self.address, timeouts=self.timeouts, **kwargs)
        except PacsError as exc:
            self._failures.append(str(exc))
            raise
        self._failures.clear()
        return self._assoc

    def _storage_scp(self) -> None:
        """Our storage SCP for C-MOVE, listening on ``move_port`` until :meth:`close`."""
        from pynetdicom import AE, evt  # lazy: network client; fetch/export only

        if self._scp is not None or self.move_port is None:
            return
        ae = AE(ae_title=self.calling_aet)
        self.timeouts.apply(ae)
        for sop_class in RETRIEVED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(RETRIEVED_SYNTAXES))
        try:
            self._scp = ae.start_server(("", self.move_port), block=False,
                                        evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise UsageError(f"--move-port {self.move_port}: cannot listen there ({exc.strerror or exc})") from None

    def _on_store(self, event) -> int:
        if self._target is None:
            return 0xA700
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        name = hashlib.sha256(str(dataset.SOPInstanceUID).encode()).hexdigest()[:16] + ".dcm"
        dataset.save_as(self._target / name, enforce_file_format=True)
        self._received += 1
        return 0x0000

    def find_series(self, **keys) -> list[dict]:

        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber"):
            setattr(query, keyword, "")
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        found = []
        for status, identifier in self._association().send_c_find(query, _STUDY_ROOT_FIND):
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"{self.address} did not answer the C-FIND (association lost)")
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.append({k: str(identifier.get(k, "") or "") for k in
                              ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber")})
            elif code not in (0x0000, 0xFF00, 0xFF01):
                raise PacsError(f"{self.address} refused the C-FIND (status 0x{code:04X})")
        return found

    def get_series(self, study_uid: str, series_uid: str, target: Path) -> int:
        """C-GET one series into ``target`` (complete or not at all); returns the number of files."""

        partial = target.with_name(temp_name(target.name, os.getpid()))
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        self._target, self._received = partial, 0
        final = None
        try:
            for status, _ in self._retrieve(query):
                final = status
            code = getattr(final, "Status", None)
            failed = int(getattr(final, "NumberOfFailedSuboperations", 0) or 0)
            verb = "C-GET" if self.move_port is None else "C-MOVE"
            if code is None:
                raise PacsError(f"{self.address} did not finish the {verb} within {self.timeouts.response_s:g} s "
                                "(association lost or peer silent)")
            if code == 0xA801:
                raise PacsError(f"{self.address} does not know the move destination '{self.calling_aet}': register "
                                f"this AE title with this machine's address and port {self.move_port} at the PACS")
            if code != 0x0000 or failed:
                raise PacsError(f"the {verb} of series {series_uid} did not complete (status 0x{code:04X}, "
                                f"{failed} failed sub-operations)")
            if not self._received:
                raise PacsError(f"the {verb} of series {series_uid} returned no image")
            os.replace(partial, target)
            return self._received
        finally:
            self._target = None
            shutil.rmtree(partial, ignore_errors=True)

    def _retrieve(self, query: Dataset):
        """The C-GET's responses, or the C-MOVE's to our own storage SCP."""
        if self.move_port is None:
            return self._association().send_c_get(query, _STUDY_ROOT_GET)
        self._storage_scp()
        return self._association().send_c_move(query, self.calling_aet, _STUDY_ROOT_MOVE)

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None
        if self._scp is not None:
            self._scp.shutdown()
            self._scp = None
