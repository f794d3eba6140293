"""Where exports go: a folder (``--dicom``), a DIMSE peer (``--pacs``, C-STORE) or a DICOMweb server (``--dicomweb``).

A destination's :meth:`deliver` returns the log status (``written``/``stored``) or raises
:class:`DeliveryError`; an object is reported stored only on a success status from the peer
(and, for STOW-RS, once QIDO finds it). Destinations are used from a bounded pool of threads
(``pacs.associations``): each thread holds its own association or HTTP session.

A failure of the destination itself (nothing listening, a silent peer, a refused or lost
association, a reset, HTTP 502/503/504, busy ones after 3 tries) is ``fatal``; its
:class:`Breaker` counts them and, after ``pacs.breaker_failures`` in a row, declares the
destination down: the rest of the export to it is logged at once as not attempted, so a dead PACS
costs a few timeouts, not one per object. A refusal of one object (a C-STORE failure status, an
HTTP 4xx) is that object's failure and resets nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from engine.errors import SarcoError
from engine.pacs.dimse import CALLING_AET, PacsAddress, PacsError, Timeouts, associate
from engine.runfolder.outputs import atomic_path

#: HTTP statuses that say the server itself is unavailable, not that it refuses this object.
_SERVER_DOWN = (502, 503, 504)
#: HTTP statuses of a busy server: the request is tried again (:attr:`DicomwebDestination.RETRIES`).
_BUSY = (429, 503, 504)


class DeliveryError(SarcoError):
    """One object did not reach its destination; ``fatal`` when the destination itself is gone."""

    def __init__(self, reason: str, fatal: bool = False):
        self.reason = reason
        self.fatal = fatal
        super().__init__(reason)


class Breaker:
    """Consecutive fatal failures of one destination; down after ``limit`` of them (thread-safe).

    A success resets the count. Once down, a destination stays down for the rest of the export.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.failures = 0
        self.reason = ""
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.failures >= self.limit

    def succeeded(self) -> None:
        with self._lock:
            if not self.down:
                self.failures = 0

    def failed(self, error: DeliveryError) -> None:
        if not error.fatal:
            return
        with self._lock:
            self.failures += 1
            self.reason = error.reason

    def why(self) -> str:
        return f"destination down after {self.failures} failures in a row; last: {self.reason}"


def export_file_name(patient_id: str, modality: str, kind: str) -> str:
    return f"{patient_id}__{modality}_{kind}.dcm"


class FolderDestination:
    """DICOM Part 10 files, one per object, written atomically."""

    network = False

    def __init__(self, folder, breaker_failures: int = 3):
        self.folder = Path(folder)
        # the folder's name only: export_log.csv lands in the run folder, which holds no absolute path
        self.name = f"folder {self.folder.name}"
        self.breaker = Breaker(breaker_failures)

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def deliver(self, patient_id: str, modality: str, kind: str, dataset) -> str:
        with atomic_path(self.folder / export_file_name(patient_id, modality, kind)) as tmp:
            if isinstance(dataset, bytes):  # a Part 10 file built on a worker
                Path(tmp).write_bytes(dataset)
            else:
                dataset.save_as(tmp, enforce_file_format=True)
        return "written"

    def close(self) -> None:
        pass


class DimseDestination:
    """C-STORE; each thread of the delivery pool keeps one association open across patients."""

    network = True

    def __init__(self, address: PacsAddress, calling_aet: str = CALLING_AET, nodelay: bool = True,
                 timeouts: Timeouts | None = None, breaker_failures: int = 3):
        self.address = address
        self.calling_aet = calling_aet
        self.nodelay = nodelay
        self.timeouts = timeouts or Timeouts()
        self.name = f"pacs {address}"
        self.breaker = Breaker(breaker_failures)
        self._local = threading.local()
        self._opened: list = []
        self._lock = threading.Lock()

    def open(self):
        """This thread's association (kept, or a new one): a fatal :class:`DeliveryError` when the peer
        is unreachable, silent or refuses."""
        from pynetdicom import AE  # lazy: network client; fetch/export only

        assoc = getattr(self._local, "assoc", None)
        if assoc is not None and assoc.is_established:
            return assoc
        ae = AE(ae_title=self.calling_aet)
        for sop_class in _EXPORT_SOP_CLASSES:  # one context per syntax: the peer accepts each on its own
            for syntax in _SYNTAXES:
                ae.add_requested_context(sop_class, [syntax])
        try:
            assoc = associate(ae, self.address, nodelay=self.nodelay, timeouts=self.timeouts)
        except PacsError as exc:
            self._local.assoc = None
            raise DeliveryError(str(exc), fatal=True) from None
        self._local.assoc = assoc
        with self._lock:
            self._opened.append(assoc)
        return assoc

    def deliver(self, patient_id: str, modality: str, kind: str, dataset) -> str:
        if str(dataset.file_meta.TransferSyntaxUID) not in _SYNTAXES:
            raise DeliveryError(f"the {kind.upper()} is in transfer syntax {dataset.file_meta.TransferSyntaxUID}; "
                                "only explicit and implicit VR little endian are proposed")
        assoc = self.open()
        try:
            status = assoc.send_c_store(dataset)
        except Exception as exc:  # noqa: BLE001 - a broken socket mid-store is this object's failure
            self._drop()
            raise DeliveryError(f"the C-STORE failed: {type(exc).__name__}: {exc}", fatal=True) from None
        code = getattr(status, "Status", None) if status else None
        if code is None:
            self._drop()
            raise DeliveryError(f"{self.address} sent no C-STORE response within {self.timeouts.response_s:g} s "
                                "(association lost or peer silent)", fatal=True)
        if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # success or warning
            raise DeliveryError(f"{self.address} refused the object (C-STORE status 0x{code:04X})")
        return "stored"

    def _drop(self) -> None:
        """Forget this thread's association (aborted by the peer or by a timeout)."""
        assoc = getattr(self._local, "assoc", None)
        self._local.assoc = None
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def close(self) -> None:
        """Release every thread's association (called once the pool has finished)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for assoc in opened:
            if assoc.is_established:
                assoc.release()
        self._local = threading.local()


class DicomwebDestination:
    """STOW-RS, then QIDO-RS to confirm the instance is there; one HTTP session per pool thread."""

    network = True
    #: Tries of a request the server answered 429, 503 or 504 (busy), 0.5 s then 1 s apart. Only
    #: those: dicomweb_client's own retry also repeats timeouts and resets (3 read timeouts per
    #: request to a silent server), so it is off.
    RETRIES = 3

    def __init__(self, url: str, timeouts: Timeouts | None = None, breaker_failures: int = 3):
        self.url = url.rstrip("/")
        self.name = f"dicomweb {self.url}"
        self.timeouts = timeouts or Timeouts()
        self.breaker = Breaker(breaker_failures)
        self._local = threading.local()

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from dicomweb_client.api import DICOMwebClient  # lazy: network client; DICOMweb export only

            client = DICOMwebClient(url=self.url, timeout=(self.timeouts.connect_s, self.timeouts.response_s))
            client.set_http_retry_params(retry=False)
            self._local.client = client
        return client

    def open(self) -> None:
        """A QIDO-RS query for one study: the server is there and answers (before anything is built)."""
        self._http(lambda client: client.search_for_studies(limit=1))

    def deliver(self, patient_id: str, modality: str, kind: str, dataset) -> str:
        def stow_and_find(client):
            client.store_instances([dataset])
            return client.search_for_instances(
                study_instance_uid=str(dataset.StudyInstanceUID), series_instance_uid=str(dataset.SeriesInstanceUID),
                search_filters={"SOPInstanceUID": str(dataset.SOPInstanceUID)})

        if not self._http(stow_and_find):
            raise DeliveryError(f"{self.url} accepted the STOW-RS request but QIDO does not find the instance")
        return "stored"

    def _http(self, call):
        """``call(client)`` with the HTTP failures as :class:`DeliveryError` (fatal when the server is down)."""
        import requests  # lazy: network client; DICOMweb export only

        for attempt in range(1, self.RETRIES + 1):
            try:
                return call(self._client())
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise DeliveryError(f"cannot reach {self.url}: {type(exc).__name__}", fatal=True) from None
            except requests.exceptions.HTTPError as exc:
                code = getattr(exc.response, "status_code", None)
                if code in _BUSY and attempt < self.RETRIES:
                    time.sleep(0.5 * attempt)
                    continue
                tries = f" ({attempt} tries)" if code in _BUSY else ""
                raise DeliveryError(f"DICOMweb request to {self.url} failed{tries}: {exc}",
                                    fatal=code in _SERVER_DOWN) from None
            except (requests.exceptions.RequestException, ValueError, RuntimeError) as exc:
                raise DeliveryError(f"DICOMweb request to {self.url} failed: {exc}") from None
        raise AssertionError("unreachable: the last try returns or raises")

    def close(self) -> None:
        self._local = threading.local()


#: What highdicom writes: explicit VR little endian (implicit for an SC made from an implicit source).
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: SOP classes an export sends: Segmentation, Comprehensive 3D SR, Secondary Capture.
_EXPORT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7")
