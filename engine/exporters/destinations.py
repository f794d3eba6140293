"""Where exports go: a folder (``--dicom``), a DIMSE peer (``--pacs``, C-STORE) or a DICOMweb server (``--dicomweb``).

A destination's :meth:`deliver` returns the log status (``written``/``stored``) or raises
:class:`DeliveryError`; an object is reported stored only on a success status from the peer
(and, for STOW-RS, once QIDO finds it).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SarcoError
from ..outputs import atomic_path
from ..pacs import CALLING_AET, PacsAddress, PacsError, associate


class DeliveryError(SarcoError):
    """One object did not reach its destination; ``fatal`` when the destination itself is gone."""

    def __init__(self, reason: str, fatal: bool = False):
        self.reason = reason
        self.fatal = fatal
        super().__init__(reason)


def export_file_name(patient_id: str, modality: str, kind: str) -> str:
    return f"{patient_id}__{modality}_{kind}.dcm"


class FolderDestination:
    """DICOM Part 10 files, one per object, written atomically."""

    def __init__(self, folder):
        self.folder = Path(folder)
        # the folder's name only: export_log.csv lands in the run folder, which holds no absolute path
        self.name = f"folder {self.folder.name}"

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def deliver(self, patient_id: str, modality: str, kind: str, dataset) -> str:
        with atomic_path(self.folder / export_file_name(patient_id, modality, kind)) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
        return "written"

    def close(self) -> None:
        pass


class DimseDestination:
    """C-STORE over one association kept open across patients (reopened after a failure)."""

    def __init__(self, address: PacsAddress, calling_aet: str = CALLING_AET, nodelay: bool = True):
        self.address = address
        self.calling_aet = calling_aet
        self.nodelay = nodelay
        self.name = f"pacs {address}"
        self._assoc = None

    def open(self):
        """The association (kept, or a new one): a :class:`DeliveryError` when the peer is unreachable or refuses."""
        from pynetdicom import AE  # lazy: network client; fetch/export only

        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        ae = AE(ae_title=self.calling_aet)
        for sop_class in _EXPORT_SOP_CLASSES:  # one context per syntax: the peer accepts each on its own
            for syntax in _SYNTAXES:
                ae.add_requested_context(sop_class, [syntax])
        try:
            self._assoc = associate(ae, self.address, nodelay=self.nodelay)
        except PacsError as exc:
            self._assoc = None
            raise DeliveryError(str(exc), fatal=True) from None
        return self._assoc

    def deliver(self, patient_id: str, modality: str, kind: str, dataset) -> str:
        if str(dataset.file_meta.TransferSyntaxUID) not in _SYNTAXES:
            raise DeliveryError(f"the {kind.upper()} is in transfer syntax {dataset.file_meta.TransferSyntaxUID}; "
                                "only explicit and implicit VR little endian are proposed")
        assoc = self.open()
        try:
            status = assoc.send_c_store(dataset)
        except Exception as exc:  # noqa: BLE001 - a broken socket mid-store is this object's failure
            self.close()
            raise DeliveryError(f"the C-STORE failed: {type(exc).__name__}: {exc}") from None
        code = getattr(status, "Status", None) if status else None
        if code is None:
            self.close()
            raise DeliveryError(f"{self.address} sent no C-STORE response (association lost)")
        if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # success or warning
            raise DeliveryError(f"{self.address} refused the object (C-STORE status 0x{code:04X})")
        return "stored"

    def close(self) -> None:
        if self._assoc is not None:
            try:
                if self._assoc.is_established:
                    self._assoc.release()
            finally:
                self._assoc = None


class DicomwebDestination:
    """STOW-RS, then QIDO-RS to confirm the instance is there."""

    def __init__(self, url: str):
        from dicomweb_client.api import DICOMwebClient  # lazy: network client; DICOMweb export only

        self.url = url.rstrip("/")
        self.name = f"dicomweb {self.url}"
        self._client = DICOMwebClient(url=self.url)

    def open(self) -> None:
        pass  # every request stands alone; an unreachable server fails its STOW-RS

    def deliver(self, patient_id: str, modality: str, kind: str, dataset) -> str:
        import requests  # lazy: network client; DICOMweb export only

        try:
            self._client.store_instances([dataset])
            found = self._client.search_for_instances(
                study_instance_uid=str(dataset.StudyInstanceUID), series_instance_uid=str(dataset.SeriesInstanceUID),
                search_filters={"SOPInstanceUID": str(dataset.SOPInstanceUID)})
        except requests.exceptions.ConnectionError as exc:
            raise DeliveryError(f"cannot reach {self.url}: {type(exc).__name__}", fatal=True) from None
        except (requests.exceptions.RequestException, ValueError, RuntimeError) as exc:
            raise DeliveryError(f"STOW-RS to {self.url} failed: {exc}") from None
        if not found:
            raise DeliveryError(f"{self.url} accepted the STOW-RS request but QIDO does not find the instance")
        return "stored"

    def close(self) -> None:
        pass


#: What highdicom writes: explicit VR little endian (implicit for an SC made from an implicit source).
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: SOP classes an export sends: Segmentation, Comprehensive 3D SR, Secondary Capture.
_EXPORT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7")
