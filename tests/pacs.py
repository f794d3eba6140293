"""A real PACS for the tests: Orthanc (Debian's package) on free loopback ports, or pynetdicom's qrscp.

:func:`start_pacs` starts Orthanc as a foreground process with its storage in a temporary folder, a
config that lets the test AE titles store, find and C-GET, and the DICOMweb plugin when installed;
it waits until Orthanc answers and :meth:`Pacs.stop` ends it. Orthanc listens on every interface;
the tests only ever use its loopback ports. Without Orthanc the DIMSE tests run against
pynetdicom's ``qrscp`` app (it says so) and the DICOMweb tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
PACS_AET = "ORTHANC"
TEST_AETS = ("SARCO", "SARCOTEST")
#: The AE title ``sarco fetch --move-port`` uses in the tests: the PACS knows it at 127.0.0.1 and
#: the port the test's storage SCP listens on (:attr:`Pacs.move_port`), and lets it C-MOVE.
MOVE_AET = "SARCOMOVE"
STARTUP_TIMEOUT_S = 60.0  # generous: a loaded CI machine imports slowly


@dataclass
class Pacs:
    kind: str  # "orthanc" or "qrscp"
    dicom_port: int
    http_port: int | None
    process: subprocess.Popen
    storage: Path
    dicomweb: bool = False
    move_port: int = 0

    @property
    def address(self) -> str:
        return f"{PACS_AET}@127.0.0.1:{self.dicom_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http}/dicom-web"

    def rest(self, path: str):
        with urllib.request.urlopen(f"{self.http}{path}", timeout=10) as response:
            return json.loads(response.read())

    def restart(self) -> None:
        """Stop and start the same server: same ports, same storage, same stored instances (Orthanc only)."""
        self.stop()
        self.process = _launch_orthanc(self.storage, True)
        _wait_until_ready(self)

    def stop(self) -> None:
        """End the server. Its storage is a temporary folder thrown away with it, so after a short grace a
        kill is fine: Orthanc's orderly stop polls its HTTP and DICOM threads for about 3 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_binary() -> str | None:
    found = shutil.which("Orthanc")
    return found or next((b for b in ORTHANC_BINARIES if Path(b).is_file()), None)


def _orthanc_config(storage: Path, http_port: int, dicom_port: int, plugin: str | None, move_port: int) -> dict:
    config = {
        "Name": "sarco-test", "StorageDirectory": str(storage / "db"), "IndexDirectory": str(storage / "db"),
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": True, "DicomAet": PACS_AET, "DicomPort": dicom_port, "DicomCheckCalledAet": True,
        # only the test AE titles are let in: an unknown calling AE title is refused (the refusal test)
        "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False,
        "DicomModalities": {aet.lower(): {"AET": aet, "Host": "127.0.0.1", "Port": 1, "AllowEcho": True,
                                          "AllowFind": True, "AllowGet": True, "AllowMove": False,
                                          "AllowStore": True} for aet in TEST_AETS}
        | {MOVE_AET.lower(): {"AET": MOVE_AET, "Host": "127.0.0.1", "Port": move_port, "AllowEcho": True,
                              "AllowFind": True, "AllowGet": False, "AllowMove": True, "AllowStore": True}},
        "DicomAssociationCloseDelay": 0, "StableAge": 1, "SaveJobs": False, "ConcurrentJobs": 1,
        "OverwriteInstances": False, "StorageCompression": False, "HttpThreadsCount": 4,
        "DicomThreadsCount": 2, "KeepAlive": False,
        "Plugins": [plugin] if plugin else [],
    }
    if plugin:
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False}
    return config


def _wait_for_port(port: int | None, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the PACS exited at startup (status {process.returncode}): "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the PACS did not answer on port {port} within {STARTUP_TIMEOUT_S:g} s")


def start_orthanc(storage: Path, server_nodelay: bool = True) -> Pacs:
    """Orthanc on free loopback ports. ``server_nodelay``: DCMTK (Orthanc's DICOM layer) sets
    TCP_NODELAY on its sockets when the environment says ``TCP_NODELAY=1``; without it each response
    PDU, written in two pieces, waits for our delayed ACK (~45 ms per DIMSE exchange, bench/export.py)."""
    plugin = next((p for p in DICOMWEB_PLUGINS if Path(p).is_file()), None)
    http_port, dicom_port, move_port = free_port(), free_port(), free_port()
    config = storage / "orthanc.json"
    config.write_text(json.dumps(_orthanc_config(storage, http_port, dicom_port, plugin, move_port)))
    process = _launch_orthanc(storage, server_nodelay)
    pacs = Pacs("orthanc", dicom_port, http_port, process, storage, dicomweb=plugin is not None, move_port=move_port)
    _wait_until_ready(pacs)
    return pacs


def _launch_orthanc(storage: Path, server_nodelay: bool) -> subprocess.Popen:
    env = {**os.environ, "TCP_NODELAY": "1" if server_nodelay else "0"}
    with open(storage / "orthanc.log", "ab") as log:
        return subprocess.Popen([orthanc_binary(), str(storage / "orthanc.json")], stdout=log,
                                stderr=subprocess.STDOUT, cwd=storage, env=env)


def _wait_until_ready(pacs: Pacs) -> None:
    log = pacs.storage / "orthanc.log"
    try:
        _wait_for_port(pacs.http_port, pacs.process, log)
        _wait_for_port(pacs.dicom_port, pacs.process, log)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:  # the HTTP socket opens before the REST API answers
            try:
                pacs.rest("/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    except BaseException:
        pacs.stop()
        raise


def start_qrscp(storage: Path) -> Pacs:
    """pynetdicom's Query/Retrieve SCP app (needs SQLAlchemy), knowing the test AE titles."""
    dicom_port, move_port = free_port(), free_port()
    (storage / "instances").mkdir(parents=True, exist_ok=True)
    sections = [f"[DEFAULT]\nport: {dicom_port}\nbind_address: 127.0.0.1\nae_title: {PACS_AET}\n"
                f"dimse_timeout: 30\nacse_timeout: 30\nnetwork_timeout: 30\nmax_pdu: 16382\nlog_identifier: False\n"
                f"instance_location: {storage / 'instances'}\ndatabase_location: {storage / 'index.sqlite'}\n"]
    sections += [f"[{aet}]\naddress: 127.0.0.1\nport: 1\n" for aet in TEST_AETS]
    sections.append(f"[{MOVE_AET}]\naddress: 127.0.0.1\nport: {move_port}\n")
    config = storage / "qrscp.ini"
    config.write_text("\n".join(sections))
    log = storage / "qrscp.log"
    process = subprocess.Popen([sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(config)],
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=storage)
    pacs = Pacs("qrscp", dicom_port, None, process, storage, move_port=move_port)
    try:
        _wait_for_port(dicom_port, process, log)
    except BaseException:
        pacs.stop()
        raise
    return pacs


def start_pacs(storage: Path) -> Pacs:
    """Orthanc when installed (``SARCO_TEST_PACS=qrscp`` forces the fallback), else qrscp."""
    if orthanc_binary() and os.environ.get("SARCO_TEST_PACS", "orthanc") != "qrscp":
        return start_orthanc(storage)
    print("Orthanc not installed: the DIMSE tests run against pynetdicom's qrscp, the DICOMweb tests skip",
          file=sys.stderr)
    return start_qrscp(storage)


#: Tries per file of :func:`store_files`: pynetdicom (3.0) can lose a C-STORE response to its own
#: reactor thread when two stores follow each other on one association and the reply is quick (its
#: pause flag is read stale; the log says "Received unexpected C-STORE service message" and the store
#: returns an empty status after the DIMSE timeout). Seen once in a full parallel run on the loaded
#: 2-core VM; a store that lost its reply is sent again on a new association (Orthanc keeps one copy).
STORE_TRIES = 3
#: DIMSE / ACSE / network timeout (s) of the test's stores: a loaded CI machine, never a slow PACS.
STORE_TIMEOUT_S = 60


def store_files(pacs: Pacs, files, calling_aet: str = "SARCOTEST") -> int:
    """C-STORE DICOM files to the test PACS with pynetdicom alone (not the engine's code); returns how many."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(str(f)) for f in files]
    ae = AE(ae_title=calling_aet)
    ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = STORE_TIMEOUT_S
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(sop_class, syntax)

    def associate():
        assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=PACS_AET)
        assert assoc.is_established, "the test PACS refused the test AE title"
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return assoc

    assoc = associate()
    try:
        stored = 0
        for ds in datasets:
            for _ in range(STORE_TRIES):
                status = assoc.send_c_store(ds)
                if status:   # a reply: success or a refusal, both final
                    break
                if assoc.is_established:
                    assoc.abort()
                assoc = associate()   # no reply (lost, see STORE_TRIES): again on a new association
            assert status and status.Status == 0, f"C-STORE status {status} after {STORE_TRIES} tries"
            stored += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return stored
