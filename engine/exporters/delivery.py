"""The export batch: what is left to send, objects built in the executor, delivered over a bounded pool.

1. **Plan** (:func:`plan_exports`): per patient and modality, the objects each destination still
   needs. An object the journal (``cache/export_journal.csv``) records as delivered to that
   destination with the same key is not sent again, so a second ``sarco export`` after a failed or
   interrupted one sends only the rest.
2. **Build** (:func:`build_series`): one task per series in the run's executor (Dask, like the
   passes, or inline), returning each object as DICOM Part 10 bytes.
3. **Deliver** (:class:`Delivery`): each built series goes to each destination that needs it, one
   job per destination on a pool of ``pacs.associations`` threads, each thread with its own
   association. A destination's :class:`~.destinations.Breaker` stops it after a few failures in a
   row: the rest for it are logged at once as ``not attempted``; a series no live destination
   needs is not even built.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO

import pandas as pd
import pydicom

from engine.batch.tasks import one_itk_thread
from engine.contract import (
    CACHE_DIR,
    EXPORT_JOURNAL_COLUMNS,
    EXPORT_JOURNAL_CSV,
    FEATURES_CSV,
    MODALITY_NAMES,
)
from engine.exporters.destinations import DeliveryError
from engine.exporters.source import ExportError, ExportRun, read_source
from engine.runfolder.outputs import write_csv

log = logging.getLogger("sarco")

#: Statuses of an object that reached its destination.
DELIVERED = ("written", "stored")
#: What the journal keeps: those, and objects there was nothing to build for (no QA picture).
JOURNALED = (*DELIVERED, "skipped")
NOT_ATTEMPTED = "not attempted"


def row(patient_id, modality, kind, destination, status, reason="", key="") -> dict:
    return {"patient_id": patient_id, "modality": modality, "object": kind, "destination": destination,
            "status": status, "reason": reason, "key": key}


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class SeriesPlan:
    """One patient and modality: its objects' keys and what each destination still needs."""

    patient_id: str
    modality: str
    keys: dict[str, str]  # object name -> key
    needs: dict[str, list[str]] = field(default_factory=dict)  # destination name -> object names, in order
    done: list[dict] = field(default_factory=list)  # rows carried from earlier exports


class Journal:
    """``cache/export_journal.csv``: the objects delivered so far, appended as each is confirmed."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CACHE_DIR / EXPORT_JOURNAL_CSV
        self._handle: IO[str] | None = None

    def read(self) -> pd.DataFrame:
        """Delivered rows (last one per object and destination); a torn last line is ignored."""
        if not self.path.is_file():
            return pd.DataFrame(columns=list(EXPORT_JOURNAL_COLUMNS))
        frame = pd.read_csv(self.path, dtype=str, keep_default_na=False, on_bad_lines="skip")
        frame = frame[[c for c in EXPORT_JOURNAL_COLUMNS if c in frame]].dropna()
        if list(frame.columns) != list(EXPORT_JOURNAL_COLUMNS):
            return pd.DataFrame(columns=list(EXPORT_JOURNAL_COLUMNS))
        frame = frame[frame["status"].isin(JOURNALED) & (frame["key"] != "")]
        return frame.drop_duplicates(["patient_id", "modality", "object", "destination"], keep="last")

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self._handle = open(self.path, "a", encoding="utf-8", newline="")
        if new:
            self._handle.write(",".join(EXPORT_JOURNAL_COLUMNS) + "\n")
        elif not self._ends_with_newline():
            self._handle.write("\n")  # an interrupted append: end the torn line, which read() skips

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def append(self, rows: list[dict]) -> None:
        delivered = [r for r in rows if r["status"] in JOURNALED and r["key"]]
        if self._handle is None or not delivered:
            return
        pd.DataFrame(delivered, columns=list(EXPORT_JOURNAL_COLUMNS)).to_csv(self._handle, header=False, index=False,
                                                                            lineterminator="\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Stop appending and rewrite the journal compacted (one row per object and destination)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            write_csv(self.path, self.read())


def object_key(identity: str, patient_id: str, modality: str, kind: str) -> str:
    """The digest of what decides an object's UIDs (:class:`~engine.exporters.ExportUids`)."""
    return hashlib.sha256(f"{identity}/{patient_id}/{modality}/{kind}".encode()).hexdigest()[:16]


def plan_exports(run: ExportRun, series, kinds: list[str], destinations, journal: pd.DataFrame) -> list[SeriesPlan]:
    """What each destination still needs of each series (the journal's delivered objects left out)."""
    delivered = {(r.patient_id, r.modality, r.object, r.destination): r for r in journal.itertuples()}
    plans = []
    for patient_id, modality in series:
        try:
            identity = run.result(patient_id, modality).identity
        except ExportError:
            identity = ""  # the build fails again and says why; nothing of it was delivered
        plan = SeriesPlan(patient_id, modality,
                          {k: object_key(identity, patient_id, modality, k) if identity else "" for k in kinds})
        for destination in destinations:
            needed = []
            for kind in kinds:
                earlier = delivered.get((patient_id, modality, kind, destination.name))
                if earlier is not None and earlier.key == plan.keys[kind]:
                    plan.done.append(row(patient_id, modality, kind, destination.name, earlier.status,
                                         "delivered by an earlier export", earlier.key))
                else:
                    needed.append(kind)
            if needed:
                plan.needs[destination.name] = needed
        plans.append(plan)
    return plans


# ---------------------------------------------------------------------------------------------- build
@lru_cache(maxsize=4)
def _open_run(path: str, stamp: float, manifest: str | None) -> ExportRun:
    """The run folder, read once per worker process (``stamp``: features.csv's mtime)."""
    return ExportRun.open(path, manifest)


def build_series(run_path: str, sources: tuple[str | None, bool], patient_id: str, modality: str,
                 kinds: tuple[str, ...]) -> dict:
    """Build one series' objects (an executor task): ``{"objects": {kind: bytes | None}}`` or an error.

    ``None``: nothing to export for this patient (no QA picture). Errors are returned, not raised,
    so one patient's problem never stops the batch. ITK runs on one thread, as in the run's tasks: a
    worker already has a core per task (the habitat maps' resampling is the export's ITK work).
    """
    from engine.exporters import EXPORTERS, build_objects  # lazy: the registry imports this module

    one_itk_thread()
    try:
        manifest, new_study = sources
        run = _open_run(run_path, os.stat(Path(run_path) / FEATURES_CSV).st_mtime, manifest)
        result = run.result(patient_id, modality)
        result.source = read_source(run, patient_id, modality)
        built = build_objects(result, [EXPORTERS[k] for k in EXPORTERS if k in kinds], new_study)
        return {"status": "ok", "objects": {k: None if ds is None else _part10(ds) for k, ds in built.items()}}
    except ExportError as exc:
        return {"status": "error", "reason": f"[{exc.step}] {exc.reason}"}
    except Exception as exc:  # noqa: BLE001 - one patient's unforeseen problem must not stop the night's export
        return {"status": "error", "reason": f"unexpected {type(exc).__name__} while building the "
                                             f"{MODALITY_NAMES[modality]} export: {exc}"}


def _part10(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------- deliver
class Delivery:
    """Builds and deliveries of a batch: at most ``2 x associations`` series in flight."""

    def __init__(self, executor, run_path: Path, destinations, associations: int,
                 sources: tuple[str | None, bool] = (None, False)):
        self.executor = executor
        self.run_path = str(run_path)
        self.sources = sources  # (the manifest naming the sources, --new-study)
        self.destinations = {d.name: d for d in destinations}
        self.associations = associations
        self._pool = ThreadPoolExecutor(max_workers=associations, thread_name_prefix="sarco-export")
        self._token = uuid.uuid4().hex[:8]

    def preflight(self, names) -> None:
        """Open each network destination that is needed, retried until its breaker trips (in parallel)."""
        def check(destination):
            while not destination.breaker.down:
                try:
                    destination.open()
                    destination.breaker.succeeded()
                    return
                except DeliveryError as exc:
                    destination.breaker.failed(exc)
                    log.info("export to %s: %s", destination.name, exc.reason)

        checks = [self._pool.submit(check, self.destinations[n]) for n in names if self.destinations[n].network]
        for future in checks:
            future.result()

    def run(self, plans: list[SeriesPlan]):
        """Each plan's result, ``{"status": "ok" | "error", "rows": [...]}``, as its deliveries end.

        Once every destination is down, nothing more is built: the plans left are not attempted.
        """
        skipped: deque[SeriesPlan] = deque()
        remaining = {(p.patient_id, p.modality): p for p in plans}
        for_tasks, for_keys = itertools.tee(self._live(plans, skipped))
        jobs = ((self.run_path, self.sources, p.patient_id, p.modality, tuple(self._kinds(p))) for p in for_tasks)
        keys = (f"export-{self._token}-{p.patient_id}-{p.modality}" for p in for_keys)
        in_flight: deque[tuple[SeriesPlan, list[Future]]] = deque()
        for built in self.executor.stream(build_task, jobs, keys=keys):
            plan = remaining[(built["patient_id"], built["modality"])]
            in_flight.append((plan, self._submit(plan, built)))
            while skipped:
                yield self._finish(remaining, skipped.popleft(), None)
            while in_flight and (len(in_flight) > 2 * self.associations or all(f.done() for f in in_flight[0][1])):
                yield self._finish(remaining, *in_flight.popleft())
            if all(d.breaker.down for d in self.destinations.values()):
                break  # the builds still queued would be thrown away
        while in_flight:
            yield self._finish(remaining, *in_flight.popleft())
        for plan in list(remaining.values()):  # skipped ones, and those left unbuilt after the break
            yield self._finish(remaining, plan, None)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # the steps of run()
    def _live(self, plans, skipped: deque):
        """The plans some live destination still needs (built); the others go straight to ``skipped``."""
        for plan in plans:
            if plan.needs and any(not self.destinations[n].breaker.down for n in plan.needs):
                yield plan
            else:
                skipped.append(plan)

    def _finish(self, remaining: dict, plan: SeriesPlan, futures: list[Future] | None) -> dict:
        """The outcome of a plan: its deliveries' rows, or (``futures`` None) not attempted / nothing needed."""
        del remaining[(plan.patient_id, plan.modality)]
        if futures is None:
            return self._outcome(plan, self._not_attempted(plan))
        return self._outcome(plan, [r for f in futures for r in f.result()])

    @staticmethod
    def _kinds(plan: SeriesPlan) -> list[str]:
        """Every object asked for: built once for all destinations, and an SR left to send still needs its
        SEG built (it references the SEG's segments), even where the SEG itself was delivered earlier."""
        return list(plan.keys)

    def _not_attempted(self, plan: SeriesPlan, names=None) -> list[dict]:
        return [row(plan.patient_id, plan.modality, kind, name, NOT_ATTEMPTED, self.destinations[name].breaker.why(),
                    plan.keys[kind])
                for name in (names or plan.needs) for kind in plan.needs[name]]

    def _submit(self, plan: SeriesPlan, built: dict) -> list[Future]:
        if built["status"] != "ok":
            log.info("export %s (%s): %s", plan.patient_id, plan.modality, built["reason"])
            failed = [row(plan.patient_id, plan.modality, kind, name, "failed", built["reason"], plan.keys[kind])
                      for name, kinds in plan.needs.items() for kind in kinds]
            done: Future = Future()
            done.set_result(failed)
            return [done]
        return [self._pool.submit(self._deliver, plan, self.destinations[name], built["objects"])
                for name in plan.needs]

    def _deliver(self, plan: SeriesPlan, destination, objects: dict) -> list[dict]:
        """One series' objects to one destination, in order; after a failure the rest are ``not sent``."""
        rows, failed = [], None
        for kind in plan.needs[destination.name]:
            data = objects.get(kind)
            args = (plan.patient_id, plan.modality, kind, destination.name)
            if data is None:
                rows.append(row(*args, "skipped", "nothing to export (no QA picture in the run)", plan.keys[kind]))
            elif failed is not None:
                rows.append(row(*args, "not sent", f"the {failed} was not stored", plan.keys[kind]))
            elif destination.breaker.down:
                rows.append(row(*args, NOT_ATTEMPTED, destination.breaker.why(), plan.keys[kind]))
            else:
                try:
                    dataset = pydicom.dcmread(io.BytesIO(data)) if destination.network else data
                    status = destination.deliver(plan.patient_id, plan.modality, kind, dataset)
                    destination.breaker.succeeded()
                    rows.append(row(*args, status, "", plan.keys[kind]))
                except DeliveryError as exc:
                    destination.breaker.failed(exc)
                    failed = kind.upper()
                    log.info("export %s (%s) %s to %s: %s", *args, exc.reason)
                    rows.append(row(*args, "failed", exc.reason, plan.keys[kind]))
        return rows

    @staticmethod
    def _outcome(plan: SeriesPlan, rows: list[dict]) -> dict:
        rows = plan.done + rows
        ok = all(r["status"] in JOURNALED for r in rows)
        return {"status": "ok" if ok else "error", "rows": rows, "cached": not plan.needs}



def build_task(job: tuple) -> dict:
    """:func:`build_series` of one ``(run_path, sources, patient_id, modality, kinds)`` job, naming its series."""
    run_path, sources, patient_id, modality, kinds = job
    return {"patient_id": patient_id, "modality": modality,
            **build_series(run_path, sources, patient_id, modality, kinds)}
