"""Peers that fail, on loopback, in this process: the faults a night's export meets.

Each is a context manager yielding the port it listens on and stops its threads on exit:
:func:`silent_peer` accepts connections and never answers, :func:`reset_peer` answers each with a
TCP reset, :func:`storage_scp` is pynetdicom's storage SCP that answers after a delay or closes the
connection in the middle of a C-STORE, :func:`dicomweb_peer` answers STOW-RS with the statuses it is
given (503 then 200) and QIDO-RS with what it stored.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

import pydicom
from pynetdicom import AE, evt

from tests.pacs import PACS_AET

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _listener() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    return server


@contextmanager
def _accepting(on_connection):
    """A listening socket whose accepted connections go to ``on_connection(conn)``; yields its port."""
    server, stop, held = _listener(), threading.Event(), []

    def loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            on_connection(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in held:
            conn.close()


@contextmanager
def silent_peer(connections: list | None = None):
    """Accepts every connection and never sends a byte (a hung PACS, a firewall that black-holes);
    each accepted connection is appended to ``connections`` when given."""
    with _accepting(connections.append if connections is not None else (lambda conn: None)) as port:
        yield port


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # linger 0: the close sends RST, not FIN


@contextmanager
def reset_peer():
    """Accepts every connection and resets it at once."""
    with _accepting(_reset) as port:
        yield port


@contextmanager
def storage_scp(delay_s: float = 0.0, close_on_store: bool = False):
    """pynetdicom's storage SCP (called AE ``ORTHANC``); yields ``(port, stored)``, the SOP Instance UIDs stored.

    ``delay_s``: each C-STORE is answered after that long. ``close_on_store``: each C-STORE closes
    the connection instead of answering (an association lost in the middle).
    """
    stored: list[str] = []

    def on_store(event):
        if close_on_store:
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
            return 0xA700
        time.sleep(delay_s)
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=PACS_AET)
    for sop_class in (SEG_CLASS, SR_CLASS, SC_CLASS):
        ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, stored
    finally:
        server.shutdown()


@contextmanager
def dicomweb_peer(stow_statuses=(503, 200)):
    """A DICOMweb root at ``http://127.0.0.1:PORT``: STOW-RS answers ``stow_statuses`` in turn (the last
    one from then on), QIDO-RS finds what a 200 STOW stored; yields ``(url, requests)``, the STOW statuses sent."""
    statuses = list(stow_statuses)
    sent: list[int] = []
    stored: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status: int, body: bytes = b"", kind: str = "application/dicom+json"):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            sent.append(status)
            if status == 200:
                stored.update(_sop_instance_uids(body))
            self._answer(status)

        def do_GET(self):
            if "SOPInstanceUID=" in self.path:
                uid = self.path.split("SOPInstanceUID=")[1].split("&")[0]
                found = [{"00080018": {"vr": "UI", "Value": [uid]}}] if uid in stored else []
                self._answer(200, json.dumps(found).encode())
            else:
                self._answer(200, b"[]")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sent
    finally:
        server.shutdown()
        server.server_close()


def _sop_instance_uids(multipart: bytes) -> set[str]:
    """The SOP Instance UIDs of the DICOM parts of a STOW-RS body (read with pydicom)."""
    uids = set()
    for part in multipart.split(b"\r\n\r\n")[1:]:
        try:
            uids.add(str(pydicom.dcmread(BytesIO(part), stop_before_pixels=True).SOPInstanceUID))
        except Exception:  # noqa: BLE001 - a multipart boundary, not a DICOM part
            continue
    return uids
